//! TrackedLinear records the right activations and output gradients.

use candle_core::{Module, Tensor};

use super::{host, max_abs_diff, randn, rng, var};
use crate::{Result, TrackedLinear};

struct Net {
    l1: TrackedLinear,
    l2: TrackedLinear,
}

impl Net {
    fn new(seed: u64) -> Result<Self> {
        let mut r = rng(seed);
        Ok(Self {
            l1: TrackedLinear::new(
                "l1",
                var(&mut r, &[5, 4], 0.5)?,
                Some(var(&mut r, &[5], 0.1)?),
            )?,
            l2: TrackedLinear::new(
                "l2",
                var(&mut r, &[2, 5], 0.5)?,
                Some(var(&mut r, &[2], 0.1)?),
            )?,
        })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.l2.forward(&self.l1.forward(x)?.tanh()?)?)
    }
    fn set_tracking(&self, on: bool) {
        self.l1.set_tracking(on);
        self.l2.set_tracking(on);
    }
}

/// `L = (1/N) Σ ½‖y − t‖²`.
fn loss(y: &Tensor, target: &Tensor) -> Result<Tensor> {
    let n = y.dims()[0] as f64;
    Ok(((y - target)?.sqr()?.sum_all()? * (0.5 / n))?)
}

/// Recorded inputs equal the analytic activations; captured output gradients equal the analytic
/// ∂L/∂y and a central finite difference in y.
#[test]
fn captures_match_analytic_and_finite_differences() -> Result<()> {
    let net = Net::new(1)?;
    let mut r = rng(2);
    let x = randn(&mut r, &[3, 4])?;
    let target = randn(&mut r, &[3, 2])?;
    net.set_tracking(true);
    let y = net.forward(&x)?;
    let grads = loss(&y, &target)?.backward()?;
    let c1 = net.l1.capture(&grads)?.expect("l1 recorded");
    let c2 = net.l2.capture(&grads)?.expect("l2 recorded");

    // Analytic forward and backward.
    let (w1, b1) = (
        net.l1.weight().as_tensor(),
        net.l1.bias().unwrap().as_tensor(),
    );
    let (w2, b2) = (
        net.l2.weight().as_tensor(),
        net.l2.bias().unwrap().as_tensor(),
    );
    let y1 = x.matmul(&w1.t()?)?.broadcast_add(b1)?;
    let h = y1.tanh()?;
    let y2 = h.matmul(&w2.t()?)?.broadcast_add(b2)?;
    let dy2 = ((&y2 - &target)? / 3.0)?;
    let dy1 = (dy2.matmul(w2)? * (1.0 - h.sqr()?)?)?;
    assert_eq!(max_abs_diff(&host(&c1.input)?, &host(&x)?), 0.0);
    assert!(max_abs_diff(&host(&c2.input)?, &host(&h)?) < 1e-15);
    assert!(max_abs_diff(&host(&c2.output_grad)?, &host(&dy2)?) < 1e-14);
    assert!(max_abs_diff(&host(&c1.output_grad)?, &host(&dy1)?) < 1e-14);
    // The gradient is not trivially small: a wrong one would show.
    assert!(super::max_abs(&host(&dy1)?) > 1e-3);

    // Central differences of L as a function of y1 (the output of l1). The truncation error is
    // O(ε²·L''') ≈ 1e-10 at ε = 1e-5, the rounding error O(1e-16/ε) ≈ 1e-11.
    let loss_of_y1 = |y1: &Tensor| -> Result<f64> {
        let y2 = y1.tanh()?.matmul(&w2.t()?)?.broadcast_add(b2)?;
        Ok(loss(&y2, &target)?.to_scalar::<f64>()?)
    };
    let eps = 1e-5;
    let base = y1.flatten_all()?.to_vec1::<f64>()?;
    let got = c1.output_grad.flatten_all()?.to_vec1::<f64>()?;
    for i in 0..base.len() {
        let mut plus = base.clone();
        plus[i] += eps;
        let mut minus = base.clone();
        minus[i] -= eps;
        let fp = loss_of_y1(&Tensor::from_vec(plus, (3, 5), x.device())?)?;
        let fm = loss_of_y1(&Tensor::from_vec(minus, (3, 5), x.device())?)?;
        let fd = (fp - fm) / (2.0 * eps);
        assert!(
            (fd - got[i]).abs() < 1e-8,
            "entry {i}: fd {fd} vs {}",
            got[i]
        );
    }
    Ok(())
}

/// With tracking off nothing is recorded and the forward value is identical to the tracked one.
#[test]
fn tracking_off_records_nothing_and_changes_nothing() -> Result<()> {
    let net = Net::new(3)?;
    let x = randn(&mut rng(4), &[6, 4])?;
    net.set_tracking(true);
    let tracked = net.forward(&x)?;
    assert_eq!(net.l1.recorded_calls(), 1);
    net.set_tracking(false);
    let plain = net.forward(&x)?;
    assert_eq!(net.l1.recorded_calls(), 0);
    assert_eq!(net.l2.recorded_calls(), 0);
    assert_eq!(
        tracked.flatten_all()?.to_vec1::<f64>()?,
        plain.flatten_all()?.to_vec1::<f64>()?
    );
    let grads = plain.sum_all()?.backward()?;
    assert!(net.l1.capture(&grads)?.is_none());
    Ok(())
}

/// A tracked forward whose output the loss ignores is reported, not silently skipped.
#[test]
fn missing_gradient_is_a_typed_error() -> Result<()> {
    let net = Net::new(5)?;
    net.set_tracking(true);
    let x = randn(&mut rng(6), &[2, 4])?;
    let _ = net.forward(&x)?;
    let unrelated = crate::tests::var(&mut rng(7), &[3], 1.0)?;
    let grads = unrelated.as_tensor().sum_all()?.backward()?;
    let err = net.l1.capture(&grads).unwrap_err();
    assert!(err.to_string().contains("l1"), "{err}");
    Ok(())
}
