//! Text generation from a trained byte-level GPT (`cargo xtask sample --run DIR`).
//!
//! Autoregressive sampling: at each step the model reads the last `≤ context` bytes and the next
//! byte is drawn from `softmax(logits / temperature)` of the last position, by inverting the
//! cumulative distribution (in f64) at a uniform draw of a `ChaCha8Rng` seeded by the caller, so a
//! seed fixes the text. Temperature 0 takes the arg-max (greedy decoding). Each step runs the full
//! forward pass over the window (no key/value cache): generation costs `O(n · context)` tokens of
//! forward work.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rand::Rng;

use crate::checkpoint;
use crate::error::{Result, TrainError};
use crate::model::{ModelConfig, Transformer};
use crate::run::read_config;

/// The model of the run in `dir` with the weights of its newest checkpoint.
pub fn load_run_model(dir: &Path, device: &Device) -> Result<Transformer> {
    let not_a_run = |msg: String| TrainError::Config {
        flag: "--run",
        msg: format!("{}: {msg}", dir.display()),
    };
    let config = read_config(dir).map_err(|e| match e {
        TrainError::Resume { msg, .. } => not_a_run(msg),
        other => other,
    })?;
    let (tensors, _) = checkpoint::load_latest(dir)?.ok_or_else(|| {
        not_a_run("it holds no checkpoint yet: train it for at least one epoch first".into())
    })?;
    let weights = tensors
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix("model.").map(|n| (n.to_string(), v)))
        .collect();
    Transformer::from_tensors(config.model, &weights, DType::F32, device)
}

/// Draws an index from `softmax(logits / temperature)` (`temperature > 0`) by inverting the CDF at
/// `u ~ U[0, 1)`; with `temperature == 0`, the first arg-max. `logits` must be finite.
pub fn sample_index(logits: &[f32], temperature: f64, rng: &mut impl Rng) -> usize {
    let argmax = logits
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 {
                (i, v)
            } else {
                best
            }
        })
        .0;
    if temperature == 0.0 {
        return argmax;
    }
    let max = f64::from(logits[argmax]);
    let weights: Vec<f64> = logits
        .iter()
        .map(|&v| ((f64::from(v) - max) / temperature).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let u = rng.random::<f64>() * total;
    let mut acc = 0.0;
    for (i, w) in weights.iter().enumerate() {
        acc += w;
        if u < acc {
            return i;
        }
    }
    // Rounding left `u` at the very top: the last index with positive weight.
    weights.iter().rposition(|&w| w > 0.0).unwrap_or(argmax)
}

/// Generates `count` bytes after `prompt` (at least one byte) with `model`, a GPT.
pub fn generate(
    model: &Transformer,
    prompt: &[u8],
    count: usize,
    temperature: f64,
    rng: &mut impl Rng,
) -> Result<Vec<u8>> {
    let ModelConfig::Gpt(g) = model.config() else {
        return Err(TrainError::Config {
            flag: "--run",
            msg: "the run's model is a ViT: sampling needs a GPT run (--model gpt)".into(),
        });
    };
    if prompt.is_empty() {
        return Err(TrainError::Config {
            flag: "--prompt",
            msg: "the prompt must hold at least one byte".into(),
        });
    }
    if !(temperature >= 0.0 && temperature.is_finite()) {
        return Err(TrainError::Config {
            flag: "--temperature",
            msg: format!("{temperature} must be a finite value ≥ 0 (0: greedy)"),
        });
    }
    let device = model
        .parameters()
        .values()
        .next()
        .map_or(Device::Cpu, |v| v.device().clone());
    let mut text: Vec<u8> = prompt.to_vec();
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let start = text.len().saturating_sub(g.context);
        let window: Vec<u32> = text[start..].iter().map(|&b| u32::from(b)).collect();
        let t = window.len();
        let x = Tensor::from_vec(window, (1, t), &device)?;
        let logits = model
            .forward(&x)?
            .narrow(1, t - 1, 1)?
            .squeeze(1)?
            .squeeze(0)?
            .to_dtype(DType::F32)?;
        let values = logits.to_vec1::<f32>()?;
        if values.iter().any(|v| !v.is_finite()) {
            return Err(TrainError::Input {
                msg: "the model's logits are not finite: the checkpoint's weights are damaged"
                    .into(),
            });
        }
        let next = sample_index(&values, temperature, rng) as u8;
        text.push(next);
        out.push(next);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn greedy_takes_the_first_argmax() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        assert_eq!(sample_index(&[0.0, 3.0, 3.0, -1.0], 0.0, &mut rng), 1);
    }

    #[test]
    fn sampling_frequencies_match_the_softmax() {
        // p = softmax([0, ln 2, ln 3] / 1) = (1, 2, 3)/6. With N = 60 000 draws each frequency has
        // standard error sqrt(p(1−p)/N) ≤ 0.0021; 5 standard errors is 0.0105.
        let logits = [0.0f32, 2f32.ln(), 3f32.ln()];
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let n = 60_000;
        let mut counts = [0usize; 3];
        for _ in 0..n {
            counts[sample_index(&logits, 1.0, &mut rng)] += 1;
        }
        for (i, p) in [1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0].iter().enumerate() {
            let f = counts[i] as f64 / n as f64;
            assert!((f - p).abs() < 0.0105, "index {i}: {f} vs {p}");
        }
        // Temperature 0.5 squares the odds: (1, 4, 9)/14.
        let mut counts = [0usize; 3];
        for _ in 0..n {
            counts[sample_index(&logits, 0.5, &mut rng)] += 1;
        }
        for (i, p) in [1.0 / 14.0, 4.0 / 14.0, 9.0 / 14.0].iter().enumerate() {
            let f = counts[i] as f64 / n as f64;
            assert!((f - p).abs() < 0.0105, "index {i} at T = 0.5: {f} vs {p}");
        }
    }
}
