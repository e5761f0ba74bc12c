//! `--optimizer kfac|cgfac`: the `bmt-kfac` preconditioner on every Q, K, V, O and MLP linear of
//! the model, SGD with momentum on their preconditioned gradients, AdamW on everything else.
//!
//! On the steps where the preconditioner refreshes its factors (every `k_fac` steps) the tracked
//! layers record their inputs and output gradients. With the Monte-Carlo Fisher (the default) the
//! output gradients come from one extra backward pass of the loss against labels sampled from the
//! model's own predictive distribution, with a generator seeded by `(seed, step)` so that a resumed
//! run samples the same labels.

use std::collections::HashMap;

use bmt_kfac::{
    AdamWConfig, FisherType, KfacConfig, KfacOptimizer, KfacStepStats, LayerCapture, NamedParams,
    PreconditionedLayer, Solver, WeightSharing,
};
use candle_core::Tensor;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::{OptimizerKind, TrainConfig};
use crate::error::{Result, TrainError};
use crate::gradients::StepGradients;
use crate::model::{ModelConfig, Transformer};

/// Default learning rate of the outer SGD of `--optimizer kfac|cgfac`.
pub const DEFAULT_LR: f64 = 0.1;

/// K-FAC settings of a run (`config.json`); `None` fields take the crate's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KfacSettings {
    /// Solver: `eigen`, `inverse`, `cg` (CG-FAC on the factors) or `cg-matrix-free`.
    pub solver: String,
    /// Tikhonov damping λ.
    pub damping: f64,
    /// Factor refresh period.
    pub k_fac: u64,
    /// Eigenbasis / inverse refresh period.
    pub k_inv: u64,
    /// `mc` (Monte-Carlo, true Fisher) or `empirical`.
    pub fisher: String,
    /// KL-clipping constant (0 disables).
    pub kl_clip: f64,
    /// CG tolerance (relative squared residual).
    pub cg_tol: f64,
    /// CG iteration cap.
    pub cg_max_iters: usize,
    /// Learning rate of the AdamW on the parameters K-FAC does not precondition.
    pub others_lr: f64,
    /// Weight sharing over the tokens: `reduce` (the default for the ViT's per-sequence loss,
    /// exact for deep linear networks in that setting) or `expand` (per-token losses).
    #[serde(default = "default_sharing")]
    pub sharing: String,
    /// Eigen solver: re-estimate the eigenvalues in the kept bases on the factor refreshes between
    /// eigenbasis refreshes ([`KfacConfig::eigenvalue_refresh`]). A configuration written before
    /// the setting existed reads as `false`, which is how it ran.
    #[serde(default)]
    pub eigenvalue_refresh: bool,
}

fn default_sharing() -> String {
    "reduce".into()
}

impl KfacSettings {
    /// The defaults for `kind` (`kfac`: eigen; `cgfac`: CG on the factors), tuned on W1 by a small
    /// grid over the learning rate, damping, refresh periods and KL clip (docs/BENCHMARKS.md):
    /// damping 0.1 (1e-3 and 1e-2 were unstable or slower); eigenbases refreshed every 20 steps
    /// (the crate's 100 left them stale for most of W1's 660 steps; 40 ended 0.005 ± 0.006 less
    /// accurate over ten paired seeds); factors refreshed every 20 steps, at the eigenbasis
    /// refreshes, which halves the Monte-Carlo curvature backward and the factor folds of the
    /// crate's 10 at no measured cost in accuracy (ten paired seeds: K-FAC +0.0003 ± 0.0062,
    /// CG-FAC +0.008 ± 0.006 final test accuracy); reduce weight sharing for the per-sequence
    /// loss; the crate's KL clip 1e-3 (which then sets the step length). The eigenvalue refresh
    /// stays on: it acts whenever `k_fac` is set below `k_inv`. The GPT takes the same periods,
    /// which were not tuned on it (the bench's W2 rows use WORKLOADS.md's 10 and 100).
    pub fn defaults(kind: OptimizerKind) -> Self {
        let d = KfacConfig::default();
        Self {
            solver: if kind == OptimizerKind::Cgfac {
                "cg"
            } else {
                "eigen"
            }
            .into(),
            damping: 0.1,
            k_fac: 20,
            k_inv: 20,
            fisher: "mc".into(),
            kl_clip: d.kl_clip.unwrap_or(0.0),
            cg_tol: d.cg_tol,
            cg_max_iters: d.cg_max_iters,
            others_lr: 1e-3,
            sharing: default_sharing(),
            eigenvalue_refresh: d.eigenvalue_refresh,
        }
    }

    /// The defaults of `kind` for the architecture `model`: as [`KfacSettings::defaults`], with
    /// the expand weight-sharing setting for the GPT, whose loss is a sum over tokens (each
    /// token's output a separate example), and reduce for the ViT, whose loss reads one token.
    pub fn for_model(kind: OptimizerKind, model: &ModelConfig) -> Self {
        let mut s = Self::defaults(kind);
        if model.causal() {
            s.sharing = "expand".into();
        }
        s
    }

