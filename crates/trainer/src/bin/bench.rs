//! `bench`: W1 and W2 throughput of every optimizer in one process and one sitting
//! (`cargo xtask bench`).
//!
//! For W1-adamw, W1-kfac (eigen), W1-cgfac (CG on the factors) and W1-cgfac matrix-free it trains a
//! freshly seeded W1 model on the embedded digits (batch 64) for `--warmup` untimed and `--steps`
//! timed steps; for W2-adamw, W2-kfac and W2-cgfac (the byte-level GPT, batch 16 × 256 bytes,
//! K-FAC factors refreshed every 10 steps and eigenbases / inverses every 100) it does the same
//! for `--w2-warmup` and `--w2-steps` steps on the repository's README.md repeated to 128 KiB
//! (seeded printable bytes where the README is missing: the bytes do not matter for throughput),
//! with diagnostics off. It times every phase of every step itself (forward + loss, backward,
//! preconditioning, update, diagnostics); it measures the GEMM kernel at the shapes the models use,
//! at 1024³ (W1's ceiling) and at W2's two largest products (W2's ceiling), and the fused against
//! the composite LayerNorm/softmax at W1's shapes. It prints Markdown tables and, with
//! `--json FILE`, writes the same numbers.
//!
//! Timings mean something only on an otherwise idle machine (`docs/CANDLE-NOTES.md`, Threads).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bmt_trainer::config::{BackwardKind, OptimizerKind, TrainConfig};
use bmt_trainer::data::{split_text, Batch};
use bmt_trainer::diag::Diagnostics;
use bmt_trainer::kfac::{KfacSettings, DEFAULT_LR};
use bmt_trainer::model::{GptConfig, Transformer, VitConfig};
use bmt_trainer::ops::{
    layer_norm_normalize, layer_norm_normalize_composite, softmax_last_dim,
    softmax_last_dim_composite,
};
use bmt_trainer::run::{
    epoch_batches, fit_model_to_data, load_data, peak_memory_mib, MetricsFile, RunData,
    StepOutcome, Trainer,
};
use candle_core::{DType, Device, Tensor, Var};
use clap::Parser;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::Value;

#[derive(Parser)]
#[command(
    name = "bench",
    about = "W1 throughput (AdamW, K-FAC, CG-FAC, CG-FAC matrix-free), W2 throughput (AdamW, \
             K-FAC, CG-FAC), GEMM ceilings, fused ops"
)]
struct Args {
    /// Also write every number as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Smoke test: 2 warm-up + 10 timed W1 steps, 1 + 2 W2 steps and short GEMM runs (timings
    /// are not meaningful).
    #[arg(long)]
    quick: bool,
    /// CPU threads: the native step's micro-batches and candle's kernels (set before any tensor
    /// work; default as `bmt train`: 2, or 1 on a one-core machine).
    #[arg(long, default_value_t = bmt_trainer::config::default_threads())]
    threads: usize,
    /// Untimed warm-up steps per W1 workload (default 10, 2 with --quick).
    #[arg(long)]
    warmup: Option<usize>,
    /// Timed steps per W1 workload (default 100, 10 with --quick).
    #[arg(long)]
    steps: Option<usize>,
    /// Untimed warm-up steps per W2 workload (default 3, 1 with --quick).
    #[arg(long)]
    w2_warmup: Option<usize>,
    /// Timed steps per W2 workload (default 10, 2 with --quick; 10 covers one K-FAC factor
    /// refresh, the eigenbasis / inverse refresh of every 100 steps is amortised from the warm-up).
    #[arg(long)]
    w2_steps: Option<usize>,
    /// Run only these workloads, in this order (repeatable: W1-adamw, W1-kfac, W1-cgfac,
    /// W1-cgfac-mf, W2-adamw, W2-kfac, W2-cgfac); default: all seven.
    #[arg(long)]
    only: Vec<String>,
    /// How the training steps compute gradients: `native` (the default of `bmt train`) or
    /// `autograd` (candle's, to measure what the native step gains).
    #[arg(long, value_enum, default_value_t = BackwardKind::Native)]
    backward: BackwardKind,
    /// Eigenbasis / inverse refresh period of the W1 K-FAC and CG-FAC workloads (default: `bmt
    /// train`'s, 20); the interleaved comparison's rounds last this many steps.
    #[arg(long)]
    k_inv: Option<u64>,
    /// Factor refresh period of the W1 K-FAC and CG-FAC workloads (default: `bmt train`'s, 20),
    /// to measure what the curvature backward and the factor folds cost.
    #[arg(long)]
    k_fac: Option<u64>,
    /// The K-FAC workloads' eigenvalue refresh between eigenbasis refreshes (default: on, as in
    /// `bmt train`), to measure what it costs.
    #[arg(long)]
    eigenvalue_refresh: Option<bool>,
    /// Rounds of the interleaved W1 comparison (default 24, 2 with --quick; 0 skips it): each
    /// round runs one eigenbasis refresh cycle (`k_inv` steps, 20 by default) of every selected W1
    /// workload in turn, and step time ratios to W1-adamw are taken within rounds. 24 rounds of
    /// 20 steps take about 25 s on 2 cores; with 12, one disturbed round moved the mean-time
    /// ratio by 0.03.
    #[arg(long)]
    rounds: Option<usize>,
}

/// How every workload of one bench run trains: threads, backward pass, W1's K-FAC refresh periods
/// when `--k-inv` / `--k-fac` override the defaults, and the eigenvalue refresh when
/// `--eigenvalue-refresh` does.
#[derive(Debug, Clone, Copy)]
struct Knobs {
    threads: usize,
    backward: BackwardKind,
    w1_k_inv: Option<u64>,
    w1_k_fac: Option<u64>,
    eigenvalue_refresh: Option<bool>,
}

/// Which model a workload trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    /// The ViT on the embedded digits.
    W1,
    /// The byte-level GPT on text.
    W2,
}

/// One W1 or W2 variant.
struct Workload {
    name: &'static str,
    family: Family,
    optimizer: OptimizerKind,
    solver: Option<&'static str>,
}

const WORKLOADS: [Workload; 7] = [
    Workload {
        name: "W1-adamw",
        family: Family::W1,
        optimizer: OptimizerKind::Adamw,
        solver: None,
    },
    Workload {
        name: "W1-kfac",
        family: Family::W1,
        optimizer: OptimizerKind::Kfac,
        solver: Some("eigen"),
    },
    Workload {
        name: "W1-cgfac",
        family: Family::W1,
        optimizer: OptimizerKind::Cgfac,
        solver: Some("cg"),
    },
    Workload {
        name: "W1-cgfac-mf",
        family: Family::W1,
        optimizer: OptimizerKind::Cgfac,
        solver: Some("cg-matrix-free"),
    },
    Workload {
        name: "W2-adamw",
        family: Family::W2,
        optimizer: OptimizerKind::Adamw,
        solver: None,
    },
    Workload {
        name: "W2-kfac",
        family: Family::W2,
        optimizer: OptimizerKind::Kfac,
        solver: Some("eigen"),
    },
    Workload {
        name: "W2-cgfac",
        family: Family::W2,
        optimizer: OptimizerKind::Cgfac,
        solver: Some("cg"),
    },
];

