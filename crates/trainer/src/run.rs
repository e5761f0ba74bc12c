//! The training loop and the run directory.
//!
//! A run directory holds `config.json` (the fully resolved [`TrainConfig`]), `metrics.jsonl` (a
//! record per epoch and one per step every `log_every` steps), `summary.json` and
//! `checkpoints/epoch-NNNN.safetensors` (model, optimizer state and run state, written atomically
//! at the end of every epoch). `--resume` continues from the newest checkpoint exactly: shuffles are
//! a pure function of `(seed, epoch)` and Monte-Carlo labels of `(seed, step)`, so a resumed run
//! and an uninterrupted one produce identical metrics on the CPU.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use bmt_kfac::{AdamW, AdamWConfig, NamedParams, Optimizer, SgdMomentum};
use candle_core::{DType, Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::checkpoint::{self, CheckpointMeta};
use crate::config::{
    BackwardKind, NonFinitePolicy, OptimizerKind, TrainConfig, MAX_CONSECUTIVE_SKIPS,
};
use crate::data::{Batch, DataSource, Dataset, ImageSet, Split, TextSet};
use crate::diag::Diagnostics;
use crate::error::{io_err, Result, TrainError};
use crate::gradients::{autograd_captures, StepGradients};
use crate::model::{correct_predictions, cross_entropy, ModelConfig, Transformer};
use crate::native::{Captures, NativeStep, Want};

/// The optimizer of a run.
pub enum RunOptimizer {
    /// A first-order optimizer over every parameter (AdamW or SGD with momentum).
    FirstOrder(Box<dyn Optimizer + Send>),
    /// K-FAC or CG-FAC on the attention and MLP linears, AdamW on the rest.
    Kfac(Box<crate::kfac::KfacRun>),
}

impl RunOptimizer {
    /// Builds the optimizer `config` asks for over `model`'s parameters.
    pub fn new(config: &TrainConfig, model: &Transformer) -> Result<Self> {
        let all = NamedParams::new(
            model
                .parameters()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        );
        let adamw = AdamWConfig {
            lr: config.lr,
            weight_decay: config.weight_decay,
            ..AdamWConfig::default()
        };
        Ok(match config.optimizer {
            OptimizerKind::Adamw => Self::FirstOrder(Box::new(AdamW::new(all, adamw)?)),
            OptimizerKind::Sgd => Self::FirstOrder(Box::new(SgdMomentum::new(
                all,
                config.lr,
                config.momentum,
                config.weight_decay,
            )?)),
            OptimizerKind::Kfac | OptimizerKind::Cgfac => {
                Self::Kfac(Box::new(crate::kfac::build(config, model, adamw)?))
            }
        })
    }

    /// Whether the coming step needs the tracked layers' captures.
    pub fn needs_captures(&self) -> bool {
        match self {
            Self::FirstOrder(_) => false,
            Self::Kfac(k) => k.needs_curvature(),
        }
    }

    /// Named optimizer state for the checkpoint.
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(match self {
            Self::FirstOrder(o) => o.state()?,
            Self::Kfac(k) => k.state()?,
        })
    }

    /// Restores the state saved by [`RunOptimizer::state`].
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        match self {
            Self::FirstOrder(o) => o.load_state(state)?,
            Self::Kfac(k) => k.load_state(state)?,
        }
        Ok(())
    }
}

/// What one optimizer step reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StepOutcome {
    /// Mean cross-entropy of the batch before the update.
    pub loss: f64,
    /// Correct predictions in the batch before the update.
    pub correct: usize,
    /// Optimizer statistics (K-FAC: CG iterations, breakdowns, damping, timings), if any.
    pub optimizer: Option<Value>,
    /// First- and second-order terms of this step's loss change, on measured steps
    /// ([`crate::second_order`]).
    pub second_order: Option<Value>,
    /// Why the step was skipped under [`NonFinitePolicy::Skip`] (nothing was updated), if it was.
    pub skipped: Option<String>,
    /// Wall time of each phase of the step.
    #[serde(skip)]
    pub times: StepTimes,
}

/// Seconds spent in each phase of one [`Trainer::train_step`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepTimes {
    /// Forward pass and loss.
    pub forward: f64,
    /// Training backward pass.
    pub backward: f64,
    /// Optimizer step (for K-FAC: Monte-Carlo backward, factors, solve and update).
    pub optimizer: f64,
    /// The part of `optimizer` spent in K-FAC's Monte-Carlo backward: the loss gradient of the
    /// sampled labels, the backward pass and its captures (refresh steps only; drawing the labels
    /// is not included).
    pub curvature_backward: f64,
    /// The second-order measurement (recording before and the extra forward after the update).
    pub second_order: f64,
}

/// Loss and accuracy over a data set.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Evaluation {
    /// Mean cross-entropy in nats per prediction (per image, or per byte for text).
    pub loss: f64,
    /// Fraction of correct arg-max predictions (images, or next bytes).
    pub accuracy: f64,
}

impl Evaluation {
    /// The loss in bits per prediction, `loss / ln 2`: bits per byte for a byte-level model.
    pub fn bits(&self) -> f64 {
        self.loss / std::f64::consts::LN_2
    }
}

/// A model with its optimizer: one training step at a time.
pub struct Trainer {
    /// The model.
    pub model: Transformer,
    /// The optimizer.
    pub optimizer: RunOptimizer,
    /// The configuration.
    pub config: TrainConfig,
    /// The device.
    pub device: Device,
    /// Steps taken so far.
    pub step: usize,
    /// Every this many steps the second-order term is measured (0: never). Set from
    /// `config.diagnostics` ([`SECOND_ORDER_EVERY`]).
    pub second_order_every: usize,
    /// Steps skipped so far under [`NonFinitePolicy::Skip`].
    pub skipped_steps: usize,
    /// Steps skipped in a row (reset by every step that updates).
    pub consecutive_skips: usize,
    /// The native step's activations, reused from step to step.
    native: NativeStep,
}

