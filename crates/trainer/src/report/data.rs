//! Reading a run directory: `metrics.jsonl`, `summary.json`, `brownian.json` and the size of the
//! optimizer state in the last checkpoint.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use serde_json::Value;

use super::{io_err, ReportError, Result};
use crate::config::{OptimizerKind, TrainConfig};

/// One LayerNorm's sphere record of an epoch (MATH §1; radii normalised by √n).
#[derive(Debug, Clone, Copy)]
pub struct LnRecord {
    pub radius_mean: f64,
    pub predicted_radius_mean: f64,
    pub max_relative_deviation: f64,
}

/// One head's Markov record of an epoch (MATH §2).
#[derive(Debug, Clone, Copy)]
pub struct HeadRecord {
    pub row_entropy_mean: f64,
    pub lambda2_abs: f64,
    pub doubly_stochastic_deviation: f64,
}

/// Token clustering of the residual stream at one depth (mean over the probe images).
#[derive(Debug, Clone, Copy)]
pub struct ClusterRecord {
    pub mean_cosine: f64,
    pub mean_clusters: f64,
}

/// A per-epoch record.
#[derive(Debug, Clone)]
pub struct EpochRecord {
    pub epoch: usize,
    pub train_loss: f64,
    pub test_loss: f64,
    pub test_accuracy: f64,
    pub wall_seconds: f64,
    /// Seconds of the epoch's training steps and evaluation (no diagnostics).
    pub epoch_seconds: f64,
    /// Optimizer steps taken by the end of the epoch.
    pub step: usize,
    pub layer_norms: BTreeMap<String, LnRecord>,
    pub clusters: Vec<ClusterRecord>,
    /// Block name (`blk0`, ...) → heads.
    pub markov: BTreeMap<String, Vec<HeadRecord>>,
}

/// First- and second-order terms of one measured step, per tracked layer.
#[derive(Debug, Clone)]
pub struct SecondOrderRecord {
    pub step: usize,
    /// Layer → (first order, second order).
    pub layers: BTreeMap<String, (f64, f64)>,
}

/// The Brownian analysis of one trajectory ensemble (MATH §3).
#[derive(Debug, Clone)]
pub struct ClockFit {
    pub alpha: f64,
    pub alpha_ci: (f64, f64),
    pub diffusion: f64,
    pub excess_kurtosis: f64,
    pub jarque_bera_p_value: f64,
    pub autocorrelation: f64,
    pub autocorr_band: f64,
    pub msd: Vec<(f64, f64)>,
}

/// Everything the report uses from one run.
#[derive(Debug, Clone)]
pub struct RunData {
    pub optimizer: OptimizerKind,
    pub seed: u64,
    pub epochs: Vec<EpochRecord>,
    pub second_order: Vec<SecondOrderRecord>,
    /// `(step, cg_iterations_mean)` of the step records (CG-FAC).
    pub cg_iterations: Vec<(usize, f64)>,
    pub final_test_accuracy: f64,
    pub best_test_accuracy: f64,
    pub steps_per_second: f64,
    pub peak_memory_mib: Option<f64>,
    /// Bytes of the optimizer state (`optim.*` tensors) in the last checkpoint.
    pub optimizer_state_bytes: u64,
    pub depth: Option<ClockFit>,
    /// LayerNorm → fit, or the analysis' error message.
    pub training: BTreeMap<String, std::result::Result<ClockFit, String>>,
}

