//! Normalisation geometry (MATH.md §1): where LayerNorm and RMSNorm put the tokens.
//!
//! Three different surfaces, and each report says which one it measures:
//! - **LayerNorm, pre-affine** `y = (x − μ1)/sqrt(σ² + ε)`: `1ᵀy = 0` and
//!   `‖y‖/√n = (1 + ε/σ²)^(−1/2)`, so as ε → 0, `y` lies on the **(n−2)-sphere of radius √n inside
//!   the hyperplane 1⊥**;
//! - **RMSNorm, pre-affine** `y = x/sqrt(‖x‖²/n + ε)`: `‖y‖/√n = (1 + ε/m²)^(−1/2)`, `m² = ‖x‖²/n`,
//!   so as ε → 0, `y` lies on the **full sphere S^(n−1)(√n)** (no centring constraint);
//! - **after the affine part** `z = γ ⊙ y + β`: the sphere is mapped onto the **ellipsoid**
//!   `{z : ‖(z − β) ⊘ γ‖ = √n·ρ}` (ρ the predicted radius above), measured by
//!   [`affine_ellipsoid_check`].
//!
//! All radii are reported in units of √n (1 on the ε → 0 sphere). Per-token reductions run on the
//! tensors' device and dtype; the statistics over tokens are then formed on the host in f64.

use crate::error::{Result, SphereError};
use crate::geometry::{check_float, host_f64};
use candle_core::{Tensor, D};

/// Which normalisation produced the tokens (selects the predicted-radius formula).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    /// LayerNorm: centre, then divide by `sqrt(σ² + ε)`; predicted radius `(1 + ε/σ²)^(−1/2)`.
    LayerNorm,
    /// RMSNorm: divide by `sqrt(‖x‖²/n + ε)`; predicted radius `(1 + ε/m²)^(−1/2)`, `m² = ‖x‖²/n`.
    RmsNorm,
}

/// How far normalised tokens are from the sphere MATH §1 predicts for them (see [`layer_norm_sphere_check`]
/// and [`rms_norm_sphere_check`] for which sphere). Radii are `‖y‖/√n`; population statistics over
/// tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NormSphereReport {
    /// Number of tokens (product of the leading dimensions).
    pub tokens: usize,
    /// Feature dimension `n`.
    pub n: usize,
    /// Mean over tokens of the measured radius `‖y‖/√n`.
    pub radius_mean: f64,
    /// Population standard deviation of `‖y‖/√n`.
    pub radius_std: f64,
    /// Minimum of `‖y‖/√n`.
    pub radius_min: f64,
    /// Maximum of `‖y‖/√n`.
    pub radius_max: f64,
    /// Mean of the predicted radius `(1 + ε/σ²)^(−1/2)` (σ² of the normalisation input).
    pub predicted_radius_mean: f64,
    /// Population standard deviation of the predicted radius.
    pub predicted_radius_std: f64,
    /// Minimum of the predicted radius.
    pub predicted_radius_min: f64,
    /// Maximum of the predicted radius.
    pub predicted_radius_max: f64,
    /// `max |measured − predicted| / predicted` over non-degenerate tokens (0 if there are none).
    pub max_relative_deviation: f64,
    /// `max |1ᵀy|/√n` over tokens: 0 on LayerNorm's hyperplane 1⊥; unconstrained for RMSNorm.
    pub max_centring: f64,
    /// Tokens whose input has σ² = 0 (LayerNorm) or ‖x‖ = 0 (RMSNorm): their output is the origin
    /// (or NaN when ε = 0); excluded from `max_relative_deviation`.
    pub degenerate_tokens: usize,
}

/// Population mean, std, min and max of a non-empty slice.
fn stats(v: &[f64]) -> (f64, f64, f64, f64) {
    let k = v.len() as f64;
    let mean = v.iter().sum::<f64>() / k;
    let var = v.iter().map(|a| (a - mean) * (a - mean)).sum::<f64>() / k;
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (mean, var.sqrt(), min, max)
}

fn check_eps(op: &'static str, eps: f64) -> Result<()> {
    if !(eps >= 0.0 && eps.is_finite()) {
        return Err(SphereError::InvalidParameter {
            op,
            name: "eps",
            value: eps,
            hint: "the normalisation ε must be finite and ≥ 0",
        });
    }
    Ok(())
}

