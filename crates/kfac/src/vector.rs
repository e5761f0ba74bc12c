//! The level-1 kernels of the host path (CG-FAC's inner products and vector updates, the KL clip's
//! `⟨U, ∇W̄⟩`, the finiteness checks) on `f32` buffers, with inner products accumulated in `f64`.
//!
//! Each kernel has one body, compiled twice: with `#[target_feature(enable = "avx2,fma")]`, chosen
//! when `is_x86_feature_detected!` reports both (std caches the detection), and for the build's
//! baseline target otherwise. The bodies keep eight independent partial sums and no implicit
//! fused multiply-add (Rust never contracts `a * b + c`), so both copies round every operation the
//! same way and return bit-identical results; the AVX2 copy only does it four or eight lanes at a
//! time. Compiled for the x86-64 baseline alone, these passes took 37 % of a CG-FAC solve of W1's
//! layers against the GEMMs' 52 % (`perf`, docs/BENCHMARKS.md). Every kernel works on the common
//! length of its arguments; the callers ([`crate::host`]'s `CgVector` impl) check that lengths
//! agree first.

/// Partial sums per inner product: the lanes the compiler vectorises over.
const LANES: usize = 8;

#[inline(always)]
fn dot_body(x: &[f32], y: &[f32]) -> f64 {
    let n = x.len().min(y.len());
    let (x, y) = (&x[..n], &y[..n]);
    let mut acc = [0.0f64; LANES];
    let (xc, yc) = (x.chunks_exact(LANES), y.chunks_exact(LANES));
    let tail: f64 = xc
        .remainder()
        .iter()
        .zip(yc.remainder())
        .map(|(&a, &b)| f64::from(a) * f64::from(b))
        .sum();
    for (a, b) in xc.zip(yc) {
        for l in 0..LANES {
            acc[l] += f64::from(a[l]) * f64::from(b[l]);
        }
    }
    acc.iter().sum::<f64>() + tail
}

#[inline(always)]
fn all_finite_body(x: &[f32]) -> bool {
    // `0·x` is NaN exactly for NaN and ±∞, and a sum of zeros stays 0: a branch-free pass.
    let mut acc = [0.0f32; LANES];
    let c = x.chunks_exact(LANES);
    let tail = c.remainder().iter().fold(0.0f32, |s, &v| s + 0.0 * v);
    for a in c {
        for l in 0..LANES {
            acc[l] += 0.0 * a[l];
        }
    }
    (acc.iter().sum::<f32>() + tail) == 0.0
}

#[inline(always)]
fn axpy_body(y: &mut [f32], a: f32, x: &[f32]) {
    for (s, &v) in y.iter_mut().zip(x) {
        *s += a * v;
    }
}

#[inline(always)]
fn xpby_body(y: &mut [f32], b: f32, x: &[f32]) {
    for (s, &v) in y.iter_mut().zip(x) {
        *s = v + b * *s;
    }
}

#[inline(always)]
fn axpy_square_norm_body(y: &mut [f32], a: f32, x: &[f32]) -> f64 {
    let n = y.len().min(x.len());
    let (y, x) = (&mut y[..n], &x[..n]);
    let mut acc = [0.0f64; LANES];
    let mut yc = y.chunks_exact_mut(LANES);
    let mut xc = x.chunks_exact(LANES);
    for (s, v) in (&mut yc).zip(&mut xc) {
        for l in 0..LANES {
            s[l] += a * v[l];
            acc[l] += f64::from(s[l]) * f64::from(s[l]);
        }
    }
    let mut tail = 0.0f64;
    for (s, &v) in yc.into_remainder().iter_mut().zip(xc.remainder()) {
        *s += a * v;
        tail += f64::from(*s) * f64::from(*s);
    }
    acc.iter().sum::<f64>() + tail
}

#[cfg(target_arch = "x86_64")]
fn avx2_fma() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// Defines the public kernel `$name`, its AVX2 + FMA copy `$simd` and the dispatch between them.
macro_rules! dispatched {
    ($(#[$doc:meta])* $name:ident, $simd:ident, $body:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        $(#[$doc])*
        pub(crate) fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            if avx2_fma() {
                // SAFETY: the CPU supports AVX2 and FMA (checked just above).
                return unsafe { $simd($($arg),*) };
            }
            $body($($arg),*)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $simd($($arg: $ty),*) -> $ret {
            $body($($arg),*)
        }
    };
}

dispatched!(
    /// `Σ xᵢyᵢ` over the common length, accumulated in `f64` in eight interleaved partial sums.
    dot, dot_avx2_fma, dot_body, (x: &[f32], y: &[f32]) -> f64
);
dispatched!(
    /// Whether every value is finite.
    all_finite, all_finite_avx2_fma, all_finite_body, (x: &[f32]) -> bool
);
dispatched!(
    /// `y ← y + a·x`.
    axpy, axpy_avx2_fma, axpy_body, (y: &mut [f32], a: f32, x: &[f32]) -> ()
);
dispatched!(
    /// `y ← x + b·y`.
    xpby, xpby_avx2_fma, xpby_body, (y: &mut [f32], b: f32, x: &[f32]) -> ()
);
dispatched!(
    /// `y ← y + a·x`, returning `‖y‖²` of the result (in `f64`, as [`dot`]`(y, y)` sums it) from
    /// the same pass: CG's residual update and its stopping-rule norm.
    axpy_square_norm, axpy_square_norm_avx2_fma, axpy_square_norm_body,
    (y: &mut [f32], a: f32, x: &[f32]) -> f64
);

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let h = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed);
                (h % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// Both compiled copies against a plain `f64` reference and against each other, bit for bit,
    /// on lengths around the lane count (the tails).
    #[test]
    fn kernels_agree_with_references_and_across_dispatch() {
        for n in [0usize, 1, 7, 8, 9, 15, 16, 17, 64 * 65 + 3] {
            let (x, y) = (values(n, 1), values(n, 2));
            let exact: f64 = x
                .iter()
                .zip(&y)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum();
            let d = dot(&x, &y);
            assert!(
                (d - exact).abs() <= 1e-12 * (1.0 + exact.abs()),
                "dot n={n}"
            );
            assert_eq!(
                d.to_bits(),
                dot_body(&x, &y).to_bits(),
                "dot dispatch n={n}"
            );

            let a = 0.37f32;
            let mut y1 = y.clone();
            axpy(&mut y1, a, &x);
            let mut y2 = y.clone();
            axpy_body(&mut y2, a, &x);
            assert_eq!(y1, y2, "axpy n={n}");
            for ((&r, &yi), &xi) in y1.iter().zip(&y).zip(&x) {
                assert_eq!(r, yi + a * xi);
            }

            let mut y3 = y.clone();
            let norm = axpy_square_norm(&mut y3, a, &x);
            assert_eq!(y3, y1, "axpy_square_norm's update n={n}");
            assert_eq!(norm.to_bits(), dot(&y1, &y1).to_bits(), "its norm n={n}");

            let mut y4 = y.clone();
            xpby(&mut y4, a, &x);
            for ((&r, &yi), &xi) in y4.iter().zip(&y).zip(&x) {
                assert_eq!(r, xi + a * yi);
            }

            assert!(all_finite(&x));
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                if n == 0 {
                    continue;
                }
                // In the first lane block, the middle and the tail.
                for at in [0, n / 2, n - 1] {
                    let mut z = x.clone();
                    z[at] = bad;
                    assert!(!all_finite(&z), "n={n} {bad} at {at}");
                    assert!(!all_finite_body(&z), "n={n} {bad} at {at}");
                }
            }
        }
    }
}