/// W2's K-FAC / CG-FAC factor refresh period (WORKLOADS.md, W2).
const W2_K_FAC: u64 = 10;
/// W2's K-FAC / CG-FAC eigenbasis / inverse refresh period (WORKLOADS.md, W2).
const W2_K_INV: u64 = 100;
/// Bytes of W2's benchmark text: 128 KiB give ≈ 460 training windows of 256 bytes per epoch, i.e.
/// ≈ 28 batches of 16, more than the default warm-up + timed steps, so every step draws a fresh batch.
const W2_TEXT_BYTES: usize = 128 * 1024;

/// Seconds per phase, summed over the timed steps.
#[derive(Debug, Clone, Copy, Default, Serialize)]
struct Phases {
    /// `model.forward`, cross-entropy, the loss as a scalar and the correct count.
    forward: f64,
    /// `loss.backward()`.
    backward: f64,
    /// K-FAC: everything in the optimizer call except the update (Monte-Carlo backward on refresh
    /// steps, factors, decompositions, solves, KL clipping). AdamW: 0.
    precondition: f64,
    /// The parameter update (K-FAC: its `time_update_s`; AdamW: the whole `step`).
    update: f64,
    /// Per-step diagnostics (the second-order measurement every 10 steps, `Diagnostics::on_step`)
    /// plus one `Diagnostics::on_epoch` amortised over an epoch's steps.
    diagnostics: f64,
}

impl Phases {
    fn train(&self) -> f64 {
        self.forward + self.backward + self.precondition + self.update
    }
    fn total(&self) -> f64 {
        self.train() + self.diagnostics
    }
    fn add(&mut self, o: &Phases) {
        self.forward += o.forward;
        self.backward += o.backward;
        self.precondition += o.precondition;
        self.update += o.update;
        self.diagnostics += o.diagnostics;
    }
}

