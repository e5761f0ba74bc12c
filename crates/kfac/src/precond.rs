//! The K-FAC / CG-FAC preconditioner (MATH §4–§5) as a gradient transform, and [`KfacOptimizer`],
//! its composition with SGD-with-momentum (preconditioned layers) and AdamW (everything else).

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Tensor, Var, D};
use rand::Rng;

use crate::cg::{conjugate_gradient, conjugate_gradient_from, CgSettings, CgVector, WarmStart};
use crate::error::{KfacError, Result};
use crate::factors::{
    all_finite, fold, frobenius, kronecker_quadratic_form, CurvatureRows, WeightSharing,
};
use crate::host::{batch_factors, diagonal_in_basis, on_host, Folded, HostEig, HostFactors};
use crate::linalg::{damped_inverse, eigh, eigh_to_host};
use crate::optim::{AdamW, AdamWConfig, GradientSource, NamedParams, Optimizer, SgdMomentum};
use crate::tracked::{LayerCapture, TrackedLinear};

/// How the damped Kronecker system is solved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Solver {
    /// Eigendecompositions `A = Q_A Λ_A Q_Aᵀ`, `G = Q_G Λ_G Q_Gᵀ` (faer, host, every `k_inv`
    /// steps); `U = Q_G[(Q_Gᵀ∇Q_A) ⊘ (λ_Gλ_Aᵀ + λ)]Q_Aᵀ` (exact for either damping kind).
    #[default]
    Eigen,
    /// Damped inverses by Cholesky (every `k_inv` steps): `U = (G+δ_G I)⁻¹ ∇ (A+δ_A I)⁻¹`; needs
    /// [`DampingKind::Factored`].
    Inverse,
    /// CG-FAC on the factors: CG on `G X A + λX = ∇` (MATH §5), matrix products only.
    CgFactor,
    /// Matrix-free CG-FAC: the same CG with `G X A = g_s a_s Ĝᵀ((ĜX)Āᵀ)Ā` from the batch's
    /// per-sample rows; no factor is formed and no running average is kept (the curvature is the
    /// last refresh batch's).
    CgMatrixFree,
}

/// How the damping `λ` enters the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DampingKind {
    /// `A ⊗ G + λI`: exact Tikhonov damping (Eigen and both CG solvers).
    #[default]
    Tikhonov,
    /// `(A + π√λ I) ⊗ (G + √λ/π I)`, `π = sqrt((tr A/k)/(tr G/m))` (Martens & Grosse 2015, §6.3).
    Factored,
}

/// Which labels the curvature backward used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FisherType {
    /// The true labels (the training backward): the empirical Fisher.
    Empirical,
    /// Labels drawn from the model's predictive distribution ([`sample_labels`]), one extra
    /// backward on refresh steps: the true Fisher that K-FAC approximates.
    #[default]
    MonteCarlo,
}

/// Settings of the preconditioner and its outer SGD. `Default` follows kfac-pytorch's
/// (damping 1e-3, EMA 0.95, KL clip 1e-3, lr 0.1, momentum 0.9, refresh 10 / 100) and MATH §5's CG
/// (tol 1e-2, 10 iterations, warm start), with the eigenvalue refresh between eigenbasis
/// refreshes on; they are not tuned on this project's workloads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KfacConfig {
    /// The solver.
    pub solver: Solver,
    /// Damping `λ` (the starting value when adaptive).
    pub damping: f64,
    /// Tikhonov or factored damping.
    pub damping_kind: DampingKind,
    /// Levenberg–Marquardt adaptation of `λ` through [`KfacOptimizer::adapt_damping`].
    pub adaptive_damping: bool,
    /// Lower bound of adaptive `λ`.
    pub min_damping: f64,
    /// Upper bound of adaptive `λ`.
    pub max_damping: f64,
    /// Levenberg–Marquardt factor `ω ∈ (0,1)`: `λ ← ωλ` when `ρ > 3/4`, `λ ← λ/ω` when `ρ < 1/4`.
    pub damping_factor: f64,
    /// EMA decay `β`: `A ← βA + (1−β)A_batch` (the first batch initialises).
    pub ema_decay: f64,
    /// Factor refresh period `k_fac` in steps.
    pub k_fac: u64,
    /// Eigenbasis / inverse refresh period `k_inv` in steps.
    pub k_inv: u64,
    /// [`Solver::Eigen`] only: on a factor refresh that is not an eigenbasis refresh (`k_inv >
    /// k_fac`), re-estimate the eigenvalues in the kept bases, `λ_A = diag(Q_Aᵀ A Q_A)`,
    /// `λ_G = diag(Q_Gᵀ G Q_G)`: the diagonal nearest the new factor in the Frobenius norm for the
    /// old basis (the eigenvalue correction of EKFAC, George et al. 2018, applied per factor).
    /// One `n³` product per factor instead of an `O(n³)` decomposition with a large constant, so
    /// the bases can be refreshed rarely while the curvature's scale follows the factors.
    pub eigenvalue_refresh: bool,
    /// Empirical or Monte-Carlo Fisher (tells the trainer which backward to capture).
    pub fisher_type: FisherType,
    /// Expand or reduce for layers applied over sequences.
    pub weight_sharing: WeightSharing,
    /// KL clipping constant `c` (Ba et al. 2017), `None` to disable.
    pub kl_clip: Option<f64>,
    /// CG relative squared-residual tolerance.
    pub cg_tol: f64,
    /// CG iteration cap.
    pub cg_max_iters: usize,
    /// Start CG from the previous step's solution.
    pub warm_start: bool,
    /// Learning rate `η` of the outer SGD.
    pub lr: f64,
    /// Momentum `μ` of the outer SGD.
    pub momentum: f64,
    /// L2 weight decay of the outer SGD (added to the preconditioned gradient).
    pub weight_decay: f64,
}

impl Default for KfacConfig {
    fn default() -> Self {
        Self {
            solver: Solver::Eigen,
            damping: 1e-3,
            damping_kind: DampingKind::Tikhonov,
            adaptive_damping: false,
            min_damping: 1e-6,
            max_damping: 1e2,
            damping_factor: 0.95,
            ema_decay: 0.95,
            k_fac: 10,
            k_inv: 100,
            eigenvalue_refresh: true,
            fisher_type: FisherType::MonteCarlo,
            weight_sharing: WeightSharing::Expand,
            kl_clip: Some(1e-3),
            cg_tol: 1e-2,
            cg_max_iters: 10,
            warm_start: true,
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.0,
        }
    }
}

fn invalid(name: &'static str, value: f64, hint: &'static str) -> KfacError {
    KfacError::InvalidConfig {
        name,
        value: value.to_string(),
        hint,
    }
}

