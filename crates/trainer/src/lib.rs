//! Models, data, training loop, checkpoints and reports of brownian-transformer.
//!
//! The trainer composes the four library crates: it builds models from
//! [`bmt_kfac::TrackedLinear`] layers, trains them with AdamW, SGD, K-FAC or CG-FAC, and measures
//! every epoch what the paper claims: tokens on the sphere ([`bmt_sphere`]), attention as a Markov
//! kernel ([`bmt_markov`]) and the Brownian motion of tokens ([`bmt_brownian`]).
#![deny(missing_docs)]

pub mod alloc;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod device;
pub mod diag;
pub mod error;
pub mod fixture;
pub mod gradients;
pub mod kfac;
pub mod memory;
pub mod model;
pub mod native;
pub mod ops;
pub mod report;
pub mod run;
pub mod sample;
pub mod second_order;

pub use error::{Result, TrainError};