/// What [`Trainer::forward_backward`] returns: the loss, the correct predictions, and (unless the
/// loss is not finite, when nothing else was done) the gradients and where the logits are.
type ForwardBackward = (f64, usize, Option<(StepGradients, StepLogits)>);

/// Where the K-FAC step finds this step's logits.
enum StepLogits {
    /// On the trainer's [`NativeStep`].
    Native,
    /// The autograd forward pass's (still attached to its graph).
    Autograd(Tensor),
}

/// Period, in steps, of the second-order measurement when diagnostics are on.
pub const SECOND_ORDER_EVERY: usize = 10;

impl Trainer {
    /// A trainer for `model` with the optimizer of `config`.
    pub fn new(config: TrainConfig, model: Transformer, device: Device) -> Result<Self> {
        let optimizer = RunOptimizer::new(&config, &model)?;
        let second_order_every = if config.diagnostics {
            SECOND_ORDER_EVERY
        } else {
            0
        };
        Ok(Self {
            model,
            optimizer,
            config,
            device,
            step: 0,
            second_order_every,
            skipped_steps: 0,
            consecutive_skips: 0,
            native: NativeStep::new(),
        })
    }

    /// One optimizer step on `batch`.
    ///
    /// Checked at this step: the loss, every parameter's gradient (before any update) and every
    /// parameter after the update. Under [`NonFinitePolicy::Stop`] a non-finite one is
    /// [`TrainError::Diverged`] naming it (a non-finite loss or gradient leaves the model and the
    /// optimizer untouched; a non-finite update has already been applied, and the run stops
    /// before anything of it is written). Under [`NonFinitePolicy::Skip`] the model and the
    /// optimizer are left as before the step, the step counter does not advance and the outcome
    /// says why it was skipped; [`MAX_CONSECUTIVE_SKIPS`] skips in a row are `Diverged`.
    pub fn train_step(&mut self, batch: &Batch) -> Result<StepOutcome> {
        let outcome = self.guarded_step(batch);
        let skip = self.config.on_nonfinite == NonFinitePolicy::Skip;
        match outcome {
            Err(TrainError::Diverged { what, .. }) if skip => {
                self.skipped_steps += 1;
                self.consecutive_skips += 1;
                if self.consecutive_skips >= MAX_CONSECUTIVE_SKIPS {
                    return Err(TrainError::Diverged {
                        epoch: 0,
                        step: self.step + 1,
                        what: format!(
                            "{MAX_CONSECUTIVE_SKIPS} steps in a row were skipped as non-finite (the last: {what})"
                        ),
                        hint: String::new(),
                    });
                }
                Ok(StepOutcome {
                    loss: f64::NAN,
                    skipped: Some(what),
                    ..StepOutcome::default()
                })
            }
            other => {
                if other.is_ok() {
                    self.consecutive_skips = 0;
                }
                other
            }
        }
    }

    /// The name of the first parameter (in name order) whose value holds a NaN or ±∞, if any;
    /// `Σ|x|` is computed in the tensor's dtype and overflows to ∞ only for values beyond any
    /// useful training state.
    fn first_non_finite_parameter(&self) -> Result<Option<String>> {
        for (name, var) in self.model.parameters() {
            let total = var
                .as_tensor()
                .abs()?
                .sum_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
            if !total.is_finite() {
                return Ok(Some(name.clone()));
            }
        }
        Ok(None)
    }

    /// Whether this trainer's steps run the native forward and backward pass ([`crate::native`]).
    pub fn uses_native_step(&self) -> bool {
        self.config.backward == BackwardKind::Native && crate::native::supports(&self.model)
    }

    /// Forward pass, loss and backward pass of one step, natively (`native`, from
    /// [`Trainer::uses_native_step`]) or through autograd; `captures` asks for the attention/MLP
    /// layers' captures. Returns the loss, the correct predictions and
    /// what the optimizer step needs, or the loss alone when it is not finite (nothing else done).
    fn forward_backward(
        &mut self,
        batch: &Batch,
        (native, captures): (bool, bool),
        times: &mut StepTimes,
    ) -> Result<ForwardBackward> {
        let t = Instant::now();
        let threads = self.config.threads;
        if native {
            self.native.forward(&self.model, &batch.inputs, threads)?;
            let (loss, correct, dlogits) = self.native.cross_entropy(&batch.targets)?;
            times.forward = t.elapsed().as_secs_f64();
            if !loss.is_finite() {
                return Ok((loss, correct, None));
            }
            let t = Instant::now();
            let want = Want {
                parameters: true,
                captures: if captures {
                    Captures::Full
                } else {
                    Captures::None
                },
            };
            let backward = self.native.backward(&dlogits, want, threads)?;
            let grads = StepGradients::from_native(&self.model, backward)?;
            times.backward = t.elapsed().as_secs_f64();
            return Ok((loss, correct, Some((grads, StepLogits::Native))));
        }
        if captures {
            self.model.set_tracking(true);
        }
        let logits = self.model.forward(&batch.inputs)?;
        let loss = cross_entropy(&logits, &batch.targets)?;
        let loss_value = loss.to_scalar::<f32>()? as f64;
        let correct = correct_predictions(&logits, &batch.targets)?;
        times.forward = t.elapsed().as_secs_f64();
        if !loss_value.is_finite() {
            self.model.set_tracking(false);
            return Ok((loss_value, correct, None));
        }
        let t = Instant::now();
        let store = loss.backward()?;
        let grads = StepGradients::from_autograd(&self.model, &store, captures);
        times.backward = t.elapsed().as_secs_f64();
        Ok((
            loss_value,
            correct,
            Some((grads?, StepLogits::Autograd(logits))),
        ))
    }

