//! Checkpoints: safetensors files written atomically, with a format version and a checksum.
//!
//! A checkpoint is `DIR/checkpoints/epoch-NNNN.safetensors`. It is written to a temporary file,
//! flushed to disk, then renamed over its final name, so a reader never sees half a file. Its
//! metadata carries the format version, the run state ([`CheckpointMeta`], JSON) and a CRC-32 of
//! every tensor's name, shape, dtype and bytes. The last two checkpoints are kept: when the newest
//! fails verification the error names the previous one.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{io_err, Result, TrainError};

/// Version of the checkpoint layout; a file of another version is rejected with a clear message.
pub const FORMAT_VERSION: &str = "bmt-checkpoint-1";

/// Run state saved beside the tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// Epochs completed.
    pub epoch: usize,
    /// Optimizer steps completed.
    pub step: usize,
    /// Training wall time so far, in seconds (evaluation and diagnostics included).
    pub wall_seconds: f64,
    /// Best test accuracy so far.
    pub best_test_accuracy: f64,
    /// Wall seconds at which test accuracy first reached 0.95.
    pub seconds_to_95pct: Option<f64>,
    /// Seconds of pure training steps so far (forward, backward, update), for `steps_per_second`.
    #[serde(default)]
    pub train_seconds: f64,
    /// Lowest validation bits per byte so far (text runs).
    #[serde(default)]
    pub best_bits_per_byte: Option<f64>,
    /// Steps skipped as non-finite so far (`--on-nonfinite skip`).
    #[serde(default)]
    pub skipped_steps: usize,
    /// Free-form state of the trainer's diagnostics (JSON), restored on resume.
    pub extra: serde_json::Value,
    /// The run's configuration when the checkpoint was written: a resume checks `config.json`
    /// against it, so an edited `config.json` cannot change a run unnoticed (`None` in
    /// checkpoints written before the field existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<crate::config::TrainConfig>,
}

/// The directory holding a run's checkpoints.
pub fn checkpoint_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

fn file_for(run_dir: &Path, epoch: usize) -> PathBuf {
    checkpoint_dir(run_dir).join(format!("epoch-{epoch:04}.safetensors"))
}

/// CRC-32 over names, dtypes, shapes and raw bytes of `tensors`, in name order.
fn checksum(tensors: &BTreeMap<String, Tensor>) -> Result<u32> {
    let mut h = crc32fast::Hasher::new();
    for (name, t) in tensors {
        h.update(name.as_bytes());
        h.update(format!("{:?}{:?}", t.dtype(), t.dims()).as_bytes());
        let cpu = t.to_device(&Device::Cpu)?.flatten_all()?;
        let bytes: Vec<u8> = match cpu.dtype() {
            candle_core::DType::F64 => cpu
                .to_vec1::<f64>()?
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
            candle_core::DType::U32 => cpu
                .to_vec1::<u32>()?
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
            candle_core::DType::I64 => cpu
                .to_vec1::<i64>()?
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
            _ => cpu
                .to_dtype(candle_core::DType::F32)?
                .to_vec1::<f32>()?
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        };
        h.update(&bytes);
    }
    Ok(h.finalize())
}

