//! The pre-LayerNorm transformers of workloads W1 (ViT on images) and W2 (byte-level GPT)
//! (`../shared/docs/WORKLOADS.md`).
//!
//! Every linear layer is a [`TrackedLinear`], so a preconditioner or a diagnostic can ask, for one
//! training step, for each layer's input activations and output gradients. On request
//! ([`Transformer::forward_traced`]) the model also returns its residual stream after every
//! block, every LayerNorm's input and pre-affine output, and every head's attention probabilities
//! (lower-triangular for the causal GPT). With tracking off and no trace requested the forward
//! pass does no extra work.

mod config;
mod params;

use std::collections::BTreeMap;

use bmt_kfac::TrackedLinear;
use candle_core::{DType, Device, Module, Tensor, Var, D};
use rand::Rng;

pub use config::{GptConfig, ModelConfig, VitConfig};
pub use params::{init_parameters, layer_norm_names, parameter_shapes};

use crate::error::{Result, TrainError};
use crate::ops;

/// LayerNorm with affine parameters: `γ ⊙ (x − μ)/sqrt(σ² + ε) + β` over the last dimension.
#[derive(Debug)]
pub struct LayerNorm {
    name: String,
    gain: Var,
    bias: Var,
    eps: f64,
}

impl LayerNorm {
    /// The normalised, pre-affine output `(x − μ)/sqrt(σ² + ε)`: the point on the sphere (MATH §1).
    pub fn normalize(&self, x: &Tensor) -> Result<Tensor> {
        Ok(ops::layer_norm_normalize(x, self.eps)?)
    }

    /// The affine part `γ ⊙ y + β`.
    pub fn affine(&self, y: &Tensor) -> Result<Tensor> {
        Ok(ops::scale_shift_rows(
            y,
            self.gain.as_tensor(),
            self.bias.as_tensor(),
        )?)
    }

    /// The layer's name (`blk0.ln1`, ..., `lnf`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// ε of this LayerNorm.
    pub fn eps(&self) -> f64 {
        self.eps
    }

    /// The gain γ.
    pub fn gain(&self) -> &Var {
        &self.gain
    }

    /// The bias β.
    pub fn bias(&self) -> &Var {
        &self.bias
    }
}

/// Sequences at least this long use the fused attention kernel ([`ops::attention`]) in an
/// untraced forward pass; shorter ones the composite ([`ops::attention_composite`]). Measured in
/// one sitting (docs/BENCHMARKS.md): on W2 (T = 256) the fused kernel is 7 % faster a step and
/// cuts peak memory from 1.9 GB to 0.7 GB (no `T × T` scores kept per layer); on W1 (T = 17) it
/// is 6 % slower a step, the composite's batched GEMMs winning at 17 × 17 × 16.
pub const FUSED_ATTENTION_MIN_TOKENS: usize = 64;

/// One pre-LN block: `h += O(MHSA(LN₁(h)))`, `h += FC₂(GELU(FC₁(LN₂(h))))`.
#[derive(Debug)]
pub struct Block {
    ln1: LayerNorm,
    q: TrackedLinear,
    k: TrackedLinear,
    v: TrackedLinear,
    o: TrackedLinear,
    ln2: LayerNorm,
    fc1: TrackedLinear,
    fc2: TrackedLinear,
}

/// What [`Transformer::forward_traced`] records about one forward pass.
#[derive(Debug, Default, Clone)]
pub struct Trace {
    /// Residual stream: after the embedding (index 0), then after every block; each `(B, T, d)`.
    pub residual: Vec<Tensor>,
    /// For every LayerNorm in forward order: its name, input `x` and pre-affine output `y`.
    pub layer_norms: Vec<LayerNormTrace>,
    /// Attention probabilities of every block, `(B, H, T, T)`.
    pub attention: Vec<Tensor>,
}

