//! K-FAC-expand and K-FAC-reduce against the exact Fisher of deep linear networks
//! (Eschenhagen et al., NeurIPS 2023), and the per-sample rescaling.

use candle_core::{IndexOp, Module, Tensor};
use faer::Mat;

use super::{host, kron, max_abs, max_abs_diff, randn, rng, var};
use crate::factors::fold;
use crate::{kronecker_factors, LayerCapture, Result, TrackedLinear, WeightSharing};

const N: usize = 3;
const T: usize = 4;
const C: usize = 2;

/// A deep linear network `x → L1 → L2 → (mean over T if pooled) → L3`, no nonlinearity.
struct DeepLinear {
    layers: Vec<TrackedLinear>,
    pooled: bool,
}

impl DeepLinear {
    fn new(seed: u64, pooled: bool) -> Result<Self> {
        let mut r = rng(seed);
        let dims = [(4, 3), (3, 4), (C, 3)];
        let layers = dims
            .iter()
            .enumerate()
            .map(|(i, &(o, n))| {
                TrackedLinear::new(
                    format!("l{i}"),
                    var(&mut r, &[o, n], 0.7)?,
                    Some(var(&mut r, &[o], 0.3)?),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers, pooled })
    }

    /// Output `(N, T, C)` (per token) or `(N, C)` (pooled).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.layers[1].forward(&self.layers[0].forward(x)?)?;
        let h = if self.pooled { h.mean(1)? } else { h };
        Ok(self.layers[2].forward(&h)?)
    }

    fn set_tracking(&self, on: bool) {
        self.layers.iter().for_each(|l| l.set_tracking(on));
    }

    /// `vec(∇_{W̄ᵢ} s)` (column-major) for a scalar `s`.
    fn grad_vec(&self, s: &Tensor, i: usize) -> Result<Vec<f64>> {
        let grads = s.backward()?;
        let l = &self.layers[i];
        let gw = grads.get(l.weight().as_tensor()).unwrap().clone();
        let gb = grads.get(l.bias().unwrap().as_tensor()).unwrap().clone();
        let g = host(&fold(&gw, Some(&gb))?)?;
        Ok((0..g.ncols())
            .flat_map(|j| (0..g.nrows()).map(move |i| (i, j)))
            .map(|(i, j)| g[(i, j)])
            .collect())
    }

    /// The exact Fisher (= GGN, Gaussian likelihood with unit variance) of the batch-mean loss
    /// with respect to `W̄ᵢ`: `(1/N) Σ_outputs ∇f ∇fᵀ` over every output coordinate, each gradient
    /// taken by its own backward pass.
    fn exact_fisher(&self, x: &Tensor, i: usize) -> Result<Mat<f64>> {
        self.set_tracking(false);
        let f = self.forward(x)?;
        let outputs: Vec<Tensor> = if self.pooled {
            (0..N)
                .flat_map(|n| (0..C).map(move |c| (n, c)))
                .map(|(n, c)| f.i((n, c)))
                .collect::<candle_core::Result<_>>()?
        } else {
            (0..N)
                .flat_map(|n| (0..T).flat_map(move |t| (0..C).map(move |c| (n, t, c))))
                .map(|(n, t, c)| f.i((n, t, c)))
                .collect::<candle_core::Result<_>>()?
        };
        let mut fisher: Option<Mat<f64>> = None;
        for s in outputs {
            let v = self.grad_vec(&s, i)?;
            let d = v.len();
            let outer = Mat::from_fn(d, d, |p, q| v[p] * v[q] / N as f64);
            fisher = Some(match fisher {
                Some(acc) => acc + outer,
                None => outer,
            });
        }
        Ok(fisher.unwrap())
    }

