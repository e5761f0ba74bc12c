//! The UCI optical handwritten digits embedded in smartcore (workload W1).

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{DataError, ImageSet, Split};

/// Number of digits images (UCI optical handwritten digits, as in scikit-learn's `load_digits`).
const DIGITS_N: usize = 1797;
/// Side of a digits image.
const DIGITS_SIDE: usize = 8;
/// Training samples in the W1 split; the remaining `1797 − 1437 = 360` are the test set.
pub const DIGITS_TRAIN: usize = 1437;

/// The W1 split permutation: `0..1797` shuffled by `SliceRandom::shuffle` with
/// `ChaCha8Rng::seed_from_u64(seed)`. Its first [`DIGITS_TRAIN`] entries are the training
/// indices and the rest the test indices, in this order (see `docs/WORKLOADS.md`, W1).
pub fn digits_permutation(seed: u64) -> Vec<usize> {
    let mut perm: Vec<usize> = (0..DIGITS_N).collect();
    perm.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    perm
}

/// Loads workload W1's data: the 1797 digits (1 channel, 8×8, pixels `v/16` in `[0, 1]`,
/// 10 classes) split by [`digits_permutation`]`(seed)` into 1437 training and 360 test images,
/// each in permutation order.
pub fn load_digits(seed: u64) -> Result<Split<ImageSet>, DataError> {
    let perm = digits_permutation(seed);
    let (train, test) = perm.split_at(DIGITS_TRAIN);
    let mut split = load_digits_with_split(train, test)?;
    split.split_seed = Some(seed);
    split.description = format!(
        "digits (UCI optical handwritten digits, embedded), 1×8×8, 10 classes, \
         {} train / {} test from a ChaCha8 permutation with seed {seed}",
        train.len(),
        test.len()
    );
    Ok(split)
}

/// Loads the digits with explicit train and test indices (for instance a reference
/// implementation's split from a fixture). Indices must be `< 1797` and the two lists disjoint
/// and free of repeats; samples are kept in the given order. `split_seed` is `None`.
pub fn load_digits_with_split(
    train: &[usize],
    test: &[usize],
) -> Result<Split<ImageSet>, DataError> {
    let (pixels, labels) = digits_raw()?;
    let mut seen = vec![false; DIGITS_N];
    for &i in train.iter().chain(test) {
        if i >= DIGITS_N {
            return Err(DataError::InvalidArgument {
                name: "digits index",
                value: i.to_string(),
                reason: format!("the digits set has {DIGITS_N} samples (0..{DIGITS_N})"),
            });
        }
        if std::mem::replace(&mut seen[i], true) {
            return Err(DataError::InvalidArgument {
                name: "digits index",
                value: i.to_string(),
                reason: "it appears twice in the train and test lists".to_string(),
            });
        }
    }
    let p = DIGITS_SIDE * DIGITS_SIDE;
    let gather = |idx: &[usize]| {
        let images = idx
            .iter()
            .flat_map(|&i| pixels[i * p..(i + 1) * p].iter().copied())
            .collect();
        ImageSet::new(
            images,
            idx.iter().map(|&i| labels[i]).collect(),
            1,
            DIGITS_SIDE,
            DIGITS_SIDE,
            10,
        )
    };
    Ok(Split {
        train: gather(train)?,
        test: gather(test)?,
        split_seed: None,
        description: format!(
            "digits (UCI optical handwritten digits, embedded), 1×8×8, 10 classes, \
             {} train / {} test from explicit indices",
            train.len(),
            test.len()
        ),
    })
}

