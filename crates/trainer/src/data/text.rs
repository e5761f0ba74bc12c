//! Byte-level language-modelling data (workload W2) with a block-wise train/validation split.
//!
//! A file of `n` bytes is cut into `m = ⌊n / B⌋` contiguous blocks of `B` bytes (the last block
//! also takes the `n mod B` remaining bytes, so no byte is dropped), where
//! `B = min(8·(context+1), max(context+1, ⌊n / ⌈1/fraction⌉⌋))` when a validation set is
//! requested (so a small file still has about `1/fraction` blocks and the held-out share is near
//! `fraction`; `B ≤ ⌊n/2⌋` as `⌈1/fraction⌉ ≥ 2`) and `B = min(8·(context+1), n)` otherwise;
//! either way `B ≥ context + 1`.
//! `k = clamp(round(fraction · m), 1, m − 1)` blocks (0 when the fraction is 0) chosen by a seeded
//! shuffle form the validation set, the others the training set, each kept in file order.
//! Splitting by blocks keeps neighbouring, near-duplicate windows on one side of the split.
//!
//! A [`TextSet`] indexes windows that never cross a block boundary: a block of `L` bytes holds
//! `L − context` windows, starting at its offsets `0..L − context`; window `s` is the input
//! `block[s..s+context]` and the target `block[s+1..s+context+1]` (the next byte at every
//! position). Sample `i` of the set is window `i − W_b` of block `b`, where `W_b` is the number of
//! windows in the blocks before `b` (found by binary search over the prefix sums).

use std::ops::Range;
use std::path::Path;

use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{read_file, Batch, DataError, Dataset, Split};

/// Block length factor: blocks hold `8 · (context + 1)` bytes unless the file is small.
const BLOCK_WINDOWS: usize = 8;

/// Contiguous blocks of a byte stream, indexed as next-byte-prediction windows (see the module
/// documentation for the exact indexing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextSet {
    /// The set's blocks, concatenated.
    bytes: Vec<u8>,
    /// For each block, its byte range in the source file.
    source_ranges: Vec<Range<usize>>,
    /// `block_ends[b]`: end of block `b` within `bytes` (prefix sums of block lengths).
    block_ends: Vec<usize>,
    /// `window_ends[b]`: windows in blocks `0..=b` (prefix sums of `len_b − context`).
    window_ends: Vec<usize>,
    /// Window length.
    context: usize,
}

impl TextSet {
    /// CRC-32 of the set's contents: its bytes, the source ranges of its blocks and the context
    /// length (as [`super::ImageSet::fingerprint`]).
    pub fn fingerprint(&self) -> u32 {
        let mut h = crc32fast::Hasher::new();
        h.update(&(self.context as u64).to_le_bytes());
        let ends: Vec<usize> = self
            .source_ranges
            .iter()
            .flat_map(|r| [r.start, r.end])
            .collect();
        super::hash_le(&mut h, &ends, |e| (e as u64).to_le_bytes());
        h.update(&self.bytes);
        h.finalize()
    }

    /// One block holding all of `bytes`: `bytes.len() − context` windows (zero if shorter).
    /// `context` must be ≥ 1.
    pub fn from_bytes(bytes: Vec<u8>, context: usize) -> Result<Self, DataError> {
        check_context(context)?;
        let n = bytes.len();
        let whole: Range<usize> = 0..n;
        Ok(Self::from_blocks(
            &bytes,
            std::slice::from_ref(&whole),
            context,
        ))
    }

    /// Gathers `blocks` (ranges of `source`, each at least `context + 1` long) into a set.
    fn from_blocks(source: &[u8], blocks: &[Range<usize>], context: usize) -> Self {
        let total: usize = blocks.iter().map(|r| r.len()).sum();
        let mut set = TextSet {
            bytes: Vec::with_capacity(total),
            source_ranges: blocks.to_vec(),
            block_ends: Vec::with_capacity(blocks.len()),
            window_ends: Vec::with_capacity(blocks.len()),
            context,
        };
        let mut windows = 0;
        for r in blocks {
            set.bytes.extend_from_slice(&source[r.clone()]);
            set.block_ends.push(set.bytes.len());
            windows += r.len().saturating_sub(context);
            set.window_ends.push(windows);
        }
        set
    }

