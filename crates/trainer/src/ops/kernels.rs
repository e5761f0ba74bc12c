//! Row kernels shared by the fused ops: plain sequential loops over contiguous rows of length `n`.
//!
//! Every row reduction (mean, variance, Σ exp, Σ dy⊙y) is accumulated in `f64`, also for `f32` data,
//! so the fused results carry one final rounding to `T` plus `O(n)` `f64` rounding errors.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, WithDType};

use super::OpsError;

/// The element types with a fused kernel (`f32`, `f64`).
pub(crate) trait Real: WithDType {
    /// `e^self` in the element type's own precision.
    fn exp_t(self) -> Self;
}

impl Real for f32 {
    #[inline]
    fn exp_t(self) -> Self {
        self.exp()
    }
}

impl Real for f64 {
    #[inline]
    fn exp_t(self) -> Self {
        self.exp()
    }
}

/// The contiguous part of `storage` that `layout` describes (honours the start offset).
pub(crate) fn contiguous_slice<'a, T: WithDType>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &'static str,
) -> candle_core::Result<&'a [T]> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or(OpsError::NonContiguous { op })?;
    Ok(&storage.as_slice::<T>()?[start..end])
}

/// `Σ f(a_i)` in `f64` with four independent accumulators (breaks the add-latency chain; the
/// rounding-error bound of an `n`-term sum is unchanged in form).
#[inline(always)]
fn sum_by<T: Copy>(a: &[T], f: impl Fn(T) -> f64) -> f64 {
    let mut acc = [0.0f64; 4];
    let chunks = a.chunks_exact(4);
    let tail: f64 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for c in chunks {
        for k in 0..4 {
            acc[k] += f(c[k]);
        }
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// `Σ f(a_i, b_i)` in `f64`, as [`sum_by`].
#[inline(always)]
fn sum2_by<T: Copy>(a: &[T], b: &[T], f: impl Fn(T, T) -> f64) -> f64 {
    let mut acc = [0.0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(&u, &v)| f(u, v))
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..4 {
            acc[k] += f(x[k], y[k]);
        }
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// Mean `μ` and `1/s = 1/sqrt(σ² + ε)` of one row (two-pass variance, in `f64`).
#[inline]
fn row_stats<T: Real>(x: &[T], eps: f64) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = sum_by(x, |v| v.to_f64()) / n;
    let var = sum_by(x, |v| {
        let d = v.to_f64() - mean;
        d * d
    }) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// LayerNorm forward: `y = (x − μ)/sqrt(σ² + ε)` for every row of length `n` (`x.len()` a multiple
/// of `n`; empty output when `n = 0`).
pub(crate) fn layer_norm_fwd<T: Real>(x: &[T], n: usize, eps: f64) -> Vec<T> {
    let mut y = Vec::with_capacity(x.len());
    if n == 0 {
        return y;
    }
    for xr in x.chunks_exact(n) {
        let (mean, inv_s) = row_stats(xr, eps);
        y.extend(xr.iter().map(|v| T::from_f64((v.to_f64() - mean) * inv_s)));
    }
    y
}

/// LayerNorm backward: `dx = (dy − mean(dy) − y·mean(dy⊙y)) / s`, with `y` and `s` recomputed from
/// `x` in `f64` (so the formula is applied to the unrounded `y`).
pub(crate) fn layer_norm_bwd<T: Real>(x: &[T], dy: &[T], n: usize, eps: f64) -> Vec<T> {
    let mut dx = Vec::with_capacity(x.len());
    if n == 0 {
        return dx;
    }
    let nf = n as f64;
    for (xr, gr) in x.chunks_exact(n).zip(dy.chunks_exact(n)) {
        let (mean, inv_s) = row_stats(xr, eps);
        let mean_g = sum_by(gr, |g| g.to_f64()) / nf;
        let mean_gy = sum2_by(xr, gr, |v, g| g.to_f64() * (v.to_f64() - mean)) * inv_s / nf;
        dx.extend(xr.iter().zip(gr).map(|(v, g)| {
            let y = (v.to_f64() - mean) * inv_s;
            T::from_f64(inv_s * (g.to_f64() - mean_g - y * mean_gy))
        }));
    }
    dx
}

/// Softmax forward: `y = exp(x − max x) / Σ exp(x − max x)` for every row of length `n`. The
/// exponentials are taken in `T` (after the shift every argument is ≤ 0, so nothing overflows), the
/// sum in `f64`.
pub(crate) fn softmax_fwd<T: Real>(x: &[T], n: usize) -> Vec<T> {
    let mut y = Vec::with_capacity(x.len());
    if n == 0 {
        return y;
    }
    for xr in x.chunks_exact(n) {
        let mut max = xr[0];
        for &v in &xr[1..] {
            if v > max {
                max = v;
            }
        }
        let start = y.len();
        y.extend(xr.iter().map(|&v| (v - max).exp_t()));
        let row = &mut y[start..];
        let inv = 1.0 / sum_by(row, |e| e.to_f64());
        for e in row.iter_mut() {
            *e = T::from_f64(e.to_f64() * inv);
        }
    }
    y
}

/// Softmax backward: `dx = y ⊙ (dy − Σ dy⊙y)` for every row of length `n`.
pub(crate) fn softmax_bwd<T: Real>(y: &[T], dy: &[T], n: usize) -> Vec<T> {
    let mut dx = Vec::with_capacity(y.len());
    if n == 0 {
        return dx;
    }
    for (yr, gr) in y.chunks_exact(n).zip(dy.chunks_exact(n)) {
        let dot = sum2_by(yr, gr, |a, b| a.to_f64() * b.to_f64());
        dx.extend(
            yr.iter()
                .zip(gr)
                .map(|(a, g)| T::from_f64(a.to_f64() * (g.to_f64() - dot))),
        );
    }
    dx
}

/// A row kernel generic over the fused element types: maps one contiguous slice of rows of length
/// `row` to a new buffer of the same length.
pub(crate) trait RowKernel1 {
    /// Applies the kernel to `x`.
    fn apply<T: Real>(&self, x: &[T], row: usize) -> Vec<T>;
}

/// As [`RowKernel1`], over two equally shaped slices (an input and an output gradient).
pub(crate) trait RowKernel2 {
    /// Applies the kernel to `(a, b)`.
    fn apply<T: Real>(&self, a: &[T], b: &[T], row: usize) -> Vec<T>;
}

/// The `cpu_fwd` of a one-input fused op: dtype dispatch (`f32`, `f64`, else a typed error),
/// contiguity check, kernel, same shape out.
pub(crate) fn run_kernel1(
    op: &'static str,
    k: &impl RowKernel1,
    s: &CpuStorage,
    l: &Layout,
) -> candle_core::Result<(CpuStorage, candle_core::Shape)> {
    let row = l.shape().dims().last().copied().unwrap_or(1);
    let out = match s.dtype() {
        candle_core::DType::F32 => {
            f32::to_cpu_storage_owned(k.apply(contiguous_slice::<f32>(s, l, op)?, row))
        }
        candle_core::DType::F64 => {
            f64::to_cpu_storage_owned(k.apply(contiguous_slice::<f64>(s, l, op)?, row))
        }
        dtype => return Err(OpsError::UnsupportedDType { op, dtype }.into()),
    };
    Ok((out, l.shape().clone()))
}

/// The `cpu_fwd` of a two-input fused op (equal shapes and dtypes checked), as [`run_kernel1`].
pub(crate) fn run_kernel2(
    op: &'static str,
    k: &impl RowKernel2,
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
) -> candle_core::Result<(CpuStorage, candle_core::Shape)> {
    super::layer_norm::check_pair(op, s1, l1, s2, l2)?;
    let row = l1.shape().dims().last().copied().unwrap_or(1);
    let out = match s1.dtype() {
        candle_core::DType::F32 => f32::to_cpu_storage_owned(k.apply(
            contiguous_slice::<f32>(s1, l1, op)?,
            contiguous_slice::<f32>(s2, l2, op)?,
            row,
        )),
        candle_core::DType::F64 => f64::to_cpu_storage_owned(k.apply(
            contiguous_slice::<f64>(s1, l1, op)?,
            contiguous_slice::<f64>(s2, l2, op)?,
            row,
        )),
        dtype => return Err(OpsError::UnsupportedDType { op, dtype }.into()),
    };
    Ok((out, l1.shape().clone()))
}

#[cfg(test)]
mod tests {
    //! Kernel-level checks on exact cases and against a dense f64 Jacobian / finite difference.
    use super::*;

    #[test]
    fn softmax_exact_case() {
        // softmax([0, ln 2]) = [1/3, 2/3] exactly; second row is the shifted copy (shift invariance).
        let x = [0.0f64, 2f64.ln(), 100.0, 100.0 + 2f64.ln()];
        let y = softmax_fwd(&x, 2);
        for (got, want) in y.iter().zip([1.0 / 3.0, 2.0 / 3.0, 1.0 / 3.0, 2.0 / 3.0]) {
            assert!((got - want).abs() < 1e-15, "{got} vs {want}");
        }
    }

    #[test]
    fn layer_norm_exact_case() {
        // x = [1, 2, 3]: μ = 2, σ² = 2/3, y = [−1, 0, 1]/sqrt(2/3 + ε).
        let eps = 1e-5;
        let y = layer_norm_fwd(&[1.0f64, 2.0, 3.0], 3, eps);
        let s = (2.0f64 / 3.0 + eps).sqrt();
        for (got, want) in y.iter().zip([-1.0 / s, 0.0, 1.0 / s]) {
            assert!((got - want).abs() < 1e-15, "{got} vs {want}");
        }
    }

    #[test]
    fn four_accumulator_sums_match_sequential_sums() {
        // Lengths 0..=9 cover empty input, pure tail, full chunks and chunk + tail.
        for len in 0..=9usize {
            let a: Vec<f64> = (0..len).map(|i| 0.5 + i as f64).collect();
            let b: Vec<f64> = (0..len).map(|i| 2.0 - i as f64).collect();
            let want: f64 = a.iter().sum();
            let want2: f64 = a.iter().zip(&b).map(|(u, v)| u * v).sum();
            assert_eq!(sum_by(&a, |v| v), want, "len {len}");
            assert_eq!(sum2_by(&a, &b, |u, v| u * v), want2, "len {len}");
        }
    }

    #[test]
    fn softmax_bwd_matches_dense_jacobian() {
        // J = diag(y) − y yᵀ, dx = Jᵀ dy (J is symmetric).
        let x = [0.3f64, -1.2, 2.0, 0.7, -0.1];
        let dy = [1.0f64, -0.5, 0.25, 2.0, -1.5];
        let y = softmax_fwd(&x, 5);
        let dx = softmax_bwd(&y, &dy, 5);
        for j in 0..5 {
            let want: f64 = (0..5)
                .map(|i| {
                    let jac = if i == j { y[i] } else { 0.0 } - y[i] * y[j];
                    jac * dy[i]
                })
                .sum();
            assert!((dx[j] - want).abs() < 1e-15, "{j}: {} vs {want}", dx[j]);
        }
    }

    #[test]
    fn layer_norm_bwd_matches_central_difference() {
        // Central difference of L(x) = Σ dy_i y_i(x) with h = 1e-6: truncation h²/6·|L'''| ≈ 1e-12
        // (|L'''| = O(1) for s ≈ 1) plus rounding ≈ 1e-16·|L|/h ≈ 1e-10, so 1e-8 is a safe bound.
        let x = [0.3f64, -1.2, 2.0, 0.7, -0.1];
        let dy = [1.0f64, -0.5, 0.25, 2.0, -1.5];
        let eps = 1e-3;
        let loss = |x: &[f64]| {
            let y = layer_norm_fwd(x, 5, eps);
            y.iter().zip(&dy).map(|(a, b)| a * b).sum::<f64>()
        };
        let dx = layer_norm_bwd(&x, &dy, 5, eps);
        let h = 1e-6;
        for j in 0..5 {
            let (mut xp, mut xm) = (x, x);
            xp[j] += h;
            xm[j] -= h;
            let fd = (loss(&xp) - loss(&xm)) / (2.0 * h);
            assert!((dx[j] - fd).abs() < 1e-8, "{j}: {} vs {fd}", dx[j]);
        }
    }

    #[test]
    fn empty_rows_are_a_no_op() {
        assert!(layer_norm_fwd::<f32>(&[], 0, 1e-5).is_empty());
        assert!(softmax_fwd::<f32>(&[], 0).is_empty());
        assert!(softmax_bwd::<f32>(&[], &[], 0).is_empty());
    }
}
