//! The trainer's error type: every message says what is wrong and what to do.

use std::path::PathBuf;

/// Errors of the trainer.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A flag or configuration value is out of range or inconsistent.
    #[error("invalid {flag}: {msg}")]
    Config {
        /// The offending command-line flag.
        flag: &'static str,
        /// What is wrong and what would be valid.
        msg: String,
    },
    /// A data set could not be loaded.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// A weights file does not match the model.
    #[error("weights do not match the model: {msg}")]
    Weights {
        /// What is wrong.
        msg: String,
    },
    /// A model input has the wrong shape.
    #[error("bad model input: {msg}")]
    Input {
        /// What is wrong.
        msg: String,
    },
    /// Initialisation failed.
    #[error("initialisation failed: {0}")]
    Init(String),
    /// A checkpoint is damaged, missing or of another format.
    #[error("{msg}")]
    Checkpoint {
        /// What is wrong and what to do.
        msg: String,
    },
    /// A run directory cannot be resumed.
    #[error("cannot resume from {}: {msg}", dir.display())]
    Resume {
        /// The directory given to `--resume`.
        dir: PathBuf,
        /// Why.
        msg: String,
    },
    /// Training produced a non-finite value.
    #[error("training diverged at epoch {epoch}, step {step}: {what}. {hint}")]
    Diverged {
        /// Epoch (1-based).
        epoch: usize,
        /// Global step (1-based).
        step: usize,
        /// What became non-finite, and where.
        what: String,
        /// The last good checkpoint and what to try.
        hint: String,
    },
    /// The requested device is unavailable in this build or on this machine.
    #[error("{0}")]
    Device(String),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// JSON (de)serialisation failed.
    #[error("{}: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser error.
        source: serde_json::Error,
    },
    /// An optimizer error.
    #[error(transparent)]
    Optimizer(#[from] bmt_kfac::KfacError),
    /// A diagnostic failed.
    #[error("diagnostic `{name}` failed: {msg}")]
    Diagnostic {
        /// The diagnostic.
        name: &'static str,
        /// Why.
        msg: String,
    },
    /// A Candle error.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias of the trainer.
pub type Result<T> = std::result::Result<T, TrainError>;

/// Wraps an `io::Error` with the path it concerns.
pub fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrainError {
    let path = path.into();
    move |source| TrainError::Io { path, source }
}
