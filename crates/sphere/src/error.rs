//! The crate's error type.

/// Everything that can go wrong in `bmt-sphere`. Each message says what to change in the call.
#[derive(Debug, thiserror::Error)]
pub enum SphereError {
    /// Two vectors (or the feature dimensions of two tensors) that must have the same length do not.
    #[error(
        "{op}: dimension mismatch, {left} vs {right}; pass vectors of the same ambient dimension n"
    )]
    DimensionMismatch {
        /// The operation that was called.
        op: &'static str,
        /// Length of the first argument.
        left: usize,
        /// Length of the second argument.
        right: usize,
    },
    /// Two tensors whose shapes must agree (or broadcast) do not.
    #[error("{op}: shapes {left:?} and {right:?} are incompatible; {hint}")]
    ShapeMismatch {
        /// The operation that was called.
        op: &'static str,
        /// Shape of the first tensor.
        left: Vec<usize>,
        /// Shape of the second tensor.
        right: Vec<usize>,
        /// What the operation expects.
        hint: &'static str,
    },
    /// An input was empty (no coordinates, no points, no tokens).
    #[error("{op}: empty input ({what}); pass at least {need}")]
    Empty {
        /// The operation that was called.
        op: &'static str,
        /// What was empty.
        what: &'static str,
        /// The minimum the operation needs.
        need: &'static str,
    },
    /// A scalar parameter was outside its domain (radius ≤ 0, κ < 0, NaN tolerance, ...).
    #[error("{op}: invalid {name} = {value}; {hint}")]
    InvalidParameter {
        /// The operation that was called.
        op: &'static str,
        /// The parameter's name.
        name: &'static str,
        /// The value passed.
        value: f64,
        /// The domain the parameter must lie in.
        hint: &'static str,
    },
    /// A point is the zero vector (or not finite), so it has no radial projection onto the sphere.
    #[error("{op}: point {index} has norm {norm}, so it has no direction on the sphere; remove zero or non-finite points")]
    DegeneratePoint {
        /// The operation that was called.
        op: &'static str,
        /// Row index (flattened over the leading dimensions) of the offending point.
        index: usize,
        /// Its Euclidean norm.
        norm: f64,
    },
    /// The logarithm (and hence transport, Karcher mean) is undefined at the antipode `y = −x`.
    #[error("{op}: row {row} is antipodal (‖x̂ + ŷ‖ = {gap:e} < {tol:e}): the geodesic from x to y is not unique and log_x(y) is undefined; perturb y or pick another base point")]
    Antipodal {
        /// The operation that was called.
        op: &'static str,
        /// Row index (flattened over the broadcast leading dimensions) of the antipodal pair.
        row: usize,
        /// The measured `‖x̂ + ŷ‖` (0 exactly at the antipode).
        gap: f64,
        /// The tolerance under which a pair counts as antipodal.
        tol: f64,
    },
    /// `mu` passed to the von Mises–Fisher sampler is not a unit vector.
    #[error("{op}: mu has norm {norm}, expected a unit vector (|‖mu‖ − 1| ≤ 1e-9); divide mu by its norm first")]
    NotUnitVector {
        /// The operation that was called.
        op: &'static str,
        /// The norm of the vector passed.
        norm: f64,
    },
    /// A tensor has a dtype the crate does not compute in.
    #[error("{op}: dtype {dtype:?} is not supported; convert the tensor to f32 or f64 first")]
    UnsupportedDType {
        /// The operation that was called.
        op: &'static str,
        /// The dtype passed.
        dtype: candle_core::DType,
    },
    /// A tensor has the wrong number of dimensions.
    #[error("{op}: tensor of shape {shape:?} has the wrong rank; expected {expected}")]
    Rank {
        /// The operation that was called.
        op: &'static str,
        /// The shape passed.
        shape: Vec<usize>,
        /// The ranks accepted.
        expected: &'static str,
    },
    /// An error raised by Candle (device, allocation, shape checks inside an op).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// `Result` with [`SphereError`].
pub type Result<T> = std::result::Result<T, SphereError>;