    /// The crate's configuration for these settings; unknown names are errors naming the flag.
    pub fn to_config(&self, config: &TrainConfig) -> Result<KfacConfig> {
        let solver = match self.solver.as_str() {
            "eigen" => Solver::Eigen,
            "inverse" => Solver::Inverse,
            "cg" => Solver::CgFactor,
            "cg-matrix-free" => Solver::CgMatrixFree,
            other => {
                return Err(TrainError::Config {
                    flag: "--kfac-solver",
                    msg: format!("`{other}`: use eigen, inverse, cg or cg-matrix-free"),
                })
            }
        };
        let fisher_type = match self.fisher.as_str() {
            "mc" => FisherType::MonteCarlo,
            "empirical" => FisherType::Empirical,
            other => {
                return Err(TrainError::Config {
                    flag: "--fisher",
                    msg: format!("`{other}`: use mc or empirical"),
                })
            }
        };
        let weight_sharing = match self.sharing.as_str() {
            "reduce" => bmt_kfac::WeightSharing::Reduce,
            "expand" => bmt_kfac::WeightSharing::Expand,
            other => {
                return Err(TrainError::Config {
                    flag: "--weight-sharing",
                    msg: format!("`{other}`: use reduce or expand"),
                })
            }
        };
        let mut c = KfacConfig {
            weight_sharing,
            solver,
            damping: self.damping,
            k_fac: self.k_fac,
            k_inv: self.k_inv,
            eigenvalue_refresh: self.eigenvalue_refresh,
            fisher_type,
            kl_clip: (self.kl_clip > 0.0).then_some(self.kl_clip),
            cg_tol: self.cg_tol,
            cg_max_iters: self.cg_max_iters,
            lr: config.lr,
            momentum: config.momentum,
            weight_decay: 0.0,
            ..KfacConfig::default()
        };
        if solver == Solver::Inverse {
            c.damping_kind = bmt_kfac::DampingKind::Factored;
        }
        if !(self.kl_clip >= 0.0 && self.kl_clip.is_finite()) {
            return Err(TrainError::Config {
                flag: "--kl-clip",
                msg: format!(
                    "{} is not a KL-clipping constant: use a finite value > 0, or 0 to disable clipping",
                    self.kl_clip
                ),
            });
        }
        c.validate().map_err(|e| {
            let flag = match &e {
                bmt_kfac::KfacError::InvalidConfig { name, .. } => match *name {
                    "k_fac" => "--k-fac",
                    "k_inv" => "--k-inv",
                    "cg_tol" => "--cg-tol",
                    "cg_max_iters" => "--cg-max-iters",
                    "kl_clip" => "--kl-clip",
                    "lr" => "--lr",
                    "momentum" => "--momentum",
                    _ => "--damping",
                },
                _ => "--kfac-solver",
            };
            // The crate's message without its own "invalid …" lead (the flag error says it).
            let msg = match &e {
                bmt_kfac::KfacError::InvalidConfig { value, hint, .. } => {
                    format!("{value}; use {hint}")
                }
                other => other.to_string(),
            };
            TrainError::Config { flag, msg }
        })?;
        Ok(c)
    }
}

/// The K-FAC optimizer of a run and the names of its preconditioned layers.
pub struct KfacRun {
    opt: KfacOptimizer,
    layers: Vec<String>,
}

impl KfacRun {
    /// Named state for the checkpoint.
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(self.opt.state()?)
    }

    /// Restores [`KfacRun::state`].
    pub fn load_state(&mut self, s: &HashMap<String, Tensor>) -> Result<()> {
        Ok(self.opt.load_state(s)?)
    }

    /// Whether the coming step refreshes the factors (then the layers must record).
    pub fn needs_curvature(&self) -> bool {
        self.opt.needs_curvature()
    }

    /// The captures the native Monte-Carlo backward should return: position sums where they are
    /// all the factors use (reduce weight sharing on the ViT, whose per-sequence rescaling is the
    /// identity, see [`per_sample_sum_capture`]), full captures otherwise.
    pub fn monte_carlo_captures(&self, model: &Transformer) -> crate::native::Captures {
        let reduce = self.opt.preconditioner().config().weight_sharing == WeightSharing::Reduce;
        if reduce && !model.config().causal() {
            crate::native::Captures::PositionSums
        } else {
            crate::native::Captures::Full
        }
    }

    /// Whether the coming step reads the training backward's layer captures (a refresh step under
    /// the empirical Fisher; the Monte-Carlo Fisher records its own in an extra backward).
    pub fn needs_training_captures(&self) -> bool {
        self.opt.needs_curvature() && self.opt.fisher_type() == FisherType::Empirical
    }

    /// The optimizer.
    pub fn optimizer(&self) -> &KfacOptimizer {
        &self.opt
    }
}

