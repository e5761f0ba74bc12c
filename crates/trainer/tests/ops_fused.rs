//! Fused LayerNorm / softmax (`bmt_trainer::ops`) against their composite references, in value and in
//! gradient, plus f64 finite differences, extreme inputs and the autograd wiring.
//!
//! Tolerances use the f32 unit roundoff `u = 2⁻²⁴` and the standard bound for a sum of `n` terms,
//! `|fl(Σ a) − Σ a| ≤ (n − 1)·u·Σ|a|` (Higham, *Accuracy and Stability*, §4.2). The fused kernels
//! accumulate every row sum in f64 and round once, so their own error is ≈ 1 ulp; the composite
//! versions accumulate in f32. Each tolerance below is twice the composite's first-order error bound
//! (the derivation is next to each helper), so a wrong formula (errors of order 1) cannot pass while
//! legitimate f32 rounding always does.

use bmt_trainer::ops::{
    layer_norm_normalize, layer_norm_normalize_composite, softmax_last_dim,
    softmax_last_dim_composite,
};
use candle_core::{DType, Device, Tensor, Var, D};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// f32 unit roundoff.
const U: f64 = f32::EPSILON as f64 / 2.0;
const EPS: f64 = 1e-5;

type Op = fn(&Tensor) -> candle_core::Result<Tensor>;

fn ln_fused(x: &Tensor) -> candle_core::Result<Tensor> {
    layer_norm_normalize(x, EPS)
}
fn ln_comp(x: &Tensor) -> candle_core::Result<Tensor> {
    layer_norm_normalize_composite(x, EPS)
}

fn randn(rng: &mut impl Rng, shape: &[usize], scale: f64, offset: f64) -> Vec<f64> {
    let n: usize = shape.iter().product();
    (0..n)
        .map(|_| offset + scale * rng.sample::<f64, _>(StandardNormal))
        .collect()
}

