//! Typed errors of the fused operations.

use candle_core::{DType, Shape};

/// Errors raised by [`crate::ops`]. They reach the caller wrapped in `candle_core::Error::Wrapped`
/// (the public functions return `candle_core::Result` so that they compose with tensor code); the
/// message is this enum's `Display`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OpsError {
    /// The input has rank 0, so there is no last dimension to normalise over.
    #[error("{op}: the input is a scalar (rank 0) but the op works over the last dimension; reshape it to shape (1,) or add a dimension first")]
    ScalarInput {
        /// Name of the operation.
        op: &'static str,
    },
    /// `eps` is not a finite positive number.
    #[error("layer_norm_normalize: eps = {eps} must be finite and > 0 (1e-5 is usual); with eps = 0 a constant row computes 0/0")]
    InvalidEps {
        /// The rejected value.
        eps: f64,
    },
    /// A kernel was handed a dtype it has no implementation for (internal: the public functions fall
    /// back to the composite version before this can happen).
    #[error(
        "{op}: no fused CPU kernel for dtype {dtype:?}; use the composite version for this dtype"
    )]
    UnsupportedDType {
        /// Name of the operation.
        op: &'static str,
        /// The unsupported dtype.
        dtype: DType,
    },
    /// A kernel was handed a non-contiguous tensor (internal: the public functions make inputs
    /// contiguous first).
    #[error("{op}: the kernel needs a contiguous input; call .contiguous() on it first")]
    NonContiguous {
        /// Name of the operation.
        op: &'static str,
    },
    /// The two inputs of a backward kernel disagree in shape.
    #[error("{op}: the operands have shapes {lhs:?} and {rhs:?}; they must be equal")]
    ShapeMismatch {
        /// Name of the operation.
        op: &'static str,
        /// Shape of the first operand.
        lhs: Shape,
        /// Shape of the second operand.
        rhs: Shape,
    },
    /// The two inputs of a backward kernel disagree in dtype.
    #[error("{op}: the operands have dtypes {lhs:?} and {rhs:?}; they must be equal")]
    DTypeMismatch {
        /// Name of the operation.
        op: &'static str,
        /// Dtype of the first operand.
        lhs: DType,
        /// Dtype of the second operand.
        rhs: DType,
    },
    /// The inputs of [`crate::ops::attention`] are not three equal `(batch, tokens, heads·head_dim)`
    /// shapes with `heads ≥ 1` dividing the last dimension.
    #[error("attention: q, k, v have shapes {q:?}, {k:?}, {v:?} with {heads} heads; they must be one shape (batch, tokens, heads·head_dim) with heads ≥ 1 dividing the last dimension")]
    AttentionShape {
        /// Shape of the queries.
        q: Shape,
        /// Shape of the keys.
        k: Shape,
        /// Shape of the values.
        v: Shape,
        /// The number of heads asked for.
        heads: usize,
    },
}

impl From<OpsError> for candle_core::Error {
    fn from(e: OpsError) -> Self {
        candle_core::Error::wrap(e)
    }
}
