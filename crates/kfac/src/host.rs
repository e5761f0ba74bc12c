//! The per-step algebra of `f32` CPU layers on plain host buffers: the folded gradient, the eigen
//! solve and the CG-FAC operator as row-major `Vec<f32>` matrices and [`gemm_into`] calls, where
//! the same work as candle tensor ops costs about ten small allocations and kernel launches per
//! layer and solve (measured in docs/BENCHMARKS.md). Every other dtype and device keeps the tensor
//! path of [`crate::precond`], which these functions are tested against.

use candle_core::{DType, Device, Tensor};

use crate::cg::CgVector;
use crate::error::{KfacError, Result};
use crate::factors::{fold, frobenius, CaptureDims, WeightSharing};
use crate::linear_op::{gemm_into, MatrixView};
use crate::tracked::LayerCapture;
use crate::vector::{all_finite, axpy, axpy_square_norm, dot, xpby};

/// A layer's folded gradient or update `[∇W ∇b]` (`m × k`): on the host for `f32` CPU layers,
/// a tensor otherwise.
#[derive(Debug, Clone)]
pub(crate) enum Folded {
    /// Row-major `m × k` values.
    Host {
        /// The values.
        data: Vec<f32>,
        /// Rows `m`.
        rows: usize,
        /// Columns `k` (`n + 1` with a bias).
        cols: usize,
    },
    /// Any dtype and device.
    Tensor(Tensor),
}

