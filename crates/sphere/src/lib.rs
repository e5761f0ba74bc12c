//! # bmt-sphere: tokens after LayerNorm are points on a hypersphere
//!
//! Claim 2 of arXiv 2107.05264, made measurable for any Candle model (MATH.md §1, and the clustering
//! bullet of §2). LayerNorm without its affine part maps every token onto the (n−2)-sphere of radius
//! √n inside the hyperplane `1⊥` (up to a per-token factor `(1 + ε/σ²)^(−1/2)`); RMSNorm maps onto the
//! full sphere S^(n−1)(√n); the affine part `γ ⊙ y + β` turns either into an ellipsoid. This crate
//! provides
//! - [`reference`]: `f64` geometry on plain slices (geodesic distance, exp/log maps, parallel
//!   transport, Karcher mean, uniform and von Mises–Fisher sampling, the Bessel ratio `A_n(κ)`), the
//!   oracle for everything else;
//! - [`geometry`]: the same operations batched on Candle tensors (any device, f32/f64, last dimension =
//!   features, leading dimensions broadcast);
//! - [`norm`]: how far a LayerNorm's or RMSNorm's output is from the sphere MATH §1 predicts, and how
//!   far the affine output is from its ellipsoid;
//! - [`cluster`]: pairwise cosines and ε-cluster counts of token sets (Geshkovski et al. 2023).
//!
//! Design decision: points are always used through their radial projection `x/‖x‖` and the radius is
//! passed explicitly, so the same functions serve the ε > 0 output of a real LayerNorm (slightly
//! inside the sphere) and exact sphere points; undefined cases (antipodal logarithm, zero tokens,
//! mismatched dimensions) are typed [`SphereError`]s, never NaNs or panics.
//!
//! ## Example: LayerNorm your own tokens and check the sphere
//!
//! ```
//! use bmt_sphere::{cluster::cluster_stats, geometry, norm};
//! use candle_core::{Device, Tensor};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Your own activations: 2 sequences of 5 tokens with 8 features.
//! let x = Tensor::randn(0f32, 3.0, (2, 5, 8), &Device::Cpu)?;
//! let eps = 1e-5;
//! let y = norm::layer_norm(&x, eps)?; // or the pre-affine output of your model's LayerNorm
//!
//! let report = norm::layer_norm_sphere_check(&x, &y, eps)?;
//! assert!(report.max_relative_deviation < 1e-5); // ‖y‖/√n = (1 + ε/σ²)^(−1/2) per token
//! assert!(report.max_centring < 1e-5); //          1ᵀy = 0
//!
//! // Geometry on the sphere of radius √n: distances between consecutive tokens.
//! let r = (8f64).sqrt();
//! let (a, b) = (y.narrow(1, 0, 4)?, y.narrow(1, 1, 4)?);
//! let d = geometry::geodesic_distance(&a, &b, r)?; // shape (2, 4), each ≤ πr
//! assert_eq!(d.dims(), &[2, 4]);
//! let v = geometry::log_map(&a, &b, r)?; // tangent vectors at a pointing to b
//! let back = geometry::exp_map(&a, &v, r)?;
//! let err = (back - &b)?.abs()?.max_all()?.to_scalar::<f32>()?;
//! assert!(err < 1e-4);
//!
//! let clusters = cluster_stats(&y, 0.1)?;
//! assert!(clusters.mean_clusters >= 1.0);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

pub mod cluster;
pub mod error;
pub mod geometry;
pub mod norm;
pub mod reference;

pub use error::{Result, SphereError};
