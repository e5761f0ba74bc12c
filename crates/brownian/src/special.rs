//! Kummer's confluent hypergeometric function ₁F₁, needed for the exact step factor of the
//! geodesic random walk (MATH §3).

use crate::error::{BrownianError, Result};

/// `₁F₁(a; b; z) = Σ_k (a)_k / (b)_k · z^k / k!` summed by its power series.
///
/// Meant for the moderate arguments of this crate (`|z|` up to a few units). The series alternates
/// for `z < 0`; the sum is refused when the largest term exceeds `10⁶ · max(|result|, 1)`, i.e. when
/// neither the relative nor the absolute error can be kept near 1e-10, and when `b` is a
/// non-positive integer (the series is undefined).
pub fn hyp1f1(a: f64, b: f64, z: f64) -> Result<f64> {
    for (name, v) in [("a", a), ("b", b), ("z", z)] {
        crate::error::check_param(name, v, true, "a finite number")?;
    }
    if b <= 0.0 && b.fract() == 0.0 {
        return Err(BrownianError::InvalidParameter {
            name: "b",
            value: b,
            expected: "b not a non-positive integer",
        });
    }
    let (mut term, mut sum, mut biggest) = (1.0f64, 1.0f64, 1.0f64);
    for k in 0..100_000u32 {
        let kf = k as f64;
        term *= (a + kf) / (b + kf) * z / (kf + 1.0);
        sum += term;
        biggest = biggest.max(term.abs());
        // Past the peak the terms shrink geometrically; stop once they no longer change the sum.
        if term.abs() <= 1e-17 * sum.abs() && kf > z.abs() - b {
            if biggest > 1e6 * sum.abs().max(1.0) {
                break;
            }
            return Ok(sum);
        }
        if term == 0.0 {
            return Ok(sum);
        }
    }
    Err(BrownianError::HypergeometricPrecision { a, b, z })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_forms() {
        for &z in &[-3.0, -0.5, -1e-3, 0.0, 0.2, 2.0] {
            let e = f64::exp(z);
            // ₁F₁(a; a; z) = e^z.
            assert!((hyp1f1(2.5, 2.5, z).unwrap() - e).abs() < 1e-14 * e.max(1.0));
            // ₁F₁(1; 2; z) = (e^z − 1)/z.
            if z != 0.0 {
                assert!((hyp1f1(1.0, 2.0, z).unwrap() - z.exp_m1() / z).abs() < 1e-14);
            }
            // ₁F₁(3/2; 1/2; −x) = e^(−x)(1 − 2x) (Kummer's transformation of a terminating series).
            let x = -z;
            let want = (-x).exp() * (1.0 - 2.0 * x);
            assert!((hyp1f1(1.5, 0.5, z).unwrap() - want).abs() < 1e-13 * (1.0 + want.abs()));
        }
        // ₁F₁(−n; b; z) terminates: ₁F₁(−2; 1; z) = 1 − 2z + z²/2 (Laguerre L₂).
        assert!((hyp1f1(-2.0, 1.0, 3.0).unwrap() - (1.0 - 6.0 + 4.5)).abs() < 1e-14);
    }

    #[test]
    fn refuses_what_it_cannot_compute() {
        assert!(matches!(
            hyp1f1(1.0, -2.0, 0.5),
            Err(BrownianError::InvalidParameter { .. })
        ));
        assert!(matches!(
            hyp1f1(40.0, 0.5, -30.0),
            Err(BrownianError::HypergeometricPrecision { .. })
        ));
    }
}