/// Whether `t` is an `f32` tensor in CPU memory, whose layers run on the host path.
pub(crate) fn on_host(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

impl Folded {
    /// `[∇W ∇b]` from a weight gradient `m × n` and an optional bias gradient `m`: on the host
    /// when both are `f32` on the CPU (one pass that also interleaves the bias column).
    pub(crate) fn from_gradients(gw: &Tensor, gb: Option<&Tensor>) -> Result<Self> {
        if !(on_host(gw) && gb.is_none_or(on_host)) {
            return Ok(Self::Tensor(fold(gw, gb)?));
        }
        let (m, n) = gw.dims2()?;
        let w = gw.flatten_all()?.to_vec1::<f32>()?;
        let Some(gb) = gb else {
            return Ok(Self::Host {
                data: w,
                rows: m,
                cols: n,
            });
        };
        let b = gb.flatten_all()?.to_vec1::<f32>()?;
        let k = n + 1;
        let mut data = vec![0.0f32; m * k];
        for ((row, wr), &bi) in data
            .chunks_exact_mut(k)
            .zip(w.chunks_exact(n.max(1)))
            .zip(&b)
        {
            row[..n].copy_from_slice(&wr[..n]);
            row[n] = bi;
        }
        Ok(Self::Host {
            data,
            rows: m,
            cols: k,
        })
    }

    /// The values as a tensor (`m × k` on the CPU for the host variant).
    pub(crate) fn to_tensor(&self) -> Result<Tensor> {
        Ok(match self {
            Self::Host { data, rows, cols } => {
                Tensor::from_slice(data, (*rows, *cols), &Device::Cpu)?
            }
            Self::Tensor(t) => t.clone(),
        })
    }

    /// Whether every entry is finite.
    pub(crate) fn all_finite(&self) -> Result<bool> {
        match self {
            Self::Host { data, .. } => Ok(all_finite(data)),
            Self::Tensor(t) => crate::factors::all_finite(t),
        }
    }

    /// `s·self`.
    pub(crate) fn scaled(&self, s: f64) -> Result<Folded> {
        Ok(match self {
            Self::Host { data, rows, cols } => Self::Host {
                data: data.iter().map(|&v| (f64::from(v) * s) as f32).collect(),
                rows: *rows,
                cols: *cols,
            },
            Self::Tensor(t) => Self::Tensor((t * s)?),
        })
    }

    /// `⟨self, other⟩` (Frobenius), accumulated in `f64` on the host.
    pub(crate) fn dot(&self, other: &Folded) -> Result<f64> {
        match (self, other) {
            (Self::Host { data: x, .. }, Self::Host { data: y, .. }) => Ok(dot(x, y)),
            _ => frobenius(&self.to_tensor()?, &other.to_tensor()?),
        }
    }

    /// `ν·U` split into the weight part `m × n` and the bias column `m` (when `bias`).
    pub(crate) fn into_parts(
        self,
        n: usize,
        bias: bool,
        scale: f64,
    ) -> Result<(Tensor, Option<Tensor>)> {
        match self {
            Self::Host { data, rows, cols } => {
                let (mut w, mut b) = if bias {
                    let mut w = Vec::with_capacity(rows * n);
                    let mut b = Vec::with_capacity(rows);
                    for row in data.chunks_exact(cols.max(1)) {
                        w.extend_from_slice(&row[..n]);
                        b.push(row[n]);
                    }
                    (w, b)
                } else {
                    (data, Vec::new())
                };
                if scale < 1.0 {
                    let s = scale as f32;
                    w.iter_mut().chain(b.iter_mut()).for_each(|v| *v *= s);
                }
                let w = Tensor::from_vec(w, (rows, n), &Device::Cpu)?;
                let b = if bias {
                    Some(Tensor::from_vec(b, rows, &Device::Cpu)?)
                } else {
                    None
                };
                Ok((w, b))
            }
            Self::Tensor(u) => {
                let u = if scale < 1.0 { (u * scale)? } else { u };
                let w = u.narrow(1, 0, n)?.contiguous()?;
                let b = if bias {
                    Some(u.narrow(1, n, 1)?.squeeze(1)?)
                } else {
                    None
                };
                Ok((w, b))
            }
        }
    }
}

/// One capture's batch Kronecker factors on host buffers, row-major `f32`: `A` `k×k`, `G` `m×m`,
/// and their traces.
#[derive(Debug, Clone)]
pub(crate) struct BatchFactors {
    pub(crate) a: Vec<f32>,
    pub(crate) g: Vec<f32>,
    pub(crate) traces: (f64, f64),
}

/// The batch factors of an `f32` CPU capture for a layer with `k` folded inputs (`n + 1` with a
/// bias, `n` without): the rows of [`crate::factors::CurvatureRows::from_capture`] (output
/// gradients times `N`; under reduce the inputs averaged and the gradients summed over the
/// positions of each sample; a column of ones for the bias) built in one pass, then
/// `A = a_scale·ĀᵀĀ` and `G = g_scale·ĜᵀĜ` by [`gemm_into`] on the calling thread. The tensor
/// path's twenty-odd candle ops per layer cost more than the arithmetic at W1's sizes. `None`
/// when a row is not finite; a `k` or `m` that does not fit the capture is an error.
pub(crate) fn batch_factors(
    cap: &LayerCapture,
    sharing: WeightSharing,
    (k, m): (usize, usize),
) -> Result<Option<BatchFactors>> {
    let d = CaptureDims::of(cap)?;
    if !(k == d.n || k == d.n + 1) || m != d.m {
        return Err(crate::error::KfacError::Shape {
            what: format!("capture of layer `{}`", cap.name),
            expected: format!(
                "input (…, {}) and output_grad (…, {m})",
                k.saturating_sub(1)
            ),
            found: format!("{:?} and {:?}", cap.input.dims(), cap.output_grad.dims()),
        });
    }
    let x = cap.input.flatten_all()?.to_vec1::<f32>()?;
    let og = cap.output_grad.flatten_all()?.to_vec1::<f32>()?;
    let (n, t, samples) = (d.n, d.positions, d.samples);
    let scale_n = samples as f32;
    let (r, a_scale, g_scale) = match sharing {
        WeightSharing::Expand => (
            samples * t,
            1.0 / (samples * t) as f64,
            1.0 / samples as f64,
        ),
        WeightSharing::Reduce => (samples, 1.0 / samples as f64, 1.0 / samples as f64),
    };
    let mut abar = vec![0.0f32; r * k];
    let mut gbar = vec![0.0f32; r * m];
    // Rows of `Ā` and `Ĝ`: every position (expand), or each sample's `T` positions summed (reduce).
    let per_row = if sharing == WeightSharing::Expand {
        1
    } else {
        t
    };
    let inv_t = 1.0 / per_row as f32;
    for (i, (ar, gr)) in abar
        .chunks_exact_mut(k)
        .zip(gbar.chunks_exact_mut(m))
        .enumerate()
    {
        for p in i * per_row..(i + 1) * per_row {
            for (o, &v) in ar[..n].iter_mut().zip(&x[p * n..(p + 1) * n]) {
                *o += v;
            }
            for (o, &v) in gr.iter_mut().zip(&og[p * m..(p + 1) * m]) {
                *o += v * scale_n;
            }
        }
        if per_row > 1 {
            ar[..n].iter_mut().for_each(|v| *v *= inv_t);
        }
        if k > n {
            ar[n] = 1.0;
        }
    }
    if !(all_finite(&abar) && all_finite(&gbar)) {
        return Ok(None);
    }
    let traces = (a_scale * dot(&abar, &abar), g_scale * dot(&gbar, &gbar));
    let gram = |rows: &[f32], w: usize, scale: f64| -> Vec<f32> {
        let mut out = vec![0.0f32; w * w];
        gemm_into(
            &mut out,
            (w, w, r),
            false,
            MatrixView::transposed(rows, w),
            MatrixView::rows(rows, w),
            1,
        );
        let s = scale as f32;
        out.iter_mut().for_each(|v| *v *= s);
        out
    };
    Ok(Some(BatchFactors {
        a: gram(&abar, k, a_scale),
        g: gram(&gbar, m, g_scale),
        traces,
    }))
}

/// `Ok` when two CG vectors have one length, the error a tensor op would give otherwise (the
/// kernels alone would work on the common prefix and drop the rest silently).
fn same_len(a: &[f32], b: &[f32]) -> Result<()> {
    if a.len() == b.len() {
        Ok(())
    } else {
        Err(KfacError::Shape {
            what: "a CG vector".into(),
            expected: format!("[{}]", a.len()),
            found: format!("[{}]", b.len()),
        })
    }
}

impl CgVector for Vec<f32> {
    fn zeros_like(&self) -> Result<Self> {
        Ok(vec![0.0; self.len()])
    }

    fn dot(&self, other: &Self) -> Result<f64> {
        same_len(self, other)?;
        Ok(dot(self, other))
    }

    fn minus(&self, other: &Self) -> Result<Self> {
        same_len(self, other)?;
        Ok(self.iter().zip(other).map(|(a, b)| a - b).collect())
    }

    fn add_scaled(&mut self, alpha: f64, x: &Self) -> Result<()> {
        same_len(self, x)?;
        axpy(self, alpha as f32, x);
        Ok(())
    }

    fn add_scaled_square_norm(&mut self, alpha: f64, x: &Self) -> Result<f64> {
        same_len(self, x)?;
        Ok(axpy_square_norm(self, alpha as f32, x))
    }

    fn scale_add(&mut self, beta: f64, r: &Self) -> Result<()> {
        same_len(self, r)?;
        xpby(self, beta as f32, r);
        Ok(())
    }
}

/// An eigenbasis pair as row-major `f32` host buffers: `Q_A` `k×k`, `λ_A` `k`, `Q_G` `m×m`, `λ_G` `m`.
#[derive(Debug, Clone)]
pub(crate) struct HostEig {
    pub(crate) qa: Vec<f32>,
    pub(crate) la: Vec<f32>,
    pub(crate) qg: Vec<f32>,
    pub(crate) lg: Vec<f32>,
}

impl HostEig {
    /// `D⁻¹` elementwise, `m×k` row-major, with `D_ij = (λ_G,i + s_G)(λ_A,j + s_A) + t` for the
    /// shifts `(s_A, s_G, t)`: computed in `f64`, kept in `f32` until the eigenbasis or the
    /// damping changes.
    pub(crate) fn inverse_denominators(&self, (sa, sg, t): (f64, f64, f64)) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.lg.len() * self.la.len());
        for &lg in &self.lg {
            let g = f64::from(lg) + sg;
            out.extend(
                self.la
                    .iter()
                    .map(|&la| (1.0 / (g * (f64::from(la) + sa) + t)) as f32),
            );
        }
        out
    }

    /// `U = Q_G ((Q_Gᵀ ∇W̄ Q_A) ∘ D⁻¹) Q_Aᵀ` for `∇W̄` `m×k` row-major, with `inv_d` from
    /// [`HostEig::inverse_denominators`]: four GEMMs ([`gemm_into`], on the calling thread) and
    /// one elementwise product, no tensor ops. `None` if the result is not finite.
    pub(crate) fn solve(
        &self,
        grad: &[f32],
        (m, k): (usize, usize),
        inv_d: &[f32],
    ) -> Option<Vec<f32>> {
        let mut t1 = vec![0.0f32; m * k];
        let mut t2 = vec![0.0f32; m * k];
        // t1 = Q_Gᵀ ∇W̄, t2 = t1 Q_A.
        let qg_t = MatrixView::transposed(&self.qg, m);
        gemm_into(
            &mut t1,
            (m, k, m),
            false,
            qg_t,
            MatrixView::rows(grad, k),
            1,
        );
        gemm_into(
            &mut t2,
            (m, k, k),
            false,
            MatrixView::rows(&t1, k),
            MatrixView::rows(&self.qa, k),
            1,
        );
        for (x, &s) in t2.iter_mut().zip(inv_d) {
            *x *= s;
        }
        // t1 = Q_G t2, u = t1 Q_Aᵀ.
        gemm_into(
            &mut t1,
            (m, k, m),
            false,
            MatrixView::rows(&self.qg, m),
            MatrixView::rows(&t2, k),
            1,
        );
        let qa_t = MatrixView::transposed(&self.qa, k);
        gemm_into(&mut t2, (m, k, k), false, MatrixView::rows(&t1, k), qa_t, 1);
        all_finite(&t2).then_some(t2)
    }
}

