//! CIFAR-10 in its binary version (Krizhevsky, "Learning Multiple Layers of Features from Tiny
//! Images", 2009): each file is a sequence of records of 1 label byte followed by 3072 pixel
//! bytes, the red, green and blue 32×32 planes in turn, each row-major.

use std::path::Path;

use super::{read_file, require_dir, DataError, ImageSet, Split};

/// Side of a CIFAR-10 image.
const SIDE: usize = 32;
/// Colour planes per image.
const CHANNELS: usize = 3;
/// Classes of CIFAR-10.
const CLASSES: usize = 10;
/// Bytes per record: 1 label byte + 3 · 32 · 32 pixel bytes.
pub const CIFAR10_RECORD_BYTES: usize = 1 + CHANNELS * SIDE * SIDE;
/// The training files, in the order they are concatenated.
const TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
/// The test file.
const TEST_FILE: &str = "test_batch.bin";

/// Parses one CIFAR-10 binary batch from memory into an [`ImageSet`] (3×32×32, pixels
/// `byte/255`, 10 classes). The input must be a non-empty whole number of 3073-byte records
/// (a partial last record is reported with its offset) with every label in `0..=9`. The output
/// holds `4 · 3072/3073` f32 bytes per input byte and nothing else.
pub fn parse_cifar10_batch(bytes: &[u8], origin: &str) -> Result<ImageSet, DataError> {
    if bytes.is_empty() {
        return Err(DataError::Empty {
            origin: origin.to_string(),
            expected: format!("records of {CIFAR10_RECORD_BYTES} bytes"),
        });
    }
    let rem = bytes.len() % CIFAR10_RECORD_BYTES;
    if rem != 0 {
        let offset = bytes.len() - rem;
        return Err(DataError::Truncated {
            origin: origin.to_string(),
            what: format!("record {}", offset / CIFAR10_RECORD_BYTES),
            offset: offset as u64,
            expected: CIFAR10_RECORD_BYTES as u64,
            found: rem as u64,
        });
    }
    let n = bytes.len() / CIFAR10_RECORD_BYTES;
    let records = bytes.chunks_exact(CIFAR10_RECORD_BYTES);
    if let Some((i, r)) = records
        .clone()
        .enumerate()
        .find(|(_, r)| r[0] as usize >= CLASSES)
    {
        return Err(DataError::LabelOutOfRange {
            origin: origin.to_string(),
            offset: (i * CIFAR10_RECORD_BYTES) as u64,
            label: u32::from(r[0]),
            num_classes: CLASSES,
        });
    }
    let mut images = Vec::with_capacity(n * (CIFAR10_RECORD_BYTES - 1));
    let mut labels = Vec::with_capacity(n);
    for r in records {
        labels.push(u32::from(r[0]));
        images.extend(r[1..].iter().map(|&p| f32::from(p) / 255.0));
    }
    ImageSet::new(images, labels, CHANNELS, SIDE, SIDE, CLASSES)
}

/// Loads CIFAR-10 from `dir`, which must hold `data_batch_1.bin` … `data_batch_5.bin` (the
/// training set, concatenated in that order) and `test_batch.bin` (the test set), as unpacked
/// from the "CIFAR-10 binary version" archive. Official split: `split_seed = None`.
pub fn load_cifar10(dir: &Path) -> Result<Split<ImageSet>, DataError> {
    let all = format!("{} and {TEST_FILE}", TRAIN_FILES.join(", "));
    require_dir(dir, &all)?;
    // Report a missing file before reading 150 MB of the others.
    for name in TRAIN_FILES.iter().chain([&TEST_FILE]) {
        let path = dir.join(name);
        if !path.is_file() {
            return Err(DataError::NotFound {
                path,
                expected: format!("{name}; a CIFAR-10 binary directory holds {all}"),
            });
        }
    }
    let load = |name: &str| {
        let path = dir.join(name);
        let bytes = read_file(&path, &all)?;
        parse_cifar10_batch(&bytes, &path.display().to_string())
    };
    let mut train = load(TRAIN_FILES[0])?;
    for name in &TRAIN_FILES[1..] {
        train.append(load(name)?, name)?;
    }
    let test = load(TEST_FILE)?;
    let description = format!(
        "CIFAR-10 binary from {}: {} train / {} test, 3×32×32, 10 classes, official split",
        dir.display(),
        train.labels.len(),
        test.labels.len()
    );
    Ok(Split {
        train,
        test,
        split_seed: None,
        description,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planes_map_to_channels() {
        // One record: label 7, red plane all 255, green plane 0, blue plane 51 (= 0.2 · 255).
        let mut rec = vec![7u8];
        rec.extend(std::iter::repeat_n(255u8, 1024));
        rec.extend(std::iter::repeat_n(0u8, 1024));
        rec.extend(std::iter::repeat_n(51u8, 1024));
        let set = parse_cifar10_batch(&rec, "r").unwrap();
        assert_eq!(set.labels, vec![7]);
        assert_eq!(set.images[0], 1.0);
        assert_eq!(set.images[1024], 0.0);
        assert_eq!(set.images[2048 + 1023], 0.2);
    }

    #[test]
    fn partial_record_is_reported_at_its_offset() {
        let bytes = vec![1u8; 2 * CIFAR10_RECORD_BYTES + 100];
        let err = parse_cifar10_batch(&bytes, "b").unwrap_err();
        assert!(
            matches!(
                err,
                DataError::Truncated {
                    offset: 6146,
                    expected: 3073,
                    found: 100,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("record 2"), "{err}");
    }
}
