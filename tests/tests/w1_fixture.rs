//! W1 against the reference implementations: the peer fixture's exact start must reproduce
//! PyTorch's and JAX's numbers (`../shared/fixtures/README.md`).

use std::path::PathBuf;

use bmt_trainer::config::TrainConfig;
use bmt_trainer::data::Dataset;
use bmt_trainer::fixture::{load_peer_fixture, PeerFixture};
use bmt_trainer::model::{cross_entropy, Transformer};
use bmt_trainer::run::Trainer;
use candle_core::{DType, Device};
use serde_json::Value;

fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures")
}

fn fixture() -> (PeerFixture, Value) {
    let f = load_peer_fixture(&shared().join("w1-peer-init.safetensors")).expect("fixture loads");
    let r: Value = serde_json::from_str(
        &std::fs::read_to_string(shared().join("w1-peer-reference.json")).unwrap(),
    )
    .unwrap();
    (f, r)
}

/// Step 0 in float64: the forward pass is the same function as the reference's, so loss and logits
/// agree to f64 rounding (a few ulps times the depth of the computation, far below 1e-9).
/// In float32 they agree to f32 rounding: relative 1.2e-7 per operation, accumulated over ~30
/// sequential reductions of length ≤ 128 gives ≲ 1e-5; the fixture notes PyTorch's f32 agrees to 6e-8.
#[test]
fn step0_loss_logits_and_accuracy_match_the_references() {
    let (f, r) = fixture();
    let first: Vec<usize> = f.batch_orders[0][0].clone();
    let want_loss = r["step0_first_batch_loss_f64"].as_f64().unwrap();
    let want_logits: Vec<f64> = r["step0_first_batch_logits_row0_f64"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    for (dtype, tol) in [(DType::F64, 1e-9), (DType::F32, 1e-5)] {
        let model = Transformer::from_tensors(
            bmt_trainer::model::VitConfig::w1(),
            &f.weights,
            dtype,
            &Device::Cpu,
        )
        .unwrap();
        let batch = f.train.batch(&first, &Device::Cpu).unwrap();
        let logits = model
            .forward(&batch.inputs.to_dtype(dtype).unwrap())
            .unwrap();
        let loss = cross_entropy(&logits, &batch.targets)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(
            (loss - want_loss).abs() < tol,
            "{dtype:?}: loss {loss} vs {want_loss}"
        );
        let row0: Vec<f64> = logits
            .to_dtype(DType::F64)
            .unwrap()
            .get(0)
            .unwrap()
            .to_vec1()
            .unwrap();
        for (a, b) in row0.iter().zip(&want_logits) {
            assert!((a - b).abs() < tol, "{dtype:?}: logit {a} vs {b}");
        }
        // Test accuracy before training: a count over 360 samples, identical in both precisions
        // unless a logit tie falls within rounding (none does here).
        let test_idx: Vec<usize> = (0..f.test.len()).collect();
        let tb = f.test.batch(&test_idx, &Device::Cpu).unwrap();
        let tl = model.forward(&tb.inputs.to_dtype(dtype).unwrap()).unwrap();
        let acc = bmt_trainer::model::correct_predictions(&tl, &tb.targets).unwrap() as f64 / 360.0;
        assert_eq!(
            acc,
            r["step0_test_accuracy_f64"].as_f64().unwrap(),
            "{dtype:?}"
        );
    }
}

/// PyTorch's first three epochs of W1-adamw from the same start and batch order. The reference
/// values are rounded to 4 decimals (±5e-5) and two correct float32 implementations drift apart by
/// about 1e-4 over these epochs (fixture README), so the mean training loss must agree within 5e-4;
/// test accuracy is a count over 360 samples, and a sample whose logits are within that drift of a
/// tie may flip: we allow two flips (2/360).
#[test]
fn first_three_epochs_match_pytorch() {
    let (f, r) = fixture();
    let mut config = TrainConfig::w1();
    config.diagnostics = false;
    let model =
        Transformer::from_tensors(config.model.clone(), &f.weights, DType::F32, &Device::Cpu)
            .unwrap();
    let mut trainer = Trainer::new(config, model, Device::Cpu).unwrap();
    for (e, want) in r["pytorch_epochs"].as_array().unwrap().iter().enumerate() {
        let mut sum = 0.0;
        for idx in &f.batch_orders[e] {
            let b = f.train.batch(idx, &Device::Cpu).unwrap();
            sum += trainer.train_step(&b).unwrap().loss;
        }
        let mean = sum / f.batch_orders[e].len() as f64;
        let eval = trainer.evaluate(&f.test, 512).unwrap();
        let want_loss = want["train_loss_mean"].as_f64().unwrap();
        let want_acc = want["test_accuracy"].as_f64().unwrap();
        assert!(
            (mean - want_loss).abs() < 5e-4,
            "epoch {}: train loss {mean} vs PyTorch {want_loss}",
            e + 1
        );
        assert!(
            (eval.accuracy - want_acc).abs() <= 2.0 / 360.0 + 5e-5,
            "epoch {}: test accuracy {} vs PyTorch {want_acc}",
            e + 1,
            eval.accuracy
        );
    }
}

/// All 30 epochs of W1-adamw from the peer start, with the peer split and batch orders: PyTorch
/// ends at 0.969 test accuracy there (WORKLOADS.md). Float32 trajectories of two correct
/// implementations drift apart (≈1e-4 after 3 epochs, growing), so the last epochs are not
/// reproduced number for number; the test accepts any final accuracy within 0.02 (≈7 images, the
/// epoch-to-epoch fluctuation of W1 without a schedule) of PyTorch's. Ignored by default: it is a
/// 30-epoch run (about 40 s on 2 idle cores); run it with `--ignored`.
#[test]
#[ignore]
fn thirty_epochs_from_the_peer_start_end_near_pytorch() {
    let (f, _) = fixture();
    let mut config = TrainConfig::w1();
    config.diagnostics = false;
    let model =
        Transformer::from_tensors(config.model.clone(), &f.weights, DType::F32, &Device::Cpu)
            .unwrap();
    let mut trainer = Trainer::new(config, model, Device::Cpu).unwrap();
    let mut accs = Vec::new();
    for epoch in &f.batch_orders {
        for idx in epoch {
            trainer
                .train_step(&f.train.batch(idx, &Device::Cpu).unwrap())
                .unwrap();
        }
        accs.push(trainer.evaluate(&f.test, 512).unwrap().accuracy);
    }
    eprintln!("test accuracy per epoch: {accs:?}");
    let last = *accs.last().unwrap();
    assert!(
        (last - 0.969).abs() <= 0.02,
        "final test accuracy {last} vs PyTorch 0.969"
    );
}
