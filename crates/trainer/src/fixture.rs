//! Loading initial weights (`--init`) and the reference implementations' W1 fixture.
//!
//! `../shared/fixtures/w1-peer-init.safetensors` stores linear weights `(in, out)` (`y = x·W + b`),
//! the transpose of Candle's layout; [`load_weights`] converts such files when asked to.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::data::ImageSet;
use crate::error::{io_err, Result, TrainError};
use crate::model::{parameter_shapes, ModelConfig, VitConfig};

/// Reads model weights from a safetensors file for `config`.
///
/// Only the parameter names of the model are taken (other tensors, such as a fixture's data, are
/// ignored); every parameter must be present with the right shape. With `in_out` the linear weights
/// (`*.w` of rank 2) are stored `(in, out)` and are transposed to Candle's `(out, in)`.
pub fn load_weights(
    path: &Path,
    config: &ModelConfig,
    in_out: bool,
) -> Result<BTreeMap<String, Tensor>> {
    let all = read_all(path)?;
    let shapes = parameter_shapes(config);
    let mut out = BTreeMap::new();
    for (name, shape) in &shapes {
        let t = all.get(name).ok_or_else(|| TrainError::Weights {
            msg: format!("{} has no tensor `{name}`", path.display()),
        })?;
        let t = if in_out && name.ends_with(".w") && t.rank() == 2 {
            t.t()?.contiguous()?
        } else {
            t.clone()
        };
        if t.dims() != shape.as_slice() {
            let hint = if !in_out && name.ends_with(".w") {
                " (if the file stores linear weights (in, out), pass --init-in-out)"
            } else {
                ""
            };
            return Err(TrainError::Weights {
                msg: format!(
                    "`{name}` in {} has shape {:?}, the model needs {:?}{hint}",
                    path.display(),
                    t.dims(),
                    shape
                ),
            });
        }
        out.insert(name.clone(), t.to_dtype(DType::F32)?);
    }
    Ok(out)
}

fn read_all(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let map = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| {
        TrainError::Weights {
            msg: format!("{} is not a readable safetensors file: {e}", path.display()),
        }
    })?;
    Ok(map.into_iter().collect())
}

/// The reference implementations' W1 start: weights (Candle layout), data split and batch orders.
#[derive(Debug)]
pub struct PeerFixture {
    /// Initial parameters, weights `(out, in)`.
    pub weights: BTreeMap<String, Tensor>,
    /// Training images and labels (1437).
    pub train: ImageSet,
    /// Test images and labels (360).
    pub test: ImageSet,
    /// For each of the 30 epochs, the 22 batches as indices into the training set.
    pub batch_orders: Vec<Vec<Vec<usize>>>,
}

fn image_set(images: &Tensor, labels: &Tensor) -> Result<ImageSet> {
    let (n, h, w) = images.dims3()?;
    let labels: Vec<u32> = labels
        .to_dtype(DType::I64)?
        .to_vec1::<i64>()?
        .iter()
        .map(|&l| l as u32)
        .collect();
    if labels.len() != n {
        return Err(TrainError::Weights {
            msg: format!("fixture has {n} images and {} labels", labels.len()),
        });
    }
    Ok(ImageSet {
        images: images.flatten_all()?.to_vec1::<f32>()?,
        labels,
        channels: 1,
        height: h,
        width: w,
        num_classes: 10,
    })
}

/// Loads `w1-peer-init.safetensors`.
pub fn load_peer_fixture(path: &Path) -> Result<PeerFixture> {
    let all = read_all(path)?;
    let get = |k: &str| {
        all.get(k).cloned().ok_or_else(|| TrainError::Weights {
            msg: format!(
                "{} has no tensor `{k}`: is it the W1 peer fixture?",
                path.display()
            ),
        })
    };
    let weights = load_weights(path, &VitConfig::w1().into(), true)?;
    let train = image_set(&get("data.train_images")?, &get("data.train_labels")?)?;
    let test = image_set(&get("data.test_images")?, &get("data.test_labels")?)?;
    let orders = get("data.batch_orders")?.to_dtype(DType::I64)?;
    let (epochs, batches, size) = orders.dims3()?;
    let flat = orders.flatten_all()?.to_vec1::<i64>()?;
    let mut batch_orders = Vec::with_capacity(epochs);
    for e in 0..epochs {
        let mut ep = Vec::with_capacity(batches);
        for b in 0..batches {
            let start = (e * batches + b) * size;
            ep.push(
                flat[start..start + size]
                    .iter()
                    .map(|&i| i as usize)
                    .collect(),
            );
        }
        batch_orders.push(ep);
    }
    Ok(PeerFixture {
        weights,
        train,
        test,
        batch_orders,
    })
}
