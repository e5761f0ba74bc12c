//! Ensembles of trajectories: `members × time × dim` f64 values stored contiguously.

use crate::error::{BrownianError, Result};
use candle_core::{DType, Tensor};

/// Relative tolerance on `‖x‖ / r − 1` accepted for points declared to lie on a sphere.
///
/// Loose enough for f32 tokens and for LayerNorm's ε (which shrinks the norm by a factor
/// `(1 + ε/σ²)^(−1/2)`), tight enough to catch data that was never normalised (or the affine part
/// `γ ⊙ y + β`, which maps the sphere onto an ellipsoid). Points that pass are renormalised exactly.
pub const SPHERE_RTOL: f64 = 1e-3;

/// The space the trajectories live in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Geometry {
    /// Flat space Rⁿ.
    Euclidean,
    /// The sphere S^(n−1)(r) = {x ∈ Rⁿ : ‖x‖ = r}.
    Sphere {
        /// Radius `r > 0` (√n for RMSNorm outputs).
        radius: f64,
    },
}

/// An ensemble of `members` trajectories of `steps` time points in `dim` dimensions.
///
/// Storage is one contiguous `Vec<f64>` laid out member-major, then time, then coordinate: the point
/// of member `m` at time `t` is `data[(m·steps + t)·dim ..][..dim]`. Sphere trajectories are stored
/// exactly on the sphere (see [`SPHERE_RTOL`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Trajectories {
    data: Vec<f64>,
    members: usize,
    steps: usize,
    dim: usize,
    geometry: Geometry,
}

impl Trajectories {
    /// Builds trajectories from a flat buffer of `members × steps × dim` values.
    ///
    /// Errors: wrong buffer length, a zero extent, non-finite values, a non-positive radius, or (on a
    /// sphere) a point whose norm differs from the radius by more than [`SPHERE_RTOL`] relatively.
    pub fn new(
        data: Vec<f64>,
        members: usize,
        steps: usize,
        dim: usize,
        geometry: Geometry,
    ) -> Result<Self> {
        for (what, v) in [
            ("member", members),
            ("time step", steps),
            ("dimension", dim),
        ] {
            if v == 0 {
                return Err(BrownianError::Empty { what });
            }
        }
        let expected = members * steps * dim;
        if data.len() != expected {
            return Err(BrownianError::ShapeMismatch {
                members,
                steps,
                dim,
                expected,
                got: data.len(),
            });
        }
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            let p = i / dim;
            return Err(BrownianError::NonFinite {
                member: p / steps,
                step: p % steps,
            });
        }
        let mut traj = Self {
            data,
            members,
            steps,
            dim,
            geometry,
        };
        if let Geometry::Sphere { radius } = geometry {
            crate::error::check_param("radius", radius, radius > 0.0, "a finite radius > 0")?;
            for p in 0..members * steps {
                let x = &mut traj.data[p * dim..(p + 1) * dim];
                let norm = norm(x);
                if (norm / radius - 1.0).abs() > SPHERE_RTOL {
                    return Err(BrownianError::OffSphere {
                        member: p / steps,
                        step: p % steps,
                        norm,
                        radius,
                        rtol: SPHERE_RTOL,
                    });
                }
                x.iter_mut().for_each(|v| *v *= radius / norm);
            }
        }
        Ok(traj)
    }

    /// Builds trajectories from a slice of `members × steps × dim` values (copied).
    pub fn from_slice(
        data: &[f64],
        members: usize,
        steps: usize,
        dim: usize,
        geometry: Geometry,
    ) -> Result<Self> {
        Self::new(data.to_vec(), members, steps, dim, geometry)
    }

    /// Builds trajectories from a rank-3 Candle tensor of shape `(members, time, dim)`, any float
    /// dtype, any device (copied to the host as f64).
    pub fn from_tensor(tensor: &Tensor, geometry: Geometry) -> Result<Self> {
        let (m, t, n) = match tensor.dims() {
            &[m, t, n] => (m, t, n),
            other => {
                return Err(BrownianError::BadRank {
                    shape: other.to_vec(),
                })
            }
        };
        let data = tensor
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        Self::new(data, m, t, n, geometry)
    }

    /// Copies the ensemble into a Candle tensor of shape `(members, time, dim)`, dtype f64.
    pub fn to_tensor(&self, device: &candle_core::Device) -> Result<Tensor> {
        Ok(Tensor::from_slice(
            &self.data,
            (self.members, self.steps, self.dim),
            device,
        )?)
    }

    /// Projects every point radially onto the sphere of radius `radius`: `x ↦ r x/‖x‖`.
    ///
    /// Use this for LayerNorm/RMSNorm outputs with a large ε, or to study directions only.
    /// Errors on a zero point or a non-positive radius.
    pub fn projected_to_sphere(&self, radius: f64) -> Result<Self> {
        crate::error::check_param("radius", radius, radius > 0.0, "a finite radius > 0")?;
        let mut data = self.data.clone();
        for (p, x) in data.chunks_exact_mut(self.dim).enumerate() {
            let nrm = norm(x);
            if nrm == 0.0 {
                return Err(BrownianError::ZeroPoint {
                    member: p / self.steps,
                    step: p % self.steps,
                });
            }
            x.iter_mut().for_each(|v| *v *= radius / nrm);
        }
        Self::new(
            data,
            self.members,
            self.steps,
            self.dim,
            Geometry::Sphere { radius },
        )
    }

    /// Number of ensemble members `M`.
    pub fn members(&self) -> usize {
        self.members
    }

    /// Number of time points `T` per trajectory (so `T − 1` increments).
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// Ambient dimension `n`.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The geometry declared at construction.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// The whole buffer, member-major, then time, then coordinate.
    pub fn as_slice(&self) -> &[f64] {
        &self.data
    }

    /// The trajectory of member `m` as a `steps × dim` row-major slice. Panics if `m ≥ members`.
    pub fn member(&self, m: usize) -> &[f64] {
        let len = self.steps * self.dim;
        &self.data[m * len..(m + 1) * len]
    }

    /// The point of member `m` at time `t`. Panics if out of range.
    pub fn point(&self, m: usize, t: usize) -> &[f64] {
        let start = (m * self.steps + t) * self.dim;
        &self.data[start..start + self.dim]
    }
}

