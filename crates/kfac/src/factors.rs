//! Kronecker factors of a linear layer's Fisher block (MATH §4), with the bias folded in and the
//! per-sample rescaling of autograd's output gradients.
//!
//! Conventions. A capture holds inputs `(N, T…, n)` and output gradients `(N, T…, m)`; a rank-2
//! capture `(N, ·)` has `T = 1`. The loss is a mean over the `N` samples, so autograd's output
//! gradient is `g/N` with `g = ∂ℓₙ/∂s` the per-sample one: we multiply by `N` before forming `G`.
//! With `ā = [a; 1]`, the two weight-sharing modes of Eschenhagen et al. (NeurIPS 2023) are
//!
//! | mode | rows `Ā` | rows `Ĝ` | `A` | `G` |
//! |---|---|---|---|---|
//! | expand | every `āₙₜ` (`R = N·T` rows) | every `gₙₜ` | `ĀᵀĀ / (N·T)` | `ĜᵀĜ / N` |
//! | reduce | `(1/T) Σₜ āₙₜ` (`R = N`) | `Σₜ gₙₜ` | `ĀᵀĀ / N` | `ĜᵀĜ / N` |
//!
//! With these scalings `A ⊗ G` is the Fisher (GGN) block of the *mean* loss, and is exact for a deep
//! linear network in each mode's own setting (per-token loss for expand, per-sequence loss for
//! reduce); the tests check both against a dense Fisher built from autograd Jacobians.

use candle_core::{DType, Tensor, D};

use crate::error::{KfacError, Result};
use crate::tracked::LayerCapture;

/// How a layer applied to every position of a sequence is treated (Eschenhagen et al. 2023).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightSharing {
    /// K-FAC-expand: the `N·T` positions are samples; exact for per-token losses.
    #[default]
    Expand,
    /// K-FAC-reduce: per sequence, `ā` is averaged and `g` summed over positions; exact for
    /// per-sequence losses.
    Reduce,
}

/// The sizes of a capture: `N` samples of `T` positions (the product of the middle dimensions;
/// 1 for a rank-2 capture), `n` input and `m` output features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CaptureDims {
    pub(crate) samples: usize,
    pub(crate) positions: usize,
    pub(crate) n: usize,
    pub(crate) m: usize,
}

impl CaptureDims {
    /// Checked: input `(N, T…, n)` and output gradient `(N, T…, m)` with equal leading dimensions,
    /// none of `N`, `n`, `m` zero.
    pub(crate) fn of(capture: &LayerCapture) -> Result<Self> {
        let (xd, gd) = (capture.input.dims(), capture.output_grad.dims());
        let bad = |expected: &str| KfacError::Shape {
            what: format!("capture of layer `{}`", capture.name),
            expected: expected.into(),
            found: format!("input {xd:?}, output_grad {gd:?}"),
        };
        if xd.len() < 2 || gd.len() != xd.len() || xd[..xd.len() - 1] != gd[..gd.len() - 1] {
            return Err(bad(
                "input (N, T…, n) and output_grad (N, T…, m) with equal leading dims",
            ));
        }
        let (samples, n, m) = (xd[0], xd[xd.len() - 1], gd[gd.len() - 1]);
        if samples == 0 || n == 0 || m == 0 {
            return Err(bad("non-empty batch and feature dimensions"));
        }
        let positions = xd[1..xd.len() - 1].iter().product();
        Ok(Self {
            samples,
            positions,
            n,
            m,
        })
    }
}

/// The batch's per-sample rows, from which both Kronecker factors are formed:
/// `A = a_scale · ĀᵀĀ` and `G = g_scale · ĜᵀĜ` (see the module table).
///
/// This is also all that the matrix-free CG-FAC needs: `G X A = g_scale·a_scale · Ĝᵀ((Ĝ X) Āᵀ) Ā`.
#[derive(Debug, Clone)]
pub struct CurvatureRows {
    /// `Ā`, shape `(R, n+1)`, the last column the folded bias input (1, or its mean 1 for reduce).
    pub a_rows: Tensor,
    /// `Ĝ`, shape `(R, m)`, per-sample output gradients (rescaled by `N`).
    pub g_rows: Tensor,
    /// Scale of `A = a_scale ĀᵀĀ`.
    pub a_scale: f64,
    /// Scale of `G = g_scale ĜᵀĜ`.
    pub g_scale: f64,
}

impl CurvatureRows {
    /// Builds the rows of one capture in the given sharing mode (module table).
    pub fn from_capture(capture: &LayerCapture, sharing: WeightSharing) -> Result<Self> {
        let (x, og) = (&capture.input, &capture.output_grad);
        let CaptureDims {
            samples: n_samples,
            positions: t,
            n,
            m,
        } = CaptureDims::of(capture)?;
        let rows = n_samples * t;
        let x2 = x.reshape((rows, n))?;
        // Per-sample rescaling: autograd carries 1/N of the batch-mean loss.
        let g = (og.reshape((rows, m))? * n_samples as f64)?;
        let nf = n_samples as f64;
        let with_ones = |x: &Tensor| -> Result<Tensor> {
            let ones = Tensor::ones((x.dim(0)?, 1), x.dtype(), x.device())?;
            Ok(Tensor::cat(&[x, &ones], 1)?)
        };
        Ok(match sharing {
            WeightSharing::Expand => Self {
                a_rows: with_ones(&x2)?,
                g_rows: g,
                a_scale: 1.0 / (nf * t as f64),
                g_scale: 1.0 / nf,
            },
            // The mean of the bias column of ones is 1: append it after averaging.
            WeightSharing::Reduce => Self {
                a_rows: with_ones(&(sum_positions(&x2, n_samples, t)? / t as f64)?)?,
                g_rows: sum_positions(&g, n_samples, t)?,
                a_scale: 1.0 / nf,
                g_scale: 1.0 / nf,
            },
        })
    }

