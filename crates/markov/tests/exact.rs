//! Exact cases of MATH.md §2 and dense references.
#![allow(clippy::needless_range_loop)]

use bmt_markov::{
    causal_mask, AttentionKernels, KernelView, MarkovError, MetricsOptions, SinkhornOptions,
    StationaryMethod, DEFAULT_ROW_TOL,
};
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn single(p: Vec<f64>, t: usize) -> AttentionKernels {
    AttentionKernels::from_host(1, 1, t, p, 1e-12).expect("valid kernel")
}

fn power() -> StationaryMethod {
    StationaryMethod::Power {
        tol: 1e-14,
        max_iter: 100_000,
    }
}

#[test]
fn equal_scores_give_uniform_kernel_and_one_step_rank_collapse() {
    let (b, h, t) = (2, 3, 7);
    let scores = Tensor::full(0.37f32, (b, h, t, t), &Device::Cpu).unwrap();
    let k = AttentionKernels::from_scores(&scores, None).unwrap();
    for &v in k.as_slice() {
        assert!((v - 1.0 / t as f64).abs() < 1e-16, "entry {v}");
    }
    for m in k.metrics(&MetricsOptions::default()).unwrap() {
        // Eigenvalues of 11ᵀ/T: 1 and 0 (T − 1 times); QR gives the zeros to ~1e-16.
        assert!(m.lambda2_abs < 1e-12, "|λ2| = {}", m.lambda2_abs);
        assert!(m.dobrushin < 1e-15);
        assert!((m.row_entropy_mean - (t as f64).ln()).abs() < 1e-14);
        assert!((m.effective_neighbours_mean - t as f64).abs() < 1e-12);
        assert!((m.pi_entropy - (t as f64).ln()).abs() < 1e-14);
        assert!(m.reversibility_defect < 1e-14);
        assert!(m.doubly_stochastic_deviation < 1e-15);
        assert!(m.pi_residual < 1e-15);
        // t_mix bound with gap 1: ln(1/(ε/T)) = ln(4T).
        assert!((m.mixing_time_bound - (4.0 * t as f64).ln()).abs() < 1e-10);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let x: Vec<f64> = (0..t * 5).map(|_| rng.random_range(-3.0..3.0)).collect();
    let x = Tensor::from_vec(x, (t, 5), &Device::Cpu).unwrap();
    let rc = k.rank_collapse(&x, 3).unwrap();
    for bb in 0..b {
        for hh in 0..h {
            for step in 1..=3 {
                assert!(rc.ratio(bb, hh, step).unwrap() < 1e-14);
            }
        }
    }
    assert!(rc.ratio(0, 0, 0).is_none() && rc.ratio(0, h, 1).is_none());
}

#[test]
fn two_state_chain_matches_closed_forms() {
    // Includes λ2 < 0 (a + b > 1), λ2 = 0 (a + b = 1), and an absorbing state (b = 0).
    for &(a, b) in &[
        (0.1, 0.3),
        (0.5, 0.5),
        (0.9, 0.8),
        (0.99, 0.97),
        (0.02, 0.01),
        (0.4, 0.0),
    ] {
        let p = vec![1.0 - a, a, b, 1.0 - b];
        let k = single(p.clone(), 2);
        let view = k.matrix(0, 0).unwrap();
        let lambda2 = 1.0 - a - b;
        let ev = view.eigenvalues().unwrap();
        assert!((ev[0].0 - 1.0).abs() < 1e-14 && ev[0].1 == 0.0);
        assert!((ev[1].0 - lambda2).abs() < 1e-14, "a={a} b={b}: {:?}", ev);
        for method in [StationaryMethod::Direct, power()] {
            let st = view.stationary(method).unwrap();
            let exact = [b / (a + b), a / (a + b)];
            for (x, y) in st.pi.iter().zip(exact) {
                assert!((x - y).abs() < 1e-12, "a={a} b={b} {method:?}: {:?}", st.pi);
            }
        }
        let m = &k.metrics(&MetricsOptions::default()).unwrap()[0];
        assert!((m.lambda2_abs - lambda2.abs()).abs() < 1e-14);
        assert!((m.spectral_gap - (1.0 - lambda2.abs())).abs() < 1e-14);
        // For two states δ(P) = ½(|1−a−b| + |a−(1−b)|) = |1 − a − b| = |λ2|.
        assert!((m.dobrushin - lambda2.abs()).abs() < 1e-14);
        // Every two-state chain is reversible: π0 a = π1 b.
        assert!(m.reversibility_defect < 1e-14);
        let h = |x: f64| if x > 0.0 { -x * x.ln() } else { 0.0 };
        let (h0, h1) = (h(1.0 - a) + h(a), h(b) + h(1.0 - b));
        let (p0, p1) = (b / (a + b), a / (a + b));
        assert!((m.entropy_rate - (p0 * h0 + p1 * h1)).abs() < 1e-14);
        assert!((m.row_entropy_min - h0.min(h1)).abs() < 1e-14);
        // Column sums (1 − a + b, a + 1 − b): ‖Pᵀ1 − 1‖₂/√2 = |b − a|.
        assert!((m.doubly_stochastic_deviation - (b - a).abs()).abs() < 1e-14);
        let pmin = p0.min(p1);
        let bound = if pmin > 0.0 {
            (1.0 / (0.25 * pmin)).ln() / (1.0 - lambda2.abs())
        } else {
            f64::INFINITY
        };
        assert_eq!(m.mixing_time_bound.is_infinite(), bound.is_infinite());
        if bound.is_finite() {
            assert!((m.mixing_time_bound - bound).abs() < 1e-10 * bound);
        }
    }
}

#[test]
fn near_permutation_has_zero_entropy_and_unit_lambda2() {
    let t = 6;
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    // Huge scores on the identity and on a 6-cycle, ±1 noise elsewhere.
    for shift in [0usize, 1] {
        let s: Vec<f32> = (0..t * t)
            .map(|idx| {
                let (i, j) = (idx / t, idx % t);
                if j == (i + shift) % t {
                    60.0
                } else {
                    rng.random_range(-1.0..1.0)
                }
            })
            .collect();
        let k = AttentionKernels::from_scores(
            &Tensor::from_vec(s, (1, 1, t, t), &Device::Cpu).unwrap(),
            None,
        )
        .unwrap();
        let m = &k.metrics(&MetricsOptions::default()).unwrap()[0];
        // Off-target mass per row ≤ (T−1) e^{−59} ≈ 1e-25; its entropy contribution ≈ 59·1e-25.
        assert!(m.row_entropy_max < 1e-20, "entropy {}", m.row_entropy_max);
        assert!((m.effective_neighbours_mean - 1.0).abs() < 1e-20);
        assert!(
            (1.0 - m.lambda2_abs).abs() < 1e-12,
            "|λ2| = {}",
            m.lambda2_abs
        );
        assert!((m.dobrushin - 1.0).abs() < 1e-12);
        assert!(m.pi_residual < 1e-15);
        if shift == 1 {
            // A 6-cycle: eigenvalues are the 6th roots of unity, π uniform.
            assert!((m.pi_entropy - (t as f64).ln()).abs() < 1e-12);
        }
    }
}

#[test]
fn causal_mask_gives_absorbing_token_zero() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (b, h, t, d) = (2, 2, 9, 4);
    let qv: Vec<f64> = (0..b * h * t * d)
        .map(|_| rng.random_range(-2.0..2.0))
        .collect();
    let kv: Vec<f64> = (0..b * h * t * d)
        .map(|_| rng.random_range(-2.0..2.0))
        .collect();
    let q = Tensor::from_vec(qv.clone(), (b, h, t, d), &Device::Cpu).unwrap();
    let kk = Tensor::from_vec(kv.clone(), (b, h, t, d), &Device::Cpu).unwrap();
    let k = AttentionKernels::from_qk(&q, &kk, true).unwrap();
    // Same kernels through from_scores with the causal keep-mask and an explicit score tensor.
    let scores = (q.matmul(&kk.t().unwrap()).unwrap() / (d as f64).sqrt()).unwrap();
    let k2 = AttentionKernels::from_scores(&scores, Some(&causal_mask(t, &Device::Cpu).unwrap()))
        .unwrap();
    for (x, y) in k.as_slice().iter().zip(k2.as_slice()) {
        assert!((x - y).abs() < 1e-15);
    }
    for (bb, hh, p) in k.matrices() {
        // Reference softmax from the definition.
        for i in 0..t {
            let row: Vec<f64> = (0..=i)
                .map(|j| {
                    let dot: f64 = (0..d)
                        .map(|c| {
                            let base = (bb * h + hh) * t * d;
                            qv[base + i * d + c] * kv[base + j * d + c]
                        })
                        .sum();
                    (dot / (d as f64).sqrt()).exp()
                })
                .collect();
            let z: f64 = row.iter().sum();
            for j in 0..t {
                let want = if j <= i { row[j] / z } else { 0.0 };
                assert!((p.get(i, j) - want).abs() < 1e-14);
            }
        }
        for method in [StationaryMethod::Direct, power()] {
            let st = p.stationary(method).unwrap();
            assert!((st.pi[0] - 1.0).abs() < 1e-12, "{method:?}: {:?}", st.pi);
            assert!(st.pi[1..].iter().all(|&v| v.abs() < 1e-12));
        }
        assert_eq!(p.closed_classes(), vec![vec![0]]);
        // Lower-triangular: the eigenvalues are the diagonal, so |λ2| = max_{i≥1} P_ii.
        let want = (1..t).map(|i| p.get(i, i)).fold(0.0, f64::max);
        assert!((p.second_eigenvalue_modulus().unwrap() - want).abs() < 1e-12);
    }
    let m = k.metrics(&MetricsOptions::default()).unwrap();
    assert!(m
        .iter()
        .all(|m| m.pi_entropy.abs() < 1e-12 && m.mixing_time_bound.is_infinite()));
    // A causal P lacks total support: Sinkhorn cannot reach a doubly stochastic matrix.
    let sk = k
        .matrix(0, 0)
        .unwrap()
        .sinkhorn(SinkhornOptions {
            tol: 1e-9,
            max_iter: 200,
        })
        .unwrap();
    assert!(!sk.converged && sk.iterations == 200);
}

