//! K-FAC and CG-FAC preconditioners for Candle linear layers.
//!
//! The seam with a user's model is [`TrackedLinear`]: a linear layer that, when tracking is on,
//! records its input activations and exposes `∂L/∂y` for its output through a zero probe variable.
//! From those captures the curvature factors `A = E[āāᵀ]` and `G = E[ggᵀ]` (MATH §4) are formed
//! and the Kronecker-factored system is solved, either exactly by eigendecomposition or
//! iteratively by conjugate gradient (CG-FAC, MATH §5).
//!
//! [`optim`] holds the first-order optimizers (AdamW, SGD with momentum) with savable state that
//! K-FAC composes with: preconditioned layers take SGD with momentum, the rest AdamW.
#![deny(missing_docs)]

pub mod cg;
pub mod error;
pub mod factors;
mod linalg;
pub mod optim;
pub mod precond;
pub mod tracked;

#[cfg(test)]
mod tests;

pub use cg::{conjugate_gradient, CgOutcome, CgSettings};
pub use error::{KfacError, Result};
pub use factors::{kronecker_factors, kronecker_quadratic_form, CurvatureRows, WeightSharing};
pub use optim::{AdamW, AdamWConfig, GradientSource, NamedParams, Optimizer, SgdMomentum};
pub use precond::{
    sample_labels, DampingKind, FisherType, KfacConfig, KfacOptimizer, KfacStepStats,
    PreconditionedLayer, Preconditioner, Solver,
};
pub use tracked::{linear_vars, LayerCapture, TrackedLinear};
