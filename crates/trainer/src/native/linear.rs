//! Row-major linear-layer kernels on `f32` slices: `y = x Wᵀ + b` and its three gradients, each a
//! [`gemm_into`] with the operands' strides (no transposed copies), plus the row-wise helpers of
//! the affine LayerNorm and the residual stream.
//!
//! Shapes: `x (rows × n)`, `W (m × n)` (candle's `(out, in)`), `b (m)`, `y, dy (rows × m)`.

use std::cell::Cell;

use bmt_kfac::linear_op::{gemm_into, MatrixView};

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

/// `y = x Wᵀ + b`: `y`'s rows are filled with `b`, then the GEMM accumulates onto them.
pub(super) fn affine(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    (rows, n, m): (usize, usize, usize),
    y: &mut [f32],
) {
    fill_rows(y, b, rows);
    accumulate_product(x, w, (rows, n, m), y);
}

/// `y += x Wᵀ + b` (the residual connection `h + O(c)`).
pub(super) fn add_affine(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    (rows, n, m): (usize, usize, usize),
    y: &mut [f32],
) {
    for row in y[..rows * m].chunks_exact_mut(m) {
        add_assign(row, b);
    }
    accumulate_product(x, w, (rows, n, m), y);
}

/// `y += x Wᵀ`.
fn accumulate_product(x: &[f32], w: &[f32], (rows, n, m): (usize, usize, usize), y: &mut [f32]) {
    // Wᵀ as an n×m view of W (m×n, row-major).
    gemm_into(
        &mut y[..rows * m],
        (rows, m, n),
        true,
        MatrixView::rows(x, n),
        MatrixView::transposed(w, n),
        gemm_threads(),
    );
}

/// `dx [+]= dy W`: the gradient with respect to the layer input.
pub(super) fn input_grad(
    dy: &[f32],
    w: &[f32],
    (rows, n, m): (usize, usize, usize),
    accumulate: bool,
    dx: &mut [f32],
) {
    gemm_into(
        &mut dx[..rows * n],
        (rows, n, m),
        accumulate,
        MatrixView::rows(dy, m),
        MatrixView::rows(w, n),
        gemm_threads(),
    );
}

/// `dW = dyᵀ x`, `(m × n)`.
pub(super) fn weight_grad(dy: &[f32], x: &[f32], (rows, n, m): (usize, usize, usize)) -> Vec<f32> {
    let mut dw = vec![0.0; m * n];
    // dyᵀ as an m×rows view of dy (rows×m).
    gemm_into(
        &mut dw,
        (m, n, rows),
        false,
        MatrixView::transposed(dy, m),
        MatrixView::rows(x, n),
        gemm_threads(),
    );
    dw
}

/// `Σ_rows a` over rows of length `m`, accumulated row by row in `f32` (as candle's `sum`).
pub(super) fn column_sums(a: &[f32], m: usize) -> Vec<f32> {
    let mut s = vec![0.0; m];
    for row in a.chunks_exact(m) {
        add_assign(&mut s, row);
    }
    s
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

/// Every row of `dst` (the first `rows` rows of `src.len()` columns) set to `src`.
pub(super) fn fill_rows(dst: &mut [f32], src: &[f32], rows: usize) {
    for row in dst[..rows * src.len()].chunks_exact_mut(src.len()) {
        row.copy_from_slice(src);
    }
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
