//! Tracked linear layers: the seam between a Candle model and curvature estimation.
//!
//! A [`TrackedLinear`] computes `y = x Wᵀ + b` like `candle_nn::Linear`. When tracking is switched on,
//! each forward call also records
//! - its input activations `a` (detached), and
//! - a zero-valued *probe* [`Var`] added to its output, so that after `loss.backward()` the gradient
//!   store holds `∂L/∂y` for that output (Candle keeps gradients only for `Var` leaves; see
//!   CANDLE-NOTES.md). The probe adds zero, so the forward value is unchanged.
//!
//! With tracking off the forward pass is one fused matmul-plus-bias op (`linear_op`): no probe, no
//! record.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use candle_core::backprop::GradStore;
use candle_core::{Module, Tensor, Var};

use crate::error::{KfacError, Result};

/// One recorded forward call of a tracked layer: the input and the probe on the output.
#[derive(Debug, Clone)]
struct ForwardRecord {
    input: Tensor,
    probe: Var,
}

/// A linear layer `y = x Wᵀ + b` (weight `(out, in)`, as `candle_nn::Linear`) that can record its
/// input activations and expose the gradient of the loss with respect to its output.
#[derive(Debug)]
pub struct TrackedLinear {
    name: String,
    weight: Var,
    bias: Option<Var>,
    tracking: AtomicBool,
    records: Mutex<Vec<ForwardRecord>>,
}

/// What one tracked layer saw in one training step: everything K-FAC and the second-order
/// diagnostics need.
///
/// `input` has shape `(..., in)` and `output_grad` shape `(..., out)` with the same leading
/// dimensions (for a sequence model `(N, T, ·)`, for a plain batch `(N, ·)`). `output_grad` is the
/// gradient exactly as autograd produced it: for a batch-mean loss it carries a factor `1/N`
/// (MATH §4, per-sample scale), which curvature estimators must undo.
#[derive(Debug, Clone)]
pub struct LayerCapture {
    /// The layer's name (its parameter prefix, e.g. `blk0.q`).
    pub name: String,
    /// Input activations `a`, shape `(..., in)`, detached from the graph.
    pub input: Tensor,
    /// Gradient of the loss with respect to the layer output `∂L/∂y`, shape `(..., out)`.
    pub output_grad: Tensor,
}

impl TrackedLinear {
    /// Wraps an existing weight `(out, in)` and optional bias `(out)`.
    pub fn new(name: impl Into<String>, weight: Var, bias: Option<Var>) -> Result<Self> {
        let name = name.into();
        let (out_dim, _) = weight.dims2().map_err(|_| KfacError::Shape {
            what: format!("weight of tracked layer `{name}`"),
            expected: "(out, in)".into(),
            found: format!("{:?}", weight.dims()),
        })?;
        if let Some(b) = &bias {
            if b.dims() != [out_dim] {
                return Err(KfacError::Shape {
                    what: format!("bias of tracked layer `{name}`"),
                    expected: format!("({out_dim},)"),
                    found: format!("{:?}", b.dims()),
                });
            }
        }
        Ok(Self {
            name,
            weight,
            bias,
            tracking: AtomicBool::new(false),
            records: Mutex::new(Vec::new()),
        })
    }

    /// The layer's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The weight variable, shape `(out, in)`.
    pub fn weight(&self) -> &Var {
        &self.weight
    }

    /// The bias variable, shape `(out,)`, if any.
    pub fn bias(&self) -> Option<&Var> {
        self.bias.as_ref()
    }

    /// Input feature dimension `n`.
    pub fn in_dim(&self) -> usize {
        self.weight.dims()[1]
    }

