//! Wiring of `--optimizer kfac|cgfac` to the `bmt-kfac` crate (being integrated).

use bmt_kfac::AdamWConfig;
use candle_core::backprop::GradStore;
use candle_core::Tensor;
use serde_json::Value;
use std::collections::HashMap;

use crate::config::TrainConfig;
use crate::error::{Result, TrainError};
use crate::model::Vit;

/// K-FAC optimizer of a run.
pub struct KfacRun;

impl KfacRun {
    /// Named state.
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(vec![])
    }
    /// Restores state.
    pub fn load_state(&mut self, _s: &HashMap<String, Tensor>) -> Result<()> {
        Ok(())
    }
}

/// Builds the K-FAC optimizer.
pub fn build(_config: &TrainConfig, _model: &Vit, _adamw: AdamWConfig) -> Result<KfacRun> {
    Err(TrainError::Config {
        flag: "--optimizer",
        msg: "kfac and cgfac are not wired in yet".into(),
    })
}

/// One K-FAC step.
pub fn step(
    _k: &mut KfacRun,
    _model: &Vit,
    _logits: &Tensor,
    _grads: &GradStore,
    _seed: u64,
    _step: usize,
) -> Result<Value> {
    Err(TrainError::Config {
        flag: "--optimizer",
        msg: "kfac and cgfac are not wired in yet".into(),
    })
}

/// Default learning rate of `--optimizer kfac|cgfac`.
pub const DEFAULT_LR: f64 = 1e-3;
