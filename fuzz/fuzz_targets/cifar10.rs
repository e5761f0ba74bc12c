//! Fuzzes the CIFAR-10 binary batch parser: `Ok` only for whole 3073-byte records with labels
//! in 0..=9, otherwise a typed `DataError`; never a panic.
#![no_main]

use bmt_trainer::data::{parse_cifar10_batch, Dataset, CIFAR10_RECORD_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(set) = parse_cifar10_batch(data, "fuzz") {
        assert_eq!(set.len() * CIFAR10_RECORD_BYTES, data.len());
        assert!(set.labels.iter().all(|&l| l < 10));
        assert!(set.images.iter().all(|v| (0.0..=1.0).contains(v)));
    }
});
