//! The forward pass that keeps what its backward pass needs, and that backward pass.

use std::collections::BTreeMap;

use bmt_kfac::LayerCapture;
use candle_core::{DType, Device, Storage, Tensor};

use super::linear::{
    add_affine, add_assign, affine, column_dots, column_sums, input_grad, scale_rows, scale_shift,
    weight_grad,
};
use crate::error::{Result, TrainError};
use crate::model::{ModelConfig, Transformer};
use crate::ops::slices::{self, AttentionShape};

/// The sizes of one pass.
#[derive(Debug, Clone, Copy)]
struct Dims {
    batch: usize,
    tokens: usize,
    d: usize,
    mlp: usize,
    outputs: usize,
    depth: usize,
    eps: f64,
    attention: AttentionShape,
    /// ViT: the head reads the CLS token only (`batch` rows); GPT: every position.
    cls_only: bool,
}

impl Dims {
    fn of(c: &ModelConfig, batch: usize, tokens: usize) -> Self {
        Self {
            batch,
            tokens,
            d: c.dim(),
            mlp: c.mlp_dim(),
            outputs: c.outputs(),
            depth: c.depth(),
            eps: c.ln_eps(),
            attention: AttentionShape::new(batch, tokens, c.heads(), c.head_dim(), c.causal()),
            cls_only: matches!(c, ModelConfig::Vit(_)),
        }
    }

    /// Rows of the residual stream, `B·T`.
    fn rows(&self) -> usize {
        self.batch * self.tokens
    }

    /// Rows the head reads: `B` (ViT) or `B·T` (GPT).
    fn head_rows(&self) -> usize {
        if self.cls_only {
            self.batch
        } else {
            self.rows()
        }
    }

    /// Whether block `i` updates the CLS rows only: the ViT's last block, whose other rows
    /// nothing reads (its keys and values still come from every row).
    fn cls_block(&self, i: usize) -> bool {
        self.cls_only && i + 1 == self.depth
    }

    /// Rows block `i` updates and outputs: `B` for the CLS block, `B·T` otherwise.
    fn block_rows(&self, i: usize) -> usize {
        if self.cls_block(i) {
            self.batch
        } else {
            self.rows()
        }
    }
}

/// The first row of each of the `batch` sequences of `t` rows of `d` in `x`, into `out`
/// (`batch × d`).
fn first_rows(x: &[f32], (batch, t, d): (usize, usize, usize), out: &mut [f32]) {
    for b in 0..batch {
        out[b * d..(b + 1) * d].copy_from_slice(&x[b * t * d..b * t * d + d]);
    }
}

/// What one block's backward pass reads, row-major: `(B·T) × width`, except that in the CLS
/// block ([`Dims::cls_block`]) everything from `q` on but `k` and `v` has the `B` CLS rows only.
#[derive(Debug, Default)]
struct BlockActivations {
    /// LN₁'s pre-affine output `y₁` and output `u₁` (the input of K and V, and of Q outside the
    /// CLS block).
    y1: Vec<f32>,
    u1: Vec<f32>,
    /// The CLS block's Q input: the CLS rows of `u₁`, `B × d`.
    uq: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Attention context (the input of O).
    ctx: Vec<f32>,
    /// `h + O(ctx)`: the residual between attention and MLP.
    mid: Vec<f32>,
    /// LN₂'s pre-affine output and output (the input of FC₁).
    y2: Vec<f32>,
    u2: Vec<f32>,
    /// FC₁'s output (pre-activation) and its GELU (the input of FC₂), `(B·T) × mlp`.
    a1: Vec<f32>,
    gl: Vec<f32>,
}

/// How the input enters the residual stream.
#[derive(Debug, Default)]
enum Input {
    #[default]
    None,
    /// ViT: patch rows `(B·N_p) × (C·p²)`.
    Patches { patches: Vec<f32>, patch_dim: usize },
    /// GPT: byte ids `(B·T)`.
    Bytes { ids: Vec<u32> },
}

/// Scratch of the backward pass, reused from call to call.
#[derive(Debug, Default)]
struct Scratch {
    dh: Vec<f32>,
    du: Vec<f32>,
    dy: Vec<f32>,
    dx: Vec<f32>,
    dctx: Vec<f32>,
    dq: Vec<f32>,
    /// The CLS block's `∂L/∂u₁` through Q, `B × d`.
    duq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
    dgl: Vec<f32>,
    da1: Vec<f32>,
    dhead: Vec<f32>,
    dyf: Vec<f32>,
    dhf: Vec<f32>,
}