#[test]
fn circulant_eigenvalues_match_the_dft() {
    // A circulant P with first row c has eigenvalues λ_m = Σ_k c_k ω^{mk}, ω = e^{2πi/T}.
    let t = 7;
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let mut c: Vec<f64> = (0..t).map(|_| rng.random_range(0.0..1.0)).collect();
    let s: f64 = c.iter().sum();
    c.iter_mut().for_each(|v| *v /= s);
    let p: Vec<f64> = (0..t * t)
        .map(|idx| c[(idx % t + t - idx / t) % t])
        .collect();
    let k = single(p, t);
    let view = k.matrix(0, 0).unwrap();
    let mut want: Vec<f64> = (0..t)
        .map(|m| {
            let (mut re, mut im) = (0.0, 0.0);
            for (kk, &ck) in c.iter().enumerate() {
                let ang = 2.0 * std::f64::consts::PI * (m * kk) as f64 / t as f64;
                re += ck * ang.cos();
                im += ck * ang.sin();
            }
            re.hypot(im)
        })
        .collect();
    want.sort_by(|a, b| b.total_cmp(a));
    let got: Vec<f64> = view
        .eigenvalues()
        .unwrap()
        .iter()
        .map(|(r, i)| r.hypot(*i))
        .collect();
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-12, "{got:?} vs {want:?}");
    }
    let m = &k.metrics(&MetricsOptions::default()).unwrap()[0];
    assert!(m.doubly_stochastic_deviation < 1e-15);
    assert!((m.pi_entropy - (t as f64).ln()).abs() < 1e-14);
    // Already doubly stochastic: Sinkhorn stops at once and returns P.
    let sk = view.sinkhorn(SinkhornOptions::default()).unwrap();
    assert!(sk.converged && sk.iterations == 0);
}