fn tensor(v: &[f64], shape: &[usize], dtype: DType) -> Tensor {
    Tensor::from_vec(v.to_vec(), shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn to_vec(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Value `f(x)` and gradient of `L = Σ w ⊙ f(x)` with respect to `x`, through a `Var`.
fn value_and_grad(op: Op, x: &Tensor, w: &Tensor) -> (Vec<f64>, Vec<f64>) {
    let v = Var::from_tensor(x).unwrap();
    let y = op(v.as_tensor()).unwrap();
    let loss = (&y * w).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let g = grads.get(&v).expect("no gradient reached the input Var");
    (to_vec(&y), to_vec(g))
}

/// Splits a flat vector into rows of length `n`.
fn rows(v: &[f64], n: usize) -> impl Iterator<Item = &[f64]> {
    v.chunks_exact(n)
}

/// Per-row LayerNorm reference statistics in f64: (s = sqrt(σ² + ε), A = mean|x|/s, max|y|).
fn ln_row_stats(x: &[f64]) -> (f64, f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    let s = (var + EPS).sqrt();
    let a = x.iter().map(|v| v.abs()).sum::<f64>() / n / s;
    let ymax = x.iter().map(|v| ((v - mean) / s).abs()).fold(0.0, f64::max);
    (s, a, ymax)
}

/// Fused vs composite LayerNorm, f32, on `x` (flat, rows of length n) with upstream weights `w`.
///
/// Value bound: the composite mean has error |δμ| ≤ n·u·mean|x|; the centring, the variance (a sum
/// of n squares: (n+2)·u relative), the sqrt (halves it) and the division add ≤ (n/2 + 4)·u relative.
/// So |δy_i| ≤ (n+1)·u·A + (n/2+4)·u·|y_i| with A = mean|x|/s; tolerance = 2× that.
/// Gradient bound: every term of dx = (dy − mean(dy) − y·mean(dy⊙y))/s is at most
/// max|dy|·(2 + max|y|)²/s, each is formed through ≤ n+4 roundings, and the error of y enters with the
/// factor (1 + A); tolerance = 2·(n+4)·u·(1+A)·max|dy|·(2 + max|y|)²/s per row.
fn check_layer_norm(x: &[f64], shape: &[usize], w: &[f64]) {
    let n = *shape.last().unwrap();
    let (xt, wt) = (tensor(x, shape, DType::F32), tensor(w, shape, DType::F32));
    let (yf, gf) = value_and_grad(ln_fused, &xt, &wt);
    let (yc, gc) = value_and_grad(ln_comp, &xt, &wt);
    let x32 = to_vec(&xt);
    let w32 = to_vec(&wt);
    let nf = n as f64;
    for (r, xr) in rows(&x32, n).enumerate() {
        let (s, a, ymax) = ln_row_stats(xr);
        let wmax = w32[r * n..(r + 1) * n]
            .iter()
            .fold(0.0f64, |m, v| m.max(v.abs()));
        let gtol = 2.0 * (nf + 4.0) * U * (1.0 + a) * wmax * (2.0 + ymax).powi(2) / s;
        for i in r * n..(r + 1) * n {
            let vtol = 2.0 * ((nf + 1.0) * U * a + (nf / 2.0 + 4.0) * U * yc[i].abs());
            assert!(
                (yf[i] - yc[i]).abs() <= vtol,
                "shape {shape:?} value [{i}]: fused {} composite {} tol {vtol}",
                yf[i],
                yc[i]
            );
            assert!(
                (gf[i] - gc[i]).abs() <= gtol,
                "shape {shape:?} grad [{i}]: fused {} composite {} tol {gtol}",
                gf[i],
                gc[i]
            );
        }
    }
}

/// Fused vs composite softmax, f32.
///
/// Both compute e_i = exp(x_i − max) identically in f32; the composite sums n positive terms in f32
/// (relative error ≤ (n−1)·u) and divides (u), the fused sums in f64 and rounds once (u). So
/// |δy_i| ≤ (n+1)·u·y_i; tolerance 2·(n+4)·u·y_i (+ the smallest normal f32, for underflowed y).
/// Gradient: dx_i = y_i(dy_i − Σ dy_j y_j); the composite forms it from e_i, dy_i/S and the f32 sum
/// Σ dy_j e_j/S², each with relative error ≤ (n+4)·u, so |δdx_i| ≤ (n+4)·u·y_i(|dy_i| + Σ|dy_j|y_j);
/// tolerance 2× that.
fn check_softmax(x: &[f64], shape: &[usize], w: &[f64]) {
    let n = *shape.last().unwrap();
    let (xt, wt) = (tensor(x, shape, DType::F32), tensor(w, shape, DType::F32));
    let (yf, gf) = value_and_grad(softmax_last_dim, &xt, &wt);
    let (yc, gc) = value_and_grad(softmax_last_dim_composite, &xt, &wt);
    let w32 = to_vec(&wt);
    let nf = n as f64;
    let tiny = f32::MIN_POSITIVE as f64;
    for r in 0..yc.len() / n {
        let row = r * n..(r + 1) * n;
        let dot_abs: f64 = row.clone().map(|j| w32[j].abs() * yc[j]).sum();
        for i in row {
            let vtol = 2.0 * (nf + 4.0) * U * yc[i] + tiny;
            let gtol = 2.0 * (nf + 4.0) * U * yc[i] * (w32[i].abs() + dot_abs) + tiny;
            assert!(yf[i].is_finite() && gf[i].is_finite(), "non-finite at {i}");
            assert!(
                (yf[i] - yc[i]).abs() <= vtol,
                "shape {shape:?} value [{i}]: fused {} composite {} tol {vtol}",
                yf[i],
                yc[i]
            );
            assert!(
                (gf[i] - gc[i]).abs() <= gtol,
                "shape {shape:?} grad [{i}]: fused {} composite {} tol {gtol}",
                gf[i],
                gc[i]
            );
        }
    }
}

#[test]
fn layer_norm_fused_matches_composite_on_model_shapes() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for shape in [
        &[64, 17, 64][..],
        &[2, 3, 5],
        &[5, 1],
        &[7, 2],
        &[2, 256, 256],
    ] {
        let x = randn(&mut rng, shape, 1.5, 0.3);
        let w = randn(&mut rng, shape, 1.0, 0.0);
        check_layer_norm(&x, shape, &w);
    }
}

#[test]
fn softmax_fused_matches_composite_on_model_shapes() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    for shape in [
        &[64, 4, 17, 17][..],
        &[2, 3, 5],
        &[3, 1],
        &[1, 1, 1],
        &[2, 2, 256, 256],
    ] {
        let x = randn(&mut rng, shape, 3.0, 0.0);
        let w = randn(&mut rng, shape, 1.0, 0.0);
        check_softmax(&x, shape, &w);
    }
}

#[test]
fn softmax_row_of_length_one_is_one_with_zero_gradient() {
    let x = tensor(&[-3.0, 0.0, 1e4], &[3, 1], DType::F32);
    let w = tensor(&[1.0, 2.0, 3.0], &[3, 1], DType::F32);
    let (y, g) = value_and_grad(softmax_last_dim, &x, &w);
    assert_eq!(y, vec![1.0; 3]);
    assert_eq!(g, vec![0.0; 3]);
}

#[test]
fn softmax_of_scores_of_size_1e4_does_not_overflow() {
    // A row with 1e4, −1e4 and 1e4 − 1: exactly [1/(1+e⁻¹), 0, e⁻¹/(1+e⁻¹)] (e^(−2e4) underflows to 0).
    let x = tensor(&[1e4, -1e4, 1e4 - 1.0], &[1, 3], DType::F32);
    let y = to_vec(&softmax_last_dim(&x).unwrap());
    let e = (-1.0f64).exp();
    let want = [1.0 / (1.0 + e), 0.0, e / (1.0 + e)];
    for (got, want) in y.iter().zip(want) {
        assert!((got - want).abs() <= 4.0 * U, "{got} vs {want}");
    }
    // Random ±1e4 scores with jitter, on the attention shape: finite, rows sum to 1, match composite.
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let shape = [8, 4, 17, 17];
    let x: Vec<f64> = randn(&mut rng, &shape, 1.0, 0.0)
        .into_iter()
        .map(|j| if j > 0.0 { 1e4 + j } else { -1e4 + j })
        .collect();
    let w = randn(&mut rng, &shape, 1.0, 0.0);
    check_softmax(&x, &shape, &w);
    let y = to_vec(&softmax_last_dim(&tensor(&x, &shape, DType::F32)).unwrap());
    for row in rows(&y, 17) {
        // Σ y over n terms each carrying ≤ 1 ulp: |Σ − 1| ≤ (n + 1)·u.
        assert!((row.iter().sum::<f64>() - 1.0).abs() <= 18.0 * U);
    }
}

#[test]
fn layer_norm_of_a_constant_row_is_zero_with_finite_gradient() {
    // σ² = 0 exactly, so y = 0 and dx = (dy − mean(dy))/sqrt(ε) (the y-term vanishes).
    for c in [3.0, -1e4, 1e4] {
        let x = tensor(&[c; 8], &[1, 8], DType::F32);
        let wv = [1.0, -2.0, 0.5, 4.0, 0.0, 1.5, -0.25, 3.0];
        let w = tensor(&wv, &[1, 8], DType::F32);
        let (y, g) = value_and_grad(ln_fused, &x, &w);
        assert_eq!(y, vec![0.0; 8], "constant {c}");
        let mean_w = wv.iter().sum::<f64>() / 8.0;
        for (gi, wi) in g.iter().zip(wv) {
            let want = (wi - mean_w) / EPS.sqrt();
            assert!(gi.is_finite());
            assert!(
                (gi - want).abs() <= 4.0 * U * want.abs().max(1.0),
                "{gi} vs {want}"
            );
        }
    }
}

#[test]
fn layer_norm_large_magnitudes() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let shape = [16, 17, 64];
    // Large scale: the bound of check_layer_norm is scale-free (A and max|y| do not change).
    let x = randn(&mut rng, &shape, 1e4, 0.0);
    let w = randn(&mut rng, &shape, 1.0, 0.0);
    check_layer_norm(&x, &shape, &w);
    // Large offset (μ ≈ 1e4, σ ≈ 1): the f32 composite loses ≈ n·u·1e4 ≈ 0.04 to cancellation; the
    // fused kernel sums in f64 and must match the f64 composite on the same (f32-rounded) input to a
    // few ulps: |δy| ≤ 4·u·(1 + |y|), |δdx| ≤ 8·u·(1 + |dx|).
    let x = randn(&mut rng, &shape, 1.0, 1e4);
    let x32 = tensor(&x, &shape, DType::F32);
    let x64 = x32.to_dtype(DType::F64).unwrap();
    let wt = tensor(&w, &shape, DType::F32);
    let (yf, gf) = value_and_grad(ln_fused, &x32, &wt);
    let (yr, gr) = value_and_grad(ln_comp, &x64, &wt.to_dtype(DType::F64).unwrap());
    for i in 0..yf.len() {
        assert!(
            (yf[i] - yr[i]).abs() <= 4.0 * U * (1.0 + yr[i].abs()),
            "y[{i}]"
        );
        assert!(
            (gf[i] - gr[i]).abs() <= 8.0 * U * (1.0 + gr[i].abs()),
            "dx[{i}]"
        );
    }
}