/// Which layer captures [`Tape::backward`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Captures {
    /// None.
    None,
    /// The input and output gradient of every Q, K, V, O, FC₁ and FC₂ layer
    /// ([`Transformer::attention_and_mlp_layers`] order), `(B, T, ·)`, as a tracked layer records
    /// them.
    Full,
    /// The same summed over the positions of each sequence, `(B, 1, ·)`: inputs averaged, output
    /// gradients summed. Exactly what K-FAC-reduce forms its factors from (`Ā`: per-sequence mean
    /// inputs, `Ĝ`: per-sequence summed gradients, `bmt_kfac::WeightSharing::Reduce`), at a
    /// `T`-th of the size; not valid for the expand setting.
    PositionSums,
}

/// What [`Tape::backward`] computes.
#[derive(Debug, Clone, Copy)]
pub struct Want {
    /// Every parameter's gradient.
    pub parameters: bool,
    /// The layer captures.
    pub captures: Captures,
}

/// What [`Tape::backward`] returns.
#[derive(Debug, Default)]
pub struct Backward {
    /// Parameter name → gradient (row-major, the parameter's shape), when asked for.
    pub gradients: BTreeMap<String, Vec<f32>>,
    /// The layer captures, when asked for.
    pub captures: Vec<LayerCapture>,
}

/// One forward pass of a [`Transformer`] on `f32` CPU buffers, with every activation its backward
/// pass reads (see the [module docs](super) for the formulas). The buffers are reused from step to
/// step: a `Tape` kept by the caller allocates only on the first step and when shapes grow.
#[derive(Debug, Default)]
pub struct Tape {
    dims: Option<Dims>,
    /// The parameters at the time of the forward pass, by name.
    params: BTreeMap<String, Vec<f32>>,
    input: Input,
    /// Residual stream: the input of block `i` at `i`, the last block's output at `depth`.
    residual: Vec<Vec<f32>>,
    blocks: Vec<BlockActivations>,
    /// The rows the head reads, before the final LayerNorm, its pre-affine output and output.
    hf: Vec<f32>,
    yf: Vec<f32>,
    uf: Vec<f32>,
    logits: Vec<f32>,
    scratch: Scratch,
}

/// `v` resized to `n` elements (the contents are overwritten by the caller).
fn sized(v: &mut Vec<f32>, n: usize) -> &mut Vec<f32> {
    v.resize(n, 0.0);
    v
}

/// Copies a contiguous `f32` CPU tensor into `dst` without an intermediate buffer.
fn read_into(t: &Tensor, dst: &mut Vec<f32>) -> Result<()> {
    let (storage, layout) = t.storage_and_layout();
    let (Storage::Cpu(cpu), Some((a, b))) = (&*storage, layout.contiguous_offsets()) else {
        drop(storage);
        *dst = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        return Ok(());
    };
    dst.clear();
    dst.extend_from_slice(&cpu.as_slice::<f32>()?[a..b]);
    Ok(())
}

impl Tape {
    /// An empty tape.
    pub fn new() -> Self {
        Self::default()
    }

