//! Multi-head attention of the first query of every sequence only: the ViT's last block, whose
//! output the head reads at the CLS token alone (`crate::native`'s tape; the candle model runs the
//! same through [`super::attention_composite`] with one query row).
//!
//! Per sequence `b` and head `h`, with `q` the CLS query and `k_j`, `v_j` the `T` keys and values:
//! `s_j = ⟨q, k_j⟩/√d_h`, `p = softmax(s)` (shift by the maximum, `f64` sum, one rounding per
//! entry, as the full kernel), `c = Σ_j p_j v_j`. Backward from `dc`: `dp_j = ⟨dc, v_j⟩`,
//! `ds_j = p_j (dp_j − Σ_i p_i dp_i)/√d_h`, `dq = Σ_j ds_j k_j`, `dk_j = ds_j q`, `dv_j = p_j dc`.
//! O(B·H·T·d_h): a T-th of the full kernel's work.

use super::attention::Geometry;

/// Buffer lengths: `q`, `ctx`, `dq`, `dc` hold one row per sequence, `(B, 1, H·d_h)`; `k`, `v`,
/// `dk`, `dv` the whole `(B, T, H·d_h)` of the geometry.
fn check(g: &Geometry, per_sequence: &[usize], whole: &[usize]) {
    let row = g.batch * g.heads * g.head_dim;
    assert!(
        per_sequence.iter().all(|&l| l == row) && whole.iter().all(|&l| l == g.len()),
        "first-query attention buffers of {per_sequence:?} and {whole:?} elements for a shape \
         of {row} and {}",
        g.len()
    );
    assert!(
        !g.causal,
        "the first query of a causal sequence attends to itself only"
    );
}

/// The probabilities `p` (length `T`) of head `h` of sequence `b`.
fn probs(g: &Geometry, q: &[f32], k: &[f32], b: usize, h: usize, p: &mut [f32]) {
    let (t, hd, w) = (g.tokens, g.head_dim, g.heads * g.head_dim);
    let qh = &q[b * w + h * hd..b * w + (h + 1) * hd];
    for (j, pj) in p.iter_mut().enumerate() {
        let kj = &k[(b * t + j) * w + h * hd..][..hd];
        let s: f32 = qh.iter().zip(kj).map(|(a, c)| a * c).sum();
        *pj = (f64::from(s) * g.scale) as f32;
    }
    let max = p.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for s in p.iter_mut() {
        *s = (*s - max).exp();
    }
    let inv = 1.0 / p.iter().map(|&e| f64::from(e)).sum::<f64>();
    for s in p.iter_mut() {
        *s = (f64::from(*s) * inv) as f32;
    }
}

/// `ctx` (`(B, 1, H·d_h)`) of the first query `q` (`(B, 1, H·d_h)`) against all of `k`, `v`.
pub(crate) fn forward(g: &Geometry, q: &[f32], k: &[f32], v: &[f32], ctx: &mut [f32]) {
    check(g, &[q.len(), ctx.len()], &[k.len(), v.len()]);
    let (t, hd, w) = (g.tokens, g.head_dim, g.heads * g.head_dim);
    let mut p = vec![0.0f32; t];
    for b in 0..g.batch {
        for h in 0..g.heads {
            probs(g, q, k, b, h, &mut p);
            let out = &mut ctx[b * w + h * hd..][..hd];
            out.fill(0.0);
            for (j, &pj) in p.iter().enumerate() {
                let vj = &v[(b * t + j) * w + h * hd..][..hd];
                for (o, &x) in out.iter_mut().zip(vj) {
                    *o += pj * x;
                }
            }
        }
    }
}

