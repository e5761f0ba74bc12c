//! Statistical validation of every estimator on synthetic processes with known answers
//! (MATH §3). Fixed seeds; each tolerance is derived from the estimator's standard error at the
//! chosen sizes, and where the SE is not known in closed form the test measures it (bootstrap or
//! replicate spread) and asserts that the tolerance is at least 4 of them.

use bmt_brownian::increments::{autocorrelation, drift_decomposition, normality};
use bmt_brownian::simulate::{
    brownian_motion, drift_diffusion, fractional_brownian_motion, geodesic_random_walk,
    geodesic_step_factor, geodesic_walk_effective_diffusion, uniform_on_sphere, FgnSampler,
};
use bmt_brownian::{
    analyse, dfa, diffusion_coefficient, fit_power_law, ito_drift, msd_exponent, AnalysisConfig,
    BrownianError, DfaConfig, Geometry, LagWindow, MsdKind, Trajectories,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp};

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// D in Rⁿ from lag-1 MSD. D̂ = mean‖ΔX‖²/(2nΔt) averages N = M(T−1)n independent squared
/// N(0, 2DΔt) coordinates: each is 2DΔt·χ²₁ with relative sd √2, so SE(D̂)/D = √(2/N).
/// With M = 64, T = 128: n = 3 → N = 24 384, SE = 0.91%, and the 5% tolerance is 5.5 SE
/// (larger n only shrink it).
#[test]
fn diffusion_coefficient_in_rn() {
    let (d, dt, m, t) = (0.3, 0.5, 64, 128);
    for (i, n) in [3usize, 16, 64].into_iter().enumerate() {
        let traj = brownian_motion(m, t, n, d, dt, &mut rng(10 + i as u64)).unwrap();
        let se = (2.0 / (m * (t - 1) * n) as f64).sqrt();
        assert!(0.05 > 5.0 * se);
        let d_hat = diffusion_coefficient(&traj, 1, dt, None).unwrap();
        eprintln!("Rⁿ n = {n}: D̂/D − 1 = {:.4}, SE {se:.4}", d_hat / d - 1.0);
        assert!((d_hat / d - 1.0).abs() < 0.05, "n = {n}: D̂ = {d_hat}");
    }
}

/// D on S^(n−1)(r), r = √n, from lag-1 mean cosine. A geodesic step has θ² = (2DΔt/r²)χ²_k
/// (k = n − 1), so 1 − cos θ ≈ θ²/2 has mean kx and sd x√(2k) (x = DΔt/r²), and
/// −ln(mean cos) has relative SE √(2/(kN)) over N = M(T−1) independent steps (isotropy makes the
/// step lengths i.i.d.). With M = 128, T = 128: k = 2 → SE = 0.78%, so 5% is 6.4 SE. The expected
/// value is the exact D_eff = −r² ln ₁F₁(k/2; 1/2; −x)/(kΔt), which differs from D by
/// (k−1)x/3 ≤ 1.1% at x = 5e-4: both comparisons hold within 5%.
#[test]
fn diffusion_coefficient_on_the_sphere() {
    let (m, t, dt) = (128, 128, 0.1);
    for (i, n) in [3usize, 16, 64].into_iter().enumerate() {
        let r = (n as f64).sqrt();
        let d = 5e-4 * r * r / dt;
        let traj = geodesic_random_walk(m, t, n, r, d, dt, &mut rng(20 + i as u64)).unwrap();
        let d_eff = geodesic_walk_effective_diffusion(n, r, d, dt).unwrap();
        let se = (2.0 / ((n - 1) * m * (t - 1)) as f64).sqrt();
        assert!(0.05 > 6.0 * se);
        let d_hat = diffusion_coefficient(&traj, 1, dt, None).unwrap();
        eprintln!(
            "sphere n = {n}: D̂/D_eff − 1 = {:.4}, D_eff/D − 1 = {:.4}, SE {se:.4}",
            d_hat / d_eff - 1.0,
            d_eff / d - 1.0
        );
        assert!(
            (d_hat / d_eff - 1.0).abs() < 0.05,
            "n = {n}: {d_hat} vs {d_eff}"
        );
        assert!((d_hat / d - 1.0).abs() < 0.05, "n = {n}: {d_hat} vs {d}");
        // The geodesic MSD of the same walk grows like 2(n−1)Dτ at short lags: α ≈ 1.
        let short = LagWindow {
            min: 1,
            max: Some(8),
            max_points: 8,
        };
        let e = msd_exponent(&traj, MsdKind::Geodesic, &short, 0, 0.95, &mut rng(0)).unwrap();
        assert!((e.alpha - 1.0).abs() < 0.05, "n = {n}: α = {}", e.alpha);
    }
}

