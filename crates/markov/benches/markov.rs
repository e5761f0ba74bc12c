//! Per-head Markov metrics at the trainer's shape (64, 4, 17, 17) and at (16, 8, 256, 256).
//!
//! `cargo bench -p bmt-markov --bench markov [-- REPEATS]`: prints a Markdown table of the median
//! wall time of `AttentionKernels::head_summaries` (host copy excluded) and of the whole pipeline
//! from a probability tensor.

use std::time::Instant;

use bmt_markov::{AttentionKernels, MetricsOptions, DEFAULT_ROW_TOL};
use candle_core::{Device, Tensor};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let repeats: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(11);
    let dev = Device::Cpu;
    let opts = MetricsOptions::default();
    println!("| shape (B, H, T, T) | head_summaries median (ms) | from_probs + summaries median (ms) | repeats |");
    println!("|---|---|---|---|");
    for &(b, h, t) in &[(64usize, 4usize, 17usize), (16, 8, 256)] {
        let q = Tensor::randn(0f32, 1.0, (b, h, t, 16), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (b, h, t, 16), &dev).unwrap();
        let kernels = AttentionKernels::from_qk(&q, &k, false).unwrap();
        let probs = kernels
            .to_tensor(&dev)
            .unwrap()
            .to_dtype(candle_core::DType::F32)
            .unwrap();
        let mut only = Vec::with_capacity(repeats);
        let mut full = Vec::with_capacity(repeats);
        for _ in 0..repeats {
            let s = Instant::now();
            let sum = kernels.head_summaries(&opts).unwrap();
            only.push(s.elapsed().as_secs_f64() * 1e3);
            std::hint::black_box(sum);
            let s = Instant::now();
            let kk = AttentionKernels::from_probs(&probs, DEFAULT_ROW_TOL).unwrap();
            let sum = kk.head_summaries(&opts).unwrap();
            full.push(s.elapsed().as_secs_f64() * 1e3);
            std::hint::black_box(sum);
        }
        println!(
            "| ({b}, {h}, {t}, {t}) | {:.3} | {:.3} | {repeats} |",
            median(only),
            median(full)
        );
    }
}
