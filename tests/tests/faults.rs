//! Fault injection: divergence, NaN input, degenerate K-FAC curvature, impossible configurations
//! and bad command lines. Each must end in a typed error naming what to do (or, for K-FAC, a
//! finite update with the breakdown counted), never a panic, a NaN parameter, a NaN metric or a
//! NaN checkpoint.

mod common;
use common::{bmt, max_abs_diff};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use bmt_kfac::{
    linear_vars, AdamWConfig, DampingKind, KfacConfig, KfacError, KfacOptimizer, LayerCapture,
    NamedParams, PreconditionedLayer, Solver, TrackedLinear,
};
use bmt_trainer::checkpoint;
use bmt_trainer::config::{NonFinitePolicy, OptimizerKind, TrainConfig};
use bmt_trainer::data::{load_digits, Dataset, DIGITS_TRAIN};
use bmt_trainer::kfac::KfacSettings;
use bmt_trainer::model::Transformer;
use bmt_trainer::run::{run, RunOptions, Trainer};
use bmt_trainer::TrainError;
use candle_core::{DType, Device, Module, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bmt-faults-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn quiet() -> RunOptions {
    RunOptions {
        quiet: true,
        ..Default::default()
    }
}

/// Every tensor of `tensors` holds only finite values; returns the name of the first that does not.
fn first_non_finite<'a>(
    tensors: impl IntoIterator<Item = (&'a String, &'a Tensor)>,
) -> Option<String> {
    for (name, t) in tensors {
        let v = t
            .flatten_all()
            .and_then(|t| t.to_dtype(DType::F64))
            .and_then(|t| t.to_vec1::<f64>())
            .unwrap();
        if v.iter().any(|x| !x.is_finite()) {
            return Some(name.clone());
        }
    }
    None
}

/// A metric value that is `null` (how serde_json writes NaN and ∞) or a non-finite number.
fn find_non_finite(v: &Value, path: &str) -> Option<String> {
    match v {
        Value::Null => Some(path.to_string()),
        Value::Number(n) if !n.as_f64().is_some_and(f64::is_finite) => Some(path.to_string()),
        Value::Object(m) => m
            .iter()
            .find_map(|(k, x)| find_non_finite(x, &format!("{path}.{k}"))),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .find_map(|(i, x)| find_non_finite(x, &format!("{path}[{i}]"))),
        _ => None,
    }
}

/// Runs `config` into a fresh directory, expects [`TrainError::Diverged`], and checks what the
/// run left: the error names the epoch and the step (consistent with the steps per epoch) and the
/// newest checkpoint (or says none exists); every checkpoint kept is finite; every metric record
/// is finite; no summary was written. Returns `(epoch, step)`.
fn assert_diverges_cleanly(config: TrainConfig, tag: &str) -> (usize, usize) {
    let out = tmp(tag);
    let steps_per_epoch = DIGITS_TRAIN / config.batch_size;
    let epochs = config.epochs;
    let err = run(config, &out, &quiet()).expect_err("the run must stop");
    let msg = err.to_string();
    let TrainError::Diverged {
        epoch, step, hint, ..
    } = &err
    else {
        panic!("expected TrainError::Diverged, got: {msg}");
    };
    let (epoch, step) = (*epoch, *step);
    assert!((1..=epochs).contains(&epoch), "{msg}");
    assert!(
        (epoch - 1) * steps_per_epoch < step && step <= epoch * steps_per_epoch,
        "step {step} is not in epoch {epoch} of {steps_per_epoch} steps: {msg}"
    );
    assert!(
        msg.contains(&format!("epoch {epoch}, step {step}")),
        "{msg}"
    );
    let kept = checkpoint::list(&out).unwrap();
    match kept.last() {
        None => assert!(hint.contains("No checkpoint was written yet"), "{msg}"),
        Some((e, path)) => {
            assert_eq!(
                *e,
                epoch - 1,
                "the newest checkpoint precedes the failing epoch"
            );
            assert!(hint.contains(&path.display().to_string()), "{msg}");
            assert!(hint.contains("last good checkpoint"), "{msg}");
        }
    }
    for (e, path) in &kept {
        let (tensors, _) = checkpoint::load(path).unwrap();
        assert_eq!(
            first_non_finite(&tensors),
            None,
            "checkpoint of epoch {e} holds a non-finite tensor, yet the error calls it good: {msg}"
        );
    }
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap_or_default();
    for line in metrics.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(
            find_non_finite(&v, "record"),
            None,
            "non-finite metric in {line}"
        );
    }
    assert!(!out.join("summary.json").exists());
    (epoch, step)
}

