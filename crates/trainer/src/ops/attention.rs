//! Multi-head scaled dot-product attention, fused: one kernel forward, one backward, straight from
//! the `(B, T, H·d_h)` outputs of the Q, K and V projections.
//!
//! The composite version splits each projection into heads (reshape, transpose, `contiguous`),
//! runs two batched matmuls of `B·H` tiny matrices (`T×d_h` by `d_h×T` on W1: 17×16 by 16×17),
//! scales, masks, applies the softmax and merges the heads back (transpose, `contiguous`,
//! reshape). Each of those is a pass over memory and a node of the autograd graph whose backward
//! allocates, zero-fills and accumulates a gradient of its own. The fused op reads the heads where
//! the projections wrote them and writes the context where the O projection reads it.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Shape, Storage, Tensor};

use super::kernels::{self, Fma, MulAdd, Real, Split};
use super::{fused_supported, OpsError};

const FWD_NAME: &str = "fused-attention";
const BWD_NAME: &str = "fused-attention-bwd";

/// Multi-head attention from projected queries, keys and values, each `(B, T, H·d_h)` with head
/// `h` in columns `h·d_h .. (h+1)·d_h`:
/// `ctx_h = softmax(Q_h K_hᵀ/√d_h + M) V_h`, the heads concatenated back into `(B, T, H·d_h)`.
/// With `causal`, `M_ij = −∞` for `j > i` (MATH §2: row `i` attends to tokens `0..=i` only), else
/// `M = 0`.
///
/// Differentiable in `q`, `k` and `v`; the backward pass is one fused kernel
/// (`dV = Pᵀ dC`, `dP = dC Vᵀ`, `dS = P ⊙ (dP − rowsum(dP ⊙ P))/√d_h`, `dQ = dS K`, `dK = dSᵀ Q`,
/// per head, `P` recomputed from `q` and `k`). It does not return the probabilities: for those
/// (diagnostics, traces) use [`attention_composite`], which computes the same context.
///
/// Fused on the CPU for `f32`/`f64`; elsewhere this is [`attention_composite`]. Errors: shapes that
/// differ or are not rank 3, or `heads` not dividing the last dimension
/// ([`OpsError::AttentionShape`]).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    causal: bool,
) -> candle_core::Result<Tensor> {
    let geometry = Geometry::of(q, k, v, heads, causal)?;
    if !fused_supported(q) {
        return Ok(attention_composite(q, k, v, heads, causal)?.0);
    }
    q.contiguous()?.apply_op3(
        &k.contiguous()?,
        &v.contiguous()?,
        AttentionFwd { geometry },
    )
}

/// Reference version of [`attention`] from differentiable candle tensor ops (split into heads,
/// batched matmuls, scale, additive mask, [`super::softmax_last_dim`], merge). Returns the context
/// `(B, T, H·d_h)` and the attention probabilities `(B, H, T, T)` (rows sum to 1; lower-triangular
/// when `causal`). Works on every device and float dtype.
///
/// Without `causal`, `q` may hold fewer rows per sequence (`(B, T_q, H·d_h)`, `1 ≤ T_q ≤ T`): the
/// context is then `(B, T_q, H·d_h)` and the probabilities `(B, H, T_q, T)` — the ViT's last
/// block, whose head reads the CLS row only, asks for its first query alone.
pub fn attention_composite(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    causal: bool,
) -> candle_core::Result<(Tensor, Tensor)> {
    let g = Geometry::of_queries(q, k, v, heads, causal)?;
    let queries = q.dim(1)?;
    let split = |y: &Tensor| -> candle_core::Result<Tensor> {
        y.reshape((g.batch, y.dim(1)?, g.heads, g.head_dim))?
            .transpose(1, 2)?
            .contiguous()
    };
    let (qh, kh, vh) = (split(q)?, split(k)?, split(v)?);
    let mut scores = (qh.matmul(&kh.t()?)? * g.scale)?;
    if causal {
        scores = scores.broadcast_add(&causal_mask(g.tokens, q)?)?;
    }
    let probs = super::softmax_last_dim(&scores)?;
    let ctx = probs.matmul(&vh)?.transpose(1, 2)?.contiguous()?.reshape((
        g.batch,
        queries,
        g.heads * g.head_dim,
    ))?;
    Ok((ctx, probs))
}

