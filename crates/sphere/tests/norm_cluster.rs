//! Normalisation geometry (exact LayerNorm/RMSNorm cases, the ε → 0 limit, the affine ellipsoid)
//! and clustering statistics (hand-counted cases and a dense f64 reference).

use bmt_sphere::cluster::cluster_stats;
use bmt_sphere::norm::*;
use bmt_sphere::SphereError;
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn t64(v: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
}

#[test]
fn layer_norm_of_known_vector_has_predicted_radius() {
    // x = (1, 2, 3, 4): μ = 2.5, σ² = (2.25 + 0.25 + 0.25 + 2.25)/4 = 1.25. With ε = 0.1 the radius is
    // ‖y‖/√n = sqrt(σ²/(σ² + ε)) = sqrt(1.25/1.35), and 1ᵀy = 0.
    let x = t64(&[1.0, 2.0, 3.0, 4.0], &[1, 4]);
    let eps = 0.1;
    let y = layer_norm(&x, eps).unwrap();
    let yv = y.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let s = (1.25f64 + 0.1).sqrt();
    let want = [-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s];
    for (a, b) in yv.iter().zip(&want) {
        assert!((a - b).abs() < 1e-15, "{yv:?}");
    }
    let rep = layer_norm_sphere_check(&x, &y, eps).unwrap();
    let rho = (1.25f64 / 1.35).sqrt();
    assert!((rep.radius_mean - rho).abs() < 1e-12, "{rep:?}");
    assert!((rep.predicted_radius_mean - rho).abs() < 1e-12);
    assert!(rep.max_relative_deviation < 1e-12);
    assert!(rep.max_centring < 1e-12);
    assert_eq!((rep.tokens, rep.n, rep.degenerate_tokens), (1, 4, 0));
    assert_eq!(rep.radius_std, 0.0);
}

#[test]
fn epsilon_to_zero_limit_reaches_the_unit_sphere() {
    // 1 − (1 + ε/σ²)^(−1/2) = ε/(2σ²) + O(ε²): the measured radius approaches 1 at exactly that rate,
    // and at ε = 0 it is 1 to rounding.
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let v: Vec<f64> = (0..3 * 32).map(|_| rng.random_range(-2.0..2.0)).collect();
    let x = t64(&v, &[3, 32]);
    let rep0 = layer_norm_sphere_check(&x, &layer_norm(&x, 0.0).unwrap(), 0.0).unwrap();
    assert!((rep0.radius_max - 1.0).abs() < 1e-14 && (rep0.radius_min - 1.0).abs() < 1e-14);
    // σ² per token from the data itself.
    let var: Vec<f64> = v
        .chunks(32)
        .map(|c| {
            let m = c.iter().sum::<f64>() / 32.0;
            c.iter().map(|a| (a - m) * (a - m)).sum::<f64>() / 32.0
        })
        .collect();
    let max_gap = var.iter().map(|s| 1.0 / (2.0 * s)).fold(0.0, f64::max);
    for &eps in &[1e-2, 1e-4, 1e-6] {
        let rep = layer_norm_sphere_check(&x, &layer_norm(&x, eps).unwrap(), eps).unwrap();
        let gap = 1.0 - rep.radius_min;
        // The largest gap belongs to the smallest σ²: ε/(2σ²_min) up to a relative O(ε/σ²) term.
        assert!(
            (gap / (eps * max_gap) - 1.0).abs() < 2.0 * eps * 2.0 * max_gap,
            "ε={eps}: {gap}"
        );
        assert!(rep.max_relative_deviation < 1e-13);
    }
}

#[test]
fn wrong_radius_is_detected() {
    // A "LayerNorm" with the wrong ε (10× larger than claimed) must show up as a deviation equal to
    // the predicted ratio sqrt((σ²+ε)/(σ²+10ε)) − 1.
    let x = t64(&[1.0, 2.0, 3.0, 4.0], &[1, 4]);
    let rep = layer_norm_sphere_check(&x, &layer_norm(&x, 1.0).unwrap(), 0.1).unwrap();
    let want = 1.0 - (1.35f64 / 2.25).sqrt();
    assert!((rep.max_relative_deviation - want).abs() < 1e-12, "{rep:?}");
    // An un-centred output (RMSNorm fed to the LayerNorm check) shows up as centring.
    let rms = rms_norm(&x, 0.0).unwrap();
    let rep = layer_norm_sphere_check(&x, &rms, 0.0).unwrap();
    // 1ᵀy/√n = (10/sqrt(30/4))/2.
    assert!((rep.max_centring - 10.0 / 7.5f64.sqrt() / 2.0).abs() < 1e-12);
}

