//! The second-order (Itô) term of MATH §3: a tangent step renormalised onto the sphere moves the
//! point inward on average, by an amount that grows with the dimension.
//!
//! Normalisation for radius r. A point `x` with `‖x‖ = r` takes the step `y = x + σ P_x z`,
//! `z ~ N(0, I_n)`, σ in the length units of x; then `y ← r y/‖y‖`. We report the radial component
//! of the displacement **in units of r**, i.e. on the unit vectors: `(ŷ − x̂)·x̂ = x̂·ŷ − 1`. Since
//! `‖x + σP_x z‖² = r² + σ²‖P_x z‖²`, it equals `(1 + s²χ²_(n−1))^(−1/2) − 1` with `s = σ/r`, whose
//! mean is `−s²(n−1)/2 + O(s⁴n²)`: MATH's `−σ²(n−1)/2` with σ measured in units of r. (In the
//! length units of x the radial displacement is r times this, `−σ²(n−1)/(2r)`.)

use crate::error::{check_param, BrownianError, Result};
use crate::simulate::normal;
use crate::trajectory::norm;
use rand::Rng;

/// Measured against predicted Itô drift of renormalised tangent steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ItoDrift {
    /// Mean of `x̂·ŷ − 1` over all steps taken (radial displacement in units of r).
    pub measured: f64,
    /// Standard error of `measured` (sample sd / √samples).
    pub std_error: f64,
    /// Second-order prediction `−(σ/r)²(n−1)/2`.
    pub predicted: f64,
    /// Number of steps averaged.
    pub samples: usize,
}

/// Takes `draws` renormalised tangent steps of size σ from each of the points (rows of `points`,
/// `points.len() / dim` of them, each of norm `radius` to [`crate::trajectory::SPHERE_RTOL`]) and
/// measures the mean radial displacement (module docs give the exact normalisation).
///
/// Errors: a buffer that is not a whole number of rows, `dim < 2`, no points, `draws = 0`,
/// `σ < 0`, `radius ≤ 0`, or a point off the sphere.
pub fn ito_drift(
    points: &[f64],
    dim: usize,
    radius: f64,
    sigma: f64,
    draws: usize,
    rng: &mut impl Rng,
) -> Result<ItoDrift> {
    check_param("radius", radius, radius > 0.0, "a radius > 0")?;
    check_param("sigma", sigma, sigma >= 0.0, "σ ≥ 0")?;
    if dim < 2 {
        return Err(BrownianError::TooShort {
            what: "a sphere, in ambient dimensions,",
            needed: 2,
            got: dim,
        });
    }
    let count = points.len() / dim;
    if count == 0 || points.len() % dim != 0 {
        return Err(BrownianError::ShapeMismatch {
            members: 1,
            steps: count.max(1),
            dim,
            expected: count.max(1) * dim,
            got: points.len(),
        });
    }
    if draws == 0 {
        return Err(BrownianError::Empty { what: "member" });
    }
    // Validates and renormalises exactly, like any sphere trajectory.
    let pts = crate::trajectory::Trajectories::from_slice(
        points,
        1,
        count,
        dim,
        crate::trajectory::Geometry::Sphere { radius },
    )?;
    let (mut sum, mut sum_sq) = (0.0, 0.0);
    for p in 0..count {
        let x = pts.point(0, p);
        for _ in 0..draws {
            let z: Vec<f64> = (0..dim).map(|_| sigma * normal(rng)).collect();
            let v = bmt_sphere::reference::tangent_project(x, &z, radius)?;
            let y: Vec<f64> = x.iter().zip(&v).map(|(a, b)| a + b).collect();
            // Renormalise onto the sphere, then take the radial component (y' − x)·x̂ / r.
            let ny = norm(&y);
            let radial = x
                .iter()
                .zip(&y)
                .map(|(a, b)| (radius * b / ny - a) * a)
                .sum::<f64>()
                / (radius * radius);
            sum += radial;
            sum_sq += radial * radial;
        }
    }
    let nn = (count * draws) as f64;
    let mean = sum / nn;
    let var = if nn > 1.0 {
        ((sum_sq - nn * mean * mean) / (nn - 1.0)).max(0.0)
    } else {
        0.0
    };
    let s = sigma / radius;
    Ok(ItoDrift {
        measured: mean,
        std_error: (var / nn).sqrt(),
        predicted: -s * s * (dim as f64 - 1.0) / 2.0,
        samples: count * draws,
    })
}
