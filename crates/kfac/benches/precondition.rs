//! Preconditioning cost per step and curvature memory per layer: eigen K-FAC, inverse K-FAC,
//! CG-FAC on the factors and matrix-free CG-FAC, for square layers d → d (bias folded in) and
//! R = batch × tokens rows, in f32 on the CPU.
//!
//! Synthetic rows: Gaussian inputs and output gradients with power-law column scales
//! `s_j = (1+j)^(-1/2)`, so A and G have a decaying spectrum like real activations (CG's iteration
//! count depends on it; the table reports it). Damping λ = 1e-3 (Tikhonov; factored for inverse).
//!
//! Columns: `form` forming A and G from the rows (every k_fac steps); `refresh` the eigen- or
//! Cholesky-decompositions (every k_inv steps); `solve` one step's preconditioning; `per step`
//! the amortised cost with W2's k_fac = 10 and k_inv = 100; `memory` the curvature state kept
//! between steps (factors, bases or inverses, CG warm start, or the matrix-free rows).
//!
//! Usage: `cargo bench -p bmt-kfac --bench precondition` (median of `KFAC_BENCH_REPEATS`, default
//! 3); `KFAC_BENCH_QUICK=1` or the argument `--quick` runs only d ∈ {64, 128} with R = 1024.

use std::collections::HashMap;
use std::time::Instant;

use bmt_kfac::{
    DampingKind, KfacConfig, LayerCapture, PreconditionedLayer, Preconditioner, Result, Solver,
};
use candle_core::{Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

const K_FAC: f64 = 10.0;
const K_INV: f64 = 100.0;

fn scaled_rows(rng: &mut impl Rng, rows: usize, cols: usize, scale: f32) -> Result<Tensor> {
    let v: Vec<f32> = (0..rows * cols)
        .map(|i| {
            let z: f32 = rng.sample(StandardNormal);
            z * scale * (1.0 + (i % cols) as f32).powf(-0.5)
        })
        .collect();
    Ok(Tensor::from_vec(v, (rows, cols), &Device::Cpu)?)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct Row {
    form: f64,
    refresh: f64,
    solve: f64,
    iters: f64,
    memory: usize,
}

fn measure(solver: Solver, d: usize, r: usize, repeats: usize) -> Result<Row> {
    let mut rng = StdRng::seed_from_u64((d * 31 + r) as u64);
    let layer = PreconditionedLayer {
        name: "l".into(),
        weight: Var::from_tensor(&scaled_rows(&mut rng, d, d, 0.05)?)?,
        bias: Some(Var::zeros(d, candle_core::DType::F32, &Device::Cpu)?),
    };
    let capture = LayerCapture {
        name: "l".into(),
        input: scaled_rows(&mut rng, r, d, 1.0)?,
        output_grad: scaled_rows(&mut rng, r, d, 1.0 / r as f32)?,
    };
    let cfg = KfacConfig {
        solver,
        damping_kind: if solver == Solver::Inverse {
            DampingKind::Factored
        } else {
            DampingKind::Tikhonov
        },
        k_fac: 1_000_000,
        k_inv: 1_000_000,
        kl_clip: None,
        warm_start: false,
        ..Default::default()
    };
    let (mut forms, mut firsts, mut solves, mut iters) = (vec![], vec![], vec![], vec![]);
    let mut memory = 0;
    for rep in 0..repeats {
        let mut p = Preconditioner::new(vec![layer.clone()], cfg)?;
        let grads = HashMap::from([
            ("l.weight".to_string(), scaled_rows(&mut rng, d, d, 1.0)?),
            (
                "l.bias".to_string(),
                scaled_rows(&mut rng, 1, d, 1.0)?.squeeze(0)?,
            ),
        ]);
        // Step 0 forms the factors (or stores the rows) and decomposes; later steps only solve.
        let (_, s0) = p.step(&grads, std::slice::from_ref(&capture))?;
        forms.push(s0.time_factors);
        firsts.push(s0.time_solve);
        let t = Instant::now();
        let (_, s1) = p.step(&grads, &[])?;
        solves.push(t.elapsed().as_secs_f64());
        iters.push(s1.cg_iterations_mean);
        if rep == 0 {
            memory = p
                .state()?
                .iter()
                .filter(|(k, _)| !k.ends_with(".present") && !k.ends_with(".traces"))
                .map(|(_, t)| t.elem_count() * t.dtype().size_in_bytes())
                .sum();
        }
    }
    let solve = median(solves);
    let refresh = match solver {
        Solver::Eigen | Solver::Inverse => (median(firsts) - solve).max(0.0),
        _ => 0.0,
    };
    Ok(Row {
        form: median(forms),
        refresh,
        solve,
        iters: median(iters),
        memory,
    })
}

fn main() -> Result<()> {
    let quick = std::env::var("KFAC_BENCH_QUICK").is_ok_and(|v| v != "0")
        || std::env::args().any(|a| a == "--quick");
    let repeats: usize = std::env::var("KFAC_BENCH_REPEATS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 1 } else { 3 })
        .max(1);
    let sizes: &[usize] = if quick {
        &[64, 128]
    } else {
        &[64, 128, 256, 512, 1024]
    };
    let rows: &[usize] = if quick { &[1024] } else { &[1024, 8192] };
    println!(
        "# K-FAC / CG-FAC preconditioning, one d×d layer with bias, f32, CPU, median of {repeats}"
    );
    println!();
    println!("| d | R | solver | form ms | refresh ms | solve ms | CG iters | per step ms (k_fac 10, k_inv 100) | memory KiB |");
    println!("|---:|---:|---|---:|---:|---:|---:|---:|---:|");
    for &r in rows {
        for &d in sizes {
            for solver in [
                Solver::Eigen,
                Solver::Inverse,
                Solver::CgFactor,
                Solver::CgMatrixFree,
            ] {
                let row = measure(solver, d, r, repeats)?;
                let per_step = row.solve + row.refresh / K_INV + row.form / K_FAC;
                println!(
                    "| {d} | {r} | {solver:?} | {:.2} | {:.2} | {:.2} | {:.1} | {:.2} | {} |",
                    row.form * 1e3,
                    row.refresh * 1e3,
                    row.solve * 1e3,
                    row.iters,
                    per_step * 1e3,
                    row.memory / 1024
                );
            }
        }
    }
    Ok(())
}
