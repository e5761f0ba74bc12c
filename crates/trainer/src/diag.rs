//! Per-step and per-epoch diagnostics of a run (filled in by the sphere, Markov and Brownian
//! integrations).

use candle_core::{Device, Tensor};
use serde_json::{json, Value};

use crate::config::TrainConfig;
use crate::data::{Batch, ImageSet};
use crate::error::Result;
use crate::model::Vit;
use crate::run::{MetricsFile, StepOutcome, Trainer};

/// The diagnostics of one run.
pub struct Diagnostics {
    enabled: bool,
}

impl Diagnostics {
    /// Sets up the diagnostics for `config` (a fixed probe batch from `test`).
    pub fn new(config: &TrainConfig, _test: &ImageSet, _device: &Device) -> Result<Self> {
        Ok(Self { enabled: config.diagnostics })
    }
    /// Before the first step of a fresh run.
    pub fn on_start(&mut self, _model: &Vit, _metrics: &mut MetricsFile) -> Result<()> {
        Ok(())
    }
    /// After every optimizer step.
    pub fn on_step(&mut self, _t: &Trainer, _b: &Batch, _o: &StepOutcome, _m: &mut MetricsFile) -> Result<()> {
        Ok(())
    }
    /// At the end of every epoch: fields merged into the epoch's metrics record.
    pub fn on_epoch(&mut self, _t: &Trainer, _epoch: usize) -> Result<Value> {
        Ok(json!({}))
    }
    /// At the end of the run: the summary's `diagnostics` field.
    pub fn finish(&mut self, _t: &Trainer, _out: &std::path::Path) -> Result<Value> {
        Ok(json!({ "enabled": self.enabled }))
    }
    /// State to keep in the checkpoint's metadata.
    pub fn state(&self) -> Value {
        Value::Null
    }
    /// Tensors to keep in the checkpoint.
    pub fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(vec![])
    }
    /// Restores [`Diagnostics::state`].
    pub fn restore(&mut self, _v: &Value) -> Result<()> {
        Ok(())
    }
    /// Restores one of [`Diagnostics::state_tensors`].
    pub fn restore_tensor(&mut self, _name: &str, _t: Tensor) {}
}