    /// The window length.
    pub fn context(&self) -> usize {
        self.context
    }

    /// Bytes held (all blocks).
    pub fn num_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// The byte ranges of the source file that this set's blocks came from, in order.
    pub fn source_ranges(&self) -> &[Range<usize>] {
        &self.source_ranges
    }

    /// Sample `i` as `(input, target)` = `(block[s..s+context], block[s+1..s+context+1])`, or
    /// `None` when `i >= len()`.
    pub fn window(&self, i: usize) -> Option<(&[u8], &[u8])> {
        if i >= self.len() {
            return None;
        }
        let b = self.window_ends.partition_point(|&e| e <= i);
        let first_window = if b == 0 { 0 } else { self.window_ends[b - 1] };
        let block_start = if b == 0 { 0 } else { self.block_ends[b - 1] };
        let s = block_start + (i - first_window);
        Some((
            &self.bytes[s..s + self.context],
            &self.bytes[s + 1..s + self.context + 1],
        ))
    }
}

impl Dataset for TextSet {
    /// `Σ_b (len_b − context)` windows over the blocks.
    fn len(&self) -> usize {
        self.window_ends.last().copied().unwrap_or(0)
    }

    /// `⌈bytes / context⌉` windows (at most [`Dataset::len`]): one epoch makes about every byte
    /// a target once, whatever the offsets drawn.
    fn epoch_len(&self) -> usize {
        self.bytes.len().div_ceil(self.context).min(self.len())
    }

    /// Windows starting at offsets `0, context, 2·context, …` of every block: non-overlapping,
    /// so each byte of a block (but its first and its last `< context` ones) is predicted once.
    fn eval_indices(&self) -> Vec<usize> {
        let mut out = Vec::new();
        let mut first = 0;
        for &end in &self.window_ends {
            out.extend((first..end).step_by(self.context));
            first = end;
        }
        out
    }

    /// Inputs `(B, context)` u32 bytes and targets `(B, context)` u32 next bytes.
    fn batch(&self, indices: &[usize], device: &Device) -> Result<Batch, DataError> {
        let c = self.context;
        let mut inputs = Vec::with_capacity(indices.len() * c);
        let mut targets = Vec::with_capacity(indices.len() * c);
        for &i in indices {
            let (x, y) = self.window(i).ok_or(DataError::IndexOutOfRange {
                index: i,
                len: self.len(),
            })?;
            inputs.extend(x.iter().map(|&v| u32::from(v)));
            targets.extend(y.iter().map(|&v| u32::from(v)));
        }
        let b = indices.len();
        Ok(Batch {
            inputs: Tensor::from_vec(inputs, (b, c), device)?,
            targets: Tensor::from_vec(targets, (b, c), device)?,
        })
    }
}

fn check_context(context: usize) -> Result<(), DataError> {
    if context == 0 || context >= usize::MAX / (2 * BLOCK_WINDOWS) {
        return Err(DataError::InvalidArgument {
            name: "context",
            value: context.to_string(),
            reason: "the window length must be at least 1 (and not absurdly large)".to_string(),
        });
    }
    Ok(())
}

