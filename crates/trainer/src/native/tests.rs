//! The native step against candle's autograd on the same model, batch and parameters.
//!
//! Both compute the same formulas in `f32` with the same kernels; they differ in summation order
//! (candle's composite broadcast adds and reductions against this module's row loops, the GEMM
//! blockings of different shapes). Each differing sum of `K` terms carries an error of order
//! `K·ε_f32·Σ|terms|` at worst and `√K·ε_f32` typically; with `K ≤ 136` rows and ε = 6e-8 that is
//! below 1e-5 of a tensor's largest entry, passed through at most ~30 layers of backward. The
//! bound used, `2e-4 · max|reference| + 1e-7`, leaves a factor of 10–20 for that amplification and
//! still fails on any wrong term (a missing bias gradient, a transposed factor, a lost residual
//! path all change entries at the percent level or more).

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{supports, Captures, Tape, Want};
use crate::model::{cross_entropy, GptConfig, ModelConfig, Transformer, VitConfig};

const REL: f32 = 2e-4;
const ABS: f32 = 1e-7;

fn close(name: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.dims(), want.dims(), "{name}: shape");
    let g = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let w = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let scale = w.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let worst = g
        .iter()
        .zip(&w)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        worst <= REL * scale + ABS,
        "{name}: max |native − autograd| = {worst:e} against max |autograd| = {scale:e}"
    );
}

/// A model of `config` with every parameter perturbed off its initial value (LayerNorm gains off
/// 1, biases off 0), so that no gradient term is hidden by a trivial parameter.
fn model(config: impl Into<ModelConfig>, seed: u64) -> Transformer {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let m = Transformer::init(config, &mut rng, DType::F32, &Device::Cpu).unwrap();
    let mut perturbed = BTreeMap::new();
    for (name, var) in m.parameters() {
        let t = var.as_tensor();
        let noise: Vec<f32> = (0..t.elem_count())
            .map(|_| rng.random_range(-0.1f32..0.1))
            .collect();
        let noise = Tensor::from_vec(noise, t.shape(), &Device::Cpu).unwrap();
        perturbed.insert(name.clone(), (t + noise).unwrap());
    }
    m.load(&perturbed).unwrap();
    m
}

fn images(b: usize, rng: &mut impl Rng) -> Tensor {
    let v: Vec<f32> = (0..b * 64).map(|_| rng.random_range(0.0f32..1.0)).collect();
    Tensor::from_vec(v, (b, 1, 8, 8), &Device::Cpu).unwrap()
}

