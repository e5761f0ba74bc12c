//! Statistics of the increments `ΔX_t = X_(t+1) − X_t` (MATH §3): Gaussianity, independence,
//! quadratic variation and the drift/diffusion split.
//!
//! Conventions shared by this module: increments are centred within each member and coordinate
//! (so members with different drifts do not masquerade as noise), then scaled per coordinate by the
//! standard deviation pooled over members and time. Scalar statistics pool all
//! `N = M · n' · (T − 1)` standardised values (`n'` coordinates with non-zero variance). Their null
//! distributions assume those values independent: coordinates that are correlated (e.g. LayerNorm
//! outputs, constrained to `1ᵀx = 0`) make the effective N smaller. Members that diffuse at different
//! rates show up as positive excess kurtosis (a scale mixture of Gaussians is heavy-tailed).

use crate::error::{BrownianError, Result};
use crate::msd::ols;
use crate::trajectory::Trajectories;

/// Number of increments per member, with a typed error when there are fewer than `needed`.
fn increments_per_member(traj: &Trajectories, needed: usize, what: &'static str) -> Result<usize> {
    let l = traj.steps().saturating_sub(1);
    if l < needed {
        return Err(BrownianError::TooShort {
            what,
            needed: needed + 1,
            got: traj.steps(),
        });
    }
    Ok(l)
}

/// Standardised increments (layout `M × L × n`) and the mask of coordinates with non-zero variance.
fn standardised(traj: &Trajectories, what: &'static str) -> Result<(Vec<f64>, Vec<bool>)> {
    let (m, n) = (traj.members(), traj.dim());
    let l = increments_per_member(traj, 2, "increment statistics, in time points,")?;
    let mut z = Vec::with_capacity(m * l * n);
    let mut raw = vec![0.0; n];
    for mm in 0..m {
        let start = z.len();
        for t in 0..l {
            let (a, b) = (traj.point(mm, t), traj.point(mm, t + 1));
            z.extend(a.iter().zip(b).map(|(x, y)| y - x));
        }
        for i in 0..n {
            raw[i] += (0..l).map(|t| z[start + t * n + i].powi(2)).sum::<f64>();
            let mean = (0..l).map(|t| z[start + t * n + i]).sum::<f64>() / l as f64;
            (0..l).for_each(|t| z[start + t * n + i] -= mean);
        }
    }
    let mut var = vec![0.0; n];
    for row in z.chunks_exact(n) {
        var.iter_mut().zip(row).for_each(|(v, x)| *v += x * x);
    }
    // A coordinate counts as moving when its spread about the drift exceeds 1e-10 of the
    // increments' own size: below that it is the rounding of X_(t+1) − X_t, not noise.
    let usable: Vec<bool> = var
        .iter()
        .zip(&raw)
        .map(|(&v, &r)| v > 0.0 && v > 1e-20 * r)
        .collect();
    if !usable.iter().any(|&u| u) {
        return Err(BrownianError::DegenerateIncrements { what });
    }
    let sd: Vec<f64> = var.iter().map(|v| (v / (m * l) as f64).sqrt()).collect();
    for row in z.chunks_exact_mut(n) {
        for ((x, s), u) in row.iter_mut().zip(&sd).zip(&usable) {
            *x = if *u { *x / s } else { 0.0 };
        }
    }
    Ok((z, usable))
}

/// Shape of the pooled increment distribution and the Jarque–Bera test of normality.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normality {
    /// Skewness `S = m₃ / m₂^(3/2)` (0 for a Gaussian).
    pub skewness: f64,
    /// Excess kurtosis `K = m₄ / m₂² − 3` (0 for a Gaussian).
    pub excess_kurtosis: f64,
    /// Jarque–Bera statistic `JB = N/6 (S² + K²/4)`.
    pub jarque_bera: f64,
    /// Asymptotic p-value `P(χ²₂ > JB) = exp(−JB/2)`.
    pub p_value: f64,
    /// Number `N` of pooled scalar increments.
    pub samples: usize,
}

/// Skewness, excess kurtosis and Jarque–Bera of the pooled standardised increments.
///
/// Errors: fewer than 3 time points, or increments with zero variance (a pure drift).
pub fn normality(traj: &Trajectories) -> Result<Normality> {
    let (z, usable) = standardised(traj, "kurtosis")?;
    let n = traj.dim();
    let (mut m2, mut m3, mut m4, mut count) = (0.0, 0.0, 0.0, 0usize);
    for row in z.chunks_exact(n) {
        for (x, _) in row.iter().zip(&usable).filter(|(_, u)| **u) {
            let x2 = x * x;
            m2 += x2;
            m3 += x2 * x;
            m4 += x2 * x2;
            count += 1;
        }
    }
    let c = count as f64;
    let (m2, m3, m4) = (m2 / c, m3 / c, m4 / c);
    let skewness = m3 / m2.powf(1.5);
    let excess_kurtosis = m4 / (m2 * m2) - 3.0;
    let jarque_bera = c / 6.0 * (skewness * skewness + excess_kurtosis * excess_kurtosis / 4.0);
    Ok(Normality {
        skewness,
        excess_kurtosis,
        jarque_bera,
        p_value: (-jarque_bera / 2.0).exp(),
        samples: count,
    })
}

