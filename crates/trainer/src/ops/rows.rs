//! Per-feature bias and gain over rows, with backward passes that sum over rows in one pass.
//!
//! `x.broadcast_add(b)` with `x` `(…, K)` and `b` `(K)` is differentiable in candle, but the gradient
//! of `b` is a sum over the leading dimensions, which candle's CPU backend reduces element by element
//! with an integer division per element (its fast path covers only trailing dimensions). On W1 those
//! reductions (26 linear biases, 9 LayerNorm gains and biases, the position embeddings) cost about
//! as much as all the matmuls. These ops do the same arithmetic with a contiguous row-sum kernel.

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, WithDType,
};

use super::kernels::contiguous_slice;
use super::{fused_supported, OpsError};

const SUM_NAME: &str = "sum-over-rows";
const ADD_NAME: &str = "add-rows";
const AFFINE_NAME: &str = "scale-shift-rows";

/// `x + b`, `b` broadcast over every leading dimension of `x` (`b`'s shape is a suffix of `x`'s).
/// Differentiable: `∂x = ∂y`, `∂b = Σ_rows ∂y`. Fused on the CPU for `f32`/`f64`, the composite
/// `broadcast_add` elsewhere.
pub fn add_rows(x: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    split(x, b, "add_rows")?;
    if !fused_supported(x) || x.dtype() != b.dtype() || !b.device().is_cpu() {
        return x.broadcast_add(b);
    }
    x.contiguous()?.apply_op2(&b.contiguous()?, AddRows)
}

/// `x ⊙ g + b`, `g` and `b` of the same shape, broadcast over every leading dimension of `x`
/// (a LayerNorm's affine part). Differentiable: `∂x = ∂y ⊙ g`, `∂g = Σ_rows ∂y ⊙ x`,
/// `∂b = Σ_rows ∂y`. Fused on the CPU for `f32`/`f64`, composite elsewhere.
pub fn scale_shift_rows(x: &Tensor, g: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    split(x, g, "scale_shift_rows")?;
    split(x, b, "scale_shift_rows")?;
    if g.dims() != b.dims() {
        return Err(candle_core::Error::wrap(OpsError::ShapeMismatch {
            op: "scale_shift_rows",
            lhs: g.shape().clone(),
            rhs: b.shape().clone(),
        }));
    }
    let same = x.dtype() == g.dtype() && x.dtype() == b.dtype();
    if !fused_supported(x) || !same || !g.device().is_cpu() || !b.device().is_cpu() {
        return x.broadcast_mul(g)?.broadcast_add(b);
    }
    x.contiguous()?
        .apply_op3(&g.contiguous()?, &b.contiguous()?, ScaleShiftRows)
}

/// `(rows, K)` for broadcasting `b` over `x`; an error unless `b`'s shape is a suffix of `x`'s.
fn split(x: &Tensor, b: &Tensor, op: &'static str) -> candle_core::Result<(usize, usize)> {
    let (xd, bd) = (x.dims(), b.dims());
    if bd.len() > xd.len() || xd[xd.len() - bd.len()..] != *bd || b.elem_count() == 0 {
        return Err(candle_core::Error::wrap(OpsError::ShapeMismatch {
            op,
            lhs: x.shape().clone(),
            rhs: b.shape().clone(),
        }));
    }
    let k = b.elem_count();
    Ok((x.elem_count() / k, k))
}

struct AddRows;

impl CustomOp2 for AddRows {
    fn name(&self) -> &'static str {
        ADD_NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        fn run<T: WithDType>(x: &[T], b: &[T]) -> Vec<T> {
            let mut y = Vec::with_capacity(x.len());
            for row in x.chunks_exact(b.len()) {
                y.extend(row.iter().zip(b).map(|(&u, &v)| u + v));
            }
            y
        }
        let out = match (s1.dtype(), s2.dtype()) {
            (DType::F32, DType::F32) => f32::to_cpu_storage_owned(run(
                contiguous_slice::<f32>(s1, l1, ADD_NAME)?,
                contiguous_slice::<f32>(s2, l2, ADD_NAME)?,
            )),
            (DType::F64, DType::F64) => f64::to_cpu_storage_owned(run(
                contiguous_slice::<f64>(s1, l1, ADD_NAME)?,
                contiguous_slice::<f64>(s2, l2, ADD_NAME)?,
            )),
            (dtype, _) => {
                return Err(OpsError::UnsupportedDType {
                    op: ADD_NAME,
                    dtype,
                }
                .into())
            }
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let db = sum_rows(dy, b.elem_count())?.reshape(b.shape())?;
        Ok((Some(dy.clone()), Some(db)))
    }
}

struct ScaleShiftRows;