/// Splits `bytes` into training and validation [`TextSet`]s by contiguous blocks, as described in
/// the module documentation; `origin` names the input in errors and the description.
/// `validation_fraction` must be in `[0, 1)`; with 0 the test set is empty. The input must hold
/// `context + 1` bytes (`2·(context + 1)` with a validation set). Memory: two copies' worth of
/// the input across both sets, plus one range per block.
pub fn split_text<R: rand::Rng + ?Sized>(
    bytes: &[u8],
    origin: &str,
    context: usize,
    validation_fraction: f64,
    rng: &mut R,
) -> Result<Split<TextSet>, DataError> {
    check_context(context)?;
    if !(0.0..1.0).contains(&validation_fraction) {
        return Err(DataError::InvalidArgument {
            name: "validation_fraction",
            value: validation_fraction.to_string(),
            reason: "must lie in [0, 1)".to_string(),
        });
    }
    let n = bytes.len();
    let validate = validation_fraction > 0.0;
    let (required, why) = if validate {
        (
            2 * (context + 1),
            "one training and one validation window of context + 1 bytes",
        )
    } else {
        (context + 1, "one window of context + 1 bytes")
    };
    if n < required {
        return Err(DataError::TextTooSmall {
            origin: origin.to_string(),
            size: n as u64,
            context,
            required: required as u64,
            why: why.to_string(),
        });
    }
    let block = (BLOCK_WINDOWS * (context + 1)).min(if validate {
        (n / (1.0 / validation_fraction).ceil() as usize).max(context + 1)
    } else {
        n
    });
    let m = n / block;
    let ranges: Vec<Range<usize>> = (0..m)
        .map(|b| b * block..if b + 1 == m { n } else { (b + 1) * block })
        .collect();
    let k = if validate {
        ((validation_fraction * m as f64).round() as usize).clamp(1, m - 1)
    } else {
        0
    };
    let mut order: Vec<usize> = (0..m).collect();
    order.shuffle(rng);
    let mut is_val = vec![false; m];
    for &b in &order[..k] {
        is_val[b] = true;
    }
    let pick = |want: bool| -> Vec<Range<usize>> {
        ranges
            .iter()
            .zip(&is_val)
            .filter(|(_, &v)| v == want)
            .map(|(r, _)| r.clone())
            .collect()
    };
    let train = TextSet::from_blocks(bytes, &pick(false), context);
    let test = TextSet::from_blocks(bytes, &pick(true), context);
    let description = format!(
        "bytes of {origin} ({n} bytes), context {context}: {m} blocks of {block} bytes, \
         {} train / {k} validation blocks ({} / {} windows)",
        m - k,
        train.len(),
        test.len()
    );
    Ok(Split {
        train,
        test,
        split_seed: None,
        description,
    })
}