fn divergent(optimizer: OptimizerKind, lr: f64) -> TrainConfig {
    let mut c = TrainConfig::w1();
    c.optimizer = optimizer;
    c.lr = lr;
    c.epochs = 3;
    c.diagnostics = false;
    c.log_every = 1;
    c
}

/// AdamW with lr 1e6 (the decoupled decay alone multiplies every weight by 1 − 10⁴ per step) must
/// stop with `Diverged` within its 3 epochs.
#[test]
fn adamw_lr_1e6_stops_with_diverged() {
    assert_diverges_cleanly(divergent(OptimizerKind::Adamw, 1e6), "adamw");
}

/// SGD with lr 1e4 likewise.
#[test]
fn sgd_lr_1e4_stops_with_diverged() {
    assert_diverges_cleanly(divergent(OptimizerKind::Sgd, 1e4), "sgd");
}

/// One step per epoch (the batch is over half the training set), so the step whose update first makes
/// the weights non-finite is always the last of its epoch and is followed by an evaluation and a
/// checkpoint: neither may record NaN, and the checkpoint the error calls good must be finite.
#[test]
fn divergence_at_an_epoch_end_leaves_no_nan_checkpoint_or_metric() {
    let mut c = divergent(OptimizerKind::Adamw, 1e6);
    c.batch_size = DIGITS_TRAIN / 2 + 1; // 719: one batch per epoch, at half the cost of all 1437
    c.epochs = 30;
    let (epoch, _) = assert_diverges_cleanly(c, "epoch-end");
    assert!(
        epoch >= 2,
        "the first step cannot diverge: its loss uses the initial weights"
    );
}

fn w1_trainer(config: TrainConfig) -> Trainer {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let model =
        Transformer::init(config.model.clone(), &mut rng, DType::F32, &Device::Cpu).unwrap();
    Trainer::new(config, model, Device::Cpu).unwrap()
}

fn optimizer_state(t: &Trainer) -> BTreeMap<String, Tensor> {
    t.optimizer.state().unwrap().into_iter().collect()
}

fn assert_same(a: &BTreeMap<String, Tensor>, b: &BTreeMap<String, Tensor>, what: &str) {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{what}"
    );
    for (k, t) in a {
        let x = t
            .flatten_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let y = b[k]
            .flatten_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        // Bit patterns, so that NaN == NaN would not hide a change and -0 ≠ +0 would show one.
        let xb: Vec<u64> = x.iter().map(|v| v.to_bits()).collect();
        let yb: Vec<u64> = y.iter().map(|v| v.to_bits()).collect();
        assert!(xb == yb, "{what}: {k} changed");
    }
}

