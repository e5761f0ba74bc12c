//! Data sets for the trainer: the embedded handwritten digits (workload W1), MNIST and
//! Fashion-MNIST (idx files), CIFAR-10 (binary batches) and raw byte-level text (workload W2).
//!
//! Every loader returns a [`Split`] of two [`Dataset`]s. Image sets yield `(B, C, H, W)` f32
//! inputs in `[0, 1]` and `(B,)` u32 class targets; text sets yield `(B, context)` u32 byte inputs
//! and the `(B, context)` next bytes as targets.
//!
//! File formats are validated completely before anything is allocated from a header: magic
//! numbers, declared sizes against the real length (a truncated file or trailing garbage is an
//! error, never silently dropped samples), image against label counts, and label ranges. The
//! parsers work on byte slices ([`parse_idx_images`], [`parse_idx_labels`],
//! [`parse_cifar10_batch`], [`split_text`]) so that property tests and the cargo-fuzz targets in
//! `fuzz/` can drive them directly. Every failure is a [`DataError`] whose one-line message names
//! the file, the byte offset, what was expected against what was found, and what to do.
//!
//! ```
//! use bmt_trainer::data::{load_digits, DataSource, Dataset};
//! use candle_core::Device;
//!
//! let source: DataSource = "digits".parse()?;
//! assert_eq!(source, DataSource::Digits);
//! let split = load_digits(42)?;
//! assert_eq!((split.train.len(), split.test.len()), (1437, 360));
//! let batch = split.train.batch(&[0, 5, 9], &Device::Cpu)?;
//! assert_eq!(batch.inputs.dims(), &[3, 1, 8, 8]);
//! assert_eq!(batch.targets.dims(), &[3]);
//! # Ok::<(), bmt_trainer::data::DataError>(())
//! ```

mod cifar;
mod digits;
mod error;
mod idx;
mod image;
mod text;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::{Device, Tensor};

pub use cifar::{load_cifar10, parse_cifar10_batch, CIFAR10_RECORD_BYTES};
pub use digits::{digits_permutation, load_digits, load_digits_with_split, DIGITS_TRAIN};
pub use error::DataError;
pub use idx::{
    decompress_gzip_idx, load_mnist, parse_idx_images, parse_idx_labels, IdxImages, IdxLabels,
};
pub use image::ImageSet;
pub use text::{load_text, split_text, TextSet};

/// Where the training data comes from, as written on a command line.
///
/// Parsed from and displayed as `digits`, `mnist:DIR`, `cifar10:DIR` or `text:FILE`; `Display`
/// and `FromStr` round-trip for every path that is valid UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSource {
    /// The UCI handwritten digits embedded in smartcore (workload W1).
    Digits,
    /// A directory of MNIST or Fashion-MNIST idx files (raw or `.gz`).
    Mnist(PathBuf),
    /// A directory of CIFAR-10 binary batches.
    Cifar10(PathBuf),
    /// Any file, read as bytes (workload W2).
    Text(PathBuf),
}

impl FromStr for DataSource {
    type Err = DataError;

    /// Parses `digits`, `mnist:DIR`, `cifar10:DIR` or `text:FILE` (the scheme is case-sensitive;
    /// the path is taken verbatim after the first colon and must not be empty).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| DataError::BadSource {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        if s == "digits" {
            return Ok(DataSource::Digits);
        }
        let Some((scheme, path)) = s.split_once(':') else {
            return Err(bad("no `kind:` prefix"));
        };
        if path.is_empty() && matches!(scheme, "mnist" | "cifar10" | "text") {
            return Err(bad("the path after the colon is empty"));
        }
        let path = PathBuf::from(path);
        match scheme {
            "mnist" => Ok(DataSource::Mnist(path)),
            "cifar10" => Ok(DataSource::Cifar10(path)),
            "text" => Ok(DataSource::Text(path)),
            "digits" => Err(bad("`digits` takes no path")),
            _ => Err(bad(&format!("unknown kind {scheme:?}"))),
        }
    }
}

impl fmt::Display for DataSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataSource::Digits => f.write_str("digits"),
            DataSource::Mnist(p) => write!(f, "mnist:{}", p.display()),
            DataSource::Cifar10(p) => write!(f, "cifar10:{}", p.display()),
            DataSource::Text(p) => write!(f, "text:{}", p.display()),
        }
    }
}

/// One mini-batch: model inputs and training targets on a device.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Images `(B, C, H, W)` f32, or byte windows `(B, context)` u32.
    pub inputs: Tensor,
    /// Class labels `(B,)` u32, or next bytes `(B, context)` u32.
    pub targets: Tensor,
}

/// A finite, indexable set of samples that can be gathered into a [`Batch`].
pub trait Dataset: Send + Sync {
    /// Number of samples; valid indices are `0..len()`.
    fn len(&self) -> usize;