fn check_same_shape(op: &'static str, a: &Tensor, b: &Tensor, hint: &'static str) -> Result<()> {
    check_float(op, a)?;
    check_float(op, b)?;
    if a.dims() != b.dims() || a.dtype() != b.dtype() {
        return Err(SphereError::ShapeMismatch {
            op,
            left: a.dims().to_vec(),
            right: b.dims().to_vec(),
            hint,
        });
    }
    Ok(())
}

/// Per-token "scale" of the normalisation input: σ² = ‖x − μ1‖²/n (LayerNorm) or m² = ‖x‖²/n
/// (RMSNorm), as host f64.
fn input_scale(input: &Tensor, kind: NormKind) -> Result<Vec<f64>> {
    let centred = match kind {
        NormKind::LayerNorm => input.broadcast_sub(&input.mean_keepdim(D::Minus1)?)?,
        NormKind::RmsNorm => input.clone(),
    };
    host_f64(&centred.sqr()?.mean_keepdim(D::Minus1)?)
}

/// Predicted radius `‖y‖/√n = (1 + ε/s)^(−1/2) = sqrt(s/(s + ε))` per token, `s` = σ² (LayerNorm)
/// or `‖x‖²/n` (RMSNorm) of the normalisation input `(…, n)`; `None` for a degenerate token
/// (`s = 0`). Host f64, one entry per token in row-major order.
pub fn predicted_radius(input: &Tensor, eps: f64, kind: NormKind) -> Result<Vec<Option<f64>>> {
    const OP: &str = "predicted_radius";
    check_float(OP, input)?;
    check_eps(OP, eps)?;
    Ok(input_scale(input, kind)?
        .into_iter()
        .map(|s| (s > 0.0).then(|| (s / (s + eps)).sqrt()))
        .collect())
}

fn sphere_check(
    op: &'static str,
    input: &Tensor,
    y: &Tensor,
    eps: f64,
    kind: NormKind,
) -> Result<NormSphereReport> {
    check_same_shape(
        op,
        input,
        y,
        "the normalisation input and its pre-affine output must have the same shape and dtype",
    )?;
    check_eps(op, eps)?;
    let n = y.dim(D::Minus1)?;
    if kind == NormKind::LayerNorm && n < 2 {
        return Err(SphereError::Empty {
            op,
            what: "LayerNorm over a single feature (its output is identically 0)",
            need: "n ≥ 2 features",
        });
    }
    let tokens = y.elem_count() / n;
    if tokens == 0 {
        return Err(SphereError::Empty {
            op,
            what: "no tokens",
            need: "one token",
        });
    }
    let sqrt_n = (n as f64).sqrt();
    let radius: Vec<f64> = host_f64(&y.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)?
        .into_iter()
        .map(|v| v / sqrt_n)
        .collect();
    let centring = host_f64(&y.sum_keepdim(D::Minus1)?.abs()?)?
        .into_iter()
        .fold(0.0f64, |m, v| m.max(v / sqrt_n));
    let predicted = predicted_radius(input, eps, kind)?;
    let mut degenerate_tokens = 0;
    let mut max_relative_deviation = 0.0f64;
    let mut pred_values = Vec::with_capacity(tokens);
    for (m, p) in radius.iter().zip(&predicted) {
        match p {
            Some(p) => {
                max_relative_deviation = max_relative_deviation.max((m - p).abs() / p);
                pred_values.push(*p);
            }
            None => {
                degenerate_tokens += 1;
                pred_values.push(0.0);
            }
        }
    }
    let (radius_mean, radius_std, radius_min, radius_max) = stats(&radius);
    let (pm, ps, pmin, pmax) = stats(&pred_values);
    Ok(NormSphereReport {
        tokens,
        n,
        radius_mean,
        radius_std,
        radius_min,
        radius_max,
        predicted_radius_mean: pm,
        predicted_radius_std: ps,
        predicted_radius_min: pmin,
        predicted_radius_max: pmax,
        max_relative_deviation,
        max_centring: centring,
        degenerate_tokens,
    })
}

