//! The second-order term the paper insists on (MATH §3, last bullet), measured in training.
//!
//! For one optimizer step with update `Δθ` and gradient `g` on a batch, per tracked linear layer
//! (weights and bias folded, `W̄ = [W b]`):
//! - first order: `⟨∇W̄, ΔW̄⟩`;
//! - second order: `½⟨ΔW̄, G ΔW̄ A⟩`, with `A` and `G` the layer's Kronecker factors from this batch's
//!   recorded activations and output gradients (`bmt_kfac::kronecker_factors`, expand setting, the
//!   same code K-FAC uses; the output gradients are those of the training loss, for the GPT
//!   rescaled to per-sequence token sums by [`crate::kfac::per_sample_sum_capture`], so `A ⊗ G`
//!   is the K-FAC approximation of the empirical Fisher block of the loss);
//!
//! and for the whole model the first-order change `g·Δθ` over every parameter and the loss change
//! measured on the same batch after the update. If the first-order term alone explained the loss
//! change, `measured − first_order` would be negligible; the second-order sum is its prediction.

use std::collections::BTreeMap;

use bmt_kfac::{kronecker_factors, kronecker_quadratic_form, LayerCapture, WeightSharing};
use candle_core::{DType, Tensor};
use serde_json::{json, Map, Value};

use crate::data::Batch;
use crate::error::Result;
use crate::gradients::StepGradients;
use crate::model::{cross_entropy, Transformer};

/// Weights and bias of one layer folded into `W̄ = [W b]`, `(m, n+1)`, in f64.
fn fold(w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let w = w.to_dtype(DType::F64)?;
    Ok(match b {
        Some(b) => Tensor::cat(&[&w, &b.to_dtype(DType::F64)?.unsqueeze(1)?], 1)?,
        None => w,
    })
}

fn dot(a: &Tensor, b: &Tensor) -> Result<f64> {
    Ok((a.to_dtype(DType::F64)? * b.to_dtype(DType::F64)?)?
        .sum_all()?
        .to_scalar::<f64>()?)
}

struct LayerBefore {
    capture: LayerCapture,
    weights: Tensor,
    grad: Tensor,
}

/// What is recorded before the update of a measured step.
pub struct Before {
    loss: f64,
    layers: Vec<LayerBefore>,
    params: BTreeMap<String, (Tensor, Tensor)>,
}

impl Before {
    /// Records, after the training backward and before the update: every tracked attention/MLP
    /// layer's capture, folded weights and folded gradient, and every parameter with its gradient.
    /// `grads` must hold the training backward's captures.
    pub fn record(model: &Transformer, grads: &StepGradients, loss: f64) -> Result<Self> {
        let mut layers = Vec::new();
        for (l, capture) in model
            .attention_and_mlp_layers()
            .iter()
            .zip(grads.captures())
        {
            debug_assert_eq!(l.name(), capture.name);
            let capture = crate::kfac::per_sample_sum_capture(model, capture.clone())?;
            let (Some(gw), gb) = (grads.get(l.weight()), l.bias().and_then(|b| grads.get(b)))
            else {
                continue;
            };
            layers.push(LayerBefore {
                capture,
                weights: fold(l.weight().as_tensor(), l.bias().map(|b| b.as_tensor()))?,
                grad: fold(gw, gb)?,
            });
        }
        let mut params = BTreeMap::new();
        for (name, var) in model.parameters() {
            if let Some(g) = grads.get(var) {
                params.insert(name.clone(), (var.as_tensor().copy()?, g.clone()));
            }
        }
        Ok(Self {
            loss,
            layers,
            params,
        })
    }

    /// After the update: the per-layer terms and the measured loss change on `batch`.
    pub fn finish(self, model: &Transformer, batch: &Batch) -> Result<Value> {
        let mut per_layer = Map::new();
        let (mut first_sum, mut second_sum) = (0.0, 0.0);
        for (l, before) in model.attention_and_mlp_layers().iter().zip(&self.layers) {
            debug_assert_eq!(l.name(), before.capture.name);
            let after = fold(l.weight().as_tensor(), l.bias().map(|b| b.as_tensor()))?;
            let delta = (after - &before.weights)?;
            let first = dot(&before.grad, &delta)?;
            let (a, g) = kronecker_factors(&before.capture, WeightSharing::Expand)?;
            let second = 0.5
                * kronecker_quadratic_form(
                    &a.to_dtype(DType::F64)?,
                    &g.to_dtype(DType::F64)?,
                    &delta,
                )?;
            first_sum += first;
            second_sum += second;
            per_layer.insert(
                before.capture.name.clone(),
                json!({ "first_order": first, "second_order": second, "ratio": second.abs() / first.abs().max(1e-30) }),
            );
        }
        let mut first_all = 0.0;
        for (name, var) in model.parameters() {
            if let Some((p0, g)) = self.params.get(name) {
                first_all += dot(g, &(var.as_tensor() - p0)?)?;
            }
        }
        let after = cross_entropy(&model.forward(&batch.inputs)?, &batch.targets)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        Ok(json!({
            "layers": per_layer,
            "tracked_first_order": first_sum,
            "tracked_second_order": second_sum,
            "model_first_order": first_all,
            "measured": after - self.loss,
        }))
    }
}

/// Per layer, the median over the measured steps of `|second| / |first|`, and the fraction of the
/// measured loss change left unexplained by the first-order term that the second-order sum
/// accounts for: `median((measured − first)/second)`.
pub fn summarise(records: &[Value]) -> Value {
    let median = |mut v: Vec<f64>| -> Option<f64> {
        v.retain(|x| x.is_finite());
        if v.is_empty() {
            return None;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        Some(v[v.len() / 2])
    };
    let mut layers: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut residual_ratio = Vec::new();
    let mut total_ratio = Vec::new();
    for r in records {
        if let Some(m) = r["layers"].as_object() {
            for (k, v) in m {
                if let Some(x) = v["ratio"].as_f64() {
                    layers.entry(k.clone()).or_default().push(x);
                }
            }
        }
        let (Some(meas), Some(first), Some(second)) = (
            r["measured"].as_f64(),
            r["model_first_order"].as_f64(),
            r["tracked_second_order"].as_f64(),
        ) else {
            continue;
        };
        if second.abs() > 0.0 {
            residual_ratio.push((meas - first) / second);
        }
        if first.abs() > 0.0 {
            total_ratio.push(second / first.abs());
        }
    }
    let per_layer: Map<String, Value> = layers
        .into_iter()
        .map(|(k, v)| (k, json!({ "median_ratio": median(v) })))
        .collect();
    json!({
        "steps_measured": records.len(),
        "median_second_over_first": median(total_ratio),
        "median_unexplained_over_second": median(residual_ratio),
        "layers": per_layer,
    })
}
