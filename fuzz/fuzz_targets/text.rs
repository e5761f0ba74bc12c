//! Fuzzes the block-wise text split: the first byte picks the context (0..=63), the second the
//! validation fraction (byte/200, so values ≥ 1 are exercised too), the next eight the seed; the
//! rest is the text. `Ok` splits must tile the input with blocks that each hold a window.
#![no_main]

use bmt_trainer::data::{split_text, Dataset};
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fuzz_target!(|data: &[u8]| {
    if data.len() < 10 {
        return;
    }
    let context = usize::from(data[0] % 64);
    let fraction = f64::from(data[1]) / 200.0;
    let seed = u64::from_le_bytes(data[2..10].try_into().unwrap());
    let text = &data[10..];
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    if let Ok(split) = split_text(text, "fuzz", context, fraction, &mut rng) {
        let mut ranges: Vec<_> = split
            .train
            .source_ranges()
            .iter()
            .chain(split.test.source_ranges())
            .cloned()
            .collect();
        ranges.sort_by_key(|r| r.start);
        let mut end = 0;
        for r in &ranges {
            assert_eq!(r.start, end);
            assert!(r.len() > context);
            end = r.end;
        }
        assert_eq!(end, text.len());
        for set in [&split.train, &split.test] {
            if !set.is_empty() {
                let (x, y) = set.window(set.len() - 1).unwrap();
                assert_eq!(&x[1..], &y[..context - 1]);
            }
        }
    }
});