impl KfacConfig {
    /// Checks every range and the solver/damping combination.
    pub fn validate(&self) -> Result<()> {
        let pos = |v: f64| v > 0.0 && v.is_finite();
        if !pos(self.damping) {
            return Err(invalid(
                "damping",
                self.damping,
                "a finite value > 0 (CG needs λ > 0)",
            ));
        }
        if !pos(self.min_damping) || self.min_damping > self.max_damping || !pos(self.max_damping) {
            return Err(invalid(
                "min_damping",
                self.min_damping,
                "0 < min_damping ≤ max_damping",
            ));
        }
        if !(self.damping_factor > 0.0 && self.damping_factor < 1.0) {
            return Err(invalid(
                "damping_factor",
                self.damping_factor,
                "a value in (0, 1)",
            ));
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return Err(invalid("ema_decay", self.ema_decay, "a value in [0, 1)"));
        }
        if self.k_fac == 0 {
            return Err(invalid("k_fac", 0.0, "a period ≥ 1"));
        }
        if self.k_inv == 0 {
            return Err(invalid("k_inv", 0.0, "a period ≥ 1"));
        }
        if let Some(c) = self.kl_clip {
            if !pos(c) {
                return Err(invalid("kl_clip", c, "a finite value > 0, or None"));
            }
        }
        if !pos(self.cg_tol) {
            return Err(invalid("cg_tol", self.cg_tol, "a finite value > 0"));
        }
        if self.cg_max_iters == 0 {
            return Err(invalid("cg_max_iters", 0.0, "at least 1"));
        }
        if !pos(self.lr) {
            return Err(invalid("lr", self.lr, "a finite value > 0"));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(invalid("momentum", self.momentum, "a value in [0, 1)"));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(invalid(
                "weight_decay",
                self.weight_decay,
                "a finite value ≥ 0",
            ));
        }
        if self.solver == Solver::Inverse && self.damping_kind == DampingKind::Tikhonov {
            return Err(KfacError::Incompatible(
                "Solver::Inverse cannot apply Tikhonov damping to a Kronecker product; use \
                 DampingKind::Factored, or Solver::Eigen / Solver::CgFactor for exact Tikhonov"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// A layer to precondition: its name and its weight `(m, n)` and optional bias `(m)` variables.
#[derive(Debug, Clone)]
pub struct PreconditionedLayer {
    /// The name; captures must carry the same name, parameters are keyed `{name}.weight/.bias`.
    pub name: String,
    /// Weight `(m, n)`.
    pub weight: Var,
    /// Bias `(m)`, folded in as the last column of `W̄ = [W b]`.
    pub bias: Option<Var>,
}

impl PreconditionedLayer {
    /// The layer of a [`TrackedLinear`] (same name and variables).
    pub fn from_tracked(layer: &TrackedLinear) -> Self {
        Self {
            name: layer.name().to_string(),
            weight: layer.weight().clone(),
            bias: layer.bias().cloned(),
        }
    }
}

/// What one step did: solver work, every caught breakdown, and timings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KfacStepStats {
    /// The step index (0-based) this was.
    pub step: u64,
    /// Mean CG iterations over the layers solved by CG (0 for the direct solvers).
    pub cg_iterations_mean: f64,
    /// Largest CG iteration count.
    pub cg_iterations_max: usize,
    /// CG breakdowns (`⟨p,Mp⟩ ≤ 0`, non-finite, or `ρ' > ρ₀`), each followed by a jittered retry.
    pub cg_breakdowns: usize,
    /// Decompositions that failed on the plain factor (retried with jitter).
    pub decomposition_failures: usize,
    /// Layers whose update fell back to the plain gradient (or was skipped for a non-finite gradient).
    pub fallbacks: usize,
    /// Batch factors (or rows) with NaN/∞, discarded.
    pub non_finite_factors: usize,
    /// KL-clipping scale `ν` applied to every preconditioned update.
    pub kl_scale: f64,
    /// Damping `λ` used.
    pub damping: f64,
    /// Layers whose factors (or rows) were refreshed.
    pub refreshed_factors: usize,
    /// Layers whose eigenbases or inverses were recomputed.
    pub refreshed_inverses: usize,
    /// Quadratic-model change `Σ ⟨∇W̄, δ⟩ + ½⟨δ, GδA⟩` of the preconditioned layers' actual
    /// update `δ` (computed only with adaptive damping; 0 otherwise).
    pub predicted_change: f64,
    /// Seconds spent forming and averaging factors.
    pub time_factors: f64,
    /// Seconds spent in decompositions, solves and KL clipping.
    pub time_solve: f64,
    /// Seconds spent applying the SGD and AdamW updates.
    pub time_update: f64,
}

#[derive(Debug, Clone)]
struct Eig {
    qa: Tensor,
    la: Tensor,
    qg: Tensor,
    lg: Tensor,
    /// The same on the host in `f32` for the direct solve: set by an `f32` refresh, or made on
    /// first use after a state load (`None`: the factors are not `f32` CPU tensors, and the solve
    /// uses candle ops).
    host: std::sync::OnceLock<Option<HostEig>>,
}

impl Eig {
    fn new(qa: Tensor, la: Tensor, qg: Tensor, lg: Tensor) -> Self {
        Self {
            qa,
            la,
            qg,
            lg,
            host: std::sync::OnceLock::new(),
        }
    }

    /// From the host buffers of an `f32` refresh, with tensors on the CPU for the state.
    fn from_host(h: HostEig, (m, k): (usize, usize)) -> Result<Self> {
        let cpu = &candle_core::Device::Cpu;
        let e = Self::new(
            Tensor::from_slice(&h.qa, (k, k), cpu)?,
            Tensor::from_slice(&h.la, k, cpu)?,
            Tensor::from_slice(&h.qg, (m, m), cpu)?,
            Tensor::from_slice(&h.lg, m, cpu)?,
        );
        // A fresh cell: the set cannot fail.
        let _ = e.host.set(Some(h));
        Ok(e)
    }

    fn host(&self) -> Option<&HostEig> {
        self.host
            .get_or_init(|| {
                if ![&self.qa, &self.la, &self.qg, &self.lg]
                    .into_iter()
                    .all(on_host)
                {
                    return None;
                }
                let v = |t: &Tensor| t.flatten_all().and_then(|t| t.to_vec1::<f32>()).ok();
                Some(HostEig {
                    qa: v(&self.qa)?,
                    la: v(&self.la)?,
                    qg: v(&self.qg)?,
                    lg: v(&self.lg)?,
                })
            })
            .as_ref()
    }
}

#[derive(Debug, Clone)]
struct Inv {
    a_inv: Tensor,
    g_inv: Tensor,
    damping: f64,
}

/// Folds one capture into `layer`'s factors (or rows, matrix-free): `Ok(false)` when the batch
/// rows hold a NaN or ±∞ and were discarded.
fn fold_capture(layer: &mut LayerState, cap: &LayerCapture, cfg: &KfacConfig) -> Result<bool> {
    let host = cfg.solver != Solver::CgMatrixFree
        && on_host(&cap.input)
        && on_host(&cap.output_grad)
        && on_host(layer.spec.weight.as_tensor());
    if host {
        return fold_capture_on_host(layer, cap, cfg);
    }
    let rows = CurvatureRows::from_capture(cap, cfg.weight_sharing)?.narrow_a(layer.k)?;
    if rows.a_rows.dim(1)? != layer.k || rows.g_rows.dim(1)? != layer.m {
        return Err(KfacError::Shape {
            what: format!("capture of layer `{}`", cap.name),
            expected: format!("input (…, {}) and output_grad (…, {})", layer.k, layer.m),
            found: format!("{:?} and {:?}", cap.input.dims(), cap.output_grad.dims()),
        });
    }
    let rows = CurvatureRows {
        a_rows: rows.a_rows.to_dtype(layer.spec.weight.dtype())?,
        g_rows: rows.g_rows.to_dtype(layer.spec.weight.dtype())?,
        ..rows
    };
    if !all_finite(&rows.a_rows)? || !all_finite(&rows.g_rows)? {
        return Ok(false);
    }
    let traces = rows.traces()?;
    if cfg.solver == Solver::CgMatrixFree {
        layer.traces = traces;
        layer.rows = Some(rows);
        layer.warm_product = None;
    } else {
        let (a, g) = rows.factors()?;
        let beta = cfg.ema_decay;
        let ema = |old: &Option<Tensor>, new: Tensor| -> Result<Tensor> {
            Ok(match old {
                Some(o) => ((o * beta)? + (new * (1.0 - beta))?)?,
                None => new,
            })
        };
        layer.traces = match layer.a {
            Some(_) => (
                beta * layer.traces.0 + (1.0 - beta) * traces.0,
                beta * layer.traces.1 + (1.0 - beta) * traces.1,
            ),
            None => traces,
        };
        layer.a = Some(ema(&layer.a, a)?);
        layer.g = Some(ema(&layer.g, g)?);
        layer.host_factors = None;
        layer.eigenvalues_stale = true;
        layer.warm_product = None;
    }
    Ok(true)
}

/// [`fold_capture`] for `f32` CPU layers: the batch factors on host buffers
/// ([`batch_factors`]), then `F ← βF + (1 − β)F_batch` in `f32` as the tensor path rounds it
/// (each product rounded, then the sum).
fn fold_capture_on_host(
    layer: &mut LayerState,
    cap: &LayerCapture,
    cfg: &KfacConfig,
) -> Result<bool> {
    let Some(batch) = batch_factors(cap, cfg.weight_sharing, (layer.k, layer.m))? else {
        return Ok(false);
    };
    let beta = cfg.ema_decay;
    let (b_old, b_new) = (beta as f32, (1.0 - beta) as f32);
    let ema = |old: &Option<Tensor>, mut new: Vec<f32>, n: usize| -> Result<Tensor> {
        if let Some(o) = old {
            let o = o.flatten_all()?.to_vec1::<f32>()?;
            for (v, &p) in new.iter_mut().zip(&o) {
                *v = p * b_old + *v * b_new;
            }
        }
        Ok(Tensor::from_vec(new, (n, n), &candle_core::Device::Cpu)?)
    };
    let traces = batch.traces;
    layer.traces = match layer.a {
        Some(_) => (
            beta * layer.traces.0 + (1.0 - beta) * traces.0,
            beta * layer.traces.1 + (1.0 - beta) * traces.1,
        ),
        None => traces,
    };
    layer.a = Some(ema(&layer.a, batch.a, layer.k)?);
    layer.g = Some(ema(&layer.g, batch.g, layer.m)?);
    layer.host_factors = None;
    layer.eigenvalues_stale = true;
    layer.warm_product = None;
    Ok(true)
}

/// What the solve of one layer counts, merged into [`KfacStepStats`] after the layers ran.
#[derive(Debug, Default)]
struct LayerStats {
    decomposition_failures: usize,
    refreshed_inverses: usize,
    cg_breakdowns: usize,
    cg_iterations: Vec<usize>,
}

impl LayerStats {
    fn merge_into(self, stats: &mut KfacStepStats, cg_iterations: &mut Vec<usize>) {
        stats.decomposition_failures += self.decomposition_failures;
        stats.refreshed_inverses += self.refreshed_inverses;
        stats.cg_breakdowns += self.cg_breakdowns;
        cg_iterations.extend(self.cg_iterations);
    }
}

/// Runs `f` on every `(index, layer, input)` job, side by side on up to `threads` scoped threads;
/// results in job order. Each worker takes the next job from a shared queue when it is free, the
/// largest layers (by `m·k·(m+k)`, the cost of one of their products) first, so that a layer
/// that needs more CG iterations or a larger decomposition does not leave the other threads
/// idle (a fixed deal of the layers did). Each layer's arithmetic is the same whatever the
/// thread count and whichever thread runs it.
fn for_each_layer<I: Send, T: Send>(
    mut jobs: Vec<(usize, &mut LayerState, I)>,
    threads: usize,
    f: impl Fn(usize, &mut LayerState, I) -> Result<T> + Sync,
) -> Result<Vec<(usize, T)>> {
    if threads < 2 || jobs.len() < 2 {
        return jobs
            .into_iter()
            .map(|(i, l, x)| Ok((i, f(i, l, x)?)))
            .collect();
    }
    let workers = threads.min(jobs.len());
    let cost = |l: &LayerState| l.m * l.k * (l.m + l.k);
    // Stable: equal layers keep their order.
    jobs.sort_by_key(|(_, l, _)| std::cmp::Reverse(cost(l)));
    let queue = std::sync::Mutex::new(jobs.into_iter());
    let f = &f;
    let queue = &queue;
    let run = move || -> Result<Vec<(usize, T)>> {
        let mut out = Vec::new();
        loop {
            // A poisoned queue means another worker panicked; its join reports it.
            let job = match queue.lock() {
                Ok(mut q) => q.next(),
                Err(_) => None,
            };
            let Some((i, l, x)) = job else {
                return Ok(out);
            };
            out.push((i, f(i, l, x)?));
        }
    };
    let mut out = std::thread::scope(|s| {
        let handles: Vec<_> = (1..workers).map(|_| s.spawn(run)).collect();
        let mut out = run()?;
        for h in handles {
            out.extend(h.join().map_err(|_| KfacError::Capture {
                layer: "(worker thread)".into(),
                problem: "a preconditioner worker thread panicked",
            })??);
        }
        Ok::<_, KfacError>(out)
    })?;
    out.sort_by_key(|(i, _)| *i);
    Ok(out)
}

/// CG on the operator `op(d)` (`d`: the damping), retried once on a breakdown with a cold start
/// and the jittered damping `jittered` (ten times the damping): the solution (`None` when both
/// broke down) and its product under `op(damping)` (`None` after a retry).
fn solve_with_retry<V: CgVector, D: Copy, F: Fn(&V) -> Result<V>>(
    op: impl Fn(D) -> F,
    (damping, jittered): (D, D),
    grad: &V,
    warm: Option<WarmStart<'_, V>>,
    settings: CgSettings,
    stats: &mut LayerStats,
) -> Result<(Option<V>, Option<V>)> {
    let out = conjugate_gradient_from(op(damping), grad, warm, settings)?;
    stats.cg_iterations.push(out.iterations);
    if !out.breakdown {
        return Ok((out.solution, out.product));
    }
    stats.cg_breakdowns += 1;
    let retry = conjugate_gradient(op(jittered), grad, None, settings)?;
    if retry.breakdown {
        stats.cg_breakdowns += 1;
    }
    Ok((retry.solution, None))
}

#[derive(Debug)]
struct LayerState {
    spec: PreconditionedLayer,
    m: usize,
    k: usize,
    a: Option<Tensor>,
    g: Option<Tensor>,
    traces: (f64, f64),
    rows: Option<CurvatureRows>,
    eig: Option<Eig>,
    inv: Option<Inv>,
    /// The last CG solution, the next solve's start.
    warm: Option<Folded>,
    /// `M(warm)` from the last solve's recurrence and the damping of that operator: valid until
    /// the factors change (cleared by a fold) or the damping does; it saves the warm start's
    /// operator application ([`conjugate_gradient_from`]).
    warm_product: Option<(Folded, f64)>,
    /// `A` and `G` on the host for the CG operator of `f32` CPU layers, made from the factors on
    /// the first solve after each refresh.
    host_factors: Option<HostFactors>,
    /// The host eigen solve's `D⁻¹` and the shifts it was made for (reset with the eigenbasis).
    inverse_denominators: Option<((f64, f64, f64), Vec<f32>)>,
    /// The factors changed since the eigenvalues were computed (set by a fold, cleared by a
    /// refresh of the bases or of the eigenvalues).
    eigenvalues_stale: bool,
}

impl LayerState {
    fn has_curvature(&self) -> bool {
        self.a.is_some() || self.rows.is_some()
    }

    /// Recomputes this layer's eigenbases or damped inverses from its factors.
    fn refresh(&mut self, cfg: &KfacConfig, damping: f64, stats: &mut LayerStats) -> Result<()> {
        let kind = cfg.damping_kind;
        let layer = self;
        let (Some(a), Some(g)) = (&layer.a, &layer.g) else {
            return Ok(());
        };
        stats.refreshed_inverses += 1;
        layer.inverse_denominators = None;
        layer.eigenvalues_stale = false;
        match cfg.solver {
            Solver::Eigen if on_host(a) && on_host(g) => {
                let ea = eigh_to_host(a)?;
                let eg = eigh_to_host(g)?;
                stats.decomposition_failures += usize::from(ea.jittered) + usize::from(eg.jittered);
                layer.eig = match (ea.value, eg.value) {
                    (Some((qa, la)), Some((qg, lg))) => Some(Eig::from_host(
                        HostEig { qa, la, qg, lg },
                        (layer.m, layer.k),
                    )?),
                    _ => None,
                };
            }
            Solver::Eigen => {
                let ea = eigh(a)?;
                let eg = eigh(g)?;
                stats.decomposition_failures += usize::from(ea.jittered) + usize::from(eg.jittered);
                layer.eig = match (ea.value, eg.value) {
                    (Some((qa, la)), Some((qg, lg))) => Some(Eig::new(qa, la, qg, lg)),
                    _ => None,
                };
            }
            Solver::Inverse => {
                let (da, dg) = match kind {
                    DampingKind::Factored => layer.factored_shifts(damping),
                    DampingKind::Tikhonov => (damping.sqrt(), damping.sqrt()),
                };
                let ia = damped_inverse(a, da)?;
                let ig = damped_inverse(g, dg)?;
                stats.decomposition_failures += usize::from(ia.jittered) + usize::from(ig.jittered);
                layer.inv = match (ia.value, ig.value) {
                    (Some(a_inv), Some(g_inv)) => Some(Inv {
                        a_inv,
                        g_inv,
                        damping,
                    }),
                    _ => None,
                };
            }
            Solver::CgFactor | Solver::CgMatrixFree => {}
        }
        Ok(())
    }

    /// The eigenvalues of the current factors in the kept eigenbases
    /// ([`KfacConfig::eigenvalue_refresh`]): `λ_j = q_jᵀ F q_j = Σ_i (F Q)_ij Q_ij`, clamped at 0 like a
    /// decomposition's. The bases, and so the eigen solve's rotations, are unchanged.
    fn refresh_eigenvalues(&mut self) -> Result<()> {
        self.eigenvalues_stale = false;
        let (Some(a), Some(g), Some(e)) = (&self.a, &self.g, &self.eig) else {
            return Ok(());
        };
        let (la, lg, host) = match e.host() {
            Some(h) if on_host(a) && on_host(g) => {
                let values = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
                let la = diagonal_in_basis(&values(a)?, &h.qa, self.k);
                let lg = diagonal_in_basis(&values(g)?, &h.qg, self.m);
                let cpu = &candle_core::Device::Cpu;
                (
                    Tensor::from_slice(&la, self.k, cpu)?,
                    Tensor::from_slice(&lg, self.m, cpu)?,
                    Some(HostEig {
                        qa: h.qa.clone(),
                        la,
                        qg: h.qg.clone(),
                        lg,
                    }),
                )
            }
            _ => {
                // `diag(QᵀFQ)` as the row sums of `(QᵀF) ⊙ Qᵀ` (`F` symmetric): a reduction over
                // the contiguous dimension.
                let diagonal = |f: &Tensor, q: &Tensor| -> Result<Tensor> {
                    let qt = q.t()?.contiguous()?;
                    let f = f.to_dtype(q.dtype())?;
                    Ok((qt.matmul(&f)? * &qt)?.sum(1)?.relu()?)
                };
                (diagonal(a, &e.qa)?, diagonal(g, &e.qg)?, None)
            }
        };
        if !all_finite(&la)? || !all_finite(&lg)? {
            // Keep the last eigenvalues; the next basis refresh starts over.
            return Ok(());
        }
        let fresh = Eig::new(e.qa.clone(), la, e.qg.clone(), lg);
        if let Some(h) = host {
            // A fresh cell: the set cannot fail.
            let _ = fresh.host.set(Some(h));
        }
        self.eig = Some(fresh);
        self.inverse_denominators = None;
        Ok(())
    }

    /// This layer's preconditioned gradient, `None` to fall back to the plain gradient. A host
    /// gradient ([`Folded::Host`]) is solved on the host where the solver has a host path
    /// (eigen, CG on the factors) and through tensors otherwise.
    fn solve(
        &mut self,
        cfg: &KfacConfig,
        damping: f64,
        grad: &Folded,
        refresh_inv: bool,
        stats: &mut LayerStats,
    ) -> Result<Option<Folded>> {
        if !self.has_curvature() {
            // No curvature yet: the plain gradient, not counted as a fallback.
            return Ok(Some(grad.clone()));
        }
        let kind = cfg.damping_kind;
        if kind == DampingKind::Tikhonov && self.negligible_curvature(damping) {
            // `A ⊗ G + λI = λI` to the working precision: `U = ∇W̄/λ` for every solver, with no
            // decomposition and no CG (a key projection under K-FAC-reduce: see the method). Any
            // earlier decomposition is of other factors: dropped, so that a layer whose
            // curvature comes back is decomposed at once.
            self.warm = None;
            self.warm_product = None;
            self.eig = None;
            self.inv = None;
            self.inverse_denominators = None;
            return Ok(Some(grad.scaled(1.0 / damping)?));
        }
        // `(s_A, s_G, t)`: shifts of the factors' eigenvalues and the added multiple of `X`.
        let shifts = match kind {
            DampingKind::Tikhonov => (0.0, 0.0, damping),
            DampingKind::Factored => {
                let (da, dg) = self.factored_shifts(damping);
                (da, dg, 0.0)
            }
        };
        match cfg.solver {
            Solver::Eigen => {
                if refresh_inv || self.eig.is_none() {
                    self.refresh(cfg, damping, stats)?;
                } else if cfg.eigenvalue_refresh && self.eigenvalues_stale {
                    self.refresh_eigenvalues()?;
                }
                let Some(e) = &self.eig else { return Ok(None) };
                if let (Some(h), Folded::Host { data, rows, cols }) = (e.host(), grad) {
                    let fresh = matches!(&self.inverse_denominators, Some((s, _)) if *s == shifts);
                    if !fresh {
                        self.inverse_denominators = Some((shifts, h.inverse_denominators(shifts)));
                    }
                    let inv_d = self
                        .inverse_denominators
                        .as_ref()
                        .map_or(&[][..], |(_, d)| d);
                    return Ok(h.solve(data, (*rows, *cols), inv_d).map(|u| Folded::Host {
                        data: u,
                        rows: *rows,
                        cols: *cols,
                    }));
                }
                let grad = grad.to_tensor()?.to_dtype(e.qa.dtype())?;
                let (la, lg) = match kind {
                    DampingKind::Tikhonov => (e.la.clone(), e.lg.clone()),
                    DampingKind::Factored => ((&e.la + shifts.0)?, (&e.lg + shifts.1)?),
                };
                let mut denom = lg.unsqueeze(1)?.broadcast_mul(&la.unsqueeze(0)?)?;
                if kind == DampingKind::Tikhonov {
                    denom = (denom + damping)?;
                }
                let rotated = e.qg.t()?.matmul(&grad)?.matmul(&e.qa)?;
                let scaled = (rotated / denom)?;
                Ok(Some(Folded::Tensor(
                    e.qg.matmul(&scaled)?.matmul(&e.qa.t()?)?,
                )))
            }
            Solver::Inverse => {
                let stale = self.inv.as_ref().is_none_or(|v| v.damping != damping);
                if refresh_inv || stale {
                    self.refresh(cfg, damping, stats)?;
                }
                let Some(v) = &self.inv else {
                    return Ok(None);
                };
                Ok(Some(Folded::Tensor(
                    v.g_inv.matmul(&grad.to_tensor()?)?.matmul(&v.a_inv)?,
                )))
            }
            Solver::CgFactor | Solver::CgMatrixFree => {
                let settings = CgSettings {
                    tol: cfg.cg_tol,
                    max_iters: cfg.cg_max_iters,
                };
                if cfg.solver == Solver::CgFactor && self.host_factors.is_none() {
                    if let (Some(a), Some(g)) = (&self.a, &self.g) {
                        self.host_factors = HostFactors::new(a, g)?;
                    }
                }
                let warm = if cfg.warm_start {
                    self.warm.as_ref()
                } else {
                    None
                };
                // The warm start's product, if it was made by this operator.
                let product = match &self.warm_product {
                    Some((p, d)) if *d == damping && warm.is_some() => Some(p),
                    _ => None,
                };
                let (sol, product) = match (&self.host_factors, grad, cfg.solver) {
                    (Some(f), Folded::Host { data, rows, cols }, Solver::CgFactor) => {
                        fn host(v: Option<&Folded>, len: usize) -> Option<&Vec<f32>> {
                            match v {
                                Some(Folded::Host { data: w, .. }) if w.len() == len => Some(w),
                                _ => None,
                            }
                        }
                        let warm = host(warm, data.len()).map(|x| WarmStart {
                            x,
                            product: host(product, data.len()),
                        });
                        let jd = (shifts.0, shifts.1, 10.0 * shifts.2);
                        let jittered = match kind {
                            DampingKind::Tikhonov => jd,
                            DampingKind::Factored => {
                                let (da, dg) = self.factored_shifts(10.0 * damping);
                                (da, dg, 0.0)
                            }
                        };
                        let (sol, product) = solve_with_retry(
                            |s| move |x: &Vec<f32>| Ok(f.apply(x, s)),
                            (shifts, jittered),
                            data,
                            warm,
                            settings,
                            stats,
                        )?;
                        let folded = |u| Folded::Host {
                            data: u,
                            rows: *rows,
                            cols: *cols,
                        };
                        (sol.map(folded), product.map(folded))
                    }
                    _ => {
                        let layer = &*self;
                        let g = grad.to_tensor()?;
                        let tensor = |v: Option<&Folded>| -> Result<Option<Tensor>> {
                            Ok(match v.map(Folded::to_tensor).transpose()? {
                                Some(w) if w.dims() == g.dims() => Some(w),
                                _ => None,
                            })
                        };
                        let (warm, product) = (tensor(warm)?, tensor(product)?);
                        let warm = warm.as_ref().map(|x| WarmStart {
                            x,
                            product: product.as_ref(),
                        });
                        let (sol, product) = solve_with_retry(
                            |d| move |x: &Tensor| layer.apply_m(x, d, kind),
                            (damping, 10.0 * damping),
                            &g,
                            warm,
                            settings,
                            stats,
                        )?;
                        (sol.map(Folded::Tensor), product.map(Folded::Tensor))
                    }
                };
                self.warm = sol.clone();
                self.warm_product = product.map(|p| (p, damping));
                Ok(sol)
            }
        }
    }

    /// Whether the curvature `A ⊗ G` vanishes against the Tikhonov damping `λ` at the weights'
    /// precision: `tr A · tr G ≤ u·λ` (`u` the unit roundoff; the traces of PSD factors bound their
    /// largest eigenvalues, so `‖A ⊗ G‖₂ ≤ u·λ` and every solver's answer is `∇W̄/λ` to rounding).
    /// It happens by structure, not by chance: softmax is invariant to adding one vector to every
    /// key, so a key projection's output gradients sum to zero over the positions of a sequence,
    /// and its K-FAC-reduce factor `G` (built from those sums) is zero up to rounding.
    fn negligible_curvature(&self, damping: f64) -> bool {
        let (ta, tg) = self.traces;
        let u = match self.spec.weight.dtype() {
            DType::F64 => f64::EPSILON / 2.0,
            DType::F32 => f64::from(f32::EPSILON) / 2.0,
            DType::BF16 => 2f64.powi(-8),
            _ => 2f64.powi(-11),
        };
        self.has_curvature() && ta.is_finite() && tg.is_finite() && ta * tg <= u * damping
    }

    /// `(δ_A, δ_G)` of factored damping.
    fn factored_shifts(&self, damping: f64) -> (f64, f64) {
        let (ta, tg) = self.traces;
        let pi = ((ta / self.k as f64) / (tg / self.m as f64)).sqrt();
        let pi = if pi.is_finite() && pi > 0.0 { pi } else { 1.0 };
        (pi * damping.sqrt(), damping.sqrt() / pi)
    }

    /// `G X` and `X A` from the factors or the rows.
    fn g_times(&self, x: &Tensor) -> Result<Tensor> {
        match (&self.g, &self.rows) {
            (Some(g), _) => Ok(g.matmul(x)?),
            (None, Some(r)) => r.g_times(x),
            _ => Ok(x.zeros_like()?),
        }
    }

    fn times_a(&self, x: &Tensor) -> Result<Tensor> {
        match (&self.a, &self.rows) {
            (Some(a), _) => Ok(x.matmul(a)?),
            (None, Some(r)) => r.times_a(x),
            _ => Ok(x.zeros_like()?),
        }
    }

    fn gxa(&self, x: &Tensor) -> Result<Tensor> {
        match (&self.a, &self.g, &self.rows) {
            (Some(a), Some(g), _) => Ok(g.matmul(x)?.matmul(a)?),
            (_, _, Some(r)) => r.gxa(x),
            _ => Ok(x.zeros_like()?),
        }
    }

    /// The damped operator `M(X)`.
    fn apply_m(&self, x: &Tensor, damping: f64, kind: DampingKind) -> Result<Tensor> {
        let gxa = self.gxa(x)?;
        Ok(match kind {
            DampingKind::Tikhonov => (gxa + (x * damping)?)?,
            DampingKind::Factored => {
                let (da, dg) = self.factored_shifts(damping);
                let t = (gxa + (self.times_a(x)? * dg)?)?;
                let t = (t + (self.g_times(x)? * da)?)?;
                (t + (x * (da * dg))?)?
            }
        })
    }
}

/// The K-FAC / CG-FAC gradient transform: it keeps the curvature state of every preconditioned
/// layer and maps gradients `∇W̄` to KL-clipped preconditioned gradients `νU`, keyed
/// `{name}.weight` and `{name}.bias`. [`KfacOptimizer`] composes it with the outer updates.
#[derive(Debug)]
pub struct Preconditioner {
    cfg: KfacConfig,
    layers: Vec<LayerState>,
    step: u64,
    damping: f64,
    /// Threads the per-layer solves and refreshes run on ([`Preconditioner::set_threads`]).
    threads: usize,
}

impl Preconditioner {
    /// A preconditioner over `layers` (names must be unique).
    pub fn new(layers: Vec<PreconditionedLayer>, cfg: KfacConfig) -> Result<Self> {
        cfg.validate()?;
        let mut states: Vec<LayerState> = Vec::with_capacity(layers.len());
        for spec in layers {
            if states.iter().any(|s| s.spec.name == spec.name) {
                return Err(KfacError::Capture {
                    layer: spec.name,
                    problem: "two preconditioned layers share this name",
                });
            }
            let (m, n) = spec.weight.dims2().map_err(|_| KfacError::Shape {
                what: format!("weight of layer `{}`", spec.name),
                expected: "(m, n)".into(),
                found: format!("{:?}", spec.weight.dims()),
            })?;
            if let Some(b) = &spec.bias {
                if b.dims() != [m] {
                    return Err(KfacError::Shape {
                        what: format!("bias of layer `{}`", spec.name),
                        expected: format!("({m},)"),
                        found: format!("{:?}", b.dims()),
                    });
                }
            }
            let k = n + usize::from(spec.bias.is_some());
            states.push(LayerState {
                spec,
                m,
                k,
                a: None,
                g: None,
                traces: (0.0, 0.0),
                rows: None,
                eig: None,
                inv: None,
                warm: None,
                warm_product: None,
                host_factors: None,
                inverse_denominators: None,
                eigenvalues_stale: false,
            });
        }
        let damping = cfg.damping;
        Ok(Self {
            cfg,
            layers: states,
            step: 0,
            damping,
            threads: 1,
        })
    }

    /// Runs the per-layer work of each step (factor folding, decompositions, solves) on up to
    /// `threads` threads, layers dealt round-robin (default 1: on the calling thread). Each
    /// layer's arithmetic is the same on any thread count, so results do not change. Meant for
    /// candle on one CPU thread: the layers' tensor ops then run side by side instead of
    /// splitting each small matmul.
    pub fn set_threads(&mut self, threads: usize) {
        self.threads = threads.max(1);
    }

    /// The configuration.
    pub fn config(&self) -> &KfacConfig {
        &self.cfg
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// The current damping `λ`.
    pub fn damping(&self) -> f64 {
        self.damping
    }

    /// Whether the next step refreshes the factors, i.e. whether the trainer should capture
    /// curvature (and, for [`FisherType::MonteCarlo`], run the sampled-label backward) for it.
    pub fn needs_curvature(&self) -> bool {
        self.step % self.cfg.k_fac == 0 || self.layers.iter().any(|l| !l.has_curvature())
    }

    /// Levenberg–Marquardt rule (Martens & Grosse 2015, §6.5): with `ρ = actual/predicted`,
    /// `λ ← ωλ` if `ρ > 3/4`, `λ ← λ/ω` if `ρ < 1/4`, clamped to `[min_damping, max_damping]`.
    /// A non-negative or non-finite `predicted` leaves `λ` unchanged. No-op unless adaptive.
    pub fn adapt_damping(&mut self, actual: f64, predicted: f64) -> f64 {
        if !self.cfg.adaptive_damping
            || predicted.partial_cmp(&0.0) != Some(std::cmp::Ordering::Less)
            || !actual.is_finite()
        {
            return self.damping;
        }
        let rho = actual / predicted;
        let w = self.cfg.damping_factor;
        if rho > 0.75 {
            self.damping *= w;
        } else if rho < 0.25 {
            self.damping /= w;
        }
        self.damping = self
            .damping
            .clamp(self.cfg.min_damping, self.cfg.max_damping);
        self.damping
    }

    fn fold_curvature(
        &mut self,
        curvature: &[LayerCapture],
        stats: &mut KfacStepStats,
    ) -> Result<()> {
        let mut owner: Vec<Option<&LayerCapture>> = vec![None; self.layers.len()];
        for cap in curvature {
            let Some(i) = self.layers.iter().position(|l| l.spec.name == cap.name) else {
                return Err(KfacError::Capture {
                    layer: cap.name.clone(),
                    problem: "no preconditioned layer has this name",
                });
            };
            if owner[i].replace(cap).is_some() {
                return Err(KfacError::Capture {
                    layer: cap.name.clone(),
                    problem: "captured twice in one step",
                });
            }
        }
        let jobs: Vec<_> = self
            .layers
            .iter_mut()
            .zip(owner)
            .enumerate()
            .filter_map(|(i, (l, cap))| cap.map(|c| (i, l, c)))
            .collect();
        let cfg = self.cfg;
        let folded = for_each_layer(jobs, self.threads, |_, layer, cap| {
            fold_capture(layer, cap, &cfg)
        })?;
        for (_, ok) in folded {
            if ok {
                stats.refreshed_factors += 1;
            } else {
                stats.non_finite_factors += 1;
            }
        }
        Ok(())
    }

    /// One transform step: folds `curvature` into the factors when [`Self::needs_curvature`],
    /// refreshes decompositions every `k_inv` steps, solves each layer's damped system and applies
    /// KL clipping `ν = min(1, sqrt(c/(η² Σ⟨U,∇W̄⟩)))`. Returns the preconditioned gradients keyed
    /// `{name}.weight` / `{name}.bias` (layers without a finite gradient are omitted).
    pub fn step(
        &mut self,
        grads: &dyn GradientSource,
        curvature: &[LayerCapture],
    ) -> Result<(HashMap<String, Tensor>, KfacStepStats)> {
        let mut stats = KfacStepStats {
            step: self.step,
            damping: self.damping,
            kl_scale: 1.0,
            ..Default::default()
        };
        let t0 = Instant::now();
        if self.needs_curvature() {
            self.fold_curvature(curvature, &mut stats)?;
        }
        let t1 = Instant::now();
        stats.time_factors = (t1 - t0).as_secs_f64();

        let refresh_inv = self.step % self.cfg.k_inv == 0;
        let mut jobs = Vec::new();
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let spec = &layer.spec;
            let gw = grads.gradient(&format!("{}.weight", spec.name), &spec.weight);
            let gb = spec
                .bias
                .as_ref()
                .and_then(|b| grads.gradient(&format!("{}.bias", spec.name), b));
            let Some(gw) = gw else { continue };
            let gb = match (&spec.bias, gb) {
                (Some(b), None) => Some(b.zeros_like()?),
                (_, gb) => gb,
            };
            jobs.push((i, layer, (gw, gb)));
        }
        let (cfg, damping) = (self.cfg, self.damping);
        let kl = self.cfg.kl_clip.is_some();
        let results = for_each_layer(jobs, self.threads, |_, layer, (gw, gb)| {
            let grad = Folded::from_gradients(&gw, gb.as_ref())?;
            let mut ls = LayerStats::default();
            if !grad.all_finite()? {
                return Ok((grad, None, ls, true, 0.0));
            }
            let u = layer.solve(&cfg, damping, &grad, refresh_inv, &mut ls)?;
            let u = match u {
                Some(u) if u.all_finite()? => Some(u),
                _ => None,
            };
            // This layer's term of the KL clip's `Σ⟨U,∇W̄⟩` (U = ∇W̄ on a fallback).
            let vg = if kl {
                u.as_ref().unwrap_or(&grad).dot(&grad)?
            } else {
                0.0
            };
            Ok((grad, u, ls, false, vg))
        })?;
        let mut solved: Vec<(usize, Folded)> = Vec::new();
        let mut cg_iters: Vec<usize> = Vec::new();
        let mut vg = 0.0;
        for (i, (grad, u, ls, skipped, layer_vg)) in results {
            ls.merge_into(&mut stats, &mut cg_iters);
            if skipped {
                stats.fallbacks += 1;
                continue;
            }
            vg += layer_vg;
            let u = match u {
                Some(u) => u,
                None => {
                    stats.fallbacks += 1;
                    grad
                }
            };
            solved.push((i, u));
        }
        if !cg_iters.is_empty() {
            stats.cg_iterations_mean =
                cg_iters.iter().sum::<usize>() as f64 / cg_iters.len() as f64;
            stats.cg_iterations_max = cg_iters.iter().copied().max().unwrap_or(0);
        }
        if let Some(c) = self.cfg.kl_clip {
            let vg = vg * self.cfg.lr * self.cfg.lr;
            if vg > 0.0 && vg.is_finite() {
                stats.kl_scale = (c / vg).sqrt().min(1.0);
            }
        }
        let mut out = HashMap::new();
        for (i, u) in solved {
            let spec = &self.layers[i].spec;
            let n = spec.weight.dims()[1];
            let (w, b) = u.into_parts(n, spec.bias.is_some(), stats.kl_scale)?;
            out.insert(format!("{}.weight", spec.name), w);
            if let Some(b) = b {
                out.insert(format!("{}.bias", spec.name), b);
            }
        }
        stats.time_solve = t1.elapsed().as_secs_f64();
        self.step += 1;
        Ok((out, stats))
    }

    /// `Σ_layers ⟨∇W̄, δ⟩ + ½⟨δ, G δ A⟩` for updates `δ` keyed by layer index.
    fn predicted_change(&self, deltas: &[(usize, Tensor, Tensor)]) -> Result<f64> {
        let mut total = 0.0;
        for (i, grad, d) in deltas {
            let layer = &self.layers[*i];
            let quad = match (&layer.a, &layer.g) {
                (Some(a), Some(g)) => kronecker_quadratic_form(a, g, d)?,
                _ => frobenius(d, &layer.gxa(d)?)?,
            };
            total += frobenius(grad, d)? + 0.5 * quad;
        }
        Ok(total)
    }

    fn layer_folded(&self, i: usize) -> Result<Tensor> {
        let spec = &self.layers[i].spec;
        fold(
            spec.weight.as_tensor(),
            spec.bias.as_ref().map(|b| b.as_tensor()),
        )
    }

    /// The curvature state (factors, traces, decompositions, rows, CG warm starts, step, damping)
    /// as named tensors in layer order.
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let dev = self
            .layers
            .first()
            .map(|l| l.spec.weight.device().clone())
            .unwrap_or(candle_core::Device::Cpu);
        let mut out = vec![
            (
                "kfac.step".to_string(),
                Tensor::new(&[self.step as f64], &dev)?,
            ),
            (
                "kfac.damping".to_string(),
                Tensor::new(&[self.damping], &dev)?,
            ),
        ];
        for l in &self.layers {
            let p = format!("kfac.{}", l.spec.name);
            let flags = [
                l.a.is_some(),
                l.eig.is_some(),
                l.inv.is_some(),
                l.warm.is_some(),
                l.rows.is_some(),
            ]
            .map(|b| if b { 1.0 } else { 0.0 });
            out.push((format!("{p}.present"), Tensor::new(&flags, &dev)?));
            out.push((
                format!("{p}.traces"),
                Tensor::new(&[l.traces.0, l.traces.1], &dev)?,
            ));
            if let (Some(a), Some(g)) = (&l.a, &l.g) {
                out.push((format!("{p}.A"), a.clone()));
                out.push((format!("{p}.G"), g.clone()));
            }
            if let Some(e) = &l.eig {
                out.push((format!("{p}.eig.qa"), e.qa.clone()));
                out.push((format!("{p}.eig.la"), e.la.clone()));
                out.push((format!("{p}.eig.qg"), e.qg.clone()));
                out.push((format!("{p}.eig.lg"), e.lg.clone()));
            }
            if let Some(v) = &l.inv {
                out.push((format!("{p}.inv.a"), v.a_inv.clone()));
                out.push((format!("{p}.inv.g"), v.g_inv.clone()));
                out.push((format!("{p}.inv.damping"), Tensor::new(&[v.damping], &dev)?));
            }
            if l.eigenvalues_stale {
                out.push((
                    format!("{p}.eigenvalues_stale"),
                    Tensor::new(&[1.0f64], &dev)?,
                ));
            }
            if let Some((mx, d)) = &l.warm_product {
                out.push((format!("{p}.warm_product"), mx.to_tensor()?));
                out.push((
                    format!("{p}.warm_product.damping"),
                    Tensor::new(&[*d], &dev)?,
                ));
            }
            if let Some(w) = &l.warm {
                out.push((format!("{p}.warm"), w.to_tensor()?));
            }
            if let Some(r) = &l.rows {
                out.push((format!("{p}.rows.a"), r.a_rows.clone()));
                out.push((format!("{p}.rows.g"), r.g_rows.clone()));
                out.push((
                    format!("{p}.rows.scale"),
                    Tensor::new(&[r.a_scale, r.g_scale], &dev)?,
                ));
            }
        }
        Ok(out)
    }

    /// Restores [`Self::state`]; shapes are checked against the layers.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let get = |key: &str| -> Result<Tensor> {
            state
                .get(key)
                .cloned()
                .ok_or_else(|| KfacError::StateMismatch(format!("`{key}` is missing")))
        };
        let vals = |key: &str| -> Result<Vec<f64>> {
            Ok(get(key)?
                .to_dtype(DType::F64)?
                .flatten_all()?
                .to_vec1::<f64>()?)
        };
        let step = vals("kfac.step")?;
        let damping = vals("kfac.damping")?;
        let mut layers_new = Vec::new();
        for l in &self.layers {
            let p = format!("kfac.{}", l.spec.name);
            let w = l.spec.weight.as_tensor();
            let shaped = |key: String, dims: &[usize]| -> Result<Tensor> {
                let t = get(&key)?;
                if t.dims() != dims {
                    return Err(KfacError::StateMismatch(format!(
                        "`{key}` has shape {:?}, the layer needs {dims:?}",
                        t.dims()
                    )));
                }
                Ok(t.to_dtype(w.dtype())?.to_device(w.device())?)
            };
            let flags = vals(&format!("{p}.present"))?;
            if flags.len() != 5 {
                return Err(KfacError::StateMismatch(format!(
                    "`{p}.present` needs 5 flags"
                )));
            }
            let on = |j: usize| flags[j] > 0.5;
            let tr = vals(&format!("{p}.traces"))?;
            let (m, k) = (l.m, l.k);
            let (a, g) = if on(0) {
                (
                    Some(shaped(format!("{p}.A"), &[k, k])?),
                    Some(shaped(format!("{p}.G"), &[m, m])?),
                )
            } else {
                (None, None)
            };
            let eig = if on(1) {
                Some(Eig::new(
                    shaped(format!("{p}.eig.qa"), &[k, k])?,
                    shaped(format!("{p}.eig.la"), &[k])?,
                    shaped(format!("{p}.eig.qg"), &[m, m])?,
                    shaped(format!("{p}.eig.lg"), &[m])?,
                ))
            } else {
                None
            };
            let inv = if on(2) {
                Some(Inv {
                    a_inv: shaped(format!("{p}.inv.a"), &[k, k])?,
                    g_inv: shaped(format!("{p}.inv.g"), &[m, m])?,
                    damping: vals(&format!("{p}.inv.damping"))?
                        .first()
                        .copied()
                        .unwrap_or(0.0),
                })
            } else {
                None
            };
            let folded = |key: String| -> Result<Folded> {
                let w = shaped(key, &[m, k])?;
                Ok(if on_host(&w) {
                    Folded::Host {
                        data: w.flatten_all()?.to_vec1::<f32>()?,
                        rows: m,
                        cols: k,
                    }
                } else {
                    Folded::Tensor(w)
                })
            };
            let warm = if on(3) {
                Some(folded(format!("{p}.warm"))?)
            } else {
                None
            };
            // Optional: states written before the product was kept recompute it on the first solve.
            let warm_product = if warm.is_some() && state.contains_key(&format!("{p}.warm_product"))
            {
                let d = vals(&format!("{p}.warm_product.damping"))?;
                Some((
                    folded(format!("{p}.warm_product"))?,
                    d.first().copied().unwrap_or(f64::NAN),
                ))
            } else {
                None
            };
            let rows = if on(4) {
                let ra = get(&format!("{p}.rows.a"))?;
                let r = ra.dims().first().copied().unwrap_or(0);
                let sc = vals(&format!("{p}.rows.scale"))?;
                Some(CurvatureRows {
                    a_rows: shaped(format!("{p}.rows.a"), &[r, k])?,
                    g_rows: shaped(format!("{p}.rows.g"), &[r, m])?,
                    a_scale: sc.first().copied().unwrap_or(0.0),
                    g_scale: sc.get(1).copied().unwrap_or(0.0),
                })
            } else {
                None
            };
            // Optional as well: absent means the eigenvalues match the factors.
            let stale = state.contains_key(&format!("{p}.eigenvalues_stale"));
            layers_new.push((
                a,
                g,
                (tr[0], tr[1]),
                (eig, stale),
                inv,
                (warm, warm_product),
                rows,
            ));
        }
        for (l, (a, g, traces, (eig, stale), inv, (warm, warm_product), rows)) in
            self.layers.iter_mut().zip(layers_new)
        {
            (
                l.a,
                l.g,
                l.traces,
                l.eig,
                l.inv,
                l.warm,
                l.warm_product,
                l.rows,
            ) = (a, g, traces, eig, inv, warm, warm_product, rows);
            l.eigenvalues_stale = stale;
            l.host_factors = None;
            l.inverse_denominators = None;
        }
        self.step = step.first().copied().unwrap_or(0.0) as u64;
        self.damping = damping.first().copied().unwrap_or(self.cfg.damping);
        Ok(())
    }
}

/// K-FAC / CG-FAC as an optimizer: the [`Preconditioner`] followed by SGD with momentum on the
/// preconditioned layers (`b ← μb + νU`, `W̄ ← W̄ − ηb`), and AdamW on every other parameter.
#[derive(Debug)]
pub struct KfacOptimizer {
    pre: Preconditioner,
    sgd: SgdMomentum,
    adamw: AdamW,
}

impl KfacOptimizer {
    /// Builds the composition: `layers` are preconditioned, `others` take AdamW with `adamw`.
    pub fn new(
        layers: Vec<PreconditionedLayer>,
        others: NamedParams,
        cfg: KfacConfig,
        adamw: AdamWConfig,
    ) -> Result<Self> {
        let mut named = Vec::new();
        for l in &layers {
            named.push((format!("{}.weight", l.name), l.weight.clone()));
            if let Some(b) = &l.bias {
                named.push((format!("{}.bias", l.name), b.clone()));
            }
        }
        let pre = Preconditioner::new(layers, cfg)?;
        let sgd = SgdMomentum::new(
            NamedParams::new(named),
            cfg.lr,
            cfg.momentum,
            cfg.weight_decay,
        )?;
        let adamw = AdamW::new(others, adamw)?;
        Ok(Self { pre, sgd, adamw })
    }

