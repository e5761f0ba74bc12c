//! Mean squared displacement, its power-law exponent α with a bootstrap interval, and the
//! diffusion coefficient (MATH §3).

use crate::error::{check_param, BrownianError, Result};
use crate::trajectory::{dist_sq, dot, Geometry, Trajectories};
use rand::Rng;

/// How the displacement between two points is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsdKind {
    /// `‖X_(t+τ) − X_t‖²` in the ambient space (on a sphere this equals the chordal distance).
    Euclidean,
    /// Chordal distance on the sphere, `‖x − y‖ = 2r sin(θ/2)`; saturates at `2r` (MSD at `2r²` on
    /// average): fit it at short lags only.
    Chordal,
    /// Geodesic distance `rθ`, `θ = 2 atan2(‖x̂ − ŷ‖, ‖x̂ + ŷ‖)`; grows like `2(n−1)Dτ` at short lags.
    Geodesic,
}

impl MsdKind {
    /// The natural kind for a geometry: Euclidean in Rⁿ, geodesic on a sphere.
    pub fn default_for(geometry: Geometry) -> Self {
        match geometry {
            Geometry::Euclidean => MsdKind::Euclidean,
            Geometry::Sphere { .. } => MsdKind::Geodesic,
        }
    }
}

/// The lags τ at which the MSD is evaluated and fitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LagWindow {
    /// Smallest lag (default 1).
    pub min: usize,
    /// Largest lag; `None` means `T/4` (MATH §3 default).
    pub max: Option<usize>,
    /// At most this many lags, spaced geometrically between `min` and `max` so that the log-log fit
    /// weighs every decade alike (default 32; all integer lags when the window is smaller).
    pub max_points: usize,
}

impl Default for LagWindow {
    fn default() -> Self {
        Self {
            min: 1,
            max: None,
            max_points: 32,
        }
    }
}

impl LagWindow {
    /// The distinct, increasing lags for trajectories of `steps` time points.
    ///
    /// Errors: fewer than 8 time points with the default `max = T/4` (two lags are needed for a fit),
    /// or a window outside `1 ≤ min < max ≤ steps − 1`, or `max_points < 2`.
    pub fn lags(&self, steps: usize) -> Result<Vec<usize>> {
        if self.max_points < 2 {
            return Err(BrownianError::InvalidParameter {
                name: "max_points",
                value: self.max_points as f64,
                expected: "at least 2 lags for a fit",
            });
        }
        let max = match self.max {
            Some(m) => m,
            None => {
                if steps < 8 {
                    return Err(BrownianError::TooShort {
                        what: "the default lag window τ ≤ T/4 (two lags), in time points,",
                        needed: 8,
                        got: steps,
                    });
                }
                steps / 4
            }
        };
        if self.min < 1 || self.min >= max || max + 1 > steps {
            return Err(BrownianError::BadLagWindow {
                min: self.min,
                max,
                steps,
            });
        }
        let count = max - self.min + 1;
        if count <= self.max_points {
            return Ok((self.min..=max).collect());
        }
        let (lo, hi) = ((self.min as f64).ln(), (max as f64).ln());
        let mut lags: Vec<usize> = (0..self.max_points)
            .map(|i| {
                let f = i as f64 / (self.max_points - 1) as f64;
                (lo + f * (hi - lo)).exp().round() as usize
            })
            .collect();
        lags.dedup();
        Ok(lags)
    }
}

/// Squared displacement between two points under `kind`.
fn sq_disp(kind: MsdKind, radius: f64, x: &[f64], y: &[f64]) -> Result<f64> {
    Ok(match kind {
        MsdKind::Euclidean => dist_sq(x, y),
        MsdKind::Chordal => bmt_sphere::reference::chordal_distance(x, y)?.powi(2),
        MsdKind::Geodesic => bmt_sphere::reference::geodesic_distance(x, y, radius)?.powi(2),
    })
}

fn radius_for(traj: &Trajectories, kind: MsdKind) -> Result<f64> {
    match (traj.geometry(), kind) {
        (Geometry::Sphere { radius }, _) => Ok(radius),
        (Geometry::Euclidean, MsdKind::Euclidean) => Ok(1.0),
        (Geometry::Euclidean, MsdKind::Chordal) => Err(BrownianError::NeedsSphere {
            what: "chordal MSD",
        }),
        (Geometry::Euclidean, MsdKind::Geodesic) => Err(BrownianError::NeedsSphere {
            what: "geodesic MSD",
        }),
    }
}