#[test]
fn two_closed_classes_weight_by_absorption_from_uniform_start() {
    // {0,1} and {2,3} closed; token 4 transient: to 0 w.p. 0.3, to 2 w.p. 0.5, stays w.p. 0.2.
    #[rustfmt::skip]
    let p = vec![
        0.5, 0.5, 0.0, 0.0, 0.0,
        0.5, 0.5, 0.0, 0.0, 0.0,
        0.0, 0.0, 0.9, 0.1, 0.0,
        0.0, 0.0, 0.3, 0.7, 0.0,
        0.3, 0.0, 0.5, 0.0, 0.2,
    ];
    let k = single(p, 5);
    let view = k.matrix(0, 0).unwrap();
    assert_eq!(view.closed_classes(), vec![vec![0, 1], vec![2, 3]]);
    // Absorbed in {0,1} w.p. 0.3/0.8 from token 4; w_A = 0.4 + 0.2·0.375, w_B = 0.4 + 0.2·0.625;
    // within-class laws (½, ½) and (¾, ¼).
    let want = [0.2375, 0.2375, 0.525 * 0.75, 0.525 * 0.25, 0.0];
    for method in [StationaryMethod::Direct, power()] {
        let st = view.stationary(method).unwrap();
        for (g, w) in st.pi.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{method:?}: {:?}", st.pi);
        }
    }
    assert_eq!(
        view.stationary(StationaryMethod::Direct)
            .unwrap()
            .closed_classes,
        2
    );
    // Two unit eigenvalues: no mixing.
    assert!((view.second_eigenvalue_modulus().unwrap() - 1.0).abs() < 1e-12);
}