    /// One step: preconditions the tracked layers' gradients (folding `curvature` into the factors
    /// on refresh steps), applies SGD with momentum to them and AdamW to the rest.
    pub fn step(
        &mut self,
        grads: &dyn GradientSource,
        curvature: &[LayerCapture],
    ) -> Result<KfacStepStats> {
        let adaptive = self.pre.cfg.adaptive_damping;
        let before: Vec<(usize, Tensor)> = if adaptive {
            (0..self.pre.layers.len())
                .map(|i| Ok((i, self.pre.layer_folded(i)?.copy()?)))
                .collect::<Result<_>>()?
        } else {
            Vec::new()
        };
        let (pre_grads, mut stats) = self.pre.step(grads, curvature)?;
        let t = Instant::now();
        self.sgd.step(&pre_grads)?;
        self.adamw.step(grads)?;
        stats.time_update = t.elapsed().as_secs_f64();
        if adaptive {
            let mut deltas = Vec::new();
            for (i, w0) in before {
                let spec = &self.pre.layers[i].spec;
                let Some(gw) = grads.gradient(&format!("{}.weight", spec.name), &spec.weight)
                else {
                    continue;
                };
                let gb = match &spec.bias {
                    Some(b) => Some(match grads.gradient(&format!("{}.bias", spec.name), b) {
                        Some(g) => g,
                        None => b.zeros_like()?,
                    }),
                    None => None,
                };
                let g = fold(&gw, gb.as_ref())?;
                deltas.push((i, g, (self.pre.layer_folded(i)? - w0)?));
            }
            stats.predicted_change = self.pre.predicted_change(&deltas)?;
        }
        Ok(stats)
    }

