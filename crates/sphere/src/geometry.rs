//! Batched sphere geometry on Candle tensors (MATH.md §1).
//!
//! Conventions shared by every function here:
//! - the **last dimension is the feature dimension** `n`; all leading dimensions are a batch and
//!   broadcast between arguments with Candle's (NumPy) rules, e.g. `x: (B, T, n)` against `y: (T, n)`;
//! - the sphere is `S^(n−1)(r)` of any radius `r > 0`; points are used through their radial
//!   projection `x̂ = x/‖x‖` (so LayerNorm output with ε > 0, slightly inside the sphere, is fine), and
//!   a zero or non-finite point is [`SphereError::DegeneratePoint`];
//! - tangent arguments are first projected onto the tangent space at the base point;
//! - dtypes f32 and f64 on any Candle device; the computation stays on the device, only per-row
//!   scalars used for validation (norms, antipode gaps) are copied to the host.
//!
//! Every function matches its `f64` counterpart in [`crate::reference`] (tested to rounding).

use crate::error::{Result, SphereError};
use crate::reference;
use candle_core::{DType, Device, Tensor, D};
use rand::Rng;

/// Antipode tolerance on `‖x̂ + ŷ‖` for f64 tensors (same as [`reference::ANTIPODE_TOL`]).
pub const ANTIPODE_TOL_F64: f64 = reference::ANTIPODE_TOL;
/// Antipode tolerance on `‖x̂ + ŷ‖` for f32 tensors: rounding in `x̂` alone leaves `‖x̂ + ŷ‖` of
/// order `√n·6e-8` (≈ 1.4e-6 at n = 512) for an exactly antipodal pair.
pub const ANTIPODE_TOL_F32: f64 = 1e-5;

pub(crate) fn check_float(op: &'static str, t: &Tensor) -> Result<()> {
    match t.dtype() {
        DType::F32 | DType::F64 => {}
        dtype => return Err(SphereError::UnsupportedDType { op, dtype }),
    }
    match t.dims().last() {
        None => Err(SphereError::Rank {
            op,
            shape: t.dims().to_vec(),
            expected: "rank ≥ 1 with the feature dimension last",
        }),
        Some(0) => Err(SphereError::Empty {
            op,
            what: "feature dimension of size 0",
            need: "one feature",
        }),
        Some(_) => Ok(()),
    }
}

fn check_radius(op: &'static str, r: f64) -> Result<()> {
    if !(r > 0.0 && r.is_finite()) {
        return Err(SphereError::InvalidParameter {
            op,
            name: "radius r",
            value: r,
            hint: "the radius must be finite and > 0",
        });
    }
    Ok(())
}

/// Checks dtypes and feature dimensions, then broadcasts both tensors to their common shape.
fn broadcast_pair(op: &'static str, a: &Tensor, b: &Tensor) -> Result<(Tensor, Tensor)> {
    check_float(op, a)?;
    check_float(op, b)?;
    let (na, nb) = (a.dim(D::Minus1)?, b.dim(D::Minus1)?);
    if na != nb {
        return Err(SphereError::DimensionMismatch {
            op,
            left: na,
            right: nb,
        });
    }
    if a.dtype() != b.dtype() {
        return Err(SphereError::ShapeMismatch {
            op,
            left: a.dims().to_vec(),
            right: b.dims().to_vec(),
            hint: "both tensors must have the same dtype (f32 or f64)",
        });
    }
    let shape = a
        .shape()
        .broadcast_shape_binary_op(b.shape(), op)
        .map_err(|_| SphereError::ShapeMismatch {
            op,
            left: a.dims().to_vec(),
            right: b.dims().to_vec(),
            hint: "the leading (batch) dimensions must broadcast",
        })?;
    Ok((a.broadcast_as(&shape)?, b.broadcast_as(&shape)?))
}

/// Euclidean norm over the last dimension, keeping it: `(…, n) → (…, 1)`.
pub(crate) fn row_norm(x: &Tensor) -> Result<Tensor> {
    Ok(x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)
}

/// Row-wise dot product over the last dimension, keeping it.
fn row_dot(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok((a * b)?.sum_keepdim(D::Minus1)?)
}

/// Copies a small per-row tensor to the host as f64.
pub(crate) fn host_f64(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?)
}

/// `x̂ = x/‖x‖`; a zero or non-finite row is an error naming its (flattened) index.
pub(crate) fn unit(op: &'static str, x: &Tensor) -> Result<Tensor> {
    let nx = row_norm(x)?;
    if let Some((index, &norm)) = host_f64(&nx)?
        .iter()
        .enumerate()
        .find(|(_, v)| !(**v > 0.0 && v.is_finite()))
    {
        return Err(SphereError::DegeneratePoint { op, index, norm });
    }
    Ok(x.broadcast_div(&nx)?)
}

