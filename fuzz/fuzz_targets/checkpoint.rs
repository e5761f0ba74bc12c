//! Fuzzes checkpoint loading (`checkpoint::load_bytes`, the byte-slice half of `load`): any
//! input must give `Ok` with a verified checksum or a typed `TrainError`, never a panic, and never
//! an allocation out of proportion to the input (safetensors header lengths, shapes, offsets and
//! dtypes, the format/crc32/meta metadata and the run-state JSON are all attacker-controlled).
//!
//! Each input is tried twice:
//! 1. as the raw bytes of a file;
//! 2. as an edit script on a small valid checkpoint written by `checkpoint::save` (built once per
//!    process): every 3 bytes `(lo, hi, x)` XOR byte `x` into offset `u16(lo, hi) mod len`, and a
//!    final short tail (fewer than 3 bytes) truncates the file to `len - tail[0]`. This keeps
//!    the checksum/metadata/JSON paths reachable even after the corpus drifts from the seed.
//!
//! With `BMT_FUZZ_DUMP_SEED=PATH` in the environment, the valid checkpoint is also written to
//! PATH (that is how `fuzz/seeds/checkpoint/valid.safetensors` was made).
#![no_main]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use bmt_trainer::checkpoint::{self, CheckpointMeta};
use candle_core::{Device, Tensor};
use libfuzzer_sys::fuzz_target;

/// A valid checkpoint with the dtypes the trainer saves (f32 weights, f64 and u32 state).
fn valid() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("bmt-fuzz-ckpt-{}", std::process::id()));
        let mut t = BTreeMap::new();
        let w = Tensor::new(&[[0.5f32, -1.0, 2.0], [0.0, 1.5, -0.25]], &Device::Cpu).unwrap();
        t.insert("model.w".to_string(), w);
        let s = Tensor::new(&[3.0f64], &Device::Cpu).unwrap();
        t.insert("optim.step".to_string(), s);
        let c = Tensor::new(&[1u32, 7], &Device::Cpu).unwrap();
        t.insert("diag.count".to_string(), c);
        // Through serde, so fields added later with `#[serde(default)]` need no change here.
        let meta: CheckpointMeta = serde_json::from_value(serde_json::json!({
            "epoch": 1, "step": 4, "wall_seconds": 0.5, "best_test_accuracy": 0.25,
            "seconds_to_95pct": null, "train_seconds": 0.25, "best_bits_per_byte": 1.5,
            "extra": {"k": [1, 2]}
        }))
        .unwrap();
        let path = checkpoint::save(&dir, &t, &meta).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(checkpoint::load_bytes(&bytes, Path::new("seed")).is_ok());
        if let Some(out) = std::env::var_os("BMT_FUZZ_DUMP_SEED") {
            std::fs::write(out, &bytes).unwrap();
        }
        bytes
    })
}

/// Loads `bytes`; on success the tensors must not hold more data than the file did.
fn check(bytes: &[u8]) {
    if let Ok((tensors, _meta)) = checkpoint::load_bytes(bytes, Path::new("fuzz")) {
        let held: usize = tensors
            .values()
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum();
        assert!(held <= bytes.len(), "{held} tensor bytes from a {}-byte file", bytes.len());
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let mut edited = valid().to_vec();
    let mut chunks = data.chunks_exact(3);
    for e in &mut chunks {
        let at = usize::from(u16::from_le_bytes([e[0], e[1]])) % edited.len();
        edited[at] ^= e[2];
    }
    if let Some(&cut) = chunks.remainder().first() {
        edited.truncate(edited.len().saturating_sub(usize::from(cut)));
    }
    check(&edited);
});
