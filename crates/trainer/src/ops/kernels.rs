//! Row kernels shared by the fused ops: plain sequential loops over contiguous rows of length `n`.
//!
//! Every row reduction (mean, variance, Σ exp, Σ dy⊙y) is accumulated in `f64`, also for `f32` data,
//! so the fused results carry one final rounding to `T` plus `O(n)` `f64` rounding errors.

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

/// Mean `μ` and `1/s = 1/sqrt(σ² + ε)` of one row (two-pass variance, in `f64`).
#[inline]
fn row_stats<T: Real>(x: &[T], eps: f64) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().map(|v| v.to_f64()).sum::<f64>() / n;
    let var = x
        .iter()
        .map(|v| {
            let d = v.to_f64() - mean;
            d * d
        })
        .sum::<f64>()
        / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// LayerNorm forward: `y = (x − μ)/sqrt(σ² + ε)` for every row of length `n`.
pub(crate) fn layer_norm_fwd<T: Real>(x: &[T], n: usize, eps: f64, y: &mut [T]) {
    if n == 0 {
        return;
    }
    for (xr, yr) in x.chunks_exact(n).zip(y.chunks_exact_mut(n)) {
        let (mean, inv_s) = row_stats(xr, eps);
        for (yi, xi) in yr.iter_mut().zip(xr) {
            *yi = T::from_f64((xi.to_f64() - mean) * inv_s);
        }
    }
}

/// LayerNorm backward: `dx = (dy − mean(dy) − y·mean(dy⊙y)) / s`, with `y` and `s` recomputed from
/// `x` in `f64` (so the formula is applied to the unrounded `y`).
pub(crate) fn layer_norm_bwd<T: Real>(x: &[T], dy: &[T], n: usize, eps: f64, dx: &mut [T]) {
    if n == 0 {
        return;
    }
    let nf = n as f64;
    for ((xr, gr), dxr) in x
        .chunks_exact(n)
        .zip(dy.chunks_exact(n))
        .zip(dx.chunks_exact_mut(n))
    {
        let (mean, inv_s) = row_stats(xr, eps);
        let (mut sum_g, mut sum_gy) = (0.0f64, 0.0f64);
        for (xi, gi) in xr.iter().zip(gr) {
            let g = gi.to_f64();
            sum_g += g;
            sum_gy += g * (xi.to_f64() - mean) * inv_s;
        }
        let (mean_g, mean_gy) = (sum_g / nf, sum_gy / nf);
        for ((dxi, xi), gi) in dxr.iter_mut().zip(xr).zip(gr) {
            let y = (xi.to_f64() - mean) * inv_s;
            *dxi = T::from_f64(inv_s * (gi.to_f64() - mean_g - y * mean_gy));
        }
    }
}

/// Softmax forward: `y = exp(x − max x) / Σ exp(x − max x)` for every row of length `n`. The
/// exponentials are taken in `T` (after the shift every argument is ≤ 0, so nothing overflows), the
/// sum in `f64`.
pub(crate) fn softmax_fwd<T: Real>(x: &[T], n: usize, y: &mut [T]) {
    if n == 0 {
        return;
    }
    for (xr, yr) in x.chunks_exact(n).zip(y.chunks_exact_mut(n)) {
        let mut max = xr[0];
        for &v in &xr[1..] {
            if v > max {
                max = v;
            }
        }
        let mut sum = 0.0f64;
        for (yi, &xi) in yr.iter_mut().zip(xr) {
            let e = (xi - max).exp_t();
            sum += e.to_f64();
            *yi = e;
        }
        let inv = 1.0 / sum;
        for yi in yr.iter_mut() {
            *yi = T::from_f64(yi.to_f64() * inv);
        }
    }
}

/// Softmax backward: `dx = y ⊙ (dy − Σ dy⊙y)` for every row of length `n`.
pub(crate) fn softmax_bwd<T: Real>(y: &[T], dy: &[T], n: usize, dx: &mut [T]) {
    if n == 0 {
        return;
    }
    for ((yr, gr), dxr) in y
        .chunks_exact(n)
        .zip(dy.chunks_exact(n))
        .zip(dx.chunks_exact_mut(n))
    {
        let dot = yr
            .iter()
            .zip(gr)
            .map(|(a, b)| a.to_f64() * b.to_f64())
            .sum::<f64>();
        for ((dxi, yi), gi) in dxr.iter_mut().zip(yr).zip(gr) {
            let yv = yi.to_f64();
            *dxi = T::from_f64(yv * (gi.to_f64() - dot));
        }
    }
}

#[cfg(test)]
mod tests {
    //! Kernel-level checks on exact cases and against a dense f64 Jacobian / finite difference.
    use super::*;

    #[test]
    fn softmax_exact_case() {
        // softmax([0, ln 2]) = [1/3, 2/3] exactly; second row is the shifted copy (shift invariance).
        let x = [0.0f64, 2f64.ln(), 100.0, 100.0 + 2f64.ln()];
        let mut y = [0.0; 4];
        softmax_fwd(&x, 2, &mut y);
        for (got, want) in y.iter().zip([1.0 / 3.0, 2.0 / 3.0, 1.0 / 3.0, 2.0 / 3.0]) {
            assert!((got - want).abs() < 1e-15, "{got} vs {want}");
        }
    }

    #[test]
    fn layer_norm_exact_case() {
        // x = [1, 2, 3]: μ = 2, σ² = 2/3, y = [−1, 0, 1]/sqrt(2/3 + ε).
        let eps = 1e-5;
        let mut y = [0.0f64; 3];
        layer_norm_fwd(&[1.0, 2.0, 3.0], 3, eps, &mut y);
        let s = (2.0f64 / 3.0 + eps).sqrt();
        for (got, want) in y.iter().zip([-1.0 / s, 0.0, 1.0 / s]) {
            assert!((got - want).abs() < 1e-15, "{got} vs {want}");
        }
    }

    #[test]
    fn softmax_bwd_matches_dense_jacobian() {
        // J = diag(y) − y yᵀ, dx = Jᵀ dy (J is symmetric).
        let x = [0.3f64, -1.2, 2.0, 0.7, -0.1];
        let dy = [1.0f64, -0.5, 0.25, 2.0, -1.5];
        let mut y = [0.0; 5];
        softmax_fwd(&x, 5, &mut y);
        let mut dx = [0.0; 5];
        softmax_bwd(&y, &dy, 5, &mut dx);
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
            let mut y = [0.0; 5];
            layer_norm_fwd(x, 5, eps, &mut y);
            y.iter().zip(&dy).map(|(a, b)| a * b).sum::<f64>()
        };
        let mut dx = [0.0; 5];
        layer_norm_bwd(&x, &dy, 5, eps, &mut dx);
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
        let mut y: [f32; 0] = [];
        layer_norm_fwd::<f32>(&[], 0, 1e-5, &mut y);
        softmax_fwd::<f32>(&[], 0, &mut y);
    }
}
