//! Per-step and per-epoch diagnostics of a run: the paper's claims measured on the real training.
//!
//! - Claim 2 (sphere, [`bmt_sphere`]): each epoch, for a fixed probe batch of the test split, every
//!   LayerNorm's pre-affine output is checked against the radius MATH §1 predicts from ε and the
//!   token's variance, and the residual stream's clustering on the sphere is measured.
//! - Claim 3 (Markov, [`bmt_markov`]): each epoch, every head's attention kernel on the probe batch:
//!   row entropy, |λ₂|, Dobrushin, doubly-stochastic deviation, reversibility defect, entropy of π.
//! - Claim 4 (Brownian, [`bmt_brownian`]): the training clock (the probe tokens at every
//!   LayerNorm's output, recorded every `TRAJ_EVERY` steps) and the depth clock (each probe token's
//!   residual stream after every block, put on the sphere by the final LayerNorm), analysed at the
//!   end of the run into `brownian.json`.
//!
//! The probe batch is the first [`PROBE_SIZE`] test images (for the GPT: the first validation
//! windows holding at most `PROBE_SIZE · 17` tokens, at least one); the training-clock ensemble is
//! the tokens of the first [`TRAJ_IMAGES`] of them (for the GPT: the first `TRAJ_IMAGES · 17`
//! positions of the first window, a causal model being defined on every prefix).

use std::collections::BTreeMap;
use std::path::Path;

use bmt_brownian::{analyse, AnalysisConfig, Geometry, Trajectories};
use bmt_markov::{AttentionKernels, MetricsOptions};
use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Map, Value};

use crate::config::TrainConfig;
use crate::data::{Batch, Dataset};
use crate::error::{Result, TrainError};
use crate::model::Transformer;
use crate::run::{MetricsFile, StepOutcome, Trainer};

/// Images in the probe batch.
pub const PROBE_SIZE: usize = 64;
/// Images whose tokens form the training-clock ensemble.
pub const TRAJ_IMAGES: usize = 8;
/// Tokens of one W1 image; with [`PROBE_SIZE`] and [`TRAJ_IMAGES`] it sets the token budgets
/// of the probes of models with longer sequences.
const W1_TOKENS: usize = 17;
/// Training-clock snapshots are taken every this many optimizer steps (at first; see
/// [`TRAJ_MAX_BYTES`]).
pub const TRAJ_EVERY: usize = 10;
/// Memory the training-clock snapshots may hold (and write into each checkpoint). When they would
/// exceed it, every other snapshot is dropped and the period doubles, so the kept snapshots stay
/// evenly spaced: W1 (313 KB a snapshot, 67 in a 30-epoch run) never reaches it; W2 (1.8 MB a
/// snapshot) holds between 18 and 35.
pub const TRAJ_MAX_BYTES: usize = 64 << 20;
/// Cosine threshold of the ε-clusters: tokens with `x̂_i·x̂_j > 1 − ε` are linked.
pub const CLUSTER_EPS: f64 = 0.01;

fn diag_err(name: &'static str) -> impl Fn(String) -> TrainError {
    move |msg| TrainError::Diagnostic { name, msg }
}

/// Builds a JSON object from named `f64`/`usize` fields of a report.
macro_rules! fields {
    ($r:expr; $($f:ident),* $(,)?) => {{
        let mut m = Map::new();
        $( m.insert(stringify!($f).to_string(), json_num($r.$f as f64)); )*
        Value::Object(m)
    }};
}

/// A finite number as JSON; NaN and ±∞ (e.g. an infinite mixing-time bound) as strings, so that
/// the record stays valid JSON and the fact is not hidden.
fn json_num(x: f64) -> Value {
    if x.is_finite() {
        json!(x)
    } else {
        json!(x.to_string())
    }
}

/// The diagnostics of one run.
pub struct Diagnostics {
    enabled: bool,
    probe: Option<Tensor>,
    traj_probe: Option<Tensor>,
    /// Training-clock snapshots per LayerNorm: each snapshot is `(members × dim)` f32.
    traj: BTreeMap<String, Vec<Vec<f32>>>,
    traj_steps: Vec<usize>,
    /// Current period of the training-clock snapshots (starts at [`TRAJ_EVERY`], doubles on
    /// thinning).
    traj_every: usize,
    /// (relative deviation, layer, epoch) of the largest radius deviation seen.
    worst_radius: Option<(f64, String, usize)>,
    first_epoch: Option<Value>,
    last_epoch: Option<Value>,
    second_order: Vec<Value>,
    seed: u64,
}