    /// The forward pass on `inputs` (ViT images `(B, C, H, W)`, GPT byte sequences `(B, T)`),
    /// keeping every activation; the logits are then [`Tape::logits`]. The model must be on the
    /// CPU in `f32` ([`super::supports`]). Inputs are checked as by [`Transformer::forward`].
    pub fn forward(&mut self, model: &Transformer, inputs: &Tensor) -> Result<()> {
        if !super::supports(model) {
            return Err(TrainError::Input {
                msg: "the native training step needs an f32 model on the CPU; use the autograd \
                      step (--backward autograd) elsewhere"
                    .into(),
            });
        }
        let c = model.config();
        let (batch, tokens) = match c {
            ModelConfig::Vit(v) => {
                let patches = model.patchify(inputs)?;
                let (b, np, pd) = patches.dims3()?;
                let mut buf = match std::mem::take(&mut self.input) {
                    Input::Patches { patches, .. } => patches,
                    _ => Vec::new(),
                };
                read_into(&patches.to_dtype(DType::F32)?.contiguous()?, &mut buf)?;
                self.input = Input::Patches {
                    patches: buf,
                    patch_dim: pd,
                };
                debug_assert_eq!(np + 1, v.tokens());
                (b, v.tokens())
            }
            ModelConfig::Gpt(_) => {
                let (b, t, ids) = model.byte_ids(inputs)?;
                self.input = Input::Bytes {
                    ids: ids.to_vec1::<u32>()?,
                };
                (b, t)
            }
        };
        let dims = Dims::of(c, batch, tokens);
        self.dims = Some(dims);
        for (name, var) in model.parameters() {
            read_into(
                var.as_tensor(),
                self.params.entry(name.clone()).or_default(),
            )?;
        }
        self.params
            .retain(|n, _| model.parameters().contains_key(n));
        self.residual.resize_with(dims.depth + 1, Vec::new);
        self.blocks
            .resize_with(dims.depth, BlockActivations::default);
        self.embed(&dims);
        for i in 0..dims.depth {
            self.block_forward(&dims, i);
        }
        self.head_forward(&dims);
        Ok(())
    }

    /// `h₀ = embed(x) + pos` into `residual[0]`.
    fn embed(&mut self, dims: &Dims) {
        let (d, t) = (dims.d, dims.tokens);
        let p = &self.params;
        let h = sized(&mut self.residual[0], dims.rows() * d);
        let pos = &p["pos"];
        match &self.input {
            Input::Patches { patches, patch_dim } => {
                let np = t - 1;
                let mut tok = vec![0.0; dims.batch * np * d];
                affine(
                    patches,
                    &p["patch.w"],
                    &p["patch.b"],
                    (dims.batch * np, *patch_dim, d),
                    &mut tok,
                );
                for b in 0..dims.batch {
                    let seq = &mut h[b * t * d..(b + 1) * t * d];
                    seq[..d].copy_from_slice(&p["cls"]);
                    seq[d..].copy_from_slice(&tok[b * np * d..(b + 1) * np * d]);
                    add_assign(seq, &pos[..t * d]);
                }
            }
            Input::Bytes { ids } => {
                let wte = &p["wte"];
                for (r, &id) in ids.iter().enumerate() {
                    let id = id as usize;
                    let row = &mut h[r * d..(r + 1) * d];
                    row.copy_from_slice(&wte[id * d..(id + 1) * d]);
                    let tpos = r % t;
                    add_assign(row, &pos[tpos * d..(tpos + 1) * d]);
                }
            }
            Input::None => unreachable!("forward sets the input before embedding it"),
        }
    }

    /// Block `i`: `mid = h + O(MHSA(LN₁(h)))`, `h' = mid + FC₂(GELU(FC₁(LN₂(mid))))`; in the
    /// CLS block ([`Dims::cls_block`]) on the CLS rows only, its keys and values from every row.
    fn block_forward(&mut self, dims: &Dims, i: usize) {
        let (rows, d, mlp, eps) = (dims.rows(), dims.d, dims.mlp, dims.eps);
        let (cls, qr) = (dims.cls_block(i), dims.block_rows(i));
        let p = |n: &str| &self.params[&format!("blk{i}.{n}")];
        let (inputs, outputs) = self.residual.split_at_mut(i + 1);
        let (x, out) = (&inputs[i], &mut outputs[0]);
        let a = &mut self.blocks[i];
        let (n, nq) = (rows * d, qr * d);
        let seqs = (dims.batch, dims.tokens, d);
        slices::layer_norm(x, d, eps, sized(&mut a.y1, n));
        scale_shift(&a.y1, p("ln1.g"), p("ln1.b"), sized(&mut a.u1, n));
        if cls {
            first_rows(&a.u1, seqs, sized(&mut a.uq, nq));
        }
        let q_in = if cls { &a.uq } else { &a.u1 };
        affine(q_in, p("q.w"), p("q.b"), (qr, d, d), sized(&mut a.q, nq));
        affine(&a.u1, p("k.w"), p("k.b"), (rows, d, d), sized(&mut a.k, n));
        affine(&a.u1, p("v.w"), p("v.b"), (rows, d, d), sized(&mut a.v, n));
        let ctx = sized(&mut a.ctx, nq);
        if cls {
            slices::first_query_attention(&dims.attention, &a.q, &a.k, &a.v, ctx);
            first_rows(x, seqs, sized(&mut a.mid, nq));
        } else {
            slices::attention(&dims.attention, &a.q, &a.k, &a.v, ctx);
            sized(&mut a.mid, n).copy_from_slice(x);
        }
        add_affine(&a.ctx, p("o.w"), p("o.b"), (qr, d, d), &mut a.mid);
        slices::layer_norm(&a.mid, d, eps, sized(&mut a.y2, nq));
        scale_shift(&a.y2, p("ln2.g"), p("ln2.b"), sized(&mut a.u2, nq));
        let wide = qr * mlp;
        affine(
            &a.u2,
            p("fc1.w"),
            p("fc1.b"),
            (qr, d, mlp),
            sized(&mut a.a1, wide),
        );
        slices::gelu(&a.a1, sized(&mut a.gl, wide));
        sized(out, nq).copy_from_slice(&a.mid);
        add_affine(&a.gl, p("fc2.w"), p("fc2.b"), (qr, mlp, d), out);
    }