/// `(1, 1, T, T)`: `0` where `j ≤ i`, `−∞` above the diagonal, in `like`'s dtype and device.
fn causal_mask(t: usize, like: &Tensor) -> candle_core::Result<Tensor> {
    let m: Vec<f32> = (0..t * t)
        .map(|n| {
            if n % t > n / t {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    Tensor::from_vec(m, (1, 1, t, t), like.device())?.to_dtype(like.dtype())
}

/// The sizes of one attention call, checked.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    pub(crate) batch: usize,
    pub(crate) tokens: usize,
    pub(crate) heads: usize,
    pub(crate) head_dim: usize,
    /// `1/√d_h`.
    pub(crate) scale: f64,
    pub(crate) causal: bool,
}

impl Geometry {
    /// The geometry of `batch` sequences of `tokens` rows of `heads · head_dim` columns (`causal`:
    /// row `i` attends to tokens `0..=i` only).
    pub(crate) fn new(
        batch: usize,
        tokens: usize,
        heads: usize,
        head_dim: usize,
        causal: bool,
    ) -> Self {
        Self {
            batch,
            tokens,
            heads,
            head_dim,
            scale: 1.0 / (head_dim as f64).sqrt(),
            causal,
        }
    }

    fn of(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        heads: usize,
        causal: bool,
    ) -> candle_core::Result<Self> {
        if q.shape() != k.shape() {
            return Err(OpsError::AttentionShape {
                q: q.shape().clone(),
                k: k.shape().clone(),
                v: v.shape().clone(),
                heads,
            }
            .into());
        }
        Self::of_queries(q, k, v, heads, causal)
    }

    /// As [`Geometry::of`], but `q` may hold fewer rows per sequence than `k` and `v` when not
    /// `causal` (`(B, T_q, H·d_h)` queries against `(B, T, H·d_h)` keys and values); the geometry
    /// is that of the keys.
    fn of_queries(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        heads: usize,
        causal: bool,
    ) -> candle_core::Result<Self> {
        let bad = || OpsError::AttentionShape {
            q: q.shape().clone(),
            k: k.shape().clone(),
            v: v.shape().clone(),
            heads,
        };
        if k.shape() != v.shape() || heads == 0 {
            return Err(bad().into());
        }
        let (batch, tokens, width) = k.dims3().map_err(|_| bad())?;
        let (qb, qt, qw) = q.dims3().map_err(|_| bad())?;
        if qb != batch || qw != width || qt == 0 || qt > tokens || (causal && qt != tokens) {
            return Err(bad().into());
        }
        if width % heads != 0 || width == 0 {
            return Err(bad().into());
        }
        let head_dim = width / heads;
        Ok(Self {
            batch,
            tokens,
            heads,
            head_dim,
            scale: 1.0 / (head_dim as f64).sqrt(),
            causal,
        })
    }

    /// Elements of one `(B, T, H·d_h)` buffer.
    pub(crate) fn len(&self) -> usize {
        self.batch * self.tokens * self.width()
    }

    /// `H·d_h`, the row stride of q, k, v and the context.
    fn width(&self) -> usize {
        self.heads * self.head_dim
    }

    /// The number of keys row `i` attends to.
    fn keys(&self, i: usize) -> usize {
        if self.causal {
            i + 1
        } else {
            self.tokens
        }
    }

    /// Offset of head `h` of batch element `b` (row 0) in a `(B, T, H·d_h)` buffer.
    fn base(&self, b: usize, h: usize) -> usize {
        b * self.tokens * self.width() + h * self.head_dim
    }
}

/// Padding unit of the transposed heads: one AVX2 vector of `f32`.
const LANES: usize = 8;

/// `Σ_m a[m]·src[start + m·stride .. + N]` with two accumulator arrays (even and odd `m`), each
/// `N/8` vector registers: the multiply-adds of one array form a dependency chain, so two arrays
/// (and for `N ≥ 16` several registers per array) keep more of them in flight.
#[inline(always)]
fn combine_block<T: Real, M: MulAdd, const N: usize>(
    a: &[T],
    src: &[T],
    start: usize,
    stride: usize,
) -> [T; N] {
    let (mut even, mut odd) = ([T::zero(); N], [T::zero(); N]);
    let pairs = a.chunks_exact(2);
    let last = pairs.remainder().first().copied();
    let mut o = start;
    for pair in pairs {
        let (r0, r1) = (&src[o..o + N], &src[o + stride..o + stride + N]);
        for l in 0..N {
            even[l] = T::mul_add_k::<M>(pair[0], r0[l], even[l]);
            odd[l] = T::mul_add_k::<M>(pair[1], r1[l], odd[l]);
        }
        o += 2 * stride;
    }
    if let Some(am) = last {
        let r = &src[o..o + N];
        for l in 0..N {
            even[l] = T::mul_add_k::<M>(am, r[l], even[l]);
        }
    }
    for l in 0..N {
        even[l] += odd[l];
    }
    even
}

/// `out[l] = Σ_m a[m]·src[start + m·stride + l]` for `l < out.len()`: a linear combination of
/// `a.len()` strided rows, in register blocks of 32, 16 and 8 columns ([`combine_block`]) and a
/// scalar tail. Accumulating in registers rather than in `out` keeps each multiply-add from
/// waiting for the store of the previous one.
#[inline(always)]
fn combine<T: Real, M: MulAdd>(a: &[T], src: &[T], start: usize, stride: usize, out: &mut [T]) {
    let mut l0 = 0;
    while out.len() - l0 >= 32 {
        let acc = combine_block::<T, M, 32>(a, src, start + l0, stride);
        out[l0..l0 + 32].copy_from_slice(&acc);
        l0 += 32;
    }
    if out.len() - l0 >= 16 {
        let acc = combine_block::<T, M, 16>(a, src, start + l0, stride);
        out[l0..l0 + 16].copy_from_slice(&acc);
        l0 += 16;
    }
    if out.len() - l0 >= 8 {
        let acc = combine_block::<T, M, 8>(a, src, start + l0, stride);
        out[l0..l0 + 8].copy_from_slice(&acc);
        l0 += 8;
    }
    for (l, o) in out.iter_mut().enumerate().skip(l0) {
        let mut acc = T::zero();
        for (m, &am) in a.iter().enumerate() {
            acc = T::mul_add_k::<M>(am, src[start + m * stride + l], acc);
        }
        *o = acc;
    }
}

/// `n` rounded up to a multiple of [`LANES`].
fn padded(n: usize) -> usize {
    n.div_ceil(LANES) * LANES
}

/// Head `base` of a `(B, T, H·d_h)` buffer transposed into `dst[c·tp + j]` (`d_h × tp`, `tp` =
/// [`padded`]`(T)`; the padding columns are left as they are, zero from allocation), so that a row
/// of `Q_h K_hᵀ` becomes a [`combine`] of contiguous rows.
#[inline(always)]
fn transpose_head<T: Real>(g: &Geometry, src: &[T], base: usize, dst: &mut [T]) {
    let (t, hd, w, tp) = (g.tokens, g.head_dim, g.width(), padded(g.tokens));
    for j in 0..t {
        let row = &src[base + j * w..base + j * w + hd];
        for (c, &x) in row.iter().enumerate() {
            dst[c * tp + j] = x;
        }
    }
}

/// `dst[j·T + i] = src[i·T + j]` for a `T × T` block.
#[inline(always)]
fn transpose_square<T: Real>(t: usize, src: &[T], dst: &mut [T]) {
    for i in 0..t {
        for j in 0..t {
            dst[j * t + i] = src[i * t + j];
        }
    }
}

/// Attention probabilities of one head into `p` (`T × T`, row-major, zeros right of each causal
/// row): `s_i = Σ_c q_ic Kᵀ[c, ·]/√d_h` by [`combine`] over `kt` (= `K_hᵀ` from
/// [`transpose_head`]), then a softmax per row (shift by the row maximum, `f64` sum, one rounding
/// per entry, as [`super::softmax_last_dim`]). `srow` is scratch of [`padded`]`(T)`.
#[inline(always)]
fn head_probs<T: Real, M: MulAdd>(
    g: &Geometry,
    q: &[T],
    base: usize,
    kt: &[T],
    srow: &mut [T],
    p: &mut [T],
) {
    let (t, hd, w, tp) = (g.tokens, g.head_dim, g.width(), padded(g.tokens));
    let scale = T::from_f64(g.scale);
    for i in 0..t {
        let n = g.keys(i);
        let qi = &q[base + i * w..base + i * w + hd];
        combine::<T, M>(qi, kt, 0, tp, &mut srow[..padded(n).min(tp)]);
        let live = &mut srow[..n];
        for s in live.iter_mut() {
            *s *= scale;
        }
        let max = kernels::row_max(live);
        for s in live.iter_mut() {
            *s = (*s - max).exp_k::<M>();
        }
        let inv = 1.0 / kernels::sum_by(live, |e| e.to_f64());
        let row = &mut p[i * t..(i + 1) * t];
        for (o, &e) in row.iter_mut().zip(live.iter()) {
            *o = T::from_f64(e.to_f64() * inv);
        }
        row[n..].fill(T::zero());
    }
}

/// Scratch buffers of one attention call, allocated once and reused for every `(b, h)`.
struct Scratch<T> {
    /// `K_hᵀ` or `V_hᵀ`, `d_h × padded(T)`.
    xt: Vec<T>,
    /// One row of scores, `padded(T)`.
    srow: Vec<T>,
    /// `P`, `T × T`.
    p: Vec<T>,
    /// `dS`, `T × T` (backward only).
    ds: Vec<T>,
    /// `Pᵀ` or `dSᵀ`, `T × T` (backward only).
    tt: Vec<T>,
}

impl<T: Real> Scratch<T> {
    fn new(g: &Geometry, backward: bool) -> Self {
        let (t, tp) = (g.tokens, padded(g.tokens));
        let sq = if backward { t * t } else { 0 };
        Self {
            xt: vec![T::zero(); g.head_dim * tp],
            srow: vec![T::zero(); tp],
            p: vec![T::zero(); t * t],
            ds: vec![T::zero(); sq],
            tt: vec![T::zero(); sq],
        }
    }
}

/// Forward over every `(b, h)`: `P` by [`head_probs`], then `ctx_i = Σ_j P_ij v_j` into `ctx`.
#[inline(always)]
fn forward<T: Real, M: MulAdd>(g: &Geometry, q: &[T], k: &[T], v: &[T], ctx: &mut [T]) {
    let (t, hd, w) = (g.tokens, g.head_dim, g.width());
    let mut s = Scratch::new(g, false);
    for b in 0..g.batch {
        for h in 0..g.heads {
            let base = g.base(b, h);
            transpose_head(g, k, base, &mut s.xt);
            head_probs::<T, M>(g, q, base, &s.xt, &mut s.srow, &mut s.p);
            for i in 0..t {
                let out = &mut ctx[base + i * w..base + i * w + hd];
                combine::<T, M>(&s.p[i * t..i * t + g.keys(i)], v, base, w, out);
            }
        }
    }
}

/// Backward over every `(b, h)`, given `dC` in the context's layout: `dP = dC Vᵀ`,
/// `dS = P ⊙ (dP − rowsum(dP ⊙ P))/√d_h` (the row sum in `f64`), then `dQ = dS K`,
/// `dK = dSᵀ Q`, `dV = Pᵀ dC`, each row one [`combine`] (causal: only the non-zero part of
/// each row of `P`, `dS` and their transposes).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn backward<T: Real, M: MulAdd>(
    g: &Geometry,
    q: &[T],
    k: &[T],
    v: &[T],
    dc: &[T],
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
) {
    let (t, hd, w, tp) = (g.tokens, g.head_dim, g.width(), padded(g.tokens));
    let mut s = Scratch::new(g, true);
    for b in 0..g.batch {
        for h in 0..g.heads {
            let base = g.base(b, h);
            transpose_head(g, k, base, &mut s.xt);
            head_probs::<T, M>(g, q, base, &s.xt, &mut s.srow, &mut s.p);
            transpose_head(g, v, base, &mut s.xt);
            for i in 0..t {
                let n = g.keys(i);
                let row = base + i * w;
                combine::<T, M>(
                    &dc[row..row + hd],
                    &s.xt,
                    0,
                    tp,
                    &mut s.srow[..padded(n).min(tp)],
                );
                let pi = &s.p[i * t..i * t + n];
                let dp = &s.srow[..n];
                let dot = kernels::sum2_by(pi, dp, |a, b| a.to_f64() * b.to_f64());
                let dsi = &mut s.ds[i * t..(i + 1) * t];
                for ((o, &pij), &dpij) in dsi.iter_mut().zip(pi).zip(dp) {
                    *o = T::from_f64(pij.to_f64() * (dpij.to_f64() - dot) * g.scale);
                }
                dsi[n..].fill(T::zero());
                combine::<T, M>(&s.ds[i * t..i * t + n], k, base, w, &mut dq[row..row + hd]);
            }
            // Column j of P and dS is non-zero from row i0 = j on when causal.
            let first = |j: usize| if g.causal { j } else { 0 };
            transpose_square(t, &s.p, &mut s.tt);
            for j in 0..t {
                let (i0, col) = (first(j), base + j * w);
                let a = &s.tt[j * t + i0..(j + 1) * t];
                combine::<T, M>(a, dc, base + i0 * w, w, &mut dv[col..col + hd]);
            }
            transpose_square(t, &s.ds, &mut s.tt);
            for j in 0..t {
                let (i0, col) = (first(j), base + j * w);
                let a = &s.tt[j * t + i0..(j + 1) * t];
                combine::<T, M>(a, q, base + i0 * w, w, &mut dk[col..col + hd]);
            }
        }
    }
}

/// [`forward`] compiled for AVX2 + FMA.
///
/// # Safety
///
/// The CPU must support AVX2 and FMA ([`kernels::has_avx2_fma`]); the body is safe code.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn forward_avx2_fma<T: Real>(g: &Geometry, q: &[T], k: &[T], v: &[T], ctx: &mut [T]) {
    forward::<T, Fma>(g, q, k, v, ctx);
}

