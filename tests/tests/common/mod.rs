//! Helpers shared by the end-to-end tests: run outputs with the fields that differ between any two
//! runs (wall-clock times, rates, memory) removed, so that resumed and uninterrupted runs compare
//! exactly; the path of an up-to-date `bmt` binary (why it is found this way: `crash_resume.rs`);
//! and the largest elementwise difference of two tensors.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::SystemTime;

use candle_core::Tensor;
use serde_json::Value;

/// Removes, recursively, every key containing `seconds` or ending in `_s`, and `steps_per_second`
/// and `peak_memory_mib`.
pub fn strip_time(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, _| {
                !k.contains("seconds")
                    && !k.ends_with("_s")
                    && k != "steps_per_second"
                    && k != "peak_memory_mib"
            });
            m.values_mut().for_each(strip_time);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_time),
        _ => {}
    }
}

/// Every record of a run's `metrics.jsonl`, without timing fields.
pub fn metrics_without_time(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            strip_time(&mut v);
            v
        })
        .collect()
}

/// A JSON file (`summary.json`, `config.json`) without timing fields.
pub fn json_without_time(path: &Path) -> Value {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    strip_time(&mut v);
    v
}

/// The newest modification time of the files under `dir` (recursively).
fn newest_mtime(dir: &Path) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return newest;
    };
    for e in entries.flatten() {
        let p = e.path();
        let t = if p.is_dir() {
            newest_mtime(&p)
        } else {
            e.metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH)
        };
        newest = newest.max(t);
    }
    newest
}

/// The path of an up-to-date `bmt` binary (see the module documentation).
pub fn bmt() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test executable's path");
        // <target>/<profile>/deps/<test> → <target>/<profile>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test executable lies in <target>/<profile>/deps")
            .to_path_buf();
        let bin = profile_dir.join(format!("bmt{}", std::env::consts::EXE_SUFFIX));
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut sources = newest_mtime(&root.join("crates"));
        for f in ["Cargo.toml", "Cargo.lock"] {
            if let Ok(t) = std::fs::metadata(root.join(f)).and_then(|m| m.modified()) {
                sources = sources.max(t);
            }
        }
        let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
        if built.is_none_or(|b| b < sources) {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.current_dir(&root)
                .args(["build", "-p", "bmt-trainer", "--bin", "bmt"])
                .env("CARGO_TARGET_DIR", profile_dir.parent().expect("<target>"));
            if profile_dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("running cargo to build the bmt binary");
            assert!(status.success(), "building the bmt binary failed");
        }
        assert!(bin.is_file(), "no bmt binary at {}", bin.display());
        bin
    })
}

/// `max |a − b|` over every element of two `f32` tensors of one shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}
