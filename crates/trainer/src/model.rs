//! The pre-LayerNorm Vision Transformer of workload W1 (`../shared/docs/WORKLOADS.md`).
//!
//! Every linear layer is a [`TrackedLinear`], so a preconditioner or a diagnostic can ask, for one
//! training step, for each layer's input activations and output gradients. On request
//! ([`Vit::forward_traced`]) the model also returns its residual stream after every block, every
//! LayerNorm's input and pre-affine output, and every head's attention probabilities. With tracking
//! off and no trace requested the forward pass does no extra work.
//!
//! Parameter names follow the reference implementations' fixture (`patch.w`, `blk0.q.b`,
//! `blk3.ln2.g`, `lnf.b`, `head.w`, `cls`, `pos`), but linear weights are stored Candle-style as
//! `(out, in)`.

use std::collections::BTreeMap;

use bmt_kfac::TrackedLinear;
use candle_core::{DType, Device, Module, Tensor, Var, D};
use rand::Rng;
use rand_distr::{Distribution, Normal, Uniform};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::ops;

/// Architecture of the ViT. [`VitConfig::w1`] is workload W1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VitConfig {
    /// Input channels.
    pub channels: usize,
    /// Input height in pixels.
    pub height: usize,
    /// Input width in pixels.
    pub width: usize,
    /// Side of the square patches.
    pub patch: usize,
    /// Model width d.
    pub dim: usize,
    /// Number of transformer blocks.
    pub depth: usize,
    /// Attention heads per block (must divide `dim`).
    pub heads: usize,
    /// Hidden width of the MLP.
    pub mlp_dim: usize,
    /// Number of classes.
    pub classes: usize,
    /// LayerNorm ε.
    pub ln_eps: f64,
}

impl VitConfig {
    /// W1: 8×8 digits, 2×2 patches, d = 64, 4 blocks, 4 heads, MLP 128, 10 classes, ε = 1e-5.
    pub fn w1() -> Self {
        Self {
            channels: 1,
            height: 8,
            width: 8,
            patch: 2,
            dim: 64,
            depth: 4,
            heads: 4,
            mlp_dim: 128,
            classes: 10,
            ln_eps: 1e-5,
        }
    }

    /// Tokens per sequence: the patches plus the CLS token.
    pub fn tokens(&self) -> usize {
        (self.height / self.patch) * (self.width / self.patch) + 1
    }

    /// Values per patch: `channels · patch²`.
    pub fn patch_dim(&self) -> usize {
        self.channels * self.patch * self.patch
    }

    /// Width of one head.
    pub fn head_dim(&self) -> usize {
        self.dim / self.heads
    }

    /// Rejects impossible architectures, naming the offending command-line flag.
    pub fn validate(&self) -> Result<()> {
        let bad = |flag: &'static str, msg: String| Err(TrainError::Config { flag, msg });
        if self.patch == 0 || self.height % self.patch != 0 || self.width % self.patch != 0 {
            return bad(
                "--patch",
                format!(
                    "patch size {} must be > 0 and divide the image size {}×{}",
                    self.patch, self.height, self.width
                ),
            );
        }
        if self.dim == 0 || self.heads == 0 || self.dim % self.heads != 0 {
            return bad(
                "--heads",
                format!(
                    "{} heads must be > 0 and divide the model width {}",
                    self.heads, self.dim
                ),
            );
        }
        if self.depth == 0 || self.mlp_dim == 0 || self.classes < 2 {
            return bad(
                "--depth",
                "depth and MLP width must be > 0 and there must be at least 2 classes".into(),
            );
        }
        if !(self.ln_eps > 0.0 && self.ln_eps.is_finite()) {
            return bad(
                "--ln-eps",
                format!("LayerNorm ε = {} must be > 0", self.ln_eps),
            );
        }
        Ok(())
    }

    /// Number of trainable parameters.
    pub fn parameter_count(&self) -> usize {
        let d = self.dim;
        let lin = |i: usize, o: usize| i * o + o;
        let block = 2 * 2 * d + 4 * lin(d, d) + lin(d, self.mlp_dim) + lin(self.mlp_dim, d);
        lin(self.patch_dim(), d)
            + d
            + self.tokens() * d
            + self.depth * block
            + 2 * d
            + lin(d, self.classes)
    }
}

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

/// What [`Vit::forward_traced`] records about one forward pass.
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

