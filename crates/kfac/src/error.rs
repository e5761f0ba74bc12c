//! The crate's error type.

/// Errors of K-FAC, CG-FAC, tracked layers and the base optimizers.
#[derive(Debug, thiserror::Error)]
pub enum KfacError {
    /// A tensor had the wrong shape.
    #[error("{what} has shape {found}, expected {expected}")]
    Shape {
        /// What was checked.
        what: String,
        /// The expected shape.
        expected: String,
        /// The shape found.
        found: String,
    },
    /// A tracked layer recorded a forward call but the loss gradient does not reach it.
    #[error("no gradient reached the output of tracked layer `{layer}`: does the loss depend on it, and was tracking on during this forward pass?")]
    MissingGradient {
        /// The layer's name.
        layer: String,
    },
    /// An optimizer setting is outside its valid range.
    #[error("invalid optimizer setting `{name}` = {value}: {hint}")]
    InvalidConfig {
        /// The setting's name.
        name: &'static str,
        /// The offending value.
        value: String,
        /// What would be valid.
        hint: &'static str,
    },
    /// Saved optimizer state does not match the parameters it is loaded into.
    #[error("optimizer state does not match the model: {0}. Resume with the same model and optimizer the state was saved with.")]
    StateMismatch(String),
    /// A curvature capture names a layer the optimizer does not precondition, or names one twice.
    #[error("curvature capture for layer `{layer}`: {problem}. Pass one capture per preconditioned layer, named as in `PreconditionedLayer::name`.")]
    Capture {
        /// The capture's layer name.
        layer: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// Two settings that are each valid cannot be combined.
    #[error("incompatible settings: {0}")]
    Incompatible(String),
    /// A tensor holds NaN or infinite values where finite ones are required.
    #[error("{0} holds NaN or infinite values; check the model's forward pass and learning rate")]
    NonFinite(String),
    /// An error from Candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, KfacError>;
