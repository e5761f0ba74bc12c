//! `y = x Wᵀ + b` as one differentiable CPU op with a hand-written backward pass.
//!
//! Built from candle tensor ops, a linear layer with bias is a matmul, a broadcast add and their
//! backward nodes; candle reduces the broadcast's gradient over rows with a strided reduction (one
//! integer division per element), and every node's gradient is accumulated through a freshly zeroed
//! buffer. The fused op here is one graph node:
//!
//! | direction | computation (rows `N`, `x: (N, n)`, `W: (m, n)`, `b: (m)`) |
//! |-----------|------------------------------------------------------------|
//! | forward | `y = x Wᵀ + b`: one GEMM accumulating onto rows pre-filled with `b` |
//! | backward | `dx = dy W`, `dW = dyᵀ x` (two GEMMs), `db = Σ_rows dy` |
//!
//! The GEMMs ([`gemm_into`]) are faer's on one thread (its x86 kernels, with AVX-512 where the
//! CPU has it, run the model's small shapes 1.6–3× faster than the `gemm` crate here,
//! docs/BENCHMARKS.md) and the `gemm` crate's, candle's own CPU matmul, when split across
//! threads; both are called with the operands' strides (no transposed copies). The op exists for contiguous CPU `f32`/`f64` inputs;
//! [`fused_linear_supported`] says when, and [`crate::TrackedLinear`] falls back to candle's
//! composite ops elsewhere (CUDA, half precision).

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, WithDType,
};
use gemm::{gemm, Parallelism};

const FWD_NAME: &str = "bmt-fused-linear";
const FWD_NO_BIAS_NAME: &str = "bmt-fused-linear-no-bias";
const BWD_INPUT_NAME: &str = "bmt-fused-linear-bwd-input";
const BWD_WEIGHT_NAME: &str = "bmt-fused-linear-bwd-weight";
const BWD_BIAS_NAME: &str = "bmt-fused-linear-bwd-bias";

/// Whether [`fused_linear`] can run on `x` (CPU, `f32` or `f64`).
pub fn fused_linear_supported(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// `y = x Wᵀ + b` for `x: (N, n)`, `W: (m, n)`, `b: (m)` (or no bias), recorded for backprop with
/// the fused backward `dx = dy W`, `dW = dyᵀ x`, `db = Σ_rows dy`.
///
/// Operands that are not contiguous are made contiguous first. Shapes are checked; the caller must
/// ensure [`fused_linear_supported`] (an unsupported device or dtype is a candle error).
pub fn fused_linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let (_, n) = x.dims2()?;
    let (m, wn) = w.dims2()?;
    if wn != n {
        candle_core::bail!(
            "fused linear: input has {n} features, the weight {wn} (shape {m}×{wn})"
        );
    }
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match b {
        Some(b) => {
            if b.dims() != [m] {
                candle_core::bail!(
                    "fused linear: bias of shape {:?}, expected ({m},)",
                    b.dims()
                );
            }
            x.apply_op3(&w, &b.contiguous()?, LinearFwd)
        }
        None => x.apply_op2(&w, LinearFwdNoBias),
    }
}

/// `threads` as the GEMM's parallelism (one thread: no pool at all).
fn parallelism(threads: usize) -> Parallelism {
    match threads {
        0 | 1 => Parallelism::None,
        t => Parallelism::Rayon(t),
    }
}

/// Candle's CPU thread count, which the fused op's GEMMs use.
fn candle_threads() -> usize {
    candle_core::utils::get_num_threads()
}

/// A read-only matrix operand of [`gemm_into`]: a slice and its (row, column) strides in elements.
#[derive(Debug, Clone, Copy)]
pub struct MatrixView<'a, T> {
    data: &'a [T],
    rs: isize,
    cs: isize,
}

impl<'a, T> MatrixView<'a, T> {
    /// `data` as a row-major matrix with `cols` columns.
    pub fn rows(data: &'a [T], cols: usize) -> Self {
        Self {
            data,
            rs: cols as isize,
            cs: 1,
        }
    }

    /// The transpose of [`MatrixView::rows`]`(data, cols)`: element `(j, r)` is `data[r·cols + j]`.
    pub fn transposed(data: &'a [T], cols: usize) -> Self {
        Self {
            data,
            rs: 1,
            cs: cols as isize,
        }
    }
}

