//! In-memory labelled image sets.

use candle_core::{Device, Tensor};

use super::{Batch, DataError, Dataset};

/// Labelled images held in host memory.
///
/// Invariants (checked by [`ImageSet::new`] and again by [`Dataset::batch`], since the fields are
/// public): `images.len() == labels.len() · channels · height · width`, every label is
/// `< num_classes`. Image `i` occupies `images[i·C·H·W .. (i+1)·C·H·W]`, laid out `C × H × W`
/// row-major; pixel values are in `[0, 1]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSet {
    /// `N × C × H × W` pixel values in `[0, 1]`, row-major.
    pub images: Vec<f32>,
    /// `N` class labels in `0..num_classes`.
    pub labels: Vec<u32>,
    /// Channels per image (1 for grey, 3 for RGB).
    pub channels: usize,
    /// Image height in pixels.
    pub height: usize,
    /// Image width in pixels.
    pub width: usize,
    /// Number of classes.
    pub num_classes: usize,
}

impl ImageSet {
    /// CRC-32 of the set's contents: shape, pixel values (`f32` little-endian) and labels. Two
    /// loads of the same files give the same value; any changed pixel or label changes it (with
    /// probability 1 − 2⁻³²).
    pub fn fingerprint(&self) -> u32 {
        let mut h = crc32fast::Hasher::new();
        let dims = [self.channels, self.height, self.width, self.num_classes];
        super::hash_le(&mut h, &dims, |d| (d as u64).to_le_bytes());
        super::hash_le(&mut h, &self.images, f32::to_le_bytes);
        super::hash_le(&mut h, &self.labels, u32::to_le_bytes);
        h.finalize()
    }

    /// Builds a set after checking the invariants listed on the type (and that pixels lie in
    /// `[0, 1]`, which also excludes NaN).
    pub fn new(
        images: Vec<f32>,
        labels: Vec<u32>,
        channels: usize,
        height: usize,
        width: usize,
        num_classes: usize,
    ) -> Result<Self, DataError> {
        let set = ImageSet {
            images,
            labels,
            channels,
            height,
            width,
            num_classes,
        };
        set.check_layout()?;
        if let Some((i, &l)) = set
            .labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= num_classes)
        {
            return Err(DataError::Inconsistent {
                reason: format!("label {l} of sample {i} is not below num_classes = {num_classes}"),
            });
        }
        if let Some((i, v)) = set
            .images
            .iter()
            .enumerate()
            .find(|(_, v)| !(0.0..=1.0).contains(*v))
        {
            return Err(DataError::Inconsistent {
                reason: format!("pixel {i} has value {v}, outside [0, 1]"),
            });
        }
        Ok(set)
    }

    /// Builds a set from 8-bit pixels, scaling each by 1/255 (`value = byte / 255`).
    /// Labels are checked against `num_classes` as in [`ImageSet::new`].
    pub fn from_bytes(
        pixels: &[u8],
        labels: Vec<u32>,
        channels: usize,
        height: usize,
        width: usize,
        num_classes: usize,
    ) -> Result<Self, DataError> {
        let images = pixels.iter().map(|&p| f32::from(p) / 255.0).collect();
        Self::new(images, labels, channels, height, width, num_classes)
    }

    /// Values per image, `C · H · W`.
    pub fn pixels_per_image(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The pixels of image `i` (`C × H × W` row-major), or `None` out of range.
    pub fn image(&self, i: usize) -> Option<&[f32]> {
        let p = self.pixels_per_image();
        if i >= self.labels.len() {
            return None;
        }
        self.images.get(i * p..(i + 1) * p)
    }

    /// Number of samples of each class, `counts[c] = #{i : labels[i] = c}`; labels outside
    /// `0..num_classes` are not counted.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes];
        for &l in &self.labels {
            if let Some(c) = counts.get_mut(l as usize) {
                *c += 1;
            }
        }
        counts
    }

    /// Concatenates `other` after `self`; both must have the same image shape and class count.
    pub fn append(&mut self, other: ImageSet, origin: &str) -> Result<(), DataError> {
        let shape = |s: &ImageSet| {
            format!(
                "{}×{}×{} with {} classes",
                s.channels, s.height, s.width, s.num_classes
            )
        };
        if (self.channels, self.height, self.width, self.num_classes)
            != (other.channels, other.height, other.width, other.num_classes)
        {
            return Err(DataError::ShapeMismatch {
                origin: origin.to_string(),
                expected: shape(self),
                found: shape(&other),
            });
        }
        self.images.extend_from_slice(&other.images);
        self.labels.extend_from_slice(&other.labels);
        Ok(())
    }

    fn check_layout(&self) -> Result<(), DataError> {
        let want = self
            .labels
            .len()
            .checked_mul(self.pixels_per_image())
            .ok_or_else(|| DataError::Inconsistent {
                reason: "N·C·H·W overflows usize".to_string(),
            })?;
        if self.images.len() != want {
            return Err(DataError::Inconsistent {
                reason: format!(
                    "{} pixel values for {} images of {}×{}×{} (expected {want})",
                    self.images.len(),
                    self.labels.len(),
                    self.channels,
                    self.height,
                    self.width
                ),
            });
        }
        Ok(())
    }
}

