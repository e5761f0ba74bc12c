//! The data module's error type.

use std::path::PathBuf;

/// Everything that can go wrong while locating, reading, validating or batching a data set.
///
/// Each message is one line: what is wrong, where (file path or origin and byte offset), what was
/// expected against what was found, and what to do about it. Offsets are counted in the bytes the
/// parser saw, i.e. after gzip decompression for `.gz` files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// A directory or file does not exist.
    #[error("{}: not found; expected {expected}; download the data set there or pass another path", .path.display())]
    NotFound {
        /// The missing path.
        path: PathBuf,
        /// What should have been there (file names).
        expected: String,
    },
    /// The operating system refused to read a path that exists.
    #[error("{}: cannot read: {source}; check that it is a readable file", .path.display())]
    Io {
        /// The path being read.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A gzip stream could not be decompressed.
    #[error("{origin}: gzip stream is corrupt or truncated after {offset} decompressed bytes ({message}); re-download the file, or decompress it with `gunzip` and drop the .gz suffix")]
    Gzip {
        /// The file (or other origin) being decompressed.
        origin: String,
        /// Decompressed bytes produced before the failure.
        offset: u64,
        /// The decoder's description of the failure.
        message: String,
    },
    /// The first bytes are not the format's magic number.
    #[error("{origin}: byte offset 0: expected magic number 0x{expected:08x}, found 0x{found:08x}{hint}")]
    BadMagic {
        /// The file (or other origin) being parsed.
        origin: String,
        /// The magic number of the expected format.
        expected: u32,
        /// The big-endian value actually found.
        found: u32,
        /// A guess at what the file is instead, and what to do (starts with "; ").
        hint: String,
    },
    /// A header field has an impossible value (zero dimension, overflowing size).
    #[error("{origin}: invalid header field at byte offset {offset}: {reason}; the file is corrupt or not in this format")]
    BadHeader {
        /// The file (or other origin) being parsed.
        origin: String,
        /// Byte offset of the offending field.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The input ends before the data its header (or record size) promises.
    #[error("{origin}: truncated {what} at byte offset {offset}: expected {expected} bytes, found {found}; the file is incomplete: re-download it")]
    Truncated {
        /// The file (or other origin) being parsed.
        origin: String,
        /// What is cut short (header, image data, a record).
        what: String,
        /// Byte offset where the cut-short part starts.
        offset: u64,
        /// Bytes that part needs.
        expected: u64,
        /// Bytes present.
        found: u64,
    },
    /// The input continues after the data its header declares.
    #[error("{origin}: {extra} unexpected trailing bytes at byte offset {offset}, where the header says the file ends; the file is corrupt or was concatenated: re-download it")]
    TrailingBytes {
        /// The file (or other origin) being parsed.
        origin: String,
        /// Where the declared data ends.
        offset: u64,
        /// How many bytes follow.
        extra: u64,
    },
    /// A file that should hold records holds none.
    #[error("{origin}: file is empty; expected {expected}; re-download it")]
    Empty {
        /// The file (or other origin) being parsed.
        origin: String,
        /// What it should contain.
        expected: String,
    },
    /// A class label is outside `0..num_classes`.
    #[error("{origin}: label {label} at byte offset {offset} is outside 0..={}; the file is corrupt or not a {num_classes}-class data set", .num_classes.saturating_sub(1))]
    LabelOutOfRange {
        /// The file (or other origin) being parsed.
        origin: String,
        /// Byte offset of the label.
        offset: u64,
        /// The label found.
        label: u32,
        /// Number of classes of the format.
        num_classes: usize,
    },
    /// An image file and its label file disagree on the number of samples.
    #[error("{images_origin} holds {images} images but {labels_origin} holds {labels} labels; use an image file and a label file of the same split")]
    CountMismatch {
        /// The image file.
        images_origin: String,
        /// Images it declares.
        images: u64,
        /// The label file.
        labels_origin: String,
        /// Labels it declares.
        labels: u64,
    },
    /// Two files of one data set have different image shapes.
    #[error("{origin}: images are {found} but {expected} elsewhere in the data set; all files must come from the same data set")]
    ShapeMismatch {
        /// The file with the odd shape.
        origin: String,
        /// Shape seen first.
        expected: String,
        /// Shape of this file.
        found: String,
    },
    /// A text file cannot hold the windows requested.
    #[error("{origin}: {size} bytes is too small for context {context}: need at least {required} bytes ({why}); use a larger file or a smaller context (--context)")]
    TextTooSmall {
        /// The text file.
        origin: String,
        /// Its size in bytes.
        size: u64,
        /// The requested context length.
        context: usize,
        /// The minimum size for this request.
        required: u64,
        /// Why that minimum.
        why: String,
    },
    /// A parameter is outside its domain.
    #[error("invalid {name} = {value}: {reason}")]
    InvalidArgument {
        /// The parameter name.
        name: &'static str,
        /// Its value, formatted.
        value: String,
        /// The allowed domain.
        reason: String,
    },
    /// A sample index passed to [`crate::data::Dataset::batch`] is out of range.
    #[error("sample index {index} is out of range for a data set of {len} samples; draw indices from 0..len()")]
    IndexOutOfRange {
        /// The offending index.
        index: usize,
        /// The data set's length.
        len: usize,
    },
    /// An in-memory data set violates its own invariants (e.g. fields edited by hand).
    #[error("inconsistent data set: {reason}; build it with its checked constructor")]
    Inconsistent {
        /// The violated invariant.
        reason: String,
    },
    /// A `--data` style source string could not be parsed.
    #[error("cannot parse data source {input:?}: {reason}; expected one of digits, mnist:DIR, cifar10:DIR, text:FILE")]
    BadSource {
        /// The string given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Candle failed to build a batch tensor.
    #[error("building a batch tensor failed: {0}")]
    Tensor(#[from] candle_core::Error),
}
