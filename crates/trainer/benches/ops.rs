//! Fused vs composite attention (q = k = v = x), LayerNorm (normalisation part) and softmax,
//! forward and forward+backward, at the model shapes: ViT activations (64, 17, 64) and scores
//! (64, 4, 17, 17); GPT activations (16, 256, 256) and scores (16, 8, 256, 256). f32, CPU.
//!
//! Run: `cargo bench -p bmt-trainer --bench ops` (repeats: `OPS_BENCH_REPS`, default 21; the
//! thread count is candle's, from `CANDLE_NUM_THREADS`/`RAYON_NUM_THREADS`). Prints a Markdown table
//! of median wall times and the speed-up composite/fused. "fwd+bwd" is `y = op(x)` on a `Var` followed
//! by `y.backward()` (seed = ones), so it measures the op's two passes plus candle's graph walk.

use std::time::Instant;

use bmt_trainer::ops::{
    attention, attention_composite, layer_norm_normalize, layer_norm_normalize_composite,
    softmax_last_dim, softmax_last_dim_composite,
};
use candle_core::{DType, Device, Tensor, Var};

type Op = fn(&Tensor) -> candle_core::Result<Tensor>;

const EPS: f64 = 1e-5;

fn ln_fused(x: &Tensor) -> candle_core::Result<Tensor> {
    layer_norm_normalize(x, EPS)
}
fn ln_comp(x: &Tensor) -> candle_core::Result<Tensor> {
    layer_norm_normalize_composite(x, EPS)
}

/// W1's attention (4 heads of 16, bidirectional) with `q = k = v = x`.
fn att_vit(x: &Tensor) -> candle_core::Result<Tensor> {
    attention(x, x, x, 4, false)
}
fn att_vit_comp(x: &Tensor) -> candle_core::Result<Tensor> {
    Ok(attention_composite(x, x, x, 4, false)?.0)
}
/// W2's attention (8 heads of 32, causal) with `q = k = v = x`.
fn att_gpt(x: &Tensor) -> candle_core::Result<Tensor> {
    attention(x, x, x, 8, true)
}
fn att_gpt_comp(x: &Tensor) -> candle_core::Result<Tensor> {
    Ok(attention_composite(x, x, x, 8, true)?.0)
}

/// Median wall time in milliseconds of `reps` runs of `f` (after one warm-up run).
fn median_ms(
    reps: usize,
    mut f: impl FnMut() -> candle_core::Result<()>,
) -> candle_core::Result<f64> {
    f()?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn forward(op: Op, x: &Tensor, reps: usize) -> candle_core::Result<f64> {
    median_ms(reps, || {
        let y = op(x)?;
        std::hint::black_box(y);
        Ok(())
    })
}

fn forward_backward(op: Op, x: &Var, reps: usize) -> candle_core::Result<f64> {
    median_ms(reps, || {
        let y = op(x.as_tensor())?;
        let grads = y.backward()?;
        std::hint::black_box(grads.get(x));
        Ok(())
    })
}

fn main() -> candle_core::Result<()> {
    let reps: usize = std::env::var("OPS_BENCH_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(21)
        .max(1);
    let cases: [(&str, &[usize], Op, Op); 6] = [
        ("attention", &[64, 17, 64], att_vit, att_vit_comp),
        ("causal attention", &[16, 256, 256], att_gpt, att_gpt_comp),
        ("LayerNorm", &[64, 17, 64], ln_fused, ln_comp),
        (
            "softmax",
            &[64, 4, 17, 17],
            softmax_last_dim,
            softmax_last_dim_composite,
        ),
        ("LayerNorm", &[16, 256, 256], ln_fused, ln_comp),
        (
            "softmax",
            &[16, 8, 256, 256],
            softmax_last_dim,
            softmax_last_dim_composite,
        ),
    ];
    println!(
        "fused vs composite, f32 CPU, median of {reps} repeats, candle threads = {}\n",
        candle_core::utils::get_num_threads()
    );
    println!("| op | shape | pass | composite (ms) | fused (ms) | speed-up |");
    println!("|----|-------|------|---------------:|-----------:|---------:|");
    for (name, shape, fused, comp) in cases {
        let x = Tensor::randn(0f32, 1f32, shape, &Device::Cpu)?.to_dtype(DType::F32)?;
        let v = Var::from_tensor(&x)?;
        let rows = [
            ("fwd", forward(comp, &x, reps)?, forward(fused, &x, reps)?),
            (
                "fwd+bwd",
                forward_backward(comp, &v, reps)?,
                forward_backward(fused, &v, reps)?,
            ),
        ];
        for (pass, c, f) in rows {
            println!(
                "| {name} | {shape:?} | {pass} | {c:.3} | {f:.3} | {:.2}× |",
                c / f
            );
        }
    }
    Ok(())
}