/// `dq` (`(B, 1, ·)`), `dk` and `dv` (`(B, T, ·)`, overwritten) from the context gradient `dc`
/// (`(B, 1, ·)`) of [`forward`], `p` recomputed.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    g: &Geometry,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dc: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    check(
        g,
        &[q.len(), dc.len(), dq.len()],
        &[k.len(), v.len(), dk.len(), dv.len()],
    );
    let (t, hd, w) = (g.tokens, g.head_dim, g.heads * g.head_dim);
    let (mut p, mut ds) = (vec![0.0f32; t], vec![0.0f32; t]);
    for b in 0..g.batch {
        for h in 0..g.heads {
            probs(g, q, k, b, h, &mut p);
            let (qh, dch) = (&q[b * w + h * hd..][..hd], &dc[b * w + h * hd..][..hd]);
            for (j, dsj) in ds.iter_mut().enumerate() {
                let vj = &v[(b * t + j) * w + h * hd..][..hd];
                *dsj = dch.iter().zip(vj).map(|(a, c)| a * c).sum();
            }
            let dot: f64 = p
                .iter()
                .zip(&ds)
                .map(|(&a, &c)| f64::from(a) * f64::from(c))
                .sum();
            for (dsj, &pj) in ds.iter_mut().zip(&p) {
                *dsj = (f64::from(pj) * (f64::from(*dsj) - dot) * g.scale) as f32;
            }
            let dqh = &mut dq[b * w + h * hd..][..hd];
            dqh.fill(0.0);
            for j in 0..t {
                let at = (b * t + j) * w + h * hd;
                for (o, &x) in dqh.iter_mut().zip(&k[at..at + hd]) {
                    *o += ds[j] * x;
                }
                for (o, &x) in dk[at..at + hd].iter_mut().zip(qh) {
                    *o = ds[j] * x;
                }
                for (o, &x) in dv[at..at + hd].iter_mut().zip(dch) {
                    *o = p[j] * x;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::attention::{backward_into, forward_into};

    fn seeded(n: usize, seed: u64) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let x = (i as u64 + 1).wrapping_mul(6364136223846793005) ^ seed;
                ((x >> 33) % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    fn first_rows(g: &Geometry, x: &[f32]) -> Vec<f32> {
        let w = g.heads * g.head_dim;
        x.chunks_exact(g.tokens * w)
            .flat_map(|s| s[..w].to_vec())
            .collect()
    }

    /// The first query's context and gradients equal the full kernel's first rows, for a context
    /// gradient that is zero on every other row.
    #[test]
    fn matches_the_full_kernel_on_the_first_row() {
        let g = Geometry::new(3, 7, 2, 5, false);
        let (q, k, v) = (seeded(g.len(), 1), seeded(g.len(), 2), seeded(g.len(), 3));
        let mut full = vec![0.0; g.len()];
        forward_into(&g, &q, &k, &v, &mut full);
        let q1 = first_rows(&g, &q);
        let mut ctx = vec![0.0; q1.len()];
        forward(&g, &q1, &k, &v, &mut ctx);
        let close = |a: &[f32], b: &[f32]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-5)
        };
        assert!(close(&ctx, &first_rows(&g, &full)));

        let dc1 = seeded(q1.len(), 4);
        let mut dc = vec![0.0; g.len()];
        let w = g.heads * g.head_dim;
        for b in 0..g.batch {
            dc[b * g.tokens * w..][..w].copy_from_slice(&dc1[b * w..][..w]);
        }
        let (mut dqf, mut dkf, mut dvf) =
            (vec![0.0; g.len()], vec![0.0; g.len()], vec![0.0; g.len()]);
        backward_into(&g, &q, &k, &v, &dc, &mut dqf, &mut dkf, &mut dvf);
        let (mut dq, mut dk, mut dv) =
            (vec![0.0; q1.len()], vec![9.0; g.len()], vec![9.0; g.len()]);
        backward(&g, &q1, &k, &v, &dc1, &mut dq, &mut dk, &mut dv);
        assert!(close(&dq, &first_rows(&g, &dqf)));
        assert!(close(&dk, &dkf));
        assert!(close(&dv, &dvf));
    }

    #[test]
    #[should_panic(expected = "first-query attention buffers")]
    fn rejects_buffers_of_the_wrong_length() {
        let g = Geometry::new(2, 4, 2, 3, false);
        let x = vec![0.0; g.len()];
        let mut ctx = vec![0.0; g.len()];
        forward(&g, &x, &x, &x, &mut ctx);
    }
}
