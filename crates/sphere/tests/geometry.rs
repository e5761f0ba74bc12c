//! Batched tensor geometry against the f64 reference, row by row.
//!
//! Tolerances: in f64 the tensor code performs the same arithmetic as the reference up to the order
//! of summation and the polynomial atan (accurate to rounding), so rows agree to a few hundred ulps
//! relative to r: asserted at 1e-12·r. In f32 (unit roundoff 6e-8) a length-n reduction with n ≤ 64
//! carries relative error ≤ 64 × 6e-8 ≈ 4e-6 and a chain of a few such steps ~1e-5; asserted at
//! 1e-4·r, still 1e4 times below an O(1) formula error.

use bmt_sphere::geometry::*;
use bmt_sphere::reference;
use bmt_sphere::SphereError;
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn rows(t: &Tensor) -> Vec<Vec<f64>> {
    let n = *t.dims().last().unwrap();
    let v = t
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    v.chunks(n).map(|c| c.to_vec()).collect()
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

/// Random points on S^(n−1)(r), shape `shape` (last = n), plus random raw vectors, as f64 tensors.
fn points(shape: &[usize], r: f64, rng: &mut ChaCha8Rng) -> Tensor {
    let n = *shape.last().unwrap();
    let count: usize = shape.iter().product::<usize>() / n;
    let mut data = Vec::with_capacity(count * n);
    for _ in 0..count {
        data.extend(reference::sample_uniform(n, r, rng).unwrap());
    }
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

fn raw(shape: &[usize], rng: &mut ChaCha8Rng) -> Tensor {
    let count: usize = shape.iter().product();
    let data: Vec<f64> = (0..count).map(|_| rng.random_range(-1.0..1.0)).collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f64::max)
}

/// Runs every batched operation in `dtype` and compares with the reference on the same
/// (dtype-rounded) inputs.
fn check_against_reference(dtype: DType, tol: f64) {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for &(shape, r) in &[
        (&[4usize, 5, 3][..], 0.3),
        (&[2, 3, 64][..], 8.0),
        (&[7, 16][..], 100.0),
    ] {
        let x = points(shape, r, &mut rng).to_dtype(dtype).unwrap();
        let y = points(shape, r, &mut rng).to_dtype(dtype).unwrap();
        let v = (raw(shape, &mut rng) * r).unwrap().to_dtype(dtype).unwrap();
        let (xr, yr, vr) = (rows(&x), rows(&y), rows(&v));

        let d = flat(&geodesic_distance(&x, &y, r).unwrap());
        assert_eq!(
            geodesic_distance(&x, &y, r).unwrap().dims(),
            &shape[..shape.len() - 1]
        );
        let c = flat(&chordal_distance(&x, &y).unwrap());
        for i in 0..xr.len() {
            let want = reference::geodesic_distance(&xr[i], &yr[i], r).unwrap();
            assert!(
                (d[i] - want).abs() <= tol * r,
                "{dtype:?} d row {i}: {} vs {want}",
                d[i]
            );
            let want = reference::chordal_distance(&xr[i], &yr[i]).unwrap();
            assert!((c[i] - want).abs() <= tol * r);
        }

        let check = |name: &str, got: &Tensor, want: Vec<Vec<f64>>| {
            let err = max_abs_diff(&rows(got), &want);
            assert!(
                err <= tol * r,
                "{dtype:?} {name} shape {shape:?}: max error {err}"
            );
        };
        let m = xr.len();
        check(
            "tangent_project",
            &tangent_project(&x, &v, r).unwrap(),
            (0..m)
                .map(|i| reference::tangent_project(&xr[i], &vr[i], r).unwrap())
                .collect(),
        );
        check(
            "exp_map",
            &exp_map(&x, &v, r).unwrap(),
            (0..m)
                .map(|i| reference::exp_map(&xr[i], &vr[i], r).unwrap())
                .collect(),
        );
        check(
            "log_map",
            &log_map(&x, &y, r).unwrap(),
            (0..m)
                .map(|i| reference::log_map(&xr[i], &yr[i], r).unwrap())
                .collect(),
        );
        check(
            "parallel_transport",
            &parallel_transport(&x, &y, &v, r).unwrap(),
            (0..m)
                .map(|i| reference::parallel_transport(&xr[i], &yr[i], &vr[i], r).unwrap())
                .collect(),
        );
    }
}

#[test]
fn batched_ops_match_reference_f64() {
    check_against_reference(DType::F64, 1e-12);
}

#[test]
fn batched_ops_match_reference_f32() {
    check_against_reference(DType::F32, 1e-4);
}

#[test]
fn distance_is_accurate_near_zero_and_pi() {
    // The atan2 form keeps full relative accuracy for tiny angles and near π (acos would lose
    // half the digits): x and y separated by exactly δ along a great circle.
    for &delta in &[1e-9, 1e-4, 1.0, std::f64::consts::PI - 1e-7] {
        let x = Tensor::new(&[[1.0f64, 0.0, 0.0]], &Device::Cpu).unwrap();
        let y = Tensor::new(&[[delta.cos(), delta.sin(), 0.0]], &Device::Cpu).unwrap();
        let d = flat(&geodesic_distance(&x, &y, 2.0).unwrap())[0];
        assert!(
            (d - 2.0 * delta).abs() <= 1e-14 * 2.0 * delta.max(1.0),
            "δ={delta}: {d}"
        );
    }
}

#[test]
fn leading_dimensions_broadcast() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let r = 1.5;
    let x = points(&[6, 8], r, &mut rng); // (T, n)
    let y = points(&[3, 6, 8], r, &mut rng); // (B, T, n)
    let d = geodesic_distance(&x, &y, r).unwrap();
    assert_eq!(d.dims(), &[3, 6]);
    let xb = x.unsqueeze(0).unwrap().repeat((3, 1, 1)).unwrap();
    let want = geodesic_distance(&xb, &y, r).unwrap();
    assert_eq!(flat(&d), flat(&want));
    let l = log_map(&x, &y, r).unwrap();
    assert_eq!(l.dims(), &[3, 6, 8]);
    assert_eq!(flat(&l), flat(&log_map(&xb, &y, r).unwrap()));
    // Incompatible batch dimensions are a typed error.
    let z = points(&[4, 8], r, &mut rng);
    assert!(matches!(
        geodesic_distance(&x, &z, r),
        Err(SphereError::ShapeMismatch { .. })
    ));
}