#[test]
fn k_step_kernel_and_rank_collapse_match_dense_products() {
    let t = 5;
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let s: Vec<f64> = (0..2 * t * t)
        .map(|_| rng.random_range(-2.0..2.0))
        .collect();
    let k = AttentionKernels::from_scores(
        &Tensor::from_vec(s, (2, 1, t, t), &Device::Cpu).unwrap(),
        None,
    )
    .unwrap();
    let n = 3;
    let xv: Vec<f64> = (0..2 * t * n)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let x = Tensor::from_vec(xv.clone(), (2, t, n), &Device::Cpu).unwrap();
    let rc = k.rank_collapse(&x, 4).unwrap();
    for (b, _, p) in k.matrices() {
        assert_eq!(
            p.power(0),
            (0..t * t)
                .map(|i| f64::from(u8::from(i / t == i % t)))
                .collect::<Vec<_>>()
        );
        let mut naive = p.as_slice().to_vec();
        for step in 1..=4u32 {
            let pk = p.power(step);
            for (a, c) in pk.iter().zip(&naive) {
                assert!((a - c).abs() < 1e-15);
            }
            // res(P^k X) from the dense P^k.
            let xb = &xv[b * t * n..(b + 1) * t * n];
            let y: Vec<f64> = (0..t * n)
                .map(|idx| {
                    (0..t)
                        .map(|l| pk[idx / n * t + l] * xb[l * n + idx % n])
                        .sum()
                })
                .collect();
            let res = |z: &[f64]| {
                let mean: Vec<f64> = (0..n)
                    .map(|c| (0..t).map(|r| z[r * n + c]).sum::<f64>() / t as f64)
                    .collect();
                (0..t * n)
                    .map(|i| (z[i] - mean[i % n]).powi(2))
                    .sum::<f64>()
                    .sqrt()
            };
            let want = res(&y) / res(xb);
            assert!((rc.ratio(b, 0, step as usize).unwrap() - want).abs() < 1e-13);
            naive = (0..t * t)
                .map(|idx| {
                    (0..t)
                        .map(|l| naive[idx / t * t + l] * p.get(l, idx % t))
                        .sum()
                })
                .collect();
        }
        // P^64 has rows ≈ πᵀ: |P^64_ij − π_j| ≤ δ(P)^64 (TV contraction).
        let pi = p.stationary(StationaryMethod::Direct).unwrap().pi;
        let bound = p.dobrushin().powi(64) + 1e-14;
        for (idx, v) in p.power(64).iter().enumerate() {
            assert!((v - pi[idx % t]).abs() <= bound);
        }
    }
}