    /// Keeps the first `k` columns of `Ā` (a layer without bias uses `k = n`).
    pub(crate) fn narrow_a(self, k: usize) -> Result<Self> {
        if self.a_rows.dim(1)? == k {
            return Ok(self);
        }
        Ok(Self {
            a_rows: self.a_rows.narrow(1, 0, k)?.contiguous()?,
            ..self
        })
    }

    /// The factors `(A, G)`.
    pub fn factors(&self) -> Result<(Tensor, Tensor)> {
        let a = (self.a_rows.t()?.matmul(&self.a_rows)? * self.a_scale)?;
        let g = (self.g_rows.t()?.matmul(&self.g_rows)? * self.g_scale)?;
        Ok((a, g))
    }

    /// `tr A` and `tr G` from the rows alone: `a_scale‖Ā‖²` and `g_scale‖Ĝ‖²`.
    pub fn traces(&self) -> Result<(f64, f64)> {
        Ok((
            self.a_scale * scalar(&self.a_rows.sqr()?.sum_all()?)?,
            self.g_scale * scalar(&self.g_rows.sqr()?.sum_all()?)?,
        ))
    }

    /// `G X`, computed as `g_scale Ĝᵀ(Ĝ X)`: `O(R·m·k)`.
    pub fn g_times(&self, x: &Tensor) -> Result<Tensor> {
        Ok((self.g_rows.t()?.matmul(&self.g_rows.matmul(x)?)? * self.g_scale)?)
    }

    /// `X A`, computed as `a_scale (X Āᵀ) Ā`: `O(R·m·k)`.
    pub fn times_a(&self, x: &Tensor) -> Result<Tensor> {
        Ok((x.matmul(&self.a_rows.t()?)?.matmul(&self.a_rows)? * self.a_scale)?)
    }

    /// `G X A` without forming either factor: `g_scale·a_scale Ĝᵀ((Ĝ X) Āᵀ) Ā`, `4·R·m·k` flops.
    pub fn gxa(&self, x: &Tensor) -> Result<Tensor> {
        let gx = self.g_rows.t()?.matmul(&self.g_rows.matmul(x)?)?;
        let gxa = gx.matmul(&self.a_rows.t()?)?.matmul(&self.a_rows)?;
        Ok((gxa * (self.g_scale * self.a_scale))?)
    }

    /// Number of rows `R`.
    pub fn rows(&self) -> usize {
        self.a_rows.dims()[0]
    }
}

/// `Σₜ xₙₜ` for rows `x` `(N·T, k)` ordered sample-major: `(N, k)`. The positions are moved to the
/// last, contiguous dimension first, because candle reduces a middle dimension with a strided
/// per-element loop (measured: 21 % of a W1 K-FAC step's preconditioning).
fn sum_positions(x: &Tensor, n_samples: usize, t: usize) -> Result<Tensor> {
    let k = x.dim(1)?;
    Ok(x.reshape((n_samples, t, k))?
        .transpose(1, 2)?
        .contiguous()?
        .sum(2)?)
}

/// The batch Kronecker factors of one capture: `A` `(n+1)×(n+1)` with the bias folded in and `G`
/// `m×m` from the per-sample (rescaled) output gradients, in the given sharing mode (module table).
pub fn kronecker_factors(
    capture: &LayerCapture,
    sharing: WeightSharing,
) -> Result<(Tensor, Tensor)> {
    CurvatureRows::from_capture(capture, sharing)?.factors()
}

/// The Kronecker quadratic form `⟨ΔW̄, G ΔW̄ A⟩ = vec(ΔW̄)ᵀ (A ⊗ G) vec(ΔW̄)`, for `ΔW̄` of shape
/// `m × k`, `A` `k×k`, `G` `m×m`.
pub fn kronecker_quadratic_form(a: &Tensor, g: &Tensor, dw: &Tensor) -> Result<f64> {
    let (m, k) = dw.dims2()?;
    if a.dims() != [k, k] || g.dims() != [m, m] {
        return Err(KfacError::Shape {
            what: "Kronecker factors for the quadratic form".into(),
            expected: format!("A ({k}, {k}) and G ({m}, {m}) for ΔW̄ ({m}, {k})"),
            found: format!("A {:?}, G {:?}", a.dims(), g.dims()),
        });
    }
    let gwa = g.matmul(dw)?.matmul(a)?;
    frobenius(dw, &gwa)
}

/// `⟨X, Y⟩ = Σ Xᵢⱼ Yᵢⱼ` as an f64 on the host.
pub(crate) fn frobenius(x: &Tensor, y: &Tensor) -> Result<f64> {
    scalar(&(x * y)?.sum_all()?)
}

/// A rank-0 tensor's value as f64.
pub(crate) fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// Whether every entry is finite (one host read).
pub(crate) fn all_finite(t: &Tensor) -> Result<bool> {
    // NaN and ±∞ both make the sum of |x| non-finite.
    Ok(scalar(&t.abs()?.sum_all()?)?.is_finite())
}

/// Folds a layer's gradient into `∇W̄ = [∇W ∇b]`, shape `m × (n+1)` (or `m × n` without bias).
pub(crate) fn fold(gw: &Tensor, gb: Option<&Tensor>) -> Result<Tensor> {
    Ok(match gb {
        Some(b) => Tensor::cat(&[gw, &b.unsqueeze(D::Minus1)?], 1)?,
        None => gw.clone(),
    })
}