#[test]
fn antipodal_log_names_the_row() {
    // Rows 0, 1, 3 are fine; row 2 has y = −x.
    let x = Tensor::new(
        &[
            [1.0f32, 0.0, 0.0],
            [0.0, 1.0, 0.0],
            [0.6, 0.8, 0.0],
            [0.0, 0.0, 1.0],
        ],
        &Device::Cpu,
    )
    .unwrap();
    let y = Tensor::new(
        &[
            [0.0f32, 1.0, 0.0],
            [0.0, 0.0, 1.0],
            [-0.6, -0.8, 0.0],
            [1.0, 0.0, 0.0],
        ],
        &Device::Cpu,
    )
    .unwrap();
    match log_map(&x, &y, 1.0) {
        Err(SphereError::Antipodal { row, .. }) => assert_eq!(row, 2),
        other => panic!("expected an antipodal error, got {other:?}"),
    }
    let v = x.zeros_like().unwrap();
    assert!(matches!(
        parallel_transport(&x, &y, &v, 1.0),
        Err(SphereError::Antipodal { row: 2, .. })
    ));
    // In f64 through a broadcast: x (4, 3) against (2, 4, 3), the antipodal row is 1·4 + 2 = 6.
    let x64 = x.to_dtype(DType::F64).unwrap();
    let far = Tensor::new(
        &[
            [0.0f64, 1.0, 0.0],
            [0.0, 0.0, 1.0],
            [0.0, 0.0, 1.0],
            [1.0, 0.0, 0.0],
        ],
        &Device::Cpu,
    )
    .unwrap();
    let both = Tensor::stack(&[&far, &y.to_dtype(DType::F64).unwrap()], 0).unwrap();
    assert!(matches!(
        log_map(&x64, &both, 1.0),
        Err(SphereError::Antipodal { row: 6, .. })
    ));
}

