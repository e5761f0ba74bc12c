//! Every solver against a dense f64 solve of its damped Kronecker system.

use std::collections::HashMap;

use candle_core::{Tensor, Var};
use faer::Mat;
use proptest::prelude::*;

use super::{add_diag, dense_solve, host, kron, max_abs, max_abs_diff, randn, rng, unvec, vec_col};
use crate::{
    conjugate_gradient, kronecker_factors, CgSettings, CurvatureRows, DampingKind, KfacConfig,
    LayerCapture, PreconditionedLayer, Preconditioner, Result, Solver, WeightSharing,
};

const M: usize = 3;
const N_IN: usize = 4;

struct Case {
    layer: PreconditionedLayer,
    capture: LayerCapture,
    grads: HashMap<String, Tensor>,
    grad: Mat<f64>,
    a: Mat<f64>,
    g: Mat<f64>,
}

fn case(seed: u64, rows: usize) -> Result<Case> {
    sized_case(seed, rows, (M, N_IN))
}

/// A layer `m × n` with a bias, a capture of `rows` samples and a gradient, all f64.
fn sized_case(seed: u64, rows: usize, (m, n): (usize, usize)) -> Result<Case> {
    let mut r = rng(seed);
    let weight = Var::from_tensor(&randn(&mut r, &[m, n])?)?;
    let bias = Var::from_tensor(&randn(&mut r, &[m])?)?;
    let capture = LayerCapture {
        name: "l".into(),
        input: randn(&mut r, &[rows, n])?,
        output_grad: (randn(&mut r, &[rows, m])? * 0.3)?,
    };
    let gw = randn(&mut r, &[m, n])?;
    let gb = randn(&mut r, &[m])?;
    let grad = host(&Tensor::cat(&[&gw, &gb.unsqueeze(1)?], 1)?)?;
    let grads = HashMap::from([("l.weight".to_string(), gw), ("l.bias".to_string(), gb)]);
    let (a, g) = kronecker_factors(&capture, WeightSharing::Expand)?;
    Ok(Case {
        layer: PreconditionedLayer {
            name: "l".into(),
            weight,
            bias: Some(bias),
        },
        capture,
        grads,
        grad,
        a: host(&a)?,
        g: host(&g)?,
    })
}

/// The folded preconditioned gradient `[U_W U_b]` of one step.
fn precondition(c: &Case, cfg: KfacConfig) -> Result<(Mat<f64>, crate::KfacStepStats)> {
    let cfg = KfacConfig {
        kl_clip: None,
        k_fac: 1,
        k_inv: 1,
        ..cfg
    };
    let mut p = Preconditioner::new(vec![c.layer.clone()], cfg)?;
    let (out, stats) = p.step(&c.grads, std::slice::from_ref(&c.capture))?;
    let u = Tensor::cat(&[&out["l.weight"], &out["l.bias"].unsqueeze(1)?], 1)?;
    Ok((host(&u.to_dtype(candle_core::DType::F64)?)?, stats))
}

fn pi_shifts(a: &Mat<f64>, g: &Mat<f64>, damping: f64) -> (f64, f64) {
    let tr = |x: &Mat<f64>| (0..x.nrows()).map(|i| x[(i, i)]).sum::<f64>() / x.nrows() as f64;
    let pi = (tr(a) / tr(g)).sqrt();
    (pi * damping.sqrt(), damping.sqrt() / pi)
}

/// The damped system `A ⊗ G + λI` (Tikhonov) or `(A + δ_A I) ⊗ (G + δ_G I)` (factored).
fn dense_system(c: &Case, kind: DampingKind, damping: f64) -> Mat<f64> {
    match kind {
        DampingKind::Tikhonov => add_diag(&kron(&c.a, &c.g), damping),
        DampingKind::Factored => {
            let (da, dg) = pi_shifts(&c.a, &c.g, damping);
            kron(&add_diag(&c.a, da), &add_diag(&c.g, dg))
        }
    }
}

/// Dense `(system)⁻¹ vec ∇W̄` as an `m × (n+1)` matrix.
fn dense_preconditioned(c: &Case, kind: DampingKind, damping: f64) -> Mat<f64> {
    let k = dense_system(c, kind, damping);
    unvec(
        &dense_solve(&k, &vec_col(&c.grad)),
        c.grad.nrows(),
        c.grad.ncols(),
    )
}

