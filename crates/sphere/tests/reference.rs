//! Tests of the f64 reference geometry: property invariants, exact cases, samplers, Bessel ratio.
//!
//! Tolerances for the invariants: every quantity is a chain of at most ~6 operations, each a sum over
//! n ≤ 512 coordinates; a length-n f64 sum has relative error ≤ n·u ≈ 512 × 1.1e-16 ≈ 6e-14
//! (u the unit roundoff), so a chain stays below ~4e-13 relative to r. We assert 1e-10 (relative to r,
//! or to ‖v‖ for tangent vectors): 250× that bound, yet 1e8 times smaller than any real error in a
//! formula (a wrong sign or factor changes the result by O(1) relative).

use bmt_sphere::reference::*;
use bmt_sphere::SphereError;
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::f64::consts::PI;

const TOL: f64 = 1e-10;

fn nrm(a: &[f64]) -> f64 {
    a.iter().map(|v| v * v).sum::<f64>().sqrt()
}
fn dotp(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
fn scaled(a: &[f64], s: f64) -> Vec<f64> {
    a.iter().map(|v| v * s).collect()
}
fn on_sphere(a: &[f64], r: f64) -> Vec<f64> {
    scaled(a, r / nrm(a))
}
fn dist(a: &[f64], b: &[f64]) -> f64 {
    nrm(&a.iter().zip(b).map(|(x, y)| x - y).collect::<Vec<_>>())
}

/// n in 2..=512, radius in 0.1..=100, three raw vectors in [−1, 1]ⁿ and a scalar in (0, 1).
fn case() -> impl Strategy<Value = (Vec<f64>, Vec<f64>, Vec<f64>, f64, f64)> {
    (2usize..=512).prop_flat_map(|n| {
        (
            prop::collection::vec(-1.0f64..1.0, n),
            prop::collection::vec(-1.0f64..1.0, n),
            prop::collection::vec(-1.0f64..1.0, n),
            0.1f64..=100.0,
            0.0f64..0.999,
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn exp_stays_on_sphere((x, v, _w, r, f) in case()) {
        prop_assume!(nrm(&x) > 1e-3 && nrm(&v) > 1e-3);
        let x = on_sphere(&x, r);
        // Any length, up to 3 half-turns: exp must wrap around and still land on the sphere.
        let v = scaled(&v, 3.0 * PI * r * f / nrm(&v));
        let e = exp_map(&x, &v, r).unwrap();
        prop_assert!((nrm(&e) - r).abs() <= TOL * r, "‖exp‖ = {} vs r = {}", nrm(&e), r);
    }

    #[test]
    fn exp_log_roundtrip((x, y, _w, r, _f) in case()) {
        prop_assume!(nrm(&x) > 1e-3 && nrm(&y) > 1e-3);
        let (x, y) = (on_sphere(&x, r), on_sphere(&y, r));
        let l = log_map(&x, &y, r).unwrap();
        prop_assert!(dotp(&l, &x).abs() <= TOL * r * r, "log not tangent");
        let d = geodesic_distance(&x, &y, r).unwrap();
        prop_assert!((nrm(&l) - d).abs() <= TOL * r, "‖log‖ = {} vs d = {}", nrm(&l), d);
        let back = exp_map(&x, &l, r).unwrap();
        prop_assert!(dist(&back, &y) <= TOL * r, "exp(log y) off by {}", dist(&back, &y));
    }

    #[test]
    fn distance_of_exp_is_length((x, v, _w, r, f) in case()) {
        prop_assume!(nrm(&x) > 1e-3);
        let x = on_sphere(&x, r);
        let vt = tangent_project(&x, &v, r).unwrap();
        prop_assume!(nrm(&vt) > 1e-3);
        // ‖v‖ = f·πr < πr: below the injectivity radius.
        let vt = scaled(&vt, f * PI * r / nrm(&vt));
        let y = exp_map(&x, &vt, r).unwrap();
        let d = geodesic_distance(&x, &y, r).unwrap();
        prop_assert!((d - nrm(&vt)).abs() <= TOL * r, "d = {} vs ‖v‖ = {}", d, nrm(&vt));
        // The logarithm recovers v itself, not only its length.
        let l = log_map(&x, &y, r).unwrap();
        prop_assert!(dist(&l, &vt) <= TOL * r);
    }

    #[test]
    fn transport_is_tangent_isometry((x, y, v, r, _f) in case()) {
        prop_assume!(nrm(&x) > 1e-3 && nrm(&y) > 1e-3 && nrm(&v) > 1e-3);
        let (x, y) = (on_sphere(&x, r), on_sphere(&y, r));
        let vt = tangent_project(&x, &v, r).unwrap();
        let w = parallel_transport(&x, &y, &v, r).unwrap();
        let scale = nrm(&vt).max(1e-300);
        prop_assert!((nrm(&w) - nrm(&vt)).abs() <= TOL * scale, "norm {} → {}", nrm(&vt), nrm(&w));
        prop_assert!(dotp(&w, &y).abs() / r <= TOL * scale, "not tangent at y: {}", dotp(&w, &y) / r);
        // Transporting back returns the original tangent vector.
        let back = parallel_transport(&y, &x, &w, r).unwrap();
        prop_assert!(dist(&back, &vt) <= TOL * scale);
    }

    #[test]
    fn triangle_inequality((x, y, z, r, _f) in case()) {
        prop_assume!(nrm(&x) > 1e-3 && nrm(&y) > 1e-3 && nrm(&z) > 1e-3);
        let (x, y, z) = (on_sphere(&x, r), on_sphere(&y, r), on_sphere(&z, r));
        let (dxy, dyz, dxz) = (
            geodesic_distance(&x, &y, r).unwrap(),
            geodesic_distance(&y, &z, r).unwrap(),
            geodesic_distance(&x, &z, r).unwrap(),
        );
        prop_assert!(dxz <= dxy + dyz + TOL * r);
        prop_assert!(dxz >= 0.0 && dxz <= PI * r * (1.0 + TOL));
        // Symmetry and the chord identity ‖x − y‖ = 2r sin(d/2r).
        prop_assert!((geodesic_distance(&y, &x, r).unwrap() - dxy).abs() <= TOL * r);
        let chord = chordal_distance(&x, &y).unwrap();
        prop_assert!((chord - 2.0 * r * (dxy / (2.0 * r)).sin()).abs() <= TOL * r);
    }

    #[test]
    fn orthogonal_points_are_a_quarter_circle_apart((x, z, _w, r, _f) in case()) {
        prop_assume!(nrm(&x) > 1e-3);
        let x = on_sphere(&x, r);
        let t = tangent_project(&x, &z, r).unwrap();
        prop_assume!(nrm(&t) > 1e-3);
        let y = on_sphere(&t, r);
        let d = geodesic_distance(&x, &y, r).unwrap();
        prop_assert!((d - r * PI / 2.0).abs() <= TOL * r, "d = {} vs rπ/2 = {}", d, r * PI / 2.0);
    }
}

#[test]
fn quarter_circle_and_half_circle_exact() {
    for &r in &[0.1, 1.0, 7.5, 100.0] {
        let x = [r, 0.0, 0.0];
        let y = [0.0, r, 0.0];
        let d = geodesic_distance(&x, &y, r).unwrap();
        assert!((d - r * PI / 2.0).abs() <= 4.0 * f64::EPSILON * r, "{d}");
        // Antipodal points: distance πr exactly (the atan2 form is exact there).
        let d = geodesic_distance(&x, &[-r, 0.0, 0.0], r).unwrap();
        assert!((d - r * PI).abs() <= 4.0 * f64::EPSILON * r, "{d}");
        // log along the quarter circle: direction e2, length rπ/2.
        let l = log_map(&x, &y, r).unwrap();
        assert!(l[0].abs() < 1e-15 * r && (l[1] - r * PI / 2.0).abs() < 1e-14 * r && l[2] == 0.0);
        // exp of a half-turn lands on the antipode.
        let e = exp_map(&x, &[0.0, 0.0, PI * r], r).unwrap();
        assert!(dist(&e, &[-r, 0.0, 0.0]) < 1e-14 * r, "{e:?}");
    }
}

#[test]
fn antipodal_log_and_transport_are_errors() {
    let x = [0.6, 0.8, 0.0];
    let y = [-0.6, -0.8, 0.0];
    assert!(matches!(
        log_map(&x, &y, 1.0),
        Err(SphereError::Antipodal { .. })
    ));
    assert!(matches!(
        parallel_transport(&x, &y, &[0.0, 0.0, 1.0], 1.0),
        Err(SphereError::Antipodal { .. })
    ));
    // Just off the antipode the log is defined and its length is the distance ≈ π.
    let y2 = on_sphere(&[-0.6, -0.8, 1e-6], 1.0);
    let l = log_map(&x, &y2, 1.0).unwrap();
    assert!((nrm(&l) - geodesic_distance(&x, &y2, 1.0).unwrap()).abs() < 1e-12);
    assert!(dist(&exp_map(&x, &l, 1.0).unwrap(), &y2) < 1e-12);
    // log_x(x) = 0 and transport along a zero geodesic is the identity.
    assert_eq!(log_map(&x, &x, 1.0).unwrap(), vec![0.0; 3]);
    assert_eq!(
        parallel_transport(&x, &x, &[0.0, 0.0, 2.0], 1.0).unwrap(),
        vec![0.0, 0.0, 2.0]
    );
}

#[test]
fn bad_inputs_are_typed_errors() {
    assert!(matches!(
        geodesic_distance(&[1.0, 0.0], &[1.0, 0.0, 0.0], 1.0),
        Err(SphereError::DimensionMismatch {
            left: 2,
            right: 3,
            ..
        })
    ));
    assert!(matches!(
        exp_map(&[1.0, 0.0], &[0.0, 1.0], 0.0),
        Err(SphereError::InvalidParameter { .. })
    ));
    assert!(matches!(
        log_map(&[0.0, 0.0], &[0.0, 1.0], 1.0),
        Err(SphereError::DegeneratePoint { index: 0, .. })
    ));
    assert!(matches!(
        chordal_distance(&[], &[]),
        Err(SphereError::Empty { .. })
    ));
    assert!(matches!(
        karcher_mean(&[], 1.0, 1e-9, 10),
        Err(SphereError::Empty { .. })
    ));
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    assert!(matches!(
        sample_von_mises_fisher(&[1.0, 1.0], 1.0, &mut rng),
        Err(SphereError::NotUnitVector { .. })
    ));
    assert!(matches!(
        sample_von_mises_fisher(&[1.0, 0.0], -1.0, &mut rng),
        Err(SphereError::InvalidParameter { .. })
    ));
}

#[test]
fn karcher_mean_of_symmetric_points_is_the_pole() {
    // Four points symmetric about e0: the Fréchet mean is r·e0 by symmetry.
    let r = 3.0;
    let a = 0.7;
    let pts: Vec<Vec<f64>> = [[1.0, a, 0.0], [1.0, -a, 0.0], [1.0, 0.0, a], [1.0, 0.0, -a]]
        .iter()
        .map(|p| on_sphere(p, r))
        .collect();
    let rep = karcher_mean(&pts, r, 1e-13, 100).unwrap();
    assert!(rep.converged && rep.step_norm < 1e-13);
    assert!(dist(&rep.mean, &[r, 0.0, 0.0]) < 1e-12, "{:?}", rep.mean);
}

#[test]
fn karcher_mean_is_stationary_and_differs_from_euclidean() {
    // Asymmetric cluster: at the Karcher mean the mean of the logs vanishes (first-order
    // optimality), which the normalised Euclidean mean does not satisfy.
    let r = 2.0;
    let pts: Vec<Vec<f64>> = [
        [1.0, 0.9, 0.1],
        [1.0, -0.2, 0.4],
        [0.3, 0.1, 1.0],
        [1.0, 0.0, 0.0],
    ]
    .iter()
    .map(|p| on_sphere(p, r))
    .collect();
    let rep = karcher_mean(&pts, r, 1e-12, 200).unwrap();
    assert!(rep.converged, "{rep:?}");
    assert!((nrm(&rep.mean) - r).abs() < 1e-12);
    let grad = |m: &[f64]| {
        let mut g = [0.0; 3];
        for p in &pts {
            for (gi, li) in g.iter_mut().zip(log_map(m, p, r).unwrap()) {
                *gi += li / 4.0;
            }
        }
        nrm(&g)
    };
    assert!(grad(&rep.mean) < 1e-11);
    let mut euc = vec![0.0; 3];
    pts.iter()
        .for_each(|p| euc.iter_mut().zip(p).for_each(|(e, v)| *e += v));
    assert!(grad(&on_sphere(&euc, r)) > 1e-3);
    // An iteration cap that is too small is reported, not hidden.
    let short = karcher_mean(&pts, r, 1e-12, 1).unwrap();
    assert!(!short.converged && short.iterations == 1 && short.step_norm > 1e-12);
}

/// I_ν(x) by its power series Σ_k (x/2)^(2k+ν)/(k! Γ(k+ν+1)) for integer ν (independent of the
/// continued fraction under test).
fn bessel_i_series(nu: u32, x: f64) -> f64 {
    let mut term = (x / 2.0).powi(nu as i32) / (1..=nu).map(f64::from).product::<f64>();
    let mut sum = term;
    for k in 0..2000 {
        let k = k as f64;
        term *= (x / 2.0) * (x / 2.0) / ((k + 1.0) * (k + 1.0 + nu as f64));
        sum += term;
        if term < sum * 1e-18 {
            break;
        }
    }
    sum
}

#[test]
fn bessel_ratio_matches_closed_forms_and_series() {
    for &x in &[1e-3, 0.5, 1.0, 10.0, 100.0, 700.0] {
        // ν = 1/2: I_(1/2)/I_(−1/2) = tanh x; ν = 3/2 (n = 3): coth x − 1/x.
        let r = bessel_ratio(0.5, x).unwrap();
        assert!((r - x.tanh()).abs() <= 1e-14 * x.tanh(), "x={x}: {r}");
        let a3 = 1.0 / x.tanh() - 1.0 / x;
        let r = vmf_mean_resultant_length(3, x).unwrap();
        // coth x − 1/x itself cancels for small x (≈ x/3): allow its own rounding error.
        let tol = if x < 0.1 { 1e-9 } else { 1e-14 };
        assert!((r - a3).abs() <= tol * a3, "x={x}: {r} vs {a3}");
    }
    for &(nu, x) in &[
        (1, 1.0),
        (1, 10.0),
        (8, 1.0),
        (8, 10.0),
        (32, 10.0),
        (32, 100.0),
        (31, 30.0),
    ] {
        let want = bessel_i_series(nu, x) / bessel_i_series(nu - 1, x);
        let got = bessel_ratio(nu as f64, x).unwrap();
        assert!(
            (got - want).abs() <= 1e-13 * want,
            "ν={nu} x={x}: {got} vs {want}"
        );
    }
    // A tabulated value: I_1(1)/I_0(1) = 0.565159103992485 / 1.266065877752008.
    let tab = 0.565_159_103_992_485 / 1.266_065_877_752_008;
    assert!((bessel_ratio(1.0, 1.0).unwrap() - tab).abs() < 1e-14);
    assert_eq!(bessel_ratio(2.0, 0.0).unwrap(), 0.0);
}

/// Mean and standard error (sample std/√m) of a sample.
fn mean_se(w: &[f64]) -> (f64, f64) {
    let m = w.len() as f64;
    let mean = w.iter().sum::<f64>() / m;
    let var = w.iter().map(|a| (a - mean) * (a - mean)).sum::<f64>() / (m - 1.0);
    (mean, (var / m).sqrt())
}

#[test]
fn von_mises_fisher_mean_resultant_length() {
    // E[μ·x] = A_n(κ) = I_(n/2)(κ)/I_(n/2−1)(κ). The sample mean of w = μ·x over m independent draws
    // has standard error s/√m (s the sample standard deviation of w); by the CLT the mean lies within
    // 3 SE of A_n(κ) with probability 0.997, for a fixed seed deterministically.
    let m = 4000;
    let mut rng = ChaCha8Rng::seed_from_u64(2024);
    for &n in &[3usize, 16, 64] {
        // μ: a generic unit vector, not a basis vector.
        let mu = on_sphere(
            &(0..n).map(|i| 1.0 + i as f64 * 0.1).collect::<Vec<_>>(),
            1.0,
        );
        for &kappa in &[1.0, 10.0, 100.0] {
            let w: Vec<f64> = (0..m)
                .map(|_| {
                    let x = sample_von_mises_fisher(&mu, kappa, &mut rng).unwrap();
                    assert!((nrm(&x) - 1.0).abs() < 1e-12);
                    dotp(&mu, &x)
                })
                .collect();
            let (mean, se) = mean_se(&w);
            let a = vmf_mean_resultant_length(n, kappa).unwrap();
            assert!(
                (mean - a).abs() <= 3.0 * se,
                "n={n} κ={kappa}: mean {mean} vs A_n(κ) {a}, 3SE = {}",
                3.0 * se
            );
        }
    }
}

#[test]
fn uniform_samples_have_zero_mean_projection_and_second_moment_one_over_n() {
    // For x uniform on S^(n−1)(r): E[μ·x̂] = 0 and E[(μ·x̂)²] = 1/n. Each sample mean lies within 3 SE
    // (sample std/√m) of its expectation with probability 0.997 (CLT).
    let m = 4000;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for &n in &[3usize, 16, 64] {
        let r = 2.5;
        let mu = on_sphere(
            &(0..n).map(|i| (i as f64).sin() + 0.5).collect::<Vec<_>>(),
            1.0,
        );
        let w: Vec<f64> = (0..m)
            .map(|_| {
                let x = sample_uniform(n, r, &mut rng).unwrap();
                assert!((nrm(&x) - r).abs() < 1e-12 * r);
                dotp(&mu, &x) / r
            })
            .collect();
        let (mean, se) = mean_se(&w);
        assert!(
            mean.abs() <= 3.0 * se,
            "n={n}: mean {mean}, 3SE {}",
            3.0 * se
        );
        let w2: Vec<f64> = w.iter().map(|a| a * a).collect();
        let (mean2, se2) = mean_se(&w2);
        let want = 1.0 / n as f64;
        assert!(
            (mean2 - want).abs() <= 3.0 * se2,
            "n={n}: E w² {mean2} vs {want}"
        );
    }
}

#[test]
fn vmf_with_zero_concentration_is_uniform_and_large_kappa_concentrates() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mu = [0.0, 0.0, 1.0, 0.0];
    let w: Vec<f64> = (0..4000)
        .map(|_| dotp(&mu, &sample_von_mises_fisher(&mu, 0.0, &mut rng).unwrap()))
        .collect();
    let (mean, se) = mean_se(&w);
    assert!(mean.abs() <= 3.0 * se);
    // κ = 1e4, n = 4: 1 − A_n(κ) ≈ (n−1)/(2κ) = 1.5e-4; every sample is within a few times that.
    let x = sample_von_mises_fisher(&mu, 1e4, &mut rng).unwrap();
    assert!(1.0 - dotp(&mu, &x) < 5e-3);
}