/// A NaN pixel in a batch: `train_step` returns `Diverged` at step 1 and changes neither the
/// parameters nor the optimizer state nor the step count; the next clean batch trains normally.
/// Checked for AdamW and for K-FAC (whose first step also records curvature captures).
#[test]
fn a_nan_pixel_is_diverged_and_changes_nothing() {
    let data = load_digits(0).unwrap();
    let mut poisoned = data.train.clone();
    let pixels = poisoned.pixels_per_image();
    poisoned.images[3 * pixels + 17] = f32::NAN; // sample 3, row 2, column 1
    let idx: Vec<usize> = (0..64).collect();
    let bad = poisoned.batch(&idx, &Device::Cpu).unwrap();
    let good = data.train.batch(&idx, &Device::Cpu).unwrap();
    for optimizer in [OptimizerKind::Adamw, OptimizerKind::Kfac] {
        let mut config = TrainConfig::w1();
        config.optimizer = optimizer;
        if optimizer == OptimizerKind::Kfac {
            config.lr = bmt_trainer::kfac::DEFAULT_LR;
        }
        let mut t = w1_trainer(config);
        let params = t.model.snapshot().unwrap();
        let state = optimizer_state(&t);
        let err = t
            .train_step(&bad)
            .expect_err("a NaN input must stop the step");
        assert!(
            matches!(err, TrainError::Diverged { step: 1, .. }),
            "{optimizer}: {err}"
        );
        assert!(err.to_string().contains("loss is NaN"), "{err}");
        assert_eq!(t.step, 0);
        assert_same(
            &params,
            &t.model.snapshot().unwrap(),
            "parameters after a NaN batch",
        );
        assert_same(
            &state,
            &optimizer_state(&t),
            "optimizer state after a NaN batch",
        );
        let ok = t.train_step(&good).unwrap();
        assert!(
            ok.loss.is_finite() && t.step == 1,
            "{optimizer}: {}",
            ok.loss
        );
        assert_eq!(first_non_finite(&t.model.snapshot().unwrap()), None);
    }
}

/// `--on-nonfinite skip`: a NaN batch is skipped (counted, step counter unchanged, parameters
/// and optimizer state bit-identical) and the next clean batch trains; an update that makes the
/// parameters infinite (AdamW with lr 1e39: finite in f64, ∞ once the f32 update is formed) is
/// undone bit for bit, and ten such steps in a row stop the run with `Diverged`.
#[test]
fn skip_policy_skips_and_undoes_non_finite_steps_and_stops_after_ten() {
    let data = load_digits(0).unwrap();
    let mut poisoned = data.train.clone();
    let pixels = poisoned.pixels_per_image();
    poisoned.images[5 * pixels] = f32::INFINITY;
    let idx: Vec<usize> = (0..64).collect();
    let bad = poisoned.batch(&idx, &Device::Cpu).unwrap();
    let good = data.train.batch(&idx, &Device::Cpu).unwrap();
    for optimizer in [OptimizerKind::Adamw, OptimizerKind::Kfac] {
        let mut config = TrainConfig::w1();
        config.optimizer = optimizer;
        config.on_nonfinite = NonFinitePolicy::Skip;
        if optimizer == OptimizerKind::Kfac {
            config.lr = bmt_trainer::kfac::DEFAULT_LR;
        }
        let mut t = w1_trainer(config);
        let params = t.model.snapshot().unwrap();
        let state = optimizer_state(&t);
        let out = t.train_step(&bad).unwrap();
        let why = out.skipped.expect("the step is skipped");
        assert!(why.contains("not finite") || why.contains("NaN"), "{why}");
        assert_eq!((t.step, t.skipped_steps), (0, 1));
        assert_same(
            &params,
            &t.model.snapshot().unwrap(),
            "parameters after a skipped step",
        );
        assert_same(
            &state,
            &optimizer_state(&t),
            "optimizer state after a skipped step",
        );
        let ok = t.train_step(&good).unwrap();
        assert!(ok.skipped.is_none() && ok.loss.is_finite() && t.step == 1);
    }

    let mut config = TrainConfig::w1();
    config.on_nonfinite = NonFinitePolicy::Skip;
    config.lr = 1e39;
    let mut t = w1_trainer(config);
    let params = t.model.snapshot().unwrap();
    let state = optimizer_state(&t);
    for k in 1..10 {
        let out = t.train_step(&good).unwrap();
        let why = out.skipped.expect("an infinite update is skipped");
        assert!(why.contains("update made parameter"), "{why}");
        assert_eq!((t.step, t.skipped_steps), (0, k));
        assert_same(
            &params,
            &t.model.snapshot().unwrap(),
            "parameters after an undone update",
        );
        assert_same(
            &state,
            &optimizer_state(&t),
            "optimizer state after an undone update",
        );
    }
    let err = t.train_step(&good).unwrap_err();
    assert!(
        matches!(&err, TrainError::Diverged { what, .. } if what.contains("10 steps in a row")),
        "{err}"
    );
}