/// `diag(Qᵀ F Q)_j = Σ_i (F Q)_ij Q_ij` for a symmetric `F` and a basis `Q`, both `n × n`
/// row-major `f32`: one GEMM ([`gemm_into`] on the calling thread) and a column-wise dot product
/// accumulated in `f64`, clamped at 0 (`F` is PSD). The eigenvalue refresh of `f32` CPU layers.
pub(crate) fn diagonal_in_basis(f: &[f32], q: &[f32], n: usize) -> Vec<f32> {
    let mut fq = vec![0.0f32; n * n];
    gemm_into(
        &mut fq,
        (n, n, n),
        false,
        MatrixView::rows(f, n),
        MatrixView::rows(q, n),
        1,
    );
    let mut acc = vec![0.0f64; n];
    for (fq_row, q_row) in fq.chunks_exact(n).zip(q.chunks_exact(n)) {
        for ((a, &x), &y) in acc.iter_mut().zip(fq_row).zip(q_row) {
            *a += f64::from(x) * f64::from(y);
        }
    }
    acc.into_iter().map(|v| v.max(0.0) as f32).collect()
}

/// A layer's Kronecker factors as row-major `f32` host buffers (`A` `k×k`, `G` `m×m`), for the
/// CG-FAC operator.
#[derive(Debug, Clone)]
pub(crate) struct HostFactors {
    a: Vec<f32>,
    g: Vec<f32>,
    m: usize,
    k: usize,
}