/// One LayerNorm's input and pre-affine output in a [`Trace`].
#[derive(Debug, Clone)]
pub struct LayerNormTrace {
    /// The LayerNorm's name.
    pub name: String,
    /// Its ε.
    pub eps: f64,
    /// Input `x`, `(B, T, d)`.
    pub input: Tensor,
    /// Pre-affine output `(x − μ)/sqrt(σ² + ε)`.
    pub normalized: Tensor,
}

/// How a [`Transformer`] turns its input into the first residual stream.
#[derive(Debug)]
enum Embedding {
    /// ViT: patches through a linear layer, a learned CLS token in front.
    Patches { patch: TrackedLinear, cls: Var },
    /// GPT: a learned vector per byte value.
    Bytes { table: Var },
}

/// A pre-LN transformer: the ViT classifier of W1 or the byte-level causal decoder of W2.
///
/// `h₀ = embed(x) + pos`, then per block `h += O(MHSA(LN₁(h)))`, `h += FC₂(GELU(FC₁(LN₂(h))))`,
/// then `LN_f`; the ViT's head reads the CLS token, the GPT's head every position. The GPT's
/// attention is causal: scores with `j > i` are −∞ before the softmax (MATH §2).
#[derive(Debug)]
pub struct Transformer {
    config: ModelConfig,
    embedding: Embedding,
    pos: Var,
    blocks: Vec<Block>,
    lnf: LayerNorm,
    head: TrackedLinear,
    params: BTreeMap<String, Var>,
}

impl Transformer {
    /// Builds the model from named tensors (every name of [`parameter_shapes`], exactly those
    /// shapes), copied into fresh variables of `dtype` on `device`.
    pub fn from_tensors(
        config: impl Into<ModelConfig>,
        tensors: &BTreeMap<String, Tensor>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let config = config.into();
        config.validate()?;
        let shapes = parameter_shapes(&config);
        let mut params = BTreeMap::new();
        for (name, shape) in &shapes {
            let t = tensors.get(name).ok_or_else(|| TrainError::Weights {
                msg: format!("parameter `{name}` is missing"),
            })?;
            if t.dims() != shape.as_slice() {
                return Err(TrainError::Weights {
                    msg: format!(
                        "parameter `{name}` has shape {:?}, the model needs {:?}",
                        t.dims(),
                        shape
                    ),
                });
            }
            let v = Var::from_tensor(&t.to_dtype(dtype)?.to_device(device)?)?;
            params.insert(name.clone(), v);
        }
        if let Some(extra) = tensors.keys().find(|k| !shapes.contains_key(*k)) {
            return Err(TrainError::Weights {
                msg: format!(
                    "unexpected parameter `{extra}`: the file does not match this architecture"
                ),
            });
        }
        let p = |n: &str| params[n].clone();
        let lin = |n: &str| TrackedLinear::new(n, p(&format!("{n}.w")), Some(p(&format!("{n}.b"))));
        let eps = config.ln_eps();
        let ln = |n: &str| LayerNorm {
            name: n.to_string(),
            gain: p(&format!("{n}.g")),
            bias: p(&format!("{n}.b")),
            eps,
        };
        let mut blocks = Vec::with_capacity(config.depth());
        for i in 0..config.depth() {
            let b = format!("blk{i}");
            blocks.push(Block {
                ln1: ln(&format!("{b}.ln1")),
                q: lin(&format!("{b}.q"))?,
                k: lin(&format!("{b}.k"))?,
                v: lin(&format!("{b}.v"))?,
                o: lin(&format!("{b}.o"))?,
                ln2: ln(&format!("{b}.ln2")),
                fc1: lin(&format!("{b}.fc1"))?,
                fc2: lin(&format!("{b}.fc2"))?,
            });
        }
        let embedding = match &config {
            ModelConfig::Vit(_) => Embedding::Patches {
                patch: lin("patch")?,
                cls: p("cls"),
            },
            ModelConfig::Gpt(_) => Embedding::Bytes { table: p("wte") },
        };
        Ok(Self {
            embedding,
            pos: p("pos"),
            lnf: ln("lnf"),
            head: lin("head")?,
            blocks,
            config,
            params,
        })
    }