fn bad(path: &Path, msg: impl Into<String>) -> ReportError {
    ReportError::RunFile {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    serde_json::from_str(&text).map_err(|e| bad(path, format!("not valid JSON ({e})")))
}

fn num(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

fn parse_fit(v: &Value) -> Option<ClockFit> {
    let ci = v.get("alpha_ci")?.as_array()?;
    let msd = v
        .get("msd")?
        .as_array()?
        .iter()
        .filter_map(|p| Some((p.get(0)?.as_f64()?, p.get(1)?.as_f64()?)))
        .collect();
    Some(ClockFit {
        alpha: v.get("alpha")?.as_f64()?,
        alpha_ci: (ci.first()?.as_f64()?, ci.get(1)?.as_f64()?),
        diffusion: num(v, "diffusion"),
        excess_kurtosis: num(v, "excess_kurtosis"),
        jarque_bera_p_value: num(v, "jarque_bera_p_value"),
        autocorrelation: num(v, "autocorrelation"),
        autocorr_band: num(v, "autocorr_band"),
        msd,
    })
}

fn parse_epoch(r: &Value) -> EpochRecord {
    let mut layer_norms = BTreeMap::new();
    if let Some(m) = r.pointer("/sphere/layer_norms").and_then(Value::as_object) {
        for (k, v) in m {
            layer_norms.insert(
                k.clone(),
                LnRecord {
                    radius_mean: num(v, "radius_mean"),
                    predicted_radius_mean: num(v, "predicted_radius_mean"),
                    max_relative_deviation: num(v, "max_relative_deviation"),
                },
            );
        }
    }
    let clusters = r
        .pointer("/sphere/residual_clusters")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|c| ClusterRecord {
                    mean_cosine: num(c, "mean_cosine"),
                    mean_clusters: num(c, "mean_clusters"),
                })
                .collect()
        })
        .unwrap_or_default();
    let mut markov = BTreeMap::new();
    if let Some(m) = r.get("markov").and_then(Value::as_object) {
        for (k, heads) in m {
            let heads = heads
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|h| HeadRecord {
                            row_entropy_mean: num(h, "row_entropy_mean"),
                            lambda2_abs: num(h, "lambda2_abs"),
                            doubly_stochastic_deviation: num(h, "doubly_stochastic_deviation"),
                        })
                        .collect()
                })
                .unwrap_or_default();
            markov.insert(k.clone(), heads);
        }
    }
    EpochRecord {
        epoch: r.get("epoch").and_then(Value::as_u64).unwrap_or(0) as usize,
        train_loss: num(r, "train_loss"),
        test_loss: num(r, "test_loss"),
        test_accuracy: num(r, "test_accuracy"),
        wall_seconds: num(r, "wall_seconds"),
        epoch_seconds: num(r, "epoch_seconds"),
        step: r.get("step").and_then(Value::as_u64).unwrap_or(0) as usize,
        layer_norms,
        clusters,
        markov,
    }
}

/// The per-layer terms of a `second_order` object, in either of two layouts:
/// `{layers: {<layer>: {first_order, second_order, ..}}, ..}` or `{<layer>: {first_order, ..}}`.
fn parse_second_order(so: &Value, step: usize) -> Option<SecondOrderRecord> {
    let map = so
        .get("layers")
        .and_then(Value::as_object)
        .or_else(|| so.as_object())?;
    let layers: BTreeMap<String, (f64, f64)> = map
        .iter()
        .filter_map(|(k, v)| {
            Some((
                k.clone(),
                (
                    v.get("first_order")?.as_f64()?,
                    v.get("second_order")?.as_f64()?,
                ),
            ))
        })
        .collect();
    (!layers.is_empty()).then_some(SecondOrderRecord { step, layers })
}

