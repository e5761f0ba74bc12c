//! GELU in its tanh approximation, fused: one pass forward, one pass backward.
//!
//! candle's `Tensor::gelu` is differentiable, but its backward is a chain of tensor ops with two
//! `powf` calls and a second `tanh`; on W1 those elementwise passes cost more than the MLP's matmuls
//! (profiled: `tanhf`/`expm1f`/`powf` took about a quarter of a training step).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

use super::kernels::{self, MulAdd, Real, RowKernel1, RowKernel2};
use super::{check_rank, fused_supported};

const FWD_NAME: &str = "fused-gelu-tanh";
const BWD_NAME: &str = "fused-gelu-tanh-bwd";

/// `√(2/π)`.
const C: f64 = 0.797_884_560_802_865_4;
/// The cubic coefficient of the tanh approximation.
const A: f64 = 0.044_715;

/// GELU, tanh approximation: `y = ½x(1 + tanh(√(2/π)(x + 0.044715x³)))` (the same formula as
/// candle's `Tensor::gelu` and PyTorch's `gelu(approximate="tanh")`). Differentiable, with the fused
/// backward `dx = dy·(½(1 + t) + ½x(1 − t²)·√(2/π)(1 + 3·0.044715x²))`, `t` the tanh above.
///
/// Fused on the CPU for `f32`/`f64`; elsewhere this is [`gelu_composite`].
pub fn gelu(x: &Tensor) -> candle_core::Result<Tensor> {
    check_rank(x, "gelu")?;
    if !fused_supported(x) {
        return x.gelu();
    }
    x.contiguous()?.apply_op1(GeluFwd)
}

/// Reference version of [`gelu`]: candle's differentiable `Tensor::gelu`.
pub fn gelu_composite(x: &Tensor) -> candle_core::Result<Tensor> {
    x.gelu()
}

/// `tanh(u)` from one exponential: `sign(u)·(1 − 2/(e^{2|u|} + 1))`. Exact at ±∞ (the exponential
/// overflows to ∞ and the fraction to 0); near 0 its absolute error is a few ulps of 1, which GELU
/// multiplies by `x/2`.
#[inline(always)]
fn tanh_fast<T: Real, M: MulAdd>(u: T) -> T {
    let two = T::from_f64(2.0);
    let one = T::from_f64(1.0);
    let a = if u < T::zero() { T::zero() - u } else { u };
    let t = one - two / ((a + a).exp_k::<M>() + one);
    if u < T::zero() {
        T::zero() - t
    } else {
        t
    }
}

#[inline(always)]
fn inner<T: Real>(x: T) -> T {
    T::from_f64(C) * (x + T::from_f64(A) * x * x * x)
}

/// `y = ½x(1 + tanh(√(2/π)(x + 0.044715x³)))` elementwise into `y`.
#[inline(always)]
fn gelu_fwd<T: Real, M: MulAdd>(x: &[T], y: &mut [T]) {
    let half = T::from_f64(0.5);
    let one = T::from_f64(1.0);
    for (o, &v) in y.iter_mut().zip(x) {
        *o = half * v * (one + tanh_fast::<T, M>(inner(v)));
    }
}

/// `dx = dy·(½(1 + t) + ½x(1 − t²)·√(2/π)(1 + 3·0.044715x²))` elementwise into `dx`.
#[inline(always)]
fn gelu_bwd<T: Real, M: MulAdd>(x: &[T], dy: &[T], dx: &mut [T]) {
    let half = T::from_f64(0.5);
    let one = T::from_f64(1.0);
    let c = T::from_f64(C);
    let a3 = T::from_f64(3.0 * A);
    for ((o, &v), &g) in dx.iter_mut().zip(x).zip(dy) {
        let t = tanh_fast::<T, M>(inner(v));
        *o = g * (half * (one + t) + half * v * (one - t * t) * c * (one + a3 * v * v));
    }
}

pub(super) struct GeluFwd;

impl RowKernel1 for GeluFwd {
    #[inline(always)]
    fn apply<T: Real, M: MulAdd>(&self, x: &[T], _row: usize, out: &mut [T]) {
        gelu_fwd::<T, M>(x, out)
    }
}