#[test]
fn bad_tensors_are_typed_errors() {
    let x = Tensor::new(&[[1.0f64, 0.0, 0.0], [0.0, 0.0, 0.0]], &Device::Cpu).unwrap();
    let y = Tensor::new(&[[0.0f64, 1.0, 0.0], [0.0, 1.0, 0.0]], &Device::Cpu).unwrap();
    assert!(matches!(
        geodesic_distance(&x, &y, 1.0),
        Err(SphereError::DegeneratePoint { index: 1, .. })
    ));
    let y2 = Tensor::new(&[[0.0f64, 1.0]], &Device::Cpu).unwrap();
    assert!(matches!(
        exp_map(&y, &y2, 1.0),
        Err(SphereError::DimensionMismatch {
            left: 3,
            right: 2,
            ..
        })
    ));
    let h = y.to_dtype(DType::F16).unwrap();
    assert!(matches!(
        log_map(&h, &h, 1.0),
        Err(SphereError::UnsupportedDType { .. })
    ));
    assert!(matches!(
        log_map(&y, &y.to_dtype(DType::F32).unwrap(), 1.0),
        Err(SphereError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        exp_map(&y, &y, f64::NAN),
        Err(SphereError::InvalidParameter { .. })
    ));
}

#[test]
fn karcher_mean_matches_reference_per_set() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let (sets, m, n, r) = (3, 7, 16, 4.0);
    // Each set: a vMF cloud around its own pole (κ = 20), well inside a hemisphere.
    let mut data: Vec<f64> = Vec::new();
    let mut ref_sets = Vec::new();
    for _ in 0..sets {
        let pole = reference::sample_uniform(n, 1.0, &mut rng).unwrap();
        let mut set = Vec::new();
        for _ in 0..m {
            let p: Vec<f64> = reference::sample_von_mises_fisher(&pole, 20.0, &mut rng)
                .unwrap()
                .iter()
                .map(|v| v * r)
                .collect();
            data.extend(&p);
            set.push(p);
        }
        ref_sets.push(set);
    }
    let pts = Tensor::from_vec(data, (sets, m, n), &Device::Cpu).unwrap();
    let rep = karcher_mean(&pts, r, 1e-12, 100).unwrap();
    assert!(rep.converged && rep.step_norm < 1e-12, "{rep:?}");
    assert_eq!(rep.mean.dims(), &[sets, n]);
    let got = rows(&rep.mean);
    for (s, set) in ref_sets.iter().enumerate() {
        let want = reference::karcher_mean(set, r, 1e-12, 100).unwrap();
        let err = got[s]
            .iter()
            .zip(&want.mean)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-10 * r, "set {s}: {err}");
    }
    // f32: same means to f32 accuracy, with a tolerance f32 can reach.
    let rep32 = karcher_mean(&pts.to_dtype(DType::F32).unwrap(), r, 1e-4, 100).unwrap();
    assert!(rep32.converged);
    assert!(max_abs_diff(&rows(&rep32.mean), &got) < 1e-4 * r);
    // Iteration cap reported honestly.
    let capped = karcher_mean(&pts, r, 1e-14, 1).unwrap();
    assert!(!capped.converged && capped.iterations == 1);
}

#[test]
fn samplers_fill_tensors_on_the_sphere_reproducibly() {
    let mut a = ChaCha8Rng::seed_from_u64(1);
    let mut b = ChaCha8Rng::seed_from_u64(1);
    let t = sample_uniform(10, 5, 3.0, DType::F32, &Device::Cpu, &mut a).unwrap();
    assert_eq!(t.dims(), &[10, 5]);
    assert_eq!(t.dtype(), DType::F32);
    for row in rows(&t) {
        let nr = row.iter().map(|v| v * v).sum::<f64>().sqrt();
        assert!((nr - 3.0).abs() < 1e-5);
    }
    // Same seed, same samples as the reference sampler.
    let first = reference::sample_uniform(5, 3.0, &mut b).unwrap();
    assert!(max_abs_diff(&rows(&t)[..1], &[first]) < 1e-6);

    let mu = [0.0, 0.6, 0.8];
    let v = sample_von_mises_fisher(&mu, 50.0, 2000, DType::F64, &Device::Cpu, &mut a).unwrap();
    assert_eq!(v.dims(), &[2000, 3]);
    // Mean of μ·x within 3 SE (sample std/√m) of A_3(50) = coth 50 − 1/50.
    let w: Vec<f64> = rows(&v).iter().map(|x| x[1] * 0.6 + x[2] * 0.8).collect();
    let mean = w.iter().sum::<f64>() / 2000.0;
    let var = w.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 1999.0;
    let a3 = 1.0 / 50f64.tanh() - 1.0 / 50.0;
    assert!(
        (mean - a3).abs() <= 3.0 * (var / 2000.0).sqrt(),
        "{mean} vs {a3}"
    );
}
