//! The crate's error type.

/// Everything that can go wrong in `bmt-brownian`. Each message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum BrownianError {
    /// A flat buffer does not hold `members × steps × dim` values.
    #[error("trajectory buffer has {got} values but members × steps × dim = {members} × {steps} × {dim} = {expected}; pass a buffer laid out member-major, then time, then coordinate")]
    ShapeMismatch {
        /// Number of ensemble members requested.
        members: usize,
        /// Number of time points requested.
        steps: usize,
        /// Dimension requested.
        dim: usize,
        /// `members * steps * dim`.
        expected: usize,
        /// Length of the buffer given.
        got: usize,
    },
    /// One of the three extents is zero.
    #[error("trajectories need at least one {what}; got zero")]
    Empty {
        /// Which extent was zero ("member", "time step" or "dimension").
        what: &'static str,
    },
    /// A tensor did not have rank 3.
    #[error("expected a rank-3 tensor (members, time, dim), got shape {shape:?}; use `unsqueeze(0)` for a single trajectory")]
    BadRank {
        /// The shape that was given.
        shape: Vec<usize>,
    },
    /// A value is NaN or infinite.
    #[error(
        "non-finite value at member {member}, step {step}; remove diverged runs before analysing"
    )]
    NonFinite {
        /// Ensemble member.
        member: usize,
        /// Time index.
        step: usize,
    },
    /// A point declared to lie on a sphere is too far from it.
    #[error("point at member {member}, step {step} has norm {norm} but the sphere radius is {radius} (relative tolerance {rtol}); renormalise with `Trajectories::projected_to_sphere` or declare the geometry Euclidean")]
    OffSphere {
        /// Ensemble member.
        member: usize,
        /// Time index.
        step: usize,
        /// Measured Euclidean norm.
        norm: f64,
        /// Declared radius.
        radius: f64,
        /// Relative tolerance applied.
        rtol: f64,
    },
    /// A point is the zero vector and cannot be projected onto a sphere.
    #[error("point at member {member}, step {step} is the zero vector and has no direction to project onto the sphere")]
    ZeroPoint {
        /// Ensemble member.
        member: usize,
        /// Time index.
        step: usize,
    },
    /// The trajectories are too short (or the ensemble too small) for an estimator.
    #[error(
        "{what} needs at least {needed} but got {got}; record longer trajectories or more members"
    )]
    TooShort {
        /// What is being counted and for which estimator.
        what: &'static str,
        /// Minimum required.
        needed: usize,
        /// What was supplied.
        got: usize,
    },
    /// A lag window is empty or outside the trajectory.
    #[error("lag window [{min}, {max}] is invalid for trajectories of {steps} time points; need 1 ≤ min < max ≤ steps − 1")]
    BadLagWindow {
        /// Smallest lag requested.
        min: usize,
        /// Largest lag requested.
        max: usize,
        /// Time points per trajectory.
        steps: usize,
    },
    /// A mean squared displacement or fluctuation is zero, so its logarithm is undefined.
    #[error("{what} is zero at scale {scale}: the series does not move; a power-law fit needs motion at every lag")]
    NoMotion {
        /// Which quantity vanished.
        what: &'static str,
        /// Lag or scale where it vanished.
        scale: usize,
    },
    /// An estimator needs a geometry the trajectories do not have.
    #[error("{what} needs trajectories on a sphere; these are Euclidean (use MsdKind::Euclidean, or build them with Geometry::Sphere)")]
    NeedsSphere {
        /// The estimator that was asked for.
        what: &'static str,
    },
    /// The mean cosine at a lag is not positive, so `−ln(mean cos θ)` is undefined.
    #[error("mean cos θ at lag {lag} is {mean_cos} ≤ 0: the walk has mixed over the sphere; use a shorter diffusion lag")]
    Mixed {
        /// Lag used.
        lag: usize,
        /// Mean cosine measured.
        mean_cos: f64,
    },
    /// All increments are identical, so their shape statistics are undefined.
    #[error(
        "increments have zero variance (a pure drift or a constant series): {what} is undefined"
    )]
    DegenerateIncrements {
        /// Statistic that cannot be computed.
        what: &'static str,
    },
    /// A scalar parameter is out of range.
    #[error("parameter `{name}` = {value} is out of range: expected {expected}")]
    InvalidParameter {
        /// Parameter name.
        name: &'static str,
        /// Value given.
        value: f64,
        /// The valid range, in words.
        expected: &'static str,
    },
    /// The ₁F₁ series would lose too many digits to cancellation.
    #[error("₁F₁({a}; {b}; {z}) by its power series loses too many digits to cancellation (largest term > 10⁶·max(|result|, 1)); use a smaller |z| (a smaller step D·Δt/r²)")]
    HypergeometricPrecision {
        /// Upper parameter.
        a: f64,
        /// Lower parameter.
        b: f64,
        /// Argument.
        z: f64,
    },
    /// The circulant embedding of the fractional Gaussian noise covariance has a negative eigenvalue.
    #[error("Davies–Harte embedding has a negative eigenvalue {value} for H = {hurst}; this should not happen for 0 < H < 1, please report it")]
    EmbeddingNotPsd {
        /// Hurst exponent.
        hurst: f64,
        /// Most negative eigenvalue found.
        value: f64,
    },
    /// An error from the sphere geometry (`bmt-sphere`).
    #[error(transparent)]
    Sphere(#[from] bmt_sphere::SphereError),
    /// An error from Candle while reading a tensor.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// `Result` with [`BrownianError`].
pub type Result<T> = std::result::Result<T, BrownianError>;

/// Checks `value` against a predicate, returning [`BrownianError::InvalidParameter`] otherwise.
pub(crate) fn check_param(
    name: &'static str,
    value: f64,
    ok: bool,
    expected: &'static str,
) -> Result<()> {
    if ok && value.is_finite() {
        Ok(())
    } else {
        Err(BrownianError::InvalidParameter {
            name,
            value,
            expected,
        })
    }
}