#[test]
fn rms_norm_lies_on_full_sphere() {
    // x = (1, 2, 3, 4): m² = 30/4 = 7.5; radius sqrt(7.5/(7.5 + ε)).
    let x = t64(&[1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0, 0.0], &[2, 4]);
    let eps = 0.5;
    let rep = rms_norm_sphere_check(&x, &rms_norm(&x, eps).unwrap(), eps).unwrap();
    // The zero token is degenerate (output 0) and excluded from the deviation.
    assert_eq!(rep.degenerate_tokens, 1);
    assert!(
        (rep.radius_max - (7.5f64 / 8.0).sqrt()).abs() < 1e-12,
        "{rep:?}"
    );
    assert_eq!(rep.radius_min, 0.0);
    assert!(rep.max_relative_deviation < 1e-12);
}

#[test]
fn layer_norm_check_on_random_f32_tokens() {
    let x = Tensor::randn(0f32, 2.0, (4, 9, 48), &Device::Cpu).unwrap();
    let y = layer_norm(&x, 1e-5).unwrap();
    let rep = layer_norm_sphere_check(&x, &y, 1e-5).unwrap();
    assert_eq!((rep.tokens, rep.n), (36, 48));
    // f32: per-token sums over 48 entries have relative error ≤ 48 × 6e-8 ≈ 3e-6.
    assert!(
        rep.max_relative_deviation < 1e-5 && rep.max_centring < 1e-4,
        "{rep:?}"
    );
    assert!((rep.radius_mean - 1.0).abs() < 1e-5);
}

#[test]
fn affine_output_lies_on_its_ellipsoid() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let n = 16;
    let v: Vec<f64> = (0..5 * n).map(|_| rng.random_range(-3.0..3.0)).collect();
    let x = t64(&v, &[5, n]);
    let g: Vec<f64> = (0..n)
        .map(|i| if i % 2 == 0 { 0.5 } else { -2.0 } + i as f64 * 0.1)
        .collect();
    let b: Vec<f64> = (0..n).map(|i| (i as f64).cos()).collect();
    let (gamma, beta) = (t64(&g, &[n]), t64(&b, &[n]));
    let eps = 0.3;
    let y = layer_norm(&x, eps).unwrap();
    let z = y
        .broadcast_mul(&gamma)
        .unwrap()
        .broadcast_add(&beta)
        .unwrap();
    let pred = RadiusPrediction::FromInput {
        input: &x,
        eps,
        kind: NormKind::LayerNorm,
    };
    let rep = affine_ellipsoid_check(&z, &gamma, Some(&beta), pred).unwrap();
    assert!(
        rep.max_relative_residual < 1e-12 && rep.max_centring < 1e-12,
        "{rep:?}"
    );
    // Against the ε → 0 sphere the residual is the shrinkage 1 − sqrt(σ²/(σ² + ε)) > 0.
    let lim = affine_ellipsoid_check(&z, &gamma, Some(&beta), RadiusPrediction::Limit).unwrap();
    assert!((lim.max_abs_residual - (1.0 - lim.scaled_radius_min)).abs() < 1e-12);
    assert!(lim.max_abs_residual > 1e-3);
    // Points pushed 10% outward from the ellipsoid's centre β: relative residual exactly 0.1.
    let z_out = ((z.broadcast_sub(&beta).unwrap() * 1.1).unwrap())
        .broadcast_add(&beta)
        .unwrap();
    let rep = affine_ellipsoid_check(&z_out, &gamma, Some(&beta), pred).unwrap();
    assert!((rep.max_relative_residual - 0.1).abs() < 1e-12, "{rep:?}");
    // Ignoring β (wrong centre) is visible, too.
    let rep = affine_ellipsoid_check(&z, &gamma, None, pred).unwrap();
    assert!(rep.max_relative_residual > 1e-2);
    // A zero γ entry flattens the ellipsoid: refused.
    let mut g0 = g.clone();
    g0[3] = 0.0;
    assert!(matches!(
        affine_ellipsoid_check(&z, &t64(&g0, &[n]), Some(&beta), pred),
        Err(SphereError::InvalidParameter { .. })
    ));
}