    /// Whether the next step refreshes the factors (see [`Preconditioner::needs_curvature`]).
    pub fn needs_curvature(&self) -> bool {
        self.pre.needs_curvature()
    }

    /// Threads of the preconditioner's per-layer work ([`Preconditioner::set_threads`]).
    pub fn set_threads(&mut self, threads: usize) {
        self.pre.set_threads(threads);
    }

    /// Which labels the curvature backward should use.
    pub fn fisher_type(&self) -> FisherType {
        self.pre.cfg.fisher_type
    }

    /// The preconditioner.
    pub fn preconditioner(&self) -> &Preconditioner {
        &self.pre
    }

    /// Feeds the Levenberg–Marquardt rule ([`Preconditioner::adapt_damping`]) with the observed
    /// loss change and [`KfacStepStats::predicted_change`]; returns the new `λ`.
    pub fn adapt_damping(&mut self, actual: f64, predicted: f64) -> f64 {
        self.pre.adapt_damping(actual, predicted)
    }

    /// Learning rate of both inner optimizers' outer step (the SGD's `η`).
    pub fn learning_rate(&self) -> f64 {
        self.sgd.learning_rate()
    }

    /// Sets the SGD learning rate `η` (also used by KL clipping). AdamW keeps its own.
    pub fn set_learning_rate(&mut self, lr: f64) {
        self.sgd.set_learning_rate(lr);
        self.pre.cfg.lr = lr;
    }