/// Time-averaged MSD of every member: row `m` holds
/// `(1/(T−τ)) Σ_t d(X_(t+τ), X_t)²` for each lag in `lags` (a `members × lags.len()` matrix).
///
/// Errors: a lag of 0 or ≥ T, or a sphere-only kind on Euclidean trajectories.
pub fn msd_per_member(traj: &Trajectories, kind: MsdKind, lags: &[usize]) -> Result<Vec<f64>> {
    let radius = radius_for(traj, kind)?;
    let steps = traj.steps();
    if let Some(&bad) = lags.iter().find(|&&l| l == 0 || l >= steps) {
        return Err(BrownianError::BadLagWindow {
            min: bad,
            max: bad,
            steps,
        });
    }
    let mut out = Vec::with_capacity(traj.members() * lags.len());
    for m in 0..traj.members() {
        for &lag in lags {
            let mut sum = 0.0;
            for t in 0..steps - lag {
                sum += sq_disp(kind, radius, traj.point(m, t), traj.point(m, t + lag))?;
            }
            out.push(sum / (steps - lag) as f64);
        }
    }
    Ok(out)
}

/// Ensemble- and time-averaged MSD, `MSD(τ) = mean_(t, members) d(X_(t+τ), X_t)²`, as `(τ, MSD)`.
pub fn msd_curve(traj: &Trajectories, kind: MsdKind, lags: &[usize]) -> Result<Vec<(usize, f64)>> {
    let per = msd_per_member(traj, kind, lags)?;
    Ok(ensemble_mean(&per, lags, None)
        .into_iter()
        .zip(lags)
        .map(|(v, &l)| (l, v))
        .collect())
}

/// Mean over members of a `members × lags` matrix, optionally over a resample of member indices.
fn ensemble_mean(per: &[f64], lags: &[usize], pick: Option<&[usize]>) -> Vec<f64> {
    let l = lags.len();
    let members = per.len() / l;
    let mut acc = vec![0.0; l];
    let mut count = 0usize;
    let mut add = |m: usize| {
        for (a, v) in acc.iter_mut().zip(&per[m * l..(m + 1) * l]) {
            *a += v;
        }
        count += 1;
    };
    match pick {
        Some(idx) => idx.iter().for_each(|&m| add(m)),
        None => (0..members).for_each(add),
    }
    acc.iter().map(|a| a / count as f64).collect()
}

/// Ordinary least-squares fit of `log y = log K + α log x`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PowerLawFit {
    /// Exponent α (slope in log-log).
    pub alpha: f64,
    /// Intercept `log K`.
    pub log_k: f64,
    /// Coefficient of determination of the log-log fit.
    pub r_squared: f64,
}

/// Fits `log y = log K + α log x` by OLS over `(x, y)` pairs.
///
/// Errors: fewer than two points, a non-positive or non-finite `x`, all `x` equal, or `y ≤ 0`.
pub fn fit_power_law(points: &[(f64, f64)]) -> Result<PowerLawFit> {
    if points.len() < 2 {
        return Err(BrownianError::TooShort {
            what: "a power-law fit, in points,",
            needed: 2,
            got: points.len(),
        });
    }
    let mut logs = Vec::with_capacity(points.len());
    for &(x, y) in points {
        check_param("x", x, x > 0.0, "a positive abscissa (lag or scale)")?;
        if !(y > 0.0 && y.is_finite()) {
            return Err(BrownianError::NoMotion {
                what: "the fitted quantity",
                scale: x as usize,
            });
        }
        logs.push((x.ln(), y.ln()));
    }
    let (slope, intercept, r2) = ols(&logs)?;
    Ok(PowerLawFit {
        alpha: slope,
        log_k: intercept,
        r_squared: r2,
    })
}

/// OLS `y = a + b x`: returns `(b, a, R²)`. R² is 1 when `y` is constant and fitted exactly.
pub(crate) fn ols(xy: &[(f64, f64)]) -> Result<(f64, f64, f64)> {
    let n = xy.len() as f64;
    let mx = xy.iter().map(|p| p.0).sum::<f64>() / n;
    let my = xy.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = xy.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = xy.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let syy: f64 = xy.iter().map(|p| (p.1 - my).powi(2)).sum();
    if sxx <= 0.0 {
        return Err(BrownianError::TooShort {
            what: "a regression, in distinct abscissae,",
            needed: 2,
            got: 1,
        });
    }
    let b = sxy / sxx;
    let r2 = if syy > 0.0 {
        sxy * sxy / (sxx * syy)
    } else {
        1.0
    };
    Ok((b, my - b * mx, r2))
}

/// Linear-interpolation quantile (type 7) of an already sorted slice, `q ∈ [0, 1]`.
pub(crate) fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    let h = q * (sorted.len() - 1) as f64;
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