    /// A freshly initialised model ([`init_parameters`]) drawn from `rng`.
    pub fn init(
        config: impl Into<ModelConfig>,
        rng: &mut impl Rng,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let config = config.into();
        config.validate()?;
        let tensors = init_parameters(&config, rng, &Device::Cpu)?;
        Self::from_tensors(config, &tensors, dtype, device)
    }

    /// The architecture.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Every parameter by name (sorted).
    pub fn parameters(&self) -> &BTreeMap<String, Var> {
        &self.params
    }

    /// Every tracked linear layer, in forward order: (ViT: patch), per block q, k, v, o, fc1, fc2,
    /// then head.
    pub fn tracked_layers(&self) -> Vec<&TrackedLinear> {
        let mut out = Vec::with_capacity(6 * self.blocks.len() + 2);
        if let Embedding::Patches { patch, .. } = &self.embedding {
            out.push(patch);
        }
        for b in &self.blocks {
            out.extend([&b.q, &b.k, &b.v, &b.o, &b.fc1, &b.fc2]);
        }
        out.push(&self.head);
        out
    }

    /// The layers a K-FAC preconditioner acts on: Q, K, V, O and both MLP linears of every block.
    pub fn attention_and_mlp_layers(&self) -> Vec<&TrackedLinear> {
        self.blocks
            .iter()
            .flat_map(|b| [&b.q, &b.k, &b.v, &b.o, &b.fc1, &b.fc2])
            .collect()
    }

    /// Every LayerNorm in forward order.
    pub fn layer_norms(&self) -> Vec<&LayerNorm> {
        let mut out: Vec<&LayerNorm> = self.blocks.iter().flat_map(|b| [&b.ln1, &b.ln2]).collect();
        out.push(&self.lnf);
        out
    }

    /// Switches input/output-gradient recording on every tracked layer.
    pub fn set_tracking(&self, on: bool) {
        for l in self.tracked_layers() {
            l.set_tracking(on);
        }
    }

    /// Images `(B, C, H, W)` → patch tokens `(B, N_p, C·p²)`: the patch grid row-major, each patch
    /// flattened channel-major then row-major (for one channel: exactly W1's order). An error for
    /// a GPT.
    pub fn patchify(&self, images: &Tensor) -> Result<Tensor> {
        let ModelConfig::Vit(c) = &self.config else {
            return Err(TrainError::Input {
                msg: "patchify needs a ViT; this model is a GPT".into(),
            });
        };
        let (b, ch, h, w) = images.dims4().map_err(|_| TrainError::Input {
            msg: format!(
                "images must be (batch, channels, height, width), got {:?}",
                images.dims()
            ),
        })?;
        if (ch, h, w) != (c.channels, c.height, c.width) {
            return Err(TrainError::Input {
                msg: format!(
                    "images are {ch}×{h}×{w}, the model expects {}×{}×{}",
                    c.channels, c.height, c.width
                ),
            });
        }
        let p = c.patch;
        let x = images
            .reshape((b, ch, h / p, p, w / p, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b, (h / p) * (w / p), ch * p * p))?;
        Ok(x)
    }

    /// Logits: `(B, classes)` for ViT images `(B, C, H, W)`; `(B, T, vocab)` for GPT byte
    /// sequences `(B, T)` (u32, `T ≤ context`), position `t` predicting byte `t + 1`.
    ///
    /// The ViT's last block runs on the CLS row only (its keys and values from every row): the
    /// same logits and gradients as the full block, whose other rows no output reads; that block's
    /// tracked Q, O, FC₁ and FC₂ record `(B, 1, ·)`. [`Transformer::forward_traced`] runs every
    /// row of every block.
    pub fn forward(&self, inputs: &Tensor) -> Result<Tensor> {
        self.run(inputs, None)
    }