/// Checks LayerNorm's pre-affine output `y` (…, n) against MATH §1, given the LayerNorm input `x`
/// (same shape) and its ε.
///
/// Measures the **(n−2)-sphere of radius √n inside 1⊥** (at ε > 0, the per-token radius
/// `√n·(1 + ε/σ²)^(−1/2)`, σ² = ‖x − μ1‖²/n): radius statistics of `‖y‖/√n`, the predicted radius
/// statistics, `max |measured − predicted|/predicted`, and the centring `max |1ᵀy|/√n` (0 on 1⊥).
/// Pass the output *before* γ and β; for the affine output use [`affine_ellipsoid_check`].
pub fn layer_norm_sphere_check(
    input: &Tensor,
    pre_affine_output: &Tensor,
    eps: f64,
) -> Result<NormSphereReport> {
    sphere_check(
        "layer_norm_sphere_check",
        input,
        pre_affine_output,
        eps,
        NormKind::LayerNorm,
    )
}

/// Checks RMSNorm's pre-affine output `y` (…, n) against MATH §1, given the RMSNorm input `x`
/// (same shape) and its ε.
///
/// Measures the **full sphere S^(n−1)(√n)** (at ε > 0, radius `√n·(1 + ε/m²)^(−1/2)`,
/// m² = ‖x‖²/n): the same statistics as [`layer_norm_sphere_check`]; `max_centring` is reported
/// but RMSNorm does not constrain it.
pub fn rms_norm_sphere_check(
    input: &Tensor,
    pre_affine_output: &Tensor,
    eps: f64,
) -> Result<NormSphereReport> {
    sphere_check(
        "rms_norm_sphere_check",
        input,
        pre_affine_output,
        eps,
        NormKind::RmsNorm,
    )
}

/// Pre-affine LayerNorm over the last dimension, MATH §1: `y = (x − μ1)/sqrt(σ² + ε)`, σ² the
/// population variance. Output on the (n−2)-sphere of radius `√n·(1 + ε/σ²)^(−1/2)` inside 1⊥.
pub fn layer_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    check_float("layer_norm", x)?;
    check_eps("layer_norm", eps)?;
    let c = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let s = c.sqr()?.mean_keepdim(D::Minus1)?.affine(1.0, eps)?.sqrt()?;
    Ok(c.broadcast_div(&s)?)
}

/// Pre-affine RMSNorm over the last dimension, MATH §1: `y = x/sqrt(‖x‖²/n + ε)`. Output on the
/// sphere S^(n−1) of radius `√n·(1 + ε/m²)^(−1/2)`, m² = ‖x‖²/n.
pub fn rms_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    check_float("rms_norm", x)?;
    check_eps("rms_norm", eps)?;
    let s = x.sqr()?.mean_keepdim(D::Minus1)?.affine(1.0, eps)?.sqrt()?;
    Ok(x.broadcast_div(&s)?)
}

/// The radius against which [`affine_ellipsoid_check`] measures `‖(z − β) ⊘ γ‖/√n`.
#[derive(Debug, Clone, Copy)]
pub enum RadiusPrediction<'a> {
    /// The ε → 0 limit: radius 1 (in units of √n) for every token.
    Limit,
    /// Per-token radius from the normalisation input and ε ([`predicted_radius`]).
    FromInput {
        /// The normalisation's input `x`, same shape as `z`.
        input: &'a Tensor,
        /// The normalisation's ε.
        eps: f64,
        /// LayerNorm or RMSNorm.
        kind: NormKind,
    },
}

/// How far affine-normalised tokens `z = γ ⊙ y + β` are from **the ellipsoid**
/// `{z : ‖(z − β) ⊘ γ‖/√n = ρ}`, the image of the normalisation sphere under the affine part.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EllipsoidReport {
    /// Number of tokens.
    pub tokens: usize,
    /// Feature dimension `n`.
    pub n: usize,
    /// Mean over tokens of the un-scaled radius `‖(z − β) ⊘ γ‖/√n`.
    pub scaled_radius_mean: f64,
    /// Population standard deviation of the un-scaled radius.
    pub scaled_radius_std: f64,
    /// Minimum of the un-scaled radius.
    pub scaled_radius_min: f64,
    /// Maximum of the un-scaled radius.
    pub scaled_radius_max: f64,
    /// `max |‖(z − β) ⊘ γ‖/√n − ρ|` over non-degenerate tokens (ρ the predicted radius).
    pub max_abs_residual: f64,
    /// `max |‖(z − β) ⊘ γ‖/√n − ρ| / ρ` over non-degenerate tokens.
    pub max_relative_residual: f64,
    /// `max |1ᵀ((z − β) ⊘ γ)|/√n`: 0 for LayerNorm (the ellipsoid lies in the affine image of 1⊥).
    pub max_centring: f64,
    /// Tokens with no predicted radius (degenerate input), excluded from the residuals.
    pub degenerate_tokens: usize,
}