/// MSD exponent with its bootstrap interval and the curve it was fitted on.
#[derive(Debug, Clone, PartialEq)]
pub struct MsdExponent {
    /// α from the OLS fit of `log MSD` on `log τ` (1 diffusive, 2 ballistic, `2H` for fBm).
    pub alpha: f64,
    /// Percentile bootstrap interval over ensemble members; `None` when `resamples == 0`.
    pub alpha_ci: Option<(f64, f64)>,
    /// The log-log fit on the full ensemble.
    pub fit: PowerLawFit,
    /// `(τ, MSD(τ))` at the fitted lags.
    pub curve: Vec<(usize, f64)>,
}

/// Fits α over `window` and bootstraps it over ensemble members.
///
/// Each of the `resamples` bootstrap replicates draws `M` members with replacement, averages their
/// time-averaged MSD curves and refits α; the interval is the `(1 ± level)/2` percentiles (type 7).
/// Resampling whole members keeps each trajectory's temporal correlation intact.
///
/// Errors: `resamples > 0` with a single member (set `resamples = 0` or supply more members),
/// `level ∉ (0, 1)`, and those of [`LagWindow::lags`] and [`fit_power_law`].
pub fn msd_exponent(
    traj: &Trajectories,
    kind: MsdKind,
    window: &LagWindow,
    resamples: usize,
    level: f64,
    rng: &mut impl Rng,
) -> Result<MsdExponent> {
    check_param(
        "level",
        level,
        level > 0.0 && level < 1.0,
        "a confidence level in (0, 1)",
    )?;
    let lags = window.lags(traj.steps())?;
    let per = msd_per_member(traj, kind, &lags)?;
    let points = |means: &[f64]| -> Vec<(f64, f64)> {
        lags.iter()
            .zip(means)
            .map(|(&l, &v)| (l as f64, v))
            .collect()
    };
    let mean = ensemble_mean(&per, &lags, None);
    let fit = fit_power_law(&points(&mean))?;
    let members = traj.members();
    let alpha_ci = if resamples == 0 {
        None
    } else {
        if members < 2 {
            return Err(BrownianError::TooShort {
                what: "a bootstrap over ensemble members (or set resamples = 0), in members,",
                needed: 2,
                got: members,
            });
        }
        let mut alphas = Vec::with_capacity(resamples);
        let mut idx = vec![0usize; members];
        for _ in 0..resamples {
            idx.iter_mut()
                .for_each(|i| *i = rng.random_range(0..members));
            let mean_b = ensemble_mean(&per, &lags, Some(&idx));
            alphas.push(fit_power_law(&points(&mean_b))?.alpha);
        }
        alphas.sort_by(|a, b| a.total_cmp(b));
        Some((
            quantile_sorted(&alphas, (1.0 - level) / 2.0),
            quantile_sorted(&alphas, (1.0 + level) / 2.0),
        ))
    };
    Ok(MsdExponent {
        alpha: fit.alpha,
        alpha_ci,
        fit,
        curve: lags.iter().copied().zip(mean).collect(),
    })
}