/// Central finite difference of `L(x) = Σ w ⊙ f(x)` in f64 against the fused gradient.
///
/// Step h = 1e-5. Truncation error h²/6·|∂³L| with |∂³L| ≲ Σ|w|·n/s³ ≈ 30·5 for these inputs (s ≈ 1)
/// gives ≈ 3e-9; rounding gives ≈ 2·u₆₄·Σ|w⊙f|/(2h) ≈ 1.1e-16·30·3/1e-5 ≈ 1e-9. Tolerance 1e-7 is
/// ≥ 25× their sum and still 6+ orders below a gradient of order 1.
fn check_finite_difference(op: Op, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let shape = [2, 3, 5];
    let x = randn(&mut rng, &shape, 1.0, 0.0);
    let w = tensor(&randn(&mut rng, &shape, 1.0, 0.0), &shape, DType::F64);
    let (_, g) = value_and_grad(op, &tensor(&x, &shape, DType::F64), &w);
    let loss = |xs: &[f64]| -> f64 {
        let y = op(&tensor(xs, &shape, DType::F64)).unwrap();
        (y * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let h = 1e-5;
    for j in 0..x.len() {
        let (mut xp, mut xm) = (x.clone(), x.clone());
        xp[j] += h;
        xm[j] -= h;
        let fd = (loss(&xp) - loss(&xm)) / (2.0 * h);
        assert!((g[j] - fd).abs() < 1e-7, "[{j}] analytic {} fd {fd}", g[j]);
    }
}

#[test]
fn layer_norm_f64_gradient_matches_finite_difference() {
    check_finite_difference(ln_fused, 5);
}

#[test]
fn softmax_f64_gradient_matches_finite_difference() {
    check_finite_difference(softmax_last_dim, 6);
}

#[test]
fn gradients_reach_an_upstream_var() {
    // z = 2v + 1 → f(z) → L = Σ w ⊙ f(z). With apply_op1_no_bwd the output would not be tracked and
    // the GradStore would hold nothing for v; here ∂L/∂v = 2·∂L/∂z must equal the composite's.
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let shape = [4, 6, 9];
    let x = tensor(&randn(&mut rng, &shape, 1.0, 0.0), &shape, DType::F32);
    let w = tensor(&randn(&mut rng, &shape, 1.0, 0.0), &shape, DType::F32);
    for (fused, comp) in [
        (ln_fused as Op, ln_comp as Op),
        (softmax_last_dim, softmax_last_dim_composite),
    ] {
        let grad_v = |op: Op| {
            let v = Var::from_tensor(&x).unwrap();
            let z = v.as_tensor().affine(2.0, 1.0).unwrap();
            let y = op(&z).unwrap();
            assert!(y.track_op(), "output is not recorded for backprop");
            let loss = (y * &w).unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            to_vec(grads.get(&v).expect("no gradient reached the upstream Var"))
        };
        let (gf, gc) = (grad_v(fused), grad_v(comp));
        let scale = gc.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        assert!(
            gf.iter().any(|v| v.abs() > 1e-3),
            "gradient is identically zero"
        );
        for (a, b) in gf.iter().zip(&gc) {
            // Row length 9: 2·(n+4)·u·(2+max|y|)²·(1+A) ≈ 1e-4 relative to the largest entry.
            assert!((a - b).abs() <= 1e-4 * scale, "{a} vs {b}");
        }
    }
}

#[test]
fn non_contiguous_input_matches_contiguous() {
    // A transposed view (strides not row-major): the result must equal the op on a contiguous copy,
    // and the gradient must reach the underlying Var in the transposed layout.
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let base = tensor(
        &randn(&mut rng, &[17, 8, 16], 1.0, 0.0),
        &[17, 8, 16],
        DType::F32,
    );
    let w = tensor(
        &randn(&mut rng, &[8, 17, 16], 1.0, 0.0),
        &[8, 17, 16],
        DType::F32,
    );
    for op in [ln_fused as Op, softmax_last_dim] {
        let v = Var::from_tensor(&base).unwrap();
        let view = v.as_tensor().transpose(0, 1).unwrap();
        assert!(!view.is_contiguous());
        let y = op(&view).unwrap();
        let y_ref = op(&view.contiguous().unwrap()).unwrap();
        assert_eq!(to_vec(&y), to_vec(&y_ref));
        let grads = (y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let g = grads.get(&v).unwrap();
        let (_, g_ref) = value_and_grad(op, &view.contiguous().unwrap().detach(), &w);
        assert_eq!(to_vec(&g.transpose(0, 1).unwrap()), g_ref);
    }
}

#[test]
fn fused_forward_matches_candle_nn_fast_kernels() {
    // An independent implementation of the forward pass: candle-nn's fast (non-differentiable) ops.
    // Both round once from a higher-precision or identical computation: allow 2·(n+4)·u relative.
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let x = tensor(
        &randn(&mut rng, &[64, 17, 64], 2.0, 0.5),
        &[64, 17, 64],
        DType::F32,
    );
    let ones = Tensor::ones(64, DType::F32, &Device::Cpu).unwrap();
    let zeros = Tensor::zeros(64, DType::F32, &Device::Cpu).unwrap();
    let pairs = [
        (
            to_vec(&layer_norm_normalize(&x, EPS).unwrap()),
            to_vec(&candle_nn::ops::layer_norm(&x, &ones, &zeros, EPS as f32).unwrap()),
        ),
        (
            to_vec(&softmax_last_dim(&x).unwrap()),
            to_vec(&candle_nn::ops::softmax_last_dim(&x).unwrap()),
        ),
    ];
    let tol = 2.0 * 68.0 * U;
    for (fused, fast) in pairs {
        for (a, b) in fused.iter().zip(&fast) {
            assert!((a - b).abs() <= tol * (1.0 + b.abs()), "{a} vs {b}");
        }
    }
}

#[test]
fn unsupported_dtype_falls_back_to_composite_and_trains() {
    // bf16 has no fused kernel: the public functions must return exactly the composite result and
    // still deliver a gradient.
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let x = tensor(&randn(&mut rng, &[3, 8], 1.0, 0.0), &[3, 8], DType::BF16);
    for (fused, comp) in [
        (ln_fused as Op, ln_comp as Op),
        (softmax_last_dim, softmax_last_dim_composite),
    ] {
        assert_eq!(to_vec(&fused(&x).unwrap()), to_vec(&comp(&x).unwrap()));
        let v = Var::from_tensor(&x).unwrap();
        let loss = fused(v.as_tensor())
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap();
        assert!(loss.backward().unwrap().get(&v).is_some());
    }
}

#[test]
fn outputs_keep_dtype_and_shape() {
    for dtype in [DType::F32, DType::F64] {
        let x = Tensor::zeros((2, 3, 4), dtype, &Device::Cpu).unwrap();
        for op in [ln_fused as Op, softmax_last_dim] {
            let y = op(&x).unwrap();
            assert_eq!((y.dtype(), y.dims()), (dtype, &[2usize, 3, 4][..]));
        }
        // Softmax of a zero row is uniform.
        let y = to_vec(&softmax_last_dim(&x).unwrap());
        assert!(y.iter().all(|v| (v - 0.25).abs() < 1e-7));
    }
    // Empty last dimension: empty output, no panic.
    let e = Tensor::zeros((3, 0), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(layer_norm_normalize(&e, EPS).unwrap().dims(), &[3, 0]);
    assert_eq!(softmax_last_dim(&e).unwrap().dims(), &[3, 0]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Invariants of the fused f32 outputs (MATH.md): LayerNorm rows have mean 0 and
    /// ‖y‖² = n·σ²/(σ² + ε); softmax rows are non-negative and sum to 1. Each fused element carries
    /// ≈ 1 ulp (f64 accumulation, one rounding), so |Σ y| ≤ 2·u·Σ|y| + 1e-6·... and the squared norm
    /// has relative error ≤ (n + 2)·u; tolerances are 4× those.
    #[test]
    fn fused_row_invariants(seed in 0u64..1_000_000, rows_ in 1usize..6, n in 2usize..48,
                            scale in prop::sample::select(vec![1e-2, 1.0, 1e3])) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let x = randn(&mut rng, &[rows_, n], scale, 0.0);
        let xt = tensor(&x, &[rows_, n], DType::F32);
        let x32 = to_vec(&xt);
        let y = to_vec(&layer_norm_normalize(&xt, EPS).unwrap());
        let p = to_vec(&softmax_last_dim(&xt).unwrap());
        let nf = n as f64;
        for ((xr, yr), pr) in rows(&x32, n).zip(rows(&y, n)).zip(rows(&p, n)) {
            let mean = xr.iter().sum::<f64>() / nf;
            let var = xr.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / nf;
            let abs_sum: f64 = yr.iter().map(|v| v.abs()).sum();
            prop_assert!(yr.iter().sum::<f64>().abs() <= 8.0 * U * abs_sum + 1e-12);
            let norm2: f64 = yr.iter().map(|v| v * v).sum();
            let want = nf * var / (var + EPS);
            prop_assert!((norm2 - want).abs() <= 4.0 * (nf + 2.0) * U * want + 1e-12,
                "‖y‖² {} vs {}", norm2, want);
            prop_assert!(pr.iter().all(|v| *v >= 0.0));
            prop_assert!((pr.iter().sum::<f64>() - 1.0).abs() <= 4.0 * (nf + 1.0) * U);
        }
    }

    /// Fused equals composite (value and gradient) on random shapes and scales, with the derived
    /// tolerances of `check_layer_norm` and `check_softmax`.
    #[test]
    fn fused_matches_composite_random(seed in 0u64..1_000_000, rows_ in 1usize..5, n in 1usize..40,
                                      scale in prop::sample::select(vec![1e-2, 1.0, 30.0])) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let shape = [rows_, n];
        let x = randn(&mut rng, &shape, scale, 0.0);
        let w = randn(&mut rng, &shape, 1.0, 0.0);
        check_layer_norm(&x, &shape, &w);
        check_softmax(&x, &shape, &w);
    }
}

#[test]
fn composite_is_mean_zero_along_last_dim() {
    // Guards the reference itself: the composite reduces over the last dimension, not another one.
    let x = Tensor::arange(0f32, 24., &Device::Cpu)
        .unwrap()
        .reshape((2, 3, 4))
        .unwrap();
    let y = layer_norm_normalize_composite(&x, EPS).unwrap();
    let m = to_vec(&y.mean(D::Minus1).unwrap());
    assert!(m.iter().all(|v| v.abs() < 1e-6));
    let s = to_vec(
        &softmax_last_dim_composite(&x)
            .unwrap()
            .sum(D::Minus1)
            .unwrap(),
    );
    assert!(s.iter().all(|v| (v - 1.0).abs() < 1e-6));
}