impl Diagnostics {
    /// Sets up the diagnostics for `config`, with the probe batch taken from `test`.
    pub fn new(config: &TrainConfig, test: &dyn Dataset, device: &Device) -> Result<Self> {
        let (probe, traj_probe) = if config.diagnostics {
            let tokens = config.model.tokens();
            let candidates = test.eval_indices();
            let n = candidates
                .len()
                .min((PROBE_SIZE * W1_TOKENS / tokens).clamp(1, PROBE_SIZE));
            let p = test.batch(&candidates[..n], device)?.inputs;
            let traj_budget = TRAJ_IMAGES * W1_TOKENS;
            let mut t = p.narrow(0, 0, n.min((traj_budget / tokens).max(1)))?;
            if config.model.causal() && tokens > traj_budget {
                t = t.narrow(1, 0, traj_budget)?;
            }
            (Some(p), Some(t))
        } else {
            (None, None)
        };
        Ok(Self {
            enabled: config.diagnostics,
            probe,
            traj_probe,
            traj: BTreeMap::new(),
            traj_steps: Vec::new(),
            traj_every: TRAJ_EVERY,
            worst_radius: None,
            first_epoch: None,
            last_epoch: None,
            second_order: Vec::new(),
            seed: config.seed,
        })
    }

    /// Before the first step of a fresh run: the training clock's first snapshot (step 0).
    pub fn on_start(&mut self, model: &Transformer, _metrics: &mut MetricsFile) -> Result<()> {
        if self.enabled {
            self.snapshot(model, 0)?;
        }
        Ok(())
    }

    /// After every optimizer step: a training-clock snapshot every [`TRAJ_EVERY`] steps.
    pub fn on_step(
        &mut self,
        t: &Trainer,
        _b: &Batch,
        o: &StepOutcome,
        _m: &mut MetricsFile,
    ) -> Result<()> {
        if let Some(so) = &o.second_order {
            self.second_order.push(so.clone());
        }
        if self.enabled && t.step % self.traj_every == 0 {
            self.snapshot(&t.model, t.step)?;
        }
        Ok(())
    }

    fn snapshot(&mut self, model: &Transformer, step: usize) -> Result<()> {
        let Some(x) = &self.traj_probe else {
            return Ok(());
        };
        let (_, trace) = model.forward_traced(x)?;
        for ln in trace.layer_norms {
            let y = ln
                .normalized
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            self.traj.entry(ln.name).or_default().push(y);
        }
        self.traj_steps.push(step);
        let bytes: usize = self
            .traj
            .values()
            .map(|v| v.iter().map(|s| 4 * s.len()).sum::<usize>())
            .sum();
        if bytes > TRAJ_MAX_BYTES && self.traj_steps.len() >= 3 {
            for snaps in self.traj.values_mut() {
                keep_even_indices(snaps);
            }
            keep_even_indices(&mut self.traj_steps);
            self.traj_every *= 2;
        }
        Ok(())
    }

