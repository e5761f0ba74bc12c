//! The training step of a [`Transformer`] written out by hand: forward pass, cross-entropy and
//! backward pass on `f32` CPU buffers, without candle's autograd graph.
//!
//! # Why
//!
//! At W1's sizes (1088 rows of 64 features) candle's autograd costs more than the arithmetic: every
//! graph edge gets a freshly zero-filled gradient buffer that is then added into (16 % of a step
//! under perf), every node allocates its output, and the step's GEMM floor is about a third of its
//! time. Here the step is one forward pass that keeps what its backward pass reads in buffers
//! reused from step to step ([`Tape`]), and one backward pass that writes each gradient once.
//!
//! # What it computes
//!
//! Exactly [`Transformer::forward`] followed by [`crate::model::cross_entropy`] and
//! `loss.backward()`, with the same fused kernels ([`crate::ops`]: LayerNorm, GELU, attention) and
//! the same GEMMs (the `gemm` crate, as `bmt_kfac::linear_op`). Per block, with `x` the block
//! input, rows `(B·T)`:
//!
//! | forward | backward |
//! |---|---|
//! | `y₁ = LN(x)`, `u₁ = γ₁ ⊙ y₁ + β₁` | `dγ₁ = Σ du₁ ⊙ y₁`, `dβ₁ = Σ du₁`, `dx += LN'(x)ᵀ(γ₁ ⊙ du₁)` |
//! | `q, k, v = u₁ W_{q,k,v}ᵀ + b` | `du₁ = dq W_q + dk W_k + dv W_v`, `dW = d·ᵀ u₁`, `db = Σ d·` |
//! | `c = MHSA(q, k, v)` | `dq, dk, dv` by the fused attention backward |
//! | `m = x + c W_oᵀ + b_o` | `dc = dm W_o`, `dW_o = dmᵀ c`, `dx = dm + …` |
//! | `u₂ = γ₂ ⊙ LN(m) + β₂`, `a = u₂ W₁ᵀ + b₁`, `g = GELU(a)` | `da = GELU'(a) ⊙ (dh' W₂)`, `du₂ = da W₁` |
//! | `h' = m + g W₂ᵀ + b₂` | `dW₂ = dh'ᵀ g`, `dW₁ = daᵀ u₂`, `dm = dh' + LN'(m)ᵀ(γ₂ ⊙ du₂)` |
//!
//! then the final LayerNorm and the head (the ViT's on the CLS rows only), and the embedding
//! gradients (`dpos = Σ_b dh₀`, the CLS token's, the patch layer's, or the byte table's
//! scatter-add). The ViT's head reads nothing but the CLS row, so its last block computes `k`
//! and `v` from every row and everything else (query, attention, `m`, MLP, `h'`) on the `B` CLS
//! rows alone ([`crate::ops`]' first-query attention), as [`Transformer::forward`] does: the
//! logits and every gradient are those of the full block, at about a third of its cost, and that
//! block's Q, O, FC₁ and FC₂ captures hold one token per image. The Monte-Carlo backward
//! (no parameter gradients) stops at the first block's captures. The loss gradient is
//! `(softmax(ℓ) − onehot(y))/N`. The results agree with candle's autograd to `f32` rounding
//! (tested on both architectures, for every parameter and every layer capture).
//!
//! # Where it is used
//!
//! [`crate::run::Trainer`] takes its training steps here when the model is `f32` on the CPU and
//! the configuration does not ask for `--backward autograd`; K-FAC's captures and Monte-Carlo
//! backward come from the same tape. Traced passes (diagnostics, the Markov and Brownian
//! measurements), evaluation and every other device use the candle model.

mod linear;
mod step;
mod tape;

pub use step::{NativeStep, MICRO_BATCHES};
pub use tape::{Backward, Captures, Tape, Want};

use candle_core::DType;

use crate::model::Transformer;

/// Whether the native step can run `model`: every parameter `f32` and on the CPU.
pub fn supports(model: &Transformer) -> bool {
    model
        .parameters()
        .values()
        .all(|v| v.dtype() == DType::F32 && v.device().is_cpu())
}

#[cfg(test)]
mod tests;