/// Writes `tensors` and `meta` as the checkpoint of `meta.epoch`, atomically, and removes
/// checkpoints older than the previous one. Returns the file written.
pub fn save(
    run_dir: &Path,
    tensors: &BTreeMap<String, Tensor>,
    meta: &CheckpointMeta,
) -> Result<PathBuf> {
    let dir = checkpoint_dir(run_dir);
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let path = file_for(run_dir, meta.epoch);
    let tmp = path.with_extension("safetensors.tmp");
    let crc = checksum(tensors)?;
    let mut info = HashMap::new();
    info.insert("format".to_string(), FORMAT_VERSION.to_string());
    info.insert("crc32".to_string(), format!("{crc:08x}"));
    info.insert(
        "meta".to_string(),
        serde_json::to_string(meta).map_err(|e| TrainError::Json {
            path: path.clone(),
            source: e,
        })?,
    );
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_device(&Device::Cpu)?)))
        .collect::<Result<_>>()?;
    let bytes =
        safetensors::tensor::serialize(cpu, Some(info)).map_err(|e| TrainError::Checkpoint {
            msg: format!("cannot serialise checkpoint {}: {e}", path.display()),
        })?;
    {
        let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(&bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    if let Ok(d) = fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    for (epoch, old) in list(run_dir)? {
        if epoch + 1 < meta.epoch {
            let _ = fs::remove_file(old);
        }
    }
    Ok(path)
}

/// Checkpoint files of a run, `(epoch, path)`, oldest first. Temporary files are ignored.
pub fn list(run_dir: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let dir = checkpoint_dir(run_dir);
    let mut out = Vec::new();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err(&dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err(&dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(n) = name
            .strip_prefix("epoch-")
            .and_then(|s| s.strip_suffix(".safetensors"))
        {
            if let Ok(epoch) = n.parse() {
                out.push((epoch, entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Reads and verifies one checkpoint file: format version, header, checksum.
pub fn load(path: &Path) -> Result<(BTreeMap<String, Tensor>, CheckpointMeta)> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    load_bytes(&bytes, path)
}

/// Verifies and decodes a checkpoint already in memory (the bytes [`load`] reads from `origin`):
/// format version, header, checksum. `origin` only names the file in error messages.
pub fn load_bytes(
    bytes: &[u8],
    origin: &Path,
) -> Result<(BTreeMap<String, Tensor>, CheckpointMeta)> {
    let path = origin;
    let damaged = |why: String| TrainError::Checkpoint {
        msg: format!("checkpoint {} is damaged: {why}", path.display()),
    };
    let (_, header) =
        safetensors::SafeTensors::read_metadata(bytes).map_err(|e| damaged(e.to_string()))?;
    let info = header.metadata().clone().unwrap_or_default();
    match info.get("format") {
        Some(v) if v == FORMAT_VERSION => {}
        Some(v) => {
            return Err(TrainError::Checkpoint {
                msg: format!(
                    "checkpoint {} has format `{v}`, this build reads `{FORMAT_VERSION}`: use the version of brownian-transformer that wrote it",
                    path.display()
                ),
            })
        }
        None => return Err(damaged("no format version in its metadata (not a brownian-transformer checkpoint?)".into())),
    }
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| damaged(e.to_string()))?;
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        let t = candle_core::safetensors::Load::load(&view, &Device::Cpu)
            .map_err(|e| damaged(e.to_string()))?;
        tensors.insert(name, t);
    }
    let expected = info
        .get("crc32")
        .ok_or_else(|| damaged("no checksum".into()))?;
    let actual = format!("{:08x}", checksum(&tensors)?);
    if &actual != expected {
        return Err(damaged(format!(
            "checksum {actual} does not match the recorded {expected}"
        )));
    }
    let meta_json = info
        .get("meta")
        .ok_or_else(|| damaged("no run state".into()))?;
    let meta: CheckpointMeta =
        serde_json::from_str(meta_json).map_err(|e| damaged(e.to_string()))?;
    Ok((tensors, meta))
}

/// Loads the newest checkpoint of a run. If it is damaged, the error names the newest one that
/// verifies, so the user can move the damaged file away and resume from there.
pub fn load_latest(run_dir: &Path) -> Result<Option<(BTreeMap<String, Tensor>, CheckpointMeta)>> {
    let files = list(run_dir)?;
    let Some((_, newest)) = files.last() else {
        return Ok(None);
    };
    match load(newest) {
        Ok(x) => Ok(Some(x)),
        Err(e) => {
            let good = files[..files.len() - 1]
                .iter()
                .rev()
                .find(|(_, p)| load(p).is_ok());
            let hint = match good {
                Some((_, p)) => format!(
                    "the last good checkpoint is {}: move {} away and resume again to continue from it",
                    p.display(),
                    newest.display()
                ),
                None => "no earlier checkpoint verifies: start the run again".into(),
            };
            Err(TrainError::Checkpoint {
                msg: format!("{e}; {hint}"),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bmt-ckpt-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn meta(epoch: usize) -> CheckpointMeta {
        CheckpointMeta {
            epoch,
            step: epoch * 22,
            wall_seconds: 1.5,
            best_test_accuracy: 0.5,
            seconds_to_95pct: None,
            train_seconds: 3.0,
            best_bits_per_byte: None,
            skipped_steps: 0,
            extra: serde_json::json!({"k": 1}),
            config: None,
        }
    }

    #[test]
    fn round_trip_and_rotation() {
        let d = tmpdir("rt");
        let mut t = BTreeMap::new();
        t.insert(
            "a".to_string(),
            Tensor::new(&[1.0f32, 2.0, 3.0], &Device::Cpu).unwrap(),
        );
        t.insert(
            "b.step".to_string(),
            Tensor::new(&[7.0f64], &Device::Cpu).unwrap(),
        );
        for e in 1..=4 {
            save(&d, &t, &meta(e)).unwrap();
        }
        let files = list(&d).unwrap();
        assert_eq!(files.iter().map(|f| f.0).collect::<Vec<_>>(), vec![3, 4]);
        let (back, m) = load_latest(&d).unwrap().unwrap();
        assert_eq!(m, meta(4));
        assert_eq!(back["a"].to_vec1::<f32>().unwrap(), vec![1.0, 2.0, 3.0]);
        assert_eq!(back["b.step"].to_vec1::<f64>().unwrap(), vec![7.0]);
    }

    #[test]
    fn a_flipped_byte_is_caught_and_the_last_good_one_named() {
        let d = tmpdir("flip");
        let mut t = BTreeMap::new();
        t.insert(
            "w".to_string(),
            Tensor::new(&[0.25f32; 16], &Device::Cpu).unwrap(),
        );
        save(&d, &t, &meta(1)).unwrap();
        let p2 = save(&d, &t, &meta(2)).unwrap();
        let mut bytes = fs::read(&p2).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 0x40;
        fs::write(&p2, bytes).unwrap();
        let err = load_latest(&d).unwrap_err().to_string();
        assert!(err.contains("checksum"), "{err}");
        assert!(err.contains("epoch-0001"), "{err}");
        let mut truncated = fs::read(&p2).unwrap();
        truncated.truncate(n / 2);
        fs::write(&p2, truncated).unwrap();
        let err = load_latest(&d).unwrap_err().to_string();
        assert!(
            err.contains("damaged") && err.contains("epoch-0001"),
            "{err}"
        );
    }
}