/// K-FAC's own breakdown of the preconditioning, seconds summed over the timed steps.
#[derive(Debug, Clone, Copy, Default, Serialize)]
struct KfacBreakdown {
    /// The Monte-Carlo backward: the sampled labels' loss gradient, the extra backward pass and
    /// its captures (refresh steps), as the trainer times it.
    curvature_backward_s: f64,
    /// The rest of the optimizer call: the optimizer call minus the curvature backward and
    /// K-FAC's factors, solve and update times (label sampling, the logits, bookkeeping).
    other_s: f64,
    /// K-FAC's `time_factors_s`.
    factors_s: f64,
    /// K-FAC's `time_solve_s` (decompositions or CG, solves, KL clipping).
    solve_s: f64,
    /// Timed steps that refreshed the factors.
    factor_refresh_steps: usize,
    /// Timed steps that recomputed eigenbases / inverses.
    inverse_refresh_steps: usize,
    /// Mean CG iterations over the timed steps that ran CG.
    cg_iterations_mean: f64,
    /// Factor refresh period `k_fac`.
    k_fac: u64,
    /// Eigenbasis / inverse refresh period `k_inv`.
    k_inv: u64,
    /// Whether the eigen solver re-estimated eigenvalues between eigenbasis refreshes.
    eigenvalue_refresh: bool,
    /// Mean solve milliseconds of the steps (warm-up included) that recomputed eigenbases /
    /// inverses; `None` if none did (the CG solvers keep none).
    inverse_refresh_solve_ms: Option<f64>,
    /// Milliseconds per training step over a whole `k_inv` cycle: the mean `p` of the timed steps
    /// without an inverse refresh, plus `(r − p) / k_inv` with `r` the mean of the timed steps
    /// with one (whatever else they refresh: with `k_fac = k_inv` the curvature backward and the
    /// factor fold too). Equals `ms_per_step` when the timed steps cover whole cycles. Without a
    /// timed refresh (W2: k_inv = 100, ~10 timed steps) it adds the K-FAC work (curvature
    /// backward, factor fold, solve) of the refreshes seen in the warm-up beyond that of a timed
    /// step, at its share: step 0's whole time carries first-step costs that are not K-FAC's.
    amortised_ms_per_step: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
struct WorkloadResult {
    name: String,
    optimizer: String,
    solver: Option<String>,
    warmup_steps: usize,
    timed_steps: usize,
    batch_size: usize,
    tokens_per_sample: usize,
    /// Data the steps drew their batches from.
    data: String,
    /// Whether the diagnostics ran (W1: yes, measured; W2: off).
    diagnostics: bool,
    /// Training steps per second (forward, backward, preconditioning, update; no diagnostics).
    steps_per_s: f64,
    /// `steps_per_s · batch · tokens`.
    tokens_per_s: f64,
    /// Mean milliseconds of a training step (no diagnostics).
    ms_per_step: f64,
    /// Slowest timed training step, milliseconds (K-FAC refresh steps show here).
    max_ms_per_step: f64,
    /// Diagnostics milliseconds per step (on_step measured, on_epoch amortised; 0 when off).
    diagnostics_ms_per_step: f64,
    /// Seconds per phase, summed over the timed steps.
    phases_s: Phases,
    /// Share of each phase in training step + diagnostics.
    phase_share: Phases,
    /// One `Diagnostics::on_epoch` call, seconds (amortised over `steps_per_epoch`; 0 when off).
    on_epoch_s: f64,
    steps_per_epoch: usize,
    kfac: Option<KfacBreakdown>,
    /// Model FLOPs per training step (analytic: `vit_flops_per_step`, `gpt_flops_per_step`).
    model_flops_per_step: f64,
    /// `model_flops_per_step · steps_per_s / 1e9`.
    achieved_gflops: f64,
    /// The GEMM this workload is measured against (W1: 1024³; W2: the faster of its FC₁/FC₂).
    ceiling: String,
    /// That GEMM's rate, GFLOP/s.
    ceiling_gflops: f64,
    /// `achieved_gflops / ceiling_gflops`.
    ceiling_fraction: f64,
    /// `achieved_gflops` over the 1024³ GEMM (equal to `ceiling_fraction` for W1).
    fraction_of_1024_gemm: f64,
    /// VmHWM after this workload, MiB (reset before it where the kernel allows, see `peak_reset`).
    peak_memory_mib: Option<f64>,
    final_loss: f64,
}

#[derive(Debug, Clone, Serialize)]
struct GemmResult {
    name: String,
    /// `(batch, m, k, n)`: `batch` products of `(m × k) · (k × n)`.
    shape: [usize; 4],
    flops: f64,
    median_ms: f64,
    gflops: f64,
    reps: usize,
}

#[derive(Debug, Clone, Serialize)]
struct OpResult {
    op: String,
    shape: Vec<usize>,
    /// Applications per W1 training step (forward + backward each).
    per_step: usize,
    fused_ms: f64,
    composite_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
struct Report {
    date_utc: String,
    machine: String,
    nproc: usize,
    threads: usize,
    quick: bool,
    candle: &'static str,
    /// Whether VmHWM could be reset before each workload (`/proc/self/clear_refs`).
    peak_reset: bool,
    gemm: Vec<GemmResult>,
    /// The 1024³ GEMM, W1's ceiling.
    gemm_ceiling_gflops: f64,
    /// The faster of W2's FC₁ and FC₂ GEMMs, W2's ceiling.
    w2_gemm_ceiling_gflops: f64,
    workloads: Vec<WorkloadResult>,
    /// The interleaved W1 comparison, when W1-adamw and another W1 workload ran.
    interleaved: Option<Interleaved>,
    /// W2's goal (issue): model FLOP/s at ≥ this fraction of W2's GEMM ceiling.
    w2_goal_fraction: f64,
    /// The benchmark text of W2, if a W2 workload ran.
    w2_data: Option<String>,
    fused_vs_composite_ops: Vec<OpResult>,
    fused_vs_composite_step: &'static str,
    /// VmHWM before the first workload (data, GEMM and op benchmarks), MiB.
    setup_peak_memory_mib: Option<f64>,
    wall_s: f64,
}

/// W2's goal in the issue: "W2 at half of this machine's Candle f32 GEMM rate in model FLOPs".
const W2_GOAL_FRACTION: f64 = 0.5;
const STEP_SWITCH_NOTE: &str = "not measured per W1 step: the model calls the fused \
    ops::layer_norm_normalize and ops::softmax_last_dim unconditionally, so switching needs a model \
    change; the op-level numbers at W1's shapes are below.";

/// Model FLOPs of one training step of the ViT, counted analytically (2·m·n·k per matmul).
///
/// With B = batch, T = tokens (patches + CLS), N_p = patches, d = width, H = heads, d_h = d/H,
/// m = MLP width, c = classes, p = patch side, C = channels:
///
/// forward = 2·(B·N_p)·(C·p²)·d                         patch embedding
///         + depth · [ 4 · 2·(B·T)·d·d                   Q, K, V, O
///                   + 2 · 2·(B·H)·T·T·d_h               QKᵀ and attention·V
///                   + 2·(B·T)·d·m + 2·(B·T)·m·d ]       FC₁, FC₂
///         + 2·B·d·c                                     head (CLS token only)
/// step    = 3 · forward   (the backward costs two matmuls per forward matmul: input and weight
///                          gradients)
///
/// Elementwise work (bias, LayerNorm, softmax, GELU, residuals, loss) and the optimizer are not
/// counted; the input gradient of the patch embedding, which is not needed, is counted by the 3×
/// convention. W1 (B = 64, T = 17, d = 64, H = 4, m = 128): forward 304.8 MFLOP, step 914.4 MFLOP.
/// This is the model's nominal count, every row of every block, the work the reference
/// implementations do; the trainer runs the last block's query, attention, O and MLP on the CLS
/// row only (its output is all the head reads) and does about 82 % of it.
fn vit_flops_per_step(c: &VitConfig, batch: usize) -> f64 {
    let (b, t, d, h, m) = (
        batch as f64,
        c.tokens() as f64,
        c.dim as f64,
        c.heads as f64,
        c.mlp_dim as f64,
    );
    let np = (c.tokens() - 1) as f64;
    let dh = c.head_dim() as f64;
    let patch = 2.0 * (b * np) * c.patch_dim() as f64 * d;
    let block = 4.0 * 2.0 * (b * t) * d * d
        + 2.0 * 2.0 * (b * h) * t * t * dh
        + 2.0 * (b * t) * d * m
        + 2.0 * (b * t) * m * d;
    let head = 2.0 * b * d * c.classes as f64;
    3.0 * (patch + c.depth as f64 * block + head)
}

/// Model FLOPs of one training step of the byte-level GPT, counted analytically as for
/// [`vit_flops_per_step`] (2·m·n·k per matmul, backward = 2 × forward).
///
/// With B = batch, T = context, d = width, H = heads, d_h = d/H, m = MLP width, V = vocabulary,
/// L = depth:
///
/// forward = L · [ 4 · 2·(B·T)·d·d                   Q, K, V, O
///               + 2 · 2·(B·H)·T·T·d_h               QKᵀ and attention·V (full T×T)
///               + 2·(B·T)·d·m + 2·(B·T)·m·d ]       FC₁, FC₂
///         + 2·(B·T)·d·V                             head (every position)
///         = 2·N·(B·T) + 4·L·B·T²·d,   N = L·(4d² + 2dm) + dV, the non-embedding matmul weights
/// step    = 3 · forward = 6·N·(B·T) + 12·L·B·T²·d
///
/// The byte and position embeddings are lookups and additions, not matmuls, and are not counted;
/// neither are biases, LayerNorm, softmax, GELU, residuals, the loss and the optimizer. The
/// attention products are counted over the full T×T score matrix, which the model computes before
/// masking (the causal half alone would be half that term). W2 (B = 16, T = 256, d = 256, H = 8,
/// m = 1024, V = 256, L = 6): N = 4 784 128, forward 45.63 GFLOP, step 136.90 GFLOP (117.57 in the
/// 6·N·B·T term, 19.33 in attention).
fn gpt_flops_per_step(c: &GptConfig, batch: usize) -> f64 {
    let (b, t, d, m, v, l) = (
        batch as f64,
        c.context as f64,
        c.dim as f64,
        c.mlp_dim as f64,
        c.vocab as f64,
        c.depth as f64,
    );
    let n = l * (4.0 * d * d + 2.0 * d * m) + d * v;
    6.0 * n * (b * t) + 12.0 * l * b * t * t * d
}

/// Resets the process's VmHWM to its current RSS (Linux ≥ 4.0: `5` into `/proc/self/clear_refs`).
fn reset_peak_memory() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn machine() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// Today's UTC date `YYYY-MM-DD` from the system clock (days → civil date, proleptic Gregorian).
fn date_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

/// Median milliseconds of `f`, after one warm-up call, repeated until `min_s` seconds and at least
/// `min_reps` runs.
fn time_ms(
    min_s: f64,
    min_reps: usize,
    mut f: impl FnMut() -> candle_core::Result<()>,
) -> Result<(f64, usize)> {
    f()?;
    let start = Instant::now();
    let mut times = Vec::new();
    while times.len() < min_reps || start.elapsed().as_secs_f64() < min_s {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let n = times.len();
    Ok((median(times), n))
}

/// Name prefix of W2's GEMMs in [`bench_gemm`]'s list.
const W2_GEMM_PREFIX: &str = "W2 ";
/// Name of the 1024³ GEMM in [`bench_gemm`]'s list.
const CEILING_GEMM: &str = "ceiling: 1024³";
/// Name prefix of [`bench_gemm`]'s one-thread runs of the single products (faer's kernels).
const SINGLE_THREAD_PREFIX: &str = "1 thread (faer): ";

/// The GEMMs at W1's shapes (activations `(B·T) × in` times a weight `(out, in)` transposed, as the
/// linear layers do; the per-head attention products), at W2's two largest products (FC₁ and FC₂
/// at batch `w2_batch`, equal FLOPs, different aspect) and at 1024³. The single products call the
/// `gemm` crate (candle's CPU kernel, which the training steps call too) on `threads` threads,
/// so that the ceiling is the machine's on the cores the step uses, whatever candle's own thread
/// count; the batched attention product is candle's batched matmul.
fn bench_gemm(
    c: &VitConfig,
    batch: usize,
    g: &GptConfig,
    w2_batch: usize,
    min_s: f64,
    (device, threads): (&Device, usize),
) -> Result<Vec<GemmResult>> {
    let rows = batch * c.tokens();
    let rows2 = w2_batch * g.context;
    let bh = batch * c.heads;
    let (t, dh) = (c.tokens(), c.head_dim());
    // (name, batch, m, k, n, weight layout (n, k) transposed)
    let cases: Vec<(String, usize, usize, usize, usize, bool)> = vec![
        (
            format!("Q/K/V/O: ({rows}×{0})·Wᵀ", c.dim),
            1,
            rows,
            c.dim,
            c.dim,
            true,
        ),
        (
            format!("FC₁: ({rows}×{0})·Wᵀ", c.dim),
            1,
            rows,
            c.dim,
            c.mlp_dim,
            true,
        ),
        (
            format!("FC₂: ({rows}×{0})·Wᵀ", c.mlp_dim),
            1,
            rows,
            c.mlp_dim,
            c.dim,
            true,
        ),
        (
            format!("QKᵀ: {bh}×({t}×{dh})·({dh}×{t})"),
            bh,
            t,
            dh,
            t,
            false,
        ),
        (
            format!("{W2_GEMM_PREFIX}FC₁: ({rows2}×{0})·Wᵀ", g.dim),
            1,
            rows2,
            g.dim,
            g.mlp_dim,
            true,
        ),
        (
            format!("{W2_GEMM_PREFIX}FC₂: ({rows2}×{0})·Wᵀ", g.mlp_dim),
            1,
            rows2,
            g.mlp_dim,
            g.dim,
            true,
        ),
        (CEILING_GEMM.into(), 1, 1024, 1024, 1024, false),
    ];
    // Single products also on one thread, where `gemm_into` runs faer's kernels (what each of
    // the native step's micro-batch threads uses).
    let mut runs: Vec<(String, usize, usize, usize, usize, bool, usize)> = Vec::new();
    for (name, nb, m, k, n, weight_layout) in cases {
        let single = nb == 1 && device.is_cpu();
        if single && threads > 1 {
            runs.push((
                format!("{SINGLE_THREAD_PREFIX}{name}"),
                nb,
                m,
                k,
                n,
                weight_layout,
                1,
            ));
        }
        runs.push((name, nb, m, k, n, weight_layout, threads));
    }
    let mut out = Vec::new();
    for (name, nb, m, k, n, weight_layout, threads) in runs {
        let (ms, reps) = if nb == 1 && device.is_cpu() {
            use bmt_kfac::linear_op::{gemm_into, MatrixView};
            let a: Vec<f32> = Tensor::randn(0f32, 1.0, (m, k), device)?
                .flatten_all()?
                .to_vec1()?;
            let b: Vec<f32> = Tensor::randn(0f32, 1.0, (k * n,), device)?.to_vec1()?;
            let mut dst = vec![0f32; m * n];
            time_ms(min_s, 5, || {
                let rhs = if weight_layout {
                    MatrixView::transposed(&b, k)
                } else {
                    MatrixView::rows(&b, n)
                };
                gemm_into(
                    &mut dst,
                    (m, n, k),
                    false,
                    MatrixView::rows(&a, k),
                    rhs,
                    threads,
                );
                std::hint::black_box(&dst);
                Ok(())
            })?
        } else {
            let (a, b) = if nb == 1 {
                let a = Tensor::randn(0f32, 1.0, (m, k), device)?;
                let b = if weight_layout {
                    Tensor::randn(0f32, 1.0, (n, k), device)?.t()?
                } else {
                    Tensor::randn(0f32, 1.0, (k, n), device)?
                };
                (a, b)
            } else {
                (
                    Tensor::randn(0f32, 1.0, (nb, m, k), device)?,
                    Tensor::randn(0f32, 1.0, (nb, k, n), device)?,
                )
            };
            time_ms(min_s, 5, || {
                std::hint::black_box(a.matmul(&b)?);
                Ok(())
            })?
        };
        let flops = 2.0 * (nb * m * k * n) as f64;
        out.push(GemmResult {
            name,
            shape: [nb, m, k, n],
            flops,
            median_ms: ms,
            gflops: flops / (ms * 1e-3) / 1e9,
            reps,
        });
    }
    Ok(out)
}

/// Fused against composite LayerNorm (normalisation) and softmax, forward + backward, at W1's
/// activation `(B, T, d)` and score `(B, H, T, T)` shapes.
fn bench_ops(c: &VitConfig, batch: usize, min_s: f64, device: &Device) -> Result<Vec<OpResult>> {
    type Op = fn(&Tensor) -> candle_core::Result<Tensor>;
    fn ln_fused(x: &Tensor) -> candle_core::Result<Tensor> {
        layer_norm_normalize(x, 1e-5)
    }
    fn ln_comp(x: &Tensor) -> candle_core::Result<Tensor> {
        layer_norm_normalize_composite(x, 1e-5)
    }
    let t = c.tokens();
    let cases: [(&str, Vec<usize>, usize, Op, Op); 2] = [
        (
            "LayerNorm",
            vec![batch, t, c.dim],
            2 * c.depth + 1,
            ln_fused,
            ln_comp,
        ),
        (
            "softmax",
            vec![batch, c.heads, t, t],
            c.depth,
            softmax_last_dim,
            softmax_last_dim_composite,
        ),
    ];
    let mut out = Vec::new();
    for (op, shape, per_step, fused, composite) in cases {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, shape.as_slice(), device)?)?;
        // A fixed random cotangent, so that the backward is not the trivial all-ones seed.
        let w = Tensor::randn(0f32, 1.0, shape.as_slice(), device)?;
        let run = |f: Op| {
            time_ms(min_s, 5, || {
                let y = f(x.as_tensor())?;
                let g = (y * &w)?.sum_all()?.backward()?;
                std::hint::black_box(g.get(&x));
                Ok(())
            })
        };
        let (fused_ms, _) = run(fused)?;
        let (composite_ms, _) = run(composite)?;
        out.push(OpResult {
            op: op.into(),
            shape,
            per_step,
            fused_ms,
            composite_ms,
        });
    }
    Ok(out)
}

/// The configuration of `w`, with bmt's defaults for the optimizer's learning rate: W1 with its
/// K-FAC defaults; W2 (`text_origin` names its data) with diagnostics off and the K-FAC defaults
/// of the GPT (expand weight sharing) at WORKLOADS.md's refresh periods k_fac = 10, k_inv = 100.
fn workload_config(w: &Workload, knobs: Knobs, text_origin: &str) -> TrainConfig {
    let mut config = match w.family {
        Family::W1 => TrainConfig::w1(),
        Family::W2 => {
            let mut c = TrainConfig::w2(text_origin);
            c.diagnostics = false;
            c
        }
    };
    config.optimizer = w.optimizer;
    config.threads = knobs.threads;
    config.backward = knobs.backward;
    if let Some(solver) = w.solver {
        config.lr = DEFAULT_LR;
        let mut k = KfacSettings::for_model(w.optimizer, &config.model);
        if w.family == Family::W2 {
            k.k_fac = W2_K_FAC;
            k.k_inv = W2_K_INV;
        } else {
            if let Some(k_inv) = knobs.w1_k_inv {
                k.k_inv = k_inv;
            }
            if let Some(k_fac) = knobs.w1_k_fac {
                k.k_fac = k_fac;
            }
        }
        if let Some(on) = knobs.eigenvalue_refresh {
            k.eigenvalue_refresh = on;
        }
        k.solver = solver.into();
        config.kfac = Some(k);
    }
    config
}

/// W2's benchmark text: the repository's README.md, or (if it is missing) seeded printable ASCII,
/// repeated to [`W2_TEXT_BYTES`], split as `bmt train --data text:FILE` splits (10% of the blocks
/// held out, split seed 0). Returns the data and a description of its origin.
fn w2_data(context: usize) -> Result<(RunData, String)> {
    let readme = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let (seed_bytes, origin) = match std::fs::read(&readme) {
        Ok(b) if !b.is_empty() => (b, "README.md".to_string()),
        _ => {
            let mut rng = ChaCha8Rng::seed_from_u64(0);
            let b = (0..4096).map(|_| rng.random_range(b' '..=b'~')).collect();
            (
                b,
                "seeded printable ASCII (README.md not found)".to_string(),
            )
        }
    };
    let bytes: Vec<u8> = seed_bytes
        .iter()
        .copied()
        .cycle()
        .take(W2_TEXT_BYTES.max(seed_bytes.len()))
        .collect();
    let origin = format!("{origin} ({} bytes) repeated", seed_bytes.len());
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let split = split_text(
        &bytes,
        &origin,
        context,
        bmt_trainer::run::TEXT_VALIDATION_FRACTION,
        &mut rng,
    )?;
    Ok((RunData::Text(split), origin))
}

/// Per-step timings of one training step, the same work as `Trainer::train_step`.
struct StepTiming {
    phases: Phases,
    kfac: Option<(KfacBreakdown, bool)>,
    outcome: StepOutcome,
}

fn stat(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(0.0)
}

/// One `Trainer::train_step`, its phases taken from the step's own timings; the second-order
/// measurement it makes every `second_order_every` steps counts as diagnostics.
fn timed_step(tr: &mut Trainer, batch: &Batch) -> Result<StepTiming> {
    let outcome = tr.train_step(batch)?;
    let t = outcome.times;
    let (precondition, update, kfac) = match &outcome.optimizer {
        None => (0.0, t.optimizer, None),
        Some(s) => {
            let (fac, sol, upd) = (
                stat(s, "time_factors_s"),
                stat(s, "time_solve_s"),
                stat(s, "time_update_s"),
            );
            let b = KfacBreakdown {
                curvature_backward_s: t.curvature_backward,
                other_s: (t.optimizer - t.curvature_backward - fac - sol - upd).max(0.0),
                factors_s: fac,
                solve_s: sol,
                factor_refresh_steps: usize::from(stat(s, "refreshed_factors") > 0.0),
                inverse_refresh_steps: usize::from(stat(s, "refreshed_inverses") > 0.0),
                cg_iterations_mean: stat(s, "cg_iterations_mean"),
                ..KfacBreakdown::default()
            };
            let ran_cg = b.cg_iterations_mean > 0.0;
            ((t.optimizer - upd).max(0.0), upd, Some((b, ran_cg)))
        }
    };
    Ok(StepTiming {
        phases: Phases {
            forward: t.forward,
            backward: t.backward,
            precondition,
            update,
            diagnostics: t.second_order,
        },
        kfac,
        outcome,
    })
}

/// What `bench_workload` measures a workload against.
struct Ceilings {
    /// The 1024³ GEMM, GFLOP/s.
    gemm_1024: f64,
    /// The faster of W2's FC₁ / FC₂ GEMMs, GFLOP/s.
    w2: f64,
}

/// A workload's freshly seeded trainer and its epoch batch order, one training step at a time
/// (`bench_workload` and the interleaved comparison).
struct Stepper<'a> {
    tr: Trainer,
    config: TrainConfig,
    data: &'a RunData,
    device: Device,
    n: usize,
    per_epoch: usize,
    /// Steps per epoch.
    spe: usize,
    batches: Vec<Vec<usize>>,
    /// Steps taken.
    i: usize,
}