    /// Logits and the [`Trace`] of this forward pass (residual stream, LayerNorms, attention).
    pub fn forward_traced(&self, inputs: &Tensor) -> Result<(Tensor, Trace)> {
        let mut trace = Trace::default();
        let logits = self.run(inputs, Some(&mut trace))?;
        Ok((logits, trace))
    }

    fn layer_norm(
        &self,
        ln: &LayerNorm,
        x: &Tensor,
        trace: &mut Option<&mut Trace>,
    ) -> Result<Tensor> {
        let y = ln.normalize(x)?;
        if let Some(t) = trace.as_deref_mut() {
            t.layer_norms.push(LayerNormTrace {
                name: ln.name.clone(),
                eps: ln.eps,
                input: x.detach(),
                normalized: y.detach(),
            });
        }
        ln.affine(&y)
    }

    /// The first residual stream `h₀ = embed(x) + pos`, `(B, T, d)`.
    fn embed(&self, inputs: &Tensor) -> Result<Tensor> {
        let d = self.config.dim();
        match &self.embedding {
            Embedding::Patches { patch, cls } => {
                let x = self.patchify(inputs)?;
                let b = x.dim(0)?;
                let tokens = patch.forward(&x)?;
                let cls = cls
                    .as_tensor()
                    .reshape((1, 1, d))?
                    .broadcast_as((b, 1, d))?;
                Ok(ops::add_rows(
                    &Tensor::cat(&[&cls, &tokens], 1)?,
                    self.pos.as_tensor(),
                )?)
            }
            Embedding::Bytes { table } => {
                let (b, t, ids) = self.byte_ids(inputs)?;
                let e = table.as_tensor().embedding(&ids)?.reshape((b, t, d))?;
                let pos = self.pos.as_tensor().narrow(0, 0, t)?;
                Ok(ops::add_rows(&e, &pos)?)
            }
        }
    }

    /// GPT inputs checked: byte sequences `(B, T)` with `1 ≤ T ≤ context` and every token inside
    /// the vocabulary; returns `B`, `T` and the tokens flattened to `u32`. An error names what is
    /// wrong (also for a ViT, which takes images).
    pub(crate) fn byte_ids(&self, inputs: &Tensor) -> Result<(usize, usize, Tensor)> {
        let ModelConfig::Gpt(c) = &self.config else {
            return Err(TrainError::Input {
                msg: "byte sequences need a GPT; this model is a ViT".into(),
            });
        };
        let context = c.context;
        let (b, t) = inputs.dims2().map_err(|_| TrainError::Input {
            msg: format!(
                "byte sequences must be (batch, length), got {:?}",
                inputs.dims()
            ),
        })?;
        if t == 0 || t > context {
            return Err(TrainError::Input {
                msg: format!("sequences of {t} bytes: the model takes 1 to {context}"),
            });
        }
        let ids = inputs.to_dtype(DType::U32)?.flatten_all()?;
        let vocab = c.vocab;
        let max = ids.max(0)?.to_scalar::<u32>()? as usize;
        if max >= vocab {
            return Err(TrainError::Input {
                msg: format!("token {max} is outside the vocabulary of {vocab}"),
            });
        }
        Ok((b, t, ids))
    }