    /// The final LayerNorm on the rows the head reads (the last block's output rows), then the
    /// head.
    fn head_forward(&mut self, dims: &Dims) {
        let (d, hr) = (dims.d, dims.head_rows());
        sized(&mut self.hf, hr * d).copy_from_slice(&self.residual[dims.depth]);
        let p = &self.params;
        slices::layer_norm(&self.hf, d, dims.eps, sized(&mut self.yf, hr * d));
        scale_shift(
            &self.yf,
            &p["lnf.g"],
            &p["lnf.b"],
            sized(&mut self.uf, hr * d),
        );
        affine(
            &self.uf,
            &p["head.w"],
            &p["head.b"],
            (hr, d, dims.outputs),
            sized(&mut self.logits, hr * dims.outputs),
        );
    }

    fn dims(&self) -> Result<Dims> {
        self.dims.ok_or_else(|| TrainError::Input {
            msg: "the tape holds no forward pass: call Tape::forward first".into(),
        })
    }

    /// The logits of the last forward pass as a tensor: `(B, classes)` for a ViT, `(B, T, vocab)`
    /// for a GPT, as [`Transformer::forward`] returns them.
    pub fn logits(&self) -> Result<Tensor> {
        let dims = self.dims()?;
        let t = Tensor::from_slice(&self.logits, (dims.head_rows(), dims.outputs), &Device::Cpu)?;
        Ok(if dims.cls_only {
            t
        } else {
            t.reshape((dims.batch, dims.tokens, dims.outputs))?
        })
    }

    /// Mean cross-entropy (nats) of the last forward pass against `targets` (`(B,)` or `(B, T)`,
    /// integer classes), the number of correct arg-max predictions, and the gradient of the mean
    /// loss with respect to the logits, `(softmax(ℓ) − onehot(y))/N`, which [`Tape::backward`]
    /// takes. Each row's log-sum-exp and softmax are taken in `f64`.
    pub fn cross_entropy(&self, targets: &Tensor) -> Result<(f64, usize, Vec<f32>)> {
        let n = self.dims()?.head_rows();
        let (sum, correct, grad) = self.cross_entropy_sum(targets, n)?;
        Ok((sum / n as f64, correct, grad))
    }

    /// As [`Tape::cross_entropy`] for this tape's part of a larger batch of `mean_over`
    /// predictions: the *sum* of this part's losses, its correct predictions, and its rows of the
    /// gradient of the whole batch's mean, `(softmax(ℓ) − onehot(y))/mean_over`.
    pub fn cross_entropy_sum(
        &self,
        targets: &Tensor,
        mean_over: usize,
    ) -> Result<(f64, usize, Vec<f32>)> {
        let dims = self.dims()?;
        let (n, c) = (dims.head_rows(), dims.outputs);
        let y = targets
            .flatten_all()?
            .to_dtype(DType::U32)?
            .to_vec1::<u32>()?;
        if y.len() != n {
            return Err(TrainError::Input {
                msg: format!(
                    "{} targets for {n} predictions (targets of shape {:?})",
                    y.len(),
                    targets.dims()
                ),
            });
        }
        if let Some(&bad) = y.iter().find(|&&v| v as usize >= c) {
            return Err(TrainError::Input {
                msg: format!("target {bad} is outside the {c} classes"),
            });
        }
        let mut grad = vec![0.0f32; n * c];
        let (mut loss, mut correct) = (0.0f64, 0usize);
        let inv_n = 1.0 / mean_over.max(1) as f64;
        for ((row, g), &yi) in self
            .logits
            .chunks_exact(c)
            .zip(grad.chunks_exact_mut(c))
            .zip(&y)
        {
            let (mut arg, mut max) = (0usize, row[0]);
            for (j, &v) in row.iter().enumerate() {
                if v > max {
                    (arg, max) = (j, v);
                }
            }
            correct += usize::from(arg == yi as usize);
            let m = f64::from(max);
            let sum: f64 = row.iter().map(|&v| (f64::from(v) - m).exp()).sum();
            loss += sum.ln() + m - f64::from(row[yi as usize]);
            for (o, &v) in g.iter_mut().zip(row) {
                *o = ((f64::from(v) - m).exp() / sum * inv_n) as f32;
            }
            g[yi as usize] -= inv_n as f32;
        }
        Ok((loss, correct, grad))
    }

