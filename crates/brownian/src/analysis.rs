//! One-call summary of every §3 diagnostic: [`analyse`].

use crate::error::{BrownianError, Result};
use crate::increments::{autocorrelation, drift_decomposition, normality, quadratic_variation_r2};
use crate::msd::{diffusion_coefficient, msd_exponent, LagWindow, MsdKind};
use crate::trajectory::Trajectories;
use rand::Rng;

/// Settings of [`analyse`]. `Default` follows MATH §3.
#[derive(Debug, Clone, PartialEq)]
pub struct AnalysisConfig {
    /// MSD kind; `None` picks Euclidean in Rⁿ and geodesic on a sphere.
    pub msd_kind: Option<MsdKind>,
    /// Lags of the α fit (default τ = 1..T/4, at most 32 geometrically spaced).
    pub lags: LagWindow,
    /// Bootstrap resamples over ensemble members for α's interval (default 500; 0 disables it).
    pub bootstrap_resamples: usize,
    /// Confidence level of the interval (default 0.95).
    pub ci_level: f64,
    /// Time between consecutive points, in the units D should carry (default 1: per step).
    pub dt: f64,
    /// Lag at which D is estimated (default 1; see [`diffusion_coefficient`]).
    pub diffusion_lag: usize,
    /// Lag of the reported increment autocorrelation (default 1).
    pub autocorr_lag: usize,
    /// Intrinsic sphere dimension for D (default `n − 1`; `n − 2` for LayerNorm outputs).
    pub sphere_dim: Option<usize>,
}

impl Default for AnalysisConfig {
    fn default() -> Self {
        Self {
            msd_kind: None,
            lags: LagWindow::default(),
            bootstrap_resamples: 500,
            ci_level: 0.95,
            dt: 1.0,
            diffusion_lag: 1,
            autocorr_lag: 1,
            sphere_dim: None,
        }
    }
}

/// Everything [`analyse`] measures on one ensemble.
#[derive(Debug, Clone, PartialEq)]
pub struct BrownianReport {
    /// MSD exponent α (1 diffusive, < 1 sub-, > 1 super-diffusive, 2 ballistic).
    pub alpha: f64,
    /// Percentile bootstrap interval of α over members, `(lo, hi)`; `None` when the ensemble has a
    /// single member or `bootstrap_resamples = 0`.
    pub alpha_ci: Option<(f64, f64)>,
    /// R² of the log-log MSD fit.
    pub alpha_fit_r_squared: f64,
    /// The MSD kind that was used.
    pub msd_kind: MsdKind,
    /// Diffusion coefficient D (generator `DΔ`, per unit of `dt`).
    pub diffusion: f64,
    /// Skewness of the standardised increments.
    pub skewness: f64,
    /// Excess kurtosis of the standardised increments (0 for Gaussian).
    pub excess_kurtosis: f64,
    /// Jarque–Bera statistic `N/6 (S² + K²/4)`.
    pub jarque_bera: f64,
    /// Its χ²₂ p-value `exp(−JB/2)`.
    pub jarque_bera_p_value: f64,
    /// Increment autocorrelation at `autocorr_lag`.
    pub autocorrelation: f64,
    /// The lag of `autocorrelation`.
    pub autocorr_lag: usize,
    /// White-noise band half-width `2/√N`.
    pub autocorr_band: f64,
    /// R² of the quadratic variation against time.
    pub quadratic_variation_r_squared: f64,
    /// Drift share `‖μ̂‖² / (‖μ̂‖² + tr Σ̂)`.
    pub drift_share: f64,
    /// `(τ, MSD(τ))` at the fitted lags, for plots.
    pub msd: Vec<(usize, f64)>,
}

/// Runs every §3 estimator on `traj`: MSD exponent with bootstrap interval, D, increment shape,
/// autocorrelation, quadratic-variation linearity and drift share.
///
/// Errors (typed, never a panic): fewer than 8 time points with the default lag window, a lag
/// window or lag outside the trajectory, a sphere-only MSD kind on Euclidean data, zero motion,
/// increments of zero variance (an exact pure drift: call the individual estimators instead), or a
/// sphere walk mixed beyond `diffusion_lag`.
pub fn analyse(
    traj: &Trajectories,
    cfg: &AnalysisConfig,
    rng: &mut impl Rng,
) -> Result<BrownianReport> {
    if traj.steps() < 4 {
        return Err(BrownianError::TooShort {
            what: "a Brownian analysis, in time points,",
            needed: 4,
            got: traj.steps(),
        });
    }
    let kind = cfg
        .msd_kind
        .unwrap_or_else(|| MsdKind::default_for(traj.geometry()));
    let resamples = if traj.members() < 2 {
        0
    } else {
        cfg.bootstrap_resamples
    };
    let exp = msd_exponent(traj, kind, &cfg.lags, resamples, cfg.ci_level, rng)?;
    let diffusion = diffusion_coefficient(traj, cfg.diffusion_lag, cfg.dt, cfg.sphere_dim)?;
    let shape = normality(traj)?;
    let ac = autocorrelation(traj, cfg.autocorr_lag)?;
    let qv = quadratic_variation_r2(traj)?;
    let drift = drift_decomposition(traj)?;
    Ok(BrownianReport {
        alpha: exp.alpha,
        alpha_ci: exp.alpha_ci,
        alpha_fit_r_squared: exp.fit.r_squared,
        msd_kind: kind,
        diffusion,
        skewness: shape.skewness,
        excess_kurtosis: shape.excess_kurtosis,
        jarque_bera: shape.jarque_bera,
        jarque_bera_p_value: shape.p_value,
        autocorrelation: ac.value,
        autocorr_lag: ac.lag,
        autocorr_band: ac.band,
        quadratic_variation_r_squared: qv,
        drift_share: drift.share,
        msd: exp.curve,
    })
}