    fn guarded_step(&mut self, batch: &Batch) -> Result<StepOutcome> {
        let diverged = |step: usize, what: String| TrainError::Diverged {
            epoch: 0,
            step,
            what,
            hint: String::new(),
        };
        let measure = self.second_order_every > 0 && (self.step + 1) % self.second_order_every == 0;
        let native = self.uses_native_step();
        let captures = match &self.optimizer {
            RunOptimizer::FirstOrder(_) => measure,
            // The autograd path records on every refresh step: its Monte-Carlo backward reads the
            // probes of this forward pass.
            RunOptimizer::Kfac(k) if native => measure || k.needs_training_captures(),
            RunOptimizer::Kfac(k) => measure || k.needs_curvature(),
        };
        let mut times = StepTimes::default();
        let result = self.forward_backward(batch, (native, captures), &mut times);
        let (loss_value, correct, rest) = match result {
            Ok(r) => r,
            Err(e) => {
                self.model.set_tracking(false);
                return Err(e);
            }
        };
        let Some((grads, logits)) = rest else {
            return Err(diverged(
                self.step + 1,
                format!("the training loss is {loss_value}"),
            ));
        };
        if let Some(name) = grads.first_non_finite() {
            self.model.set_tracking(false);
            return Err(diverged(
                self.step + 1,
                format!("the gradient of `{name}` is not finite (the loss is {loss_value})"),
            ));
        }
        // Under Skip, a non-finite update is undone: keep what the step may change.
        let undo = if self.config.on_nonfinite == NonFinitePolicy::Skip {
            Some((self.model.snapshot()?, self.optimizer.state()?))
        } else {
            None
        };
        let t = Instant::now();
        let before = if measure {
            Some(crate::second_order::Before::record(
                &self.model,
                &grads,
                loss_value,
            )?)
        } else {
            None
        };
        times.second_order = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let optimizer = match &mut self.optimizer {
            RunOptimizer::FirstOrder(o) => {
                o.step(&grads)?;
                None
            }
            RunOptimizer::Kfac(k) => {
                let (seed, step) = (self.config.seed, self.step);
                let stats = match logits {
                    StepLogits::Native => {
                        let (native, threads) = (&mut self.native, self.config.threads);
                        let mc_captures = k.monte_carlo_captures(&self.model);
                        let logits = native.logits()?;
                        crate::kfac::step(
                            k,
                            &self.model,
                            &logits,
                            &grads,
                            |sampled| {
                                let t = Instant::now();
                                let (_, _, dlogits) = native.cross_entropy(sampled)?;
                                let want = Want {
                                    parameters: false,
                                    captures: mc_captures,
                                };
                                let captures = native.backward(&dlogits, want, threads)?.captures;
                                times.curvature_backward = t.elapsed().as_secs_f64();
                                Ok(captures)
                            },
                            seed,
                            step,
                        )?
                    }
                    StepLogits::Autograd(logits) => {
                        let model = &self.model;
                        crate::kfac::step(
                            k,
                            model,
                            &logits,
                            &grads,
                            |sampled| {
                                let t = Instant::now();
                                let store = cross_entropy(&logits, sampled)?.backward()?;
                                let captures = autograd_captures(model, &store);
                                times.curvature_backward = t.elapsed().as_secs_f64();
                                captures
                            },
                            seed,
                            step,
                        )?
                    }
                };
                Some(stats)
            }
        };
        times.optimizer = t.elapsed().as_secs_f64();
        self.model.set_tracking(false);
        if let Some(name) = self.first_non_finite_parameter()? {
            if let Some((params, state)) = undo {
                self.model.load(&params)?;
                self.optimizer
                    .load_state(&state.into_iter().collect::<HashMap<_, _>>())?;
            }
            return Err(diverged(
                self.step + 1,
                format!("the update made parameter `{name}` non-finite"),
            ));
        }
        let t = Instant::now();
        let second_order = match before {
            Some(b) => Some(b.finish(&self.model, batch)?),
            None => None,
        };
        times.second_order += t.elapsed().as_secs_f64();
        self.step += 1;
        Ok(StepOutcome {
            loss: loss_value,
            correct,
            optimizer,
            second_order,
            skipped: None,
            times,
        })
    }

    /// Loss and accuracy over [`Dataset::eval_indices`] of `data`, in batches of `batch_size`
    /// samples; every prediction (image or byte position) weighs the same.
    pub fn evaluate(&self, data: &dyn Dataset, batch_size: usize) -> Result<Evaluation> {
        let mut loss_sum = 0.0;
        let mut correct = 0usize;
        let mut predictions = 0usize;
        let idx = data.eval_indices();
        for chunk in idx.chunks(batch_size.max(1)) {
            let b = data.batch(chunk, &self.device)?;
            let logits = self.model.forward(&b.inputs)?.detach();
            let n = b.targets.elem_count();
            let loss = cross_entropy(&logits, &b.targets)?.to_scalar::<f32>()? as f64;
            loss_sum += loss * n as f64;
            correct += correct_predictions(&logits, &b.targets)?;
            predictions += n;
        }
        Ok(Evaluation {
            loss: loss_sum / predictions.max(1) as f64,
            accuracy: correct as f64 / predictions.max(1) as f64,
        })
    }
}

/// The batches of one epoch: the first `take` entries of a permutation of `0..n` that is a pure
/// function of `(seed, epoch)`, cut into batches of `batch_size`, the last partial batch dropped.
/// Image sets take every sample (`take = n`); text sets [`Dataset::epoch_len`] of their windows.
pub fn epoch_batches(
    n: usize,
    take: usize,
    batch_size: usize,
    seed: u64,
    epoch: usize,
) -> Vec<Vec<usize>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(1 + epoch as u64);
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut rng);
    idx.truncate(take);
    idx.chunks_exact(batch_size).map(|c| c.to_vec()).collect()
}