impl<'a> Stepper<'a> {
    fn new(
        w: &Workload,
        data: &'a RunData,
        data_origin: &str,
        device: &Device,
        knobs: Knobs,
    ) -> Result<Self> {
        let mut config = workload_config(w, knobs, data_origin);
        bmt_trainer::device::set_matmul_threads(config.candle_threads());
        let patch = config.model.as_vit().map(|v| v.patch);
        fit_model_to_data(&mut config, data, patch);
        config.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let model = Transformer::init(config.model.clone(), &mut rng, DType::F32, device)?;
        let tr = Trainer::new(config.clone(), model, device.clone())?;
        let n = data.train().len();
        let per_epoch = data.train().epoch_len().max(config.batch_size).min(n);
        let spe = per_epoch / config.batch_size;
        if spe == 0 {
            bail!(
                "the batch size {} exceeds the training set",
                config.batch_size
            );
        }
        Ok(Self {
            tr,
            config,
            data,
            device: device.clone(),
            n,
            per_epoch,
            spe,
            batches: Vec::new(),
            i: 0,
        })
    }

    /// The next training step (and its batch), timed by [`timed_step`].
    fn step(&mut self) -> Result<(StepTiming, Batch)> {
        let (i, spe) = (self.i, self.spe);
        if i % spe == 0 {
            self.batches = epoch_batches(
                self.n,
                self.per_epoch,
                self.config.batch_size,
                self.config.seed,
                i / spe,
            );
        }
        let batch = self
            .data
            .train()
            .batch(&self.batches[i % spe], &self.device)?;
        let st = timed_step(&mut self.tr, &batch)?;
        self.i += 1;
        Ok((st, batch))
    }
}

