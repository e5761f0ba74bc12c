//! LayerNorm without its affine part, `y = (x − μ)/sqrt(σ² + ε)` over the last dimension.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor, D};

use super::kernels::{self, MulAdd, Real, RowKernel1, RowKernel2};
use super::{check_rank, fused_supported, OpsError};

const FWD_NAME: &str = "fused-layer-norm-normalize";
const BWD_NAME: &str = "fused-layer-norm-normalize-bwd";

/// Normalises every row of the last dimension: `y = (x − μ)/sqrt(σ² + ε)` with `μ = mean(x)` and
/// `σ² = mean((x − μ)²)` (biased variance, as `torch.nn.LayerNorm`); no affine part. Differentiable:
/// the backward pass is the fused kernel `dx = (dy − mean(dy) − y·mean(dy⊙y)) / sqrt(σ² + ε)`.
///
/// Fused on the CPU for `f32`/`f64` (a non-contiguous input is made contiguous first); on any other
/// device or dtype this is [`layer_norm_normalize_composite`]. Errors: rank-0 input
/// ([`OpsError::ScalarInput`]), `eps` not finite and positive ([`OpsError::InvalidEps`]).
pub fn layer_norm_normalize(x: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    check_rank(x, "layer_norm_normalize")?;
    check_eps(eps)?;
    if !fused_supported(x) {
        return composite(x, eps);
    }
    x.contiguous()?.apply_op1(LayerNormFwd { eps })
}

/// Reference version of [`layer_norm_normalize`] from differentiable candle tensor ops (mean,
/// broadcast subtraction, square, mean, sqrt, broadcast division): the same formula, every op with its
/// own backward node. Works on every device and float dtype; same errors as the fused version.
pub fn layer_norm_normalize_composite(x: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    check_rank(x, "layer_norm_normalize_composite")?;
    check_eps(eps)?;
    composite(x, eps)
}

fn composite(x: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    centred.broadcast_div(&(var + eps)?.sqrt()?)
}

fn check_eps(eps: f64) -> candle_core::Result<()> {
    if !(eps.is_finite() && eps > 0.0) {
        return Err(OpsError::InvalidEps { eps }.into());
    }
    Ok(())
}

/// Forward op; its `bwd` applies [`LayerNormBwd`] to `(x, dy)`.
pub(super) struct LayerNormFwd {
    pub(super) eps: f64,
}

impl RowKernel1 for LayerNormFwd {
    #[inline(always)]
    fn apply<T: Real, M: MulAdd>(&self, x: &[T], row: usize, out: &mut [T]) {
        kernels::layer_norm_fwd(x, row, self.eps, out)
    }
}

impl CustomOp1 for LayerNormFwd {
    fn name(&self) -> &'static str {
        FWD_NAME
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        kernels::run_kernel1(FWD_NAME, self, s, l)
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let dx = x.apply_op2(&dy.contiguous()?, LayerNormBwd { eps: self.eps })?;
        Ok(Some(dx))
    }
}

/// Backward op over `(x, dy)`: recomputes `μ`, `s` and `y` from `x` and returns `dx`. It has no
/// `bwd` of its own (second-order gradients raise `BackwardNotSupported`).
pub(super) struct LayerNormBwd {
    pub(super) eps: f64,
}

impl RowKernel2 for LayerNormBwd {
    #[inline(always)]
    fn apply<T: Real, M: MulAdd>(&self, x: &[T], dy: &[T], row: usize, out: &mut [T]) {
        kernels::layer_norm_bwd(x, dy, row, self.eps, out)
    }
}

impl CustomOp2 for LayerNormBwd {
    fn name(&self) -> &'static str {
        BWD_NAME
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sg: &CpuStorage,
        lg: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        kernels::run_kernel2(BWD_NAME, self, sx, lx, sg, lg)
    }
}

/// Checks that the two operands of a backward kernel agree in shape and dtype.
pub(super) fn check_pair(
    op: &'static str,
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
) -> candle_core::Result<()> {
    if l1.shape() != l2.shape() {
        return Err(OpsError::ShapeMismatch {
            op,
            lhs: l1.shape().clone(),
            rhs: l2.shape().clone(),
        }
        .into());
    }
    if s1.dtype() != s2.dtype() {
        return Err(OpsError::DTypeMismatch {
            op,
            lhs: s1.dtype(),
            rhs: s2.dtype(),
        }
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn rejects_bad_eps_and_scalars() {
        let x = Tensor::new(&[1.0f32, 2.0], &Device::Cpu).unwrap();
        for eps in [0.0, -1e-5, f64::NAN, f64::INFINITY] {
            let err = layer_norm_normalize(&x, eps).unwrap_err().to_string();
            assert!(err.contains("must be finite and > 0"), "{err}");
            assert!(layer_norm_normalize_composite(&x, eps).is_err());
        }
        let s = Tensor::new(1.0f32, &Device::Cpu).unwrap();
        let err = layer_norm_normalize(&s, 1e-5).unwrap_err().to_string();
        assert!(err.contains("rank 0"), "{err}");
    }

    #[test]
    fn backward_kernel_rejects_mismatched_operands() {
        let x = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        let g = Tensor::zeros((3, 2), DType::F32, &Device::Cpu).unwrap();
        let err = x
            .apply_op2_no_bwd(&g, &LayerNormBwd { eps: 1e-5 })
            .unwrap_err()
            .to_string();
        assert!(err.contains("must be equal"), "{err}");
        let g64 = Tensor::zeros((2, 3), DType::F64, &Device::Cpu).unwrap();
        let err = x
            .apply_op2_no_bwd(&g64, &LayerNormBwd { eps: 1e-5 })
            .unwrap_err()
            .to_string();
        assert!(err.contains("dtypes"), "{err}");
    }

    #[test]
    fn second_order_gradient_is_a_loud_error() {
        // Differentiating through the backward kernel must fail, not return a silently wrong value.
        let v = candle_core::Var::new(&[[1.0f64, 2.0, 4.0]], &Device::Cpu).unwrap();
        let dy = Tensor::new(&[[1.0f64, 0.0, -1.0]], &Device::Cpu).unwrap();
        let dx = v
            .as_tensor()
            .apply_op2(&dy, LayerNormBwd { eps: 1e-5 })
            .unwrap();
        let err = dx.sum_all().unwrap().backward().unwrap_err().to_string();
        assert!(err.contains(BWD_NAME), "{err}");
    }

    #[test]
    fn forward_kernel_honours_start_offset() {
        // A narrow along dim 0 is contiguous with a non-zero start offset: rows 1..3 of x.
        let x = Tensor::arange(0f32, 12., &Device::Cpu)
            .unwrap()
            .reshape((4, 3))
            .unwrap();
        let sub = x.narrow(0, 1, 2).unwrap();
        let fused = layer_norm_normalize(&sub, 1e-5).unwrap();
        let comp = layer_norm_normalize_composite(&sub, 1e-5).unwrap();
        let d = (fused - comp)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-6, "{d}");
    }
}