fn labels(shape: &[usize], classes: u32, rng: &mut impl Rng) -> Tensor {
    let n = shape.iter().product();
    let v: Vec<u32> = (0..n).map(|_| rng.random_range(0..classes)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Runs both steps on `(inputs, targets)` and compares loss, logits, every gradient and every
/// layer capture.
fn compare(m: &Transformer, inputs: &Tensor, targets: &Tensor) {
    assert!(supports(m));
    m.set_tracking(true);
    let logits = m.forward(inputs).unwrap();
    let loss = cross_entropy(&logits, targets).unwrap();
    let grads = loss.backward().unwrap();
    let want_captures: Vec<_> = m
        .attention_and_mlp_layers()
        .iter()
        .map(|l| l.capture(&grads).unwrap().unwrap())
        .collect();
    m.set_tracking(false);

    let mut tape = Tape::new();
    tape.forward(m, inputs).unwrap();
    close("logits", &tape.logits().unwrap(), &logits);
    let (nloss, _, dlogits) = tape.cross_entropy(targets).unwrap();
    let closs = loss.to_scalar::<f32>().unwrap() as f64;
    assert!(
        (nloss - closs).abs() <= 1e-5 * closs.abs(),
        "loss {nloss} vs {closs}"
    );
    let out = tape
        .backward(
            &dlogits,
            Want {
                parameters: true,
                captures: Captures::Full,
            },
        )
        .unwrap();
    assert_eq!(out.gradients.len(), m.parameters().len());
    for (name, var) in m.parameters() {
        let g = Tensor::from_slice(&out.gradients[name], var.shape(), &Device::Cpu).unwrap();
        close(name, &g, grads.get(var).unwrap());
    }
    assert_eq!(out.captures.len(), want_captures.len());
    for (got, want) in out.captures.iter().zip(&want_captures) {
        assert_eq!(got.name, want.name);
        close(&format!("{} input", got.name), &got.input, &want.input);
        close(
            &format!("{} output grad", got.name),
            &got.output_grad,
            &want.output_grad,
        );
    }
    // The captures-only backward (K-FAC's Monte-Carlo pass) gives the same captures, no gradients.
    let only = tape
        .backward(
            &dlogits,
            Want {
                parameters: false,
                captures: Captures::Full,
            },
        )
        .unwrap();
    assert!(only.gradients.is_empty());
    for (a, b) in only.captures.iter().zip(&out.captures) {
        assert_eq!(
            a.output_grad.to_vec3::<f32>().unwrap(),
            b.output_grad.to_vec3::<f32>().unwrap()
        );
    }
}

#[test]
fn vit_matches_autograd() {
    let m = model(VitConfig::w1(), 3);
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    compare(&m, &images(8, &mut rng), &labels(&[8], 10, &mut rng));
}

/// The untraced ViT pass (and the native tape, [`vit_matches_autograd`]) updates only the CLS row
/// in the last block; the traced pass runs every row of every block. Both give the same logits and
/// the same gradient for every parameter: the rows left out reach no output.
#[test]
fn vit_cls_only_last_block_equals_the_full_block() {
    let m = model(VitConfig::w1(), 5);
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let (x, y) = (images(8, &mut rng), labels(&[8], 10, &mut rng));
    let cls = m.forward(&x).unwrap();
    let (full, trace) = m.forward_traced(&x).unwrap();
    assert_eq!(trace.residual.last().unwrap().dims(), &[8, 17, 64]);
    close("logits", &cls, &full);
    let g_cls = cross_entropy(&cls, &y).unwrap().backward().unwrap();
    let g_full = cross_entropy(&full, &y).unwrap().backward().unwrap();
    for (name, var) in m.parameters() {
        close(name, g_cls.get(var).unwrap(), g_full.get(var).unwrap());
    }
}

fn small_gpt() -> GptConfig {
    GptConfig {
        vocab: 40,
        context: 12,
        dim: 16,
        depth: 2,
        heads: 2,
        mlp_dim: 24,
        ln_eps: 1e-5,
    }
}

#[test]
fn gpt_matches_autograd_full_and_short_sequences() {
    let m = model(small_gpt(), 5);
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    for t in [12, 7] {
        let x = labels(&[3, t], 40, &mut rng);
        compare(&m, &x, &labels(&[3, t], 40, &mut rng));
    }
}

#[test]
fn a_reused_tape_equals_a_fresh_one() {
    let m = model(VitConfig::w1(), 7);
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let (big, small) = (images(6, &mut rng), images(2, &mut rng));
    let y = labels(&[2], 10, &mut rng);
    let mut reused = Tape::new();
    reused.forward(&m, &big).unwrap();
    reused.forward(&m, &small).unwrap();
    let mut fresh = Tape::new();
    fresh.forward(&m, &small).unwrap();
    let want = Want {
        parameters: true,
        captures: Captures::None,
    };
    let (l1, c1, d1) = reused.cross_entropy(&y).unwrap();
    let (l2, c2, d2) = fresh.cross_entropy(&y).unwrap();
    assert_eq!((l1, c1), (l2, c2));
    let (g1, g2) = (
        reused.backward(&d1, want).unwrap(),
        fresh.backward(&d2, want).unwrap(),
    );
    assert_eq!(g1.gradients, g2.gradients);
}

#[test]
fn bad_calls_are_errors() {
    let m = model(VitConfig::w1(), 9);
    let mut tape = Tape::new();
    let want = Want {
        parameters: true,
        captures: Captures::None,
    };
    let err = tape.backward(&[0.0; 10], want).unwrap_err().to_string();
    assert!(err.contains("Tape::forward first"), "{err}");
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    tape.forward(&m, &images(2, &mut rng)).unwrap();
    let err = tape
        .cross_entropy(&labels(&[3], 10, &mut rng))
        .unwrap_err()
        .to_string();
    assert!(err.contains("3 targets for 2 predictions"), "{err}");
    let bad = Tensor::new(&[1u32, 10], &Device::Cpu).unwrap();
    let err = tape.cross_entropy(&bad).unwrap_err().to_string();
    assert!(err.contains("target 10 is outside the 10 classes"), "{err}");
    let err = tape.backward(&[0.0; 7], want).unwrap_err().to_string();
    assert!(err.contains("7 values for 2 × 10 logits"), "{err}");
    let wrong = Tensor::zeros((2, 1, 6, 6), DType::F32, &Device::Cpu).unwrap();
    assert!(tape.forward(&m, &wrong).is_err());
    let f64_model = Transformer::init(
        VitConfig::w1(),
        &mut ChaCha8Rng::seed_from_u64(1),
        DType::F64,
        &Device::Cpu,
    )
    .unwrap();
    assert!(!supports(&f64_model));
    let err = tape
        .forward(&f64_model, &images(2, &mut rng))
        .unwrap_err()
        .to_string();
    assert!(err.contains("--backward autograd"), "{err}");
}

/// The whole-batch step: micro-batches summed match autograd on the whole batch, and one thread
/// and two give the same bits.
#[test]
fn native_step_matches_autograd_and_is_thread_independent() {
    use super::NativeStep;
    let m = model(small_gpt(), 11);
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let (x, y) = (labels(&[5, 9], 40, &mut rng), labels(&[5, 9], 40, &mut rng));
    let logits = m.forward(&x).unwrap();
    let loss = cross_entropy(&logits, &y).unwrap();
    let grads = loss.backward().unwrap();
    let want = Want {
        parameters: true,
        captures: Captures::Full,
    };
    let mut runs = Vec::new();
    for threads in [1, 2] {
        let mut step = NativeStep::new();
        step.forward(&m, &x, threads).unwrap();
        close("logits", &step.logits().unwrap(), &logits);
        let (l, _, d) = step.cross_entropy(&y).unwrap();
        let closs = loss.to_scalar::<f32>().unwrap() as f64;
        assert!((l - closs).abs() <= 1e-5 * closs, "loss {l} vs {closs}");
        let out = step.backward(&d, want, threads).unwrap();
        for (name, var) in m.parameters() {
            let g = Tensor::from_slice(&out.gradients[name], var.shape(), &Device::Cpu).unwrap();
            close(name, &g, grads.get(var).unwrap());
        }
        assert_eq!(out.captures.len(), 12);
        assert_eq!(out.captures[0].input.dims(), &[5, 9, 16]);
        runs.push((l, out));
    }
    let (a, b) = (&runs[0], &runs[1]);
    assert_eq!(a.0, b.0);
    assert_eq!(a.1.gradients, b.1.gradients);
    for (ca, cb) in a.1.captures.iter().zip(&b.1.captures) {
        assert_eq!(
            ca.output_grad.to_vec3::<f32>().unwrap(),
            cb.output_grad.to_vec3::<f32>().unwrap()
        );
    }
}

#[test]
fn an_empty_batch_is_an_error() {
    let m = model(VitConfig::w1(), 13);
    let empty = Tensor::zeros((0, 1, 8, 8), DType::F32, &Device::Cpu).unwrap();
    let err = super::NativeStep::new()
        .forward(&m, &empty, 1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("empty batch"), "{err}");
}

/// Position-summed captures are the full captures averaged (inputs) and summed (output gradients)
/// over each sequence, and give K-FAC-reduce the same factors.
#[test]
fn position_sums_give_the_reduce_factors() {
    use bmt_kfac::{kronecker_factors, WeightSharing};
    let m = model(VitConfig::w1(), 14);
    let mut rng = ChaCha8Rng::seed_from_u64(15);
    let (x, y) = (images(6, &mut rng), labels(&[6], 10, &mut rng));
    let mut tape = Tape::new();
    tape.forward(&m, &x).unwrap();
    let (_, _, d) = tape.cross_entropy(&y).unwrap();
    let want = |captures| Want {
        parameters: false,
        captures,
    };
    let full = tape.backward(&d, want(Captures::Full)).unwrap().captures;
    let sums = tape
        .backward(&d, want(Captures::PositionSums))
        .unwrap()
        .captures;
    assert_eq!(full.len(), sums.len());
    for (f, s) in full.iter().zip(&sums) {
        assert_eq!(s.input.dims()[..2], [6, 1]);
        close(
            &format!("{} mean input", f.name),
            &s.input.squeeze(1).unwrap(),
            &f.input.mean(1).unwrap(),
        );
        close(
            &format!("{} summed grad", f.name),
            &s.output_grad.squeeze(1).unwrap(),
            &f.output_grad.sum(1).unwrap(),
        );
        let (af, gf) = kronecker_factors(f, WeightSharing::Reduce).unwrap();
        let (a_s, gs) = kronecker_factors(s, WeightSharing::Reduce).unwrap();
        close(&format!("{} A", f.name), &a_s, &af);
        close(&format!("{} G", f.name), &gs, &gf);
    }
}
