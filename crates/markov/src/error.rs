//! The crate's error type.

use candle_core::DType;

/// Everything that can go wrong when building a kernel or computing its metrics.
///
/// Every message says what was received and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum MarkovError {
    /// A tensor did not have the shape the function needs.
    #[error("{what}: expected shape {expected}, got {got:?}; reshape the tensor (e.g. split heads with `reshape` + `transpose(1, 2)`) before calling")]
    Shape {
        /// Which argument was wrong.
        what: &'static str,
        /// The expected layout, in words.
        expected: String,
        /// The shape that was received.
        got: Vec<usize>,
    },
    /// Fewer than two tokens (a 1 × 1 kernel has no second eigenvalue).
    #[error("attention over T = {t} token(s): at least 2 tokens are needed for a transition matrix with a second eigenvalue")]
    TooFewTokens {
        /// The number of tokens received.
        t: usize,
    },
    /// An empty batch or zero heads.
    #[error(
        "empty input: batch = {batch}, heads = {heads}; pass at least one (batch, head) matrix"
    )]
    Empty {
        /// Batch size received.
        batch: usize,
        /// Number of heads received.
        heads: usize,
    },
    /// The tensor's dtype is not f32 or f64.
    #[error("unsupported dtype {dtype:?} for {what}: convert with `.to_dtype(DType::F32)` or `DType::F64` first")]
    Dtype {
        /// Which argument was wrong.
        what: &'static str,
        /// The dtype received.
        dtype: DType,
    },
    /// NaN or +∞ (or −∞ where it is not allowed) in the input.
    #[error("non-finite value {value} in {what} at (batch {batch}, head {head}, row {row}, col {col}); check the upstream computation (overflowing scores, NaN weights) or mask with −∞ only in raw scores")]
    NonFinite {
        /// Which argument held the value.
        what: &'static str,
        /// Batch index.
        batch: usize,
        /// Head index.
        head: usize,
        /// Row (query token).
        row: usize,
        /// Column (key token).
        col: usize,
        /// The offending value.
        value: f64,
    },
    /// A negative probability.
    #[error("negative probability {value} at (batch {batch}, head {head}, row {row}, col {col}); pass softmax outputs, not raw scores (use `AttentionKernels::from_scores` for scores)")]
    Negative {
        /// Batch index.
        batch: usize,
        /// Head index.
        head: usize,
        /// Row (query token).
        row: usize,
        /// Column (key token).
        col: usize,
        /// The offending value.
        value: f64,
    },
    /// A row does not sum to one within the tolerance; the worst row is reported.
    #[error("not row-stochastic: worst row is (batch {batch}, head {head}, row {row}) with |Σ_j P_ij − 1| = {deviation:e} > tolerance {tol:e}; pass softmax probabilities over the last axis, or raise the tolerance for low-precision inputs")]
    NotRowStochastic {
        /// Batch index of the worst row.
        batch: usize,
        /// Head index of the worst row.
        head: usize,
        /// Index of the worst row.
        row: usize,
        /// Its deviation |Σ_j P_ij − 1|.
        deviation: f64,
        /// The tolerance that was violated.
        tol: f64,
    },
    /// Every entry of a score row is masked (−∞), so the softmax is undefined.
    #[error("row {row} of (batch {batch}, head {head}) is entirely masked: every query must be allowed to attend to at least one key (keep the diagonal unmasked)")]
    EmptyRow {
        /// Batch index.
        batch: usize,
        /// Head index.
        head: usize,
        /// The fully masked row.
        row: usize,
    },
    /// A parameter is out of its valid range.
    #[error("invalid parameter {name} = {value}: {hint}")]
    Parameter {
        /// The parameter's name.
        name: &'static str,
        /// The received value.
        value: f64,
        /// What a valid value looks like.
        hint: &'static str,
    },
    /// The dense eigenvalue solver did not converge.
    #[error("eigenvalue solver did not converge for (batch {batch}, head {head}); check the matrix for extreme values (e.g. entries below 1e-300)")]
    Eigen {
        /// Batch index.
        batch: usize,
        /// Head index.
        head: usize,
    },
    /// The rank-collapse ratio is undefined because the input has no residual.
    #[error("rank-collapse ratio undefined: ‖res(X)‖_F = 0 (every token of X is identical); pass token features that differ across tokens")]
    ZeroResidual,
    /// An error from candle while moving or reshaping tensors.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, MarkovError>;