impl HostFactors {
    /// The factors' values, `None` unless both are `f32` CPU tensors.
    pub(crate) fn new(a: &Tensor, g: &Tensor) -> Result<Option<Self>> {
        if !(on_host(a) && on_host(g)) {
            return Ok(None);
        }
        let (k, m) = (a.dims()[0], g.dims()[0]);
        Ok(Some(Self {
            a: a.flatten_all()?.to_vec1::<f32>()?,
            g: g.flatten_all()?.to_vec1::<f32>()?,
            m,
            k,
        }))
    }

    /// The damped operator on `X` (`m × k` row-major): `G X A + t·X` with Tikhonov `t`, or
    /// `(G + δ_G I) X (A + δ_A I)` with factored shifts `(δ_A, δ_G)` (`t = 0`). The same
    /// operator as the tensor path's `apply_m`, in two GEMMs.
    pub(crate) fn apply(&self, x: &[f32], shifts: (f64, f64, f64)) -> Vec<f32> {
        let (m, k) = (self.m, self.k);
        let (sa, sg, t) = shifts;
        let shifted = |f: &[f32], n: usize, s: f64| -> Option<Vec<f32>> {
            (s != 0.0).then(|| {
                let mut c = f.to_vec();
                for i in 0..n {
                    c[i * n + i] += s as f32;
                }
                c
            })
        };
        let (ga, gg) = (shifted(&self.a, k, sa), shifted(&self.g, m, sg));
        let a = ga.as_deref().unwrap_or(&self.a);
        let g = gg.as_deref().unwrap_or(&self.g);
        let mut gx = vec![0.0f32; m * k];
        gemm_into(
            &mut gx,
            (m, k, m),
            false,
            MatrixView::rows(g, m),
            MatrixView::rows(x, k),
            1,
        );
        let mut out = vec![0.0f32; m * k];
        gemm_into(
            &mut out,
            (m, k, k),
            false,
            MatrixView::rows(&gx, k),
            MatrixView::rows(a, k),
            1,
        );
        if t != 0.0 {
            axpy(&mut out, t as f32, x);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cg_vectors_of_different_lengths_are_an_error() {
        let (mut a, b) = (vec![1.0f32; 5], vec![1.0f32; 3]);
        assert!(CgVector::dot(&a, &b).is_err());
        assert!(a.minus(&b).is_err());
        assert!(a.add_scaled(1.0, &b).is_err());
        assert!(a.add_scaled_square_norm(1.0, &b).is_err());
        assert!(a.scale_add(1.0, &b).is_err());
        assert_eq!(a, vec![1.0f32; 5], "a failed update must not write");
        assert_eq!(
            a.add_scaled_square_norm(1.0, &vec![1.0f32; 5]).unwrap(),
            20.0
        );
    }

    /// The host factors equal the tensor path's (`CurvatureRows`, in `f64` as the reference) in
    /// both sharing modes, with and without a bias, for several positions per sample, and a
    /// non-finite row gives `None`.
    #[test]
    fn batch_factors_match_the_tensor_path() -> Result<()> {
        use crate::factors::CurvatureRows;
        let seeded = |dims: &[usize], seed: u64| -> Result<Tensor> {
            let n: usize = dims.iter().product();
            let v: Vec<f32> = (0..n)
                .map(|i| {
                    let x = (i as u64 + 7).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed;
                    ((x >> 40) % 2001) as f32 / 1000.0 - 1.0
                })
                .collect();
            Ok(Tensor::from_vec(v, dims, &Device::Cpu)?)
        };
        for sharing in [WeightSharing::Expand, WeightSharing::Reduce] {
            for (t, bias) in [(1usize, true), (5, true), (5, false)] {
                let cap = LayerCapture {
                    name: "l".into(),
                    input: seeded(&[6, t, 4], 1)?,
                    output_grad: seeded(&[6, t, 3], 2)?,
                };
                let k = if bias { 5 } else { 4 };
                let got = batch_factors(&cap, sharing, (k, 3))?.expect("finite rows");
                let wide = LayerCapture {
                    input: cap.input.to_dtype(DType::F64)?,
                    output_grad: cap.output_grad.to_dtype(DType::F64)?,
                    ..cap.clone()
                };
                let rows = CurvatureRows::from_capture(&wide, sharing)?.narrow_a(k)?;
                let (a, g) = rows.factors()?;
                let (ta, tg) = rows.traces()?;
                for (name, host, want) in [("A", &got.a, a), ("G", &got.g, g)] {
                    let want = want.flatten_all()?.to_vec1::<f64>()?;
                    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                    assert_eq!(host.len(), want.len(), "{name}");
                    for (h, w) in host.iter().zip(&want) {
                        assert!(
                            (f64::from(*h) - w).abs() <= 1e-5 * scale,
                            "{sharing:?} T={t} bias={bias} {name}: {h} vs {w}"
                        );
                    }
                }
                assert!((got.traces.0 - ta).abs() <= 1e-5 * ta.abs());
                assert!((got.traces.1 - tg).abs() <= 1e-5 * tg.abs());
            }
        }
        let mut bad = seeded(&[6, 2, 4], 1)?.flatten_all()?.to_vec1::<f32>()?;
        bad[9] = f32::NAN;
        let cap = LayerCapture {
            name: "l".into(),
            input: Tensor::from_vec(bad, (6, 2, 4), &Device::Cpu)?,
            output_grad: seeded(&[6, 2, 3], 2)?,
        };
        assert!(batch_factors(&cap, WeightSharing::Reduce, (5, 3))?.is_none());
        assert!(batch_factors(&cap, WeightSharing::Reduce, (7, 3)).is_err());
        assert!(batch_factors(&cap, WeightSharing::Reduce, (5, 4)).is_err());
        Ok(())
    }

    #[test]
    fn folding_and_splitting_round_trip() -> Result<()> {
        let (m, n) = (3, 4);
        let gw = Tensor::arange(0f32, (m * n) as f32, &Device::Cpu)?.reshape((m, n))?;
        let gb = Tensor::new(&[10f32, 20., 30.], &Device::Cpu)?;
        let host = Folded::from_gradients(&gw, Some(&gb))?;
        let dense = Folded::Tensor(fold(&gw, Some(&gb))?);
        assert!(matches!(
            host,
            Folded::Host {
                rows: 3,
                cols: 5,
                ..
            }
        ));
        assert_eq!(
            host.to_tensor()?.to_vec2::<f32>()?,
            dense.to_tensor()?.to_vec2::<f32>()?
        );
        assert_eq!(host.dot(&host)?, dense.dot(&dense)?);
        for scale in [1.0, 0.5] {
            let (w1, b1) = host.clone().into_parts(n, true, scale)?;
            let (w2, b2) = dense.clone().into_parts(n, true, scale)?;
            assert_eq!(w1.to_vec2::<f32>()?, w2.to_vec2::<f32>()?);
            let (b1, b2) = (b1.expect("bias"), b2.expect("bias"));
            assert_eq!(b1.to_vec1::<f32>()?, b2.to_vec1::<f32>()?);
        }
        // f64 gradients stay tensors.
        let g64 = Folded::from_gradients(&gw.to_dtype(DType::F64)?, None)?;
        assert!(matches!(g64, Folded::Tensor(_)));
        Ok(())
    }
}