#[allow(clippy::too_many_arguments)]
fn bench_workload(
    w: &Workload,
    data: &RunData,
    data_origin: &str,
    device: &Device,
    knobs: Knobs,
    warmup: usize,
    steps: usize,
    ceilings: &Ceilings,
    scratch: &std::path::Path,
) -> Result<WorkloadResult> {
    let mut stepper = Stepper::new(w, data, data_origin, device, knobs)?;
    let config = stepper.config.clone();
    let metrics_path = scratch.join(format!("{}.jsonl", w.name));
    let mut diag = if config.diagnostics {
        let mut diagnostics = Diagnostics::new(&config, data.test(), device)?;
        let mut metrics = MetricsFile::open(&metrics_path)?;
        diagnostics.on_start(&stepper.tr.model, &mut metrics)?;
        Some((diagnostics, metrics))
    } else {
        None
    };

    let spe = stepper.spe;
    let mut sum = Phases::default();
    let mut kb = KfacBreakdown::default();
    let mut cg_steps = 0usize;
    let mut max_step = 0.0f64;
    let mut last_loss = f64::NAN;
    // Inverse-refresh steps (warm-up included): solve seconds and K-FAC work seconds; timed
    // inverse-refresh steps' training seconds; timed non-refresh steps: count, training seconds,
    // K-FAC work seconds.
    let mut inv_solves = Vec::new();
    let mut inv_work = Vec::new();
    let mut refresh_train = Vec::new();
    let (mut plain_n, mut plain_train, mut plain_work) = (0usize, 0.0f64, 0.0f64);
    for i in 0..warmup + steps {
        let (mut st, batch) = stepper.step()?;
        if let Some((diagnostics, metrics)) = diag.as_mut() {
            let td = Instant::now();
            diagnostics.on_step(&stepper.tr, &batch, &st.outcome, metrics)?;
            st.phases.diagnostics += td.elapsed().as_secs_f64();
        }
        last_loss = st.outcome.loss;
        let work = |b: &KfacBreakdown| b.curvature_backward_s + b.other_s + b.factors_s + b.solve_s;
        if let Some((b, _)) = &st.kfac {
            if b.inverse_refresh_steps > 0 {
                inv_solves.push(b.solve_s);
                inv_work.push(work(b));
                if i >= warmup {
                    refresh_train.push(st.phases.train());
                }
            }
        }
        if i < warmup {
            continue;
        }
        sum.add(&st.phases);
        max_step = max_step.max(st.phases.train());
        if let Some((b, ran_cg)) = st.kfac {
            kb.curvature_backward_s += b.curvature_backward_s;
            kb.other_s += b.other_s;
            kb.factors_s += b.factors_s;
            kb.solve_s += b.solve_s;
            kb.factor_refresh_steps += b.factor_refresh_steps;
            kb.inverse_refresh_steps += b.inverse_refresh_steps;
            if b.inverse_refresh_steps == 0 {
                plain_n += 1;
                plain_train += st.phases.train();
                plain_work += work(&b);
            }
            if ran_cg {
                kb.cg_iterations_mean += b.cg_iterations_mean;
                cg_steps += 1;
            }
        }
    }
    // The end-of-epoch diagnostics, once, amortised over an epoch's steps.
    let mut on_epoch_s = 0.0;
    if let Some((mut diagnostics, metrics)) = diag {
        let te = Instant::now();
        diagnostics.on_epoch(&stepper.tr, 1)?;
        on_epoch_s = te.elapsed().as_secs_f64();
        sum.diagnostics += on_epoch_s * steps as f64 / spe as f64;
        drop(metrics);
        let _ = std::fs::remove_file(&metrics_path);
    }
    if cg_steps > 0 {
        kb.cg_iterations_mean /= cg_steps as f64;
    }

    let total = sum.total().max(1e-12);
    let share = Phases {
        forward: sum.forward / total,
        backward: sum.backward / total,
        precondition: sum.precondition / total,
        update: sum.update / total,
        diagnostics: sum.diagnostics / total,
    };
    let train = sum.train().max(1e-12);
    let steps_per_s = steps as f64 / train;
    let ms_per_step = 1e3 * train / steps as f64;
    let tokens = config.model.tokens();
    let (flops, ceiling, ceiling_gflops) = match w.family {
        Family::W1 => (
            vit_flops_per_step(
                config.model.as_vit().context("W1 is a ViT")?,
                config.batch_size,
            ),
            CEILING_GEMM.to_string(),
            ceilings.gemm_1024,
        ),
        Family::W2 => (
            gpt_flops_per_step(
                config.model.as_gpt().context("W2 is a GPT")?,
                config.batch_size,
            ),
            "W2 FC₁/FC₂ GEMM".to_string(),
            ceilings.w2,
        ),
    };
    if let Some(k) = &config.kfac {
        kb.k_fac = k.k_fac;
        kb.k_inv = k.k_inv;
        kb.eigenvalue_refresh = k.eigenvalue_refresh && k.solver == "eigen";
        if inv_solves.is_empty() {
            // A solver without eigenbases / inverses (CG): nothing to amortise.
            kb.amortised_ms_per_step = Some(ms_per_step);
        } else {
            let inv_ms = 1e3 * inv_solves.iter().sum::<f64>() / inv_solves.len() as f64;
            kb.inverse_refresh_solve_ms = Some(inv_ms);
            let mean = |v: &[f64]| 1e3 * v.iter().sum::<f64>() / v.len().max(1) as f64;
            let k_inv = k.k_inv.max(1) as f64;
            kb.amortised_ms_per_step = Some(if plain_n == 0 {
                ms_per_step
            } else {
                let pt = 1e3 * plain_train / plain_n as f64;
                if refresh_train.is_empty() {
                    let pw = 1e3 * plain_work / plain_n as f64;
                    pt + (mean(&inv_work) - pw).max(0.0) / k_inv
                } else {
                    pt + (mean(&refresh_train) - pt) / k_inv
                }
            });
        }
    }
    let achieved = flops * steps_per_s / 1e9;
    Ok(WorkloadResult {
        name: w.name.into(),
        optimizer: config.optimizer.to_string(),
        solver: w.solver.map(str::to_string),
        warmup_steps: warmup,
        timed_steps: steps,
        batch_size: config.batch_size,
        tokens_per_sample: tokens,
        data: data.description().to_string(),
        diagnostics: config.diagnostics,
        steps_per_s,
        tokens_per_s: steps_per_s * (config.batch_size * tokens) as f64,
        ms_per_step,
        max_ms_per_step: 1e3 * max_step,
        diagnostics_ms_per_step: 1e3 * sum.diagnostics / steps as f64,
        phases_s: sum,
        phase_share: share,
        on_epoch_s,
        steps_per_epoch: spe,
        kfac: w.solver.map(|_| kb),
        model_flops_per_step: flops,
        achieved_gflops: achieved,
        ceiling,
        ceiling_gflops,
        ceiling_fraction: achieved / ceiling_gflops,
        fraction_of_1024_gemm: achieved / ceilings.gemm_1024,
        peak_memory_mib: peak_memory_mib(),
        final_loss: last_loss,
    })
}