    /// Predictions the head makes in the last forward pass (`B` for a ViT, `B·T` for a GPT).
    pub fn predictions(&self) -> Result<usize> {
        Ok(self.dims()?.head_rows())
    }

    /// The backward pass of the last forward pass from `dlogits` (the gradient of the loss with
    /// respect to [`Tape::logits`], row-major): the parameter gradients and/or the layer captures
    /// ([`Want`]). Without parameters the weight-gradient GEMMs are skipped: what K-FAC's
    /// Monte-Carlo backward needs costs about half a training backward.
    pub fn backward(&mut self, dlogits: &[f32], want: Want) -> Result<Backward> {
        let dims = self.dims()?;
        let (rows, d, mlp, eps, t) = (dims.rows(), dims.d, dims.mlp, dims.eps, dims.tokens);
        let (hr, c) = (dims.head_rows(), dims.outputs);
        if dlogits.len() != hr * c {
            return Err(TrainError::Input {
                msg: format!(
                    "a logit gradient of {} values for {hr} × {c} logits",
                    dlogits.len()
                ),
            });
        }
        let Tape {
            params,
            input,
            residual,
            blocks,
            hf,
            yf,
            uf,
            scratch: s,
            ..
        } = self;
        let p = |n: &str| &params[n];
        let mut out = Backward::default();
        let mut grad = |name: String, g: Vec<f32>| {
            out.gradients.insert(name, g);
        };
        // Head and final LayerNorm.
        input_grad(
            dlogits,
            p("head.w"),
            (hr, d, c),
            false,
            sized(&mut s.dhead, hr * d),
        );
        if want.parameters {
            grad("head.w".into(), weight_grad(dlogits, uf, (hr, d, c)));
            grad("head.b".into(), column_sums(dlogits, c));
            grad("lnf.g".into(), column_dots(&s.dhead, yf, d));
            grad("lnf.b".into(), column_sums(&s.dhead, d));
        }
        scale_rows(&s.dhead, p("lnf.g"), sized(&mut s.dyf, hr * d));
        slices::layer_norm_backward(hf, &s.dyf, d, eps, sized(&mut s.dhf, hr * d));
        let n = rows * d;
        // The last block outputs exactly the rows the head reads.
        sized(&mut s.dh, hr * d).copy_from_slice(&s.dhf);
        // A layer's capture over the `tokens` rows per sequence it acts on (1 for the CLS block's
        // Q, O, FC₁ and FC₂).
        let capture = |name: String,
                       input: &[f32],
                       output_grad: &[f32],
                       tokens: usize|
         -> Result<LayerCapture> {
            let tensor = |x: &[f32], scale: Option<f32>| -> Result<Tensor> {
                let w = x.len() / (dims.batch * tokens);
                Ok(match scale {
                    None => Tensor::from_slice(x, (dims.batch, tokens, w), &Device::Cpu)?,
                    Some(s) => {
                        let sums = position_sums(x, dims.batch, tokens, w, s);
                        Tensor::from_vec(sums, (dims.batch, 1, w), &Device::Cpu)?
                    }
                })
            };
            let reduced = want.captures == Captures::PositionSums;
            Ok(LayerCapture {
                input: tensor(input, reduced.then_some(1.0 / tokens as f32))?,
                output_grad: tensor(output_grad, reduced.then_some(1.0))?,
                name,
            })
        };
        let capturing = want.captures != Captures::None;
        let mut captures_by_block = Vec::with_capacity(dims.depth);
        for i in (0..dims.depth).rev() {
            let a = &blocks[i];
            let x = &residual[i];
            let name = |n: &str| format!("blk{i}.{n}");
            let pw = |n: &str| &params[&name(n)];
            // The CLS block's Q, O and MLP act on `qr = B` rows, one token per sequence.
            let (cls, qr) = (dims.cls_block(i), dims.block_rows(i));
            let (nq, tq) = (qr * d, if cls { 1 } else { t });
            // MLP: h' = mid + FC₂(GELU(FC₁(LN₂(mid)))); s.dh holds ∂L/∂h'.
            let cap_fc2 = capturing
                .then(|| capture(name("fc2"), &a.gl, &s.dh, tq))
                .transpose()?;
            input_grad(
                &s.dh,
                pw("fc2.w"),
                (qr, mlp, d),
                false,
                sized(&mut s.dgl, qr * mlp),
            );
            slices::gelu_backward(&a.a1, &s.dgl, sized(&mut s.da1, qr * mlp));
            let cap_fc1 = capturing
                .then(|| capture(name("fc1"), &a.u2, &s.da1, tq))
                .transpose()?;
            input_grad(
                &s.da1,
                pw("fc1.w"),
                (qr, d, mlp),
                false,
                sized(&mut s.du, nq),
            );
            if want.parameters {
                grad(name("fc2.w"), weight_grad(&s.dh, &a.gl, (qr, mlp, d)));
                grad(name("fc2.b"), column_sums(&s.dh, d));
                grad(name("fc1.w"), weight_grad(&s.da1, &a.u2, (qr, d, mlp)));
                grad(name("fc1.b"), column_sums(&s.da1, mlp));
                grad(name("ln2.g"), column_dots(&s.du, &a.y2, d));
                grad(name("ln2.b"), column_sums(&s.du, d));
            }
            scale_rows(&s.du, pw("ln2.g"), sized(&mut s.dy, nq));
            slices::layer_norm_backward(&a.mid, &s.dy, d, eps, sized(&mut s.dx, nq));
            add_assign(&mut s.dh, &s.dx);
            // Attention: mid = h + O(ctx); s.dh now holds ∂L/∂mid.
            let cap_o = capturing
                .then(|| capture(name("o"), &a.ctx, &s.dh, tq))
                .transpose()?;
            input_grad(&s.dh, pw("o.w"), (qr, d, d), false, sized(&mut s.dctx, nq));
            let (dq, dk, dv) = (
                sized(&mut s.dq, nq),
                sized(&mut s.dk, n),
                sized(&mut s.dv, n),
            );
            if cls {
                slices::first_query_attention_backward(
                    &dims.attention,
                    &a.q,
                    &a.k,
                    &a.v,
                    &s.dctx,
                    dq,
                    dk,
                    dv,
                );
            } else {
                slices::attention_backward(&dims.attention, &a.q, &a.k, &a.v, &s.dctx, dq, dk, dv);
            }
            let q_in = if cls { &a.uq } else { &a.u1 };
            if want.parameters {
                grad(name("o.w"), weight_grad(&s.dh, &a.ctx, (qr, d, d)));
                grad(name("o.b"), column_sums(&s.dh, d));
                grad(name("q.w"), weight_grad(&s.dq, q_in, (qr, d, d)));
                grad(name("q.b"), column_sums(&s.dq, d));
                for (l, dl) in [("k", &s.dk), ("v", &s.dv)] {
                    grad(
                        name(&format!("{l}.w")),
                        weight_grad(dl, &a.u1, (rows, d, d)),
                    );
                    grad(name(&format!("{l}.b")), column_sums(dl, d));
                }
            }
            if capturing {
                let mut caps = Vec::with_capacity(6);
                caps.push(capture(name("q"), q_in, &s.dq, tq)?);
                for (l, dl) in [("k", &s.dk), ("v", &s.dv)] {
                    caps.push(capture(name(l), &a.u1, dl, t)?);
                }
                caps.extend(cap_o);
                caps.extend(cap_fc1);
                caps.extend(cap_fc2);
                captures_by_block.push(caps);
            }
            if i == 0 && !want.parameters {
                // ∂L/∂h₀ feeds only the embedding's gradients, which are not asked for.
                break;
            }
            // ∂L/∂u₁ through Q, K and V.
            if cls {
                input_grad(&s.dk, pw("k.w"), (rows, d, d), false, sized(&mut s.du, n));
                input_grad(&s.dv, pw("v.w"), (rows, d, d), true, &mut s.du);
                input_grad(&s.dq, pw("q.w"), (qr, d, d), false, sized(&mut s.duq, nq));
                for b in 0..dims.batch {
                    add_assign(
                        &mut s.du[b * t * d..b * t * d + d],
                        &s.duq[b * d..(b + 1) * d],
                    );
                }
            } else {
                input_grad(&s.dq, pw("q.w"), (rows, d, d), false, sized(&mut s.du, n));
                input_grad(&s.dk, pw("k.w"), (rows, d, d), true, &mut s.du);
                input_grad(&s.dv, pw("v.w"), (rows, d, d), true, &mut s.du);
            }
            if want.parameters {
                grad(name("ln1.g"), column_dots(&s.du, &a.y1, d));
                grad(name("ln1.b"), column_sums(&s.du, d));
            }
            scale_rows(&s.du, pw("ln1.g"), sized(&mut s.dy, n));
            slices::layer_norm_backward(x, &s.dy, d, eps, sized(&mut s.dx, n));
            if cls {
                // The residual carries ∂L/∂mid back to the CLS rows only.
                for b in 0..dims.batch {
                    add_assign(
                        &mut s.dx[b * t * d..b * t * d + d],
                        &s.dh[b * d..(b + 1) * d],
                    );
                }
                std::mem::swap(&mut s.dh, &mut s.dx);
            } else {
                add_assign(&mut s.dh, &s.dx);
            }
        }
        out.captures = captures_by_block.into_iter().rev().flatten().collect();
        if want.parameters {
            embedding_grads(&dims, params, input, &s.dh, &mut out.gradients);
        }
        Ok(out)
    }
}