    /// Output feature dimension `m`.
    pub fn out_dim(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Switches recording on or off. Either way the previous records are discarded.
    pub fn set_tracking(&self, on: bool) {
        self.tracking.store(on, Ordering::Relaxed);
        self.lock_records().clear();
    }

    /// Whether forward calls currently record.
    pub fn is_tracking(&self) -> bool {
        self.tracking.load(Ordering::Relaxed)
    }

    /// Discards the records of earlier forward calls (tracking stays as it is).
    pub fn clear(&self) {
        self.lock_records().clear();
    }

    /// The capture of the last recorded forward call, with the output gradient read from `grads`
    /// (the result of `loss.backward()` on a graph built while tracking was on).
    ///
    /// Returns `Ok(None)` when nothing was recorded. A probe missing from `grads` means the loss does
    /// not depend on this layer's output: that is reported as [`KfacError::MissingGradient`].
    pub fn capture(&self, grads: &GradStore) -> Result<Option<LayerCapture>> {
        let records = self.lock_records();
        let Some(record) = records.last() else {
            return Ok(None);
        };
        let output_grad = grads
            .get(record.probe.as_tensor())
            .cloned()
            .ok_or_else(|| KfacError::MissingGradient {
                layer: self.name.clone(),
            })?;
        Ok(Some(LayerCapture {
            name: self.name.clone(),
            input: record.input.clone(),
            output_grad,
        }))
    }

    /// Number of recorded forward calls since tracking was switched on or cleared.
    pub fn recorded_calls(&self) -> usize {
        self.lock_records().len()
    }

    fn lock_records(&self) -> std::sync::MutexGuard<'_, Vec<ForwardRecord>> {
        // A poisoned lock only means another thread panicked mid-push; the Vec is still valid.
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `x Wᵀ + b` on inputs of any rank ≥ 1: leading dimensions are flattened into one matrix
    /// product. On the CPU in `f32`/`f64` this is the fused op of [`crate::linear_op`] (one graph
    /// node, hand-written backward); elsewhere candle's composite ops.
    fn affine(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims();
        let in_dim = *dims.last().unwrap_or(&0);
        let rows = x.elem_count() / in_dim.max(1);
        let x2 = x.reshape((rows, in_dim))?;
        let w = self.weight.as_tensor();
        let y = if crate::linear_op::fused_linear_supported(&x2) {
            crate::linear_op::fused_linear(&x2, w, self.bias.as_ref().map(|b| b.as_tensor()))?
        } else {
            match &self.bias {
                // The bias rides in the GEMM as an extra column, [x 1]·[W b]ᵀ, so its gradient
                // comes out of the matmul's backward instead of a strided row reduction.
                Some(b) => {
                    let ones = Tensor::ones((rows, 1), x.dtype(), x.device())?;
                    let xa = Tensor::cat(&[&x2, &ones], 1)?;
                    let wb = Tensor::cat(&[w, &b.as_tensor().unsqueeze(1)?], 1)?;
                    xa.matmul(&wb.t()?)?
                }
                None => x2.matmul(&w.t()?)?,
            }
        };
        let mut out_dims = dims.to_vec();
        if let Some(last) = out_dims.last_mut() {
            *last = self.out_dim();
        }
        y.reshape(out_dims)
    }
}

impl Module for TrackedLinear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = self.affine(x)?;
        if !self.is_tracking() {
            return Ok(y);
        }
        let probe = Var::zeros(y.shape(), y.dtype(), y.device())?;
        let y = (y + probe.as_tensor())?;
        self.lock_records().push(ForwardRecord {
            input: x.detach(),
            probe,
        });
        Ok(y)
    }
}

/// Creates a weight `(out, in)` and bias `(out)` variable pair filled from plain f32 data.
///
/// Convenience for tests and doc examples; models usually take their variables from a `VarMap`.
pub fn linear_vars(
    weight: Vec<f32>,
    bias: Option<Vec<f32>>,
    out_dim: usize,
    in_dim: usize,
    device: &candle_core::Device,
) -> Result<(Var, Option<Var>)> {
    let w = Var::from_tensor(&Tensor::from_vec(weight, (out_dim, in_dim), device)?)?;
    let b = match bias {
        Some(b) => Some(Var::from_tensor(&Tensor::from_vec(b, out_dim, device)?)?),
        None => None,
    };
    Ok((w, b))
}