/// Builds K-FAC (`--optimizer kfac`) or CG-FAC (`--optimizer cgfac`) for `model`.
pub fn build(config: &TrainConfig, model: &Transformer, adamw: AdamWConfig) -> Result<KfacRun> {
    let settings = config
        .kfac
        .clone()
        .unwrap_or_else(|| KfacSettings::for_model(config.optimizer, &config.model));
    let cfg = settings.to_config(config)?;
    let pre: Vec<PreconditionedLayer> = model
        .attention_and_mlp_layers()
        .into_iter()
        .map(PreconditionedLayer::from_tracked)
        .collect();
    let names: Vec<String> = pre.iter().map(|l| l.name.clone()).collect();
    let others = NamedParams::new(
        model
            .parameters()
            .iter()
            .filter(|(k, _)| {
                let prefix = k.rsplit_once('.').map_or(k.as_str(), |(p, _)| p);
                !names.iter().any(|n| n == prefix)
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    );
    let adamw = AdamWConfig {
        lr: settings.others_lr,
        ..adamw
    };
    let mut opt = KfacOptimizer::new(pre, others, cfg, adamw)?;
    // With candle on one thread (the native step), the layers' small factor algebra runs side by
    // side on the run's threads; with a multi-threaded candle, one layer at a time.
    if config.candle_threads() == 1 {
        opt.set_threads(config.threads);
    }
    Ok(KfacRun { opt, layers: names })
}

/// A capture rescaled to `bmt-kfac`'s convention, in which the loss is a mean over the `N`
/// sequences of per-sequence losses. The GPT's loss is a mean over all `N·T` byte predictions,
/// i.e. per-sequence losses that are themselves token means: its output gradients carry an extra
/// `1/T`, so they are multiplied by `T` here, which makes them those of the per-sequence token
/// *sum*. Without it `G` (a square of gradients) would come out `T` times too small against the
/// Fisher of the loss (linear in it), and the damping would swamp it. The ViT's loss reads one
/// token per image: unchanged.
pub fn per_sample_sum_capture(model: &Transformer, mut c: LayerCapture) -> Result<LayerCapture> {
    if model.config().causal() && c.output_grad.rank() >= 3 {
        let t = c.output_grad.dims()[1];
        c.output_grad = (c.output_grad * t as f64)?;
    }
    Ok(c)
}

/// One K-FAC step after the training backward (`grads`). On refresh steps the captures come from
/// the training backward (empirical Fisher: `grads` must hold them, see
/// [`KfacRun::needs_training_captures`]) or from a Monte-Carlo backward: labels are sampled from
/// `logits` with a generator seeded by `(seed, step)`, and `mc_backward` returns the layer
/// captures of the loss against them (the autograd or the native backward pass).
pub fn step(
    k: &mut KfacRun,
    model: &Transformer,
    logits: &Tensor,
    grads: &StepGradients,
    mc_backward: impl FnOnce(&Tensor) -> Result<Vec<LayerCapture>>,
    seed: u64,
    step: usize,
) -> Result<Value> {
    let raw = if k.opt.needs_curvature() {
        match k.opt.fisher_type() {
            FisherType::Empirical => grads.captures().to_vec(),
            FisherType::MonteCarlo => {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                rng.set_stream(0x4d43_0000_0000 + step as u64);
                let sampled = bmt_kfac::sample_labels(&logits.detach(), &mut rng)?;
                mc_backward(&sampled)?
            }
        }
    } else {
        Vec::new()
    };
    if !raw.is_empty() && raw.len() != k.layers.len() {
        return Err(TrainError::Input {
            msg: format!(
                "{} layer captures for the {} preconditioned layers: the forward pass did not \
                 record every layer",
                raw.len(),
                k.layers.len()
            ),
        });
    }
    let curvature = raw
        .into_iter()
        .map(|c| per_sample_sum_capture(model, c))
        .collect::<Result<Vec<_>>>()?;
    let stats = k.opt.step(grads, &curvature)?;
    Ok(stats_json(&stats))
}

/// The step statistics as a JSON record.
pub fn stats_json(s: &KfacStepStats) -> Value {
    json!({
        "cg_iterations_mean": s.cg_iterations_mean,
        "cg_iterations_max": s.cg_iterations_max,
        "cg_breakdowns": s.cg_breakdowns,
        "decomposition_failures": s.decomposition_failures,
        "fallbacks": s.fallbacks,
        "non_finite_factors": s.non_finite_factors,
        "kl_scale": s.kl_scale,
        "damping": s.damping,
        "refreshed_factors": s.refreshed_factors,
        "refreshed_inverses": s.refreshed_inverses,
        "time_factors_s": s.time_factors,
        "time_solve_s": s.time_solve,
        "time_update_s": s.time_update,
    })
}