    /// Everything a resumed run needs: the preconditioner's state and both inner optimizers'.
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = self.pre.state()?;
        out.extend(self.sgd.state()?);
        out.extend(self.adamw.state()?);
        Ok(out)
    }

    /// Restores [`Self::state`].
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        self.pre.load_state(state)?;
        self.sgd.load_state(state)?;
        self.adamw.load_state(state)
    }
}

/// Labels drawn from `softmax(logits)` along the last dimension, one per row, as `u32` with the
/// leading shape of `logits` (for the Monte-Carlo Fisher's extra backward).
pub fn sample_labels(logits: &Tensor, rng: &mut impl Rng) -> Result<Tensor> {
    let dims = logits.dims();
    let Some((&c, lead)) = dims.split_last() else {
        return Err(KfacError::Shape {
            what: "logits".into(),
            expected: "(…, classes)".into(),
            found: format!("{dims:?}"),
        });
    };
    if c == 0 {
        return Err(KfacError::Shape {
            what: "logits".into(),
            expected: "at least one class".into(),
            found: format!("{dims:?}"),
        });
    }
    let max = logits.max_keepdim(D::Minus1)?;
    let p = logits.broadcast_sub(&max)?.exp()?;
    let p = p.broadcast_div(&p.sum_keepdim(D::Minus1)?)?;
    let rows = p.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let mut labels = Vec::with_capacity(rows.len() / c);
    for row in rows.chunks(c) {
        if row.iter().any(|v| !v.is_finite()) {
            return Err(KfacError::NonFinite(
                "logits passed to sample_labels".into(),
            ));
        }
        let u: f64 = rng.random();
        let mut acc = 0.0;
        let mut label = c - 1;
        for (j, &pj) in row.iter().enumerate() {
            acc += pj;
            if u < acc {
                label = j;
                break;
            }
        }
        labels.push(label as u32);
    }
    Ok(Tensor::from_vec(labels, lead, logits.device())?)
}

