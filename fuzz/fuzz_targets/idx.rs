//! Fuzzes the idx (MNIST) parsers and the bounded gzip decompressor: any input must give `Ok`
//! with consistent sizes or a typed `DataError`, never a panic or an oversized allocation.
#![no_main]

use bmt_trainer::data::{decompress_gzip_idx, parse_idx_images, parse_idx_labels};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(images) = parse_idx_images(data, "fuzz") {
        assert_eq!(images.pixels.len(), images.count * images.rows * images.cols);
        assert_eq!(data.len(), 16 + images.pixels.len());
    }
    if let Ok(labels) = parse_idx_labels(data, "fuzz") {
        assert_eq!(data.len(), 8 + labels.labels.len());
        assert!(labels.labels.iter().all(|&l| l <= 9));
    }
    // The same bytes as a gzip stream: decompression is bounded by the idx header it contains.
    if let Ok(raw) = decompress_gzip_idx(data, "fuzz") {
        let _ = parse_idx_images(&raw, "fuzz");
        let _ = parse_idx_labels(&raw, "fuzz");
    }
});
