//! Bounded property-based fuzzing of the byte-slice parsers (idx, gzip idx, CIFAR-10, text):
//! random bytes and mutations of valid files must give `Ok` or a typed [`DataError`], never a
//! panic, and no single allocation may exceed what the input justifies.
//!
//! The allocation bound is measured, not assumed: this test binary installs a global allocator
//! that records, per thread, the largest single allocation request made while a parser runs.
//! Justified sizes: the idx parsers borrow their input (no allocation beyond error strings); gzip
//! decompression stores at most the decompressed bytes produced, growing a `Vec` by doubling
//! (≤ 2× what it holds, and never more than the header declares); a CIFAR batch becomes `4·3072`
//! bytes of f32 per `3073` input bytes; a text split copies the input once across its two sets
//! and keeps one 16-byte range and a few words of bookkeeping per block, at most `n/2` blocks.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bmt_trainer::data::{
    decompress_gzip_idx, parse_cifar10_batch, parse_idx_images, parse_idx_labels, split_text,
    DataError, Dataset, CIFAR10_RECORD_BYTES,
};
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

struct Counting;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with` tolerates allocations during thread teardown.
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns its result with the largest single allocation it requested.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    let out = f();
    (out, LARGEST.with(|l| l.get()))
}

/// Allowance for fixed-size bookkeeping: error strings, formatting buffers, small vectors.
const SLACK: usize = 4096;

/// Every error must render as one non-empty line.
fn check_error(e: &DataError) {
    let msg = e.to_string();
    assert!(!msg.is_empty() && !msg.contains('\n'), "{msg:?}");
}

/// Applies byte edits to a valid file: overwrite, truncate or append.
#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, u8),
    /// Overwrites the big-endian header word `i mod 5` (magic or a dimension).
    SetWord(usize, u32),
    Truncate(usize),
    Append(Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        1 => (any::<usize>(), prop_oneof![Just(0u32), Just(u32::MAX), 0u32..12, any::<u32>()])
            .prop_map(|(i, w)| Mutation::SetWord(i, w)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => prop::collection::vec(any::<u8>(), 1..8).prop_map(Mutation::Append),
    ]
}

fn mutate(mut bytes: Vec<u8>, edits: &[Mutation]) -> Vec<u8> {
    for m in edits {
        match m {
            Mutation::Set(i, b) if !bytes.is_empty() => {
                let n = bytes.len();
                // Bias towards the header, where the interesting fields are.
                let at = if i % 2 == 0 { i % n.min(20) } else { i % n };
                bytes[at] = *b;
            }
            Mutation::Set(..) => {}
            Mutation::SetWord(i, w) => {
                let at = 4 * (i % 5);
                if bytes.len() >= at + 4 {
                    bytes[at..at + 4].copy_from_slice(&w.to_be_bytes());
                }
            }
            Mutation::Truncate(i) => bytes.truncate(i % (bytes.len() + 1)),
            Mutation::Append(tail) => bytes.extend_from_slice(tail),
        }
    }
    bytes
}

/// A valid idx file: images (rank 3) or labels (rank 1), from small dims and a pixel seed.
fn idx_file(images: bool, n: u32, rows: u32, cols: u32, seed: u8) -> Vec<u8> {
    let (magic, dims, len) = if images {
        (3u8, vec![n, rows, cols], n * rows * cols)
    } else {
        (1u8, vec![n], n)
    };
    let mut b = vec![0, 0, 8, magic];
    for d in dims {
        b.extend_from_slice(&d.to_be_bytes());
    }
    b.extend((0..len).map(|k| {
        if images {
            (k as u8).wrapping_mul(seed)
        } else {
            (k % 10) as u8
        }
    }));
    b
}

fn idx_strategy() -> impl Strategy<Value = Vec<u8>> {
    let valid = (any::<bool>(), 0u32..6, 1u32..5, 1u32..5, any::<u8>())
        .prop_map(|(im, n, r, c, s)| idx_file(im, n, r, c, s));
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..64),
        3 => (valid, prop::collection::vec(mutation(), 0..4)).prop_map(|(v, m)| mutate(v, &m)),
    ]
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn idx_parsers_never_panic_or_overallocate(bytes in idx_strategy()) {
        let (images, largest) = largest_allocation(|| parse_idx_images(&bytes, "fuzz"));
        prop_assert!(largest <= SLACK, "parse_idx_images allocated {largest} bytes");
        match images {
            Ok(im) => {
                prop_assert_eq!(im.pixels.len(), im.count * im.rows * im.cols);
                prop_assert_eq!(bytes.len(), 16 + im.pixels.len());
            }
            Err(e) => check_error(&e),
        }
        let (labels, largest) = largest_allocation(|| parse_idx_labels(&bytes, "fuzz"));
        prop_assert!(largest <= SLACK, "parse_idx_labels allocated {largest} bytes");
        match labels {
            Ok(l) => {
                prop_assert_eq!(bytes.len(), 8 + l.labels.len());
                prop_assert!(l.labels.iter().all(|&v| v <= 9));
            }
            Err(e) => check_error(&e),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    /// Mutated payloads behind a valid gzip wrapper, and mutated gzip streams.
    #[test]
    fn gzip_idx_never_panics_or_overallocates(
        payload in idx_strategy(),
        edits in prop::collection::vec(mutation(), 0..3),
    ) {
        let compressed = mutate(gzip(&payload), &edits);
        let (out, largest) = largest_allocation(|| decompress_gzip_idx(&compressed, "fuzz"));
        // flate2's own state (input buffer, inflate tables) is a fixed ~100 KiB; beyond it, the
        // output vector holds at most the bytes decompressed so far, doubled by `Vec` growth.
        // Unmutated streams decompress to `payload` whatever size its (mutated) header declares;
        // a mutated deflate stream expands at most 1032× (deflate's maximum ratio).
        let produced_bound = if edits.is_empty() { payload.len() } else { 1032 * compressed.len() };
        prop_assert!(largest <= 2 * produced_bound + GZIP_SLACK, "allocated {largest}");
        match out {
            Ok(raw) => {
                prop_assert!(largest <= 2 * raw.len() + GZIP_SLACK, "allocated {largest} for {}", raw.len());
                if edits.is_empty() {
                    prop_assert!(payload.starts_with(&raw));
                }
                if let Err(e) = parse_idx_images(&raw, "fuzz") { check_error(&e) }
            }
            Err(e) => check_error(&e),
        }
    }
}

/// Fixed allocations of the gzip decoder (buffered reader and inflate state).
const GZIP_SLACK: usize = 128 * 1024;

fn cifar_strategy() -> impl Strategy<Value = Vec<u8>> {
    let valid = (1usize..4, any::<u8>()).prop_map(|(n, seed)| {
        (0..n * CIFAR10_RECORD_BYTES)
            .map(|k| {
                if k % CIFAR10_RECORD_BYTES == 0 {
                    (k / 3073 % 10) as u8
                } else {
                    (k as u8) ^ seed
                }
            })
            .collect::<Vec<u8>>()
    });
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..4000),
        3 => (valid, prop::collection::vec(mutation(), 0..3)).prop_map(|(v, m)| {
            // Aim edits at labels too: Set(i) with i ≡ 0 mod 3073 hits a label byte.
            mutate(v, &m)
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn cifar_parser_never_panics_or_overallocates(bytes in cifar_strategy()) {
        let (out, largest) = largest_allocation(|| parse_cifar10_batch(&bytes, "fuzz"));
        prop_assert!(largest <= 4 * bytes.len() + SLACK, "allocated {largest} for {} bytes", bytes.len());
        match out {
            Ok(set) => {
                prop_assert_eq!(set.len() * CIFAR10_RECORD_BYTES, bytes.len());
                prop_assert!(set.labels.iter().all(|&l| l < 10));
                prop_assert!(set.images.iter().all(|v| (0.0..=1.0).contains(v)));
            }
            Err(e) => check_error(&e),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn text_split_never_panics_and_partitions(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        context in 0usize..40,
        fraction in prop_oneof![Just(0.0), 0.0f64..1.0, Just(1.0), Just(-0.5), Just(f64::NAN)],
        seed in any::<u64>(),
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (out, largest) =
            largest_allocation(|| split_text(&bytes, "fuzz", context, fraction, &mut rng));
        // One copy of the input per set (≤ n each) and ≤ n/2 blocks of ≤ 16 + 3·8 bytes.
        prop_assert!(largest <= 20 * bytes.len() + SLACK, "allocated {largest}");
        match out {
            Ok(split) => {
                let mut ranges: Vec<_> = split.train.source_ranges().iter()
                    .chain(split.test.source_ranges()).cloned().collect();
                ranges.sort_by_key(|r| r.start);
                // Blocks tile 0..n exactly, each long enough for a window.
                let mut end = 0;
                for r in &ranges {
                    prop_assert_eq!(r.start, end);
                    prop_assert!(r.len() > context);
                    end = r.end;
                }
                prop_assert_eq!(end, bytes.len());
                prop_assert!(!split.train.is_empty());
                prop_assert_eq!(split.test.is_empty(), fraction == 0.0);
                let last = split.train.len() - 1;
                let (x, y) = split.train.window(last).unwrap();
                prop_assert_eq!(&x[1..], &y[..context - 1]);
            }
            Err(e) => check_error(&e),
        }
    }
}

#[test]
fn allocation_probe_sees_allocations() {
    // The bound checks above are vacuous unless the probe records real requests.
    let (v, largest) = largest_allocation(|| vec![1u8; 100_000]);
    assert_eq!(v.len(), 100_000);
    assert!(largest >= 100_000, "{largest}");
    let (_, none) = largest_allocation(|| parse_idx_labels(&[0, 0, 8, 1, 0, 0, 0, 1, 5], "x"));
    assert_eq!(none, 0);
}

#[test]
fn idx_strategy_reaches_every_outcome() {
    // The fuzz is only as good as its inputs: tally outcomes over 600 draws of the strategy.
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]),
    );
    let strategy = idx_strategy();
    let mut seen = std::collections::BTreeMap::<&str, usize>::new();
    for _ in 0..600 {
        let bytes = strategy.new_tree(&mut runner).unwrap().current();
        for r in [
            parse_idx_images(&bytes, "x").map(|_| ()),
            parse_idx_labels(&bytes, "x").map(|_| ()),
        ] {
            let key = match r {
                Ok(()) => "ok",
                Err(DataError::BadMagic { .. }) => "magic",
                Err(DataError::Truncated { .. }) => "truncated",
                Err(DataError::TrailingBytes { .. }) => "trailing",
                Err(DataError::BadHeader { .. }) => "header",
                Err(DataError::LabelOutOfRange { .. }) => "label",
                Err(_) => "other",
            };
            *seen.entry(key).or_default() += 1;
        }
    }
    for key in ["ok", "magic", "truncated", "trailing", "header", "label"] {
        assert!(
            seen.get(key).copied().unwrap_or(0) > 0,
            "{key} never reached: {seen:?}"
        );
    }
    assert_eq!(seen.get("other"), None);
}