    /// At the end of every epoch: the sphere and Markov records merged into the epoch's metrics.
    pub fn on_epoch(&mut self, t: &Trainer, epoch: usize) -> Result<Value> {
        let Some(probe) = &self.probe else {
            return Ok(json!({}));
        };
        let (_, trace) = t.model.forward_traced(probe)?;
        let mut sphere_ln = Map::new();
        for ln in &trace.layer_norms {
            let r = bmt_sphere::norm::layer_norm_sphere_check(&ln.input, &ln.normalized, ln.eps)
                .map_err(|e| diag_err("sphere")(e.to_string()))?;
            if self
                .worst_radius
                .as_ref()
                .is_none_or(|w| r.max_relative_deviation > w.0)
            {
                self.worst_radius = Some((r.max_relative_deviation, ln.name.clone(), epoch));
            }
            sphere_ln.insert(
                ln.name.clone(),
                fields!(r; radius_mean, radius_std, radius_min, radius_max, predicted_radius_mean,
                    max_relative_deviation, max_centring, degenerate_tokens),
            );
        }
        let mut clusters = Vec::new();
        for h in &trace.residual {
            let c = bmt_sphere::cluster::cluster_stats(h, CLUSTER_EPS)
                .map_err(|e| diag_err("clusters")(e.to_string()))?;
            clusters.push(
                fields!(c; mean_cosine, min_cosine, mean_clusters, min_clusters, max_clusters),
            );
        }
        let mut markov = Map::new();
        let opts = MetricsOptions::default();
        for (i, attn) in trace.attention.iter().enumerate() {
            let k = AttentionKernels::from_probs(attn, 1e-4)
                .map_err(|e| diag_err("markov")(e.to_string()))?;
            let heads = k
                .head_summaries(&opts)
                .map_err(|e| diag_err("markov")(e.to_string()))?;
            let per_head: Vec<Value> = heads
                .iter()
                .map(|h| {
                    fields!(h; head, row_entropy_mean, effective_neighbours_mean, lambda2_abs, spectral_gap,
                        dobrushin, doubly_stochastic_deviation, reversibility_defect, pi_entropy, entropy_rate)
                })
                .collect();
            markov.insert(format!("blk{i}"), Value::Array(per_head));
        }
        let rec = json!({
            "sphere": { "layer_norms": sphere_ln, "residual_clusters": clusters },
            "markov": markov,
        });
        if self.first_epoch.is_none() {
            self.first_epoch = Some(json!({"epoch": epoch, "record": rec.clone()}));
        }
        self.last_epoch = Some(json!({"epoch": epoch, "record": rec.clone()}));
        Ok(rec)
    }

    /// At the end of the run: writes `brownian.json` and returns the summary's `diagnostics`.
    pub fn finish(&mut self, t: &Trainer, out: &Path) -> Result<Value> {
        if !self.enabled {
            return Ok(json!({ "enabled": false }));
        }
        let mut brownian = self.brownian(&t.model)?;
        let second_order = crate::second_order::summarise(&self.second_order);
        brownian["second_order"] = second_order.clone();
        let path = out.join("brownian.json");
        let text = serde_json::to_string_pretty(&brownian).map_err(|e| TrainError::Json {
            path: path.clone(),
            source: e,
        })?;
        std::fs::write(&path, text + "\n").map_err(crate::error::io_err(&path))?;
        let (dev, layer, epoch) = self
            .worst_radius
            .clone()
            .unwrap_or((f64::NAN, String::new(), 0));
        Ok(json!({
            "enabled": true,
            "sphere": {
                "largest_radius_deviation": { "relative": json_num(dev), "layer": layer, "epoch": epoch },
                "claim_holds_within_1e-4": dev <= 1e-4,
            },
            "markov_first_vs_last": markov_first_vs_last(self.first_epoch.as_ref(), self.last_epoch.as_ref()),
            "brownian_file": "brownian.json",
            "second_order": second_order,
        }))
    }