/// Under the default policy a non-finite update is caught at the step it happens (not at the
/// end of the epoch), naming the parameter.
#[test]
fn a_non_finite_update_stops_at_its_step() {
    let data = load_digits(0).unwrap();
    let idx: Vec<usize> = (0..64).collect();
    let good = data.train.batch(&idx, &Device::Cpu).unwrap();
    let mut config = TrainConfig::w1();
    config.lr = 1e39;
    let mut t = w1_trainer(config);
    let err = t.train_step(&good).unwrap_err();
    assert!(
        matches!(&err, TrainError::Diverged { step: 1, what, .. } if what.contains("update made parameter")),
        "{err}"
    );
}

/// K-FAC on W1 in f32 with damping 1e-12 (below f32's resolution relative to the factors'
/// eigenvalues, so the damped factors are numerically singular), refreshing the factors and the
/// decompositions every step, with the eigen solver and CG-FAC, and eigen once without KL clipping
/// (the inverse solver is exercised on the small model below): every step either
/// succeeds with finite parameters or returns a typed error (`Diverged` or an optimizer error) with
/// finite parameters; never a NaN parameter.
#[test]
fn kfac_on_w1_with_damping_1e_12_never_makes_a_nan_parameter() {
    let data = load_digits(0).unwrap();
    let cases = [("eigen", 1e-3), ("cg", 1e-3), ("eigen", 0.0)];
    for (solver, kl_clip) in cases {
        let mut config = TrainConfig::w1();
        config.optimizer = if solver == "cg" {
            OptimizerKind::Cgfac
        } else {
            OptimizerKind::Kfac
        };
        config.lr = bmt_trainer::kfac::DEFAULT_LR;
        config.kfac = Some(KfacSettings {
            solver: solver.into(),
            damping: 1e-12,
            k_fac: 1,
            k_inv: 1,
            kl_clip,
            ..KfacSettings::defaults(config.optimizer)
        });
        let mut t = w1_trainer(config);
        let mut counted = 0u64;
        let t0 = std::time::Instant::now();
        // Step 1 folds the first factors and solves with them; step 2 with their running average.
        for s in 0..2 {
            let idx: Vec<usize> = (s * 32..(s + 1) * 32).collect();
            let b = data.train.batch(&idx, &Device::Cpu).unwrap();
            let before = t.model.snapshot().unwrap();
            match t.train_step(&b) {
                Ok(o) => {
                    let stats = o.optimizer.expect("K-FAC reports statistics");
                    for k in ["fallbacks", "decomposition_failures", "cg_breakdowns"] {
                        counted += stats[k].as_u64().unwrap_or_else(|| panic!("{k}: {stats}"));
                    }
                    assert_eq!(
                        first_non_finite(&t.model.snapshot().unwrap()),
                        None,
                        "{solver} (kl_clip {kl_clip}), step {}: {stats}",
                        s + 1
                    );
                }
                Err(e @ (TrainError::Diverged { .. } | TrainError::Optimizer(_))) => {
                    assert_same(
                        &before,
                        &t.model.snapshot().unwrap(),
                        &format!("{solver}: {e}"),
                    );
                    break;
                }
                Err(e) => panic!("{solver}: untyped failure {e}"),
            }
        }
        eprintln!(
            "{solver} (kl_clip {kl_clip}): {counted} breakdowns counted, {:.1} s",
            t0.elapsed().as_secs_f64()
        );
    }
}