/// Lag-k autocorrelation of the increments with its white-noise band.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Autocorrelation {
    /// Lag k.
    pub lag: usize,
    /// `ρ(k) = Σ z_t z_(t+k) / Σ z_t²` over members and coordinates (standardised increments).
    pub value: f64,
    /// Half-width `2/√N` of the approximate 95% band for independent increments.
    pub band: f64,
    /// `N`, the number of pooled scalar increments.
    pub samples: usize,
}

/// Lag-`k` autocorrelation of the increments, pooled over members and coordinates.
///
/// For Brownian motion `ρ(k) ≈ 0 ± 2/√N` (within-member centring biases it by about `−1/(T−1)`).
///
/// Errors: `k = 0`, `k ≥ T − 1`, or zero-variance increments.
pub fn autocorrelation(traj: &Trajectories, k: usize) -> Result<Autocorrelation> {
    if k == 0 {
        return Err(BrownianError::InvalidParameter {
            name: "autocorrelation lag",
            value: 0.0,
            expected: "a lag ≥ 1",
        });
    }
    let l = increments_per_member(
        traj,
        k + 1,
        "a lag-k autocorrelation (T ≥ k + 2), in time points,",
    )?;
    let (z, usable) = standardised(traj, "the autocorrelation")?;
    let n = traj.dim();
    let (mut num, mut den) = (0.0, 0.0);
    let used = usable.iter().filter(|&&u| u).count();
    for m in 0..traj.members() {
        let s = &z[m * l * n..(m + 1) * l * n];
        for t in 0..l {
            for i in 0..n {
                den += s[t * n + i] * s[t * n + i];
                if t + k < l {
                    num += s[t * n + i] * s[(t + k) * n + i];
                }
            }
        }
    }
    let samples = traj.members() * used * l;
    Ok(Autocorrelation {
        lag: k,
        value: num / den,
        band: 2.0 / (samples as f64).sqrt(),
        samples,
    })
}

/// Ensemble-mean quadratic variation `Q(t) = mean_members Σ_(s<t) ‖ΔX_s‖²`, `t = 0..T−1`.
pub fn quadratic_variation(traj: &Trajectories) -> Vec<f64> {
    let mut q = vec![0.0; traj.steps()];
    for m in 0..traj.members() {
        let mut acc = 0.0;
        for (t, qt) in q.iter_mut().enumerate().skip(1) {
            acc += crate::trajectory::dist_sq(traj.point(m, t - 1), traj.point(m, t));
            *qt += acc;
        }
    }
    q.iter_mut().for_each(|v| *v /= traj.members() as f64);
    q
}

/// R² of the OLS line through the quadratic variation `Q(t)` against `t` (1 for a constant rate).
///
/// Errors: fewer than 3 time points, or no motion at all.
pub fn quadratic_variation_r2(traj: &Trajectories) -> Result<f64> {
    increments_per_member(traj, 2, "the quadratic-variation fit, in time points,")?;
    let q = quadratic_variation(traj);
    if q[q.len() - 1] <= 0.0 {
        return Err(BrownianError::NoMotion {
            what: "the quadratic variation",
            scale: q.len() - 1,
        });
    }
    let pts: Vec<(f64, f64)> = q.iter().enumerate().map(|(t, &v)| (t as f64, v)).collect();
    Ok(ols(&pts)?.2)
}

/// Drift against diffusion in the increments.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftDecomposition {
    /// Ensemble-mean drift vector `mean_m μ̂_m`, `μ̂_m = mean_t ΔX_(m,t)` (length n).
    pub mean_drift: Vec<f64>,
    /// `mean_m ‖μ̂_m‖²`.
    pub drift_sq: f64,
    /// `mean_m tr Σ̂_m`, `Σ̂_m` the within-member covariance of ΔX (divisor `T − 2`).
    pub trace_cov: f64,
    /// Drift share `‖μ̂‖² / (‖μ̂‖² + tr Σ̂)` with the two member-averaged terms above.
    pub share: f64,
}

