//! One training step's gradients, whichever backward pass made them: candle's autograd
//! (`loss.backward()` and the tracked layers' probes) or the hand-written step of [`crate::native`].
//!
//! Optimizers read them through [`GradientSource`] (by variable, so the K-FAC layer names need not
//! match the model's parameter names); K-FAC and the second-order measurement read the layer
//! captures.

use std::collections::HashMap;

use bmt_kfac::{GradientSource, LayerCapture};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, TensorId, Var};

use crate::error::{Result, TrainError};
use crate::model::Transformer;
use crate::native::Backward;

/// Every parameter's gradient of one step, and (when recorded) the captures of the attention and
/// MLP layers in [`Transformer::attention_and_mlp_layers`] order.
#[derive(Debug, Default)]
pub struct StepGradients {
    by_var: HashMap<TensorId, Tensor>,
    /// Parameter names in name order whose gradient holds a NaN or ±∞.
    non_finite: Vec<String>,
    captures: Vec<LayerCapture>,
}

impl StepGradients {
    /// From candle's gradient store; with `captures`, every attention/MLP layer's capture (tracking
    /// must have been on during the forward pass).
    pub fn from_autograd(model: &Transformer, store: &GradStore, captures: bool) -> Result<Self> {
        let mut by_var = HashMap::new();
        let mut non_finite = Vec::new();
        for (name, var) in model.parameters() {
            if let Some(g) = store.get(var.as_tensor()) {
                let total = g
                    .abs()?
                    .sum_all()?
                    .to_dtype(DType::F64)?
                    .to_scalar::<f64>()?;
                if !total.is_finite() {
                    non_finite.push(name.clone());
                }
                by_var.insert(var.as_tensor().id(), g.clone());
            }
        }
        let captures = if captures {
            autograd_captures(model, store)?
        } else {
            Vec::new()
        };
        Ok(Self {
            by_var,
            non_finite,
            captures,
        })
    }

    /// From the native backward pass: each gradient becomes a tensor of its parameter's shape.
    pub fn from_native(model: &Transformer, backward: Backward) -> Result<Self> {
        let Backward {
            mut gradients,
            captures,
        } = backward;
        let mut by_var = HashMap::new();
        let mut non_finite = Vec::new();
        for (name, var) in model.parameters() {
            let g = gradients.remove(name).ok_or_else(|| TrainError::Input {
                msg: format!("the native backward pass gave no gradient for `{name}`"),
            })?;
            if !g.iter().all(|v| v.is_finite()) {
                non_finite.push(name.clone());
            }
            let t = Tensor::from_vec(g, var.shape(), var.device())?;
            by_var.insert(var.as_tensor().id(), t);
        }
        Ok(Self {
            by_var,
            non_finite,
            captures,
        })
    }

    /// The gradient of `var`, if it has one.
    pub fn get(&self, var: &Var) -> Option<&Tensor> {
        self.by_var.get(&var.as_tensor().id())
    }

    /// The first parameter (in name order) whose gradient is not finite, if any.
    pub fn first_non_finite(&self) -> Option<&str> {
        self.non_finite.first().map(String::as_str)
    }

    /// The attention/MLP layers' captures of the training backward (empty unless recorded).
    pub fn captures(&self) -> &[LayerCapture] {
        &self.captures
    }
}

impl GradientSource for StepGradients {
    fn gradient(&self, _name: &str, var: &Var) -> Option<Tensor> {
        self.get(var).cloned()
    }
}

/// Every attention/MLP layer's capture from a gradient store (empty if nothing was recorded).
pub fn autograd_captures(model: &Transformer, store: &GradStore) -> Result<Vec<LayerCapture>> {
    let mut out = Vec::new();
    for l in model.attention_and_mlp_layers() {
        if let Some(c) = l.capture(store)? {
            out.push(c);
        }
    }
    Ok(out)
}