/// [`backward`] compiled for AVX2 + FMA; safety as [`forward_avx2_fma`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn backward_avx2_fma<T: Real>(
    g: &Geometry,
    q: &[T],
    k: &[T],
    v: &[T],
    dc: &[T],
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
) {
    backward::<T, Fma>(g, q, k, v, dc, dq, dk, dv);
}

/// [`forward`] into `ctx` (as long as `q`), through the AVX2+FMA copy where the CPU has both.
pub(super) fn forward_into<T: Real>(g: &Geometry, q: &[T], k: &[T], v: &[T], ctx: &mut [T]) {
    #[cfg(target_arch = "x86_64")]
    if kernels::has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA, checked just above.
        unsafe { forward_avx2_fma(g, q, k, v, ctx) };
        return;
    }
    forward::<T, Split>(g, q, k, v, ctx);
}

/// [`backward`] into `dq`, `dk`, `dv` (each as long as `q`), dispatched as [`forward_into`].
#[allow(clippy::too_many_arguments)]
pub(super) fn backward_into<T: Real>(
    g: &Geometry,
    q: &[T],
    k: &[T],
    v: &[T],
    dc: &[T],
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
) {
    #[cfg(target_arch = "x86_64")]
    if kernels::has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA, checked just above.
        unsafe { backward_avx2_fma(g, q, k, v, dc, dq, dk, dv) };
        return;
    }
    backward::<T, Split>(g, q, k, v, dc, dq, dk, dv);
}

