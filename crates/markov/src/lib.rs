//! # bmt-markov: attention is the transition matrix of a random walk on the tokens
//!
//! Claim 3 of arXiv 2107.05264: `P = softmax(QKᵀ/√d)` is row-stochastic, so each attention head is
//! the transition matrix of a random walk on the T tokens, which after LayerNorm sit on a sphere
//! (`docs/MATH.md` §2). This crate measures that walk per (batch, head): the stationary law π, the
//! second eigenvalue modulus |λ₂| and spectral gap, Dobrushin's coefficient, row entropies and
//! effective neighbours, the entropy rate, the reversibility defect, the distance from doubly
//! stochastic, a mixing-time bound, k-step kernels and rank collapse, and the Sinkhorn projection.
//!
//! **Design.** Tensors may live on any Candle device in f32 or f64; [`AttentionKernels`] moves them
//! to the host once, validates them (typed [`MarkovError`]s name the offending entry or the worst
//! row) and keeps them in f64, because every metric here is a small dense T × T computation
//! (eigenvalues via faer) that candle cannot do. Matrices are processed in parallel with rayon,
//! each one sequentially; [`AttentionKernels::head_summaries`] reduces them to the per-head means
//! a trainer logs every epoch.
//!
//! **Stationary law.** The default [`StationaryMethod::Direct`] solves `πᵀP = πᵀ` exactly on each
//! closed communicating class (GTH elimination), so it is reliable for nearly decomposable heads
//! where power iteration ([`StationaryMethod::Power`]) would take ~1/(1 − |λ₂|) steps; a causal
//! mask gives π = e₀ (token 0 absorbing). The residual `‖πᵀP − πᵀ‖₁` is always reported.
//!
//! ```
//! use bmt_markov::{AttentionKernels, MetricsOptions};
//! use candle_core::{Device, Tensor};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dev = Device::Cpu;
//! // Your queries and keys, (batch, heads, T, d): here random ones.
//! let q = Tensor::randn(0f32, 1.0, (2, 4, 16, 8), &dev)?;
//! let k = Tensor::randn(0f32, 1.0, (2, 4, 16, 8), &dev)?;
//! let kernels = AttentionKernels::from_qk(&q, &k, false)?;
//!
//! let per_matrix = kernels.metrics(&MetricsOptions::default())?; // [b * heads + h]
//! let m = &per_matrix[0];
//! assert!(m.pi_residual < 1e-10);
//! assert!(m.lambda2_abs <= m.dobrushin + 1e-9 && m.dobrushin <= 1.0);
//! assert!(m.row_entropy_mean <= (16f64).ln());
//!
//! for s in kernels.head_summaries(&MetricsOptions::default())? {
//!     println!("head {}: H = {:.3}, |λ₂| = {:.3}, δ = {:.3}", s.head, s.row_entropy_mean,
//!              s.lambda2_abs, s.dobrushin);
//! }
//!
//! // The same from probabilities you computed yourself (e.g. a model's attention output).
//! let probs = kernels.to_tensor(&dev)?;
//! let again = AttentionKernels::from_probs(&probs, bmt_markov::DEFAULT_ROW_TOL)?;
//! assert_eq!(again.heads(), 4);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod error;
mod kernels;
mod matrix;
mod metrics;

pub use error::{MarkovError, Result};
pub use kernels::{causal_mask, AttentionKernels, WorstRow, DEFAULT_ROW_TOL};
pub use matrix::{
    entropy, KernelView, SinkhornOptions, SinkhornResult, Stationary, StationaryMethod,
};
pub use metrics::{
    kernel_metrics, summarize_heads, HeadSummary, KernelMetrics, MetricsOptions, RankCollapse,
};