/// Measures how far `z = γ ⊙ y + β` (…, n) lies from **the ellipsoid after the affine part**,
/// `‖(z − β) ⊘ γ‖/√n = ρ`, with ρ = 1 ([`RadiusPrediction::Limit`]) or the per-token radius predicted
/// from the normalisation input ([`RadiusPrediction::FromInput`]). `gamma` and `beta` are `(n)`;
/// `beta = None` means β = 0. Every γ_i must be non-zero (a zero scale flattens the ellipsoid).
pub fn affine_ellipsoid_check(
    z: &Tensor,
    gamma: &Tensor,
    beta: Option<&Tensor>,
    prediction: RadiusPrediction<'_>,
) -> Result<EllipsoidReport> {
    const OP: &str = "affine_ellipsoid_check";
    check_float(OP, z)?;
    let n = z.dim(D::Minus1)?;
    let check_vec = |t: &Tensor| -> Result<()> {
        check_float(OP, t)?;
        if t.dims() != [n] || t.dtype() != z.dtype() {
            return Err(SphereError::ShapeMismatch {
                op: OP,
                left: z.dims().to_vec(),
                right: t.dims().to_vec(),
                hint: "gamma and beta must be vectors (n) of z's dtype",
            });
        }
        Ok(())
    };
    check_vec(gamma)?;
    if let Some(b) = beta {
        check_vec(b)?;
    }
    if let Some(g) = host_f64(gamma)?
        .into_iter()
        .find(|g| !(*g != 0.0 && g.is_finite()))
    {
        return Err(SphereError::InvalidParameter {
            op: OP,
            name: "an entry of gamma",
            value: g,
            hint: "every γ_i must be finite and non-zero (a zero scale flattens the ellipsoid); drop that feature",
        });
    }
    let tokens = z.elem_count() / n;
    if tokens == 0 {
        return Err(SphereError::Empty {
            op: OP,
            what: "no tokens",
            need: "one token",
        });
    }
    let centred = match beta {
        Some(b) => z.broadcast_sub(b)?,
        None => z.clone(),
    };
    let y = centred.broadcast_div(gamma)?;
    let sqrt_n = (n as f64).sqrt();
    let radius: Vec<f64> = host_f64(&y.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)?
        .into_iter()
        .map(|v| v / sqrt_n)
        .collect();
    let max_centring = host_f64(&y.sum_keepdim(D::Minus1)?.abs()?)?
        .into_iter()
        .fold(0.0f64, |m, v| m.max(v / sqrt_n));
    let predicted: Vec<Option<f64>> = match prediction {
        RadiusPrediction::Limit => vec![Some(1.0); tokens],
        RadiusPrediction::FromInput { input, eps, kind } => {
            if input.dims() != z.dims() {
                return Err(SphereError::ShapeMismatch {
                    op: OP,
                    left: z.dims().to_vec(),
                    right: input.dims().to_vec(),
                    hint: "the normalisation input must have the shape of z",
                });
            }
            predicted_radius(input, eps, kind)?
        }
    };
    let (mut max_abs_residual, mut max_relative_residual, mut degenerate_tokens) =
        (0.0f64, 0.0f64, 0);
    for (m, p) in radius.iter().zip(&predicted) {
        match p {
            Some(p) => {
                max_abs_residual = max_abs_residual.max((m - p).abs());
                max_relative_residual = max_relative_residual.max((m - p).abs() / p);
            }
            None => degenerate_tokens += 1,
        }
    }
    let (mean, std, min, max) = stats(&radius);
    Ok(EllipsoidReport {
        tokens,
        n,
        scaled_radius_mean: mean,
        scaled_radius_std: std,
        scaled_radius_min: min,
        scaled_radius_max: max,
        max_abs_residual,
        max_relative_residual,
        max_centring,
        degenerate_tokens,
    })
}