    fn run(&self, inputs: &Tensor, mut trace: Option<&mut Trace>) -> Result<Tensor> {
        let c = &self.config;
        let mut h = self.embed(inputs)?;
        if let Some(t) = trace.as_deref_mut() {
            t.residual.push(h.detach());
        }
        let (heads, causal) = (c.heads(), c.causal());
        let fused_attention = h.dim(1)? >= FUSED_ATTENTION_MIN_TOKENS;
        let last = self.blocks.len().saturating_sub(1);
        for (i, blk) in self.blocks.iter().enumerate() {
            // The ViT's head reads the CLS row alone, so an untraced pass updates only that row
            // in the last block: its query, context, O and MLP on one row per image, its keys and
            // values from every row. The logits and every gradient are those of the full block.
            let cls_block = i == last && trace.is_none() && matches!(c, ModelConfig::Vit(_));
            let u = self.layer_norm(&blk.ln1, &h, &mut trace)?;
            let uq = if cls_block {
                u.narrow(1, 0, 1)?.contiguous()?
            } else {
                u.clone()
            };
            let (q, k, v) = (blk.q.forward(&uq)?, blk.k.forward(&u)?, blk.v.forward(&u)?);
            let ctx = match trace.as_deref_mut() {
                Some(t) => {
                    let (ctx, attn) = ops::attention_composite(&q, &k, &v, heads, causal)?;
                    t.attention.push(attn.detach());
                    ctx
                }
                None if fused_attention && !cls_block => ops::attention(&q, &k, &v, heads, causal)?,
                None => ops::attention_composite(&q, &k, &v, heads, causal)?.0,
            };
            if cls_block {
                h = h.narrow(1, 0, 1)?;
            }
            h = (h + blk.o.forward(&ctx)?)?;
            let u2 = self.layer_norm(&blk.ln2, &h, &mut trace)?;
            let m = blk.fc2.forward(&ops::gelu(&blk.fc1.forward(&u2)?)?)?;
            h = (h + m)?;
            if let Some(t) = trace.as_deref_mut() {
                t.residual.push(h.detach());
            }
        }
        let hf = self.layer_norm(&self.lnf, &h, &mut trace)?;
        match c {
            ModelConfig::Vit(_) => {
                let cls_out = hf.narrow(1, 0, 1)?.squeeze(1)?;
                Ok(self.head.forward(&cls_out)?)
            }
            ModelConfig::Gpt(_) => Ok(self.head.forward(&hf)?),
        }
    }

    /// Current parameter values by name (detached copies).
    pub fn snapshot(&self) -> Result<BTreeMap<String, Tensor>> {
        self.params
            .iter()
            .map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?)))
            .collect()
    }

    /// Overwrites every parameter with `tensors` (same names and shapes as [`parameter_shapes`]).
    pub fn load(&self, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        for (name, var) in &self.params {
            let t = tensors.get(name).ok_or_else(|| TrainError::Weights {
                msg: format!("parameter `{name}` is missing"),
            })?;
            if t.dims() != var.dims() {
                return Err(TrainError::Weights {
                    msg: format!(
                        "parameter `{name}` has shape {:?}, the model needs {:?}",
                        t.dims(),
                        var.dims()
                    ),
                });
            }
            var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
        }
        Ok(())
    }
}

/// Logits `(B, C)` or `(B, T, C)` and targets `(B,)` or `(B, T)` flattened to `(N, C)` and `(N,)`.
fn flatten_predictions(logits: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor)> {
    match logits.rank() {
        2 => Ok((logits.clone(), targets.clone())),
        3 => {
            let (b, t, c) = logits.dims3()?;
            Ok((logits.reshape((b * t, c))?, targets.reshape(b * t)?))
        }
        r => Err(TrainError::Input {
            msg: format!("logits of rank {r}: expected (batch, classes) or (batch, length, vocab)"),
        }),
    }
}

/// Mean cross-entropy (nats) of `logits` against `targets` (u32): `(B, C)` against `(B,)`, or
/// per position `(B, T, V)` against `(B, T)`, averaged over every prediction.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (l, t) = flatten_predictions(logits, targets)?;
    Ok(candle_nn::loss::cross_entropy(&l, &t)?)
}

/// Number of correct arg-max predictions (over every position for `(B, T, V)` logits).
pub fn correct_predictions(logits: &Tensor, targets: &Tensor) -> Result<usize> {
    let (l, t) = flatten_predictions(logits, targets)?;
    let pred = l.argmax(D::Minus1)?;
    let eq = pred.eq(&t.to_dtype(pred.dtype())?)?;
    Ok(eq.to_dtype(DType::U32)?.sum_all()?.to_scalar::<u32>()? as usize)
}