/// What a finished run reports (`summary.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// Test accuracy after the last epoch.
    pub final_test_accuracy: f64,
    /// Best test accuracy over the epochs.
    pub best_test_accuracy: f64,
    /// Test loss after the last epoch.
    pub final_test_loss: f64,
    /// Mean training loss of the last epoch.
    pub final_train_loss: f64,
    /// Steps skipped as non-finite under `--on-nonfinite skip` (0 under the default `stop`).
    #[serde(default)]
    pub skipped_steps: usize,
    /// Validation bits per byte after the last epoch (`final_test_loss / ln 2`; text only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_bits_per_byte: Option<f64>,
    /// Lowest validation bits per byte over the epochs (text only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_bits_per_byte: Option<f64>,
    /// Epochs completed.
    pub epochs: usize,
    /// Optimizer steps taken.
    pub steps: usize,
    /// Wall seconds of the whole run (evaluation and diagnostics included).
    pub wall_seconds: f64,
    /// Optimizer steps per second of pure training time (forward, backward, update).
    pub steps_per_second: f64,
    /// Wall seconds until test accuracy first reached 0.95 (`null` if never).
    pub seconds_to_95pct: Option<f64>,
    /// Peak resident memory of the process, in MiB (Linux; `null` elsewhere).
    pub peak_memory_mib: Option<f64>,
    /// The optimizer.
    pub optimizer: String,
    /// Diagnostics summary (sphere, Markov, Brownian), if diagnostics ran.
    pub diagnostics: Value,
}

/// Peak resident set size of this process in MiB, from `/proc/self/status` (`VmHWM`).
pub fn peak_memory_mib() -> Option<f64> {
    let s = fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// A run's data: labelled images for the ViT or byte windows for the GPT.
#[derive(Debug, Clone)]
pub enum RunData {
    /// An image classification set (digits, MNIST, CIFAR-10).
    Images(Split<ImageSet>),
    /// A byte-level text set.
    Text(Split<TextSet>),
}

impl RunData {
    /// The training samples.
    pub fn train(&self) -> &dyn Dataset {
        match self {
            Self::Images(s) => &s.train,
            Self::Text(s) => &s.train,
        }
    }

    /// The held-out samples (test images, or validation text).
    pub fn test(&self) -> &dyn Dataset {
        match self {
            Self::Images(s) => &s.test,
            Self::Text(s) => &s.test,
        }
    }

    /// One line on the data set, its origin and its split.
    pub fn description(&self) -> &str {
        match self {
            Self::Images(s) => &s.description,
            Self::Text(s) => &s.description,
        }
    }

    /// `"TTTTTTTT-EEEEEEEE"`: the hex CRC-32 fingerprints of the training and the held-out set.
    /// Recorded in a run's `config.json` so that `--resume` can tell when the data changed.
    pub fn fingerprint(&self) -> String {
        let (a, b) = match self {
            Self::Images(s) => (s.train.fingerprint(), s.test.fingerprint()),
            Self::Text(s) => (s.train.fingerprint(), s.test.fingerprint()),
        };
        format!("{a:08x}-{b:08x}")
    }

    /// Whether this is text (losses are then also reported in bits per byte).
    pub fn is_text(&self) -> bool {
        matches!(self, Self::Text(_))
    }
}

/// Fraction of a text file's blocks held out for validation.
pub const TEXT_VALIDATION_FRACTION: f64 = 0.1;

/// Loads the data set named by `config.data`: images need the ViT, text the GPT (whose context
/// length sets the window length). A mismatch is a configuration error naming `--model`.
pub fn load_data(config: &TrainConfig) -> Result<RunData> {
    let source: DataSource = config.data.parse()?;
    let mismatch = |need: &str| TrainError::Config {
        flag: "--model",
        msg: format!(
            "{} data needs --model {need}, but the model is {}",
            config.data,
            config.model.kind()
        ),
    };
    Ok(match (&source, &config.model) {
        (DataSource::Text(file), ModelConfig::Gpt(g)) => RunData::Text(crate::data::load_text(
            file,
            g.context,
            TEXT_VALIDATION_FRACTION,
            config.split_seed,
        )?),
        (DataSource::Text(_), _) => return Err(mismatch("gpt")),
        (_, ModelConfig::Gpt(_)) => return Err(mismatch("vit")),
        (DataSource::Digits, _) => RunData::Images(crate::data::load_digits(config.split_seed)?),
        (DataSource::Mnist(dir), _) => RunData::Images(crate::data::load_mnist(dir)?),
        (DataSource::Cifar10(dir), _) => RunData::Images(crate::data::load_cifar10(dir)?),
    })
}

/// Adapts a ViT's input size to the images (patch size follows the image size: 2 for 8×8, 4 for
/// 28×28 and 32×32, unless `patch` was given). Text leaves the GPT as configured.
pub fn fit_model_to_data(config: &mut TrainConfig, data: &RunData, patch: Option<usize>) {
    if let (RunData::Images(split), ModelConfig::Vit(m)) = (data, &mut config.model) {
        let d = &split.train;
        m.channels = d.channels;
        m.height = d.height;
        m.width = d.width;
        m.classes = d.num_classes;
        m.patch = patch.unwrap_or(if d.height <= 8 { 2 } else { 4 });
    }
}

/// Progress display: a bar with rate and ETA on a terminal, silent otherwise.
struct Progress {
    bar: indicatif::ProgressBar,
}

impl Progress {
    fn new(total: u64, done: u64, quiet: bool) -> Self {
        let bar = if quiet {
            indicatif::ProgressBar::hidden()
        } else {
            indicatif::ProgressBar::new(total)
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{bar:30}] {pos}/{len} steps  {per_sec}  ETA {eta}  {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_position(done);
        bar.reset_eta();
        Self { bar }
    }

    fn line(&self, s: &str, quiet: bool) {
        if quiet {
            return;
        }
        if self.bar.is_hidden() {
            eprintln!("{s}");
        } else {
            self.bar.println(s);
        }
    }
}

/// Options of [`run`] that are not part of the run's identity.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Continue the run found in the output directory.
    pub resume: bool,
    /// Print nothing (tests).
    pub quiet: bool,
    /// Stop after this many epochs in this invocation (tests of crash-resume); `None`: run to the end.
    pub stop_after: Option<usize>,
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(value).map_err(|e| TrainError::Json {
        path: path.to_path_buf(),
        source: e,
    })?;
    fs::write(&tmp, text + "\n").map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// `"1 epoch"`, `"30 epochs"`.
fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// `spec` with a relative data path made absolute (against the current directory), so that a
/// run's `config.json` names its data wherever `--resume` is started from.
fn absolute_data_path(spec: &str) -> Result<String> {
    use crate::data::DataSource;
    let source: DataSource = spec.parse()?;
    let abs = |p: &PathBuf| std::path::absolute(p).unwrap_or_else(|_| p.clone());
    Ok(match &source {
        DataSource::Digits => source,
        DataSource::Mnist(p) => DataSource::Mnist(abs(p)),
        DataSource::Cifar10(p) => DataSource::Cifar10(abs(p)),
        DataSource::Text(p) => DataSource::Text(abs(p)),
    }
    .to_string())
}

/// Reads `config.json` of a run directory.
pub fn read_config(dir: &Path) -> Result<TrainConfig> {
    let path = dir.join("config.json");
    let text = fs::read_to_string(&path).map_err(|e| TrainError::Resume {
        dir: dir.to_path_buf(),
        msg: format!(
            "no readable config.json ({e}): is this a run directory made by `cargo xtask train`?"
        ),
    })?;
    serde_json::from_str(&text).map_err(|e| TrainError::Resume {
        dir: dir.to_path_buf(),
        msg: format!("config.json is not a valid run configuration: {e}"),
    })
}

/// Rewrites `metrics.jsonl` keeping only records of epochs ≤ `epoch` (a crash may have left records
/// of an epoch whose checkpoint was never written).
fn truncate_metrics(path: &Path, epoch: usize) -> Result<()> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(path)(e)),
    };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .and_then(|v| v.get("epoch").and_then(Value::as_u64))
                .is_some_and(|e| e as usize <= epoch)
        })
        .collect();
    let tmp = path.with_extension("jsonl.tmp");
    let mut body = kept.join("\n");
    if !body.is_empty() {
        body.push('\n');
    }
    fs::write(&tmp, body).map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// Trains `config` into `out`, writing the run directory; with `options.resume`, continues the run