/// With a large D the walk mixes: the chordal MSD saturates at 2r² (MATH §3). For the geodesic
/// walk it is exactly `E‖X_(t+τ) − X_t‖² = 2r²(1 − φ^τ)`, φ the one-step factor, so the measured
/// curve is compared with that at every fitted lag, and α with the OLS slope of the exact curve
/// over the same lags (well below 1: a straight-line fit at long lags is wrong).
/// Tolerance: chord² ∈ [0, 4r²] has sd ≤ 2r²; with correlation time r²/((n−1)D) = 20 steps each
/// member's time average over ≥ 384 points has ≥ 19 effective samples, 64 members ≥ 1200, so the
/// SE is ≤ 2r²/√1200 = 0.058·r², i.e. ≤ 2.9% of the 2r² plateau; at short lags the relative SE is
/// √(2/((n−1)·64·511)) ≈ 0.2%. 10% relative is ≥ 3.4 SE everywhere; α within 0.05.
#[test]
fn chordal_msd_saturates_at_two_r_squared() {
    let (n, r, dt) = (8usize, 2.0, 1.0);
    let d = 0.05 * r * r / (n - 1) as f64; // (n−1)Dτ/r² = 0.05 τ: mixed after ~60 steps
    let traj = geodesic_random_walk(64, 512, n, r, d, dt, &mut rng(5)).unwrap();
    let phi = geodesic_step_factor(n, r, d, dt).unwrap();
    let long = msd_exponent(
        &traj,
        MsdKind::Chordal,
        &LagWindow::default(),
        0,
        0.95,
        &mut rng(0),
    )
    .unwrap();
    let exact: Vec<(f64, f64)> = long
        .curve
        .iter()
        .map(|&(tau, _)| (tau as f64, 2.0 * r * r * (1.0 - phi.powi(tau as i32))))
        .collect();
    for (&(tau, got), &(_, want)) in long.curve.iter().zip(&exact) {
        assert!((got / want - 1.0).abs() < 0.1, "τ = {tau}: {got} vs {want}");
    }
    let alpha_exact = fit_power_law(&exact).unwrap().alpha;
    assert!(alpha_exact < 0.7, "exact-curve α = {alpha_exact}");
    assert!(
        (long.alpha - alpha_exact).abs() < 0.05,
        "α = {}",
        long.alpha
    );
    // At short lags the same walk is diffusive.
    let short = LagWindow {
        min: 1,
        max: Some(4),
        max_points: 4,
    };
    let s = msd_exponent(&traj, MsdKind::Chordal, &short, 0, 0.95, &mut rng(0)).unwrap();
    assert!((s.alpha - 1.0).abs() < 0.1, "short-lag α = {}", s.alpha);
}

/// α from log MSD on log τ (τ ≤ T/4). The SE of α has no simple closed form (overlapping
/// time averages), so the test uses the bootstrap over members: the 95% percentile interval spans
/// ≈ 3.92 SE, and we require SE ≤ 0.0125 so that the ±0.05 tolerance is ≥ 4 SE; the truth must also
/// lie inside the bootstrap interval widened by its own half-width (≈ 4 SE).
fn check_alpha(traj: &Trajectories, truth: f64, seed: u64) {
    let e = msd_exponent(
        traj,
        MsdKind::Euclidean,
        &LagWindow::default(),
        300,
        0.95,
        &mut rng(seed),
    )
    .unwrap();
    let (lo, hi) = e.alpha_ci.unwrap();
    let se = (hi - lo) / 3.92;
    eprintln!("α = {:.4} (truth {truth}), bootstrap SE {se:.4}", e.alpha);
    assert!(
        se <= 0.0125,
        "bootstrap SE {se} too large for the tolerance"
    );
    assert!((e.alpha - truth).abs() < 0.05, "α = {} vs {truth}", e.alpha);
    assert!(lo - (hi - lo) / 2.0 < truth && truth < hi + (hi - lo) / 2.0);
}