/// `P_x v` for unit `xh`.
fn project_unit(xh: &Tensor, v: &Tensor) -> Result<Tensor> {
    Ok((v - xh.broadcast_mul(&row_dot(xh, v)?)?)?)
}

/// `atan(t)` for `t ∈ [0, 1]` from elementary tensor ops (Candle has no `atan`): three half-angle
/// reductions `t ← t/(1 + sqrt(1 + t²))` bring `t ≤ tan(π/32) < 0.099`, then the Maclaurin series to
/// `t¹⁷/17` (truncation below 1e-19, so accurate to f64 rounding), times 8.
fn atan_unit_interval(t: &Tensor) -> Result<Tensor> {
    let mut t = t.clone();
    for _ in 0..3 {
        let den = t.sqr()?.affine(1.0, 1.0)?.sqrt()?.affine(1.0, 1.0)?;
        t = (t / den)?;
    }
    let s = t.sqr()?;
    let mut p = s.ones_like()?.affine(1.0 / 17.0, 0.0)?;
    for k in (0..8).rev() {
        let c = if k % 2 == 0 { 1.0 } else { -1.0 } / (2 * k + 1) as f64;
        p = (p * &s)?.affine(1.0, c)?;
    }
    // Horner: p = Σ_(k=0..8) (−1)^k t^(2k)/(2k+1).
    Ok((p * t)?.affine(8.0, 0.0)?)
}

/// `atan2(a, b)` for `a, b ≥ 0` (not both 0), elementwise.
fn atan2_nonneg(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let swap = a.gt(b)?;
    let num = swap.where_cond(b, a)?;
    let den = swap.where_cond(a, b)?;
    let phi = atan_unit_interval(&(num / den)?)?;
    let comp = phi.affine(-1.0, std::f64::consts::FRAC_PI_2)?;
    Ok(swap.where_cond(&comp, &phi)?)
}

/// `(θ, ‖x̂ + ŷ‖)` for unit rows, both `(…, 1)`: `θ = 2·atan2(‖x̂ − ŷ‖, ‖x̂ + ŷ‖)`.
fn angle_unit(xh: &Tensor, yh: &Tensor) -> Result<(Tensor, Tensor)> {
    let a = row_norm(&(xh - yh)?)?;
    let b = row_norm(&(xh + yh)?)?;
    Ok((atan2_nonneg(&a, &b)?.affine(2.0, 0.0)?, b))
}

/// Geodesic distance `d(x, y) = r θ`, `θ = 2·atan2(‖x̂ − ŷ‖, ‖x̂ + ŷ‖)` (MATH §1), row-wise.
///
/// `x: (…, n)`, `y: (…, n)` broadcast; returns the broadcast batch shape `(…)`.
pub fn geodesic_distance(x: &Tensor, y: &Tensor, r: f64) -> Result<Tensor> {
    const OP: &str = "geodesic_distance";
    check_radius(OP, r)?;
    let (x, y) = broadcast_pair(OP, x, y)?;
    let (theta, _) = angle_unit(&unit(OP, &x)?, &unit(OP, &y)?)?;
    Ok(theta.affine(r, 0.0)?.squeeze(D::Minus1)?)
}

/// Chordal distance `‖x − y‖` row-wise (`= 2r·sin(θ/2)` on the sphere); shape `(…)`.
pub fn chordal_distance(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let (x, y) = broadcast_pair("chordal_distance", x, y)?;
    Ok(row_norm(&(x - y)?)?.squeeze(D::Minus1)?)
}

/// Tangent projection `P_x v = v − (x̂·v) x̂` (MATH §1), row-wise; shape of the broadcast.
pub fn tangent_project(x: &Tensor, v: &Tensor, r: f64) -> Result<Tensor> {
    const OP: &str = "tangent_project";
    check_radius(OP, r)?;
    let (x, v) = broadcast_pair(OP, x, v)?;
    project_unit(&unit(OP, &x)?, &v)
}

/// `exp` at unit `xh` of tangent `v`: `cos(‖v‖/r)·r x̂ + r sin(‖v‖/r)·v/‖v‖`.
fn exp_unit(xh: &Tensor, v: &Tensor, r: f64) -> Result<Tensor> {
    let nv = row_norm(v)?;
    let ang = nv.affine(1.0 / r, 0.0)?;
    // r sin(‖v‖/r)/‖v‖ → 1 as ‖v‖ → 0; clamping ‖v‖ keeps it finite and v itself is then ~0.
    let coef = (ang.sin()?.affine(r, 0.0)? / nv.clamp(1e-30, f64::INFINITY)?)?;
    let radial = xh.broadcast_mul(&ang.cos()?.affine(r, 0.0)?)?;
    Ok((radial + v.broadcast_mul(&coef)?)?)
}

