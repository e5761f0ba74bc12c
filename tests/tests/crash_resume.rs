//! Crash safety of the `bmt` binary: a W1 run killed with SIGKILL at seeded random moments (one
//! of them while a checkpoint is being written) and resumed each time with `--resume DIR` ends
//! with exactly the checkpoint tensors and metrics of an uninterrupted run. A run killed before
//! its first checkpoint is refused by `--resume` with a clear error and restarts fresh; a planted
//! half-written `.tmp` file and a truncated newest checkpoint are reported with the last good one.
//!
//! The binary (`common::bmt`). Cargo gives `CARGO_BIN_EXE_<name>` only to the integration tests of the package
//! that owns the binary (`bmt-trainer`), and a dev-dependency on `bmt-trainer` links its library
//! but never builds its binaries (artifact dependencies are nightly-only). So the binary is found
//! beside this test executable (`<target>/<profile>/bmt`, which follows `CARGO_TARGET_DIR`), and
//! built with `cargo build -p bmt-trainer --bin bmt` only when it is missing or older than a
//! source file of the workspace's library crates. `cargo test --release --workspace` builds the
//! binary itself (it is a target of a workspace member with integration tests), so in CI no
//! nested build runs; a nested build of the lone package could otherwise compile the
//! dependencies once more with another feature set.

