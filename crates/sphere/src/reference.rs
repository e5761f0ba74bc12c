//! Plain `f64` reference implementations of the sphere geometry of MATH.md §1, on slices.
//!
//! These are the oracles the batched tensor code in [`crate::geometry`] is tested against, and a
//! dependency-free toolkit for anyone holding points as `Vec<f64>`.
//!
//! Conventions (all functions): the sphere is `S^(n−1)(r) = {x ∈ Rⁿ : ‖x‖ = r}` with `r > 0` given
//! explicitly. A point argument is used through its radial projection `x̂ = x/‖x‖` (equal to `x/r` for a
//! point on the sphere), so slightly-off points (e.g. LayerNorm output with ε > 0) are handled
//! consistently; a zero or non-finite point is an error. Tangent vectors are first projected onto the
//! tangent space at the base point (their normal component is discarded). Every function returns a
//! `Result`: dimension mismatches, empty vectors and invalid parameters are [`SphereError`]s, never panics.

use crate::error::{Result, SphereError};
use rand::Rng;
use rand_distr::{Beta, Distribution, StandardNormal};

/// Tolerance on `‖x̂ + ŷ‖` under which [`log_map`] (and everything built on it) reports
/// [`SphereError::Antipodal`]. Near the antipode the error of `exp_x(log_x(y))` stays at the level of
/// `r·1e-16`, so only a pair this close to exactly antipodal is refused.
pub const ANTIPODE_TOL: f64 = 1e-12;

pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub(crate) fn norm(a: &[f64]) -> f64 {
    // Scaled two-pass norm: no overflow/underflow for radii far from 1.
    let m = a.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    if m == 0.0 || !m.is_finite() {
        return m;
    }
    m * a.iter().map(|v| (v / m) * (v / m)).sum::<f64>().sqrt()
}