    fn brownian(&self, model: &Transformer) -> Result<Value> {
        let n = model.config().dim();
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ 0xB0_0B);
        // Training clock: per LayerNorm, members = probe tokens, time = snapshots.
        let mut training = Map::new();
        for (name, snaps) in &self.traj {
            let steps = snaps.len();
            let members = snaps.first().map_or(0, |s| s.len() / n);
            let mut data = vec![0.0f64; members * steps * n];
            for (s, snap) in snaps.iter().enumerate() {
                for m in 0..members {
                    for d in 0..n {
                        data[(m * steps + s) * n + d] = snap[m * n + d] as f64;
                    }
                }
            }
            let cfg = AnalysisConfig {
                dt: self.traj_every as f64,
                sphere_dim: Some(n - 2),
                ..Default::default()
            };
            let value = Trajectories::new(data, members, steps, n, Geometry::Euclidean)
                .and_then(|t| t.projected_to_sphere((n as f64).sqrt()))
                .and_then(|t| analyse(&t, &cfg, &mut rng))
                .map(|r| report_json(&r))
                .unwrap_or_else(|e| json!({ "error": e.to_string() }));
            training.insert(name.clone(), value);
        }
        // Depth clock: every probe token's residual stream after each block, normalised by the
        // final LayerNorm (pre-affine) onto the sphere of radius √n.
        let depth = match &self.probe {
            Some(probe) => {
                let (_, trace) = model.forward_traced(probe)?;
                let eps = model.config().ln_eps();
                let mut layers = Vec::new();
                for h in &trace.residual {
                    let y = crate::ops::layer_norm_normalize(h, eps)?.to_dtype(DType::F64)?;
                    layers.push(y.flatten_to(1)?.to_vec2::<f64>()?);
                }
                let steps = layers.len();
                let members = layers[0].len();
                let mut data = Vec::with_capacity(members * steps * n);
                for m in 0..members {
                    for layer in &layers {
                        data.extend_from_slice(&layer[m]);
                    }
                }
                let lags = bmt_brownian::msd::LagWindow {
                    min: 1,
                    max: Some(steps - 1),
                    max_points: steps,
                };
                let cfg = AnalysisConfig {
                    lags,
                    sphere_dim: Some(n - 2),
                    ..Default::default()
                };
                Trajectories::new(data, members, steps, n, Geometry::Euclidean)
                    .and_then(|t| t.projected_to_sphere((n as f64).sqrt()))
                    .and_then(|t| analyse(&t, &cfg, &mut rng))
                    .map(|r| report_json(&r))
                    .unwrap_or_else(|e| json!({ "error": e.to_string() }))
            }
            None => Value::Null,
        };
        let traj_shape = self.traj_probe.as_ref().map_or((0, 0), |t| {
            (t.dims()[0], t.dims().get(1).copied().unwrap_or(0))
        });
        let traj_shape = if model.config().causal() {
            traj_shape
        } else {
            (traj_shape.0, model.config().tokens())
        };
        let probe_sequences = self.probe.as_ref().map_or(0, |p| p.dims()[0]);
        Ok(json!({
            "clock_training": {
                "description": format!("probe tokens ({} sequences × {} tokens) at each LayerNorm's pre-affine output, every {} optimizer steps; D per optimizer step on S^(n-2)(√n)", traj_shape.0, traj_shape.1, self.traj_every),
                "snapshot_steps": self.traj_steps,
                "layers": training,
            },
            "clock_depth": {
                "description": format!("each of {} probe sequences' tokens: the residual stream after the embedding and every block, normalised by the final LayerNorm (pre-affine); D per block", probe_sequences),
                "report": depth,
            },
            "generator_convention": "D with generator DΔ: E[cos θ(τ)] = exp(-(n-1) D τ) on the unit sphere, scaled by r²",
        }))
    }

    /// State kept in the checkpoint's metadata, so that a resumed run reports exactly as an
    /// uninterrupted one.
    pub fn state(&self) -> Value {
        json!({
            "traj_steps": self.traj_steps,
            "traj_every": self.traj_every,
            "worst_radius": self.worst_radius.as_ref().map(|(d, l, e)| json!([d, l, e])),
            "first_epoch": self.first_epoch,
            "last_epoch": self.last_epoch,
            "second_order": self.second_order,
        })
    }

    /// Tensors kept in the checkpoint: the training-clock snapshots, one `(snapshots, members·dim)`
    /// tensor per LayerNorm.
    pub fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for (name, snaps) in &self.traj {
            let width = snaps.first().map_or(0, Vec::len);
            let flat: Vec<f32> = snaps.iter().flatten().copied().collect();
            out.push((
                format!("traj.{name}"),
                Tensor::from_vec(flat, (snaps.len(), width), &Device::Cpu)?,
            ));
        }
        Ok(out)
    }

    /// Restores [`Diagnostics::state`].
    pub fn restore(&mut self, v: &Value) -> Result<()> {
        if v.is_null() {
            return Ok(());
        }
        let bad = |what: &str| TrainError::Checkpoint {
            msg: format!("checkpoint diagnostics state: {what} is malformed"),
        };
        self.traj_steps =
            serde_json::from_value(v["traj_steps"].clone()).map_err(|_| bad("traj_steps"))?;
        self.traj_every = v["traj_every"].as_u64().map_or(TRAJ_EVERY, |e| e as usize);
        self.worst_radius = match &v["worst_radius"] {
            Value::Array(a) if a.len() == 3 => Some((
                a[0].as_f64().ok_or_else(|| bad("worst_radius"))?,
                a[1].as_str().unwrap_or_default().to_string(),
                a[2].as_u64().unwrap_or(0) as usize,
            )),
            _ => None,
        };
        self.first_epoch = Some(v["first_epoch"].clone()).filter(|x| !x.is_null());
        self.last_epoch = Some(v["last_epoch"].clone()).filter(|x| !x.is_null());
        self.second_order = v["second_order"].as_array().cloned().unwrap_or_default();
        Ok(())
    }

    /// Restores one of [`Diagnostics::state_tensors`].
    pub fn restore_tensor(&mut self, name: &str, t: Tensor) {
        if let Some(ln) = name.strip_prefix("traj.") {
            if let Ok(rows) = t.to_vec2::<f32>() {
                self.traj.insert(ln.to_string(), rows);
            }
        }
    }
}