/// Splits the increments into drift `μ̂ = mean ΔX` and diffusion `tr Σ̂ = tr cov ΔX`, per member.
///
/// Both are computed within each member and then averaged: pooling members first would let
/// tokens drifting in different directions cancel. `‖μ̂_m‖²` carries an upward bias of
/// `tr Σ/(T − 1)` from the noise, so pure Brownian motion has share ≈ `1/T`, not 0.
///
/// Errors: fewer than 3 time points, or no motion at all.
pub fn drift_decomposition(traj: &Trajectories) -> Result<DriftDecomposition> {
    let l = increments_per_member(traj, 2, "the drift decomposition, in time points,")?;
    let (m, n) = (traj.members(), traj.dim());
    let mut mean_drift = vec![0.0; n];
    let (mut drift_sq, mut trace_cov) = (0.0, 0.0);
    for mm in 0..m {
        let mut mu = vec![0.0; n];
        for t in 0..l {
            let (a, b) = (traj.point(mm, t), traj.point(mm, t + 1));
            mu.iter_mut()
                .zip(a.iter().zip(b))
                .for_each(|(u, (x, y))| *u += y - x);
        }
        mu.iter_mut().for_each(|u| *u /= l as f64);
        let mut ss = 0.0;
        for t in 0..l {
            let (a, b) = (traj.point(mm, t), traj.point(mm, t + 1));
            ss += a
                .iter()
                .zip(b)
                .zip(&mu)
                .map(|((x, y), u)| (y - x - u).powi(2))
                .sum::<f64>();
        }
        trace_cov += ss / (l - 1) as f64;
        drift_sq += mu.iter().map(|u| u * u).sum::<f64>();
        mean_drift.iter_mut().zip(&mu).for_each(|(a, u)| *a += u);
    }
    mean_drift.iter_mut().for_each(|a| *a /= m as f64);
    let (drift_sq, trace_cov) = (drift_sq / m as f64, trace_cov / m as f64);
    if drift_sq + trace_cov <= 0.0 {
        return Err(BrownianError::NoMotion {
            what: "the increment second moment",
            scale: 1,
        });
    }
    Ok(DriftDecomposition {
        mean_drift,
        drift_sq,
        trace_cov,
        share: drift_sq / (drift_sq + trace_cov),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trajectory::Geometry;

    fn series(xs: &[f64]) -> Trajectories {
        Trajectories::from_slice(xs, 1, xs.len(), 1, Geometry::Euclidean).unwrap()
    }

    #[test]
    fn moments_of_a_known_increment_sequence() {
        // Increments ±1 alternating: centred already, m₂ = 1, m₄ = 1 → K = −2, S = 0, ρ(1) = −(L−1)/L.
        let xs: Vec<f64> = (0..9).map(|t| (t % 2) as f64).collect();
        let t = series(&xs);
        let nm = normality(&t).unwrap();
        assert!(nm.skewness.abs() < 1e-12);
        assert!((nm.excess_kurtosis + 2.0).abs() < 1e-12);
        assert!((nm.jarque_bera - 8.0 / 6.0 * 1.0).abs() < 1e-12);
        assert!((nm.p_value - (-nm.jarque_bera / 2.0).exp()).abs() < 1e-15);
        let ac = autocorrelation(&t, 1).unwrap();
        assert!((ac.value + 7.0 / 8.0).abs() < 1e-12);
        assert!((ac.band - 2.0 / 8f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn pure_drift_is_all_drift_and_degenerate_for_shape() {
        let xs: Vec<f64> = (0..6).flat_map(|t| [0.5 * t as f64, -(t as f64)]).collect();
        let t = Trajectories::new(xs, 1, 6, 2, Geometry::Euclidean).unwrap();
        let d = drift_decomposition(&t).unwrap();
        assert_eq!(d.share, 1.0);
        assert!((d.drift_sq - 1.25).abs() < 1e-12 && d.trace_cov.abs() < 1e-24);
        assert_eq!(d.mean_drift, vec![0.5, -1.0]);
        assert!((quadratic_variation_r2(&t).unwrap() - 1.0).abs() < 1e-12);
        assert!(matches!(
            normality(&t),
            Err(BrownianError::DegenerateIncrements { .. })
        ));
    }

    #[test]
    fn short_series_are_typed_errors() {
        let t = series(&[0.0, 1.0]);
        assert!(matches!(normality(&t), Err(BrownianError::TooShort { .. })));
        assert!(matches!(
            autocorrelation(&series(&[0.0, 1.0, 3.0]), 2),
            Err(BrownianError::TooShort { .. })
        ));
        assert!(matches!(
            drift_decomposition(&t),
            Err(BrownianError::TooShort { .. })
        ));
        assert!(matches!(
            quadratic_variation_r2(&series(&[1.0; 5])),
            Err(BrownianError::NoMotion { .. })
        ));
    }
}