/// Exponential map `exp_x(v) = cos(‖v‖/r)·r x̂ + r·sin(‖v‖/r)·v/‖v‖` (MATH §1), row-wise.
///
/// `v` is projected onto `T_x` first; rows with `v = 0` return `r x̂`. The output lies on the sphere
/// of radius `r`; shape of the broadcast of `x` and `v`.
pub fn exp_map(x: &Tensor, v: &Tensor, r: f64) -> Result<Tensor> {
    const OP: &str = "exp_map";
    check_radius(OP, r)?;
    let (x, v) = broadcast_pair(OP, x, v)?;
    let xh = unit(OP, &x)?;
    exp_unit(&xh, &project_unit(&xh, &v)?, r)
}

fn antipode_tol(dtype: DType) -> f64 {
    if dtype == DType::F64 {
        ANTIPODE_TOL_F64
    } else {
        ANTIPODE_TOL_F32
    }
}

/// Unit-sphere logarithm pieces for unit rows: `(u/‖u‖ (0 where u = 0), θ)`, after checking the
/// antipode gap (error naming the first offending flattened row).
fn log_dir_unit(op: &'static str, xh: &Tensor, yh: &Tensor) -> Result<(Tensor, Tensor)> {
    let (theta, gap) = angle_unit(xh, yh)?;
    let tol = antipode_tol(xh.dtype());
    if let Some((row, &g)) = host_f64(&gap)?
        .iter()
        .enumerate()
        .find(|(_, g)| g.is_nan() || **g < tol)
    {
        return Err(SphereError::Antipodal {
            op,
            row,
            gap: g,
            tol,
        });
    }
    // u = P_x(ŷ ∓ x̂): the sign follows the side of ŷ, which avoids cancellation near 0 and π.
    let dot = row_dot(xh, yh)?;
    let sign = dot
        .ge(0.0)?
        .where_cond(&dot.ones_like()?, &dot.ones_like()?.neg()?)?;
    let d = (yh - xh.broadcast_mul(&sign)?)?;
    let u = project_unit(xh, &d)?;
    let nu = row_norm(&u)?;
    Ok((u.broadcast_div(&nu.clamp(1e-30, f64::INFINITY)?)?, theta))
}

/// Logarithm `log_x(y) = r θ u/‖u‖`, `u = P_x y` (MATH §1), row-wise; `log_x(x) = 0`.
///
/// A row with `‖x̂ + ŷ‖` below [`ANTIPODE_TOL_F64`] (f64) or [`ANTIPODE_TOL_F32`] (f32) is antipodal:
/// [`SphereError::Antipodal`] naming the first such row (flattened over the broadcast batch
/// dimensions), never a NaN.
pub fn log_map(x: &Tensor, y: &Tensor, r: f64) -> Result<Tensor> {
    const OP: &str = "log_map";
    check_radius(OP, r)?;
    let (x, y) = broadcast_pair(OP, x, y)?;
    let (e, theta) = log_dir_unit(OP, &unit(OP, &x)?, &unit(OP, &y)?)?;
    Ok(e.broadcast_mul(&theta.affine(r, 0.0)?)?)
}

/// Parallel transport of tangent `v` at `x` along the geodesic to `y` (MATH §1), row-wise:
/// `v' = v + (e·v)·((cos θ − 1) e − sin θ x̂)`, `e = log_x(y)/‖log_x(y)‖`.
///
/// `v` is projected onto `T_x` first; the result is tangent at `y` with the same norm. Antipodal
/// rows: [`SphereError::Antipodal`]. `x`, `y`, `v` broadcast together.
pub fn parallel_transport(x: &Tensor, y: &Tensor, v: &Tensor, r: f64) -> Result<Tensor> {
    const OP: &str = "parallel_transport";
    check_radius(OP, r)?;
    let (x, y) = broadcast_pair(OP, x, y)?;
    let (x, v) = broadcast_pair(OP, &x, v)?;
    let y = y.broadcast_as(x.shape())?;
    let xh = unit(OP, &x)?;
    let (e, theta) = log_dir_unit(OP, &xh, &unit(OP, &y)?)?;
    let v = project_unit(&xh, &v)?;
    let ev = row_dot(&e, &v)?;
    let dir =
        (e.broadcast_mul(&theta.cos()?.affine(1.0, -1.0)?)? - xh.broadcast_mul(&theta.sin()?)?)?;
    Ok((v + dir.broadcast_mul(&ev)?)?)
}

/// Karcher means of a batch of point sets, with a convergence report.
#[derive(Debug, Clone)]
pub struct KarcherMean {
    /// The means, shape `(…, n)`, on the sphere of radius `r`.
    pub mean: Tensor,
    /// Iterations performed (shared by all sets in the batch).
    pub iterations: usize,
    /// Largest step norm `‖mean_i log_m(x_i)‖` over the sets at the last iteration (units of `r`).
    pub step_norm: f64,
    /// Whether `step_norm < tol` was reached within `max_iter` iterations.
    pub converged: bool,
}

