//! Row-major linear-layer kernels on `f32` slices: `y = x Wᵀ + b` and its three gradients (the
//! fused linear op's own kernels, [`bmt_kfac::linear_op`], on this worker's GEMM threads), plus the
//! row-wise helpers of the affine LayerNorm and the residual stream.
//!
//! Shapes: `x (rows × n)`, `W (m × n)` (candle's `(out, in)`), `b (m)`, `y, dy (rows × m)`.

use std::cell::Cell;

use bmt_kfac::linear_op;

thread_local! {
    /// Threads each GEMM of this thread's part of the step may use ([`with_gemm_threads`]).
    static GEMM_THREADS: Cell<usize> = const { Cell::new(1) };
}

/// Runs `f` with this thread's GEMMs on `threads` threads (a micro-batch worker sets its share of
/// the step's threads; the default is 1).
pub(super) fn with_gemm_threads<R>(threads: usize, f: impl FnOnce() -> R) -> R {
    let before = GEMM_THREADS.with(|t| t.replace(threads.max(1)));
    let r = f();
    GEMM_THREADS.with(|t| t.set(before));
    r
}

fn gemm_threads() -> usize {
    GEMM_THREADS.with(Cell::get)
}

/// `y = x Wᵀ + b` ([`linear_op::affine_into`] on this thread's GEMM threads).
pub(super) fn affine(x: &[f32], w: &[f32], b: &[f32], dims: (usize, usize, usize), y: &mut [f32]) {
    linear_op::affine_into(x, w, Some(b), dims, false, y, gemm_threads());
}

/// `y += x Wᵀ + b` (the residual connection `h + O(c)`).
pub(super) fn add_affine(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    dims: (usize, usize, usize),
    y: &mut [f32],
) {
    linear_op::affine_into(x, w, Some(b), dims, true, y, gemm_threads());
}

/// `dx [+]= dy W`: the gradient with respect to the layer input.
pub(super) fn input_grad(
    dy: &[f32],
    w: &[f32],
    dims: (usize, usize, usize),
    accumulate: bool,
    dx: &mut [f32],
) {
    linear_op::input_grad_into(dy, w, dims, accumulate, dx, gemm_threads());
}

/// `dW = dyᵀ x`, `(m × n)`.
pub(super) fn weight_grad(dy: &[f32], x: &[f32], dims: (usize, usize, usize)) -> Vec<f32> {
    linear_op::weight_grad(dy, x, dims, gemm_threads())
}

/// `Σ_rows a` over rows of length `m` (a bias gradient, [`linear_op::bias_grad`]).
pub(super) fn column_sums(a: &[f32], m: usize) -> Vec<f32> {
    linear_op::bias_grad(a, m)
}

/// `Σ_rows a ⊙ b` over rows of length `m` (the gradient of a LayerNorm gain: `Σ du ⊙ y`).
pub(super) fn column_dots(a: &[f32], b: &[f32], m: usize) -> Vec<f32> {
    let mut s = vec![0.0; m];
    for (ra, rb) in a.chunks_exact(m).zip(b.chunks_exact(m)) {
        for ((o, &x), &y) in s.iter_mut().zip(ra).zip(rb) {
            *o += x * y;
        }
    }
    s
}

/// `a += b` elementwise.
pub(super) fn add_assign(a: &mut [f32], b: &[f32]) {
    for (x, &y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

/// `u = y ⊙ g + b` per row (the LayerNorm's affine part), rows of length `g.len()`.
pub(super) fn scale_shift(y: &[f32], g: &[f32], b: &[f32], u: &mut [f32]) {
    let n = g.len();
    for (ur, yr) in u.chunks_exact_mut(n).zip(y.chunks_exact(n)) {
        for (((o, &v), &s), &t) in ur.iter_mut().zip(yr).zip(g).zip(b) {
            *o = v * s + t;
        }
    }
}

/// `out = a ⊙ g` per row, rows of length `g.len()`.
pub(super) fn scale_rows(a: &[f32], g: &[f32], out: &mut [f32]) {
    let n = g.len();
    for (or, ar) in out.chunks_exact_mut(n).zip(a.chunks_exact(n)) {
        for ((o, &v), &s) in or.iter_mut().zip(ar).zip(g) {
            *o = v * s;
        }
    }
}