/// Dense `(A ⊗ G + λI)⁻¹ vec ∇W̄`.
fn dense_tikhonov(c: &Case, damping: f64) -> Mat<f64> {
    dense_preconditioned(c, DampingKind::Tikhonov, damping)
}

/// Dense `((A + δ_A I) ⊗ (G + δ_G I))⁻¹ vec ∇W̄`.
fn dense_factored(c: &Case, damping: f64) -> Mat<f64> {
    dense_preconditioned(c, DampingKind::Factored, damping)
}

/// The case with every tensor rounded to f32: layers the preconditioner solves on the host.
fn to_f32(c: &Case) -> Result<Case> {
    let f = |t: &Tensor| t.to_dtype(candle_core::DType::F32);
    Ok(Case {
        layer: PreconditionedLayer {
            name: c.layer.name.clone(),
            weight: Var::from_tensor(&f(c.layer.weight.as_tensor())?)?,
            bias: match &c.layer.bias {
                Some(b) => Some(Var::from_tensor(&f(b.as_tensor())?)?),
                None => None,
            },
        },
        capture: LayerCapture {
            name: c.capture.name.clone(),
            input: f(&c.capture.input)?,
            output_grad: f(&c.capture.output_grad)?,
        },
        grads: c
            .grads
            .iter()
            .map(|(k, v)| Ok((k.clone(), f(v)?)))
            .collect::<Result<_>>()?,
        grad: c.grad.clone(),
        a: c.a.clone(),
        g: c.g.clone(),
    })
}

fn rel(x: &Mat<f64>, y: &Mat<f64>) -> f64 {
    max_abs_diff(x, y) / max_abs(y)
}

fn tight(solver: Solver, kind: DampingKind, damping: f64) -> KfacConfig {
    KfacConfig {
        solver,
        damping_kind: kind,
        damping,
        cg_tol: 1e-28,
        cg_max_iters: 200,
        ..Default::default()
    }
}

#[test]
fn eigen_matches_dense_tikhonov_solve() -> Result<()> {
    let c = case(10, 7)?;
    for damping in [1e-3, 1e-1] {
        let (u, _) = precondition(&c, tight(Solver::Eigen, DampingKind::Tikhonov, damping))?;
        let e = rel(&u, &dense_tikhonov(&c, damping));
        assert!(e < 1e-9, "λ={damping}: relative error {e}");
    }
    Ok(())
}

#[test]
fn eigen_and_inverse_match_dense_factored_solve() -> Result<()> {
    let c = case(11, 9)?;
    let want = dense_factored(&c, 1e-2);
    for solver in [
        Solver::Eigen,
        Solver::Inverse,
        Solver::CgFactor,
        Solver::CgMatrixFree,
    ] {
        let (u, _) = precondition(&c, tight(solver, DampingKind::Factored, 1e-2))?;
        let e = rel(&u, &want);
        assert!(e < 1e-8, "{solver:?}: relative error {e}");
    }
    // Factored and Tikhonov damping are different systems: the test can tell them apart.
    assert!(rel(&dense_tikhonov(&c, 1e-2), &want) > 1e-3);
    Ok(())
}

#[test]
fn cg_at_tight_tolerance_matches_dense_tikhonov_solve() -> Result<()> {
    let c = case(12, 7)?;
    let want = dense_tikhonov(&c, 1e-2);
    for solver in [Solver::CgFactor, Solver::CgMatrixFree] {
        let (u, stats) = precondition(&c, tight(solver, DampingKind::Tikhonov, 1e-2))?;
        let e = rel(&u, &want);
        assert!(e < 1e-8, "{solver:?}: relative error {e}");
        assert_eq!(stats.cg_breakdowns, 0);
        assert!(stats.cg_iterations_max > 1);
    }
    Ok(())
}

