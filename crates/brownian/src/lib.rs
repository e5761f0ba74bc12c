//! Is the motion of tokens a Brownian motion? Estimators for MATH.md §3, proven on synthetic
//! processes with known answers before they are trusted on a transformer.
//!
//! The paper (arXiv 2107.05264) claims that token updates behave like Brownian motion on the sphere
//! of normalised tokens, and that the second-order (Itô) term of that motion must not be ignored.
//! This crate measures the claim on an ensemble of trajectories (`members × time × dim`, clock =
//! depth or training step):
//!
//! - [`msd`]: mean squared displacement (Euclidean, chordal, geodesic), its exponent α by a
//!   log-log least-squares fit with a bootstrap interval over members, and the diffusion
//!   coefficient D in Rⁿ and on the sphere;
//! - [`mod@dfa`]: the Hurst exponent of a scalar series by detrended fluctuation analysis;
//! - [`increments`]: excess kurtosis and Jarque–Bera, autocorrelation with its white-noise band,
//!   quadratic-variation linearity, drift share;
//! - [`ito`]: the inward drift `−σ²(n−1)/2` of renormalised tangent steps;
//! - [`simulate`]: seeded Brownian motion, geodesic random walk, fractional Brownian motion and
//!   drift plus noise, with their exact expectations;
//! - [`analyse`]: all of it in one call, returning a [`BrownianReport`].
//!
//! **Generator convention.** D is defined by the generator `DΔ` (Δ the Laplacian, or the
//! Laplace–Beltrami operator of the sphere of radius r): `dX = √(2D) dW`, so `E‖ΔX‖² = 2nDΔt` in Rⁿ
//! and `E[x̂₀·x̂_t] = exp(−(n−1)Dt/r²)` on S^(n−1)(r). Under the probabilists' `½Δ` the same data give
//! a D twice as large.
//!
//! **Design decision.** Every estimator is a plain function of a [`Trajectories`] value (contiguous
//! f64 on the host) and returns a typed [`BrownianError`] instead of a NaN: short runs, static
//! tokens and mixed walks are normal events during training, and the trainer must be able to tell
//! them apart. The crate knows nothing of models or optimizers.
//!
//! ```
//! use bmt_brownian::{analyse, AnalysisConfig, Geometry, Trajectories};
//! use candle_core::{Device, Tensor};
//! use rand::SeedableRng;
//!
//! // Your own tokens: (members, time, dim), here 8 tokens followed over 64 steps in R⁴,
//! // each a random walk with steps of variance 0.01 per coordinate.
//! let steps = Tensor::randn(0f32, 0.1, (8, 64, 4), &Device::Cpu)?;
//! let tokens = steps.cumsum(1)?;
//! let traj = Trajectories::from_tensor(&tokens, Geometry::Euclidean)?;
//!
//! let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
//! let report = analyse(&traj, &AnalysisConfig::default(), &mut rng)?;
//! // E‖ΔX‖² = 4 · 0.01 = 2nD with n = 4, so D ≈ 0.005; α ≈ 1 for a random walk.
//! assert!((report.diffusion / 0.005 - 1.0).abs() < 0.2);
//! let (lo, hi) = report.alpha_ci.unwrap();
//! assert!(lo <= report.alpha && report.alpha <= hi);
//! println!("α = {:.2} [{lo:.2}, {hi:.2}], kurtosis {:.2}", report.alpha, report.excess_kurtosis);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

pub mod analysis;
pub mod dfa;
pub mod error;
pub mod increments;
pub mod ito;
pub mod msd;
pub mod simulate;
pub mod special;
pub mod trajectory;

pub use analysis::{analyse, AnalysisConfig, BrownianReport};
pub use dfa::{dfa, Dfa, DfaConfig};
pub use error::{BrownianError, Result};
pub use ito::{ito_drift, ItoDrift};
pub use msd::{
    diffusion_coefficient, fit_power_law, msd_curve, msd_exponent, LagWindow, MsdExponent, MsdKind,
    PowerLawFit,
};
pub use trajectory::{Geometry, Trajectories, SPHERE_RTOL};