/// Reads `file` as bytes (any encoding) and splits it with [`split_text`], the blocks shuffled by
/// `ChaCha8Rng::seed_from_u64(seed)`; `split_seed = Some(seed)`.
pub fn load_text(
    file: &Path,
    context: usize,
    validation_fraction: f64,
    seed: u64,
) -> Result<Split<TextSet>, DataError> {
    if file.is_dir() {
        return Err(DataError::NotFound {
            path: file.to_path_buf(),
            expected: "a text or binary file, found a directory".to_string(),
        });
    }
    let bytes = read_file(file, "a text or binary file")?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut split = split_text(
        &bytes,
        &file.display().to_string(),
        context,
        validation_fraction,
        &mut rng,
    )?;
    split.split_seed = Some(seed);
    split.description.push_str(&format!(", split seed {seed}"));
    Ok(split)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_follow_the_documented_indexing() {
        // Blocks [0, 5) and [5, 12) of 12 bytes with context 2: 3 + 5 windows.
        let src: Vec<u8> = (0..12).collect();
        let set = TextSet::from_blocks(&src, &[0..5, 5..12], 2);
        assert_eq!(set.len(), 8);
        assert_eq!(set.window(0), Some((&[0u8, 1][..], &[1u8, 2][..])));
        assert_eq!(set.window(2), Some((&[2u8, 3][..], &[3u8, 4][..])));
        // Window 3 is the first of block 1: it starts at byte 5, never straddling 4 → 5.
        assert_eq!(set.window(3), Some((&[5u8, 6][..], &[6u8, 7][..])));
        assert_eq!(set.window(7), Some((&[9u8, 10][..], &[10u8, 11][..])));
        assert_eq!(set.window(8), None);
        let b = set.batch(&[7, 0], &Device::Cpu).unwrap();
        assert_eq!(
            b.inputs.to_vec2::<u32>().unwrap(),
            vec![vec![9, 10], vec![0, 1]]
        );
        assert_eq!(
            b.targets.to_vec2::<u32>().unwrap(),
            vec![vec![10, 11], vec![1, 2]]
        );
        assert!(matches!(
            set.batch(&[8], &Device::Cpu),
            Err(DataError::IndexOutOfRange { index: 8, len: 8 })
        ));
    }

    #[test]
    fn epochs_and_evaluation_cover_each_byte_about_once() {
        // Blocks of 5 and 7 bytes, context 2: windows 0..3 and 3..8; evaluation starts every
        // second window of each block.
        let src: Vec<u8> = (0..12).collect();
        let set = TextSet::from_blocks(&src, &[0..5, 5..12], 2);
        assert_eq!(set.eval_indices(), vec![0, 2, 3, 5, 7]);
        assert_eq!(set.window(5), Some((&[7u8, 8][..], &[8u8, 9][..])));
        assert_eq!(set.epoch_len(), 6);
        let tiny = TextSet::from_blocks(&src, std::slice::from_ref(&(0..3)), 2);
        assert_eq!((tiny.len(), tiny.epoch_len()), (1, 1));
    }

    #[test]
    fn split_partitions_the_file_into_blocks() {
        let src: Vec<u8> = (0..1000u32).map(|v| (v % 251) as u8).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let s = split_text(&src, "mem", 4, 0.25, &mut rng).unwrap();
        // B = min(8·5, 500) = 40, m = 25 blocks, k = round(6.25) = 6 validation blocks.
        assert_eq!(s.test.source_ranges().len(), 6);
        assert_eq!(s.train.source_ranges().len(), 19);
        let mut all: Vec<_> = s
            .train
            .source_ranges()
            .iter()
            .chain(s.test.source_ranges())
            .cloned()
            .collect();
        all.sort_by_key(|r| r.start);
        assert_eq!(
            all,
            (0..25).map(|b| b * 40..b * 40 + 40).collect::<Vec<_>>()
        );
        assert_eq!(s.train.len(), 19 * 36);
        assert_eq!(s.test.len(), 6 * 36);
        assert_eq!(s.train.num_bytes() + s.test.num_bytes(), 1000);
    }

    #[test]
    fn small_files_hold_out_about_the_fraction() {
        // n = 5829 (this repository's README), context 256, fraction 0.1: B = max(257, 5829/10)
        // = 582, m = 10 blocks, k = 1: 582 validation bytes, not half the file.
        let src = vec![b'a'; 5829];
        let s = split_text(&src, "mem", 256, 0.1, &mut ChaCha8Rng::seed_from_u64(0)).unwrap();
        assert_eq!(
            s.train.source_ranges().len() + s.test.source_ranges().len(),
            10
        );
        assert_eq!(s.test.source_ranges().len(), 1);
        assert!(s.test.num_bytes() <= 582 + 9, "{}", s.test.num_bytes());
    }

    #[test]
    fn last_block_keeps_the_remainder() {
        let src = vec![7u8; 103];
        let s = split_text(&src, "mem", 3, 0.0, &mut ChaCha8Rng::seed_from_u64(0)).unwrap();
        // B = 32, m = 3; the last block is 32..103 (71 bytes), so no byte is dropped.
        assert_eq!(s.train.source_ranges(), &[0..32, 32..64, 64..103]);
        assert_eq!(s.train.len(), 29 + 29 + 36);
        assert!(s.test.is_empty());
    }

    #[test]
    fn rejects_bad_arguments_and_tiny_inputs() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let err = split_text(&[0; 9], "f.txt", 4, 0.1, &mut rng).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::TextTooSmall {
                    size: 9,
                    context: 4,
                    required: 10,
                    ..
                }
            ),
            "{err}"
        );
        // The same 9 bytes suffice without validation (one window needs 5 bytes).
        assert_eq!(
            split_text(&[0; 9], "f", 4, 0.0, &mut rng)
                .unwrap()
                .train
                .len(),
            5
        );
        for f in [-0.1, 1.0, f64::NAN] {
            let err = split_text(&[0; 100], "f", 4, f, &mut rng).unwrap_err();
            assert!(matches!(
                err,
                DataError::InvalidArgument {
                    name: "validation_fraction",
                    ..
                }
            ));
        }
        let err = split_text(&[0; 100], "f", 0, 0.1, &mut rng).unwrap_err();
        assert!(matches!(
            err,
            DataError::InvalidArgument {
                name: "context",
                ..
            }
        ));
    }
}