/// At the default tolerance CG stops as soon as ‖∇ − M(X)‖²/‖∇‖² < 1e-2 (cold start), within the
/// iteration cap; the true residual (recomputed densely) obeys the bound.
#[test]
fn cg_default_tolerance_lands_within_its_residual_bound() -> Result<()> {
    let c = case(13, 12)?;
    let damping = 1e-2;
    let cfg = KfacConfig {
        solver: Solver::CgFactor,
        damping,
        ..Default::default()
    };
    let (u, stats) = precondition(&c, cfg)?;
    assert!(
        stats.cg_iterations_max < cfg.cg_max_iters,
        "stopped by the cap: {stats:?}"
    );
    let k = add_diag(&kron(&c.a, &c.g), damping);
    let mu = &k * &vec_col(&u);
    let r = &vec_col(&c.grad) - &mu;
    let ratio = r.squared_norm_l2() / vec_col(&c.grad).squared_norm_l2();
    assert!(ratio < cfg.cg_tol, "relative squared residual {ratio}");
    // It is an inexact solve: not already the exact answer.
    assert!(rel(&u, &dense_tikhonov(&c, damping)) > 1e-8);
    Ok(())
}

/// `f32` CPU layers take the host path (f64 eigenbases kept as f32 buffers, host GEMMs, host CG) on a
/// layer large enough that the GEMMs block (24 × 33 folded). The requirement is that f32 is
/// accurate enough for K-FAC: each solver's and damping kind's distance to the dense f64 solve of
/// the f64 case stays below what a 1 % change of the damping `λ` (a hyperparameter, the least
/// precise input of the step) does to that dense solve. The worst-case forward-error bound
/// `κ·n·ε_f32` (κ = 600 here) is 400× looser than this and would pass a wrong damping.
#[test]
fn f32_host_path_matches_dense_f64_solve() -> Result<()> {
    let c64 = sized_case(15, 60, (24, 32))?;
    let c32 = to_f32(&c64)?;
    let damping = 1e-2;
    for kind in [DampingKind::Tikhonov, DampingKind::Factored] {
        let want = dense_preconditioned(&c64, kind, damping);
        let tol = rel(&dense_preconditioned(&c64, kind, 1.01 * damping), &want);
        for solver in [Solver::Eigen, Solver::CgFactor] {
            let cfg = KfacConfig {
                cg_tol: 1e-12,
                cg_max_iters: 400,
                ..tight(solver, kind, damping)
            };
            let (u32, stats) = precondition(&c32, cfg)?;
            assert_eq!(stats.fallbacks, 0, "{solver:?} {kind:?}: {stats:?}");
            let e = rel(&u32, &want);
            assert!(
                e < tol,
                "{solver:?} {kind:?}: relative error {e}, tolerance {tol}"
            );
            // The f32 path is an f32 solve, not the f64 one: the error is above f64 rounding.
            assert!(e > 1e-12, "{solver:?} {kind:?}: relative error {e}");
        }
    }
    Ok(())
}

/// The generic CG gives the same iterates on host buffers as on tensors: same iteration count
/// and the same solution to f32 rounding.
#[test]
fn cg_on_host_buffers_matches_cg_on_tensors() -> Result<()> {
    let mut r = rng(16);
    let (m, k) = (7, 9);
    let ra = randn(&mut r, &[20, k])?.to_dtype(candle_core::DType::F32)?;
    let rg = randn(&mut r, &[20, m])?.to_dtype(candle_core::DType::F32)?;
    let a = ra.t()?.matmul(&ra)?;
    let g = rg.t()?.matmul(&rg)?;
    let b = randn(&mut r, &[m, k])?.to_dtype(candle_core::DType::F32)?;
    let damping = 0.1;
    let s = CgSettings {
        tol: 1e-6,
        max_iters: 50,
    };
    let op_t = |x: &Tensor| -> Result<Tensor> { Ok((g.matmul(x)?.matmul(&a)? + (x * damping)?)?) };
    let want = conjugate_gradient(op_t, &b, None, s)?;
    let factors = crate::host::HostFactors::new(&a, &g)?.expect("f32 CPU factors");
    let op_h = |x: &Vec<f32>| -> Result<Vec<f32>> { Ok(factors.apply(x, (0.0, 0.0, damping))) };
    let bh = b.flatten_all()?.to_vec1::<f32>()?;
    let got = conjugate_gradient(op_h, &bh, None, s)?;
    assert!(!want.breakdown && !got.breakdown);
    assert_eq!(got.iterations, want.iterations);
    let wv = want
        .solution
        .expect("solution")
        .flatten_all()?
        .to_vec1::<f32>()?;
    let gv = got.solution.expect("solution");
    let scale = wv.iter().fold(0.0f32, |s, v| s.max(v.abs()));
    let diff = wv
        .iter()
        .zip(&gv)
        .fold(0.0f32, |d, (x, y)| d.max((x - y).abs()));
    // Both are f32 CG runs of the same iteration; they differ only in summation order.
    assert!(diff / scale < 1e-3, "relative difference {}", diff / scale);
    Ok(())
}