/// `dst (r×c, row-major) = [dst +] lhs (r×k) · rhs (k×c)`, strides taken from the views. On one
/// thread (`threads ≤ 1`, on the calling thread) `f32`/`f64` products run faer's `matmul`
/// (`Par::Seq`), which at the model's sizes (64–544 rows, 64–129 columns) is 1.6–3× faster on
/// this machine class than the `gemm` crate (measured in docs/BENCHMARKS.md); on more threads,
/// and for other types, the `gemm` crate's kernel (candle's own CPU matmul) splits the output
/// into tiles on rayon's pool. Each path gives the same result whatever else runs beside it.
///
/// With `accumulate` the product is added to what `dst` holds (a bias pre-filled into the rows, a
/// residual stream), else it overwrites it.
///
/// # Panics
///
/// If `dst` holds fewer than `r·c` elements or a view's slice is too short for its `r×k` / `k×c`
/// extent: every index the GEMM touches is `i·rs + j·cs` with `i`, `j` inside those extents, so
/// these checks are what makes the call memory-safe.
pub fn gemm_into<T: WithDType>(
    dst: &mut [T],
    (r, c, k): (usize, usize, usize),
    accumulate: bool,
    lhs: MatrixView<'_, T>,
    rhs: MatrixView<'_, T>,
    threads: usize,
) {
    let extent = |v: MatrixView<'_, T>, rows: usize, cols: usize| {
        if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * v.rs as usize + (cols - 1) * v.cs as usize + 1
        }
    };
    assert!(dst.len() >= r * c, "gemm_into: destination too small");
    assert!(
        lhs.data.len() >= extent(lhs, r, k),
        "gemm_into: lhs too small"
    );
    assert!(
        rhs.data.len() >= extent(rhs, k, c),
        "gemm_into: rhs too small"
    );
    if r == 0 || c == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..r * c].iter_mut().for_each(|v| *v = T::from_f64(0.0));
        }
        return;
    }
    if threads <= 1 {
        // faer's `matmul` as the element type `$u`, which `T::DTYPE` says `T` is.
        macro_rules! faer_as {
            ($u:ty) => {
                // SAFETY: as below; the casts are to `T` itself.
                unsafe {
                    faer_gemm::<$u>(
                        dst.as_mut_ptr().cast(),
                        (r, c, k),
                        accumulate,
                        lhs.cast(),
                        rhs.cast(),
                        1.0,
                    )
                }
            };
        }
        let done = match T::DTYPE {
            DType::F32 => {
                faer_as!(f32);
                true
            }
            DType::F64 => {
                faer_as!(f64);
                true
            }
            _ => false,
        };
        if done {
            return;
        }
    }
    // SAFETY: the extents above bound every access; `dst` is exclusively borrowed and does not
    // alias `lhs` or `rhs` (the borrow checker guarantees it: `dst` is `&mut`).
    unsafe {
        gemm(
            r,
            c,
            k,
            dst.as_mut_ptr(),
            1,
            c as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs,
            lhs.rs,
            rhs.data.as_ptr(),
            rhs.cs,
            rhs.rs,
            T::from_f64(1.0),
            T::from_f64(1.0),
            false,
            false,
            false,
            parallelism(threads),
        )
    }
}

/// A view's pointer and strides, its element type renamed to `U`.
type RawView<U> = (*const U, isize, isize);

impl<T> MatrixView<'_, T> {
    /// The pointer and (row, column) strides, cast to `U` (the caller ensures `U` is `T`).
    fn cast<U>(self) -> RawView<U> {
        (self.data.as_ptr().cast(), self.rs, self.cs)
    }
}