/// already in `out` (whose `config.json` must match `config` except for epochs and threads).
pub fn run(mut config: TrainConfig, out: &Path, options: &RunOptions) -> Result<Summary> {
    config.validate()?;
    if out.exists() && !out.is_dir() {
        return Err(TrainError::Config {
            flag: if options.resume { "--resume" } else { "--out" },
            msg: format!(
                "{} is a file, not a run directory: pass a directory (--out creates it if missing)",
                out.display()
            ),
        });
    }
    if !options.resume {
        config.data = absolute_data_path(&config.data)?;
    }
    let device = crate::device::open_device(&config.device)?;
    let data = load_data(&config)?;
    let patch = config.model.as_vit().map(|v| v.patch);
    fit_model_to_data(&mut config, &data, patch);
    config.validate()?;
    let fingerprint = data.fingerprint();
    let ckpt = if options.resume {
        let saved = read_config(out)?;
        if let Some(before) = &saved.data_fingerprint {
            if *before != fingerprint {
                return Err(TrainError::Resume {
                    dir: out.to_path_buf(),
                    msg: format!(
                        "the data {} changed since the run started (fingerprint {before}, now {fingerprint}): a resumed run must see the same data; restore it, or start a new run",
                        config.data
                    ),
                });
            }
        }
        // Runs made before fingerprints existed have none and keep none.
        config.data_fingerprint = saved.data_fingerprint.clone();
        // No K-FAC settings asked for means the run's own (a run records them since they exist).
        if config.kfac.is_none() {
            config.kfac = saved.kfac.clone();
        }
        if saved.kfac.is_none()
            && matches!(config.optimizer, OptimizerKind::Kfac | OptimizerKind::Cgfac)
            && !options.quiet
        {
            eprintln!(
                "warning: {}'s config.json records no K-FAC settings (a run configured in code with `kfac: None`); it resumes with this version's defaults, which may differ from those it started with",
                out.display()
            );
        }
        config
            .resumable_from(&saved)
            .map_err(|msg| TrainError::Resume {
                dir: out.to_path_buf(),
                msg,
            })?;
        let latest = checkpoint::load_latest(out)?;
        if let Some((_, meta)) = &latest {
            if let Some(written) = &meta.config {
                config.resumable_from(written).map_err(|diff| TrainError::Resume {
                    dir: out.to_path_buf(),
                    msg: format!(
                        "config.json does not match the configuration its checkpoint was written with ({diff}); restore config.json, or start a new run"
                    ),
                })?;
            }
            if config.epochs < meta.epoch {
                return Err(TrainError::Config {
                    flag: "--epochs",
                    msg: format!(
                        "{} is below the {} epochs this run has already done: give the new total, at least {}",
                        config.epochs, meta.epoch, meta.epoch
                    ),
                });
            }
        }
        if latest.is_none() {
            return Err(TrainError::Resume {
                dir: out.to_path_buf(),
                msg: "it holds no checkpoint yet (the run stopped before its first epoch ended): start it again without --resume".into(),
            });
        }
        latest
    } else {
        config.data_fingerprint = Some(fingerprint);
        config.resolve_kfac_settings();
        None
    };
    let n_train = data.train().len();
    // An epoch holds at least one full batch (a small text file has fewer windows per epoch).
    let per_epoch = data.train().epoch_len().max(config.batch_size).min(n_train);
    let steps_per_epoch = per_epoch / config.batch_size;
    if steps_per_epoch == 0 {
        return Err(TrainError::Config {
            flag: "--batch-size",
            msg: format!(
                "{} exceeds the {per_epoch} training samples of an epoch: no full batch fits",
                config.batch_size
            ),
        });
    }
    crate::memory::check_fits(&config, crate::memory::available_bytes())?;
    if data.test().eval_indices().is_empty() {
        return Err(TrainError::Config {
            flag: "--data",
            msg: format!(
                "{}: the held-out set is empty, nothing to evaluate on",
                config.data
            ),
        });
    }
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let model = match &config.init {
        Some(path) => {
            let w = crate::fixture::load_weights(path, &config.model, config.init_in_out).map_err(
                |e| TrainError::Config {
                    flag: "--init",
                    msg: e.to_string(),
                },
            )?;
            Transformer::from_tensors(config.model.clone(), &w, DType::F32, &device)?
        }
        None => Transformer::init(config.model.clone(), &mut rng, DType::F32, &device)?,
    };
    if !options.resume && !checkpoint::list(out)?.is_empty() {
        return Err(TrainError::Config {
            flag: "--out",
            msg: format!(
                "{} already holds a run with checkpoints: continue it with --resume {}, or choose another --out",
                out.display(),
                out.display()
            ),
        });
    }
    fs::create_dir_all(out).map_err(io_err(out))?;
    write_json(&out.join("config.json"), &config)?;

    let mut trainer = Trainer::new(config.clone(), model, device.clone())?;
    let metrics_path = out.join("metrics.jsonl");
    let mut diagnostics = Diagnostics::new(&config, data.test(), &device)?;

    let mut start_epoch = 0;
    let mut wall_before = 0.0;
    let mut best = 0.0f64;
    let mut best_bits: Option<f64> = None;
    // Evaluation batches: 512 images, or as many windows as hold 512·17 tokens.
    let eval_batch = (512 * 17 / config.model.tokens()).max(1);
    let mut to95: Option<f64> = None;
    let mut train_seconds = 0.0;
    match ckpt {
        Some((tensors, meta)) => {
            let mut model_t = BTreeMap::new();
            let mut optim_t = HashMap::new();
            for (k, v) in tensors {
                if let Some(n) = k.strip_prefix("model.") {
                    model_t.insert(n.to_string(), v);
                } else if let Some(n) = k.strip_prefix("optim.") {
                    optim_t.insert(n.to_string(), v);
                } else if let Some(n) = k.strip_prefix("diag.") {
                    diagnostics.restore_tensor(n, v);
                }
            }
            trainer.model.load(&model_t)?;
            trainer.optimizer.load_state(&optim_t)?;
            trainer.step = meta.step;
            start_epoch = meta.epoch;
            wall_before = meta.wall_seconds;
            best = meta.best_test_accuracy;
            to95 = meta.seconds_to_95pct;
            train_seconds = meta.train_seconds;
            trainer.skipped_steps = meta.skipped_steps;
            best_bits = meta.best_bits_per_byte;
            diagnostics.restore(&meta.extra)?;
            truncate_metrics(&metrics_path, meta.epoch)?;
        }
        None => {
            let _ = fs::remove_file(&metrics_path);
            let _ = fs::remove_dir_all(checkpoint::checkpoint_dir(out));
            diagnostics.on_start(&trainer.model, &mut MetricsFile::open(&metrics_path)?)?;
        }
    }

    let total_steps = (config.epochs * steps_per_epoch) as u64;
    let progress = Progress::new(
        total_steps,
        (start_epoch * steps_per_epoch) as u64,
        options.quiet,
    );
    progress.line(
        &format!(
            "{}: {} {} parameters, {} on {}, {} train / {} test samples, {} of {}",
            data.description(),
            config.model.kind(),
            config.model.parameter_count(),
            config.optimizer,
            config.device,
            n_train,
            data.test().len(),
            count(config.epochs, "epoch"),
            count(steps_per_epoch, "step")
        ),
        options.quiet,
    );
    let mut metrics = MetricsFile::open(&metrics_path)?;
    let run_start = Instant::now();
    let mut train_steps_timed = 0usize;
    let mut last_eval = Evaluation::default();
    let mut last_train_loss = f64::NAN;
    let end_epoch = match options.stop_after {
        Some(k) => (start_epoch + k).min(config.epochs),
        None => config.epochs,
    };
    for epoch in start_epoch..end_epoch {
        let epoch_start = Instant::now();
        let batches = epoch_batches(n_train, per_epoch, config.batch_size, config.seed, epoch);
        let mut loss_sum = 0.0;
        let mut correct = 0usize;
        let mut stepped = 0usize;
        for (batch_no, idx) in batches.iter().enumerate() {
            let batch = data.train().batch(idx, &device)?;
            let t0 = Instant::now();
            let outcome = trainer.train_step(&batch).map_err(|e| match e {
                TrainError::Diverged { step, what, .. } => TrainError::Diverged {
                    epoch: epoch + 1,
                    step,
                    what,
                    hint: last_good_hint(out),
                },
                other => other,
            })?;
            if let Some(what) = &outcome.skipped {
                metrics.write(&json!({
                    "kind": "skipped", "epoch": epoch + 1, "step": trainer.step + 1,
                    "batch": batch_no + 1, "what": what, "skipped_steps": trainer.skipped_steps,
                }))?;
                // The step counter does not advance on a skip, so the batch number is what
                // tells consecutive skips apart.
                progress.line(
                    &format!(
                        "skipped batch {}/{} of epoch {} (step {} not taken): {what} ({} skipped so far)",
                        batch_no + 1,
                        batches.len(),
                        epoch + 1,
                        trainer.step + 1,
                        trainer.skipped_steps
                    ),
                    options.quiet,
                );
                progress.bar.inc(1);
                continue;
            }
            // Pure training time: the second-order measurement is a diagnostic, not part of a step.
            train_seconds += t0.elapsed().as_secs_f64() - outcome.times.second_order;
            train_steps_timed += 1;
            stepped += 1;
            loss_sum += outcome.loss;
            correct += outcome.correct;
            diagnostics.on_step(&trainer, &batch, &outcome, &mut metrics)?;
            if let Some(so) = &outcome.second_order {
                metrics.write(&json!({
                    "kind": "second_order", "epoch": epoch + 1, "step": trainer.step, "second_order": so,
                }))?;
            }
            if config.log_every > 0 && trainer.step % config.log_every == 0 {
                let mut rec = json!({
                    "kind": "step", "epoch": epoch + 1, "step": trainer.step, "loss": outcome.loss,
                });
                if let Some(o) = &outcome.optimizer {
                    rec["optimizer"] = o.clone();
                }
                metrics.write(&rec)?;
            }
            progress.bar.inc(1);
        }
        if stepped == 0 {
            return Err(TrainError::Diverged {
                epoch: epoch + 1,
                step: trainer.step,
                what: "every step of the epoch was skipped as non-finite".into(),
                hint: last_good_hint(out),
            });
        }
        // Skipped steps contribute neither loss nor accuracy.
        let train_loss = loss_sum / stepped.max(1) as f64;
        let predictions_per_sample = if data.is_text() {
            config.model.tokens()
        } else {
            1
        };
        let train_accuracy =
            correct as f64 / (stepped.max(1) * config.batch_size * predictions_per_sample) as f64;
        let eval = trainer.evaluate(data.test(), eval_batch)?;
        check_finite(&trainer, train_loss, eval.loss).map_err(|what| TrainError::Diverged {
            epoch: epoch + 1,
            step: trainer.step,
            what,
            hint: last_good_hint(out),
        })?;
        let epoch_train_seconds = epoch_start.elapsed().as_secs_f64();
        let diag_start = Instant::now();
        let diag = diagnostics.on_epoch(&trainer, epoch + 1)?;
        let diag_seconds = diag_start.elapsed().as_secs_f64();
        let wall = wall_before + run_start.elapsed().as_secs_f64();
        best = best.max(eval.accuracy);
        if data.is_text() {
            best_bits = Some(best_bits.map_or(eval.bits(), |b: f64| b.min(eval.bits())));
        }
        if to95.is_none() && eval.accuracy >= 0.95 {
            to95 = Some(wall);
        }
        let mut rec = json!({
            "kind": "epoch", "epoch": epoch + 1, "step": trainer.step,
            "train_loss": train_loss, "train_accuracy": train_accuracy,
            "test_loss": eval.loss, "test_accuracy": eval.accuracy,
            "wall_seconds": wall, "epoch_seconds": epoch_train_seconds,
            "diagnostics_seconds": diag_seconds,
        });
        if data.is_text() {
            rec["test_bits_per_byte"] = json!(eval.bits());
        }
        if let (Some(obj), Value::Object(d)) = (rec.as_object_mut(), diag) {
            obj.extend(d);
        }
        metrics.write(&rec)?;
        let line = if data.is_text() {
            format!(
                "epoch {:>3}/{}  train loss {:.4}  validation loss {:.4}  {:.3} bits/byte  next-byte accuracy {:.4}  ({:.1} s)",
                epoch + 1,
                config.epochs,
                train_loss,
                eval.loss,
                eval.bits(),
                eval.accuracy,
                epoch_train_seconds + diag_seconds
            )
        } else {
            format!(
                "epoch {:>3}/{}  train loss {:.4}  test loss {:.4}  test accuracy {:.4}  ({:.1} s)",
                epoch + 1,
                config.epochs,
                train_loss,
                eval.loss,
                eval.accuracy,
                epoch_train_seconds + diag_seconds
            )
        };
        progress.line(&line, options.quiet);
        let meta = CheckpointMeta {
            epoch: epoch + 1,
            step: trainer.step,
            wall_seconds: wall,
            best_test_accuracy: best,
            seconds_to_95pct: to95,
            train_seconds,
            best_bits_per_byte: best_bits,
            skipped_steps: trainer.skipped_steps,
            extra: diagnostics.state(),
            config: Some(config.clone()),
        };
        let mut tensors = BTreeMap::new();
        for (k, v) in trainer.model.snapshot()? {
            tensors.insert(format!("model.{k}"), v);
        }
        for (k, v) in trainer.optimizer.state()? {
            tensors.insert(format!("optim.{k}"), v);
        }
        for (k, v) in diagnostics.state_tensors()? {
            tensors.insert(format!("diag.{k}"), v);
        }
        checkpoint::save(out, &tensors, &meta)?;
        last_eval = eval;
        last_train_loss = train_loss;
    }
    progress.bar.finish_and_clear();
    let completed = end_epoch;
    let wall = wall_before + run_start.elapsed().as_secs_f64();
    let finished = completed == config.epochs;
    if finished && train_steps_timed == 0 {
        // Resumed a finished run: nothing was trained. Its summary stands as written; without one
        // (a crash between the last checkpoint and the summary) it is rebuilt from the last
        // checkpoint's model and the last epoch's record.
        if let Some(summary) = read_summary(out) {
            if !options.quiet {
                print_done(&summary, config.batch_size * config.model.tokens(), out);
            }
            return Ok(summary);
        }
        last_eval = trainer.evaluate(data.test(), eval_batch)?;
        last_train_loss = last_epoch_train_loss(&out.join("metrics.jsonl")).ok_or_else(|| {
            TrainError::Resume {
                dir: out.to_path_buf(),
                msg: "the run is finished but has neither a summary.json nor an epoch record in \
                      metrics.jsonl to rebuild it from"
                    .into(),
            }
        })?;
    }
    let summary = Summary {
        final_test_accuracy: last_eval.accuracy,
        best_test_accuracy: best,
        final_test_loss: last_eval.loss,
        final_train_loss: last_train_loss,
        skipped_steps: trainer.skipped_steps,
        final_bits_per_byte: data.is_text().then(|| last_eval.bits()),
        best_bits_per_byte: best_bits,
        epochs: completed,
        steps: trainer.step,
        wall_seconds: wall,
        steps_per_second: trainer.step as f64 / train_seconds.max(1e-9),
        seconds_to_95pct: to95,
        peak_memory_mib: peak_memory_mib(),
        optimizer: config.optimizer.to_string(),
        // Stopped early on request: no diagnostics summary and no summary.json yet; the run is
        // resumable.
        diagnostics: if finished {
            diagnostics.finish(&trainer, out)?
        } else {
            Value::Null
        },
    };
    if !finished {
        return Ok(summary);
    }
    write_json(&out.join("summary.json"), &summary)?;
    if !options.quiet {
        print_done(&summary, config.batch_size * config.model.tokens(), out);
    }
    Ok(summary)
}

