//! The native step over a whole batch: [`MICRO_BATCHES`] tapes, run in parallel when the run has
//! the threads, their gradients summed in a fixed order.

use bmt_kfac::LayerCapture;
use candle_core::Tensor;

use super::linear::{add_assign, with_gemm_threads};
use super::tape::{Backward, Captures, Tape, Want};
use crate::error::{Result, TrainError};
use crate::model::Transformer;

/// The batch is cut into this many equal micro-batches (fewer when it has fewer samples), each
/// with its own [`Tape`]; their gradients are summed in micro-batch order. The cut does not depend
/// on the thread count, so a step's result is the same on 1 thread and on 2 (threads only decide
/// whether the micro-batches run one after the other or side by side). Measured on W1
/// (docs/BENCHMARKS.md): two micro-batches on two cores run a step in about 0.6× the time of one,
/// where splitting the GEMMs of one batch between two threads made it slower.
pub const MICRO_BATCHES: usize = 2;

/// The native training step of one batch: forward, loss and backward over its micro-batches.
#[derive(Debug, Default)]
pub struct NativeStep {
    tapes: Vec<Tape>,
    /// Samples of each micro-batch of the last forward pass.
    sizes: Vec<usize>,
    /// Predictions of the whole batch in the last forward pass.
    predictions: usize,
}

/// Runs `f` on every tape (with its index), side by side on up to `threads` threads, each
/// worker's GEMMs on its share of them; results in tape order.
fn for_each_tape<T: Send>(
    tapes: &mut [Tape],
    threads: usize,
    f: impl Fn(usize, &mut Tape) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let parts = tapes.len();
    if threads < 2 || parts < 2 {
        return tapes.iter_mut().enumerate().map(|(i, t)| f(i, t)).collect();
    }
    let per = (threads / parts).max(1);
    let f = &f;
    std::thread::scope(|s| {
        let (first, rest) = tapes.split_first_mut().expect("at least two tapes");
        let handles: Vec<_> = rest
            .iter_mut()
            .enumerate()
            .map(|(i, t)| s.spawn(move || with_gemm_threads(per, || f(i + 1, t))))
            .collect();
        let mut out = vec![with_gemm_threads(per, || f(0, first))];
        for h in handles {
            out.push(h.join().map_err(|_| TrainError::Input {
                msg: "a worker thread of the native step panicked".into(),
            })?);
        }
        out.into_iter().collect()
    })
}

impl NativeStep {
    /// An empty step (tapes are allocated by the first forward pass and reused after).
    pub fn new() -> Self {
        Self::default()
    }

    /// The micro-batch sizes of a batch of `n` samples: `MICRO_BATCHES` parts as equal as
    /// possible, the larger first.
    fn split(n: usize) -> Vec<usize> {
        let parts = MICRO_BATCHES.min(n).max(1);
        (0..parts)
            .map(|i| n / parts + usize::from(i < n % parts))
            .collect()
    }

    /// `t` cut along its first dimension into the micro-batches.
    fn cut(&self, t: &Tensor) -> Result<Vec<Tensor>> {
        let mut start = 0;
        let mut out = Vec::with_capacity(self.sizes.len());
        for &n in &self.sizes {
            out.push(t.narrow(0, start, n)?);
            start += n;
        }
        Ok(out)
    }

    /// The forward pass of `model` on `inputs` (as [`Tape::forward`]) on `threads` threads.
    pub fn forward(&mut self, model: &Transformer, inputs: &Tensor, threads: usize) -> Result<()> {
        let n = inputs.dims().first().copied().unwrap_or(0);
        if n == 0 {
            return Err(TrainError::Input {
                msg: format!("an empty batch (inputs of shape {:?})", inputs.dims()),
            });
        }
        self.sizes = Self::split(n);
        self.tapes.resize_with(self.sizes.len(), Tape::new);
        let parts = self.cut(inputs)?;
        for_each_tape(&mut self.tapes, threads, |i, t| t.forward(model, &parts[i]))?;
        self.predictions = self
            .tapes
            .iter()
            .map(Tape::predictions)
            .sum::<Result<usize>>()?;
        Ok(())
    }

    /// The batch's mean cross-entropy, correct predictions, and each micro-batch's rows of the
    /// gradient of the mean loss with respect to its logits (see [`Tape::cross_entropy`]).
    pub fn cross_entropy(&self, targets: &Tensor) -> Result<(f64, usize, Vec<Vec<f32>>)> {
        let parts = self.cut(targets)?;
        let (mut loss, mut correct, mut grads) = (0.0, 0, Vec::with_capacity(parts.len()));
        for (t, y) in self.tapes.iter().zip(&parts) {
            let (l, c, g) = t.cross_entropy_sum(y, self.predictions)?;
            loss += l;
            correct += c;
            grads.push(g);
        }
        Ok((loss / self.predictions.max(1) as f64, correct, grads))
    }

    /// The logits of the last forward pass, as [`Transformer::forward`] returns them.
    pub fn logits(&self) -> Result<Tensor> {
        let parts = self
            .tapes
            .iter()
            .map(Tape::logits)
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// The backward pass from each micro-batch's logit gradient (from
    /// [`NativeStep::cross_entropy`]) on `threads` threads: gradients summed over the
    /// micro-batches in order, captures joined along the batch.
    pub fn backward(
        &mut self,
        dlogits: &[Vec<f32>],
        want: Want,
        threads: usize,
    ) -> Result<Backward> {
        if dlogits.len() != self.tapes.len() {
            return Err(TrainError::Input {
                msg: format!(
                    "{} logit gradients for {} micro-batches",
                    dlogits.len(),
                    self.tapes.len()
                ),
            });
        }
        let parts = for_each_tape(&mut self.tapes, threads, |i, t| {
            t.backward(&dlogits[i], want)
        })?;
        let mut parts = parts.into_iter();
        let Some(mut total) = parts.next() else {
            return Ok(Backward::default());
        };
        let rest: Vec<Backward> = parts.collect();
        for (name, g) in total.gradients.iter_mut() {
            for p in &rest {
                add_assign(g, &p.gradients[name]);
            }
        }
        if want.captures != Captures::None && !rest.is_empty() {
            total.captures = join_captures(total.captures, &rest)?;
        }
        Ok(total)
    }
}

/// Each layer's captures of every micro-batch joined along the batch dimension.
fn join_captures(first: Vec<LayerCapture>, rest: &[Backward]) -> Result<Vec<LayerCapture>> {
    first
        .into_iter()
        .enumerate()
        .map(|(l, c)| {
            let (mut inputs, mut grads) = (vec![c.input], vec![c.output_grad]);
            for p in rest {
                let other = p.captures.get(l).ok_or_else(|| TrainError::Input {
                    msg: format!("micro-batches captured different layers (`{}`)", c.name),
                })?;
                inputs.push(other.input.clone());
                grads.push(other.output_grad.clone());
            }
            Ok(LayerCapture {
                name: c.name,
                input: Tensor::cat(&inputs, 0)?,
                output_grad: Tensor::cat(&grads, 0)?,
            })
        })
        .collect()
}