/// `dst (r×c, row-major) = [dst +] alpha·lhs·rhs` by faer's `matmul` on the calling thread.
///
/// # Safety
///
/// `dst` must be valid for writes of `r·c` elements in row-major order, and each view valid for
/// reads at every `i·rs + j·cs` inside its extent, none of them aliasing `dst` ([`gemm_into`]
/// checks both before it calls this).
unsafe fn faer_gemm<U: faer::traits::ComplexField>(
    dst: *mut U,
    (r, c, k): (usize, usize, usize),
    accumulate: bool,
    (lp, lrs, lcs): RawView<U>,
    (rp, rrs, rcs): RawView<U>,
    alpha: U,
) {
    // SAFETY: the caller's contract.
    let (d, a, b) = unsafe {
        (
            faer::MatMut::from_raw_parts_mut(dst, r, c, c as isize, 1),
            faer::MatRef::from_raw_parts(lp, r, k, lrs, lcs),
            faer::MatRef::from_raw_parts(rp, k, c, rrs, rcs),
        )
    };
    let accum = if accumulate {
        faer::Accum::Add
    } else {
        faer::Accum::Replace
    };
    faer::linalg::matmul::matmul(d, accum, a, b, alpha, faer::Par::Seq);
}

/// The contiguous slice of `s` that `l` describes, or an error naming the op.
fn slice<'a, T: WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &'static str,
) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<T>()?[a..b]),
        None => candle_core::bail!("{op}: operand is not contiguous"),
    }
}

/// `y [+]= x Wᵀ [+ b]` for `x (rows×n)`, `W (m×n)`, `b (m)`, `y (rows×m)`, all row-major: without
/// `accumulate` `y`'s rows are first set to `b` (or 0), with it `b` is added to them; then one GEMM
/// accumulates `x Wᵀ` onto them, on `threads` threads. The fused op's forward and the trainer's
/// native step both run this.
pub fn affine_into<T: WithDType>(
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    (rows, n, m): (usize, usize, usize),
    accumulate: bool,
    y: &mut [T],
    threads: usize,
) {
    let y = &mut y[..rows * m];
    match (b, accumulate) {
        (Some(b), false) => y
            .chunks_exact_mut(m.max(1))
            .for_each(|r| r.copy_from_slice(b)),
        (Some(b), true) => y.chunks_exact_mut(m.max(1)).for_each(|r| {
            for (o, &v) in r.iter_mut().zip(b) {
                *o += v;
            }
        }),
        (None, _) => {}
    }
    // Wᵀ as an n×m view of W (m×n, row-major): element (k, j) = W[j·n + k].
    let wt = MatrixView::transposed(w, n);
    let into = accumulate || b.is_some();
    gemm_into(y, (rows, m, n), into, MatrixView::rows(x, n), wt, threads);
}

/// `dx [+]= dy W`, `(rows×n)`, from `dy (rows×m)` and `W (m×n)`: the gradient with respect to the
/// layer input, on `threads` threads.
pub fn input_grad_into<T: WithDType>(
    dy: &[T],
    w: &[T],
    (rows, n, m): (usize, usize, usize),
    accumulate: bool,
    dx: &mut [T],
    threads: usize,
) {
    gemm_into(
        &mut dx[..rows * n],
        (rows, n, m),
        accumulate,
        MatrixView::rows(dy, m),
        MatrixView::rows(w, n),
        threads,
    );
}

/// `dW = dyᵀ x`, `(m×n)`, from `dy (rows×m)` and `x (rows×n)`, on `threads` threads.
pub fn weight_grad<T: WithDType>(
    dy: &[T],
    x: &[T],
    (rows, n, m): (usize, usize, usize),
    threads: usize,
) -> Vec<T> {
    let mut dw = vec![T::from_f64(0.0); m * n];
    // dyᵀ as an m×rows view of dy (rows×m): element (j, r) = dy[r·m + j].
    gemm_into(
        &mut dw,
        (m, n, rows),
        false,
        MatrixView::transposed(dy, m),
        MatrixView::rows(x, n),
        threads,
    );
    dw
}

/// `db = Σ_rows dy` over rows of length `m`, accumulated row by row in the element type.
pub fn bias_grad<T: WithDType>(dy: &[T], m: usize) -> Vec<T> {
    let mut db = vec![T::from_f64(0.0); m];
    if m > 0 {
        for row in dy.chunks_exact(m) {
            for (acc, &v) in db.iter_mut().zip(row) {
                *acc += v;
            }
        }
    }
    db
}

