//! Invariants of the estimators, as property tests (64 cases each).

use bmt_brownian::increments::{autocorrelation, normality};
use bmt_brownian::simulate::geodesic_random_walk;
use bmt_brownian::{
    analyse, diffusion_coefficient, msd_curve, msd_exponent, AnalysisConfig, Geometry, LagWindow,
    MsdKind, Trajectories,
};
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn ensemble() -> impl Strategy<Value = (usize, usize, usize, Vec<f64>)> {
    (1usize..4, 8usize..24, 1usize..4).prop_flat_map(|(m, t, n)| {
        (
            Just(m),
            Just(t),
            Just(n),
            prop::collection::vec(-10.0f64..10.0, m * t * n),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// MSD is invariant under a common translation and scales as c² under X ↦ cX (α unchanged).
    #[test]
    fn msd_translation_and_scaling((m, t, n, data) in ensemble(), c in 0.1f64..5.0, shift in -3.0f64..3.0) {
        let base = Trajectories::new(data.clone(), m, t, n, Geometry::Euclidean).unwrap();
        let moved = Trajectories::new(data.iter().map(|v| v + shift).collect(), m, t, n, Geometry::Euclidean).unwrap();
        let scaled = Trajectories::new(data.iter().map(|v| v * c).collect(), m, t, n, Geometry::Euclidean).unwrap();
        let lags = [1, 2, t / 2];
        let a = msd_curve(&base, MsdKind::Euclidean, &lags).unwrap();
        let b = msd_curve(&moved, MsdKind::Euclidean, &lags).unwrap();
        let s = msd_curve(&scaled, MsdKind::Euclidean, &lags).unwrap();
        for ((x, y), z) in a.iter().zip(&b).zip(&s) {
            prop_assert!((x.1 - y.1).abs() <= 1e-9 * (1.0 + x.1));
            prop_assert!((z.1 - c * c * x.1).abs() <= 1e-9 * (1.0 + z.1));
        }
        let d0 = diffusion_coefficient(&base, 1, 1.0, None).unwrap();
        let d1 = diffusion_coefficient(&scaled, 1, 1.0, None).unwrap();
        prop_assert!((d1 - c * c * d0).abs() <= 1e-9 * (1.0 + d1));
        let mut r = ChaCha8Rng::seed_from_u64(0);
        if let (Ok(e0), Ok(e1)) = (
            msd_exponent(&base, MsdKind::Euclidean, &LagWindow::default(), 0, 0.95, &mut r),
            msd_exponent(&scaled, MsdKind::Euclidean, &LagWindow::default(), 0, 0.95, &mut r),
        ) {
            prop_assert!((e0.alpha - e1.alpha).abs() < 1e-9);
        }
    }

    /// On the sphere: chord ≤ arc, so chordal MSD ≤ geodesic MSD ≤ (πr)², and chordal ≤ 4r².
    #[test]
    fn chordal_below_geodesic(seed in 0u64..1000, n in 2usize..8, r in 0.5f64..3.0, d in 0.001f64..2.0) {
        let mut g = ChaCha8Rng::seed_from_u64(seed);
        let traj = geodesic_random_walk(2, 16, n, r, d, 1.0, &mut g).unwrap();
        let lags = [1, 3, 9];
        let c = msd_curve(&traj, MsdKind::Chordal, &lags).unwrap();
        let e = msd_curve(&traj, MsdKind::Euclidean, &lags).unwrap();
        let geo = msd_curve(&traj, MsdKind::Geodesic, &lags).unwrap();
        for ((a, b), x) in c.iter().zip(&geo).zip(&e) {
            prop_assert!(a.1 <= b.1 * (1.0 + 1e-12) + 1e-15);
            prop_assert!(b.1 <= (std::f64::consts::PI * r).powi(2) * (1.0 + 1e-12));
            prop_assert!(a.1 <= 4.0 * r * r * (1.0 + 1e-12));
            prop_assert!((a.1 - x.1).abs() <= 1e-9 * (1.0 + a.1));
        }
    }

    /// Increment statistics stay in their ranges: JB ≥ 0, p ∈ (0, 1], |ρ| ≤ 1, K ≥ −2.
    #[test]
    fn statistic_ranges((m, t, n, data) in ensemble()) {
        let traj = Trajectories::new(data, m, t, n, Geometry::Euclidean).unwrap();
        let nm = normality(&traj).unwrap();
        prop_assert!(nm.jarque_bera >= 0.0);
        prop_assert!(nm.p_value > 0.0 || nm.jarque_bera > 1400.0);
        prop_assert!(nm.p_value <= 1.0);
        prop_assert!(nm.excess_kurtosis >= -2.0 - 1e-9);
        let ac = autocorrelation(&traj, 1).unwrap();
        prop_assert!(ac.value.abs() <= 1.0 + 1e-12);
    }

    /// `analyse` never panics on any shape, including T < 8 and a single member.
    #[test]
    fn analyse_never_panics(m in 1usize..3, t in 1usize..12, n in 1usize..3, seed in 0u64..100) {
        let mut g = ChaCha8Rng::seed_from_u64(seed);
        let data: Vec<f64> = (0..m * t * n).map(|i| ((i as f64) * 0.7 + seed as f64).sin()).collect();
        let traj = Trajectories::new(data, m, t, n, Geometry::Euclidean).unwrap();
        let out = analyse(&traj, &AnalysisConfig::default(), &mut g);
        if t < 8 {
            prop_assert!(out.is_err());
        }
        if let Ok(rep) = out {
            prop_assert!(rep.alpha.is_finite() && rep.diffusion.is_finite());
        }
    }
}