fn check_pair(op: &'static str, x: &[f64], y: &[f64]) -> Result<()> {
    if x.len() != y.len() {
        return Err(SphereError::DimensionMismatch {
            op,
            left: x.len(),
            right: y.len(),
        });
    }
    if x.is_empty() {
        return Err(SphereError::Empty {
            op,
            what: "vector of length 0",
            need: "one coordinate",
        });
    }
    Ok(())
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

/// `x̂ = x/‖x‖`; errors for a zero or non-finite point (`index` names it in the message).
fn unit(op: &'static str, x: &[f64], index: usize) -> Result<Vec<f64>> {
    let nx = norm(x);
    if !(nx > 0.0 && nx.is_finite()) {
        return Err(SphereError::DegeneratePoint {
            op,
            index,
            norm: nx,
        });
    }
    Ok(x.iter().map(|v| v / nx).collect())
}

/// Half angle `θ/2 = atan2(‖x̂ − ŷ‖, ‖x̂ + ŷ‖)` between unit vectors and `‖x̂ + ŷ‖`.
fn half_angle(xh: &[f64], yh: &[f64]) -> (f64, f64) {
    let diff: Vec<f64> = xh.iter().zip(yh).map(|(a, b)| a - b).collect();
    let sum: Vec<f64> = xh.iter().zip(yh).map(|(a, b)| a + b).collect();
    let (nd, ns) = (norm(&diff), norm(&sum));
    (nd.atan2(ns), ns)
}

/// Geodesic (great-circle) distance `d(x, y) = r θ`, `θ = 2·atan2(‖x̂ − ŷ‖, ‖x̂ + ŷ‖)` (MATH §1).
///
/// Stable near 0 and π, unlike `acos(x̂·ŷ)`. For points off the sphere it is the distance between
/// their radial projections onto the sphere of radius `r`.
pub fn geodesic_distance(x: &[f64], y: &[f64], r: f64) -> Result<f64> {
    const OP: &str = "geodesic_distance";
    check_pair(OP, x, y)?;
    check_radius(OP, r)?;
    let (xh, yh) = (unit(OP, x, 0)?, unit(OP, y, 1)?);
    Ok(2.0 * r * half_angle(&xh, &yh).0)
}

/// Chordal (straight-line, ambient Euclidean) distance `‖x − y‖`; on the sphere `= 2r·sin(θ/2)`.
pub fn chordal_distance(x: &[f64], y: &[f64]) -> Result<f64> {
    check_pair("chordal_distance", x, y)?;
    let d: Vec<f64> = x.iter().zip(y).map(|(a, b)| a - b).collect();
    Ok(norm(&d))
}

/// Tangent projection at `x`: `P_x v = v − (x̂·v) x̂` (MATH §1), the orthogonal projection of `v`
/// onto the tangent space `T_x S = x⊥`.
pub fn tangent_project(x: &[f64], v: &[f64], r: f64) -> Result<Vec<f64>> {
    const OP: &str = "tangent_project";
    check_pair(OP, x, v)?;
    check_radius(OP, r)?;
    let xh = unit(OP, x, 0)?;
    Ok(project_unit(&xh, v))
}

fn project_unit(xh: &[f64], v: &[f64]) -> Vec<f64> {
    let c = dot(xh, v);
    v.iter().zip(xh).map(|(vi, xi)| vi - c * xi).collect()
}

/// Exponential map `exp_x(v) = cos(‖v‖/r)·r x̂ + r·sin(‖v‖/r)·v/‖v‖` (MATH §1; `r x̂` when `v = 0`).
///
/// `v` is first projected onto `T_x` ([`tangent_project`]); the result lies exactly on the sphere of
/// radius `r` (up to rounding).
pub fn exp_map(x: &[f64], v: &[f64], r: f64) -> Result<Vec<f64>> {
    const OP: &str = "exp_map";
    check_pair(OP, x, v)?;
    check_radius(OP, r)?;
    let xh = unit(OP, x, 0)?;
    Ok(exp_unit(&xh, &project_unit(&xh, v), r))
}

/// `exp` at unit base point `xh` of an already-tangent `v`.
fn exp_unit(xh: &[f64], v: &[f64], r: f64) -> Vec<f64> {
    let nv = norm(v);
    if nv == 0.0 {
        return xh.iter().map(|a| r * a).collect();
    }
    let (s, c) = (nv / r).sin_cos();
    xh.iter()
        .zip(v)
        .map(|(a, b)| c * r * a + r * s * b / nv)
        .collect()
}

/// `u = P_x ŷ` computed without cancellation (`P_x(ŷ ∓ x̂)`, sign by the side of `ŷ`), plus `θ` and
/// `‖x̂ + ŷ‖`.
fn log_parts(xh: &[f64], yh: &[f64]) -> (Vec<f64>, f64, f64) {
    let (half, gap) = half_angle(xh, yh);
    let s = if dot(xh, yh) >= 0.0 { 1.0 } else { -1.0 };
    let d: Vec<f64> = yh.iter().zip(xh).map(|(b, a)| b - s * a).collect();
    (project_unit(xh, &d), 2.0 * half, gap)
}

/// Logarithm `log_x(y) = r θ u/‖u‖`, `u = P_x y` (MATH §1): the tangent vector at `x` whose geodesic
/// reaches `y` at time 1, with `‖log_x(y)‖ = d(x, y)`.
///
/// At (or within [`ANTIPODE_TOL`] of) the antipode `y = −x` the geodesic is not unique:
/// [`SphereError::Antipodal`], never a NaN. `log_x(x) = 0`.
pub fn log_map(x: &[f64], y: &[f64], r: f64) -> Result<Vec<f64>> {
    const OP: &str = "log_map";
    check_pair(OP, x, y)?;
    check_radius(OP, r)?;
    let (xh, yh) = (unit(OP, x, 0)?, unit(OP, y, 1)?);
    log_unit(OP, &xh, &yh, r, 0)
}

fn log_unit(op: &'static str, xh: &[f64], yh: &[f64], r: f64, row: usize) -> Result<Vec<f64>> {
    let (u, theta, gap) = log_parts(xh, yh);
    if gap < ANTIPODE_TOL {
        return Err(SphereError::Antipodal {
            op,
            row,
            gap,
            tol: ANTIPODE_TOL,
        });
    }
    let nu = norm(&u);
    if nu == 0.0 {
        return Ok(vec![0.0; xh.len()]);
    }
    Ok(u.iter().map(|ui| r * theta * ui / nu).collect())
}

/// Parallel transport of the tangent vector `v` at `x` along the geodesic from `x` to `y` (MATH §1):
/// `v' = v + (e·v)·((cos θ − 1) e − sin θ x̂)`, `e = log_x(y)/‖log_x(y)‖`, `θ = d(x, y)/r`.
///
/// `v` is first projected onto `T_x`. The result is tangent at `y` and has the same norm as the
/// projected `v`. Antipodal `x, y`: [`SphereError::Antipodal`]. `x = y` returns `v`.
pub fn parallel_transport(x: &[f64], y: &[f64], v: &[f64], r: f64) -> Result<Vec<f64>> {
    const OP: &str = "parallel_transport";
    check_pair(OP, x, y)?;
    check_pair(OP, x, v)?;
    check_radius(OP, r)?;
    let (xh, yh) = (unit(OP, x, 0)?, unit(OP, y, 1)?);
    let v = project_unit(&xh, v);
    let l = log_unit(OP, &xh, &yh, 1.0, 0)?;
    let theta = norm(&l);
    if theta == 0.0 {
        return Ok(v);
    }
    let e: Vec<f64> = l.iter().map(|a| a / theta).collect();
    let ev = dot(&e, &v);
    let (s, c) = theta.sin_cos();
    Ok(v.iter()
        .zip(e.iter().zip(&xh))
        .map(|(vi, (ei, xi))| vi + ev * ((c - 1.0) * ei - s * xi))
        .collect())
}

/// Result of a Karcher (Fréchet) mean iteration.
#[derive(Debug, Clone, PartialEq)]
pub struct KarcherReport {
    /// The mean, on the sphere of radius `r`.
    pub mean: Vec<f64>,
    /// Iterations performed (steps `m ← exp_m(g)` taken).
    pub iterations: usize,
    /// `‖g‖`, `g = mean_i log_m(x_i)`, of the last step (same units as `r`); 0 for identical points.
    pub step_norm: f64,
    /// Whether `step_norm < tol` was reached within `max_iter` iterations.
    pub converged: bool,
}

/// Karcher (Fréchet) mean on the sphere of radius `r` (MATH §1): `m ← exp_m(mean_i log_m(x_i))`
/// until the step norm `‖mean_i log_m(x_i)‖` (absolute, in the units of `r`) is below `tol`, or
/// `max_iter` steps were taken (then `converged = false`).
///
/// Starts from the radial projection of the Euclidean mean (or of the first point if that mean is
/// 0). The mean is unique and the iteration converges when the points lie in an open hemisphere;
/// an iterate antipodal to a point is [`SphereError::Antipodal`] (its `row` is the point's index).
pub fn karcher_mean(
    points: &[Vec<f64>],
    r: f64,
    tol: f64,
    max_iter: usize,
) -> Result<KarcherReport> {
    const OP: &str = "karcher_mean";
    check_radius(OP, r)?;
    if !(tol >= 0.0 && tol.is_finite()) {
        return Err(SphereError::InvalidParameter {
            op: OP,
            name: "tol",
            value: tol,
            hint: "the tolerance must be finite and ≥ 0",
        });
    }
    let first = points.first().ok_or(SphereError::Empty {
        op: OP,
        what: "no points",
        need: "one point",
    })?;
    let n = first.len();
    let mut units = Vec::with_capacity(points.len());
    for (i, p) in points.iter().enumerate() {
        check_pair(OP, first, p)?;
        units.push(unit(OP, p, i)?);
    }
    let mut sum = vec![0.0; n];
    for u in &units {
        for (s, v) in sum.iter_mut().zip(u) {
            *s += v;
        }
    }
    let mut m = if norm(&sum) > 1e-8 * units.len() as f64 {
        unit(OP, &sum, 0)?
    } else {
        units[0].clone()
    };
    let k = units.len() as f64;
    let mut step_norm = f64::INFINITY;
    let mut iterations = 0;
    while iterations < max_iter {
        let mut g = vec![0.0; n];
        for (i, u) in units.iter().enumerate() {
            let l = log_unit(OP, &m, u, 1.0, i)?;
            for (gj, lj) in g.iter_mut().zip(&l) {
                *gj += lj / k;
            }
        }
        step_norm = r * norm(&g);
        iterations += 1;
        m = exp_unit(&m, &g, 1.0);
        // Renormalise to stop rounding drift off the unit sphere over many iterations.
        let nm = norm(&m);
        m.iter_mut().for_each(|v| *v /= nm);
        if step_norm < tol {
            break;
        }
    }
    Ok(KarcherReport {
        mean: m.iter().map(|v| r * v).collect(),
        iterations,
        converged: step_norm < tol,
        step_norm,
    })
}

/// Uniform sample on the sphere `S^(n−1)(r)`: `r z/‖z‖`, `z ~ N(0, I_n)` (MATH §1).
pub fn sample_uniform(n: usize, r: f64, rng: &mut impl Rng) -> Result<Vec<f64>> {
    const OP: &str = "sample_uniform";
    check_radius(OP, r)?;
    if n == 0 {
        return Err(SphereError::Empty {
            op: OP,
            what: "dimension n = 0",
            need: "n ≥ 1",
        });
    }
    Ok(unit_gaussian_direction(n, rng)
        .into_iter()
        .map(|v| r * v)
        .collect())
}

fn unit_gaussian_direction(n: usize, rng: &mut impl Rng) -> Vec<f64> {
    loop {
        let z: Vec<f64> = (0..n).map(|_| rng.sample(StandardNormal)).collect();
        let nz = norm(&z);
        if nz > 0.0 {
            return z.into_iter().map(|v| v / nz).collect();
        }
    }
}

/// Von Mises–Fisher sample on the unit sphere `S^(n−1)`, density `∝ exp(κ μ·x)` (MATH §1).
///
/// Wood (1994), "Simulation of the von Mises Fisher distribution": `w = μ·x` by rejection from a
/// Beta((n−1)/2, (n−1)/2) proposal, then `x = w μ + sqrt(1 − w²) v` with `v` uniform on the unit
/// sphere of `μ⊥`. `mu` must be a unit vector (|‖μ‖ − 1| ≤ 1e-9) of dimension n ≥ 2; `κ ≥ 0`
/// (κ = 0 is the uniform distribution). Multiply by `r` for the sphere of radius `r`.
pub fn sample_von_mises_fisher(mu: &[f64], kappa: f64, rng: &mut impl Rng) -> Result<Vec<f64>> {
    const OP: &str = "sample_von_mises_fisher";
    let n = mu.len();
    if n < 2 {
        return Err(SphereError::Empty {
            op: OP,
            what: "mu of dimension < 2",
            need: "a unit vector of dimension n ≥ 2",
        });
    }
    let nmu = norm(mu);
    if nmu.is_nan() || (nmu - 1.0).abs() > 1e-9 {
        return Err(SphereError::NotUnitVector { op: OP, norm: nmu });
    }
    if !(kappa >= 0.0 && kappa.is_finite()) {
        return Err(SphereError::InvalidParameter {
            op: OP,
            name: "kappa",
            value: kappa,
            hint: "the concentration must be finite and ≥ 0",
        });
    }
    let w = sample_vmf_cosine(n, kappa, rng);
    // v uniform on the unit sphere of μ⊥: project a Gaussian direction (redraw if degenerate).
    let v = loop {
        let z = unit_gaussian_direction(n, rng);
        let t = project_unit(mu, &z);
        let nt = norm(&t);
        if nt > 1e-6 {
            break t.into_iter().map(|a| a / nt).collect::<Vec<f64>>();
        }
    };
    let s = (1.0 - w * w).max(0.0).sqrt();
    Ok(mu.iter().zip(&v).map(|(m, vi)| w * m + s * vi).collect())
}

/// Wood's rejection sampler for `w = μ·x` under vMF(κ) in dimension `n ≥ 2`.
fn sample_vmf_cosine(n: usize, kappa: f64, rng: &mut impl Rng) -> f64 {
    let m1 = (n - 1) as f64;
    // b = (−2κ + sqrt(4κ² + (n−1)²))/(n−1), in the cancellation-free form.
    let b = m1 / (2.0 * kappa + (4.0 * kappa * kappa + m1 * m1).sqrt());
    let x0 = (1.0 - b) / (1.0 + b);
    let c = kappa * x0 + m1 * (1.0 - x0 * x0).ln();
    let beta = Beta::new(m1 / 2.0, m1 / 2.0).expect("shape parameters (n−1)/2 > 0");
    loop {
        let z: f64 = beta.sample(rng);
        let w = (1.0 - (1.0 + b) * z) / (1.0 - (1.0 - b) * z);
        let u: f64 = rng.random();
        if kappa * w + m1 * (1.0 - x0 * w).ln() - c >= u.ln() {
            return w;
        }
    }
}

/// Bessel function ratio `I_ν(κ)/I_(ν−1)(κ)` for `ν > 0`, `κ ≥ 0`, by the continued fraction
/// `I_ν/I_(ν−1) = 1/(2ν/κ + 1/(2(ν+1)/κ + 1/(2(ν+2)/κ + …)))` (Gauss; evaluated with the modified
/// Lentz algorithm to relative accuracy 1e-15). Returns 0 at κ = 0.
pub fn bessel_ratio(nu: f64, kappa: f64) -> Result<f64> {
    const OP: &str = "bessel_ratio";
    if !(nu > 0.0 && nu.is_finite()) {
        return Err(SphereError::InvalidParameter {
            op: OP,
            name: "nu",
            value: nu,
            hint: "the order must be finite and > 0",
        });
    }
    if !(kappa >= 0.0 && kappa.is_finite()) {
        return Err(SphereError::InvalidParameter {
            op: OP,
            name: "kappa",
            value: kappa,
            hint: "the argument must be finite and ≥ 0",
        });
    }
    if kappa == 0.0 {
        return Ok(0.0);
    }
    let b = |k: usize| 2.0 * (nu + k as f64) / kappa;
    // All partial numerators are 1 and all b_k > 0, so Lentz never divides by 0.
    let mut f = b(0);
    let (mut c, mut d) = (f, 0.0f64);
    for k in 1..1_000_000 {
        d = 1.0 / (b(k) + d);
        c = b(k) + 1.0 / c;
        let delta = c * d;
        f *= delta;
        if (delta - 1.0).abs() < 1e-16 {
            break;
        }
    }
    Ok(1.0 / f)
}

/// Mean resultant length of vMF(κ) on `S^(n−1)`: `E[μ·x] = A_n(κ) = I_(n/2)(κ)/I_(n/2−1)(κ)`.
pub fn vmf_mean_resultant_length(n: usize, kappa: f64) -> Result<f64> {
    if n < 2 {
        return Err(SphereError::Empty {
            op: "vmf_mean_resultant_length",
            what: "dimension < 2",
            need: "n ≥ 2",
        });
    }
    bessel_ratio(n as f64 / 2.0, kappa)
}
