//! Device selection: `cpu`, `cuda` or `cuda:N`, never a silent fall-back.

use candle_core::Device;

use crate::error::{Result, TrainError};

/// Parses `--device` and opens the device. `cuda` in a build without the `cuda` feature is an
/// error naming the feature, not the CPU.
pub fn open_device(spec: &str) -> Result<Device> {
    match spec.trim() {
        "cpu" => Ok(Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = match s.strip_prefix("cuda:") {
                None => 0,
                Some(n) => n.parse::<usize>().map_err(|_| TrainError::Config {
                    flag: "--device",
                    msg: format!("`{s}`: the CUDA ordinal must be a number, as in cuda:0"),
                })?,
            };
            open_cuda(ordinal)
        }
        other => Err(TrainError::Config {
            flag: "--device",
            msg: format!("`{other}` is not a device: use cpu, cuda or cuda:N"),
        }),
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(ordinal: usize) -> Result<Device> {
    Device::new_cuda(ordinal)
        .map_err(|e| TrainError::Device(format!("cannot open CUDA device {ordinal}: {e}")))
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(_ordinal: usize) -> Result<Device> {
    Err(TrainError::Device(
        "this build has no CUDA support: rebuild with `--features cuda` (e.g. `cargo xtask train --features cuda --device cuda`), or use --device cpu".into(),
    ))
}

/// Sets the CPU thread count for Candle's kernels (and rayon), before any tensor work.
///
/// Candle reads `RAYON_NUM_THREADS` on every matmul and `CANDLE_NUM_THREADS` once for its pool, so
/// both are set; this must run before the first tensor operation of the process.
pub fn set_cpu_threads(threads: usize) -> Result<()> {
    if threads == 0 {
        return Err(TrainError::Config {
            flag: "--threads",
            msg: "the thread count must be at least 1".into(),
        });
    }
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    std::env::set_var("CANDLE_NUM_THREADS", threads.to_string());
    Ok(())
}

/// Sets only the thread count of candle's matmuls (`RAYON_NUM_THREADS`, read on every matmul), not
/// that of its elementwise pool (`CANDLE_NUM_THREADS`, read once): the bench measures GEMM
/// ceilings on every core, then trains with `TrainConfig::candle_threads`. Call it only while no
/// other thread of the process runs (environment variables are process-wide).
pub fn set_matmul_threads(threads: usize) {
    std::env::set_var("RAYON_NUM_THREADS", threads.max(1).to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_opens_and_junk_is_rejected() {
        assert!(open_device("cpu").unwrap().is_cpu());
        let err = open_device("tpu").unwrap_err().to_string();
        assert!(err.contains("--device") && err.contains("tpu"), "{err}");
        let err = open_device("cuda:x").unwrap_err().to_string();
        assert!(err.contains("ordinal"), "{err}");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_feature_names_the_feature() {
        let err = open_device("cuda").unwrap_err().to_string();
        assert!(err.contains("--features cuda"), "{err}");
    }
}