/// Euclidean norm.
pub(crate) fn norm(x: &[f64]) -> f64 {
    x.iter().map(|v| v * v).sum::<f64>().sqrt()
}

/// Dot product.
pub(crate) fn dot(x: &[f64], y: &[f64]) -> f64 {
    x.iter().zip(y).map(|(a, b)| a * b).sum()
}

/// Squared Euclidean distance.
pub(crate) fn dist_sq(x: &[f64], y: &[f64]) -> f64 {
    x.iter().zip(y).map(|(a, b)| (a - b) * (a - b)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn shape_errors_are_typed() {
        let e = Trajectories::new(vec![0.0; 5], 1, 2, 3, Geometry::Euclidean).unwrap_err();
        assert!(matches!(
            e,
            BrownianError::ShapeMismatch {
                expected: 6,
                got: 5,
                ..
            }
        ));
        let e = Trajectories::new(vec![], 0, 2, 3, Geometry::Euclidean).unwrap_err();
        assert!(matches!(e, BrownianError::Empty { what: "member" }));
        let mut d = vec![0.0; 6];
        d[4] = f64::NAN;
        let e = Trajectories::new(d, 1, 2, 3, Geometry::Euclidean).unwrap_err();
        assert!(matches!(e, BrownianError::NonFinite { member: 0, step: 1 }));
        let t = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        assert!(matches!(
            Trajectories::from_tensor(&t, Geometry::Euclidean),
            Err(BrownianError::BadRank { .. })
        ));
    }

    #[test]
    fn sphere_points_are_checked_and_renormalised() {
        let r = 2.0;
        let ok = vec![2.0005, 0.0, 0.0, 0.0, 2.0, 0.0];
        let t = Trajectories::new(ok, 1, 2, 3, Geometry::Sphere { radius: r }).unwrap();
        assert_eq!(t.point(0, 0), &[2.0, 0.0, 0.0]);
        let bad = vec![2.01, 0.0, 0.0, 0.0, 2.0, 0.0];
        let e = Trajectories::new(bad, 1, 2, 3, Geometry::Sphere { radius: r }).unwrap_err();
        assert!(matches!(e, BrownianError::OffSphere { step: 0, .. }));
        let e = Trajectories::new(vec![1.0; 3], 1, 1, 3, Geometry::Sphere { radius: -1.0 });
        assert!(matches!(e, Err(BrownianError::InvalidParameter { .. })));
    }

    #[test]
    fn tensor_round_trip_keeps_layout() {
        let data: Vec<f32> = (0..24).map(|v| v as f32).collect();
        let t = Tensor::from_slice(&data, (2, 3, 4), &Device::Cpu).unwrap();
        let traj = Trajectories::from_tensor(&t, Geometry::Euclidean).unwrap();
        assert_eq!((traj.members(), traj.steps(), traj.dim()), (2, 3, 4));
        assert_eq!(traj.point(1, 2), &[20.0, 21.0, 22.0, 23.0]);
        let back = traj.to_tensor(&Device::Cpu).unwrap();
        assert_eq!(back.dims(), &[2, 3, 4]);
        let proj = traj.projected_to_sphere(1.0).unwrap();
        assert!((norm(proj.point(1, 1)) - 1.0).abs() < 1e-15);
        let zero = Trajectories::new(vec![0.0; 3], 1, 1, 3, Geometry::Euclidean).unwrap();
        assert!(matches!(
            zero.projected_to_sphere(1.0),
            Err(BrownianError::ZeroPoint { .. })
        ));
    }
}