/// One workload's rounds in the interleaved comparison.
#[derive(Debug, Clone, Serialize)]
struct InterleavedResult {
    name: String,
    /// Training ms per step of each round (one whole refresh cycle of `cycle` steps).
    round_ms_per_step: Vec<f64>,
    /// Median over the rounds.
    median_ms_per_step: f64,
    /// Each round's ms/step divided by the reference workload's in the same round.
    ratios: Vec<f64>,
    median_ratio: f64,
    /// Mean ms/step over all rounds divided by the reference's.
    mean_ratio: f64,
}

/// The interleaved comparison of the W1 workloads (`--rounds`).
#[derive(Debug, Clone, Serialize)]
struct Interleaved {
    /// The workload every ratio divides by (W1-adamw).
    reference: String,
    rounds: usize,
    /// Steps per round and workload: one `k_inv` cycle, so each round holds one factor and one
    /// eigenbasis refresh of the K-FAC workloads.
    cycle: usize,
    warmup: usize,
    results: Vec<InterleavedResult>,
}

/// Step time ratios that machine drift cannot bias: the W1 workloads train side by side in one
/// process, one refresh cycle (`cycle` steps) each in turn per round, the order rotated every
/// round, without the per-step diagnostics (which the training time excludes anyway); each round's training ms/step is divided by the reference's of the
/// same round. Sequential workloads (the main table) are minutes apart, and on a shared 2-core
/// machine the speed moves by 10–30 % in that time (docs/BENCHMARKS.md).
fn interleaved(
    selected: &[&Workload],
    data: &RunData,
    device: &Device,
    knobs: Knobs,
    warmup: usize,
    rounds: usize,
    cycle: usize,
) -> Result<Interleaved> {
    let mut steppers = Vec::new();
    for w in selected {
        let mut s = Stepper::new(w, data, "digits", device, knobs)?;
        for _ in 0..warmup {
            s.step()?;
        }
        steppers.push((w.name, s));
    }
    let n = steppers.len();
    let mut ms = vec![Vec::with_capacity(rounds); n];
    for r in 0..rounds {
        for j in 0..n {
            let idx = (j + r) % n;
            let s = &mut steppers[idx].1;
            let mut train = 0.0;
            for _ in 0..cycle {
                train += s.step()?.0.phases.train();
            }
            ms[idx].push(1e3 * train / cycle as f64);
        }
    }
    let reference = ms[0].clone();
    let results = steppers
        .iter()
        .zip(&ms)
        .map(|((name, _), m)| {
            let ratios: Vec<f64> = m.iter().zip(&reference).map(|(a, b)| a / b).collect();
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
            InterleavedResult {
                name: name.to_string(),
                round_ms_per_step: m.clone(),
                median_ms_per_step: median(m.clone()),
                median_ratio: median(ratios.clone()),
                mean_ratio: mean(m) / mean(&reference),
                ratios,
            }
        })
        .collect();
    Ok(Interleaved {
        reference: steppers[0].0.to_string(),
        rounds,
        cycle,
        warmup,
        results,
    })
}