/// Karcher (Fréchet) mean of each set of points, MATH §1: `m ← exp_m(mean_i log_m(x_i))`.
///
/// `points: (…, m, n)`: every leading index is an independent set of `m` points. Starts from the
/// radially projected Euclidean mean (the first point of a set whose Euclidean mean vanishes) and
/// stops when the largest step norm over the sets (absolute, units of `r`) is below `tol`, or after
/// `max_iter` iterations (`converged = false`). An iterate antipodal to a point is
/// [`SphereError::Antipodal`] (row flattened over `(…, m)`).
pub fn karcher_mean(points: &Tensor, r: f64, tol: f64, max_iter: usize) -> Result<KarcherMean> {
    const OP: &str = "karcher_mean";
    check_radius(OP, r)?;
    check_float(OP, points)?;
    if !(tol >= 0.0 && tol.is_finite()) {
        return Err(SphereError::InvalidParameter {
            op: OP,
            name: "tol",
            value: tol,
            hint: "the tolerance must be finite and ≥ 0",
        });
    }
    if points.rank() < 2 {
        return Err(SphereError::Rank {
            op: OP,
            shape: points.dims().to_vec(),
            expected: "rank ≥ 2: (…, m points, n features)",
        });
    }
    let m = points.dim(D::Minus2)?;
    if m == 0 {
        return Err(SphereError::Empty {
            op: OP,
            what: "a set with 0 points",
            need: "one point per set",
        });
    }
    let xh = unit(OP, points)?;
    // Initial guess: normalised Euclidean mean, or the first point where that mean (almost) vanishes.
    let s = xh.mean_keepdim(D::Minus2)?;
    let ns = row_norm(&s)?;
    let first = xh.narrow(D::Minus2, 0, 1)?;
    let ok = ns.ge(1e-6)?;
    let s_safe = s.broadcast_div(&ns.clamp(1e-30, f64::INFINITY)?)?;
    let mut mean = ok.broadcast_as(s.shape())?.where_cond(&s_safe, &first)?;
    let mut step_norm = f64::INFINITY;
    let mut iterations = 0;
    while iterations < max_iter {
        let (e, theta) = log_dir_unit(OP, &mean.broadcast_as(xh.shape())?, &xh)?;
        let g = e.broadcast_mul(&theta)?.mean_keepdim(D::Minus2)?;
        step_norm = r * host_f64(&row_norm(&g)?)?.into_iter().fold(0.0f64, f64::max);
        iterations += 1;
        let next = exp_unit(&mean, &g, 1.0)?;
        mean = next.broadcast_div(&row_norm(&next)?)?;
        if step_norm < tol {
            break;
        }
    }
    Ok(KarcherMean {
        mean: mean.squeeze(D::Minus2)?.affine(r, 0.0)?,
        iterations,
        converged: step_norm < tol,
        step_norm,
    })
}

fn check_sample_dtype(op: &'static str, dtype: DType) -> Result<()> {
    match dtype {
        DType::F32 | DType::F64 => Ok(()),
        dtype => Err(SphereError::UnsupportedDType { op, dtype }),
    }
}

/// `count` uniform samples on `S^(n−1)(r)` (`r z/‖z‖`, `z ~ N(0, I)`), drawn in f64 from `rng` with
/// [`reference::sample_uniform`] and returned as a `(count, n)` tensor of `dtype` on `device`.
pub fn sample_uniform(
    count: usize,
    n: usize,
    r: f64,
    dtype: DType,
    device: &Device,
    rng: &mut impl Rng,
) -> Result<Tensor> {
    check_sample_dtype("sample_uniform", dtype)?;
    let mut data = Vec::with_capacity(count * n);
    for _ in 0..count {
        data.extend(reference::sample_uniform(n, r, rng)?);
    }
    Ok(Tensor::from_vec(data, (count, n), &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(device)?)
}

/// `count` von Mises–Fisher(μ, κ) samples on the unit sphere (Wood 1994, via
/// [`reference::sample_von_mises_fisher`]), as a `(count, n)` tensor of `dtype` on `device`.
/// `mu` must be a unit vector; multiply the result by `r` for radius `r`.
pub fn sample_von_mises_fisher(
    mu: &[f64],
    kappa: f64,
    count: usize,
    dtype: DType,
    device: &Device,
    rng: &mut impl Rng,
) -> Result<Tensor> {
    check_sample_dtype("sample_von_mises_fisher", dtype)?;
    let n = mu.len();
    let mut data = Vec::with_capacity(count * n);
    for _ in 0..count {
        data.extend(reference::sample_von_mises_fisher(mu, kappa, rng)?);
    }
    Ok(Tensor::from_vec(data, (count, n), &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(device)?)
}