/// The `done: …` line of a finished run (bits per byte for text, accuracy for images).
fn print_done(summary: &Summary, tokens_per_step: usize, out: &Path) {
    match summary.final_bits_per_byte {
        Some(bits) => eprintln!(
            "done: validation {:.3} bits/byte (best {:.3}), {:.0} tokens/s, {:.0} s; run directory {}",
            bits,
            summary.best_bits_per_byte.unwrap_or(f64::NAN),
            summary.steps_per_second * tokens_per_step as f64,
            summary.wall_seconds,
            out.display()
        ),
        None => eprintln!(
            "done: final test accuracy {:.4} (best {:.4}), {:.1} steps/s, {:.0} s; run directory {}",
            summary.final_test_accuracy,
            summary.best_test_accuracy,
            summary.steps_per_second,
            summary.wall_seconds,
            out.display()
        ),
    }
}

/// The `summary.json` of a run directory, if it holds a readable one.
fn read_summary(dir: &Path) -> Option<Summary> {
    let text = fs::read_to_string(dir.join("summary.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// The `train_loss` of the last epoch record in `metrics.jsonl`, if any.
fn last_epoch_train_loss(path: &Path) -> Option<f64> {
    let text = fs::read_to_string(path).ok()?;
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("kind").and_then(Value::as_str) == Some("epoch"))
        .find_map(|v| v.get("train_loss").and_then(Value::as_f64))
}

/// Whether the epoch ended in a finite state: losses and every parameter. Checked before anything
/// of the epoch is written, so no NaN reaches the metrics or a checkpoint.
fn check_finite(
    trainer: &Trainer,
    train_loss: f64,
    test_loss: f64,
) -> std::result::Result<(), String> {
    if !train_loss.is_finite() {
        return Err(format!("the mean training loss is {train_loss}"));
    }
    if !test_loss.is_finite() {
        return Err(format!("the test loss is {test_loss}"));
    }
    for (name, var) in trainer.model.parameters() {
        let total = var
            .as_tensor()
            .abs()
            .and_then(|t| t.sum_all())
            .and_then(|t| t.to_dtype(DType::F64))
            .and_then(|t| t.to_scalar::<f64>())
            .map_err(|e| e.to_string())?;
        if !total.is_finite() {
            return Err(format!(
                "parameter `{name}` is non-finite after the epoch's updates"
            ));
        }
    }
    Ok(())
}

fn last_good_hint(out: &Path) -> String {
    match checkpoint::list(out).ok().and_then(|l| l.last().cloned()) {
        Some((epoch, path)) => format!(
            "The last good checkpoint is {} (epoch {epoch}). Lower --lr, or resume with --resume {} after changing nothing else.",
            path.display(),
            out.display()
        ),
        None => "No checkpoint was written yet. Lower --lr and start again.".into(),
    }
}

/// An append-only JSON-lines file.
pub struct MetricsFile {
    file: fs::File,
    path: PathBuf,
}

impl MetricsFile {
    /// Opens (creating) `path` for appending.
    pub fn open(path: &Path) -> Result<Self> {
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io_err(path))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Appends one record as a line.
    pub fn write(&mut self, record: &Value) -> Result<()> {
        let mut line = serde_json::to_string(record).map_err(|e| TrainError::Json {
            path: self.path.clone(),
            source: e,
        })?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(io_err(&self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Relative data paths are resolved against the current directory (so a resume from
    /// elsewhere finds them); absolute paths and `digits` pass through unchanged.
    #[test]
    fn data_paths_are_made_absolute() {
        let cwd = std::env::current_dir().unwrap();
        let got = absolute_data_path("text:corpus/notes.txt").unwrap();
        assert_eq!(
            got,
            format!("text:{}", cwd.join("corpus/notes.txt").display())
        );
        let got = absolute_data_path("mnist:data").unwrap();
        assert_eq!(got, format!("mnist:{}", cwd.join("data").display()));
        assert_eq!(
            absolute_data_path("cifar10:/srv/c").unwrap(),
            "cifar10:/srv/c"
        );
        assert_eq!(absolute_data_path("digits").unwrap(), "digits");
        assert!(absolute_data_path("nonsense").is_err());
    }

    #[test]
    fn counts_are_singular_for_one() {
        assert_eq!(count(1, "epoch"), "1 epoch");
        assert_eq!(count(30, "epoch"), "30 epochs");
        assert_eq!(count(0, "step"), "0 steps");
    }
}