fn run_forward<T: Real>(g: &Geometry, q: &[T], k: &[T], v: &[T]) -> Vec<T> {
    let mut ctx = vec![T::zero(); q.len()];
    forward_into(g, q, k, v, &mut ctx);
    ctx
}

/// `[dq; dk; dv]` stacked into one buffer of `3·B·T·H·d_h`.
fn run_backward<T: Real>(g: &Geometry, q: &[T], k: &[T], v: &[T], dc: &[T]) -> Vec<T> {
    let n = q.len();
    let mut out = vec![T::zero(); 3 * n];
    let (dq, rest) = out.split_at_mut(n);
    let (dk, dv) = rest.split_at_mut(n);
    backward_into(g, q, k, v, dc, dq, dk, dv);
    out
}

/// Forward op over `(q, k, v)`; its `bwd` applies [`AttentionBwd`] to `dC`.
struct AttentionFwd {
    geometry: Geometry,
}

impl CustomOp3 for AttentionFwd {
    fn name(&self) -> &'static str {
        FWD_NAME
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = &self.geometry;
        fn go<T: Real>(
            g: &Geometry,
            sq: (&CpuStorage, &Layout),
            sk: (&CpuStorage, &Layout),
            sv: (&CpuStorage, &Layout),
        ) -> candle_core::Result<CpuStorage> {
            let q = kernels::contiguous_slice::<T>(sq.0, sq.1, FWD_NAME)?;
            let k = kernels::contiguous_slice::<T>(sk.0, sk.1, FWD_NAME)?;
            let v = kernels::contiguous_slice::<T>(sv.0, sv.1, FWD_NAME)?;
            Ok(T::to_cpu_storage_owned(run_forward(g, q, k, v)))
        }
        let out = match sq.dtype() {
            candle_core::DType::F32 => go::<f32>(g, (sq, lq), (sk, lk), (sv, lv))?,
            candle_core::DType::F64 => go::<f64>(g, (sq, lq), (sk, lk), (sv, lv))?,
            dtype => {
                return Err(OpsError::UnsupportedDType {
                    op: FWD_NAME,
                    dtype,
                }
                .into())
            }
        };
        Ok((out, lq.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _ctx: &Tensor,
        dctx: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grads = dctx.contiguous()?.apply_op1(AttentionBwd {
            geometry: self.geometry,
            q: q.clone(),
            k: k.clone(),
            v: v.clone(),
        })?;
        Ok((
            Some(grads.get(0)?),
            Some(grads.get(1)?),
            Some(grads.get(2)?),
        ))
    }
}

/// Backward op over `dC` (holding `q`, `k`, `v`), returning `(3, B, T, H·d_h)` = `[dq; dk; dv]`.
/// It has no `bwd` of its own (second-order gradients raise `BackwardNotSupported`).
struct AttentionBwd {
    geometry: Geometry,
    q: Tensor,
    k: Tensor,
    v: Tensor,
}

/// The CPU slice of a contiguous tensor `t` held by a backward op, as `T`, passed to `f` while the
/// storage is read-locked.
fn with_slice<T: Real, R>(
    t: &Tensor,
    f: impl FnOnce(&[T]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => f(kernels::contiguous_slice::<T>(s, layout, BWD_NAME)?),
        _ => Err(candle_core::Error::wrap(OpsError::UnsupportedDType {
            op: BWD_NAME,
            dtype: t.dtype(),
        })),
    }
}

impl CustomOp1 for AttentionBwd {
    fn name(&self) -> &'static str {
        BWD_NAME
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = &self.geometry;
        if l.shape() != self.q.shape() {
            return Err(OpsError::ShapeMismatch {
                op: BWD_NAME,
                lhs: l.shape().clone(),
                rhs: self.q.shape().clone(),
            }
            .into());
        }
        fn go<T: Real>(
            op: &AttentionBwd,
            s: &CpuStorage,
            l: &Layout,
        ) -> candle_core::Result<CpuStorage> {
            let dc = kernels::contiguous_slice::<T>(s, l, BWD_NAME)?;
            let out = with_slice::<T, _>(&op.q, |q| {
                with_slice::<T, _>(&op.k, |k| {
                    with_slice::<T, _>(&op.v, |v| Ok(run_backward(&op.geometry, q, k, v, dc)))
                })
            })?;
            Ok(T::to_cpu_storage_owned(out))
        }
        let out = match s.dtype() {
            candle_core::DType::F32 => go::<f32>(self, s, l)?,
            candle_core::DType::F64 => go::<f64>(self, s, l)?,
            dtype => {
                return Err(OpsError::UnsupportedDType {
                    op: BWD_NAME,
                    dtype,
                }
                .into())
            }
        };
        let dims = [3, g.batch, g.tokens, g.width()];
        Ok((out, Shape::from(&dims[..])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn seeded(shape: (usize, usize, usize), seed: u64, dtype: DType) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n = shape.0 * shape.1 * shape.2;
        let v: Vec<f64> = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    /// Value and gradients of `Σ w ⊙ attention(q, k, v)` for both versions.
    fn both(
        shape: (usize, usize, usize),
        heads: usize,
        causal: bool,
        dtype: DType,
    ) -> [(Tensor, Tensor); 4] {
        let (q, k, v, w) = (
            Var::from_tensor(&seeded(shape, 1, dtype)).unwrap(),
            Var::from_tensor(&seeded(shape, 2, dtype)).unwrap(),
            Var::from_tensor(&seeded(shape, 3, dtype)).unwrap(),
            seeded(shape, 4, dtype),
        );
        let run = |fused: bool| {
            let ctx = if fused {
                attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), heads, causal).unwrap()
            } else {
                attention_composite(q.as_tensor(), k.as_tensor(), v.as_tensor(), heads, causal)
                    .unwrap()
                    .0
            };
            let grads = (&ctx * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let g = |x: &Var| grads.get(x).expect("gradient recorded").clone();
            (ctx, g(&q), g(&k), g(&v))
        };
        let (a, b) = (run(true), run(false));
        [(a.0, b.0), (a.1, b.1), (a.2, b.2), (a.3, b.3)]
    }

    #[test]
    fn matches_composite_in_value_and_gradients() {
        // Both versions evaluate the same sums (dot products of d_h ≤ 16 terms, sums over
        // T ≤ 17 keys) in a different order; with inputs in [−2, 2] every intermediate is O(10),
        // so the difference is bounded by about (d_h + T)·10·ε: 4e-13 in f64, 4e-5 in f32.
        // Measured: 2.2e-15 and 4.8e-7. The tolerances sit between the two.
        for causal in [false, true] {
            for (shape, heads) in [
                ((2, 5, 12), 3),
                ((3, 17, 64), 4),
                ((2, 20, 64), 2),
                ((1, 1, 8), 2),
            ] {
                for (dtype, tol) in [(DType::F64, 1e-13), (DType::F32, 1e-5)] {
                    for (name, (f, c)) in ["ctx", "dq", "dk", "dv"]
                        .iter()
                        .zip(both(shape, heads, causal, dtype))
                    {
                        let err = max_abs_diff(&f, &c);
                        assert!(
                            err < tol,
                            "{name} {shape:?} heads {heads} causal {causal} {dtype:?}: {err:e}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn equal_keys_average_the_values() {
        // q = 0: every score is 0, so P is uniform over the keys a row sees and ctx_i is the mean
        // of v_0..v_{n-1} (all of them; the prefix 0..=i when causal).
        let v = seeded((1, 4, 6), 9, DType::F64);
        let q = Tensor::zeros((1, 4, 6), DType::F64, &Device::Cpu).unwrap();
        let k = seeded((1, 4, 6), 10, DType::F64);
        let vv: Vec<Vec<f64>> = v.squeeze(0).unwrap().to_vec2().unwrap();
        for causal in [false, true] {
            let ctx: Vec<Vec<f64>> = attention(&q, &k, &v, 2, causal)
                .unwrap()
                .squeeze(0)
                .unwrap()
                .to_vec2()
                .unwrap();
            for (i, row) in ctx.iter().enumerate() {
                let n = if causal { i + 1 } else { 4 };
                for (c, &got) in row.iter().enumerate() {
                    let want = (0..n).map(|j| vv[j][c]).sum::<f64>() / n as f64;
                    assert!(
                        (got - want).abs() < 1e-15,
                        "causal {causal} row {i} col {c}"
                    );
                }
            }
        }
    }

    #[test]
    fn causal_first_row_copies_the_first_value() {
        // Row 0 of a causal head sees only key 0: ctx_0 = v_0 exactly, whatever q and k are.
        let (q, k, v) = (
            seeded((2, 5, 8), 1, DType::F32),
            seeded((2, 5, 8), 2, DType::F32),
            seeded((2, 5, 8), 3, DType::F32),
        );
        let ctx = attention(&q, &k, &v, 2, true).unwrap();
        let got = ctx.narrow(1, 0, 1).unwrap();
        let want = v.narrow(1, 0, 1).unwrap();
        assert_eq!(max_abs_diff(&got, &want), 0.0);
    }

    #[test]
    fn rejects_bad_shapes_with_a_typed_error() {
        let a = seeded((2, 5, 12), 1, DType::F32);
        let b = seeded((2, 5, 8), 1, DType::F32);
        let flat = seeded((1, 10, 12), 1, DType::F32).squeeze(0).unwrap();
        for (q, k, v, heads) in [
            (&a, &b, &a, 3),
            (&a, &a, &a, 5),
            (&a, &a, &a, 0),
            (&flat, &flat, &flat, 3),
        ] {
            let err = attention(q, k, v, heads, false).unwrap_err().to_string();
            assert!(err.contains("attention"), "{err}");
        }
    }

    /// One query row against all keys equals the first row of the full composite, in value and
    /// in the gradients of a loss that reads only that row; causal or wider queries are refused.
    #[test]
    fn composite_with_the_first_query_only() {
        let (q, k, v) = (
            seeded((2, 6, 8), 1, DType::F64),
            seeded((2, 6, 8), 2, DType::F64),
            seeded((2, 6, 8), 3, DType::F64),
        );
        let w = seeded((2, 1, 8), 4, DType::F64);
        let grads = |first_only: bool| {
            let (qv, kv, vv) = (
                Var::from_tensor(&q).unwrap(),
                Var::from_tensor(&k).unwrap(),
                Var::from_tensor(&v).unwrap(),
            );
            let qi = if first_only {
                qv.as_tensor().narrow(1, 0, 1).unwrap()
            } else {
                qv.as_tensor().clone()
            };
            let (ctx, probs) =
                attention_composite(&qi, kv.as_tensor(), vv.as_tensor(), 2, false).unwrap();
            assert_eq!(probs.dims(), &[2, 2, if first_only { 1 } else { 6 }, 6]);
            let row = ctx.narrow(1, 0, 1).unwrap();
            let store = (row.clone() * &w)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let g = |x: &Var| store.get(x).unwrap().clone();
            (row, g(&qv), g(&kv), g(&vv))
        };
        let (one, full) = (grads(true), grads(false));
        assert!(max_abs_diff(&one.0, &full.0) < 1e-12);
        assert!(max_abs_diff(&one.1, &full.1) < 1e-12);
        assert!(max_abs_diff(&one.2, &full.2) < 1e-12);
        assert!(max_abs_diff(&one.3, &full.3) < 1e-12);
        let q1 = q.narrow(1, 0, 1).unwrap();
        assert!(attention_composite(&q1, &k, &v, 2, true).is_err());
        assert!(attention(&q1, &k, &v, 2, false).is_err());
        let wide = seeded((2, 7, 8), 5, DType::F64);
        assert!(attention_composite(&wide, &k, &v, 2, false).is_err());
    }

    #[test]
    fn second_order_gradient_is_a_loud_error() {
        let q = seeded((1, 3, 4), 1, DType::F64);
        let dc = seeded((1, 3, 4), 2, DType::F64);
        let op = AttentionBwd {
            geometry: Geometry::of(&q, &q, &q, 2, false).unwrap(),
            q: q.clone(),
            k: q.clone(),
            v: q.clone(),
        };
        let y = Var::from_tensor(&dc)
            .unwrap()
            .as_tensor()
            .apply_op1(op)
            .unwrap();
        assert!(y.sum_all().unwrap().backward().is_err());
    }
}
