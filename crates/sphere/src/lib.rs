//! Geometry of normalised tokens on the hypersphere (MATH.md §1).
#![deny(missing_docs)]

pub mod error;
pub mod reference;

pub use error::{Result, SphereError};