/// A two-layer model fed an all-zero input: layer 1's input factor `A = E[āāᵀ]` is then zero
/// except its bias entry (ā = [0, …, 0, 1]), and layer 2 is additionally given a zero output
/// gradient capture (`G = 0`). With damping 1e-12 in f32 every solver must give finite
/// parameters; layer 1's weight, whose gradient is exactly zero, must not move at all (the exact
/// damped solve of a zero right-hand side is zero); its bias, whose gradient is not zero, must.
#[test]
fn kfac_zero_factors_with_damping_1e_12_give_finite_updates() {
    let dev = Device::Cpu;
    let solvers = [
        (Solver::Eigen, DampingKind::Tikhonov),
        (Solver::Inverse, DampingKind::Factored),
        (Solver::CgFactor, DampingKind::Tikhonov),
        (Solver::CgMatrixFree, DampingKind::Tikhonov),
    ];
    for zero_g in [false, true] {
        for (solver, damping_kind) in solvers {
            let (w1, b1) = linear_vars(
                (0..12).map(|i| (i as f32 * 0.37).sin()).collect(),
                Some(vec![0.1, -0.2, 0.3, 0.05]),
                4,
                3,
                &dev,
            )
            .unwrap();
            let (w2, _) = linear_vars(
                (0..8).map(|i| (i as f32 * 0.61).cos()).collect(),
                None,
                2,
                4,
                &dev,
            )
            .unwrap();
            let l1 = TrackedLinear::new("l1", w1, b1).unwrap();
            let l2 = TrackedLinear::new("l2", w2, None).unwrap();
            let cfg = KfacConfig {
                solver,
                damping_kind,
                damping: 1e-12,
                k_fac: 1,
                k_inv: 1,
                kl_clip: None,
                ..KfacConfig::default()
            };
            let layers = vec![
                PreconditionedLayer::from_tracked(&l1),
                PreconditionedLayer::from_tracked(&l2),
            ];
            let mut opt =
                KfacOptimizer::new(layers, NamedParams::default(), cfg, AdamWConfig::default())
                    .unwrap();
            let x = Tensor::zeros((5, 3), DType::F32, &dev).unwrap();
            let y = Tensor::new(
                &[
                    [1.0f32, 0.0],
                    [0.0, 1.0],
                    [1.0, 1.0],
                    [0.5, 0.5],
                    [0.0, 0.0],
                ],
                &dev,
            )
            .unwrap();
            let w1_start = l1.weight().as_tensor().copy().unwrap();
            let b1_start = l1.bias().unwrap().as_tensor().copy().unwrap();
            let what = format!("{solver:?}, zero G: {zero_g}");
            for step in 0..3 {
                for l in [&l1, &l2] {
                    l.set_tracking(true);
                }
                let pred = l2
                    .forward(&l1.forward(&x).unwrap().tanh().unwrap())
                    .unwrap();
                let loss = (pred - &y).unwrap().sqr().unwrap().mean_all().unwrap();
                let grads = loss.backward().unwrap();
                let mut caps: Vec<LayerCapture> = Vec::new();
                for l in [&l1, &l2] {
                    caps.extend(l.capture(&grads).unwrap());
                    l.set_tracking(false);
                    l.clear();
                }
                if zero_g {
                    caps[1].output_grad = caps[1].output_grad.zeros_like().unwrap();
                }
                match opt.step(&grads, &caps) {
                    Ok(stats) => eprintln!(
                        "{what}, step {step}: fallbacks {}, decomposition failures {}, CG breakdowns {}",
                        stats.fallbacks, stats.decomposition_failures, stats.cg_breakdowns
                    ),
                    Err(e @ (KfacError::NonFinite(_) | KfacError::Incompatible(_))) => {
                        eprintln!("{what}: typed error {e}");
                        break;
                    }
                    Err(e) => panic!("{what}: unexpected error {e}"),
                }
                let named: Vec<(String, Tensor)> = vec![
                    ("l1.weight".into(), l1.weight().as_tensor().clone()),
                    ("l1.bias".into(), l1.bias().unwrap().as_tensor().clone()),
                    ("l2.weight".into(), l2.weight().as_tensor().clone()),
                ];
                assert_eq!(
                    first_non_finite(named.iter().map(|(k, v)| (k, v))),
                    None,
                    "{what}, step {step}"
                );
            }
            assert_eq!(
                max_abs_diff(&w1_start, l1.weight().as_tensor()),
                0.0,
                "{what}: l1.weight moved"
            );
            assert!(
                max_abs_diff(&b1_start, l1.bias().unwrap().as_tensor()) > 0.0,
                "{what}: l1.bias did not move"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Configurations and command lines.

/// Runs `bmt train ARGS --out DIR` (unless `--resume` is among them) and checks the failure is one
/// line `error: …` on stderr with exit code 1, no panic, and no run directory created. Returns the
/// line.
fn cli_error(args: &[&str], tag: &str) -> String {
    let out = tmp(tag);
    let mut cmd = Command::new(bmt());
    cmd.arg("train").args(args);
    if !args.contains(&"--resume") {
        cmd.arg("--out").arg(&out);
    }
    let o = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(
        o.status.code(),
        Some(1),
        "{args:?}: exit {:?}, stderr: {err}",
        o.status
    );
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{args:?}: not one line: {err}"
    );
    assert!(err.starts_with("error: "), "{args:?}: {err}");
    assert!(
        !out.exists(),
        "{args:?}: the run directory was created before the error: {err}"
    );
    err
}

/// Impossible configurations are rejected before any work starts (no run directory is created),
/// naming the flag.
#[test]
fn impossible_configurations_name_their_flag_before_work_starts() {
    // Heads not dividing the width (no CLI flag sets heads: through the library).
    let out = tmp("heads");
    let mut c = TrainConfig::w1();
    if let bmt_trainer::model::ModelConfig::Vit(v) = &mut c.model {
        v.heads = 5;
    }
    let err = run(c, &out, &quiet()).unwrap_err();
    assert!(
        matches!(
            err,
            TrainError::Config {
                flag: "--heads",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("divide the model width 64"),
        "{err}"
    );
    assert!(!out.exists());

    let e = cli_error(&["--patch", "3"], "patch");
    assert!(e.contains("--patch") && e.contains("8×8"), "{e}");
    let e = cli_error(&["--batch-size", "0"], "batch0");
    assert!(e.contains("--batch-size"), "{e}");
    let e = cli_error(&["--batch-size", "100000"], "batch-huge");
    assert!(e.contains("--batch-size") && e.contains("1437"), "{e}");
    let e = cli_error(&["--optimizer", "adamw", "--damping", "0.1"], "damping");
    assert!(e.contains("--damping") && e.contains("kfac"), "{e}");
    let e = cli_error(&["--optimizer", "kfac", "--kfac-solver", "qr"], "solver");
    assert!(e.contains("--kfac-solver") && e.contains("eigen"), "{e}");
}

/// Bad command-line input is a one-line error with exit code 1, never a panic.
#[test]
fn bad_command_lines_are_one_line_errors_with_exit_code_1() {
    let e = cli_error(&["--data", "mnist:/nonexistent"], "mnist");
    assert!(
        e.contains("/nonexistent") && e.contains("train-images-idx3-ubyte"),
        "{e}"
    );
    let e = cli_error(&["--lr=-1"], "lr-eq");
    assert!(e.contains("--lr") && e.contains("-1"), "{e}");
    let e = cli_error(&["--lr", "-1"], "lr");
    assert!(e.contains("--lr") && e.contains("-1"), "{e}");
    let e = cli_error(&["--device", "cuda"], "cuda");
    assert!(e.contains("--features cuda"), "{e}");
    // --out naming a file: a one-line error, and the file is left as it was.
    let file = tmp("out-is-a-file");
    std::fs::write(&file, b"not a run").unwrap();
    let o = Command::new(bmt())
        .args(["train", "--out"])
        .arg(&file)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("--out") && e.contains("is a file"), "{e}");
    assert_eq!(std::fs::read(&file).unwrap(), b"not a run");

    let empty = tmp("empty-resume");
    std::fs::create_dir_all(&empty).unwrap();
    let e = cli_error(&["--resume", empty.to_str().unwrap()], "resume-empty");
    assert!(
        e.contains("cannot resume") && e.contains("config.json"),
        "{e}"
    );
    let missing = tmp("missing-resume");
    let e = cli_error(&["--resume", missing.to_str().unwrap()], "resume-missing");
    assert!(e.contains("cannot resume"), "{e}");
}