/// Bytes of the `optim.*` tensors in a safetensors file, from its header alone.
fn optimizer_state_bytes(path: &Path) -> Result<u64> {
    use std::io::Read;
    let mut f = fs::File::open(path).map_err(io_err(path))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(io_err(path))?;
    let n = u64::from_le_bytes(len);
    if n > 100 << 20 {
        return Err(bad(path, "the safetensors header is implausibly large"));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(io_err(path))?;
    let h: Value = serde_json::from_slice(&header)
        .map_err(|e| bad(path, format!("the safetensors header is not JSON ({e})")))?;
    let mut bytes = 0u64;
    for (k, v) in h.as_object().into_iter().flatten() {
        if !k.starts_with("optim.") {
            continue;
        }
        let off = v
            .get("data_offsets")
            .and_then(Value::as_array)
            .and_then(|a| Some((a.first()?.as_u64()?, a.get(1)?.as_u64()?)));
        match off {
            Some((a, b)) if b >= a => bytes += b - a,
            _ => return Err(bad(path, format!("tensor {k} has no valid data_offsets"))),
        }
    }
    Ok(bytes)
}

/// The summary's training steps per second; when it is missing or 0 (a run resumed after its last
/// epoch times no step), steps over the summed `epoch_seconds` of the epoch records instead, which
/// include the per-epoch evaluation and so slightly underestimate the rate.
fn steps_per_second(summary: &Value, epochs: &[EpochRecord]) -> f64 {
    let s = num(summary, "steps_per_second");
    if s.is_finite() && s > 0.0 {
        return s;
    }
    let secs: f64 = epochs.iter().map(|e| e.epoch_seconds).sum();
    let steps = epochs.last().map_or(0, |e| e.step);
    if secs > 0.0 && steps > 0 {
        steps as f64 / secs
    } else {
        f64::NAN
    }
}

impl RunData {
    /// Reads the finished run in `dir`, made with `config`.
    pub fn load(dir: &Path, config: &TrainConfig) -> Result<Self> {
        let metrics_path = dir.join("metrics.jsonl");
        let text = fs::read_to_string(&metrics_path).map_err(io_err(&metrics_path))?;
        let mut epochs = Vec::new();
        let mut second_order = Vec::new();
        let mut cg_iterations = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let r: Value = serde_json::from_str(line)
                .map_err(|e| bad(&metrics_path, format!("line {} is not JSON ({e})", i + 1)))?;
            let step = r.get("step").and_then(Value::as_u64).unwrap_or(0) as usize;
            if r.get("kind").and_then(Value::as_str) == Some("epoch") {
                epochs.push(parse_epoch(&r));
            }
            if let Some(so) = r
                .get("second_order")
                .and_then(|so| parse_second_order(so, step))
            {
                second_order.push(so);
            }
            if let Some(it) = r
                .pointer("/optimizer/cg_iterations_mean")
                .and_then(Value::as_f64)
            {
                cg_iterations.push((step, it));
            }
        }
        if epochs.is_empty() {
            return Err(bad(&metrics_path, "it holds no epoch record"));
        }
        let summary_path = dir.join("summary.json");
        let summary = read_json(&summary_path)?;
        let brownian = read_json(&dir.join("brownian.json"))?;
        let depth = brownian.pointer("/clock_depth/report").and_then(parse_fit);
        let mut training = BTreeMap::new();
        if let Some(m) = brownian
            .pointer("/clock_training/layers")
            .and_then(Value::as_object)
        {
            for (k, v) in m {
                let fit = parse_fit(v).ok_or_else(|| {
                    v.get("error")
                        .and_then(Value::as_str)
                        .unwrap_or("no fit recorded")
                        .to_string()
                });
                training.insert(k.clone(), fit);
            }
        }
        let last_ckpt = crate::checkpoint::list(dir)
            .ok()
            .and_then(|l| l.last().map(|(_, p)| p.clone()))
            .ok_or_else(|| bad(dir, "no checkpoint found"))?;
        let steps_per_second = steps_per_second(&summary, &epochs);
        Ok(Self {
            optimizer: config.optimizer,
            seed: config.seed,
            epochs,
            second_order,
            cg_iterations,
            final_test_accuracy: num(&summary, "final_test_accuracy"),
            best_test_accuracy: num(&summary, "best_test_accuracy"),
            steps_per_second,
            peak_memory_mib: summary.get("peak_memory_mib").and_then(Value::as_f64),
            optimizer_state_bytes: optimizer_state_bytes(&last_ckpt)?,
            depth,
            training,
        })
    }

    /// Wall seconds at the end of the first epoch whose test accuracy reached `target`.
    pub fn seconds_to(&self, target: f64) -> Option<f64> {
        self.epochs
            .iter()
            .find(|e| e.test_accuracy >= target)
            .map(|e| e.wall_seconds)
    }

    pub fn label(&self) -> String {
        format!("{}-seed{}", self.optimizer, self.seed)
    }
}