/// Forward kernel: `y (N×m) = x (N×n) · Wᵀ [+ b]` into a new buffer ([`affine_into`]).
fn forward<T: WithDType>(
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    rows: usize,
    n: usize,
    m: usize,
) -> Vec<T> {
    let mut y = vec![T::from_f64(0.0); rows * m];
    affine_into(x, w, b, (rows, n, m), false, &mut y, candle_threads());
    y
}

/// Runs `f` on the operands as `f32` or `f64`, or returns a typed error for other dtypes.
macro_rules! dispatch {
    ($op:expr, $s:expr, |$t:ident| $body:expr) => {
        match $s.dtype() {
            DType::F32 => {
                type $t = f32;
                $body
            }
            DType::F64 => {
                type $t = f64;
                $body
            }
            dtype => candle_core::bail!("{}: no fused kernel for {dtype:?}", $op),
        }
    };
}

/// The forward op over `(x, W, b)`.
struct LinearFwd;

impl CustomOp3 for LinearFwd {
    fn name(&self) -> &'static str {
        FWD_NAME
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, n) = lx.shape().dims2()?;
        let (m, _) = lw.shape().dims2()?;
        let y = dispatch!(FWD_NAME, sx, |T| T::to_cpu_storage_owned(forward::<T>(
            slice(sx, lx, FWD_NAME)?,
            slice(sw, lw, FWD_NAME)?,
            Some(slice(sb, lb, FWD_NAME)?),
            rows,
            n,
            m,
        )));
        Ok((y, Shape::from((rows, m))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let dx = dy.apply_op2_no_bwd(w, &BwdProduct::Input)?;
        let dw = dy.apply_op2_no_bwd(x, &BwdProduct::Weight)?;
        let db = dy.apply_op1_no_bwd(&BwdBias)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// The forward op over `(x, W)` (a layer without bias).
struct LinearFwdNoBias;

impl CustomOp2 for LinearFwdNoBias {
    fn name(&self) -> &'static str {
        FWD_NO_BIAS_NAME
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, n) = lx.shape().dims2()?;
        let (m, _) = lw.shape().dims2()?;
        let y = dispatch!(FWD_NO_BIAS_NAME, sx, |T| T::to_cpu_storage_owned(
            forward::<T>(
                slice(sx, lx, FWD_NO_BIAS_NAME)?,
                slice(sw, lw, FWD_NO_BIAS_NAME)?,
                None,
                rows,
                n,
                m,
            )
        ));
        Ok((y, Shape::from((rows, m))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let dx = dy.apply_op2_no_bwd(w, &BwdProduct::Input)?;
        let dw = dy.apply_op2_no_bwd(x, &BwdProduct::Weight)?;
        Ok((Some(dx), Some(dw)))
    }
}

/// The two GEMMs of the backward pass, over `(dy, other)` with `dy: (N×m)`.
#[derive(Clone, Copy)]
enum BwdProduct {
    /// `dx (N×n) = dy (N×m) · W (m×n)`, `other` = `W`.
    Input,
    /// `dW (m×n) = dyᵀ (m×N) · x (N×n)`, `other` = `x`.
    Weight,
}

impl CustomOp2 for BwdProduct {
    fn name(&self) -> &'static str {
        match self {
            Self::Input => BWD_INPUT_NAME,
            Self::Weight => BWD_WEIGHT_NAME,
        }
    }

    fn cpu_fwd(
        &self,
        sg: &CpuStorage,
        lg: &Layout,
        so: &CpuStorage,
        lo: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (rows, m) = lg.shape().dims2()?;
        let (_, n) = lo.shape().dims2()?;
        let r = match self {
            Self::Input => rows,
            Self::Weight => m,
        };
        let out = dispatch!(op, sg, |T| {
            let (g, o) = (slice::<T>(sg, lg, op)?, slice::<T>(so, lo, op)?);
            T::to_cpu_storage_owned(match self {
                Self::Input => {
                    let mut dx = vec![T::from_f64(0.0); rows * n];
                    input_grad_into(g, o, (rows, n, m), false, &mut dx, candle_threads());
                    dx
                }
                Self::Weight => weight_grad(g, o, (rows, n, m), candle_threads()),
            })
        });
        Ok((out, Shape::from((r, n))))
    }
}

/// `db (m) = Σ_rows dy`, over `dy (N×m)`, accumulated row by row in the element type.
struct BwdBias;

impl CustomOp1 for BwdBias {
    fn name(&self) -> &'static str {
        BWD_BIAS_NAME
    }

    fn cpu_fwd(&self, sg: &CpuStorage, lg: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, m) = lg.shape().dims2()?;
        let db = dispatch!(BWD_BIAS_NAME, sg, |T| {
            T::to_cpu_storage_owned(bias_grad(slice::<T>(sg, lg, BWD_BIAS_NAME)?, m))
        });
        Ok((db, Shape::from(m)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// A deterministic pseudo-random fill in [−1, 1).
    fn fill(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
            })
            .collect()
    }

    /// `gemm_into` on one thread (faer) and on two (the `gemm` crate) against a naive f64 product,
    /// for every combination of plain and transposed operands, with and without accumulation, at
    /// a blocked size and a tiny one. Each product's error is within `2·k·ε` of the exact sum of
    /// `|a||b|` (the standard dot-product bound), in f32 and in f64.
    #[test]
    fn gemm_into_paths_match_a_naive_product() {
        fn check<T: WithDType + Into<f64>>(eps: f64) {
            for &(r, c, k) in &[(37usize, 29usize, 70usize), (2, 3, 1)] {
                let a: Vec<T> = fill(r * k, 1).into_iter().map(T::from_f64).collect();
                let b: Vec<T> = fill(k * c, 2).into_iter().map(T::from_f64).collect();
                let init: Vec<T> = fill(r * c, 3).into_iter().map(T::from_f64).collect();
                for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                    // Element (i, j) of each operand in its stored layout.
                    let at = |i: usize, p: usize| -> f64 {
                        (if ta { a[p * r + i] } else { a[i * k + p] }).into()
                    };
                    let bt = |p: usize, j: usize| -> f64 {
                        (if tb { b[j * k + p] } else { b[p * c + j] }).into()
                    };
                    let lhs = if ta {
                        MatrixView::transposed(&a, r)
                    } else {
                        MatrixView::rows(&a, k)
                    };
                    let rhs = if tb {
                        MatrixView::transposed(&b, k)
                    } else {
                        MatrixView::rows(&b, c)
                    };
                    for accumulate in [false, true] {
                        for threads in [1, 2] {
                            let mut dst = init.clone();
                            gemm_into(&mut dst, (r, c, k), accumulate, lhs, rhs, threads);
                            for i in 0..r {
                                for j in 0..c {
                                    let mut want = if accumulate {
                                        init[i * c + j].into()
                                    } else {
                                        0.0
                                    };
                                    let mut mag = want.abs();
                                    for p in 0..k {
                                        want += at(i, p) * bt(p, j);
                                        mag += (at(i, p) * bt(p, j)).abs();
                                    }
                                    let got: f64 = dst[i * c + j].into();
                                    let tol = 2.0 * (k + 1) as f64 * eps * mag + 1e-300;
                                    assert!(
                                        (got - want).abs() <= tol,
                                        "{r}×{c}×{k} ta={ta} tb={tb} acc={accumulate} threads={threads}: \
                                         ({i},{j}) {got} vs {want}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
        check::<f32>(f64::from(f32::EPSILON));
        check::<f64>(f64::EPSILON);
    }

    /// The composite reference `x Wᵀ + b` from candle ops, its gradients for `L = Σ c ⊙ y`.
    fn composite(x: &Var, w: &Var, b: Option<&Var>, c: &Tensor) -> (Tensor, Vec<Option<Tensor>>) {
        let mut y = x.as_tensor().matmul(&w.as_tensor().t().unwrap()).unwrap();
        if let Some(b) = b {
            y = y.broadcast_add(b.as_tensor()).unwrap();
        }
        let g = (&y * c).unwrap().sum_all().unwrap().backward().unwrap();
        let mut out = vec![g.get(x).cloned(), g.get(w).cloned()];
        if let Some(b) = b {
            out.push(g.get(b).cloned());
        }
        (y, out)
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    #[test]
    fn matches_composite_in_value_and_gradient_f64() {
        // Same sums in another order: agreement to a few ulps of the operands' magnitude (n ≤ 65).
        let dev = Device::Cpu;
        for (rows, n, m, bias) in [
            (7, 5, 3, true),
            (33, 64, 17, true),
            (4, 9, 6, false),
            (1, 1, 1, true),
        ] {
            let t = |v: Vec<f64>, s: (usize, usize)| Tensor::from_vec(v, s, &dev).unwrap();
            let x = Var::from_tensor(&t(fill(rows * n, 1), (rows, n))).unwrap();
            let w = Var::from_tensor(&t(fill(m * n, 2), (m, n))).unwrap();
            let b = bias.then(|| {
                Var::from_tensor(&Tensor::from_vec(fill(m, 3), m, &dev).unwrap()).unwrap()
            });
            let c = t(fill(rows * m, 4), (rows, m));
            let (y_ref, g_ref) = composite(&x, &w, b.as_ref(), &c);
            let y = fused_linear(
                x.as_tensor(),
                w.as_tensor(),
                b.as_ref().map(|b| b.as_tensor()),
            )
            .unwrap();
            let grads = (&y * &c).unwrap().sum_all().unwrap().backward().unwrap();
            let tol = 1e-13;
            assert!(max_abs_diff(&y, &y_ref) < tol, "value {rows}×{n}→{m}");
            let mut got = vec![grads.get(&x).cloned(), grads.get(&w).cloned()];
            if let Some(b) = &b {
                got.push(grads.get(b).cloned());
            }
            for (i, (g, r)) in got.iter().zip(&g_ref).enumerate() {
                let (g, r) = (g.as_ref().expect("fused gradient"), r.as_ref().unwrap());
                assert_eq!(g.dims(), r.dims());
                assert!(max_abs_diff(g, r) < tol, "gradient {i} of {rows}×{n}→{m}");
            }
        }
    }

    #[test]
    fn exact_small_case_f32() {
        // x = [[1, 2]], W = [[1, 0], [0, 1], [1, 1]], b = [0.5, −1, 0]: y = [1.5, 1, 3].
        let dev = Device::Cpu;
        let x = Tensor::new(&[[1f32, 2.0]], &dev).unwrap();
        let w = Tensor::new(&[[1f32, 0.0], [0.0, 1.0], [1.0, 1.0]], &dev).unwrap();
        let b = Tensor::new(&[0.5f32, -1.0, 0.0], &dev).unwrap();
        let y = fused_linear(&x, &w, Some(&b)).unwrap();
        assert_eq!(y.to_vec2::<f32>().unwrap(), vec![vec![1.5, 1.0, 3.0]]);
    }

    #[test]
    fn transposed_input_is_made_contiguous() {
        let dev = Device::Cpu;
        let xt = Tensor::from_vec(fill(12, 5), (3, 4), &dev).unwrap();
        let x = xt.t().unwrap(); // (4, 3), strided
        let w = Tensor::from_vec(fill(6, 6), (2, 3), &dev).unwrap();
        let want = x.matmul(&w.t().unwrap()).unwrap();
        let got = fused_linear(&x, &w, None).unwrap();
        assert!(max_abs_diff(&got, &want) < 1e-14);
    }

    #[test]
    fn shape_mismatch_is_an_error() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 3), DType::F32, &dev).unwrap();
        let w = Tensor::zeros((4, 5), DType::F32, &dev).unwrap();
        let err = fused_linear(&x, &w, None).unwrap_err().to_string();
        assert!(err.contains("3 features"), "{err}");
        let w = Tensor::zeros((4, 3), DType::F32, &dev).unwrap();
        let b = Tensor::zeros(5, DType::F32, &dev).unwrap();
        assert!(fused_linear(&x, &w, Some(&b)).is_err());
    }

    #[test]
    fn empty_batch_gives_empty_output_and_zero_weight_gradient() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::zeros((0, 3), DType::F64, &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::from_vec(fill(6, 7), (2, 3), &dev).unwrap()).unwrap();
        let y = fused_linear(x.as_tensor(), w.as_tensor(), None).unwrap();
        assert_eq!(y.dims(), &[0, 2]);
        let g = y.sum_all().unwrap().backward().unwrap();
        let dw = g.get(&w).expect("weight gradient");
        assert_eq!(dw.to_vec2::<f64>().unwrap(), vec![vec![0.0; 3]; 2]);
    }
}