#[test]
fn alpha_of_brownian_motion() {
    let traj = brownian_motion(64, 1024, 3, 1.0, 1.0, &mut rng(30)).unwrap();
    check_alpha(&traj, 1.0, 31);
}

#[test]
fn alpha_of_fractional_brownian_motion() {
    for (i, h) in [0.3, 0.7].into_iter().enumerate() {
        let traj =
            fractional_brownian_motion(64, 1024, 3, h, 1.0, &mut rng(40 + i as u64)).unwrap();
        check_alpha(&traj, 2.0 * h, 41 + i as u64);
    }
}

/// DFA-1 on fractional Gaussian noise. 16 independent series of length 4096 per H; the SE of
/// the mean estimate is measured as sd/√16 and must be ≤ 0.0125 (so ±0.05 is ≥ 4 SE). DFA's own
/// small-scale bias is kept out by the default minimum scale of 10.
#[test]
fn dfa_recovers_the_hurst_exponent() {
    let (len, reps) = (4096, 16);
    for (i, h) in [0.3, 0.5, 0.7].into_iter().enumerate() {
        let sampler = FgnSampler::new(len, h).unwrap();
        let mut r = rng(50 + i as u64);
        let mut est = Vec::new();
        for _ in 0..reps / 2 {
            let (a, b) = sampler.sample_pair(&mut r);
            for s in [a, b] {
                est.push(dfa(&s, &DfaConfig::default()).unwrap().hurst);
            }
        }
        let mean = est.iter().sum::<f64>() / reps as f64;
        let sd = (est.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / (reps - 1) as f64).sqrt();
        let se = sd / (reps as f64).sqrt();
        eprintln!("DFA H = {h}: mean {mean:.4}, SE {se:.4}");
        assert!(se <= 0.0125, "H = {h}: SE {se}");
        assert!((mean - h).abs() < 0.05, "H = {h}: DFA gives {mean}");
    }
    // A path (Brownian motion) instead of its noise gives H + 1 = 1.5: 16 paths, same SE rule.
    let paths = brownian_motion(16, 4096, 1, 0.5, 1.0, &mut rng(59)).unwrap();
    let est: Vec<f64> = (0..16)
        .map(|m| dfa(paths.member(m), &DfaConfig::default()).unwrap().hurst)
        .collect();
    let mean = est.iter().sum::<f64>() / 16.0;
    let sd = (est.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / 15.0).sqrt();
    eprintln!("path DFA: mean {mean}, SE {}", sd / 4.0);
    assert!(
        sd / 4.0 <= 0.025 && (mean - 1.5).abs() < 0.1,
        "path H = {mean}"
    );
}

/// Pure drift: MSD = ‖μ‖²τ² exactly, so α = 2 and the drift share is 1 to rounding; the shape
/// statistics are undefined and `analyse` says so. With a tiny diffusion added, `analyse` runs:
/// MSD(τ) = ‖μ‖²τ² + 2nDτ, whose log-log slope differs from 2 by < 2nD/‖μ‖² = 1e-8.
#[test]
fn pure_drift_is_ballistic() {
    let mu = [1.0, -0.5, 2.0];
    let traj = drift_diffusion(16, 256, &mu, 0.0, 0.1, &mut rng(60)).unwrap();
    let e = msd_exponent(
        &traj,
        MsdKind::Euclidean,
        &LagWindow::default(),
        50,
        0.95,
        &mut rng(61),
    )
    .unwrap();
    assert!((e.alpha - 2.0).abs() < 1e-9, "α = {}", e.alpha);
    let d = drift_decomposition(&traj).unwrap();
    assert!((d.share - 1.0).abs() < 1e-12, "share {}", d.share);
    assert!(matches!(
        analyse(&traj, &AnalysisConfig::default(), &mut rng(62)),
        Err(BrownianError::DegenerateIncrements { .. })
    ));

    let noisy = drift_diffusion(16, 256, &mu, 1e-8, 1.0, &mut rng(63)).unwrap();
    let rep = analyse(&noisy, &AnalysisConfig::default(), &mut rng(64)).unwrap();
    assert!((rep.alpha - 2.0).abs() < 1e-6, "α = {}", rep.alpha);
    assert!(rep.drift_share > 0.999_999, "share {}", rep.drift_share);
    assert!(rep.quadratic_variation_r_squared > 0.999_999);
}

