//! Detrended fluctuation analysis of order 1 (Peng et al., Phys. Rev. E 49, 1685, 1994).
//!
//! For a series `x_1..x_N`: profile `Y_k = Σ_(i≤k) (x_i − x̄)`; at each scale `s` cut `Y` into
//! `⌊N/s⌋` windows from the start and as many from the end, subtract each window's least-squares
//! line, and let `F(s)² = mean over windows of the mean squared residual`. For fractional Gaussian
//! noise `F(s) ∝ s^H`: the Hurst exponent is the OLS slope of `log F` on `log s`.
//!
//! Feed it the *noise* (increments, e.g. fGn, H ∈ (0, 1)); a path such as fBm gives `H + 1`.

use crate::error::{BrownianError, Result};
use crate::msd::{fit_power_law, PowerLawFit};

/// The scales `s` at which DFA is evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DfaConfig {
    /// Smallest window length (default 10; below that the order-1 detrending biases `F`).
    pub min_scale: usize,
    /// Largest window length; `None` means `N/4` so every scale has at least 8 windows.
    pub max_scale: Option<usize>,
    /// At most this many geometrically spaced scales (default 16).
    pub scales: usize,
}

impl Default for DfaConfig {
    fn default() -> Self {
        Self {
            min_scale: 10,
            max_scale: None,
            scales: 16,
        }
    }
}

/// Result of a DFA.
#[derive(Debug, Clone, PartialEq)]
pub struct Dfa {
    /// Hurst exponent estimate (slope of `log F(s)` on `log s`).
    pub hurst: f64,
    /// The log-log fit behind it.
    pub fit: PowerLawFit,
    /// `(s, F(s))` at every scale used.
    pub fluctuation: Vec<(usize, f64)>,
}

/// Order-1 DFA of a scalar series.
///
/// Errors: non-finite values, a scale window with fewer than two scales or a minimum scale below 3,
/// or a constant series (`F = 0`).
pub fn dfa(series: &[f64], cfg: &DfaConfig) -> Result<Dfa> {
    if let Some(i) = series.iter().position(|v| !v.is_finite()) {
        return Err(BrownianError::NonFinite { member: 0, step: i });
    }
    let n = series.len();
    let max = cfg.max_scale.unwrap_or(n / 4);
    if cfg.min_scale < 3 || max <= cfg.min_scale || max > n || cfg.scales < 2 {
        if cfg.max_scale.is_none() && cfg.min_scale >= 3 {
            return Err(BrownianError::TooShort {
                what: "DFA with the default scales (N ≥ 4·(min_scale + 1)), in samples,",
                needed: 4 * (cfg.min_scale + 1),
                got: n,
            });
        }
        return Err(BrownianError::BadLagWindow {
            min: cfg.min_scale,
            max,
            steps: n,
        });
    }
    let mean = series.iter().sum::<f64>() / n as f64;
    let mut profile = Vec::with_capacity(n);
    let mut acc = 0.0;
    for x in series {
        acc += x - mean;
        profile.push(acc);
    }
    let (lo, hi) = ((cfg.min_scale as f64).ln(), (max as f64).ln());
    let mut scales: Vec<usize> = (0..cfg.scales)
        .map(|i| {
            (lo + (hi - lo) * i as f64 / (cfg.scales - 1) as f64)
                .exp()
                .round() as usize
        })
        .collect();
    scales.dedup();
    let mut fluctuation = Vec::with_capacity(scales.len());
    for &s in &scales {
        let windows = n / s;
        let mut total = 0.0;
        for w in 0..windows {
            total += detrended_ms(&profile[w * s..(w + 1) * s]);
            total += detrended_ms(&profile[n - (w + 1) * s..n - w * s]);
        }
        let f = (total / (2 * windows) as f64).sqrt();
        if f <= 0.0 {
            return Err(BrownianError::NoMotion {
                what: "the DFA fluctuation F(s)",
                scale: s,
            });
        }
        fluctuation.push((s, f));
    }
    let pts: Vec<(f64, f64)> = fluctuation.iter().map(|&(s, f)| (s as f64, f)).collect();
    let fit = fit_power_law(&pts)?;
    Ok(Dfa {
        hurst: fit.alpha,
        fit,
        fluctuation,
    })
}

/// Mean squared residual of `y` about its least-squares line in `j = 0..s−1`.
fn detrended_ms(y: &[f64]) -> f64 {
    let s = y.len() as f64;
    let jm = (s - 1.0) / 2.0;
    let ym = y.iter().sum::<f64>() / s;
    let sxx = s * (s * s - 1.0) / 12.0;
    let sxy: f64 = y
        .iter()
        .enumerate()
        .map(|(j, v)| (j as f64 - jm) * (v - ym))
        .sum();
    let b = sxy / sxx;
    y.iter()
        .enumerate()
        .map(|(j, v)| (v - ym - b * (j as f64 - jm)).powi(2))
        .sum::<f64>()
        / s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detrending_removes_lines_exactly() {
        let y: Vec<f64> = (0..12).map(|j| 3.0 - 0.7 * j as f64).collect();
        assert!(detrended_ms(&y) < 1e-24);
        // Residual of a parabola j² on j = 0..2 about its line: (1/3, −2/3, 1/3) → ms = 2/9.
        assert!((detrended_ms(&[0.0, 1.0, 4.0]) - 2.0 / 9.0).abs() < 1e-12);
    }

    #[test]
    fn alternating_noise_has_flat_fluctuation_slope_below_half() {
        // x = ±1 alternating: the profile is bounded, so F(s) does not grow: H well below 1/2.
        let x: Vec<f64> = (0..400)
            .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let d = dfa(&x, &DfaConfig::default()).unwrap();
        assert!(d.hurst < 0.1, "H = {}", d.hurst);
    }

    #[test]
    fn errors_are_typed() {
        assert!(matches!(
            dfa(&[1.0; 20], &DfaConfig::default()),
            Err(BrownianError::TooShort { .. })
        ));
        assert!(matches!(
            dfa(&[1.0; 200], &DfaConfig::default()),
            Err(BrownianError::NoMotion { .. })
        ));
        let bad = DfaConfig {
            min_scale: 2,
            ..Default::default()
        };
        assert!(matches!(
            dfa(&[1.0; 200], &bad),
            Err(BrownianError::BadLagWindow { .. })
        ));
    }
}