impl Dataset for ImageSet {
    fn len(&self) -> usize {
        self.labels.len()
    }

    /// Inputs `(B, C, H, W)` f32 and targets `(B,)` u32, gathered in the order of `indices`.
    fn batch(&self, indices: &[usize], device: &Device) -> Result<Batch, DataError> {
        self.check_layout()?;
        let p = self.pixels_per_image();
        let mut inputs = Vec::with_capacity(indices.len() * p);
        let mut targets = Vec::with_capacity(indices.len());
        for &i in indices {
            let image = self.image(i).ok_or(DataError::IndexOutOfRange {
                index: i,
                len: self.len(),
            })?;
            inputs.extend_from_slice(image);
            targets.push(self.labels[i]);
        }
        let b = indices.len();
        Ok(Batch {
            inputs: Tensor::from_vec(inputs, (b, self.channels, self.height, self.width), device)?,
            targets: Tensor::from_vec(targets, b, device)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> ImageSet {
        // 3 images of 2 channels × 1 × 2: image i has values (4i + k) / 16, k = 0..4.
        let images = (0..12).map(|v| v as f32 / 16.0).collect();
        ImageSet::new(images, vec![2, 0, 1], 2, 1, 2, 3).unwrap()
    }

    #[test]
    fn batch_gathers_in_index_order() {
        let set = tiny();
        let b = set.batch(&[2, 0, 2], &Device::Cpu).unwrap();
        assert_eq!(b.inputs.dims(), &[3, 2, 1, 2]);
        let x = b.inputs.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want: Vec<f32> = [8, 9, 10, 11, 0, 1, 2, 3, 8, 9, 10, 11]
            .iter()
            .map(|&v| v as f32 / 16.0)
            .collect();
        assert_eq!(x, want);
        assert_eq!(b.targets.to_vec1::<u32>().unwrap(), vec![1, 2, 1]);
    }

    #[test]
    fn batch_rejects_out_of_range_and_broken_sets() {
        let set = tiny();
        let err = set.batch(&[0, 3], &Device::Cpu).unwrap_err();
        assert!(matches!(
            err,
            DataError::IndexOutOfRange { index: 3, len: 3 }
        ));
        let mut broken = tiny();
        broken.images.pop();
        let err = broken.batch(&[0], &Device::Cpu).unwrap_err();
        assert!(matches!(err, DataError::Inconsistent { .. }), "{err}");
    }

    #[test]
    fn empty_batch_has_zero_rows() {
        let b = tiny().batch(&[], &Device::Cpu).unwrap();
        assert_eq!(b.inputs.dims(), &[0, 2, 1, 2]);
        assert_eq!(b.targets.dims(), &[0]);
    }

    #[test]
    fn constructor_checks_labels_and_values() {
        let err = ImageSet::new(vec![0.5; 2], vec![0, 3], 1, 1, 1, 3).unwrap_err();
        assert!(err.to_string().contains("label 3 of sample 1"), "{err}");
        let err = ImageSet::new(vec![0.5, f32::NAN], vec![0, 1], 1, 1, 1, 3).unwrap_err();
        assert!(err.to_string().contains("pixel 1"), "{err}");
        let set = ImageSet::from_bytes(&[0, 255, 51], vec![0, 1, 1], 1, 1, 1, 2).unwrap();
        assert_eq!(set.images, vec![0.0, 1.0, 0.2]);
        assert_eq!(set.class_counts(), vec![1, 2]);
    }
}
