//! Conjugate gradient on the Kronecker-factored system `M(X) = ∇W̄` (MATH §5), for any symmetric
//! positive definite operator `M` under the Frobenius inner product.

use candle_core::Tensor;

use crate::error::Result;
use crate::factors::frobenius;

/// The vector-space operations CG needs, under the Frobenius inner product: implemented for
/// tensors (any dtype and device) and for the host buffers of `f32` CPU layers.
pub trait CgVector: Clone + Sized {
    /// The zero vector of the same shape.
    fn zeros_like(&self) -> Result<Self>;
    /// `⟨self, other⟩`.
    fn dot(&self, other: &Self) -> Result<f64>;
    /// `self − other`.
    fn minus(&self, other: &Self) -> Result<Self>;
    /// `self ← self + α·x`.
    fn add_scaled(&mut self, alpha: f64, x: &Self) -> Result<()>;
    /// `self ← r + β·self`.
    fn scale_add(&mut self, beta: f64, r: &Self) -> Result<()>;
    /// `self ← self + α·x`, returning `⟨self, self⟩` of the result: one pass where the type can
    /// fuse the two (CG's residual update and the norm of its stopping rule).
    fn add_scaled_square_norm(&mut self, alpha: f64, x: &Self) -> Result<f64> {
        self.add_scaled(alpha, x)?;
        self.dot(self)
    }
}

impl CgVector for Tensor {
    fn zeros_like(&self) -> Result<Self> {
        Ok(Tensor::zeros_like(self)?)
    }

    fn dot(&self, other: &Self) -> Result<f64> {
        frobenius(self, other)
    }

    fn minus(&self, other: &Self) -> Result<Self> {
        Ok((self - other)?)
    }

    fn add_scaled(&mut self, alpha: f64, x: &Self) -> Result<()> {
        *self = (&*self + (x * alpha)?)?;
        Ok(())
    }

    fn scale_add(&mut self, beta: f64, r: &Self) -> Result<()> {
        *self = (r + (&*self * beta)?)?;
        Ok(())
    }
}

/// Stopping rule and iteration cap of CG-FAC.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CgSettings {
    /// Stop when `ρ'/ρ₀ = ‖r‖²/‖r₀‖² < tol` (squared norms: 1e-2 means a tenfold residual drop).
    pub tol: f64,
    /// Iteration cap `k_max`.
    pub max_iters: usize,
}

/// What one CG solve did.
#[derive(Debug, Clone)]
pub struct CgOutcome<V = Tensor> {
    /// The solution `X`, or `None` after a breakdown (the caller falls back to the gradient).
    pub solution: Option<V>,
    /// Iterations run (operator applications after the initial residual).
    pub iterations: usize,
    /// `ρ'/ρ₀` at exit (0 when the start was already exact).
    pub relative_residual: f64,
    /// Whether a breakdown was detected: `⟨p, M p⟩ ≤ 0`, a non-finite value, or `ρ' > ρ₀` at exit.
    pub breakdown: bool,
    /// `M(X)` of the solution as `b − r` from the recurrence (no operator application), `None`
    /// after a breakdown: the next solve with the same operator can start from `X` without
    /// computing `M(X)` again ([`conjugate_gradient_from`]).
    pub product: Option<V>,
}

/// A warm start `X₀` for [`conjugate_gradient_from`], with its product `M(X₀)` when known.
#[derive(Debug, Clone, Copy)]
pub struct WarmStart<'a, V> {
    /// The start `X₀`.
    pub x: &'a V,
    /// `M(X₀)` under the operator of this solve (for example the previous solve's
    /// [`CgOutcome::product`] while the operator has not changed); `None` computes it.
    pub product: Option<&'a V>,
}

/// Solves `M(X) = b` from `x0` (warm start) or 0, MATH §5 exactly:
/// `r = b − M(X); p = r; ρ = ρ₀ = ⟨r,r⟩`; each iteration `u = M(p); α = ρ/⟨p,u⟩; X += αp;
/// r −= αu; ρ' = ⟨r,r⟩`; stop when `ρ'/ρ₀ < tol`; else `p = r + (ρ'/ρ)p`.
/// Generic over [`CgVector`]: the same iteration on tensors and on host buffers.
pub fn conjugate_gradient<V: CgVector>(
    op: impl Fn(&V) -> Result<V>,
    b: &V,
    x0: Option<&V>,
    settings: CgSettings,
) -> Result<CgOutcome<V>> {
    let start = x0.map(|x| WarmStart { x, product: None });
    conjugate_gradient_from(op, b, start, settings)
}

/// [`conjugate_gradient`] from a [`WarmStart`] whose product `M(X₀)` may already be known: then
/// `r = b − M(X₀)` costs no operator application. In CG-FAC the operator changes only when the
/// factors or the damping do, so between refreshes each step's warm start (the last solution) comes
/// with its product (the last solve's [`CgOutcome::product`]), and a step's solve needs one
/// operator application fewer. The iteration is otherwise MATH §5's, unchanged.
pub fn conjugate_gradient_from<V: CgVector>(
    op: impl Fn(&V) -> Result<V>,
    b: &V,
    start: Option<WarmStart<'_, V>>,
    settings: CgSettings,
) -> Result<CgOutcome<V>> {
    let (mut x, mut r) = match start {
        Some(WarmStart {
            x,
            product: Some(mx),
        }) => (x.clone(), b.minus(mx)?),
        Some(WarmStart { x, product: None }) => (x.clone(), b.minus(&op(x)?)?),
        None => (b.zeros_like()?, b.clone()),
    };
    let rho0 = r.dot(&r)?;
    let broke = |iterations, rel| CgOutcome {
        solution: None,
        iterations,
        relative_residual: rel,
        breakdown: true,
        product: None,
    };
    if !rho0.is_finite() {
        return Ok(broke(0, f64::NAN));
    }
    if rho0 == 0.0 {
        return Ok(CgOutcome {
            solution: Some(x),
            iterations: 0,
            relative_residual: 0.0,
            breakdown: false,
            product: Some(b.clone()),
        });
    }
    let mut p = r.clone();
    let mut rho = rho0;
    let mut iterations = 0;
    while iterations < settings.max_iters {
        let u = op(&p)?;
        let pu = p.dot(&u)?;
        iterations += 1;
        if pu.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) || !pu.is_finite() {
            return Ok(broke(iterations, rho / rho0));
        }
        let alpha = rho / pu;
        x.add_scaled(alpha, &p)?;
        let rho_new = r.add_scaled_square_norm(-alpha, &u)?;
        if !rho_new.is_finite() {
            return Ok(broke(iterations, f64::NAN));
        }
        if rho_new / rho0 < settings.tol {
            rho = rho_new;
            break;
        }
        p.scale_add(rho_new / rho, &r)?;
        rho = rho_new;
    }
    if rho > rho0 {
        return Ok(broke(iterations, rho / rho0));
    }
    Ok(CgOutcome {
        product: Some(b.minus(&r)?),
        solution: Some(x),
        iterations,
        relative_residual: rho / rho0,
        breakdown: false,
    })
}