#[cfg(test)]
mod host_solve_tests {
    use super::*;
    use candle_core::Device;

    fn t(v: Vec<f32>, shape: &[usize]) -> Tensor {
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                (((i as u32).wrapping_mul(2654435761) ^ seed).wrapping_mul(40503) % 1000) as f32
                    / 500.0
                    - 1.0
            })
            .collect()
    }

    /// The host solve is the tensor-op formula: being plain linear algebra it holds for any
    /// matrices, so pseudo-random `Q`s and positive `λ`s test it (no orthogonal basis needed).
    #[test]
    fn host_eigen_solve_matches_the_tensor_ops() {
        let (m, k) = (5, 7);
        let qa = t(values(k * k, 1), &[k, k]);
        let qg = t(values(m * m, 2), &[m, m]);
        let la = t(values(k, 3).iter().map(|v| v.abs() + 0.1).collect(), &[k]);
        let lg = t(values(m, 4).iter().map(|v| v.abs() + 0.2).collect(), &[m]);
        let grad = t(values(m * k, 5), &[m, k]);
        let e = Eig::new(qa.clone(), la.clone(), qg.clone(), lg.clone());
        let host = e.host().expect("f32 CPU factors have a host copy");
        for (sa, sg, tk) in [(0.0, 0.0, 0.05), (0.3, 0.02, 0.0)] {
            let g = grad.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let inv_d = host.inverse_denominators((sa, sg, tk));
            let u = host.solve(&g, (m, k), &inv_d).unwrap();
            let denom = ((&lg + sg).unwrap().unsqueeze(1).unwrap())
                .broadcast_mul(&(&la + sa).unwrap().unsqueeze(0).unwrap())
                .unwrap();
            let denom = (denom + tk).unwrap();
            let rotated = qg.t().unwrap().matmul(&grad).unwrap().matmul(&qa).unwrap();
            let want = qg
                .matmul(&(rotated / denom).unwrap())
                .unwrap()
                .matmul(&qa.t().unwrap())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let scale = want.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            for (a, b) in u.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-5 * scale, "{a} vs {b}");
            }
        }
        // A singular denominator gives a non-finite result, reported as None.
        let g = vec![1.0f32; m * k];
        let zero = Eig::new(qa, la.zeros_like().unwrap(), qg, lg);
        let h = zero.host().unwrap();
        let inv_d = h.inverse_denominators((0.0, 0.0, 0.0));
        assert!(h.solve(&g, (m, k), &inv_d).is_none());
    }
}