/// The W1-style ViT.
#[derive(Debug)]
pub struct Vit {
    config: VitConfig,
    patch: TrackedLinear,
    cls: Var,
    pos: Var,
    blocks: Vec<Block>,
    lnf: LayerNorm,
    head: TrackedLinear,
    params: BTreeMap<String, Var>,
}

/// Draws W1's initialisation from `rng`: linear weights uniform in ±1/√fan_in, biases 0,
/// LayerNorm γ = 1 and β = 0, CLS and position embeddings normal with standard deviation 0.02.
///
/// Returns name → f32 tensor (weights `(out, in)`), in a fixed order so that a seed fixes the model.
pub fn init_parameters(
    config: &VitConfig,
    rng: &mut impl Rng,
    device: &Device,
) -> Result<BTreeMap<String, Tensor>> {
    let mut out = BTreeMap::new();
    let mut linear =
        |name: &str, fan_in: usize, fan_out: usize, rng: &mut dyn rand::RngCore| -> Result<()> {
            let bound = 1.0 / (fan_in as f32).sqrt();
            let dist = Uniform::new_inclusive(-bound, bound)
                .map_err(|e| TrainError::Init(e.to_string()))?;
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
    let d = config.dim;
    // Fixed draw order: patch, cls, pos, then per block q, k, v, o, fc1, fc2, then head.
    linear("patch", config.patch_dim(), d, rng)?;
    let normal = Normal::new(0.0f32, 0.02).map_err(|e| TrainError::Init(e.to_string()))?;
    let cls: Vec<f32> = (0..d).map(|_| normal.sample(rng)).collect();
    let pos: Vec<f32> = (0..config.tokens() * d)
        .map(|_| normal.sample(rng))
        .collect();
    for i in 0..config.depth {
        for l in ["q", "k", "v", "o"] {
            linear(&format!("blk{i}.{l}"), d, d, rng)?;
        }
        linear(&format!("blk{i}.fc1"), d, config.mlp_dim, rng)?;
        linear(&format!("blk{i}.fc2"), config.mlp_dim, d, rng)?;
    }
    linear("head", d, config.classes, rng)?;
    out.insert("cls".into(), Tensor::from_vec(cls, d, device)?);
    out.insert(
        "pos".into(),
        Tensor::from_vec(pos, (config.tokens(), d), device)?,
    );
    let mut ln = |name: String| -> Result<()> {
        out.insert(format!("{name}.g"), Tensor::ones(d, DType::F32, device)?);
        out.insert(format!("{name}.b"), Tensor::zeros(d, DType::F32, device)?);
        Ok(())
    };
    for i in 0..config.depth {
        ln(format!("blk{i}.ln1"))?;
        ln(format!("blk{i}.ln2"))?;
    }
    ln("lnf".into())?;
    Ok(out)
}

/// Expected parameter names and shapes of a config (Candle layout, weights `(out, in)`).
pub fn parameter_shapes(config: &VitConfig) -> BTreeMap<String, Vec<usize>> {
    let d = config.dim;
    let mut s = BTreeMap::new();
    let mut lin = |name: String, i: usize, o: usize| {
        s.insert(format!("{name}.w"), vec![o, i]);
        s.insert(format!("{name}.b"), vec![o]);
    };
    lin("patch".into(), config.patch_dim(), d);
    for b in 0..config.depth {
        for l in ["q", "k", "v", "o"] {
            lin(format!("blk{b}.{l}"), d, d);
        }
        lin(format!("blk{b}.fc1"), d, config.mlp_dim);
        lin(format!("blk{b}.fc2"), config.mlp_dim, d);
    }
    lin("head".into(), d, config.classes);
    s.insert("cls".into(), vec![d]);
    s.insert("pos".into(), vec![config.tokens(), d]);
    for b in 0..config.depth {
        for l in ["ln1", "ln2"] {
            s.insert(format!("blk{b}.{l}.g"), vec![d]);
            s.insert(format!("blk{b}.{l}.b"), vec![d]);
        }
    }
    s.insert("lnf.g".into(), vec![d]);
    s.insert("lnf.b".into(), vec![d]);
    s
}

impl Vit {
    /// Builds the model from named tensors (every name of [`parameter_shapes`], exactly those
    /// shapes), copied into fresh variables of `dtype` on `device`.
    pub fn from_tensors(
        config: VitConfig,
        tensors: &BTreeMap<String, Tensor>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
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
        let ln = |n: &str| LayerNorm {
            name: n.to_string(),
            gain: p(&format!("{n}.g")),
            bias: p(&format!("{n}.b")),
            eps: config.ln_eps,
        };
        let mut blocks = Vec::with_capacity(config.depth);
        for i in 0..config.depth {
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
        Ok(Self {
            patch: lin("patch")?,
            cls: p("cls"),
            pos: p("pos"),
            lnf: ln("lnf"),
            head: lin("head")?,
            blocks,
            config,
            params,
        })
    }

    /// A freshly initialised model (W1's scheme, [`init_parameters`]) from `rng`.
    pub fn init(
        config: VitConfig,
        rng: &mut impl Rng,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        let tensors = init_parameters(&config, rng, &Device::Cpu)?;
        Self::from_tensors(config, &tensors, dtype, device)
    }

    /// The architecture.
    pub fn config(&self) -> &VitConfig {
        &self.config
    }

    /// Every parameter by name (sorted).
    pub fn parameters(&self) -> &BTreeMap<String, Var> {
        &self.params
    }

    /// Every tracked linear layer, in forward order: patch, per block q, k, v, o, fc1, fc2, head.
    pub fn tracked_layers(&self) -> Vec<&TrackedLinear> {
        let mut out = vec![&self.patch];
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
    /// flattened channel-major then row-major (for one channel: exactly W1's order).
    pub fn patchify(&self, images: &Tensor) -> Result<Tensor> {
        let c = &self.config;
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

    /// Logits `(B, classes)` for images `(B, C, H, W)`.
    pub fn forward(&self, images: &Tensor) -> Result<Tensor> {
        self.run(images, None)
    }

    /// Logits and the [`Trace`] of this forward pass (residual stream, LayerNorms, attention).
    pub fn forward_traced(&self, images: &Tensor) -> Result<(Tensor, Trace)> {
        let mut trace = Trace::default();
        let logits = self.run(images, Some(&mut trace))?;
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

    fn run(&self, images: &Tensor, mut trace: Option<&mut Trace>) -> Result<Tensor> {
        let c = &self.config;
        let x = self.patchify(images)?;
        let b = x.dim(0)?;
        let tokens = self.patch.forward(&x)?;
        let cls = self
            .cls
            .as_tensor()
            .reshape((1, 1, c.dim))?
            .broadcast_as((b, 1, c.dim))?;
        let mut h = ops::add_rows(&Tensor::cat(&[&cls, &tokens], 1)?, self.pos.as_tensor())?;
        if let Some(t) = trace.as_deref_mut() {
            t.residual.push(h.detach());
        }
        let (t_len, heads, hd) = (c.tokens(), c.heads, c.head_dim());
        let scale = 1.0 / (hd as f64).sqrt();
        for blk in &self.blocks {
            let u = self.layer_norm(&blk.ln1, &h, &mut trace)?;
            let split = |y: Tensor| -> candle_core::Result<Tensor> {
                y.reshape((b, t_len, heads, hd))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let q = split(blk.q.forward(&u)?)?;
            let k = split(blk.k.forward(&u)?)?;
            let v = split(blk.v.forward(&u)?)?;
            let scores = (q.matmul(&k.t()?)? * scale)?;
            let attn = ops::softmax_last_dim(&scores)?;
            if let Some(t) = trace.as_deref_mut() {
                t.attention.push(attn.detach());
            }
            let ctx = attn
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((b, t_len, c.dim))?;
            h = (h + blk.o.forward(&ctx)?)?;
            let u2 = self.layer_norm(&blk.ln2, &h, &mut trace)?;
            let m = blk.fc2.forward(&ops::gelu(&blk.fc1.forward(&u2)?)?)?;
            h = (h + m)?;
            if let Some(t) = trace.as_deref_mut() {
                t.residual.push(h.detach());
            }
        }
        let hf = self.layer_norm(&self.lnf, &h, &mut trace)?;
        let cls_out = hf.narrow(1, 0, 1)?.squeeze(1)?;
        Ok(self.head.forward(&cls_out)?)
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

/// Mean cross-entropy of `logits (B, C)` against `labels (B,)` (u32).
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::loss::cross_entropy(logits, labels)?)
}

/// Number of correct arg-max predictions.
pub fn correct_predictions(logits: &Tensor, labels: &Tensor) -> Result<usize> {
    let pred = logits.argmax(D::Minus1)?;
    let eq = pred.eq(&labels.to_dtype(pred.dtype())?)?;
    Ok(eq.to_dtype(DType::U32)?.sum_all()?.to_scalar::<u32>()? as usize)
}
