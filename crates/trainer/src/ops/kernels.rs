//! Row kernels shared by the fused ops: plain sequential loops over contiguous rows of length `n`,
//! written so that the compiler can vectorise them, and compiled twice (see [`run_kernel1`]).
//!
//! Every row reduction (mean, variance, Σ exp, Σ dy⊙y) is accumulated in `f64`, also for `f32` data,
//! so the fused results carry one final rounding to `T` plus `O(n)` `f64` rounding errors. The `f32`
//! exponential is [`exp_f32`] (≤ 2 ulp, see its doc), the `f64` one libm's `exp`.
//!
//! # Runtime dispatch
//!
//! The workspace builds for generic x86-64, where the loops only get SSE2 (4 `f32` lanes, no FMA).
//! [`run_kernel1`] / [`run_kernel2`] therefore run each kernel through one of two monomorphic copies:
//! one compiled with `#[target_feature(enable = "avx2,fma")]` (8 lanes, fused multiply-adds in the
//! exponential's polynomial), chosen when `is_x86_feature_detected!` reports both features (the
//! detection is cached by `std`), and the plain one otherwise. The two copies evaluate the same
//! formulas; they differ only in whether [`exp_f32`]'s multiply-adds round once ([`Fma`]) or twice
//! ([`Split`]), so `f32` results can differ by an ulp or so between machines (both within the
//! documented bound); `f64` results are identical.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, WithDType};

use super::OpsError;

/// How [`exp_f32`] forms `a·b + c`: with one rounding ([`Fma`]) or two ([`Split`]).
pub(crate) trait MulAdd {
    /// `a·b + c`.
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}

/// `fl(a·b + c)`, one rounding: the FMA instruction in the AVX2+FMA copy of a kernel (anywhere else
/// it would be a slow libm `fmaf` call, so the plain copy uses [`Split`]).
pub(crate) struct Fma;

impl MulAdd for Fma {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

/// `fl(fl(a·b) + c)`, two roundings: a multiply and an add, available on every x86-64.
pub(crate) struct Split;

impl MulAdd for Split {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// The element types with a fused kernel (`f32`, `f64`).
pub(crate) trait Real: WithDType {
    /// `e^self` for the kernels: [`exp_f32`] with multiply-adds `M` for `f32`, libm's `exp` for
    /// `f64` (the reference precision path; `M` is ignored).
    fn exp_k<M: MulAdd>(self) -> Self;

    /// `a·b + c` for the kernels: `M`'s multiply-add for `f32`, a multiply and an add for `f64`.
    fn mul_add_k<M: MulAdd>(a: Self, b: Self, c: Self) -> Self;
}

impl Real for f32 {
    #[inline(always)]
    fn exp_k<M: MulAdd>(self) -> Self {
        exp_f32::<M>(self)
    }

    #[inline(always)]
    fn mul_add_k<M: MulAdd>(a: Self, b: Self, c: Self) -> Self {
        M::mul_add(a, b, c)
    }
}

impl Real for f64 {
    #[inline(always)]
    fn exp_k<M: MulAdd>(self) -> Self {
        self.exp()
    }

