//! The fully resolved configuration of a training run, as written to `config.json`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::model::{GptConfig, ModelConfig, VitConfig};

/// The optimizer family of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// AdamW on every parameter (W1-adamw).
    Adamw,
    /// SGD with heavy-ball momentum on every parameter.
    Sgd,
    /// K-FAC with the eigen solver on Q, K, V, O and the MLP linears; AdamW on the rest (W1-kfac).
    Kfac,
    /// CG-FAC (iterative K-FAC, arXiv 2101.00218) on the same layers; AdamW on the rest (W1-cgfac).
    Cgfac,
}

impl std::fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Adamw => "adamw",
            Self::Sgd => "sgd",
            Self::Kfac => "kfac",
            Self::Cgfac => "cgfac",
        })
    }
}

/// What a training step does when its loss, a gradient or its update is not finite.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum NonFinitePolicy {
    /// Stop the run with the step, what was non-finite and the last good checkpoint.
    #[default]
    Stop,
    /// Leave the model and optimizer as they were before the step, count and log the step, and
    /// go on; [`MAX_CONSECUTIVE_SKIPS`] skipped steps in a row stop the run.
    Skip,
}

/// How a training step computes its gradients (`--backward`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackwardKind {
    /// The hand-written forward and backward pass of [`crate::native`] where the model is `f32` on
    /// the CPU (the default; measured 1.6× faster a W1 step, docs/BENCHMARKS.md), candle's
    /// autograd elsewhere.
    Native,
    /// candle's autograd over the model's graph, on every device and dtype: the reference the
    /// native step is tested against.
    Autograd,
}

impl BackwardKind {
    /// What a `config.json` without the field ran with: every run before the native step existed
    /// used autograd, and a resume must continue it exactly.
    fn before_the_field() -> Self {
        Self::Autograd
    }
}

/// The default thread count: one per micro-batch of the native step
/// ([`crate::native::MICRO_BATCHES`]), at most the cores available. Measured on W1, 2 cores, idle
/// (docs/BENCHMARKS.md): two threads run the native step about 1.6× faster than one, and the
/// result does not depend on the thread count.
pub fn default_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    crate::native::MICRO_BATCHES.min(cores).max(1)
}

/// Consecutive skipped steps after which a run with [`NonFinitePolicy::Skip`] stops: a run whose
/// every step is non-finite has diverged, and skipping would only hide it.
pub const MAX_CONSECUTIVE_SKIPS: usize = 10;

/// Everything that determines a run. Two runs with equal configs on the CPU produce identical
/// metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Data source (`digits`, `mnist:DIR`, `cifar10:DIR`, `text:FILE`).
    pub data: String,
    /// Seed of the train/test split (digits, text; ignored by sets with a fixed split).
    pub split_seed: u64,
    /// Seed of initialisation, shuffling and Monte-Carlo sampling.
    pub seed: u64,
    /// Architecture.
    pub model: ModelConfig,
    /// Optimizer family.
    pub optimizer: OptimizerKind,
    /// Learning rate.
    pub lr: f64,
    /// Momentum of SGD (and of K-FAC's outer update).
    pub momentum: f64,
    /// Weight decay (decoupled for AdamW).
    pub weight_decay: f64,
    /// Total number of epochs.
    pub epochs: usize,
    /// Batch size; the last partial batch of an epoch is dropped.
    pub batch_size: usize,
    /// Device (`cpu`, `cuda`, `cuda:N`).
    pub device: String,
    /// CPU threads for Candle's kernels.
    pub threads: usize,
    /// A step record goes to `metrics.jsonl` every this many steps (0: none).
    pub log_every: usize,
    /// Whether the per-epoch diagnostics (sphere, Markov, Brownian) run.
    pub diagnostics: bool,
    /// Initial weights (safetensors), instead of the seeded initialisation.
    pub init: Option<PathBuf>,
    /// Whether the linear weights in `init` are stored `(in, out)` (PyTorch-export of `x·W`, JAX)
    /// rather than Candle's `(out, in)`.
    pub init_in_out: bool,
    /// K-FAC / CG-FAC settings (`None`: the defaults of the chosen optimizer).
    #[serde(default)]
    pub kfac: Option<crate::kfac::KfacSettings>,
    /// What a non-finite loss, gradient or update does (`--on-nonfinite`).
    #[serde(default)]
    pub on_nonfinite: NonFinitePolicy,
    /// How the training step computes its gradients (`--backward`).
    #[serde(default = "BackwardKind::before_the_field")]
    pub backward: BackwardKind,
    /// Fingerprint of the loaded data (`run::RunData::fingerprint`), set by [`crate::run::run`]
    /// when a run starts and checked when it is resumed (`None` in a config that has not started
    /// a run, and in runs made before the field existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_fingerprint: Option<String>,
}