#[test]
fn norm_checks_reject_bad_inputs() {
    let x = t64(&[1.0, 2.0, 3.0, 4.0], &[1, 4]);
    let y = t64(&[1.0, 2.0, 3.0], &[1, 3]);
    assert!(matches!(
        layer_norm_sphere_check(&x, &y, 1e-5),
        Err(SphereError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        layer_norm_sphere_check(&x, &x, -1.0),
        Err(SphereError::InvalidParameter { .. })
    ));
    let one = t64(&[1.0, 2.0], &[2, 1]);
    assert!(matches!(
        layer_norm_sphere_check(&one, &one, 1e-5),
        Err(SphereError::Empty { .. })
    ));
}

#[test]
fn cluster_stats_hand_counted() {
    // Sequence: 3 copies of e1, 2 copies of e2 (different radii: only directions matter).
    // Pairs: 3 + 1 with cosine 1, 6 with cosine 0 → mean 0.4, min 0; ε = 0.1 → 2 clusters.
    let s = [
        [1.0, 0.0, 0.0],
        [2.0, 0.0, 0.0],
        [0.5, 0.0, 0.0],
        [0.0, 3.0, 0.0],
        [0.0, 1.0, 0.0],
    ];
    let v: Vec<f64> = s.iter().flatten().copied().collect();
    let x = t64(&v, &[5, 3]);
    let st = cluster_stats(&x, 0.1).unwrap();
    assert_eq!((st.sequences, st.tokens_per_sequence), (1, 5));
    assert!(
        (st.mean_cosine - 0.4).abs() < 1e-15 && st.min_cosine.abs() < 1e-15,
        "{st:?}"
    );
    assert_eq!(
        (st.mean_clusters, st.min_clusters, st.max_clusters),
        (2.0, 2, 2)
    );
    // ε = 1.5: edges where cosine > −0.5, i.e. everywhere → one cluster.
    assert_eq!(cluster_stats(&x, 1.5).unwrap().max_clusters, 1);

    // Batch: second sequence has 5 directions 0.3 rad apart on a circle: consecutive cosines
    // cos 0.3 ≈ 0.955 > 1 − 0.05, non-neighbours cos 0.6 ≈ 0.825 < 0.95, so the chain is one
    // connected component (components, not cliques). With ε = 0.01 every token is alone.
    let c: Vec<f64> = (0..5)
        .flat_map(|k| {
            let a = 0.3 * k as f64;
            [a.cos(), a.sin(), 0.0]
        })
        .collect();
    let both = Tensor::stack(&[&x, &t64(&c, &[5, 3])], 0).unwrap();
    let st = cluster_stats(&both, 0.05).unwrap();
    assert_eq!((st.min_clusters, st.max_clusters), (1, 2));
    assert!((st.mean_clusters - 1.5).abs() < 1e-15);
    // Mean cosine of the chain: Σ_{i<j} cos(0.3 (j − i)) / 10, averaged with the first sequence.
    let chain: f64 = (1..5)
        .map(|d| (5 - d) as f64 * (0.3 * d as f64).cos())
        .sum::<f64>()
        / 10.0;
    assert!(
        (st.mean_cosine - (0.4 + chain) / 2.0).abs() < 1e-14,
        "{st:?}"
    );
    assert_eq!(cluster_stats(&both, 0.01).unwrap().max_clusters, 5);
    // f32 gives the same counts.
    let st32 = cluster_stats(&both.to_dtype(DType::F32).unwrap(), 0.05).unwrap();
    assert_eq!((st32.min_clusters, st32.max_clusters), (1, 2));
}

#[test]
fn cluster_stats_matches_dense_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let (b, t, n) = (3, 20, 6);
    let v: Vec<f64> = (0..b * t * n)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let st = cluster_stats(&t64(&v, &[b, t, n]), 0.3).unwrap();
    let (mut mean, mut min) = (0.0, f64::INFINITY);
    for s in v.chunks(t * n) {
        let u: Vec<Vec<f64>> = s
            .chunks(n)
            .map(|p| {
                let r = p.iter().map(|a| a * a).sum::<f64>().sqrt();
                p.iter().map(|a| a / r).collect()
            })
            .collect();
        let mut sum = 0.0;
        for i in 0..t {
            for j in i + 1..t {
                let c: f64 = u[i].iter().zip(&u[j]).map(|(a, b)| a * b).sum();
                sum += c;
                min = f64::min(min, c);
            }
        }
        mean += sum / (t * (t - 1) / 2) as f64 / b as f64;
    }
    assert!((st.mean_cosine - mean).abs() < 1e-14 && (st.min_cosine - min).abs() < 1e-14);
    assert!(matches!(
        cluster_stats(&t64(&[1.0, 0.0], &[1, 2]), 0.1),
        Err(SphereError::Empty { .. })
    ));
    assert!(matches!(
        cluster_stats(&t64(&[1.0, 0.0], &[2]), 0.1),
        Err(SphereError::Rank { .. })
    ));
}
