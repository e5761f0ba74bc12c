//! K-FAC and CG-FAC preconditioners for Candle models built from tracked linear layers.
//!
//! Claim 5 of arXiv 2107.05264 is a second-order optimizer for attention: the iterative K-FAC of
//! arXiv 2101.00218 (CG-FAC), which solves the Kronecker-factored system `G X A + λX = ∇W̄` by
//! conjugate gradient instead of eigendecompositions. This crate implements it next to standard
//! K-FAC (Martens & Grosse 2015) so that the two can be compared on equal terms.
//!
//! # Composition
//!
//! - **Seam**: [`TrackedLinear`] (`y = x Wᵀ + b`) records its input and exposes `∂L/∂y` through a
//!   zero probe when tracking is on; [`TrackedLinear::capture`] returns a [`LayerCapture`].
//! - **Curvature** ([`factors`], MATH §4): `A = E[āāᵀ]` with the bias folded in (`ā = [a; 1]`) and
//!   `G = E[ggᵀ]` from *per-sample* output gradients (autograd's carry `1/N`), in the expand or
//!   reduce weight-sharing mode of Eschenhagen et al. 2023, averaged by an EMA every `k_fac` steps.
//! - **Preconditioner** ([`Preconditioner`], a gradient transform): [`Solver::Eigen`],
//!   [`Solver::Inverse`], [`Solver::CgFactor`] (MATH §5) or [`Solver::CgMatrixFree`]; Tikhonov or
//!   factored damping, optionally adaptive; KL clipping. Every breakdown is caught, counted in
//!   [`KfacStepStats`] and answered by a jittered retry and then the plain gradient.
//! - **Outer update** ([`KfacOptimizer`]): SGD with momentum on the preconditioned `νU`, AdamW on
//!   every parameter the preconditioner does not own; all state saves and loads by name.
//!
//! # Example
//!
//! A user's own two-layer model, one preconditioned step with CG-FAC:
//!
//! ```
//! use bmt_kfac::{
//!     linear_vars, AdamWConfig, KfacConfig, KfacOptimizer, NamedParams, PreconditionedLayer,
//!     Solver, TrackedLinear,
//! };
//! use candle_core::{Device, Module, Tensor};
//!
//! # fn main() -> bmt_kfac::Result<()> {
//! let dev = Device::Cpu;
//! let (w1, b1) = linear_vars((0..12).map(|i| (i as f32 * 0.37).sin()).collect(), Some(vec![0.0; 4]), 4, 3, &dev)?;
//! let (w2, b2) = linear_vars((0..8).map(|i| (i as f32 * 0.61).cos()).collect(), Some(vec![0.0; 2]), 2, 4, &dev)?;
//! let l1 = TrackedLinear::new("l1", w1, b1)?;
//! let l2 = TrackedLinear::new("l2", w2, b2)?;
//! let cfg = KfacConfig { solver: Solver::CgFactor, ..Default::default() };
//! let layers = vec![PreconditionedLayer::from_tracked(&l1), PreconditionedLayer::from_tracked(&l2)];
//! let mut opt = KfacOptimizer::new(layers, NamedParams::default(), cfg, AdamWConfig::default())?;
//!
//! let x = Tensor::new(&[[0.5f32, -1.0, 2.0], [1.5, 0.25, -0.5], [-1.0, 1.0, 0.0]], &dev)?;
//! let y = Tensor::new(&[[1.0f32, 0.0], [0.0, 1.0], [1.0, 1.0]], &dev)?;
//! let mse = |p: &Tensor| (p - &y)?.sqr()?.mean_all();
//! let before = mse(&l2.forward(&l1.forward(&x)?.tanh()?)?)?.to_scalar::<f32>()?;
//!
//! for layer in [&l1, &l2] {
//!     layer.set_tracking(opt.needs_curvature());
//! }
//! let loss = mse(&l2.forward(&l1.forward(&x)?.tanh()?)?)?;
//! let grads = loss.backward()?;
//! let mut captures = Vec::new();
//! for layer in [&l1, &l2] {
//!     captures.extend(layer.capture(&grads)?);
//! }
//! let stats = opt.step(&grads, &captures)?;
//! assert_eq!(stats.fallbacks, 0);
//! assert!(stats.cg_iterations_max >= 1);
//!
//! for layer in [&l1, &l2] {
//!     layer.set_tracking(false);
//! }
//! let after = mse(&l2.forward(&l1.forward(&x)?.tanh()?)?)?.to_scalar::<f32>()?;
//! assert!(after < before);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

pub mod cg;
pub mod error;
pub mod factors;
mod host;
mod host_update;
mod linalg;
pub mod linear_op;
pub mod optim;
pub mod precond;
pub mod tracked;
mod vector;

#[cfg(test)]
mod tests;

pub use cg::{
    conjugate_gradient, conjugate_gradient_from, CgOutcome, CgSettings, CgVector, WarmStart,
};
pub use error::{KfacError, Result};
pub use factors::{kronecker_factors, kronecker_quadratic_form, CurvatureRows, WeightSharing};
pub use linear_op::{fused_linear, fused_linear_supported};
pub use optim::{AdamW, AdamWConfig, GradientSource, NamedParams, Optimizer, SgdMomentum};
pub use precond::{
    sample_labels, DampingKind, FisherType, KfacConfig, KfacOptimizer, KfacStepStats,
    PreconditionedLayer, Preconditioner, Solver,
};
pub use tracked::{linear_vars, LayerCapture, TrackedLinear};
