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