fn print_interleaved(i: &Interleaved) {
    println!();
    println!(
        "## Interleaved W1 step times ({} rounds of {} steps per workload, order rotated each round, after {} warm-up steps)",
        i.rounds, i.cycle, i.warmup
    );
    println!();
    println!(
        "| workload | ms/step (median of rounds) | ratio to {} (median) | min | max | mean-time ratio |",
        i.reference
    );
    println!("|---|---|---|---|---|---|");
    for r in &i.results {
        let (lo, hi) = r
            .ratios
            .iter()
            .fold((f64::INFINITY, 0.0f64), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            });
        println!(
            "| {} | {:.2} | {:.3} | {:.3} | {:.3} | {:.3} |",
            r.name, r.median_ms_per_step, r.median_ratio, lo, hi, r.mean_ratio
        );
    }
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

fn opt_mib(m: Option<f64>) -> String {
    m.map_or_else(|| "n/a".into(), |v| format!("{v:.0}"))
}

/// The rows of the workload table (the same columns for W1 and W2).
fn print_workload_rows(ws: &[&WorkloadResult]) {
    println!(
        "| workload | steps | steps/s | tokens/s | ms/step | max ms | forward | backward | precondition | update | diagnostics | GFLOP/step | GFLOP/s | of ceiling | peak MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for w in ws {
        println!(
            "| {} | {}+{} | {:.2} | {:.0} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {:.3} | {:.2} | {} | {} |",
            w.name,
            w.warmup_steps,
            w.timed_steps,
            w.steps_per_s,
            w.tokens_per_s,
            w.ms_per_step,
            w.max_ms_per_step,
            pct(w.phase_share.forward),
            pct(w.phase_share.backward),
            pct(w.phase_share.precondition),
            pct(w.phase_share.update),
            if w.diagnostics {
                pct(w.phase_share.diagnostics)
            } else {
                "off".into()
            },
            w.model_flops_per_step / 1e9,
            w.achieved_gflops,
            pct(w.ceiling_fraction),
            opt_mib(w.peak_memory_mib),
        );
    }
}

fn print_report(r: &Report) {
    println!("# brownian-transformer benchmark");
    println!();
    println!(
        "{} UTC · {} · nproc {} · {} candle thread(s) · candle {}{}",
        r.date_utc,
        r.machine,
        r.nproc,
        r.threads,
        r.candle,
        if r.quick {
            " · **--quick: smoke test, timings not meaningful**"
        } else {
            ""
        }
    );
    println!();
    println!(
        "## GEMM (f32, median; single products: the gemm crate, candle's CPU kernel, on {} thread(s), and `1 thread (faer)`: `gemm_into` on one thread, the kernels of each native-step thread; QKᵀ: candle's batched matmul)",
        r.threads
    );
    println!();
    println!("| product | batch·m·k·n | ms | GFLOP/s | reps |");
    println!("|---|---|---|---|---|");
    for g in &r.gemm {
        println!(
            "| {} | {}·{}·{}·{} | {:.3} | {:.1} | {} |",
            g.name, g.shape[0], g.shape[1], g.shape[2], g.shape[3], g.median_ms, g.gflops, g.reps
        );
    }
    println!();
    let w1: Vec<&WorkloadResult> = r
        .workloads
        .iter()
        .filter(|w| w.name.starts_with("W1"))
        .collect();
    let w2: Vec<&WorkloadResult> = r
        .workloads
        .iter()
        .filter(|w| w.name.starts_with("W2"))
        .collect();
    let peak = if r.peak_reset {
        ", reset before each workload to the current RSS (which keeps the pages freed by earlier \
         workloads, see bmt_trainer::alloc)"
    } else {
        " of the process so far (could not reset it)"
    };
    if !w1.is_empty() {
        println!("## W1 training steps (batch 64, 17 tokens, digits)");
        println!();
        print_workload_rows(&w1);
        println!();
        println!(
            "steps/s, tokens/s (batch·17/s), ms/step and GFLOP/s are the training step (forward, \
             backward, preconditioning, update) without diagnostics; the phase shares are of \
             training step + diagnostics (per-step snapshots measured, one end-of-epoch \
             diagnostics amortised over an epoch's steps). GFLOP/step is the analytic model count \
             (3 × forward matmuls, every row of every block; the ViT's last block runs on its CLS row \
             only, so W1 does about 82 % of it), so K-FAC's extra work lowers its GFLOP/s. Ceiling: the 1024³ \
             GEMM, {:.1} GFLOP/s. Peak memory: VmHWM{peak}.",
            r.gemm_ceiling_gflops,
        );
        println!();
    }
    if !w2.is_empty() {
        println!("## W2 training steps (byte-level GPT, batch 16, 256 tokens, diagnostics off)");
        println!();
        print_workload_rows(&w2);
        println!();
        println!(
            "Data: {}; the bytes do not matter for throughput (WORKLOADS.md). Diagnostics are off \
             for W2 (0% above): its numbers are the training step alone. tokens/s = batch·256 \
             steps/s. GFLOP/step = 6·N·B·T + 12·L·B·T²·d (N = 4.78 M non-embedding matmul \
             weights; full T×T attention; embedding lookups not counted). Ceiling: the faster of \
             W2's FC₁/FC₂ GEMMs, {:.1} GFLOP/s (the 1024³ GEMM: {:.1}). K-FAC / CG-FAC: factors \
             every 10 steps, eigenbases / inverses every 100 (the K-FAC table's cycle-amortised \
             ms/step adds the latter's cost). Peak memory: VmHWM{peak}.",
            r.w2_data.as_deref().unwrap_or("none"),
            r.w2_gemm_ceiling_gflops,
            r.gemm_ceiling_gflops,
        );
        println!();
        for w in &w2 {
            println!(
                "W2 goal (issue: model FLOP/s ≥ {} of the Candle f32 GEMM rate at W2's shapes): \
                 {} at {} ({} of the 1024³ GEMM) → {}.",
                pct(r.w2_goal_fraction),
                w.name,
                pct(w.ceiling_fraction),
                pct(w.fraction_of_1024_gemm),
                if w.ceiling_fraction >= r.w2_goal_fraction {
                    "met"
                } else {
                    "not met"
                }
            );
        }
        println!();
    }
    if r.workloads.iter().any(|w| w.kfac.is_some()) {
        println!("## K-FAC preconditioning, ms per timed step");
        println!();
        println!("| workload | curvature backward | other | factors | solve | factor refreshes (every k_fac) | inverse refreshes (every k_inv) | eigenvalue refresh | inverse-refresh solve ms | ms/step over a k_inv cycle | mean CG iterations |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        for w in &r.workloads {
            if let Some(k) = &w.kfac {
                let s = w.timed_steps as f64;
                println!(
                    "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {} ({}) | {} ({}) | {} | {} | {} | {:.1} |",
                    w.name,
                    1e3 * k.curvature_backward_s / s,
                    1e3 * k.other_s / s,
                    1e3 * k.factors_s / s,
                    1e3 * k.solve_s / s,
                    k.factor_refresh_steps,
                    k.k_fac,
                    k.inverse_refresh_steps,
                    k.k_inv,
                    if k.eigenvalue_refresh { "on" } else { "off" },
                    k.inverse_refresh_solve_ms
                        .map_or_else(|| "n/a".into(), |v| format!("{v:.1}")),
                    k.amortised_ms_per_step
                        .map_or_else(|| "n/a".into(), |v| format!("{v:.1}")),
                    k.cg_iterations_mean
                );
            }
        }
        println!();
        println!(
            "Inverse-refresh solve: the mean solve time of the steps that recomputed eigenbases / \
             inverses, warm-up included (step 0 always does). ms/step over a k_inv cycle: the timed \
             steps without such a refresh, plus the excess of the timed steps with one over them \
             divided by k_inv (without a timed refresh: the excess K-FAC work of the warm-up's)."
        );
        println!();
    }
    println!("## Fused vs composite LayerNorm / softmax (forward + backward, median)");
    println!();
    println!("Per W1 step: {}", r.fused_vs_composite_step);
    println!();
    println!("| op | shape | per step | fused ms | composite ms | composite/fused | est. ms/step saved |");
    println!("|---|---|---|---|---|---|---|");
    for o in &r.fused_vs_composite_ops {
        println!(
            "| {} | {:?} | {} | {:.3} | {:.3} | {:.2}× | {:.2} |",
            o.op,
            o.shape,
            o.per_step,
            o.fused_ms,
            o.composite_ms,
            o.composite_ms / o.fused_ms,
            (o.composite_ms - o.fused_ms) * o.per_step as f64
        );
    }
    println!();
    println!(
        "Peak memory before the first workload (data, GEMM, ops) {} MiB; wall {:.1} s.",
        opt_mib(r.setup_peak_memory_mib),
        r.wall_s
    );
}

