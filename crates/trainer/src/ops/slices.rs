//! The fused kernels on plain `f32` slices, for the hand-written training step
//! ([`crate::native`]): the same code the candle ops run (same formulas, same runtime AVX2+FMA
//! dispatch, same rounding), writing into buffers the caller owns instead of new tensors.
//!
//! Every function takes rows of length `n` laid out contiguously; the output slices are as long as
//! the inputs.

use super::attention::{self};
use super::first_query;
use super::gelu::{GeluBwd, GeluFwd};
use super::kernels::{apply1_into, apply2_into};
use super::layer_norm::{LayerNormBwd, LayerNormFwd};

/// `y = (x − μ)/sqrt(σ² + ε)` per row ([`super::layer_norm_normalize`]).
pub(crate) fn layer_norm(x: &[f32], n: usize, eps: f64, y: &mut [f32]) {
    apply1_into(&LayerNormFwd { eps }, x, n, y);
}

/// `dx = (dy − mean(dy) − y·mean(dy⊙y))/s` per row, `y` and `s` recomputed from `x`.
pub(crate) fn layer_norm_backward(x: &[f32], dy: &[f32], n: usize, eps: f64, dx: &mut [f32]) {
    apply2_into(&LayerNormBwd { eps }, x, dy, n, dx);
}

/// GELU (tanh approximation) elementwise ([`super::gelu`]).
pub(crate) fn gelu(x: &[f32], y: &mut [f32]) {
    apply1_into(&GeluFwd, x, x.len().max(1), y);
}

/// `dx = dy · GELU'(x)` elementwise.
pub(crate) fn gelu_backward(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    apply2_into(&GeluBwd, x, dy, x.len().max(1), dx);
}

/// The shape of one multi-head attention call ([`Geometry::new`]): `batch` sequences of `tokens`
/// rows, each row `heads · head_dim` wide with head `h` in columns `h·d_h .. (h+1)·d_h`.
pub(crate) use super::attention::Geometry as AttentionShape;

/// `ctx_h = softmax(Q_h K_hᵀ/√d_h + M) V_h` for every sequence and head ([`super::attention`]).
pub(crate) fn attention(s: &AttentionShape, q: &[f32], k: &[f32], v: &[f32], ctx: &mut [f32]) {
    check(s, &[q.len(), k.len(), v.len(), ctx.len()]);
    attention::forward_into(s, q, k, v, ctx);
}

/// The attention backward: `dq`, `dk`, `dv` from the context gradient `dc` (`P` recomputed).
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_backward(
    s: &AttentionShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dc: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    check(
        s,
        &[
            q.len(),
            k.len(),
            v.len(),
            dc.len(),
            dq.len(),
            dk.len(),
            dv.len(),
        ],
    );
    attention::backward_into(s, q, k, v, dc, dq, dk, dv);
}

/// The context of the first query of every sequence only, `(B, 1, H·d_h)` from `q` of that shape
/// and the whole `k`, `v` ([`super::first_query`]): the ViT's last block.
pub(crate) fn first_query_attention(
    s: &AttentionShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    ctx: &mut [f32],
) {
    first_query::forward(s, q, k, v, ctx);
}

/// The backward pass of [`first_query_attention`]: `dq` `(B, 1, ·)`, `dk`, `dv` whole.
#[allow(clippy::too_many_arguments)]
pub(crate) fn first_query_attention_backward(
    s: &AttentionShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dc: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    first_query::backward(s, q, k, v, dc, dq, dk, dv);
}

/// The kernels index rows by the shape: every buffer must hold exactly one `(B, T, H·d_h)`.
fn check(s: &AttentionShape, lens: &[usize]) {
    assert!(
        lens.iter().all(|&l| l == s.len()),
        "attention buffers of {lens:?} elements for a shape of {}",
        s.len()
    );
}