impl TrainConfig {
    /// Fills [`TrainConfig::kfac`] with the chosen optimizer's defaults for this model
    /// ([`crate::kfac::KfacSettings::for_model`]) when it is `None` under `kfac` or `cgfac`, so
    /// that a run's `config.json` records the settings it trained with and a resume continues on
    /// them even after the defaults change. Other optimizers are left as they are.
    pub fn resolve_kfac_settings(&mut self) {
        if self.kfac.is_none()
            && matches!(self.optimizer, OptimizerKind::Kfac | OptimizerKind::Cgfac)
        {
            self.kfac = Some(crate::kfac::KfacSettings::for_model(
                self.optimizer,
                &self.model,
            ));
        }
    }

    /// W1-adamw on the embedded digits (WORKLOADS.md), 30 epochs, seed 0.
    pub fn w1() -> Self {
        Self {
            data: "digits".into(),
            split_seed: 0,
            seed: 0,
            model: VitConfig::w1().into(),
            optimizer: OptimizerKind::Adamw,
            lr: 1e-3,
            momentum: 0.9,
            weight_decay: 0.01,
            epochs: 30,
            batch_size: 64,
            device: "cpu".into(),
            threads: default_threads(),
            log_every: 5,
            diagnostics: true,
            init: None,
            init_in_out: false,
            kfac: None,
            on_nonfinite: NonFinitePolicy::Stop,
            backward: BackwardKind::Native,
            data_fingerprint: None,
        }
    }

    /// W2: the byte-level GPT with AdamW as in W1 (batch 16) on `text:FILE`, one epoch.
    pub fn w2(file: &str) -> Self {
        Self {
            data: format!("text:{file}"),
            model: GptConfig::w2().into(),
            batch_size: 16,
            epochs: 1,
            ..Self::w1()
        }
    }

    /// The thread count candle's own kernels get: 1 when the native step trains on the CPU (its
    /// micro-batch workers use [`TrainConfig::threads`]; candle's kernels then serve evaluation,
    /// the diagnostics and K-FAC's small-factor algebra, which a second thread slows down, and a
    /// second candle pool thread would spin on the core a worker needs), else `threads`.
    pub fn candle_threads(&self) -> usize {
        if self.backward == BackwardKind::Native && self.device == "cpu" {
            1
        } else {
            self.threads
        }
    }