/// Diffusion coefficient at lag `lag` (time step `dt`), generator convention `DΔ`.
///
/// - Rⁿ: `D̂ = MSD(τ) / (2nτΔt)`, from `E‖X_(t+τ) − X_t‖² = 2nDτΔt` (Euclidean MSD, which includes
///   any drift: see [`crate::increments::drift_decomposition`]).
/// - Sphere of radius r, intrinsic dimension `k` (default `n − 1`):
///   `D̂ = −r² ln(mean cos θ(τ)) / (k τ Δt)`, from `E[x̂_t·x̂_(t+τ)] = exp(−kDτΔt/r²)`, the heat
///   semigroup of `DΔ` acting on the degree-1 spherical harmonics (eigenvalue `k/r²`). Pass
///   `sphere_dim = Some(n − 2)` for LayerNorm outputs, which live in the hyperplane `1ᵀx = 0`.
///
/// With the generator `½Δ` the same data gives twice this D.
///
/// Errors: `lag` outside `1..T`, `dt ≤ 0`, a sphere dimension of 0, or `mean cos θ ≤ 0` (mixed).
pub fn diffusion_coefficient(
    traj: &Trajectories,
    lag: usize,
    dt: f64,
    sphere_dim: Option<usize>,
) -> Result<f64> {
    check_param("dt", dt, dt > 0.0, "a time step > 0")?;
    let steps = traj.steps();
    if lag == 0 || lag >= steps {
        return Err(BrownianError::BadLagWindow {
            min: lag,
            max: lag,
            steps,
        });
    }
    let n = traj.dim();
    match traj.geometry() {
        Geometry::Euclidean => {
            let msd = msd_curve(traj, MsdKind::Euclidean, &[lag])?[0].1;
            Ok(msd / (2.0 * n as f64 * lag as f64 * dt))
        }
        Geometry::Sphere { radius } => {
            let k = sphere_dim.unwrap_or(n.saturating_sub(1));
            if k == 0 {
                return Err(BrownianError::InvalidParameter {
                    name: "sphere_dim",
                    value: k as f64,
                    expected: "an intrinsic sphere dimension ≥ 1 (ambient dim ≥ 2)",
                });
            }
            let r2 = radius * radius;
            let mut sum = 0.0;
            for m in 0..traj.members() {
                for t in 0..steps - lag {
                    sum += dot(traj.point(m, t), traj.point(m, t + lag)) / r2;
                }
            }
            let mean_cos = sum / (traj.members() * (steps - lag)) as f64;
            if mean_cos <= 0.0 {
                return Err(BrownianError::Mixed { lag, mean_cos });
            }
            Ok(-r2 * mean_cos.ln() / (k as f64 * lag as f64 * dt))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_window_spacing_and_errors() {
        let w = LagWindow::default();
        assert_eq!(w.lags(40).unwrap(), (1..=10).collect::<Vec<_>>());
        let lags = w.lags(4000).unwrap();
        assert_eq!((lags[0], *lags.last().unwrap()), (1, 1000));
        assert!(lags.windows(2).all(|p| p[0] < p[1]) && lags.len() <= 32);
        assert!(matches!(
            w.lags(7),
            Err(BrownianError::TooShort { needed: 8, .. })
        ));
        let bad = LagWindow {
            min: 3,
            max: Some(3),
            max_points: 8,
        };
        assert!(matches!(
            bad.lags(100),
            Err(BrownianError::BadLagWindow { .. })
        ));
    }

    #[test]
    fn exact_power_law_is_recovered() {
        let pts: Vec<(f64, f64)> = (1..20)
            .map(|t| (t as f64, 3.0 * (t as f64).powf(1.37)))
            .collect();
        let f = fit_power_law(&pts).unwrap();
        assert!((f.alpha - 1.37).abs() < 1e-12);
        assert!((f.log_k - 3f64.ln()).abs() < 1e-12);
        assert!((f.r_squared - 1.0).abs() < 1e-12);
        assert!(matches!(
            fit_power_law(&[(1.0, 1.0), (2.0, 0.0)]),
            Err(BrownianError::NoMotion { .. })
        ));
    }

    #[test]
    fn msd_of_a_straight_line_is_quadratic() {
        // X_t = t·v with ‖v‖² = 5: MSD(τ) = 5τ² exactly.
        let data: Vec<f64> = (0..10).flat_map(|t| [t as f64, 2.0 * t as f64]).collect();
        let traj = Trajectories::new(data, 1, 10, 2, Geometry::Euclidean).unwrap();
        let c = msd_curve(&traj, MsdKind::Euclidean, &[1, 3]).unwrap();
        assert_eq!(c, vec![(1, 5.0), (3, 45.0)]);
        assert!(matches!(
            msd_curve(&traj, MsdKind::Geodesic, &[1]),
            Err(BrownianError::NeedsSphere { .. })
        ));
        let d = diffusion_coefficient(&traj, 1, 0.5, None).unwrap();
        assert!((d - 5.0 / (2.0 * 2.0 * 0.5)).abs() < 1e-12);
    }

    #[test]
    fn sphere_msd_kinds_on_a_great_circle() {
        // Uniform rotation by 0.1 rad per step on a circle of radius 2 in R³.
        let r = 2.0;
        let data: Vec<f64> = (0..12)
            .flat_map(|t| {
                let a = 0.1 * t as f64;
                [r * a.cos(), r * a.sin(), 0.0]
            })
            .collect();
        let traj = Trajectories::new(data, 1, 12, 3, Geometry::Sphere { radius: r }).unwrap();
        let geo = msd_curve(&traj, MsdKind::Geodesic, &[1, 4]).unwrap();
        assert!((geo[1].1 - (r * 0.4f64).powi(2)).abs() < 1e-12);
        let cho = msd_curve(&traj, MsdKind::Chordal, &[4]).unwrap();
        assert!((cho[0].1 - (2.0 * r * 0.2f64.sin()).powi(2)).abs() < 1e-12);
        // cos θ(1) = cos 0.1 exactly, so D̂ = −r² ln cos(0.1) / 2.
        let d = diffusion_coefficient(&traj, 1, 1.0, None).unwrap();
        assert!((d + r * r * 0.1f64.cos().ln() / 2.0).abs() < 1e-12);
    }
}