    /// Whether the set has no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Gathers the samples `indices` (in that order, repeats allowed) into one batch on `device`.
    /// An index `>= len()` is a [`DataError::IndexOutOfRange`].
    fn batch(&self, indices: &[usize], device: &Device) -> Result<Batch, DataError>;

    /// Samples drawn per training epoch: every sample for image sets; for text, as many windows
    /// as the set has bytes per context length (each byte is about once a target per epoch).
    fn epoch_len(&self) -> usize {
        self.len()
    }

    /// The samples an evaluation pass reads, in order: every sample for image sets; for text,
    /// the non-overlapping windows of every block.
    fn eval_indices(&self) -> Vec<usize> {
        (0..self.len()).collect()
    }
}

/// A train/test (or train/validation) pair with its provenance.
#[derive(Debug, Clone)]
pub struct Split<D> {
    /// The training samples.
    pub train: D,
    /// The held-out samples.
    pub test: D,
    /// The seed the split was drawn from; `None` for a data set's official fixed split.
    pub split_seed: Option<u64>,
    /// One human-readable line: data set, origin, sizes, split rule.
    pub description: String,
}

/// Feeds `values` to `h` as their little-endian bytes, 1024 values per `update` call (one call
/// per value costs more than the CRC itself on a data set of 10⁸ pixels).
pub(crate) fn hash_le<T: Copy, const W: usize>(
    h: &mut crc32fast::Hasher,
    values: &[T],
    le_bytes: impl Fn(T) -> [u8; W],
) {
    let mut buf = Vec::with_capacity(1024 * W);
    for chunk in values.chunks(1024) {
        buf.clear();
        for &v in chunk {
            buf.extend_from_slice(&le_bytes(v));
        }
        h.update(&buf);
    }
}

/// Reads a whole file, mapping "not found" to [`DataError::NotFound`] with `expected` and any other
/// failure to [`DataError::Io`]. The allocation is the file's real length.
pub(crate) fn read_file(path: &Path, expected: &str) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            DataError::NotFound {
                path: path.to_path_buf(),
                expected: expected.to_string(),
            }
        } else {
            DataError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

/// Checks that `dir` is an existing directory, else [`DataError::NotFound`] naming `expected`.
pub(crate) fn require_dir(dir: &Path, expected: &str) -> Result<(), DataError> {
    if dir.is_dir() {
        Ok(())
    } else {
        Err(DataError::NotFound {
            path: dir.to_path_buf(),
            expected: format!("a directory holding {expected}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunked hashing equals hashing the values' bytes one by one (lengths around the chunk
    /// size), and an image set's fingerprint moves with one pixel or one label.
    #[test]
    fn fingerprints_hash_every_value_and_see_one_change() {
        for n in [0usize, 1, 1023, 1024, 1025, 3000] {
            let v: Vec<f32> = (0..n).map(|i| i as f32 * 0.25).collect();
            let mut chunked = crc32fast::Hasher::new();
            hash_le(&mut chunked, &v, f32::to_le_bytes);
            let mut single = crc32fast::Hasher::new();
            for x in &v {
                single.update(&x.to_le_bytes());
            }
            assert_eq!(chunked.finalize(), single.finalize(), "n = {n}");
        }
        let set = |px: f32, label: u32| {
            ImageSet::new(vec![0.5, px, 0.0, 1.0], vec![label], 1, 2, 2, 3)
                .unwrap()
                .fingerprint()
        };
        assert_eq!(set(0.25, 1), set(0.25, 1));
        assert_ne!(set(0.25, 1), set(0.5, 1));
        assert_ne!(set(0.25, 1), set(0.25, 2));
    }

    #[test]
    fn source_parses_and_round_trips() {
        for (text, want) in [
            ("digits", DataSource::Digits),
            ("mnist:/data/mnist", DataSource::Mnist("/data/mnist".into())),
            ("cifar10:rel/c10", DataSource::Cifar10("rel/c10".into())),
            ("text:a:b.txt", DataSource::Text("a:b.txt".into())),
        ] {
            let parsed: DataSource = text.parse().unwrap();
            assert_eq!(parsed, want);
            assert_eq!(parsed.to_string(), text);
        }
    }

    #[test]
    fn source_rejects_malformed() {
        for bad in [
            "",
            "Digits",
            "mnist",
            "mnist:",
            "text:",
            "digits:x",
            "imagenet:/d",
        ] {
            let err = bad.parse::<DataSource>().unwrap_err();
            assert!(matches!(err, DataError::BadSource { .. }), "{bad}: {err}");
            assert!(err.to_string().contains("mnist:DIR"), "{err}");
        }
    }
}