fn main() -> std::process::ExitCode {
    bmt_trainer::alloc::keep_freed_memory();
    match bench(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn bench(args: Args) -> Result<()> {
    // Before any tensor work: candle reads the thread count once for its elementwise pool. With
    // the native step that pool gets one thread (as in `bmt train`, TrainConfig::candle_threads);
    // the GEMM ceilings are measured on `--threads`, each workload's candle matmuls then run on
    // its config's candle thread count.
    bmt_trainer::device::set_cpu_threads(args.threads)?;
    if args.backward == BackwardKind::Native {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    let start = Instant::now();
    let (warmup, steps, w2_warmup, w2_steps) = if args.quick {
        (
            args.warmup.unwrap_or(2),
            args.steps.unwrap_or(10),
            args.w2_warmup.unwrap_or(1),
            args.w2_steps.unwrap_or(2),
        )
    } else {
        (
            args.warmup.unwrap_or(10),
            args.steps.unwrap_or(100),
            args.w2_warmup.unwrap_or(3),
            args.w2_steps.unwrap_or(10),
        )
    };
    if steps == 0 {
        bail!("--steps must be at least 1");
    }
    if w2_steps == 0 {
        bail!("--w2-steps must be at least 1");
    }
    if args.k_inv == Some(0) {
        bail!("--k-inv must be at least 1");
    }
    if args.k_fac == Some(0) {
        bail!("--k-fac must be at least 1");
    }
    let knobs = Knobs {
        threads: args.threads,
        backward: args.backward,
        w1_k_inv: args.k_inv,
        w1_k_fac: args.k_fac,
        eigenvalue_refresh: args.eigenvalue_refresh,
    };
    let selected: Vec<&Workload> = if args.only.is_empty() {
        WORKLOADS.iter().collect()
    } else {
        args.only
            .iter()
            .map(|n| {
                WORKLOADS
                    .iter()
                    .find(|w| w.name.eq_ignore_ascii_case(n))
                    .with_context(|| {
                        let names: Vec<&str> = WORKLOADS.iter().map(|w| w.name).collect();
                        format!("--only {n}: use one of {}", names.join(", "))
                    })
            })
            .collect::<Result<_>>()?
    };
    let min_s = if args.quick { 0.05 } else { 1.0 };
    let device = Device::Cpu;
    let base = TrainConfig::w1();
    let data = load_data(&base).context("loading the digits")?;
    let base2 = TrainConfig::w2("README.md");
    let gpt = base2.model.as_gpt().context("W2 is a GPT")?;
    let text = if selected.iter().any(|w| w.family == Family::W2) {
        Some(w2_data(gpt.context).context("preparing W2's text")?)
    } else {
        None
    };

    eprintln!("GEMM ...");
    let w1 = base.model.as_vit().context("W1 is a ViT")?;
    let gemm = bench_gemm(
        w1,
        base.batch_size,
        gpt,
        base2.batch_size,
        min_s,
        (&device, args.threads),
    )?;
    let ceilings = Ceilings {
        gemm_1024: gemm
            .iter()
            .find(|g| g.name == CEILING_GEMM)
            .map_or(f64::NAN, |g| g.gflops),
        w2: gemm
            .iter()
            .filter(|g| g.name.starts_with(W2_GEMM_PREFIX))
            .map(|g| g.gflops)
            .fold(f64::NAN, f64::max),
    };
    eprintln!("fused vs composite ops ...");
    let ops = bench_ops(w1, base.batch_size, min_s, &device)?;

    let scratch = std::env::temp_dir().join(format!("bmt-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let setup_peak_memory_mib = peak_memory_mib();
    let mut peak_reset = true;
    let mut workloads = Vec::new();
    let selected_names: Vec<&str> = selected.iter().map(|w| w.name).collect();
    for w in selected {
        let (wu, st, d, origin) = match (w.family, &text) {
            (Family::W1, _) => (warmup, steps, &data, "digits"),
            (Family::W2, Some((d, origin))) => (w2_warmup, w2_steps, d, origin.as_str()),
            (Family::W2, None) => bail!("internal: W2's text was not prepared"),
        };
        eprintln!("{} ({wu} warm-up + {st} timed steps) ...", w.name);
        peak_reset &= reset_peak_memory();
        workloads.push(bench_workload(
            w, d, origin, &device, knobs, wu, st, &ceilings, &scratch,
        )?);
        bmt_trainer::device::set_matmul_threads(args.threads);
    }
    let _ = std::fs::remove_dir_all(&scratch);

    let rounds = args.rounds.unwrap_or(if args.quick { 2 } else { 24 });
    let w1: Vec<&Workload> = WORKLOADS
        .iter()
        .filter(|w| w.family == Family::W1 && selected_names.contains(&w.name))
        .collect();
    let interleaved = if rounds > 0 && w1.len() > 1 && w1[0].name == "W1-adamw" {
        eprintln!("interleaved W1 comparison ({rounds} rounds) ...");
        let cycle = knobs
            .w1_k_inv
            .unwrap_or(KfacSettings::defaults(OptimizerKind::Kfac).k_inv)
            as usize;
        let r = interleaved(&w1, &data, &device, knobs, warmup, rounds, cycle)?;
        bmt_trainer::device::set_matmul_threads(args.threads);
        Some(r)
    } else {
        None
    };

    let report = Report {
        date_utc: date_utc(),
        machine: machine(),
        nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
        threads: args.threads,
        quick: args.quick,
        candle: "0.11.1",
        peak_reset,
        gemm,
        gemm_ceiling_gflops: ceilings.gemm_1024,
        w2_gemm_ceiling_gflops: ceilings.w2,
        workloads,
        interleaved,
        w2_goal_fraction: W2_GOAL_FRACTION,
        w2_data: text.map(|(d, _)| d.description().to_string()),
        fused_vs_composite_ops: ops,
        fused_vs_composite_step: STEP_SWITCH_NOTE,
        setup_peak_memory_mib,
        wall_s: start.elapsed().as_secs_f64(),
    };
    print_report(&report);
    if let Some(i) = &report.interleaved {
        print_interleaved(i);
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
