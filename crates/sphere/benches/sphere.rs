//! Benchmark of the batched sphere operations (f32, CPU) at two token shapes.
//!
//! `cargo bench -p bmt-sphere --bench sphere [-- REPEATS]` (default 11 repeats); prints a Markdown
//! table of the median wall time per call. Inputs are deterministic (seeded ChaCha8).

use bmt_sphere::{cluster::cluster_stats, geometry, norm};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

fn random(shape: (usize, usize, usize), rng: &mut ChaCha8Rng) -> Tensor {
    let count = shape.0 * shape.1 * shape.2;
    let v: Vec<f32> = (0..count).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn median_ms(repeats: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm-up
    let mut t: Vec<f64> = (0..repeats)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(|a, b| a.total_cmp(b));
    t[t.len() / 2]
}

fn main() {
    let repeats: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(11)
        .max(1);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    println!("| shape (B × T × n) | operation | median ms |");
    println!("|---|---|---|");
    for &shape in &[(64usize, 17usize, 64usize), (16, 256, 256)] {
        let n = shape.2;
        let r = (n as f64).sqrt();
        let raw = random(shape, &mut rng);
        let x = norm::layer_norm(&raw, 1e-5).unwrap();
        let y = norm::layer_norm(&random(shape, &mut rng), 1e-5).unwrap();
        let v = random(shape, &mut rng);
        let label = format!("{} × {} × {}", shape.0, shape.1, shape.2);
        let row = |name: &str, f: &mut dyn FnMut()| {
            println!("| {label} | {name} | {:.3} |", median_ms(repeats, f));
        };
        row("geodesic_distance", &mut || {
            geometry::geodesic_distance(&x, &y, r).unwrap();
        });
        row("exp_map", &mut || {
            geometry::exp_map(&x, &v, r).unwrap();
        });
        row("log_map", &mut || {
            geometry::log_map(&x, &y, r).unwrap();
        });
        row("parallel_transport", &mut || {
            geometry::parallel_transport(&x, &y, &v, r).unwrap();
        });
        row("layer_norm_sphere_check", &mut || {
            norm::layer_norm_sphere_check(&raw, &x, 1e-5).unwrap();
        });
        row("cluster_stats", &mut || {
            cluster_stats(&x, 0.1).unwrap();
        });
    }
}
