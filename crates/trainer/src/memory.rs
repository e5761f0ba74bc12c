//! A guard against training steps that cannot fit in memory.
//!
//! Candle keeps every intermediate of the forward pass alive until the backward pass has used it,
//! so a step's memory grows with `batch × tokens × depth`. A batch far too large for the machine
//! would otherwise end in the kernel's out-of-memory killer (exit code 137, no message, and other
//! processes at risk). [`check_fits`] refuses such a configuration before any work starts.

use crate::config::TrainConfig;
use crate::error::{Result, TrainError};
use crate::model::{ModelConfig, FUSED_ATTENTION_MIN_TOKENS};

/// The estimate must exceed the available memory by this factor before a run is refused. The
/// estimate runs 1.28× over W2's measured peak (0.92 GiB against 737 MiB), so at 1.2× the true
/// peak is about the available memory: a refused run would have been killed, a run that fits is
/// never refused (up to the estimate's error on other shapes).
pub const REFUSE_ABOVE: f64 = 1.2;

/// Estimated peak bytes of one training step of `config`: parameters with their gradients and
/// two optimizer moments (4 copies; 8 with K-FAC's factors and decompositions, an over-count),
/// plus `4 · B · T · L · (20·d + 4·mlp + 4·H·T')` bytes of activations kept for the backward pass,
/// `T' = T` where attention scores are stored (the batched path, `T < 64`) and 0 for the fused
/// kernel. Measured against it (docs/BENCHMARKS.md, 2026-12-04): W2 (B = 16, T = 256) peaks at
/// 737 MiB where this gives 0.92 GiB.
pub fn step_bytes(config: &TrainConfig) -> f64 {
    let m = &config.model;
    let (b, t, l) = (
        config.batch_size as f64,
        m.tokens() as f64,
        m.depth() as f64,
    );
    let (d, mlp, h) = (m.dim() as f64, m.mlp_dim() as f64, m.heads() as f64);
    let stored_scores = if m.tokens() >= FUSED_ATTENTION_MIN_TOKENS {
        0.0
    } else {
        t
    };
    let activations = 4.0 * b * t * l * (20.0 * d + 4.0 * mlp + 4.0 * h * stored_scores);
    let copies = match config.optimizer {
        crate::config::OptimizerKind::Kfac | crate::config::OptimizerKind::Cgfac => 8.0,
        _ => 4.0,
    };
    let params = copies * 4.0 * m.parameter_count() as f64;
    activations + params
}

/// `MemAvailable` of `/proc/meminfo` in bytes (`None` where it cannot be read, e.g. not Linux).
pub fn available_bytes() -> Option<f64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0)
}

/// Refuses `config` when [`step_bytes`] exceeds [`REFUSE_ABOVE`] × `available` bytes, naming
/// `--batch-size` and the largest batch that passes. `available = None` skips the check.
pub fn check_fits(config: &TrainConfig, available: Option<f64>) -> Result<()> {
    let Some(avail) = available else {
        return Ok(());
    };
    let need = step_bytes(config);
    if need <= REFUSE_ABOVE * avail {
        return Ok(());
    }
    // step_bytes is affine in the batch size: fixed + batch · per_sample.
    let with_batch = |batch_size| {
        step_bytes(&TrainConfig {
            batch_size,
            ..config.clone()
        })
    };
    let fixed = with_batch(0);
    let per_sample = with_batch(1) - fixed;
    let largest = ((REFUSE_ABOVE * avail - fixed) / per_sample)
        .floor()
        .max(0.0) as usize;
    let gib = |x: f64| x / (1u64 << 30) as f64;
    let kind = match &config.model {
        ModelConfig::Vit(_) => "images",
        ModelConfig::Gpt(_) => "sequences",
    };
    Err(TrainError::Config {
        flag: "--batch-size",
        msg: format!(
            "a step of {} {kind} needs about {:.1} GiB but {:.1} GiB of memory is available: use --batch-size {} or less",
            config.batch_size,
            gib(need),
            gib(avail),
            largest.max(1)
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn w1_and_w2_fit_a_small_machine_and_a_huge_gpt_batch_does_not() {
        let gib = (1u64 << 30) as f64;
        let w1 = TrainConfig::w1();
        let w2 = TrainConfig::w2("corpus.txt");
        // W1 needs tens of MiB, W2 about 1 GiB (measured peaks 96 and 737 MiB).
        assert!(step_bytes(&w1) < 0.1 * gib, "{}", step_bytes(&w1));
        assert!((0.7 * gib..1.5 * gib).contains(&step_bytes(&w2)));
        assert!(check_fits(&w1, Some(2.0 * gib)).is_ok());
        assert!(check_fits(&w2, Some(2.0 * gib)).is_ok());
        assert!(check_fits(&w2, None).is_ok());
        let mut huge = w2.clone();
        huge.batch_size = 1000;
        let err = check_fits(&huge, Some(22.0 * gib)).unwrap_err().to_string();
        assert!(
            err.contains("--batch-size") && err.contains("or less"),
            "{err}"
        );
        // The batch it proposes passes.
        let largest: usize = err
            .split("--batch-size ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .expect("a proposed batch size");
        huge.batch_size = largest;
        assert!(check_fits(&huge, Some(22.0 * gib)).is_ok());
        huge.batch_size = largest + 1;
        assert!(check_fits(&huge, Some(22.0 * gib)).is_err());
    }
}