    #[inline(always)]
    fn mul_add_k<M: MulAdd>(a: Self, b: Self, c: Self) -> Self {
        a * b + c
    }
}

/// Inputs above this give `+∞` (`e^x` overflows `f32` for `x > ln(f32::MAX) ≈ 88.7228`); clamping
/// to it keeps the exponent arithmetic of [`exp_f32`] in range.
const EXP_HI: f32 = 89.0;
/// Inputs below this give `+0` (`e^x` is below half the smallest subnormal, `2⁻¹⁵⁰`, for
/// `x < −150·ln 2 ≈ −103.97`).
const EXP_LO: f32 = -104.0;
/// `1/ln 2`.
const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// `ln 2` rounded to 9 significant bits (`355/512`), so that `k·LN2_HI` is exact for `|k| < 2¹⁵`.
const LN2_HI: f32 = 355.0 / 512.0;
/// `ln 2 − LN2_HI` rounded to `f32`.
const LN2_LO: f32 = -2.121_944_4e-4;
/// `1.5·2²³`: adding it rounds a value of magnitude `< 2²²` to an integer, which then sits in the
/// low mantissa bits (the round-to-nearest trick, no float→int conversion).
const SHIFTER: f32 = 12_582_912.0;
/// Taylor coefficients `1/j!` of `e^r`, `j = 7, 6, …, 2` (Horner order; the `1 + r` terms follow).
const EXP_TAYLOR: [f32; 6] = [
    1.0 / 5040.0,
    1.0 / 720.0,
    1.0 / 120.0,
    1.0 / 24.0,
    1.0 / 6.0,
    0.5,
];

/// `2^j` for `j ∈ [−126, 127]`, built from the exponent bits: `(j + 127) << 23`.
#[inline(always)]
fn pow2i(j: i32) -> f32 {
    f32::from_bits(((j + 127) as u32) << 23)
}

/// `e^x` in `f32`: `x = k·ln 2 + r` (Cody–Waite: `k = round(x/ln 2)`, `r = (x − k·LN2_HI) − k·LN2_LO`,
/// `|r| ≤ ln 2/2`), `e^r ≈ Σ_{j≤7} r^j/j!` by Horner (truncation `≤ |r|⁸/8!·e^|r| < 6·10⁻⁹`
/// relative, ≈ 0.05 ulp), and `e^x = e^r·2^{k₁}·2^{k₂}` with `k₁ = ⌊k/2⌋`, `k₂ = k − k₁`, so that
/// both factors are normal for every `k ∈ [−150, 128]` and the last product rounds correctly into
/// the subnormal range or to `+∞`.
///
/// Accuracy: within 2 ulp of the exact value over the whole `f32` range, subnormal results included
/// (measured by the tests: ≤ 1 ulp in normal range, both `M`). Special values: `NaN → NaN`,
/// `x > 88.7228 → +∞` (`+∞ → +∞`), `x < −103.98 → +0` (`−∞ → +0`). Branch-free, so a loop over it
/// vectorises.
#[inline(always)]
pub(crate) fn exp_f32<M: MulAdd>(x: f32) -> f32 {
    // Comparisons (not f32::min/max) so that NaN passes through unchanged.
    let x = if x > EXP_HI { EXP_HI } else { x };
    let x = if x < EXP_LO { EXP_LO } else { x };
    let t = M::mul_add(x, LOG2_E, SHIFTER);
    let k = t - SHIFTER;
    let r = M::mul_add(k, -LN2_HI, x);
    let r = M::mul_add(k, -LN2_LO, r);
    let mut p = EXP_TAYLOR[0];
    for c in &EXP_TAYLOR[1..] {
        p = M::mul_add(p, r, *c);
    }
    p = M::mul_add(p, r, 1.0);
    p = M::mul_add(p, r, 1.0);
    // k as an integer: the low mantissa bits of t (wrapping: t's bits minus SHIFTER's bits).
    let ki = (t.to_bits() as i32).wrapping_sub(SHIFTER.to_bits() as i32);
    let k1 = ki >> 1;
    p * pow2i(k1) * pow2i(ki - k1)
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

/// `Σ f(a_i)` in `f64` with four independent accumulators (breaks the add-latency chain and maps
/// onto one 4-lane `f64` vector; the rounding-error bound of an `n`-term sum is unchanged in form).
#[inline(always)]
pub(crate) fn sum_by<T: Copy>(a: &[T], f: impl Fn(T) -> f64) -> f64 {
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

/// `(Σ f(a_i, b_i), Σ h(a_i, b_i))` in `f64`, both as [`sum_by`], in one pass.
#[inline(always)]
fn sum2_pair_by<T: Copy>(
    a: &[T],
    b: &[T],
    f: impl Fn(T, T) -> f64,
    h: impl Fn(T, T) -> f64,
) -> (f64, f64) {
    let (mut p, mut q) = ([0.0f64; 4], [0.0f64; 4]);
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let (mut tp, mut tq) = (0.0f64, 0.0f64);
    for (&u, &v) in ca.remainder().iter().zip(cb.remainder()) {
        tp += f(u, v);
        tq += h(u, v);
    }
    for (x, y) in ca.zip(cb) {
        for k in 0..4 {
            p[k] += f(x[k], y[k]);
            q[k] += h(x[k], y[k]);
        }
    }
    (
        (p[0] + p[1]) + (p[2] + p[3]) + tp,
        (q[0] + q[1]) + (q[2] + q[3]) + tq,
    )
}

/// `Σ f(a_i, b_i)` in `f64`, as [`sum_by`].
#[inline(always)]
pub(crate) fn sum2_by<T: Copy>(a: &[T], b: &[T], f: impl Fn(T, T) -> f64) -> f64 {
    sum2_pair_by(a, b, f, |_, _| 0.0).0
}

/// Mean `μ` and `1/s = 1/sqrt(σ² + ε)` of one row (two-pass variance, in `f64`).
#[inline(always)]
fn row_stats<T: Real>(x: &[T], eps: f64) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = sum_by(x, |v| v.to_f64()) / n;
    let var = sum_by(x, |v| {
        let d = v.to_f64() - mean;
        d * d
    }) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// `max_i x_i` of a non-empty row, over eight lanes (`m_k = max(m_k, x_{8j+k})`, then the lanes),
/// so that it vectorises. A `NaN` element may be skipped here; it still turns the softmax row into
/// `NaN` through `exp(NaN − max)`.
#[inline(always)]
pub(crate) fn row_max<T: Real>(x: &[T]) -> T {
    let mut m = [x[0]; 8];
    let chunks = x.chunks_exact(8);
    let mut tail = x[0];
    for &v in chunks.remainder() {
        tail = if v > tail { v } else { tail };
    }
    for c in chunks {
        for k in 0..8 {
            m[k] = if c[k] > m[k] { c[k] } else { m[k] };
        }
    }
    m.iter().fold(tail, |a, &b| if b > a { b } else { a })
}

/// LayerNorm forward into `y`: `y = (x − μ)/sqrt(σ² + ε)` for every row of length `n` (`x.len()` a
/// multiple of `n`, `y` as long as `x`; nothing to do when `n = 0`).
#[inline(always)]
pub(crate) fn layer_norm_fwd<T: Real>(x: &[T], n: usize, eps: f64, y: &mut [T]) {
    if n == 0 {
        return;
    }
    for (xr, yr) in x.chunks_exact(n).zip(y.chunks_exact_mut(n)) {
        let (mean, inv_s) = row_stats(xr, eps);
        for (o, &v) in yr.iter_mut().zip(xr) {
            *o = T::from_f64((v.to_f64() - mean) * inv_s);
        }
    }
}

/// LayerNorm backward into `dx`: `dx = (dy − mean(dy) − y·mean(dy⊙y)) / s`, with `y` and `s`
/// recomputed from `x` in `f64` (so the formula is applied to the unrounded `y`). Three passes per
/// row: `(Σx, Σdy)`, `(Σ(x − μ)², Σdy·(x − μ))`, then `dx`.
#[inline(always)]
pub(crate) fn layer_norm_bwd<T: Real>(x: &[T], dy: &[T], n: usize, eps: f64, dx: &mut [T]) {
    if n == 0 {
        return;
    }
    let nf = n as f64;
    let rows = x.chunks_exact(n).zip(dy.chunks_exact(n));
    for ((xr, gr), dr) in rows.zip(dx.chunks_exact_mut(n)) {
        let (sx, sg) = sum2_pair_by(xr, gr, |v, _| v.to_f64(), |_, g| g.to_f64());
        let (mean, mean_g) = (sx / nf, sg / nf);
        let centred = |v: T| v.to_f64() - mean;
        let (ss, sgc) = sum2_pair_by(
            xr,
            gr,
            |v, _| centred(v) * centred(v),
            |v, g| g.to_f64() * centred(v),
        );
        let inv_s = 1.0 / (ss / nf + eps).sqrt();
        let mean_gy = sgc * inv_s / nf;
        for ((o, &v), &g) in dr.iter_mut().zip(xr).zip(gr) {
            let y = centred(v) * inv_s;
            *o = T::from_f64(inv_s * (g.to_f64() - mean_g - y * mean_gy));
        }
    }
}

/// Softmax forward into `y`: `y = exp(x − max x) / Σ exp(x − max x)` for every row of length `n`.
/// The exponentials are taken in `T` ([`Real::exp_k`]; after the shift every argument is ≤ 0, so
/// nothing overflows) and written straight into `y`, the sum is taken in `f64`, and each
/// `y_i = e_i·(1/Σ)` is formed in `f64` and rounded once.
#[inline(always)]
pub(crate) fn softmax_fwd<T: Real, M: MulAdd>(x: &[T], n: usize, y: &mut [T]) {
    if n == 0 {
        return;
    }
    for (xr, yr) in x.chunks_exact(n).zip(y.chunks_exact_mut(n)) {
        let max = row_max(xr);
        for (o, &v) in yr.iter_mut().zip(xr) {
            *o = (v - max).exp_k::<M>();
        }
        let inv = 1.0 / sum_by(yr, |e| e.to_f64());
        for e in yr.iter_mut() {
            *e = T::from_f64(e.to_f64() * inv);
        }
    }
}

/// Softmax backward into `dx`: `dx = y ⊙ (dy − Σ dy⊙y)` for every row of length `n` (the dot
/// product and the products in `f64`, one rounding).
#[inline(always)]
pub(crate) fn softmax_bwd<T: Real>(y: &[T], dy: &[T], n: usize, dx: &mut [T]) {
    if n == 0 {
        return;
    }
    let rows = y.chunks_exact(n).zip(dy.chunks_exact(n));
    for ((yr, gr), dr) in rows.zip(dx.chunks_exact_mut(n)) {
        let dot = sum2_by(yr, gr, |a, b| a.to_f64() * b.to_f64());
        for ((o, &a), &g) in dr.iter_mut().zip(yr).zip(gr) {
            *o = T::from_f64(a.to_f64() * (g.to_f64() - dot));
        }
    }
}

/// A row kernel generic over the fused element types: maps one contiguous slice of rows of length
/// `row` into an output buffer of the same length. Implementations are `#[inline(always)]` (and so
/// is everything they call), so that each copy made by [`run_kernel1`] is compiled with its caller's
/// target features.
pub(crate) trait RowKernel1 {
    /// Applies the kernel to `x`, writing `out` (`out.len() == x.len()`).
    fn apply<T: Real, M: MulAdd>(&self, x: &[T], row: usize, out: &mut [T]);
}

/// As [`RowKernel1`], over two equally shaped slices (an input and an output gradient).
pub(crate) trait RowKernel2 {
    /// Applies the kernel to `(a, b)`, writing `out` (all three of one length).
    fn apply<T: Real, M: MulAdd>(&self, a: &[T], b: &[T], row: usize, out: &mut [T]);
}

/// Whether the CPU has AVX2 and FMA (`std` caches the detection; this is a load and a test).
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn has_avx2_fma() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// [`RowKernel1::apply`] compiled for AVX2 + FMA, with [`Fma`] multiply-adds.
///
/// # Safety
///
/// The CPU must support AVX2 and FMA (check with [`has_avx2_fma`]); the body is safe code.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn apply1_avx2_fma<K: RowKernel1, T: Real>(k: &K, x: &[T], row: usize, out: &mut [T]) {
    k.apply::<T, Fma>(x, row, out);
}

/// [`RowKernel2::apply`] compiled for AVX2 + FMA; safety as [`apply1_avx2_fma`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn apply2_avx2_fma<K: RowKernel2, T: Real>(
    k: &K,
    a: &[T],
    b: &[T],
    row: usize,
    out: &mut [T],
) {
    k.apply::<T, Fma>(a, b, row, out);
}

/// `k` applied to `x`, written into `out` (as long as `x`), through the AVX2+FMA copy where the
/// CPU has both features, else the plain ([`Split`]) copy.
pub(crate) fn apply1_into<K: RowKernel1, T: Real>(k: &K, x: &[T], row: usize, out: &mut [T]) {
    debug_assert_eq!(x.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: has_avx2_fma() just confirmed that this CPU supports AVX2 and FMA, the only
        // requirement of apply1_avx2_fma (its body is safe code).
        unsafe { apply1_avx2_fma(k, x, row, out) };
        return;
    }
    k.apply::<T, Split>(x, row, out);
}

/// As [`apply1_into`], for a [`RowKernel2`] (`a`, `b` and `out` of equal length).
pub(crate) fn apply2_into<K: RowKernel2, T: Real>(
    k: &K,
    a: &[T],
    b: &[T],
    row: usize,
    out: &mut [T],
) {
    debug_assert_eq!(a.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: as in apply1_into: the CPU supports AVX2 and FMA, checked just above.
        unsafe { apply2_avx2_fma(k, a, b, row, out) };
        return;
    }
    k.apply::<T, Split>(a, b, row, out);
}

/// [`apply1_into`] into a new buffer.
pub(crate) fn apply1<K: RowKernel1, T: Real>(k: &K, x: &[T], row: usize) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    apply1_into(k, x, row, &mut out);
    out
}

/// [`apply2_into`] into a new buffer.
pub(crate) fn apply2<K: RowKernel2, T: Real>(k: &K, a: &[T], b: &[T], row: usize) -> Vec<T> {
    let mut out = vec![T::zero(); a.len()];
    apply2_into(k, a, b, row, &mut out);
    out
}

/// The `cpu_fwd` of a one-input fused op: dtype dispatch (`f32`, `f64`, else a typed error),
/// contiguity check, kernel ([`apply1`]), same shape out.
pub(crate) fn run_kernel1(
    op: &'static str,
    k: &impl RowKernel1,
    s: &CpuStorage,
    l: &Layout,
) -> candle_core::Result<(CpuStorage, candle_core::Shape)> {
    let row = l.shape().dims().last().copied().unwrap_or(1);
    let out = match s.dtype() {
        candle_core::DType::F32 => {
            f32::to_cpu_storage_owned(apply1(k, contiguous_slice::<f32>(s, l, op)?, row))
        }
        candle_core::DType::F64 => {
            f64::to_cpu_storage_owned(apply1(k, contiguous_slice::<f64>(s, l, op)?, row))
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
        candle_core::DType::F32 => f32::to_cpu_storage_owned(apply2(
            k,
            contiguous_slice::<f32>(s1, l1, op)?,
            contiguous_slice::<f32>(s2, l2, op)?,
            row,
        )),
        candle_core::DType::F64 => f64::to_cpu_storage_owned(apply2(
            k,
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
    //! Kernel-level checks on exact cases, against a dense f64 Jacobian / finite difference, and of
    //! the fast exponential against f64 `exp`.
    use super::*;

    fn softmax<T: Real>(x: &[T], n: usize) -> Vec<T> {
        let mut y = vec![T::zero(); x.len()];
        softmax_fwd::<T, Split>(x, n, &mut y);
        y
    }

    fn softmax_back<T: Real>(y: &[T], dy: &[T], n: usize) -> Vec<T> {
        let mut dx = vec![T::zero(); y.len()];
        softmax_bwd(y, dy, n, &mut dx);
        dx
    }

    fn layer_norm<T: Real>(x: &[T], n: usize, eps: f64) -> Vec<T> {
        let mut y = vec![T::zero(); x.len()];
        layer_norm_fwd(x, n, eps, &mut y);
        y
    }

    /// `|got − e^x|` in units of the `f32` spacing at `e^x` (`2^(⌊log₂ e^x⌋ − 23)`, `2⁻¹⁴⁹` below
    /// the normal range), `e^x` from f64 `exp` of the same `f32` input (relative error ≈ 1e-16, so
    /// the reference is exact to ≈ 1e-9 ulp). A `+∞` result counts as `2¹²⁸` (the next step above
    /// `f32::MAX`); an exact value that itself rounds to `+∞` must give `+∞`.
    fn ulp_error(got: f32, x: f32) -> f64 {
        let exact = (x as f64).exp();
        if (exact as f32).is_infinite() {
            return if got == f32::INFINITY {
                0.0
            } else {
                f64::INFINITY
            };
        }
        let binade = ((exact.to_bits() >> 52) & 0x7ff) as i32 - 1023;
        let ulp = 2f64.powi(binade.max(-126) - 23);
        let got = if got == f32::INFINITY {
            2f64.powi(128)
        } else {
            got as f64
        };
        (got - exact).abs() / ulp
    }

    /// The sweep: a uniform grid of 2²¹ + 1 points over `[−104, 89]`, plus every 661st `f32` bit
    /// pattern of either sign up to `|x| = 104` (all magnitudes down to subnormal inputs).
    fn exp_sweep() -> impl Iterator<Item = f32> {
        let n = 1u32 << 21;
        let grid = (0..=n).map(move |i| (-104.0 + 193.0 * (i as f64 / n as f64)) as f32);
        let bits = (0..104f32.to_bits())
            .step_by(661)
            .flat_map(|b| [f32::from_bits(b), -f32::from_bits(b)]);
        grid.chain(bits).filter(|x| (-104.0..=89.0).contains(x))
    }

    /// The documented bound (2 ulp) over the whole range, subnormal results included, for both
    /// multiply-add variants.
    #[test]
    fn exp_f32_is_within_two_ulp_over_the_whole_range() {
        let (mut worst_split, mut worst_fma) = ((0.0f64, 0.0f32), (0.0f64, 0.0f32));
        for x in exp_sweep() {
            let es = ulp_error(exp_f32::<Split>(x), x);
            let ef = ulp_error(exp_f32::<Fma>(x), x);
            if es > worst_split.0 {
                worst_split = (es, x);
            }
            if ef > worst_fma.0 {
                worst_fma = (ef, x);
            }
        }
        println!("worst ulp: Split {worst_split:?}, Fma {worst_fma:?}");
        assert!(worst_split.0 <= 2.0, "Split: {worst_split:?}");
        assert!(worst_fma.0 <= 2.0, "Fma: {worst_fma:?}");
    }

    #[test]
    fn exp_f32_special_values() {
        for exp in [exp_f32::<Split>, exp_f32::<Fma>] {
            assert!(exp(f32::NAN).is_nan());
            assert!(exp(-f32::NAN).is_nan());
            assert_eq!(exp(0.0), 1.0);
            assert_eq!(exp(-0.0), 1.0);
            for x in [88.73, 89.0, 100.0, 1e30, f32::MAX, f32::INFINITY] {
                assert_eq!(exp(x), f32::INFINITY, "{x}");
            }
            assert!(exp(88.72).is_finite());
            for x in [-104.0, -1e4, -1e30, f32::MIN, f32::NEG_INFINITY] {
                assert_eq!(exp(x).to_bits(), 0, "{x}");
            }
            // e^(−103) ≈ 8.4·2⁻¹⁵⁰: subnormal results are produced, not flushed to 0.
            let tiny = exp(-103.0);
            assert!(tiny > 0.0 && tiny < 8.0 * f32::from_bits(1), "{tiny:e}");
            assert_eq!(exp(1.0), std::f32::consts::E);
        }
    }

    /// A test-only kernel: `e^x` elementwise, to run the exponential through the dispatched copy.
    struct ExpKernel;

    impl RowKernel1 for ExpKernel {
        #[inline(always)]
        fn apply<T: Real, M: MulAdd>(&self, x: &[T], _row: usize, out: &mut [T]) {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = v.exp_k::<M>();
            }
        }
    }

    /// The vectorised loop evaluates exactly the scalar formula: the dispatched copy (AVX2+FMA
    /// where available) equals `exp_f32::<Fma>` / `exp_f32::<Split>` bit for bit.
    #[test]
    fn dispatched_exp_loop_equals_the_scalar_formula() {
        let x: Vec<f32> = exp_sweep()
            .step_by(7)
            .chain([f32::NAN, f32::INFINITY, f32::NEG_INFINITY])
            .collect();
        let got = apply1(&ExpKernel, &x, x.len());
        #[cfg(target_arch = "x86_64")]
        let fma = has_avx2_fma();
        #[cfg(not(target_arch = "x86_64"))]
        let fma = false;
        for (&v, &g) in x.iter().zip(&got) {
            let want = if fma {
                exp_f32::<Fma>(v)
            } else {
                exp_f32::<Split>(v)
            };
            let same = g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan());
            assert!(same, "{v}: {g} vs {want}");
        }
    }

    #[test]
    fn softmax_exact_case() {
        // softmax([0, ln 2]) = [1/3, 2/3] exactly; second row is the shifted copy (shift invariance).
        let x = [0.0f64, 2f64.ln(), 100.0, 100.0 + 2f64.ln()];
        let y = softmax(&x, 2);
        for (got, want) in y.iter().zip([1.0 / 3.0, 2.0 / 3.0, 1.0 / 3.0, 2.0 / 3.0]) {
            assert!((got - want).abs() < 1e-15, "{got} vs {want}");
        }
    }

    #[test]
    fn row_max_covers_lanes_and_tail() {
        // Lengths 1..=19 cover pure tail, full 8-lane chunks and chunk + tail, maximum anywhere.
        for len in 1..=19usize {
            for at in 0..len {
                let mut x: Vec<f32> = (0..len).map(|i| -(i as f32)).collect();
                x[at] = 5.0;
                assert_eq!(row_max(&x), 5.0, "len {len} at {at}");
            }
        }
    }

    #[test]
    fn layer_norm_exact_case() {
        // x = [1, 2, 3]: μ = 2, σ² = 2/3, y = [−1, 0, 1]/sqrt(2/3 + ε).
        let eps = 1e-5;
        let y = layer_norm(&[1.0f64, 2.0, 3.0], 3, eps);
        let s = (2.0f64 / 3.0 + eps).sqrt();
        for (got, want) in y.iter().zip([-1.0 / s, 0.0, 1.0 / s]) {
            assert!((got - want).abs() < 1e-15, "{got} vs {want}");
        }
    }

    #[test]
    fn four_accumulator_sums_match_sequential_sums() {
        // Lengths 0..=9 cover empty input, pure tail, full chunks and chunk + tail (every partial
        // sum is exact in f64 here, so the accumulation order cannot change the result).
        for len in 0..=9usize {
            let a: Vec<f64> = (0..len).map(|i| 0.5 + i as f64).collect();
            let b: Vec<f64> = (0..len).map(|i| 2.0 - i as f64).collect();
            let want: f64 = a.iter().sum();
            let want2: f64 = a.iter().zip(&b).map(|(u, v)| u * v).sum();
            let want3: f64 = b.iter().sum();
            assert_eq!(sum_by(&a, |v| v), want, "len {len}");
            assert_eq!(sum2_by(&a, &b, |u, v| u * v), want2, "len {len}");
            let pair = sum2_pair_by(&a, &b, |u, v| u * v, |_, v| v);
            assert_eq!(pair, (want2, want3), "len {len}");
        }
    }

    #[test]
    fn softmax_bwd_matches_dense_jacobian() {
        // J = diag(y) − y yᵀ, dx = Jᵀ dy (J is symmetric).
        let x = [0.3f64, -1.2, 2.0, 0.7, -0.1];
        let dy = [1.0f64, -0.5, 0.25, 2.0, -1.5];
        let y = softmax(&x, 5);
        let dx = softmax_back(&y, &dy, 5);
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
            let y = layer_norm(x, 5, eps);
            y.iter().zip(&dy).map(|(a, b)| a * b).sum::<f64>()
        };
        let mut dx = [0.0f64; 5];
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
        assert!(layer_norm::<f32>(&[], 0, 1e-5).is_empty());
        assert!(softmax::<f32>(&[], 0).is_empty());
        assert!(softmax_back::<f32>(&[], &[], 0).is_empty());
        layer_norm_bwd::<f32>(&[], &[], 0, 1e-5, &mut []);
    }
}