/// Keeps the elements at indices 0, 2, 4, … of snapshots taken every `e` steps from step 0: the
/// kept ones are spaced `2e`, and the next snapshot (taken at the next multiple of `2e`) continues
/// that spacing.
fn keep_even_indices<T>(v: &mut Vec<T>) {
    let mut i = 0;
    v.retain(|_| {
        i += 1;
        (i - 1) % 2 == 0
    });
}

fn report_json(r: &bmt_brownian::BrownianReport) -> Value {
    let mut v = fields!(r; alpha, alpha_fit_r_squared, diffusion, skewness, excess_kurtosis, jarque_bera,
        jarque_bera_p_value, autocorrelation, autocorr_lag, autocorr_band, quadratic_variation_r_squared, drift_share);
    v["alpha_ci"] = match r.alpha_ci {
        Some((lo, hi)) => json!([json_num(lo), json_num(hi)]),
        None => Value::Null,
    };
    v["msd_kind"] = json!(format!("{:?}", r.msd_kind));
    v["msd"] = json!(r
        .msd
        .iter()
        .map(|(t, m)| json!([t, json_num(*m)]))
        .collect::<Vec<_>>());
    v
}

/// Per layer, the head-mean of each Markov metric at the first and at the last epoch.
fn markov_first_vs_last(first: Option<&Value>, last: Option<&Value>) -> Value {
    let (Some(first), Some(last)) = (first, last) else {
        return Value::Null;
    };
    let mean_over_heads = |rec: &Value, layer: &str, key: &str| -> Option<f64> {
        let heads = rec["record"]["markov"][layer].as_array()?;
        let vals: Vec<f64> = heads.iter().filter_map(|h| h[key].as_f64()).collect();
        (!vals.is_empty()).then(|| vals.iter().sum::<f64>() / vals.len() as f64)
    };
    let mut out = Map::new();
    let layers: Vec<String> = last["record"]["markov"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    for layer in layers {
        let mut m = Map::new();
        for key in [
            "row_entropy_mean",
            "lambda2_abs",
            "dobrushin",
            "doubly_stochastic_deviation",
            "reversibility_defect",
            "pi_entropy",
        ] {
            m.insert(
                key.to_string(),
                json!({
                    "first": mean_over_heads(first, &layer, key),
                    "last": mean_over_heads(last, &layer, key),
                }),
            );
        }
        out.insert(layer, Value::Object(m));
    }
    json!({ "first_epoch": first["epoch"], "last_epoch": last["epoch"], "layers": out })
}

#[cfg(test)]
mod tests {
    use super::keep_even_indices;

    #[test]
    fn thinning_keeps_an_even_spacing() {
        // Snapshots at steps 0, 10, …, 80 (every 10); thinned: every 20, and the next snapshot at
        // step 100 (the next multiple of 20 after 80) keeps the spacing.
        let mut steps: Vec<usize> = (0..9).map(|k| 10 * k).collect();
        keep_even_indices(&mut steps);
        assert_eq!(steps, vec![0, 20, 40, 60, 80]);
        steps.push(100);
        assert!(steps.windows(2).all(|w| w[1] - w[0] == 20));
    }
}