/// Itô drift of renormalised tangent steps, s = σ/r. Per step the radial displacement is
/// (1 + s²χ²_k)^(−1/2) − 1 (k = n − 1): mean −s²k/2 · (1 − (3/4)s²(k+2) + …) and sd ≈ s²√(2k)/2.
/// Choosing s²(k+2) = 0.0133 keeps the O(s⁴) bias at 1%; with N = 200 points × 100 draws the
/// relative SE is √(2/(kN)) ≤ 0.71% (k = 2). Total error budget ≤ 1% + 4 SE < 4%: within 5%.
#[test]
fn ito_drift_matches_minus_sigma_squared_n_minus_one_over_two() {
    for (i, n) in [3usize, 16, 64].into_iter().enumerate() {
        let r = (n as f64).sqrt();
        let s = (0.0133 / (n + 1) as f64).sqrt();
        let mut g = rng(70 + i as u64);
        let pts: Vec<f64> = (0..200)
            .flat_map(|_| uniform_on_sphere(n, r, &mut g))
            .collect();
        let it = ito_drift(&pts, n, r, s * r, 100, &mut g).unwrap();
        eprintln!(
            "Itô n = {n}: measured/predicted − 1 = {:.4}, SE {:.4}",
            it.measured / it.predicted - 1.0,
            it.std_error / it.predicted.abs()
        );
        assert!((it.predicted + s * s * (n - 1) as f64 / 2.0).abs() < 1e-15);
        assert!(
            (it.measured / it.predicted - 1.0).abs() < 0.05,
            "n = {n}: {} vs {}",
            it.measured,
            it.predicted
        );
        assert!(it.std_error < 0.01 * it.predicted.abs());
    }
}

/// `analyse` on Brownian motion: every statistic at its null value within its SE.
/// N = 32·255·4 = 32 640 pooled increments: SE(K) = √(24/N) = 0.027 and SE(S) = √(6/N) = 0.014,
/// so |K| < 0.11 is 4 SE; ρ(1) has SE 1/√N = band/2, bias −1/255, so |ρ| < 2·band + 1/255 is ≥ 4 SE.
/// E‖μ̂_m‖² = tr Σ/(T−1), so the drift share is ≈ 1/T = 0.004; per member ‖μ̂_m‖² is
/// (tr Σ/(T−1))·χ²₄/4 (relative sd 71%), over 32 members 12.5%: SE ≈ 0.0005, and 0.012 is > 15 SE.
#[test]
fn analyse_brownian_motion_report() {
    let traj = brownian_motion(32, 256, 4, 0.2, 1.0, &mut rng(80)).unwrap();
    let rep = analyse(&traj, &AnalysisConfig::default(), &mut rng(81)).unwrap();
    assert_eq!(rep.msd_kind, MsdKind::Euclidean);
    assert!((rep.alpha - 1.0).abs() < 0.05);
    let (lo, hi) = rep.alpha_ci.unwrap();
    assert!(lo < rep.alpha && rep.alpha < hi && hi - lo < 0.2);
    assert!((rep.diffusion / 0.2 - 1.0).abs() < 0.05);
    assert!(
        rep.excess_kurtosis.abs() < 0.11,
        "K = {}",
        rep.excess_kurtosis
    );
    assert!(rep.skewness.abs() < 0.056, "S = {}", rep.skewness);
    assert!(rep.autocorrelation.abs() < 2.0 * rep.autocorr_band + 1.0 / 255.0);
    assert!(rep.quadratic_variation_r_squared > 0.99);
    assert!(rep.drift_share < 0.012, "share {}", rep.drift_share);
    // τ = 1..64, 32 geometrically spaced values rounded to integers: 23 distinct lags.
    assert!(rep.msd.len() > 16 && rep.msd.len() <= 32);
    assert_eq!(rep.msd[0].0, 1);
    assert_eq!(rep.msd.last().unwrap().0, 64);
}