#[test]
fn head_summaries_are_batch_means() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let (b, h, t) = (3, 2, 6);
    let s: Vec<f64> = (0..b * h * t * t)
        .map(|_| rng.random_range(-3.0..3.0))
        .collect();
    let k = AttentionKernels::from_scores(
        &Tensor::from_vec(s, (b, h, t, t), &Device::Cpu).unwrap(),
        None,
    )
    .unwrap();
    let opts = MetricsOptions::default();
    let m = k.metrics(&opts).unwrap();
    let sum = k.head_summaries(&opts).unwrap();
    assert_eq!(sum.len(), h);
    for hs in &sum {
        let rows: Vec<_> = (0..b).map(|bb| m[bb * h + hs.head]).collect();
        let mean =
            |f: fn(&bmt_markov::KernelMetrics) -> f64| rows.iter().map(f).sum::<f64>() / b as f64;
        assert_eq!(hs.count, b);
        assert!((hs.lambda2_abs - mean(|x| x.lambda2_abs)).abs() < 1e-15);
        assert!((hs.dobrushin - mean(|x| x.dobrushin)).abs() < 1e-15);
        assert!((hs.row_entropy_mean - mean(|x| x.row_entropy_mean)).abs() < 1e-15);
        assert!((hs.pi_entropy - mean(|x| x.pi_entropy)).abs() < 1e-15);
        assert!((hs.reversibility_defect - mean(|x| x.reversibility_defect)).abs() < 1e-15);
        assert!(
            (hs.doubly_stochastic_deviation - mean(|x| x.doubly_stochastic_deviation)).abs()
                < 1e-15
        );
        // The metrics of (b, h) are those of the view taken alone.
        let single = bmt_markov::kernel_metrics(k.matrix(1, hs.head).unwrap(), &opts).unwrap();
        assert_eq!(single, m[h + hs.head]);
    }
}

#[test]
fn f32_probabilities_from_a_device_tensor_are_accepted_and_renormalised() {
    let dev = Device::Cpu;
    let s = Tensor::randn(0f32, 2.0, (2, 3, 40, 40), &dev).unwrap();
    let e = s.exp().unwrap();
    let p = e.broadcast_div(&e.sum_keepdim(3).unwrap()).unwrap();
    let k32 = AttentionKernels::from_probs(&p, DEFAULT_ROW_TOL).unwrap();
    // f32 softmax rows are off by a few ulps of 1 (~1e-7), far below the tolerance.
    assert!(k32.input_worst_row().deviation < 1e-5);
    for row in k32.as_slice().chunks(40) {
        assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-14);
    }
    let k64 = AttentionKernels::from_scores(&s, None).unwrap();
    let (m32, m64) = (
        k32.metrics(&MetricsOptions::default()).unwrap(),
        k64.metrics(&MetricsOptions::default()).unwrap(),
    );
    for (a, b) in m32.iter().zip(&m64) {
        // f32 rounding of P (relative 6e-8) moves the metrics by ~1e-6 at most.
        assert!((a.lambda2_abs - b.lambda2_abs).abs() < 1e-5);
        assert!((a.row_entropy_mean - b.row_entropy_mean).abs() < 1e-5);
    }
}