impl CustomOp3 for ScaleShiftRows {
    fn name(&self) -> &'static str {
        AFFINE_NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        fn run<T: WithDType>(x: &[T], g: &[T], b: &[T]) -> Vec<T> {
            let mut y = Vec::with_capacity(x.len());
            for row in x.chunks_exact(g.len()) {
                y.extend(row.iter().zip(g).zip(b).map(|((&u, &s), &t)| u * s + t));
            }
            y
        }
        let out = match s1.dtype() {
            DType::F32 => f32::to_cpu_storage_owned(run(
                contiguous_slice::<f32>(s1, l1, AFFINE_NAME)?,
                contiguous_slice::<f32>(s2, l2, AFFINE_NAME)?,
                contiguous_slice::<f32>(s3, l3, AFFINE_NAME)?,
            )),
            DType::F64 => f64::to_cpu_storage_owned(run(
                contiguous_slice::<f64>(s1, l1, AFFINE_NAME)?,
                contiguous_slice::<f64>(s2, l2, AFFINE_NAME)?,
                contiguous_slice::<f64>(s3, l3, AFFINE_NAME)?,
            )),
            dtype => {
                return Err(OpsError::UnsupportedDType {
                    op: AFFINE_NAME,
                    dtype,
                }
                .into())
            }
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        g: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let k = g.elem_count();
        let dx = dy.broadcast_mul(g)?;
        let dg = sum_rows(&(dy * x)?, k)?.reshape(g.shape())?;
        let db = sum_rows(dy, k)?.reshape(b.shape())?;
        Ok((Some(dx), Some(dg), Some(db)))
    }
}

/// Column sums of a contiguous `(R, K)` view: `(K)`.
struct SumRows {
    k: usize,
}

impl CustomOp1 for SumRows {
    fn name(&self) -> &'static str {
        SUM_NAME
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        fn run<T: WithDType>(x: &[T], k: usize) -> Vec<T> {
            let mut acc = vec![0.0f64; k];
            for row in x.chunks_exact(k) {
                for (a, v) in acc.iter_mut().zip(row) {
                    *a += v.to_f64();
                }
            }
            acc.into_iter().map(T::from_f64).collect()
        }
        let out = match s.dtype() {
            DType::F32 => {
                f32::to_cpu_storage_owned(run(contiguous_slice::<f32>(s, l, SUM_NAME)?, self.k))
            }
            DType::F64 => {
                f64::to_cpu_storage_owned(run(contiguous_slice::<f64>(s, l, SUM_NAME)?, self.k))
            }
            dtype => {
                return Err(OpsError::UnsupportedDType {
                    op: SUM_NAME,
                    dtype,
                }
                .into())
            }
        };
        Ok((out, Shape::from(self.k)))
    }
}

/// `Σ_rows x` for `x` `(…, K)`: the sum over every leading dimension, `(K)`, in one contiguous pass
/// with `f64` accumulators. Not differentiable (a building block of backward passes).
pub fn sum_rows(x: &Tensor, k: usize) -> candle_core::Result<Tensor> {
    if !fused_supported(x) {
        let rows = x.elem_count() / k.max(1);
        return x.reshape((rows, k))?.sum(0);
    }
    x.contiguous()?.apply_op1_no_bwd(&SumRows { k })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn var(v: Vec<f64>, shape: &[usize]) -> Var {
        Var::from_tensor(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap()).unwrap()
    }

    fn seq(n: usize, a: f64) -> Vec<f64> {
        (0..n).map(|i| ((i as f64 + 1.0) * a).sin()).collect()
    }

    /// Values and every gradient equal the composite broadcast ops' to f64 rounding (the sums run
    /// over ≤ 6 rows: |error| ≤ 6·2⁻⁵³·max|term| ≪ 1e-12), for a bias over one and over two
    /// leading dimensions and a multi-dimensional bias (the position-embedding case).
    #[test]
    fn match_composite_values_and_gradients() {
        for (xs, bs) in [
            (vec![4usize, 3], vec![3usize]),
            (vec![2, 3, 5], vec![5]),
            (vec![2, 3, 5], vec![3, 5]),
        ] {
            let n: usize = xs.iter().product();
            let k: usize = bs.iter().product();
            let x = var(seq(n, 0.7), &xs);
            let g = var(seq(k, 1.3), &bs);
            let b = var(seq(k, 2.1), &bs);
            let w = Tensor::from_vec(seq(n, 0.37), xs.as_slice(), &Device::Cpu).unwrap();
            let fused = scale_shift_rows(x.as_tensor(), g.as_tensor(), b.as_tensor()).unwrap();
            let fused = add_rows(&fused, b.as_tensor()).unwrap();
            let comp = x
                .as_tensor()
                .broadcast_mul(g.as_tensor())
                .unwrap()
                .broadcast_add(b.as_tensor())
                .unwrap();
            let comp = comp.broadcast_add(b.as_tensor()).unwrap();
            let gf = (&fused * &w)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let gc = (&comp * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let close = |a: &Tensor, c: &Tensor| {
                let d = (a - c)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap();
                assert!(d < 1e-12, "{xs:?}/{bs:?}: differs by {d}");
            };
            close(&fused, &comp);
            for v in [&x, &g, &b] {
                close(gf.get(v).unwrap(), gc.get(v).unwrap());
            }
        }
    }

    #[test]
    fn a_bias_that_is_not_a_suffix_is_an_error() {
        let x = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
        assert!(add_rows(&x, &b).is_err());
        assert!(scale_shift_rows(&x, &b, &b).is_err());
    }
}