/// All 1797 images scaled to `[0, 1]` and their labels, checked (smartcore ships them as f32).
fn digits_raw() -> Result<(Vec<f32>, Vec<u32>), DataError> {
    let ds = smartcore::dataset::digits::load_dataset();
    let p = DIGITS_SIDE * DIGITS_SIDE;
    if ds.data.len() != DIGITS_N * p || ds.target.len() != DIGITS_N {
        return Err(DataError::Inconsistent {
            reason: format!(
                "smartcore digits has {} values and {} labels, expected {} and {DIGITS_N}",
                ds.data.len(),
                ds.target.len(),
                DIGITS_N * p
            ),
        });
    }
    let pixels: Vec<f32> = ds.data.iter().map(|&v| v / 16.0).collect();
    let labels = ds
        .target
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            if t.fract() == 0.0 && (0.0..10.0).contains(&t) {
                Ok(t as u32)
            } else {
                Err(DataError::Inconsistent {
                    reason: format!("smartcore digits label {t} of sample {i} is not in 0..=9"),
                })
            }
        })
        .collect::<Result<_, _>>()?;
    Ok((pixels, labels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Dataset;

    #[test]
    fn split_is_a_deterministic_disjoint_partition() {
        let a = digits_permutation(7);
        assert_eq!(a, digits_permutation(7));
        assert_ne!(a, digits_permutation(8));
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..DIGITS_N).collect::<Vec<_>>());
        // Not the identity: P(identity) = 1/1797!, so equality would mean no shuffle happened.
        assert_ne!(a, (0..DIGITS_N).collect::<Vec<_>>());
    }

    #[test]
    fn loaded_split_matches_its_permutation() {
        let split = load_digits(3).unwrap();
        assert_eq!(split.split_seed, Some(3));
        assert_eq!((split.train.len(), split.test.len()), (1437, 360));
        assert_eq!(
            (split.train.channels, split.train.height, split.train.width),
            (1, 8, 8)
        );
        let (pixels, labels) = digits_raw().unwrap();
        let perm = digits_permutation(3);
        // Sample k of the test set is raw sample perm[1437 + k], in shuffled order.
        for k in [0, 1, 359] {
            let i = perm[DIGITS_TRAIN + k];
            assert_eq!(split.test.labels[k], labels[i]);
            assert_eq!(split.test.image(k).unwrap(), &pixels[i * 64..(i + 1) * 64]);
        }
        let all: Vec<f32> = split
            .train
            .images
            .iter()
            .chain(&split.test.images)
            .copied()
            .collect();
        assert!(all.iter().all(|v| (0.0..=1.0).contains(v)));
        // The raw values are the integers 0..=16, so both ends of [0, 1] occur.
        assert_eq!(all.iter().cloned().fold(f32::MAX, f32::min), 0.0);
        assert_eq!(all.iter().cloned().fold(f32::MIN, f32::max), 1.0);
        // Every value is a multiple of 1/16 (exact in f32).
        assert!(all.iter().all(|v| (v * 16.0).fract() == 0.0));
    }

    #[test]
    fn label_counts_are_sane() {
        let split = load_digits(0).unwrap();
        let mut total = split.train.class_counts();
        for (t, c) in total.iter_mut().zip(split.test.class_counts()) {
            *t += c;
        }
        // The UCI digits (scikit-learn's load_digits) hold these many images of classes 0..=9.
        assert_eq!(
            total,
            vec![178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
        );
        // Test counts: each class has p ≈ 0.1 of 360 draws without replacement; sd ≈ √(360·0.1·0.9·(1437/1796)) ≈ 5.1,
        // so 36 ± 5 sd = [10, 62] is violated with probability < 1e-6 per class.
        assert!(split
            .test
            .class_counts()
            .iter()
            .all(|&c| (10..=62).contains(&c)));
    }

    #[test]
    fn explicit_split_rejects_bad_indices() {
        let err = load_digits_with_split(&[0, 1797], &[]).unwrap_err();
        assert!(err.to_string().contains("1797"), "{err}");
        let err = load_digits_with_split(&[0, 5], &[5]).unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
        let ok = load_digits_with_split(&[4, 2], &[9]).unwrap();
        assert_eq!(ok.split_seed, None);
        assert_eq!((ok.train.len(), ok.test.len()), (2, 1));
    }
}