impl CustomOp1 for GeluFwd {
    fn name(&self) -> &'static str {
        FWD_NAME
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        kernels::run_kernel1(FWD_NAME, self, s, l)
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(x.apply_op2(&dy.contiguous()?, GeluBwd)?))
    }
}

/// Backward op over `(x, dy)` returning `dx`.
pub(super) struct GeluBwd;

impl RowKernel2 for GeluBwd {
    #[inline(always)]
    fn apply<T: Real, M: MulAdd>(&self, x: &[T], dy: &[T], _row: usize, out: &mut [T]) {
        gelu_bwd::<T, M>(x, dy, out)
    }
}

impl CustomOp2 for GeluBwd {
    fn name(&self) -> &'static str {
        BWD_NAME
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sg: &CpuStorage,
        lg: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        kernels::run_kernel2(BWD_NAME, self, sx, lx, sg, lg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Values and gradients against candle's composite GELU on a grid that covers the saturated
    /// tails (|x| up to 12) and the region around 0. Both compute the same formula in f32; the
    /// one-exponential tanh differs from libm's tanhf by a few ulps of 1, and GELU and its derivative
    /// are Lipschitz with constants ≤ 1.2 there, so |Δy| ≤ 1e-6·(1 + |x|) and the same for dx.
    #[test]
    fn matches_composite_in_value_and_gradient() {
        let xs: Vec<f32> = (-1200..=1200).map(|i| i as f32 * 0.01).collect();
        let x = Var::from_tensor(&Tensor::new(xs.as_slice(), &Device::Cpu).unwrap()).unwrap();
        let w: Vec<f32> = (0..xs.len())
            .map(|i| ((i * 7) % 13) as f32 / 13.0 - 0.5)
            .collect();
        let w = Tensor::new(w.as_slice(), &Device::Cpu).unwrap();
        let yf = gelu(x.as_tensor()).unwrap();
        let yc = gelu_composite(x.as_tensor()).unwrap();
        let gf = (&yf * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gc = (&yc * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let (yf, yc) = (yf.to_vec1::<f32>().unwrap(), yc.to_vec1::<f32>().unwrap());
        let (df, dc) = (
            gf.get(&x).unwrap().to_vec1::<f32>().unwrap(),
            gc.get(&x).unwrap().to_vec1::<f32>().unwrap(),
        );
        for i in 0..xs.len() {
            let tol = 1e-6 * (1.0 + xs[i].abs());
            assert!(
                (yf[i] - yc[i]).abs() <= tol,
                "y at {}: {} vs {}",
                xs[i],
                yf[i],
                yc[i]
            );
            assert!(
                (df[i] - dc[i]).abs() <= tol,
                "dx at {}: {} vs {}",
                xs[i],
                df[i],
                dc[i]
            );
        }
    }

    /// f64 gradient against a central finite difference, h = 1e-5: truncation error ≤ h²·|y'''|/6
    /// ≈ 1e-10, rounding ≤ 1e-16/h ≈ 1e-11.
    #[test]
    fn f64_gradient_matches_finite_difference() {
        let xs = [-5.0f64, -1.3, -0.2, 0.0, 1e-4, 0.7, 2.5, 9.0];
        let x = Var::from_tensor(&Tensor::new(&xs, &Device::Cpu).unwrap()).unwrap();
        let g = gelu(x.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let d = g.get(&x).unwrap().to_vec1::<f64>().unwrap();
        let f = |v: f64| 0.5 * v * (1.0 + (C * (v + A * v * v * v)).tanh());
        for (i, &v) in xs.iter().enumerate() {
            let h = 1e-5;
            let fd = (f(v + h) - f(v - h)) / (2.0 * h);
            assert!((d[i] - fd).abs() < 1e-9, "at {v}: {} vs {fd}", d[i]);
        }
    }

    #[test]
    fn extreme_inputs_stay_finite() {
        let x = Tensor::new(&[-1e30f32, -100.0, 100.0, 1e30], &Device::Cpu).unwrap();
        let y = gelu(&x).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(y[1], -0.0);
        assert_eq!(y[2], 100.0);
        assert!(y.iter().all(|v| v.is_finite()), "{y:?}");
        assert_eq!((y[0], y[3]), (-0.0, 1e30));
    }
}
