//! Softmax over the last dimension.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor, D};

use super::kernels::{self, MulAdd, Real, RowKernel1, RowKernel2};
use super::{check_rank, fused_supported};

const FWD_NAME: &str = "fused-softmax-last-dim";
const BWD_NAME: &str = "fused-softmax-last-dim-bwd";

/// Softmax over the last dimension, `y_i = exp(x_i − max x) / Σ_j exp(x_j − max x)` (the shift by
/// the row maximum keeps scores like ±1e4 from overflowing). Differentiable: the backward pass is the
/// fused kernel `dx = y ⊙ (dy − Σ dy⊙y)`.
///
/// Fused on the CPU for `f32`/`f64` (a non-contiguous input is made contiguous first); on any other
/// device or dtype this is [`softmax_last_dim_composite`]. Errors: rank-0 input
/// ([`super::OpsError::ScalarInput`]).
pub fn softmax_last_dim(x: &Tensor) -> candle_core::Result<Tensor> {
    check_rank(x, "softmax_last_dim")?;
    if !fused_supported(x) {
        return composite(x);
    }
    x.contiguous()?.apply_op1(SoftmaxFwd)
}

/// Reference version of [`softmax_last_dim`] from differentiable candle tensor ops (max, broadcast
/// subtraction, exp, sum, broadcast division). The row maximum is detached: softmax is invariant to
/// the shift, so its exact gradient through the maximum is zero. Works on every device and float
/// dtype.
pub fn softmax_last_dim_composite(x: &Tensor) -> candle_core::Result<Tensor> {
    check_rank(x, "softmax_last_dim_composite")?;
    composite(x)
}

fn composite(x: &Tensor) -> candle_core::Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&sum)
}

/// Forward op; its `bwd` applies [`SoftmaxBwd`] to `(y, dy)`.
struct SoftmaxFwd;

impl RowKernel1 for SoftmaxFwd {
    #[inline(always)]
    fn apply<T: Real, M: MulAdd>(&self, x: &[T], row: usize, out: &mut [T]) {
        kernels::softmax_fwd::<T, M>(x, row, out)
    }
}

impl CustomOp1 for SoftmaxFwd {
    fn name(&self) -> &'static str {
        FWD_NAME
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        kernels::run_kernel1(FWD_NAME, self, s, l)
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let dx = y.apply_op2(&dy.contiguous()?, SoftmaxBwd)?;
        Ok(Some(dx))
    }
}

/// Backward op over `(y, dy)` returning `dx`. It has no `bwd` of its own (second-order gradients
/// raise `BackwardNotSupported`).
struct SoftmaxBwd;

impl RowKernel2 for SoftmaxBwd {
    #[inline(always)]
    fn apply<T: Real, M: MulAdd>(&self, y: &[T], dy: &[T], row: usize, out: &mut [T]) {
        kernels::softmax_bwd(y, dy, row, out)
    }
}

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        BWD_NAME
    }

    fn cpu_fwd(
        &self,
        sy: &CpuStorage,
        ly: &Layout,
        sg: &CpuStorage,
        lg: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        kernels::run_kernel2(BWD_NAME, self, sy, ly, sg, lg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn rejects_scalars() {
        let s = Tensor::new(1.0f32, &Device::Cpu).unwrap();
        let err = softmax_last_dim(&s).unwrap_err().to_string();
        assert!(err.contains("rank 0"), "{err}");
        assert!(softmax_last_dim_composite(&s).is_err());
    }

    #[test]
    fn kernel_rejects_unsupported_dtype_directly() {
        // The public function falls back for bf16; the raw op must refuse it with a typed error.
        let x = Tensor::zeros((2, 3), DType::BF16, &Device::Cpu).unwrap();
        let err = x.apply_op1_no_bwd(&SoftmaxFwd).unwrap_err().to_string();
        assert!(err.contains("no fused CPU kernel"), "{err}");
    }
}