    /// K-FAC's `A ⊗ Σ_c G_c`, with `G_c` from the capture of the backward of
    /// `(1/N) Σ f_{·,c}`: per-sample output gradients `Jᵀe_c`, whose outer products sum over c
    /// to `JᵀJ`, the GGN's output-space factor (unit Gaussian likelihood: Λ = I).
    fn kfac(&self, x: &Tensor, i: usize, sharing: WeightSharing) -> Result<Mat<f64>> {
        let mut a = None;
        let mut g_sum: Option<Mat<f64>> = None;
        for c in 0..C {
            self.set_tracking(true);
            let f = self.forward(x)?;
            let loss = (f.narrow(f.rank() - 1, c, 1)?.sum_all()? / N as f64)?;
            let grads = loss.backward()?;
            let cap: LayerCapture = self.layers[i].capture(&grads)?.unwrap();
            let (ai, gi) = kronecker_factors(&cap, sharing)?;
            a = Some(host(&ai)?);
            let gi = host(&gi)?;
            g_sum = Some(match g_sum {
                Some(acc) => acc + gi,
                None => gi,
            });
        }
        self.set_tracking(false);
        Ok(kron(&a.unwrap(), &g_sum.unwrap()))
    }
}

fn rel(x: &Mat<f64>, y: &Mat<f64>) -> f64 {
    max_abs_diff(x, y) / max_abs(y)
}

/// Per-token loss over weights shared across T positions: K-FAC-expand equals the exact Fisher
/// block of each weight-shared layer, and K-FAC-reduce does not.
#[test]
fn expand_is_exact_for_deep_linear_per_token_loss() -> Result<()> {
    let net = DeepLinear::new(20, false)?;
    let x = randn(&mut rng(21), &[N, T, 3])?;
    for i in 0..3 {
        let exact = net.exact_fisher(&x, i)?;
        let e = rel(&net.kfac(&x, i, WeightSharing::Expand)?, &exact);
        assert!(e < 1e-10, "layer {i}: expand relative error {e}");
    }
    let reduce = rel(
        &net.kfac(&x, 0, WeightSharing::Reduce)?,
        &net.exact_fisher(&x, 0)?,
    );
    assert!(reduce > 1e-2, "reduce should not be exact here: {reduce}");
    Ok(())
}

/// Per-sequence loss after mean pooling over T: K-FAC-reduce equals the exact Fisher block of the
/// weight-shared layers before the pooling, and K-FAC-expand does not.
#[test]
fn reduce_is_exact_for_deep_linear_per_sequence_loss() -> Result<()> {
    let net = DeepLinear::new(22, true)?;
    let x = randn(&mut rng(23), &[N, T, 3])?;
    for i in 0..2 {
        let exact = net.exact_fisher(&x, i)?;
        let e = rel(&net.kfac(&x, i, WeightSharing::Reduce)?, &exact);
        assert!(e < 1e-10, "layer {i}: reduce relative error {e}");
    }
    let expand = rel(
        &net.kfac(&x, 0, WeightSharing::Expand)?,
        &net.exact_fisher(&x, 0)?,
    );
    assert!(expand > 1e-2, "expand should not be exact here: {expand}");
    Ok(())
}

/// The batch-mean loss gives autograd gradients g/N. Duplicating the batch halves every output
/// gradient but must leave G (and A) unchanged; without the ×N rescaling G would drop fourfold.
#[test]
fn per_sample_rescaling_makes_g_batch_size_invariant() -> Result<()> {
    let mut r = rng(24);
    let n = 5;
    let x = randn(&mut r, &[n, 3])?;
    let per_sample = randn(&mut r, &[n, 2])?;
    let one = LayerCapture {
        name: "l".into(),
        input: x.clone(),
        output_grad: (&per_sample / n as f64)?,
    };
    let twice = LayerCapture {
        name: "l".into(),
        input: Tensor::cat(&[&x, &x], 0)?,
        output_grad: (Tensor::cat(&[&per_sample, &per_sample], 0)? / (2 * n) as f64)?,
    };
    let (a1, g1) = kronecker_factors(&one, WeightSharing::Expand)?;
    let (a2, g2) = kronecker_factors(&twice, WeightSharing::Expand)?;
    assert!(rel(&host(&a2)?, &host(&a1)?) < 1e-14);
    assert!(rel(&host(&g2)?, &host(&g1)?) < 1e-14);
    // And G is the mean outer product of the per-sample gradients themselves.
    let want = host(&(per_sample.t()?.matmul(&per_sample)? / n as f64)?)?;
    assert!(rel(&host(&g1)?, &want) < 1e-14);
    Ok(())
}