/// `scale · Σₜ x[b, t, ·]` for rows `x` of `batch · t` rows of `w` columns: `batch × w`.
fn position_sums(x: &[f32], batch: usize, t: usize, w: usize, scale: f32) -> Vec<f32> {
    let mut out = vec![0.0; batch * w];
    for (o, seq) in out.chunks_exact_mut(w).zip(x.chunks_exact(t * w)) {
        for row in seq.chunks_exact(w) {
            add_assign(o, row);
        }
        if scale != 1.0 {
            o.iter_mut().for_each(|v| *v *= scale);
        }
    }
    out
}

/// The gradients of the embedding parameters from `dh = ∂L/∂h₀`, `(B·T) × d`.
fn embedding_grads(
    dims: &Dims,
    params: &BTreeMap<String, Vec<f32>>,
    input: &Input,
    dh: &[f32],
    out: &mut BTreeMap<String, Vec<f32>>,
) {
    let (d, t) = (dims.d, dims.tokens);
    let mut dpos = vec![0.0; params["pos"].len()];
    for seq in dh.chunks_exact(t * d) {
        add_assign(&mut dpos[..t * d], seq);
    }
    out.insert("pos".into(), dpos);
    match input {
        Input::Patches { patches, patch_dim } => {
            let np = t - 1;
            let mut dcls = vec![0.0; d];
            let mut dtok = vec![0.0; dims.batch * np * d];
            for (b, seq) in dh.chunks_exact(t * d).enumerate() {
                add_assign(&mut dcls, &seq[..d]);
                dtok[b * np * d..(b + 1) * np * d].copy_from_slice(&seq[d..]);
            }
            out.insert("cls".into(), dcls);
            let shape = (dims.batch * np, *patch_dim, d);
            out.insert("patch.w".into(), weight_grad(&dtok, patches, shape));
            out.insert("patch.b".into(), column_sums(&dtok, d));
        }
        Input::Bytes { ids } => {
            let mut dwte = vec![0.0; params["wte"].len()];
            for (&id, row) in ids.iter().zip(dh.chunks_exact(d)) {
                let id = id as usize;
                add_assign(&mut dwte[id * d..(id + 1) * d], row);
            }
            out.insert("wte".into(), dwte);
        }
        Input::None => {}
    }
}