/// The matrix-free product equals the product with the formed factors.
#[test]
fn matrix_free_product_equals_factor_product() -> Result<()> {
    let mut r = rng(14);
    let cap = LayerCapture {
        name: "x".into(),
        input: randn(&mut r, &[3, 5, 4])?,
        output_grad: randn(&mut r, &[3, 5, 6])?,
    };
    for sharing in [WeightSharing::Expand, WeightSharing::Reduce] {
        let rows = CurvatureRows::from_capture(&cap, sharing)?;
        let (a, g) = rows.factors()?;
        let x = randn(&mut r, &[6, 5])?;
        let want = host(&g.matmul(&x)?.matmul(&a)?)?;
        let got = host(&rows.gxa(&x)?)?;
        assert!(rel(&got, &want) < 1e-12, "{sharing:?}");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// CG on random SPD Kronecker systems: a cold start never meets `⟨p, Mp⟩ ≤ 0` (the operator
    /// is SPD); the only breakdown it may report is a residual that ended above the initial one
    /// after the iteration cap (CG minimises the error's M-norm, not the residual, which on an
    /// ill-conditioned system can grow: seed 320704, m = k = 4, λ = 2.4e-4 does). Whenever it
    /// returns a solution, the true relative squared residual is the one reported, and below the
    /// tolerance if it stopped early.
    #[test]
    fn cg_residual_bound_holds(seed in 0u64..1_000_000, m in 1usize..5, k in 1usize..5,
                               log_damping in -4.0f64..0.0) {
        let mut r = rng(seed);
        let ra = randn(&mut r, &[6, k]).unwrap();
        let rg = randn(&mut r, &[6, m]).unwrap();
        let a = ra.t().unwrap().matmul(&ra).unwrap();
        let g = rg.t().unwrap().matmul(&rg).unwrap();
        let b = randn(&mut r, &[m, k]).unwrap();
        let damping = 10f64.powf(log_damping);
        let op = |x: &Tensor| -> Result<Tensor> {
            Ok((g.matmul(x)?.matmul(&a)? + (x * damping)?)?)
        };
        let s = CgSettings { tol: 1e-2, max_iters: 10 };
        let out = conjugate_gradient(op, &b, None, s).unwrap();
        if out.breakdown {
            prop_assert!(out.solution.is_none());
            prop_assert!(out.iterations == s.max_iters && out.relative_residual > 1.0,
                "breakdown after {} iterations at ρ'/ρ₀ = {}", out.iterations, out.relative_residual);
            return Ok(());
        }
        let x = out.solution.unwrap();
        let res = (&b - op(&x).unwrap()).unwrap();
        let ratio = crate::factors::frobenius(&res, &res).unwrap()
            / crate::factors::frobenius(&b, &b).unwrap();
        if out.iterations < s.max_iters {
            prop_assert!(ratio < s.tol * (1.0 + 1e-6), "ratio {}", ratio);
        }
        prop_assert!((ratio - out.relative_residual).abs() < 1e-8);
    }
}

/// Eigen K-FAC folding every step (`k_fac = 1`) and decomposing only on the first (`k_inv =
/// 100`), without KL clipping: the later steps keep the first step's bases.
fn kept_basis(damping: f64) -> KfacConfig {
    KfacConfig {
        solver: Solver::Eigen,
        damping,
        kl_clip: None,
        k_fac: 1,
        k_inv: 100,
        ..Default::default()
    }
}

/// Two eigen steps with `k_inv = 100`: the first folds `c`'s capture and decomposes, the second
/// folds `second` without a new decomposition; the second step's folded update.
fn eigen_second_step(
    c: &Case,
    second: &LayerCapture,
    eigenvalue_refresh: bool,
    damping: f64,
) -> Result<Mat<f64>> {
    let cfg = KfacConfig {
        eigenvalue_refresh,
        ..kept_basis(damping)
    };
    let mut p = Preconditioner::new(vec![c.layer.clone()], cfg)?;
    p.step(&c.grads, std::slice::from_ref(&c.capture))?;
    let (out, stats) = p.step(&c.grads, std::slice::from_ref(second))?;
    assert_eq!(
        stats.refreshed_inverses, 0,
        "the basis must not be recomputed"
    );
    let u = Tensor::cat(&[&out["l.weight"], &out["l.bias"].unsqueeze(1)?], 1)?;
    host(&u.to_dtype(candle_core::DType::F64)?)
}

/// The factors after folding `second` into `c`'s with the default EMA decay.
fn ema_factors(c: &Case, second: &LayerCapture) -> Result<(Mat<f64>, Mat<f64>)> {
    let beta = KfacConfig::default().ema_decay;
    let second = LayerCapture {
        input: second.input.to_dtype(candle_core::DType::F64)?,
        output_grad: second.output_grad.to_dtype(candle_core::DType::F64)?,
        name: second.name.clone(),
    };
    let (a2, g2) = kronecker_factors(&second, WeightSharing::Expand)?;
    let (a2, g2) = (host(&a2)?, host(&g2)?);
    let mix = |x: &Mat<f64>, y: &Mat<f64>| {
        Mat::from_fn(x.nrows(), x.ncols(), |i, j| {
            beta * x[(i, j)] + (1.0 - beta) * y[(i, j)]
        })
    };
    Ok((mix(&c.a, &a2), mix(&c.g, &g2)))
}

/// When the new factors keep the old eigenbases (here the new batch's output gradients are the
/// old ones doubled, so `G ← (β + 4(1−β)) G` and `A` is unchanged), re-estimating the eigenvalues
/// gives the exact damped solve of the new factors without a decomposition; keeping the old
/// eigenvalues (the refresh off) does not. Both the tensor path (`f64`) and the host path
/// (`f32`, tolerance as in `f32_host_path_matches_dense_f64_solve`).
#[test]
fn eigenvalue_refresh_is_exact_when_the_bases_are_kept() -> Result<()> {
    let damping = 1e-2;
    let c64 = sized_case(17, 40, (12, 9))?;
    let scaled = |c: &Case| -> Result<LayerCapture> {
        Ok(LayerCapture {
            output_grad: (&c.capture.output_grad * 2.0)?,
            ..c.capture.clone()
        })
    };
    let (a, g) = ema_factors(&c64, &scaled(&c64)?)?;
    let new = Case {
        a,
        g,
        ..sized_case(17, 40, (12, 9))?
    };
    let want = dense_tikhonov(&new, damping);
    let f32_tol = rel(&dense_tikhonov(&new, 1.01 * damping), &want);
    for (c, tol) in [
        (c64, 1e-9),
        (to_f32(&sized_case(17, 40, (12, 9))?)?, f32_tol),
    ] {
        let second = scaled(&c)?;
        let e = rel(&eigen_second_step(&c, &second, true, damping)?, &want);
        assert!(
            e < tol,
            "eigenvalue refresh: relative error {e}, tolerance {tol}"
        );
        let stale = rel(&eigen_second_step(&c, &second, false, damping)?, &want);
        assert!(
            stale > 100.0 * tol,
            "stale eigenvalues: relative error {stale}"
        );
    }
    Ok(())
}

/// In general the refreshed eigenvalues are `diag(Qᵀ F Q)` of the new factor `F` in the first
/// step's bases `Q`: the update equals the dense `(Q_A ⊗ Q_G)(Λ̃_A ⊗ Λ̃_G + λI)⁻¹(Q_A ⊗ Q_G)ᵀ
/// vec ∇W̄` built from a dense f64 eigendecomposition of the first factors, and differs from
/// both the exact solve of the new factors and the solve with stale eigenvalues.
#[test]
fn eigenvalue_refresh_uses_the_diagonal_of_the_new_factors_in_the_old_bases() -> Result<()> {
    let damping = 1e-2;
    let c = sized_case(18, 30, (6, 5))?;
    let other = sized_case(19, 30, (6, 5))?.capture;
    let (a_new, g_new) = ema_factors(&c, &other)?;
    let basis = |x: &Mat<f64>| -> Mat<f64> {
        let e = x.self_adjoint_eigen(faer::Side::Lower).expect("symmetric");
        e.U().to_owned()
    };
    let (qa, qg) = (basis(&c.a), basis(&c.g));
    let diag = |q: &Mat<f64>, f: &Mat<f64>| -> Vec<f64> {
        let d = q.transpose() * f * q;
        (0..d.nrows()).map(|i| d[(i, i)].max(0.0)).collect()
    };
    let (la, lg) = (diag(&qa, &a_new), diag(&qg, &g_new));
    // U = Q_G [(Q_Gᵀ ∇W̄ Q_A) ⊘ (λ_G λ_Aᵀ + λ)] Q_Aᵀ.
    let r = qg.transpose() * &c.grad * &qa;
    let s = Mat::from_fn(r.nrows(), r.ncols(), |i, j| {
        r[(i, j)] / (lg[i] * la[j] + damping)
    });
    let want = &qg * s * qa.transpose();
    let got = eigen_second_step(&c, &other, true, damping)?;
    let e = rel(&got, &want);
    assert!(e < 1e-9, "relative error {e}");
    let exact_new = dense_tikhonov(
        &Case {
            a: a_new,
            g: g_new,
            ..sized_case(18, 30, (6, 5))?
        },
        damping,
    );
    assert!(rel(&got, &exact_new) > 1e-4, "the basis is not refreshed");
    let stale = eigen_second_step(&c, &other, false, damping)?;
    assert!(rel(&got, &stale) > 1e-4, "the eigenvalues did change");
    Ok(())
}

/// A solve's [`crate::CgOutcome::product`] is `M(X)` of its solution (the recurrence's `b − r`, to
/// rounding), and a warm start that brings its product gives the same iterates as one whose
/// product is computed, with one operator application fewer.
#[test]
fn warm_start_with_its_product_saves_one_application() -> Result<()> {
    use std::cell::Cell;
    let mut r = rng(21);
    let (m, k) = (5, 6);
    let ra = randn(&mut r, &[12, k])?;
    let rg = randn(&mut r, &[12, m])?;
    let a = ra.t()?.matmul(&ra)?;
    let g = rg.t()?.matmul(&rg)?;
    let damping = 0.1;
    let calls = Cell::new(0usize);
    let op = |x: &Tensor| -> Result<Tensor> {
        calls.set(calls.get() + 1);
        Ok((g.matmul(x)?.matmul(&a)? + (x * damping)?)?)
    };
    let s = CgSettings {
        tol: 1e-4,
        max_iters: 50,
    };
    let first = conjugate_gradient(op, &randn(&mut r, &[m, k])?, None, s)?;
    let (x, mx) = (
        first.solution.expect("solved"),
        first.product.expect("solved"),
    );
    let true_mx = op(&x)?;
    let e = rel(&host(&mx)?, &host(&true_mx)?);
    assert!(e < 1e-12, "recurrence product off by {e}");

    let b = randn(&mut r, &[m, k])?;
    calls.set(0);
    let computed = conjugate_gradient(op, &b, Some(&x), s)?;
    let with_computed = calls.get();
    calls.set(0);
    let start = crate::WarmStart {
        x: &x,
        product: Some(&mx),
    };
    let reused = crate::conjugate_gradient_from(op, &b, Some(start), s)?;
    assert_eq!(calls.get() + 1, with_computed);
    assert_eq!(reused.iterations, computed.iterations);
    // CG's iterates are not a smooth function of its start in finite precision, so the two runs
    // are compared by what CG promises: the true residual of the reused start's solution meets
    // the stopping rule against its true initial residual.
    let xr = reused.solution.expect("solved");
    let res = |v: &Tensor| -> Result<f64> {
        let d = (&b - op(v)?)?;
        crate::factors::frobenius(&d, &d)
    };
    let ratio = res(&xr)? / res(&x)?;
    assert!(ratio < s.tol * (1.0 + 1e-6), "true ρ'/ρ₀ = {ratio}");
    assert!((ratio - reused.relative_residual).abs() < 1e-8 * s.tol.max(ratio));
    Ok(())
}

/// A key projection under K-FAC-reduce: its output gradients sum to zero over each sequence's
/// positions (softmax ignores a shift of every key), so `G` is zero up to rounding and every
/// solver returns `∇W̄/λ`, the dense solve's answer, without a decomposition or a CG iteration.
/// The same layer with gradients that do not sum to zero is preconditioned for real.
#[test]
fn vanishing_reduce_curvature_gives_the_damped_gradient() -> Result<()> {
    let mut r = rng(22);
    let (batch, t, n, m) = (5, 4, 3, 2);
    let damping = 1e-2;
    let c = sized_case(22, 1, (m, n))?;
    let dy = randn(&mut r, &[batch, t, m])?;
    let centred = dy.broadcast_sub(&dy.mean_keepdim(1)?)?;
    for (output_grad, vanishes) in [(centred, true), (dy, false)] {
        let capture = LayerCapture {
            name: "l".into(),
            input: randn(&mut r, &[batch, t, n])?,
            output_grad,
        };
        let (a, g) = kronecker_factors(&capture, WeightSharing::Reduce)?;
        let case = Case {
            capture,
            a: host(&a)?,
            g: host(&g)?,
            ..sized_case(22, 1, (m, n))?
        };
        let want = dense_tikhonov(&case, damping);
        let damped = Mat::from_fn(c.grad.nrows(), c.grad.ncols(), |i, j| {
            c.grad[(i, j)] / damping
        });
        for solver in [Solver::Eigen, Solver::CgFactor, Solver::CgMatrixFree] {
            let cfg = KfacConfig {
                weight_sharing: WeightSharing::Reduce,
                ..tight(solver, DampingKind::Tikhonov, damping)
            };
            let (u, stats) = precondition(&case, cfg)?;
            assert!(rel(&u, &want) < 1e-9, "{solver:?}: {}", rel(&u, &want));
            if vanishes {
                // `∇W̄·(1/λ)`: one rounding away from `∇W̄/λ`.
                assert!(rel(&u, &damped) < 1e-15, "{solver:?}: {}", rel(&u, &damped));
                assert_eq!(stats.refreshed_inverses, 0, "{solver:?}: {stats:?}");
                assert_eq!(stats.cg_iterations_max, 0, "{solver:?}: {stats:?}");
            } else {
                assert!(rel(&u, &damped) > 1e-3, "{solver:?}");
            }
        }
    }
    Ok(())
}

/// A fold whose layer is not solved in the same step (no gradient for it) leaves the eigenvalues
/// stale; the state keeps that, so a preconditioner loaded from it refreshes them on its next
/// solve exactly as the uninterrupted one does. Without the flag the next update differs.
#[test]
fn stale_eigenvalues_survive_a_state_round_trip() -> Result<()> {
    let damping = 1e-2;
    let c = sized_case(23, 30, (6, 5))?;
    let other = sized_case(24, 30, (6, 5))?.capture;
    let cfg = kept_basis(damping);
    let mut p = Preconditioner::new(vec![c.layer.clone()], cfg)?;
    p.step(&c.grads, std::slice::from_ref(&c.capture))?;
    let no_grads: HashMap<String, Tensor> = HashMap::new();
    p.step(&no_grads, std::slice::from_ref(&other))?;
    let saved: HashMap<String, Tensor> = p.state()?.into_iter().collect();
    assert!(saved.contains_key("kfac.l.eigenvalues_stale"));
    let next = |state: &HashMap<String, Tensor>| -> Result<Tensor> {
        let mut q = Preconditioner::new(vec![c.layer.clone()], cfg)?;
        q.load_state(state)?;
        Ok(q.step(&c.grads, &[])?.0["l.weight"].clone())
    };
    let want = p.step(&c.grads, &[])?.0["l.weight"].clone();
    let got = next(&saved)?;
    assert_eq!(max_abs_diff(&host(&want)?, &host(&got)?), 0.0);
    let mut without = saved.clone();
    without.remove("kfac.l.eigenvalues_stale");
    let stale = next(&without)?;
    assert!(rel(&host(&stale)?, &host(&want)?) > 1e-4);
    Ok(())
}
