//! Invariants on random score matrices (64 cases each).
#![allow(clippy::needless_range_loop)]

use bmt_markov::{
    AttentionKernels, KernelView, MarkovError, MetricsOptions, SinkhornOptions, StationaryMethod,
};
use candle_core::{Device, Tensor};
use faer::{Mat, Side};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Scores uniform in [−scale, scale], softmax in f64.
fn random_kernel(t: usize, scale: f64, seed: u64) -> AttentionKernels {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let s: Vec<f64> = (0..t * t)
        .map(|_| scale * rng.random_range(-1.0..=1.0))
        .collect();
    AttentionKernels::from_scores(
        &Tensor::from_vec(s, (1, 1, t, t), &Device::Cpu).unwrap(),
        None,
    )
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn metrics_invariants(t in 2usize..=32, scale in 0.0f64..=20.0, seed in any::<u64>()) {
        let k = random_kernel(t, scale, seed);
        let p = k.matrix(0, 0).unwrap();
        let st = p.stationary(StationaryMethod::Direct).unwrap();
        prop_assert!(st.pi.iter().all(|&v| v >= 0.0));
        prop_assert!((st.pi.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        prop_assert!(st.residual <= 1e-6, "residual {}", st.residual);
        // Independent check of the residual.
        let mut next = vec![0.0; t];
        for i in 0..t { for j in 0..t { next[j] += st.pi[i] * p.get(i, j); } }
        let r: f64 = next.iter().zip(&st.pi).map(|(a, b)| (a - b).abs()).sum();
        prop_assert!(r <= 1e-6);

        let m = &k.metrics(&MetricsOptions::default()).unwrap()[0];
        let slack = 1e-9;
        prop_assert!(m.lambda2_abs <= m.dobrushin + slack, "|λ2| {} > δ {}", m.lambda2_abs, m.dobrushin);
        prop_assert!(m.dobrushin <= 1.0 + 1e-12 && m.lambda2_abs >= 0.0);
        let log_t = (t as f64).ln();
        for e in [m.row_entropy_min, m.row_entropy_mean, m.row_entropy_max, m.pi_entropy, m.entropy_rate] {
            prop_assert!((-1e-12..=log_t + 1e-12).contains(&e), "entropy {e} outside [0, ln {t}]");
        }
        prop_assert!(m.row_entropy_min <= m.row_entropy_mean + 1e-15 && m.row_entropy_mean <= m.row_entropy_max + 1e-15);
        prop_assert!(m.effective_neighbours_mean >= 1.0 - 1e-12 && m.effective_neighbours_mean <= t as f64 + 1e-9);
        prop_assert!(m.reversibility_defect >= 0.0 && m.reversibility_defect <= 2.0 + 1e-12);
    }

    #[test]
    fn power_iteration_agrees_with_the_direct_solve(t in 2usize..=32, scale in 0.0f64..=3.0, seed in any::<u64>()) {
        let k = random_kernel(t, scale, seed);
        let p = k.matrix(0, 0).unwrap();
        let d = p.stationary(StationaryMethod::Direct).unwrap();
        let w = p.stationary(StationaryMethod::Power { tol: 1e-13, max_iter: 20_000 }).unwrap();
        let delta = p.dobrushin();
        prop_assume!(delta < 0.99);
        prop_assert!(w.converged);
        // v = π_d − π_p sums to 0, so ‖vᵀP‖₁ ≤ δ‖v‖₁ and ‖v‖₁ ≤ (r_d + r_p) / (1 − δ).
        let diff: f64 = d.pi.iter().zip(&w.pi).map(|(a, b)| (a - b).abs()).sum();
        prop_assert!(diff <= (d.residual + w.residual) / (1.0 - delta) + 1e-15, "diff {diff}");
    }

    #[test]
    fn sinkhorn_output_is_doubly_stochastic(t in 2usize..=32, scale in 0.0f64..=20.0, seed in any::<u64>()) {
        let k = random_kernel(t, scale, seed);
        let opts = SinkhornOptions { tol: 1e-8, max_iter: 100_000 };
        let r = k.matrix(0, 0).unwrap().sinkhorn(opts).unwrap();
        let rows: Vec<f64> = r.matrix.chunks(t).map(|row| row.iter().sum()).collect();
        let cols: Vec<f64> = (0..t).map(|j| (0..t).map(|i| r.matrix[i * t + j]).sum()).collect();
        let row_dev = rows.iter().map(|s| (s - 1.0).abs()).fold(0.0, f64::max);
        let col_dev = cols.iter().map(|s| (s - 1.0).abs()).fold(0.0, f64::max);
        prop_assert!((row_dev - r.max_row_deviation).abs() < 1e-15);
        prop_assert!((col_dev - r.max_col_deviation).abs() < 1e-15);
        if scale <= 5.0 {
            // Entries ≥ e^{−10}/T: Sinkhorn converges geometrically well inside the cap.
            prop_assert!(r.converged, "{} sweeps, col dev {}", r.iterations, col_dev);
        }
        if r.converged {
            prop_assert!(row_dev <= opts.tol && col_dev <= opts.tol);
        }
        prop_assert!(r.matrix.iter().all(|&v| v >= 0.0));
    }

    #[test]
    fn row_check_catches_a_perturbed_row(
        t in 2usize..=32, seed in any::<u64>(), log_eps in -5.0f64..-0.5,
    ) {
        let (b, h) = (2, 3);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let s: Vec<f64> = (0..b * h * t * t).map(|_| rng.random_range(-3.0..3.0)).collect();
        let k = AttentionKernels::from_scores(&Tensor::from_vec(s, (b, h, t, t), &Device::Cpu).unwrap(), None).unwrap();
        let mut v = k.as_slice().to_vec();
        let (bb, hh, row, col) = (rng.random_range(0..b), rng.random_range(0..h), rng.random_range(0..t), rng.random_range(0..t));
        let eps = 10f64.powf(log_eps);
        v[((bb * h + hh) * t + row) * t + col] += eps;
        let tol = 1e-6;
        match AttentionKernels::from_host(b, h, t, v, tol) {
            Err(MarkovError::NotRowStochastic { batch, head, row: r, deviation, .. }) => {
                prop_assert_eq!((batch, head, r), (bb, hh, row));
                prop_assert!((deviation - eps).abs() < 1e-12);
            }
            other => prop_assert!(false, "expected NotRowStochastic, got {other:?}"),
        }
    }

    #[test]
    fn lambda2_matches_a_symmetric_solver_on_symmetric_doubly_stochastic(
        t in 2usize..=32, n_perm in 1usize..=4, seed in any::<u64>(),
    ) {
        // P = Σ w_k Q_k with Q_k random involutions (symmetric permutations): exactly symmetric and
        // doubly stochastic, so its eigenvalues are real and faer's self-adjoint solver applies.
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut w: Vec<f64> = (0..n_perm).map(|_| rng.random_range(0.05..1.0)).collect();
        let sw: f64 = w.iter().sum();
        w.iter_mut().for_each(|x| *x /= sw);
        let mut p = vec![0.0; t * t];
        for &wk in &w {
            let mut perm: Vec<usize> = (0..t).collect();
            let mut order: Vec<usize> = (0..t).collect();
            for i in (1..t).rev() { order.swap(i, rng.random_range(0..=i)); }
            for pair in order.chunks(2) {
                if pair.len() == 2 && rng.random_bool(0.7) { perm[pair[0]] = pair[1]; perm[pair[1]] = pair[0]; }
            }
            for i in 0..t { p[i * t + perm[i]] += wk; }
        }
        let view = KernelView::new(&p, t, 1e-12).unwrap();
        let got = view.second_eigenvalue_modulus().unwrap();
        let ev = Mat::<f64>::from_fn(t, t, |i, j| p[i * t + j]).self_adjoint_eigenvalues(Side::Lower).unwrap();
        let mut moduli: Vec<f64> = ev.iter().map(|x| x.abs()).collect();
        moduli.sort_by(|a, b| b.total_cmp(a));
        // Backward-stable solvers: eigenvalue errors ~ T·ε·‖P‖₂ (‖P‖₂ = 1) for the symmetric
        // matrix; the non-symmetric QR path is as accurate here (normal matrix, condition 1).
        prop_assert!((got - moduli[1]).abs() < 1e-10, "{got} vs {}", moduli[1]);
        prop_assert!((moduli[0] - 1.0).abs() < 1e-12);
        let m = bmt_markov::kernel_metrics(view, &MetricsOptions::default()).unwrap();
        prop_assert!(m.doubly_stochastic_deviation < 1e-14);
        prop_assert!(m.reversibility_defect < 1e-12); // symmetric P with uniform π
    }
}