    /// Rejects impossible settings before any work starts, naming the flag.
    pub fn validate(&self) -> Result<()> {
        let bad = |flag: &'static str, msg: String| Err(TrainError::Config { flag, msg });
        self.model.validate()?;
        if self.epochs == 0 {
            return bad("--epochs", "the number of epochs must be at least 1".into());
        }
        if self.batch_size == 0 {
            return bad("--batch-size", "the batch size must be at least 1".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad(
                "--lr",
                format!("{} is not a learning rate: use a finite value > 0", self.lr),
            );
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad(
                "--momentum",
                format!("{} must lie in [0, 1)", self.momentum),
            );
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return bad(
                "--weight-decay",
                format!("{} must be a finite value ≥ 0", self.weight_decay),
            );
        }
        if self.threads == 0 {
            return bad("--threads", "the thread count must be at least 1".into());
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if self.threads > cores {
            return bad(
                "--threads",
                format!(
                    "{} threads on {cores} available cores: Candle's spinning thread pool slows \
                     down by orders of magnitude when oversubscribed; pass at most {cores}",
                    self.threads
                ),
            );
        }
        if self.diagnostics && self.model.tokens() < 2 {
            return bad(
                "--context",
                format!(
                    "sequences of {} token: the diagnostics (token spread, clusters, attention \
                     kernels) need at least 2 tokens; use --context 2 or more, or --no-diagnostics",
                    self.model.tokens()
                ),
            );
        }
        match (&self.kfac, self.optimizer) {
            (Some(k), OptimizerKind::Kfac | OptimizerKind::Cgfac) => {
                k.to_config(self)?;
            }
            (Some(_), other) => {
                return bad(
                    "--optimizer",
                    format!("K-FAC settings were given but the optimizer is {other}: use --optimizer kfac or cgfac"),
                )
            }
            (None, _) => {}
        }
        Ok(())
    }

    /// Whether the seed-derived quantities and architecture of `other` equal this config's, i.e.
    /// whether a run made with `other` can be continued under this config (only the epoch count,
    /// the thread count and the non-finite policy may differ: none changes a finite step).
    pub fn resumable_from(&self, other: &TrainConfig) -> std::result::Result<(), String> {
        let mut a = self.clone();
        a.epochs = other.epochs;
        a.threads = other.threads;
        a.on_nonfinite = other.on_nonfinite;
        if &a == other {
            Ok(())
        } else {
            let ours = serde_json::to_value(&a).unwrap_or_default();
            let theirs = serde_json::to_value(other).unwrap_or_default();
            let mut diffs = Vec::new();
            if let (Some(o), Some(t)) = (ours.as_object(), theirs.as_object()) {
                for (k, v) in o {
                    if t.get(k) != Some(v) {
                        diffs.push(k.clone());
                    }
                }
            }
            Err(format!(
                "these settings differ from the saved run: {}",
                diffs.join(", ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn w1_is_valid_and_has_136138_parameters() {
        let c = TrainConfig::w1();
        c.validate().unwrap();
        assert_eq!(c.model.parameter_count(), 136_138);
        assert_eq!(c.model.tokens(), 17);
        TrainConfig::w2("README.md").validate().unwrap();
    }

    #[test]
    fn impossible_settings_name_their_flag() {
        let mut c = TrainConfig::w1();
        let ModelConfig::Vit(v) = &mut c.model else {
            unreachable!()
        };
        v.heads = 5;
        assert!(c.validate().unwrap_err().to_string().contains("--heads"));
        let mut c = TrainConfig::w1();
        let ModelConfig::Vit(v) = &mut c.model else {
            unreachable!()
        };
        v.patch = 3;
        assert!(c.validate().unwrap_err().to_string().contains("--patch"));
        let mut c = TrainConfig::w1();
        c.batch_size = 0;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--batch-size"));
        let mut c = TrainConfig::w1();
        c.lr = f64::NAN;
        assert!(c.validate().unwrap_err().to_string().contains("--lr"));
    }

    #[test]
    fn rejects_oversubscribed_threads_and_one_token_sequences_with_diagnostics() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut c = TrainConfig::w1();
        c.threads = cores;
        assert!(c.validate().is_ok());
        c.threads = cores + 1;
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("--threads") && err.contains(&format!("at most {cores}")),
            "{err}"
        );
        let mut g = TrainConfig::w2("corpus.txt");
        if let crate::model::ModelConfig::Gpt(m) = &mut g.model {
            m.context = 1;
        }
        let err = g.validate().unwrap_err().to_string();
        assert!(
            err.contains("--context") && err.contains("--no-diagnostics"),
            "{err}"
        );
        g.diagnostics = false;
        assert!(g.validate().is_ok());
    }

    #[test]
    fn resume_allows_only_epochs_and_threads_to_change() {
        let a = TrainConfig::w1();
        let mut b = a.clone();
        b.epochs = 3;
        b.threads = 2;
        assert!(a.resumable_from(&b).is_ok());
        b.lr = 0.5;
        let err = a.resumable_from(&b).unwrap_err();
        assert!(err.contains("lr"), "{err}");
    }
}
