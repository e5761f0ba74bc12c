//! Fused, differentiable LayerNorm (normalisation part) and softmax over the last dimension.
//!
//! # Why
//!
//! candle-nn's fast `ops::layer_norm` and `ops::softmax_last_dim` are built on `apply_op*_no_bwd`:
//! they have no backward pass, so every parameter upstream silently receives no gradient (see
//! `docs/CANDLE-NOTES.md`). The differentiable composites are chains of small tensor ops, each with its
//! own pass over memory and its own backward node. The fused versions here do one kernel per direction:
//!
//! | op | forward (per row of length n) | backward (per row) |
//! |----|-------------------------------|--------------------|
//! | [`layer_norm_normalize`] | `y = (x − μ)/s`, `s = sqrt(σ² + ε)` | `dx = (dy − mean(dy) − y·mean(dy⊙y)) / s` |
//! | [`softmax_last_dim`] | `y = exp(x − max x) / Σ exp(x − max x)` | `dx = y ⊙ (dy − Σ dy⊙y)` |
//! | [`gelu`] | `y = ½x(1 + tanh(√(2/π)(x + 0.044715x³)))` | `dx = dy·(½(1+t) + ½x(1−t²)√(2/π)(1+0.134145x²))` |
//!
//! Both are `candle_core::CustomOp1`s applied with `Tensor::apply_op1`, so they are recorded in the
//! autograd graph; their `bwd` runs a second fused kernel (a `CustomOp2` over `(x, dy)` for LayerNorm,
//! over `(y, dy)` for softmax). Row sums are accumulated in `f64` for both `f32` and `f64` inputs.
//!
//! # Example
//!
//! ```
//! use bmt_trainer::ops::{layer_norm_normalize, softmax_last_dim};
//! use candle_core::{Device, Tensor, Var};
//!
//! # fn main() -> candle_core::Result<()> {
//! let x = Var::from_tensor(&Tensor::new(&[[1f32, 2.0, 4.0], [0.0, 0.0, 3.0]], &Device::Cpu)?)?;
//! let y = layer_norm_normalize(x.as_tensor(), 1e-5)?; // rows: mean 0, ‖y‖² ≈ n
//! let p = softmax_last_dim(&y)?; // rows sum to 1
//! let w = Tensor::new(&[[1f32, 0.0, -1.0], [0.5, 0.5, 2.0]], &Device::Cpu)?;
//! let grads = (p * w)?.sum_all()?.backward()?;
//! let dx = grads.get(&x).expect("the fused ops are recorded for backprop");
//! assert_eq!(dx.dims(), &[2, 3]);
//! # Ok(())
//! # }
//! ```
//!
//! # Devices and dtypes
//!
//! The fused kernels exist for the CPU and `f32`/`f64` only. On any other device (CUDA, Metal) or dtype
//! (`f16`, `bf16`) the public functions silently fall back to the composite versions, which are
//! differentiable everywhere; the model therefore still trains on CUDA, at composite speed.
//!
//! # Limits
//!
//! * Second-order gradients (differentiating a gradient, which needs `CANDLE_GRAD_DO_NOT_DETACH`) are
//!   not supported through the fused backward kernels: they return candle's `BackwardNotSupported`
//!   error rather than a silently wrong gradient. Use the composite versions for that.
//! * Rows are processed sequentially on the calling thread (no second thread pool next to candle's).
//! * A softmax row that is entirely `−∞` yields `NaN`, exactly like the composite (`0/0`).

mod attention;
mod error;
mod first_query;
mod gelu;
mod kernels;
mod layer_norm;
mod rows;
pub(crate) mod slices;
mod softmax;

pub use attention::{attention, attention_composite};
pub use error::OpsError;
pub use gelu::{gelu, gelu_composite};
pub use layer_norm::{layer_norm_normalize, layer_norm_normalize_composite};
pub use rows::{add_rows, scale_shift_rows, sum_rows};
pub use softmax::{softmax_last_dim, softmax_last_dim_composite};

use candle_core::{DType, Tensor};

/// Whether the fused CPU kernels handle `x` (CPU device and `f32`/`f64`); otherwise the public
/// functions use the composite versions.
fn fused_supported(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// Rejects rank-0 tensors, which have no last dimension to normalise over.
fn check_rank(x: &Tensor, op: &'static str) -> candle_core::Result<()> {
    if x.rank() == 0 {
        return Err(candle_core::Error::wrap(OpsError::ScalarInput { op }));
    }
    Ok(())
}
