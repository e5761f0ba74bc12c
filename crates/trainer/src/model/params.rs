//! Parameter names, shapes and the seeded initialisation of both architectures.
//!
//! Names follow the reference implementations' W1 fixture (`patch.w`, `blk0.q.b`, `blk3.ln2.g`,
//! `lnf.b`, `head.w`, `cls`, `pos`); the GPT adds `wte` (byte embeddings, `(vocab, d)`) and has no
//! `patch` or `cls`. Linear weights are stored Candle-style as `(out, in)`.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use rand::Rng;
use rand_distr::{Distribution, Normal, Uniform};

use super::config::ModelConfig;
use crate::error::{Result, TrainError};

/// Standard deviation of the CLS, position and byte embeddings at initialisation.
const EMBEDDING_STD: f32 = 0.02;

/// Draws the initialisation of `config` from `rng`: linear weights uniform in ±1/√fan_in
/// (W1's scheme), biases 0, LayerNorm γ = 1 and β = 0, CLS, position and byte embeddings normal
/// with standard deviation 0.02.
///
/// Draw order (so that a seed fixes the model): ViT: patch, cls, pos, per block q, k, v, o, fc1,
/// fc2, head; GPT: wte, pos, per block q, k, v, o, fc1, fc2, head. Returns name → f32 tensor.
pub fn init_parameters(
    config: &ModelConfig,
    rng: &mut impl Rng,
    device: &Device,
) -> Result<BTreeMap<String, Tensor>> {
    let mut out = BTreeMap::new();
    let d = config.dim();
    let normal = Normal::new(0.0f32, EMBEDDING_STD).map_err(|e| TrainError::Init(e.to_string()))?;
    let gaussian = |n: usize, rng: &mut dyn rand::RngCore| -> Vec<f32> {
        (0..n).map(|_| normal.sample(rng)).collect()
    };
    let linear = |out: &mut BTreeMap<String, Tensor>,
                  name: &str,
                  fan_in: usize,
                  fan_out: usize,
                  rng: &mut dyn rand::RngCore|
     -> Result<()> {
        let bound = 1.0 / (fan_in as f32).sqrt();
        let dist =
            Uniform::new_inclusive(-bound, bound).map_err(|e| TrainError::Init(e.to_string()))?;
        let w: Vec<f32> = (0..fan_in * fan_out).map(|_| dist.sample(rng)).collect();
        out.insert(
            format!("{name}.w"),
            Tensor::from_vec(w, (fan_out, fan_in), device)?,
        );
        out.insert(
            format!("{name}.b"),
            Tensor::zeros(fan_out, DType::F32, device)?,
        );
        Ok(())
    };
    match config {
        ModelConfig::Vit(c) => {
            linear(&mut out, "patch", c.patch_dim(), d, rng)?;
            let cls = gaussian(d, rng);
            out.insert("cls".into(), Tensor::from_vec(cls, d, device)?);
            let pos = gaussian(c.tokens() * d, rng);
            out.insert(
                "pos".into(),
                Tensor::from_vec(pos, (c.tokens(), d), device)?,
            );
        }
        ModelConfig::Gpt(c) => {
            let wte = gaussian(c.vocab * d, rng);
            out.insert("wte".into(), Tensor::from_vec(wte, (c.vocab, d), device)?);
            let pos = gaussian(c.context * d, rng);
            out.insert("pos".into(), Tensor::from_vec(pos, (c.context, d), device)?);
        }
    }
    for i in 0..config.depth() {
        for l in ["q", "k", "v", "o"] {
            linear(&mut out, &format!("blk{i}.{l}"), d, d, rng)?;
        }
        linear(&mut out, &format!("blk{i}.fc1"), d, config.mlp_dim(), rng)?;
        linear(&mut out, &format!("blk{i}.fc2"), config.mlp_dim(), d, rng)?;
    }
    linear(&mut out, "head", d, config.outputs(), rng)?;
    for name in layer_norm_names(config) {
        out.insert(format!("{name}.g"), Tensor::ones(d, DType::F32, device)?);
        out.insert(format!("{name}.b"), Tensor::zeros(d, DType::F32, device)?);
    }
    Ok(out)
}

/// The LayerNorms in forward order: `blk{i}.ln1`, `blk{i}.ln2` for every block, then `lnf`.
pub fn layer_norm_names(config: &ModelConfig) -> Vec<String> {
    let mut names: Vec<String> = (0..config.depth())
        .flat_map(|i| [format!("blk{i}.ln1"), format!("blk{i}.ln2")])
        .collect();
    names.push("lnf".into());
    names
}

/// Expected parameter names and shapes of a config (Candle layout, weights `(out, in)`).
pub fn parameter_shapes(config: &ModelConfig) -> BTreeMap<String, Vec<usize>> {
    let d = config.dim();
    let mut s = BTreeMap::new();
    let mut lin = |name: String, i: usize, o: usize| {
        s.insert(format!("{name}.w"), vec![o, i]);
        s.insert(format!("{name}.b"), vec![o]);
    };
    if let ModelConfig::Vit(c) = config {
        lin("patch".into(), c.patch_dim(), d);
    }
    for b in 0..config.depth() {
        for l in ["q", "k", "v", "o"] {
            lin(format!("blk{b}.{l}"), d, d);
        }
        lin(format!("blk{b}.fc1"), d, config.mlp_dim());
        lin(format!("blk{b}.fc2"), config.mlp_dim(), d);
    }
    lin("head".into(), d, config.outputs());
    match config {
        ModelConfig::Vit(c) => {
            s.insert("cls".into(), vec![d]);
            s.insert("pos".into(), vec![c.tokens(), d]);
        }
        ModelConfig::Gpt(c) => {
            s.insert("wte".into(), vec![c.vocab, d]);
            s.insert("pos".into(), vec![c.context, d]);
        }
    }
    for name in layer_norm_names(config) {
        s.insert(format!("{name}.g"), vec![d]);
        s.insert(format!("{name}.b"), vec![d]);
    }
    s
}