/// The increment statistics must also *reject* what is not Brownian.
/// Laplace increments (scale 1, E|X|^k = k!): excess kurtosis 3. By the delta method on
/// K̂ = m₄/m₂² with gradient (−2μ₄/μ₂³, 1/μ₂²) = (−6, 1/4) and Var X² = 20, Var X⁴ = 39 744,
/// Cov(X², X⁴) = 672, Var K̂ ≈ 1188/N; N = 16·1023·2 = 32 736 gives SE = 0.19, so 3 ± 0.8 is 4.2 SE
/// (and excludes the Gaussian 0 by 11 SE). JB is then ≈ N·9/24 ≈ 12 000: p ≈ 0.
/// AR(1) increments with φ = 0.5: ρ(1) = φ with Bartlett SE √((1 − φ²)/N) = 0.0048 and centring bias
/// O(1/T) ≈ 0.003, so ±0.03 is > 5 SE.
#[test]
fn increment_statistics_reject_non_brownian_motion() {
    let (m, t, n) = (16usize, 1024usize, 2usize);
    let exp = Exp::new(1.0).unwrap();
    let mut g = rng(90);
    let mut data = Vec::with_capacity(m * t * n);
    for _ in 0..m {
        let mut x = vec![0.0; n];
        data.extend_from_slice(&x);
        for _ in 1..t {
            for xi in x.iter_mut() {
                *xi += exp.sample(&mut g) - exp.sample(&mut g);
            }
            data.extend_from_slice(&x);
        }
    }
    let lap = Trajectories::new(data, m, t, n, Geometry::Euclidean).unwrap();
    let nm = normality(&lap).unwrap();
    assert!(
        (nm.excess_kurtosis - 3.0).abs() < 0.6,
        "K = {}",
        nm.excess_kurtosis
    );
    assert!(nm.p_value < 1e-100, "JB p = {}", nm.p_value);

    let phi = 0.5;
    let noise = brownian_motion(m, t, n, 0.5, 1.0, &mut rng(91)).unwrap();
    let mut data = Vec::with_capacity(m * t * n);
    for mm in 0..m {
        let (mut x, mut prev) = (vec![0.0; n], vec![0.0; n]);
        data.extend_from_slice(&x);
        for s in 1..t {
            for i in 0..n {
                let e = noise.point(mm, s)[i] - noise.point(mm, s - 1)[i];
                prev[i] = phi * prev[i] + e;
                x[i] += prev[i];
            }
            data.extend_from_slice(&x);
        }
    }
    let ar = Trajectories::new(data, m, t, n, Geometry::Euclidean).unwrap();
    let ac = autocorrelation(&ar, 1).unwrap();
    assert!((ac.value - phi).abs() < 0.03, "ρ(1) = {}", ac.value);
    assert!(ac.value > 10.0 * ac.band);
}

/// Short or degenerate inputs give typed errors, never panics; one member still analyses.
#[test]
fn short_inputs_are_typed_errors() {
    for t in 1..8 {
        let traj = brownian_motion(3, t, 2, 1.0, 1.0, &mut rng(100)).unwrap();
        let err = analyse(&traj, &AnalysisConfig::default(), &mut rng(101)).unwrap_err();
        assert!(
            matches!(err, BrownianError::TooShort { .. }),
            "T = {t}: {err}"
        );
    }
    let one = brownian_motion(1, 64, 2, 1.0, 1.0, &mut rng(102)).unwrap();
    let rep = analyse(&one, &AnalysisConfig::default(), &mut rng(103)).unwrap();
    assert!(rep.alpha_ci.is_none());
    let err = msd_exponent(
        &one,
        MsdKind::Euclidean,
        &LagWindow::default(),
        10,
        0.95,
        &mut rng(0),
    );
    assert!(matches!(
        err,
        Err(BrownianError::TooShort { needed: 2, .. })
    ));
    // A walk that has mixed over the sphere: hopping between antipodes gives mean cos θ(1) = −1.
    let hop: Vec<f64> = (0..8)
        .flat_map(|t| if t % 2 == 0 { [1.0, 0.0] } else { [-1.0, 0.0] })
        .collect();
    let hop = Trajectories::new(hop, 1, 8, 2, Geometry::Sphere { radius: 1.0 }).unwrap();
    assert!(matches!(
        diffusion_coefficient(&hop, 1, 1.0, None),
        Err(BrownianError::Mixed { lag: 1, mean_cos }) if mean_cos == -1.0
    ));
}