#[test]
fn invalid_inputs_are_typed_errors() {
    let dev = Device::Cpu;
    let ok = Tensor::full(0.25f32, (1, 1, 4, 4), &dev).unwrap();
    let err = |r: Result<AttentionKernels, MarkovError>| r.expect_err("must fail");
    assert!(matches!(
        err(AttentionKernels::from_probs(
            &Tensor::zeros((4, 4), DType::F32, &dev).unwrap(),
            1e-4
        )),
        MarkovError::Shape { .. }
    ));
    assert!(matches!(
        err(AttentionKernels::from_probs(
            &Tensor::zeros((1, 1, 4, 3), DType::F32, &dev).unwrap(),
            1e-4
        )),
        MarkovError::Shape { .. }
    ));
    assert!(matches!(
        err(AttentionKernels::from_probs(
            &ok.to_dtype(DType::F16).unwrap(),
            1e-4
        )),
        MarkovError::Dtype { .. }
    ));
    assert!(matches!(
        err(AttentionKernels::from_probs(
            &Tensor::ones((1, 1, 1, 1), DType::F32, &dev).unwrap(),
            1e-4
        )),
        MarkovError::TooFewTokens { t: 1 }
    ));
    assert!(matches!(
        err(AttentionKernels::from_probs(&ok, f64::NAN)),
        MarkovError::Parameter { .. }
    ));
    let mut v = vec![0.25; 2 * 3 * 16];
    v[16 + 2 * 4 + 1] = f64::NAN; // (batch 0, head 1, row 2, col 1)
    match err(AttentionKernels::from_host(2, 3, 4, v.clone(), 1e-4)) {
        MarkovError::NonFinite {
            batch: 0,
            head: 1,
            row: 2,
            col: 1,
            ..
        } => {}
        e => panic!("{e}"),
    }
    v[16 + 2 * 4 + 1] = -0.25;
    assert!(matches!(
        err(AttentionKernels::from_host(2, 3, 4, v, 1e-4)),
        MarkovError::Negative {
            batch: 0,
            head: 1,
            row: 2,
            col: 1,
            ..
        }
    ));
    // Worst row is reported, not the first bad one.
    let mut v = vec![0.25; 2 * 3 * 16];
    v[16 + 4] += 1e-3; // (0, 1, 1)
    v[(3 + 2) * 16 + 3 * 4] += 5e-3; // (1, 2, 3)
    match err(AttentionKernels::from_host(2, 3, 4, v, 1e-4)) {
        MarkovError::NotRowStochastic {
            batch: 1,
            head: 2,
            row: 3,
            deviation,
            ..
        } => {
            assert!((deviation - 5e-3).abs() < 1e-15)
        }
        e => panic!("{e}"),
    }
    // Fully masked row; +∞ and NaN scores.
    let mask = Tensor::from_vec(vec![1u8, 1, 0, 0], (2, 2), &dev).unwrap();
    let sc = Tensor::zeros((1, 1, 2, 2), DType::F64, &dev).unwrap();
    assert!(matches!(
        err(AttentionKernels::from_scores(&sc, Some(&mask))),
        MarkovError::EmptyRow { row: 1, .. }
    ));
    let bad_mask = Tensor::ones((3, 3), DType::U8, &dev).unwrap();
    assert!(matches!(
        err(AttentionKernels::from_scores(&sc, Some(&bad_mask))),
        MarkovError::Shape { what: "mask", .. }
    ));
    let inf = Tensor::from_vec(vec![0.0, f64::INFINITY, 0.0, 0.0], (1, 1, 2, 2), &dev).unwrap();
    assert!(matches!(
        err(AttentionKernels::from_scores(&inf, None)),
        MarkovError::NonFinite { row: 0, col: 1, .. }
    ));
    // −∞ is a mask, not an error.
    let neg = Tensor::from_vec(vec![0.0, f64::NEG_INFINITY, 0.0, 0.0], (1, 1, 2, 2), &dev).unwrap();
    let k = AttentionKernels::from_scores(&neg, None).unwrap();
    assert_eq!(k.as_slice(), &[1.0, 0.0, 0.5, 0.5]);
    // Q/K mismatches.
    let q = Tensor::zeros((1, 2, 3, 4), DType::F32, &dev).unwrap();
    let kk = Tensor::zeros((1, 2, 3, 5), DType::F32, &dev).unwrap();
    assert!(matches!(
        err(AttentionKernels::from_qk(&q, &kk, false)),
        MarkovError::Shape { what: "keys", .. }
    ));
    let kk = Tensor::zeros((1, 2, 3, 4), DType::F64, &dev).unwrap();
    assert!(matches!(
        err(AttentionKernels::from_qk(&q, &kk, false)),
        MarkovError::Dtype { .. }
    ));
    // Metrics / rank collapse parameters.
    let k = AttentionKernels::from_probs(&ok, 1e-6).unwrap();
    let opts = MetricsOptions {
        mixing_eps: 1.0,
        ..Default::default()
    };
    assert!(matches!(
        k.metrics(&opts),
        Err(MarkovError::Parameter {
            name: "mixing_eps",
            ..
        })
    ));
    let constant = Tensor::ones((4, 3), DType::F32, &dev).unwrap();
    assert!(matches!(
        k.rank_collapse(&constant, 2),
        Err(MarkovError::ZeroResidual)
    ));
    let wrong = Tensor::ones((5, 3), DType::F32, &dev).unwrap();
    assert!(matches!(
        k.rank_collapse(&wrong, 2),
        Err(MarkovError::Shape { .. })
    ));
    assert!(matches!(
        KernelView::new(&[1.0, 0.0, 0.0], 2, 1e-9),
        Err(MarkovError::Shape { .. })
    ));
    // Messages say what to do.
    let msg = MarkovError::TooFewTokens { t: 1 }.to_string();
    assert!(msg.contains("at least 2 tokens"));
}