mod common;
use common::{bmt, json_without_time, metrics_without_time};

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Epochs of every run here: 4 × 22 steps of W1, about 3 s per epoch on one loaded core.
const EPOCHS: usize = 4;

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bmt-crash-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// `bmt train` of W1 for `epochs` epochs into `out`.
fn train(out: &Path, epochs: usize) -> Command {
    let mut c = Command::new(bmt());
    c.args(["train", "--no-diagnostics", "--threads", "1", "--quiet"])
        .arg("--epochs")
        .arg(epochs.to_string())
        .arg("--out")
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// `bmt train --resume dir` (to `epochs` in total when given).
fn resume(dir: &Path, epochs: Option<usize>) -> Command {
    let mut c = Command::new(bmt());
    c.args(["train", "--threads", "1", "--quiet", "--resume"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(e) = epochs {
        c.arg("--epochs").arg(e.to_string());
    }
    c
}

fn run_to_end(mut c: Command) -> Output {
    c.output().expect("spawning bmt")
}

fn stderr_of(mut child: Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

/// The uninterrupted reference run and its wall time (shared by the tests of this file).
fn reference() -> &'static (PathBuf, Duration) {
    static REF: OnceLock<(PathBuf, Duration)> = OnceLock::new();
    REF.get_or_init(|| {
        let dir = tmp("reference");
        let t = Instant::now();
        let out = run_to_end(train(&dir, EPOCHS));
        assert!(
            out.status.success(),
            "reference run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (dir, t.elapsed())
    })
}

fn checkpoint_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("checkpoints"))
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The run in `dir` equals the reference bit for bit: every metric record and the summary (wall
/// times removed), the final checkpoint's tensors and run state, the checkpoint files kept.
fn assert_equals_reference(dir: &Path) {
    let (reference, _) = reference();
    let want = metrics_without_time(reference);
    assert_eq!(want.iter().filter(|v| v["kind"] == "epoch").count(), EPOCHS);
    assert_eq!(metrics_without_time(dir), want, "metrics differ");
    assert_eq!(
        json_without_time(&dir.join("summary.json")),
        json_without_time(&reference.join("summary.json"))
    );
    assert_eq!(
        json_without_time(&dir.join("config.json")),
        json_without_time(&reference.join("config.json"))
    );
    assert_eq!(checkpoint_files(dir), checkpoint_files(reference));
    let (a, ma) = bmt_trainer::checkpoint::load_latest(reference)
        .unwrap()
        .unwrap();
    let (b, mb) = bmt_trainer::checkpoint::load_latest(dir).unwrap().unwrap();
    assert_eq!((ma.epoch, ma.step), (EPOCHS, EPOCHS * 22));
    assert_eq!((mb.epoch, mb.step), (ma.epoch, ma.step));
    assert_eq!(mb.best_test_accuracy, ma.best_test_accuracy);
    assert_eq!(mb.extra, ma.extra);
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, t) in &a {
        let x = t
            .flatten_all()
            .unwrap()
            .to_dtype(candle_core::DType::F64)
            .unwrap();
        let y = b[k]
            .flatten_all()
            .unwrap()
            .to_dtype(candle_core::DType::F64)
            .unwrap();
        assert_eq!(
            x.to_vec1::<f64>().unwrap(),
            y.to_vec1::<f64>().unwrap(),
            "checkpoint tensor {k} differs"
        );
    }
}

/// How a kill went.
#[derive(Debug)]
struct Killed {
    /// Seconds after the spawn.
    at: f64,
    /// The `.tmp` file being written existed when the process died, its final name did not.
    mid_write: bool,
}

/// Polls every 200 µs until `deadline` after the spawn or until one of the `watch` files appears
/// (whichever comes first), then sends SIGKILL. Panics if the process exits on its own first.
/// `mid_write` refers to `watch[0]`, a `.tmp` file.
fn kill_at(mut child: Child, deadline: Duration, watch: &[&Path]) -> Killed {
    let start = Instant::now();
    loop {
        if watch.iter().any(|w| w.exists()) || start.elapsed() >= deadline {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "bmt exited ({status}) before the planned kill: {}",
                stderr_of(child)
            );
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    child.kill().unwrap(); // SIGKILL on Unix
    let at = start.elapsed().as_secs_f64();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the process was killed: {status}");
    let mid_write = watch
        .first()
        .is_some_and(|w| w.exists() && !w.with_extension("").exists());
    Killed { at, mid_write }
}

/// SIGKILL three times at seeded moments (before the first checkpoint; while the second
/// checkpoint's `.tmp` is being written; at a uniform time inside the resumed run), resuming each
/// time; the finished run equals the uninterrupted one exactly.
#[test]
fn killed_three_times_and_resumed_equals_uninterrupted() {
    let (_, ref_wall) = reference();
    let epoch = ref_wall.as_secs_f64() / EPOCHS as f64;
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let dir = tmp("killed");
    let ckpt = dir.join("checkpoints");

    // Kill 1: a uniform moment in the first 80% of the first epoch, or as soon as the first
    // checkpoint's .tmp file appears, whichever is first: no checkpoint exists yet.
    let t1 = Duration::from_secs_f64(rng.random_range(0.1..0.8) * epoch);
    let first_tmp = ckpt.join("epoch-0001.safetensors.tmp");
    let k1 = kill_at(train(&dir, EPOCHS).spawn().unwrap(), t1, &[&first_tmp]);
    assert!(
        !ckpt.join("epoch-0001.safetensors").exists(),
        "killed at {k1:?}, yet the first checkpoint exists"
    );
    let out = run_to_end(resume(&dir, None));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("no checkpoint") && err.contains("without --resume"),
        "{err}"
    );

    // Starting fresh in the same directory works; kill 2 as soon as the second checkpoint's
    // temporary file appears (the writer is then writing or syncing it), or, if the write is too
    // fast to be seen, as soon as the checkpoint itself appears.
    let second_tmp = ckpt.join("epoch-0002.safetensors.tmp");
    let second = ckpt.join("epoch-0002.safetensors");
    let k2 = kill_at(
        train(&dir, EPOCHS).spawn().unwrap(),
        Duration::from_secs_f64(30.0 * epoch),
        &[&second_tmp, &second],
    );
    let list = bmt_trainer::checkpoint::list(&dir).unwrap();
    let newest = list.last().map(|l| l.0);
    assert!(
        newest == Some(1) || (newest == Some(2) && !k2.mid_write),
        "{list:?}"
    );

    // Kill 3: a uniform moment within the resumed run's first 1.5 epochs of training.
    let t3 = Duration::from_secs_f64(rng.random_range(0.3..1.5) * epoch);
    let k3 = kill_at(resume(&dir, None).spawn().unwrap(), t3, &[]);

    let out = run_to_end(resume(&dir, None));
    assert!(
        out.status.success(),
        "final resume failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "epoch ≈ {epoch:.2} s; kill 1 at {:.3} s, kill 2 at {:.3} s (mid-write: {}), kill 3 at {:.3} s",
        k1.at, k2.at, k2.mid_write, k3.at
    );
    assert_equals_reference(&dir);
    assert!(
        checkpoint_files(&dir).iter().all(|f| !f.ends_with(".tmp")),
        "a stale temporary file survived: {:?}",
        checkpoint_files(&dir)
    );
}

/// A half-written `.tmp` of epoch 3 and a truncated epoch-2 checkpoint (what a crash on a file
/// system without atomic rename, or a damaged disk, would leave): `--resume` refuses with one line
/// naming the damaged file and the last good checkpoint; once the damaged file is moved away, the
/// run resumes from epoch 1 and ends equal to the uninterrupted one.
#[test]
fn planted_half_written_and_truncated_checkpoints() {
    reference();
    let dir = tmp("planted");
    let out = run_to_end(train(&dir, 2));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ckpt = dir.join("checkpoints");
    let second = ckpt.join("epoch-0002.safetensors");
    let bytes = std::fs::read(&second).unwrap();
    std::fs::write(
        ckpt.join("epoch-0003.safetensors.tmp"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    std::fs::write(&second, &bytes[..bytes.len() * 2 / 3]).unwrap();

    let out = run_to_end(resume(&dir, Some(EPOCHS)));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("epoch-0002.safetensors is damaged")
            && err.contains("last good checkpoint")
            && err.contains("epoch-0001.safetensors"),
        "{err}"
    );

    std::fs::rename(&second, dir.join("damaged-epoch-0002.safetensors")).unwrap();
    let out = run_to_end(resume(&dir, Some(EPOCHS)));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_equals_reference(&dir);
}