/// On a sphere, `analyse` defaults to the geodesic MSD and the radius-aware D.
/// D: relative SE √(2/(k·M(T−1))) = √(2/(15·32·255)) = 0.4%, and D_eff/D − 1 = (k−1)x/3 < 0.03%.
/// α: for Brownian motion on S^k(r), E θ² = 2ks(1 − (k−1)s/3 + O(s²)) with s = Dτ/r², so the local
/// log-log slope is 1 − (k−1)s/3 ≥ 0.985 at the largest lag τ = 64 (s = 0.0032): the curvature
/// bias is < 0.015; the bootstrap SE is required to be ≤ 0.0125, so ±0.05 covers bias + 2.8 SE.
#[test]
fn analyse_on_the_sphere_uses_geodesic_msd() {
    let (n, r, dt) = (16usize, 4.0, 1.0);
    let d = 5e-5 * r * r;
    let traj = geodesic_random_walk(32, 256, n, r, d, dt, &mut rng(110)).unwrap();
    let rep = analyse(&traj, &AnalysisConfig::default(), &mut rng(111)).unwrap();
    assert_eq!(rep.msd_kind, MsdKind::Geodesic);
    let (lo, hi) = rep.alpha_ci.unwrap();
    eprintln!(
        "sphere analyse: D/D − 1 = {:.4}, α = {:.4}, SE {:.4}",
        rep.diffusion / d - 1.0,
        rep.alpha,
        (hi - lo) / 3.92
    );
    assert!((hi - lo) / 3.92 <= 0.0125);
    assert!(
        (rep.diffusion / d - 1.0).abs() < 0.05,
        "D = {}",
        rep.diffusion
    );
    assert!((rep.alpha - 1.0).abs() < 0.05, "α = {}", rep.alpha);
}

/// The bootstrap interval over members is calibrated: over R = 24 independent ensembles of Brownian
/// motion, the mean bootstrap SE ((hi − lo)/3.92) matches the replicate sd of α̂. That sd is itself
/// estimated from 24 values, with relative SE 1/√(2·23) = 15%: the ratio must lie in [0.55, 1.6]
/// (≈ 3 of those SEs either side on the log scale). Coverage of α = 1 by the 95% interval has
/// expectation 22.8 of 24 and binomial sd 1.07: at least 18 is 4.5 sd below.
#[test]
fn bootstrap_interval_is_calibrated() {
    let reps = 24;
    let mut g = rng(120);
    let (mut alphas, mut ses, mut covered) = (Vec::new(), Vec::new(), 0);
    for _ in 0..reps {
        let traj = brownian_motion(32, 256, 2, 1.0, 1.0, &mut g).unwrap();
        let e = msd_exponent(
            &traj,
            MsdKind::Euclidean,
            &LagWindow::default(),
            200,
            0.95,
            &mut g,
        )
        .unwrap();
        let (lo, hi) = e.alpha_ci.unwrap();
        covered += usize::from(lo <= 1.0 && 1.0 <= hi);
        ses.push((hi - lo) / 3.92);
        alphas.push(e.alpha);
    }
    let mean = alphas.iter().sum::<f64>() / reps as f64;
    let sd = (alphas.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (reps - 1) as f64).sqrt();
    let boot = ses.iter().sum::<f64>() / reps as f64;
    eprintln!("bootstrap SE {boot:.4} vs replicate sd {sd:.4}, coverage {covered}/{reps}");
    assert!((0.55..=1.6).contains(&(boot / sd)), "ratio {}", boot / sd);
    assert!(covered >= 18, "coverage {covered}/{reps}");
}
