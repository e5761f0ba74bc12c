//! MNIST and Fashion-MNIST in the idx format (LeCun et al., "THE MNIST DATABASE of handwritten
//! digits"): a big-endian header `0x00 0x00 type rank` (type 0x08 = unsigned byte), `rank`
//! big-endian u32 dimensions, then the row-major data, nothing after it.

use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use super::{read_file, require_dir, DataError, ImageSet, Split};

/// Magic number of an idx file of unsigned bytes with 3 dimensions (images `N × rows × cols`).
const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an idx file of unsigned bytes with 1 dimension (labels `N`).
const LABELS_MAGIC: u32 = 0x0000_0801;
/// MNIST and Fashion-MNIST have 10 classes.
const MNIST_CLASSES: usize = 10;
/// The four files of an MNIST directory: train images, train labels, test images, test labels.
const MNIST_FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// A validated idx image file, borrowing its pixels from the input (no copy, no allocation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdxImages<'a> {
    /// Number of images `N`.
    pub count: usize,
    /// Rows per image (≥ 1).
    pub rows: usize,
    /// Columns per image (≥ 1).
    pub cols: usize,
    /// The `N · rows · cols` pixel bytes, row-major.
    pub pixels: &'a [u8],
}

/// A validated idx label file, borrowing its labels (each in `0..=9`) from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdxLabels<'a> {
    /// The `N` labels.
    pub labels: &'a [u8],
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A hint at what a file with the wrong magic number is instead.
fn magic_hint(bytes: &[u8], found: u32, expected: u32) -> String {
    let kind = if expected == IMAGES_MAGIC {
        "image"
    } else {
        "label"
    };
    if bytes.starts_with(&[0x1f, 0x8b]) {
        "; the file is gzip-compressed: add a .gz suffix to its name or decompress it".to_string()
    } else if found == IMAGES_MAGIC || found == LABELS_MAGIC {
        let other = if found == IMAGES_MAGIC {
            "image"
        } else {
            "label"
        };
        format!(
            "; this is an idx {other} file where an idx {kind} file belongs: check the file names"
        )
    } else if found.swap_bytes() == expected {
        "; the header is little-endian but idx is big-endian: re-download the original file"
            .to_string()
    } else {
        format!("; this is not an idx {kind} file (unsigned bytes): re-download it")
    }
}

/// Validates an idx header of `R` dimensions against the whole input and returns the
/// dimensions and the data bytes. The declared size `∏ dims` is computed in checked u64 and
/// compared with the bytes actually present before anything is used; dimensions after the first
/// must be ≥ 1.
fn parse_idx<'a, const R: usize>(
    bytes: &'a [u8],
    origin: &str,
    magic: u32,
) -> Result<([usize; R], &'a [u8]), DataError> {
    let header = 4 + 4 * R;
    if bytes.len() < 4 {
        return Err(DataError::Truncated {
            origin: origin.to_string(),
            what: "idx magic number".to_string(),
            offset: 0,
            expected: 4,
            found: bytes.len() as u64,
        });
    }
    let found = be32(bytes, 0);
    if found != magic {
        return Err(DataError::BadMagic {
            origin: origin.to_string(),
            expected: magic,
            found,
            hint: magic_hint(bytes, found, magic),
        });
    }
    if bytes.len() < header {
        return Err(DataError::Truncated {
            origin: origin.to_string(),
            what: format!("idx header of {R} dimensions"),
            offset: 0,
            expected: header as u64,
            found: bytes.len() as u64,
        });
    }
    let mut dims = [0u32; R];
    let mut total: u64 = 1;
    for k in 0..R {
        let offset = 4 + 4 * k;
        let d = be32(bytes, offset);
        dims[k] = d;
        if k > 0 && d == 0 {
            return Err(DataError::BadHeader {
                origin: origin.to_string(),
                offset: offset as u64,
                reason: format!("dimension {k} is 0"),
            });
        }
        total = total
            .checked_mul(u64::from(d))
            .ok_or_else(|| DataError::BadHeader {
                origin: origin.to_string(),
                offset: offset as u64,
                reason: format!("declared size {dims:?} overflows 64 bits"),
            })?;
    }
    let data = &bytes[header..];
    let have = data.len() as u64;
    let shape = || dims.map(|d| d.to_string()).join("×");
    if have < total {
        return Err(DataError::Truncated {
            origin: origin.to_string(),
            what: format!("data of declared shape {}", shape()),
            offset: header as u64,
            expected: total,
            found: have,
        });
    }
    if have > total {
        return Err(DataError::TrailingBytes {
            origin: origin.to_string(),
            offset: header as u64 + total,
            extra: have - total,
        });
    }
    // Every dimension divides a product that fits in the input, so it fits in usize.
    Ok((dims.map(|d| d as usize), data))
}

/// Parses a complete idx image file (magic `0x00000803`, dims `N, rows, cols`) from memory.
/// `origin` names the input in error messages. Fails unless the input is exactly
/// `16 + N·rows·cols` bytes with `rows, cols ≥ 1`.
pub fn parse_idx_images<'a>(bytes: &'a [u8], origin: &str) -> Result<IdxImages<'a>, DataError> {
    let ([count, rows, cols], pixels) = parse_idx::<3>(bytes, origin, IMAGES_MAGIC)?;
    Ok(IdxImages {
        count,
        rows,
        cols,
        pixels,
    })
}

/// Parses a complete idx label file (magic `0x00000801`, dim `N`) from memory: exactly
/// `8 + N` bytes, each label in `0..=9`. `origin` names the input in error messages.
pub fn parse_idx_labels<'a>(bytes: &'a [u8], origin: &str) -> Result<IdxLabels<'a>, DataError> {
    let ([_count], labels) = parse_idx::<1>(bytes, origin, LABELS_MAGIC)?;
    if let Some(i) = labels.iter().position(|&l| l as usize >= MNIST_CLASSES) {
        return Err(DataError::LabelOutOfRange {
            origin: origin.to_string(),
            offset: 8 + i as u64,
            label: u32::from(labels[i]),
            num_classes: MNIST_CLASSES,
        });
    }
    Ok(IdxLabels { labels })
}

/// Appends up to `limit − out.len()` decompressed bytes to `out`, in 64 KiB steps so that the
/// allocation follows the bytes actually produced, never a declared size.
fn read_until<R: Read>(
    dec: &mut R,
    out: &mut Vec<u8>,
    limit: u64,
    origin: &str,
) -> Result<(), DataError> {
    let mut chunk = [0u8; 1 << 16];
    while (out.len() as u64) < limit {
        let want = (limit - out.len() as u64).min(chunk.len() as u64) as usize;
        match dec.read(&mut chunk[..want]) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(DataError::Gzip {
                    origin: origin.to_string(),
                    offset: out.len() as u64,
                    message: e.to_string(),
                })
            }
        }
    }
    Ok(())
}

/// Decompresses a gzip-compressed idx file (one or more gzip members), bounded by its own
/// header: it reads the magic and dimensions first, then at most the declared size, so a
/// decompression bomb costs no more memory than the size its header declares *and* the bytes it
/// really produces (whichever is smaller). Decompressed bytes past the declared size are counted
/// without being stored and reported as [`DataError::TrailingBytes`]. A header that is not idx
/// stops decompression early; the parser then reports it. Feed the result to
/// [`parse_idx_images`] or [`parse_idx_labels`].
pub fn decompress_gzip_idx(compressed: &[u8], origin: &str) -> Result<Vec<u8>, DataError> {
    let mut dec = MultiGzDecoder::new(compressed);
    let mut out = Vec::new();
    read_until(&mut dec, &mut out, 4, origin)?;
    if out.len() < 4 || out[0] != 0 || out[1] != 0 || out[2] != 0x08 || !matches!(out[3], 1 | 3) {
        return Ok(out);
    }
    let header = 4 + 4 * u64::from(out[3]);
    read_until(&mut dec, &mut out, header, origin)?;
    if (out.len() as u64) < header {
        return Ok(out);
    }
    let declared = (0..usize::from(out[3]))
        .try_fold(1u64, |acc, k| {
            acc.checked_mul(u64::from(be32(&out, 4 + 4 * k)))
        })
        .and_then(|n| n.checked_add(header));
    let Some(declared) = declared else {
        return Ok(out); // the parser reports the overflow with its offset
    };
    read_until(&mut dec, &mut out, declared, origin)?;
    if out.len() as u64 == declared {
        let extra = std::io::copy(&mut dec, &mut std::io::sink()).map_err(|e| DataError::Gzip {
            origin: origin.to_string(),
            offset: declared,
            message: e.to_string(),
        })?;
        if extra > 0 {
            return Err(DataError::TrailingBytes {
                origin: origin.to_string(),
                offset: declared,
                extra,
            });
        }
    }
    Ok(out)
}

/// Finds `dir/name`, else `dir/name.gz`; the raw file wins if both exist.
fn locate(dir: &Path, name: &str) -> Option<PathBuf> {
    let raw = dir.join(name);
    if raw.is_file() {
        return Some(raw);
    }
    let gz = dir.join(format!("{name}.gz"));
    gz.is_file().then_some(gz)
}

/// Reads an idx file, decompressing it if its name ends in `.gz`.
fn read_idx_file(path: &Path) -> Result<Vec<u8>, DataError> {
    let bytes = read_file(path, "an idx file")?;
    if path.extension().is_some_and(|e| e == "gz") {
        decompress_gzip_idx(&bytes, &format!("{} (decompressed)", path.display()))
    } else {
        Ok(bytes)
    }
}

/// Reads and cross-checks one image file and its label file into an [`ImageSet`] (pixels /255).
fn load_part(images_path: &Path, labels_path: &Path) -> Result<ImageSet, DataError> {
    let image_bytes = read_idx_file(images_path)?;
    let label_bytes = read_idx_file(labels_path)?;
    let images_origin = images_path.display().to_string();
    let labels_origin = labels_path.display().to_string();
    let images = parse_idx_images(&image_bytes, &images_origin)?;
    let labels = parse_idx_labels(&label_bytes, &labels_origin)?;
    if images.count != labels.labels.len() {
        return Err(DataError::CountMismatch {
            images_origin,
            images: images.count as u64,
            labels_origin,
            labels: labels.labels.len() as u64,
        });
    }
    ImageSet::from_bytes(
        images.pixels,
        labels.labels.iter().map(|&l| u32::from(l)).collect(),
        1,
        images.rows,
        images.cols,
        MNIST_CLASSES,
    )
}

/// Loads MNIST or Fashion-MNIST from `dir`, which must hold `train-images-idx3-ubyte`,
/// `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte` and `t10k-labels-idx1-ubyte`, each raw or
/// with a `.gz` suffix. Images become 1 channel of `rows × cols` with pixels `byte/255`,
/// 10 classes; the split is the official one (`split_seed = None`).
pub fn load_mnist(dir: &Path) -> Result<Split<ImageSet>, DataError> {
    let all = format!("{} (each raw or .gz)", MNIST_FILES.join(", "));
    require_dir(dir, &all)?;
    let mut paths = Vec::with_capacity(4);
    for name in MNIST_FILES {
        paths.push(locate(dir, name).ok_or_else(|| DataError::NotFound {
            path: dir.join(name),
            expected: format!("{name} or {name}.gz; an MNIST directory holds {all}"),
        })?);
    }
    let train = load_part(&paths[0], &paths[1])?;
    let test = load_part(&paths[2], &paths[3])?;
    if (test.height, test.width) != (train.height, train.width) {
        return Err(DataError::ShapeMismatch {
            origin: paths[2].display().to_string(),
            expected: format!("{}×{}", train.height, train.width),
            found: format!("{}×{}", test.height, test.width),
        });
    }
    let description = format!(
        "idx (MNIST format) from {}: {} train / {} test, 1×{}×{}, 10 classes, official split",
        dir.display(),
        train.labels.len(),
        test.labels.len(),
        train.height,
        train.width
    );
    Ok(Split {
        train,
        test,
        split_seed: None,
        description,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images_file(n: u32, r: u32, c: u32) -> Vec<u8> {
        let mut b = IMAGES_MAGIC.to_be_bytes().to_vec();
        for d in [n, r, c] {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b.extend((0..n * r * c).map(|v| (v * 7 % 256) as u8));
        b
    }

    #[test]
    fn parses_exact_images() {
        let f = images_file(2, 3, 4);
        let im = parse_idx_images(&f, "t").unwrap();
        assert_eq!((im.count, im.rows, im.cols), (2, 3, 4));
        assert_eq!(im.pixels.len(), 24);
        assert_eq!(im.pixels[23], 161); // 23 · 7 = 161
    }

    #[test]
    fn rejects_header_problems_with_offsets() {
        let mut f = images_file(2, 3, 4);
        f[11] = 0; // rows = 0
        let err = parse_idx_images(&f, "t").unwrap_err();
        assert!(
            matches!(err, DataError::BadHeader { offset: 8, .. }),
            "{err}"
        );
        let mut f = images_file(0, 1, 1);
        f[4..16].copy_from_slice(&[0xff; 12]); // 2^96-ish: overflows u64
        let err = parse_idx_images(&f, "t").unwrap_err();
        assert!(err.to_string().contains("overflows"), "{err}");
        let err = parse_idx_images(&images_file(2, 3, 4)[..10], "t").unwrap_err();
        assert!(
            matches!(
                err,
                DataError::Truncated {
                    expected: 16,
                    found: 10,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn magic_hints_name_the_likely_cause() {
        let mut f = images_file(1, 1, 1);
        f[3] = 0x01;
        let err = parse_idx_images(&f, "t").unwrap_err().to_string();
        assert!(
            err.contains("idx label file where an idx image file belongs"),
            "{err}"
        );
        let mut f = images_file(1, 1, 1);
        f[0..4].copy_from_slice(&IMAGES_MAGIC.to_le_bytes());
        let err = parse_idx_images(&f, "t").unwrap_err().to_string();
        assert!(err.contains("little-endian"), "{err}");
        let err = parse_idx_images(&[0x1f, 0x8b, 8, 0, 0], "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("gzip-compressed"), "{err}");
    }

    #[test]
    fn gzip_bomb_is_bounded_by_its_header() {
        use flate2::{write::GzEncoder, Compression};
        use std::io::Write;
        // Header declares 1 label, then 10 MB of zeros follow: decompression stores 9 bytes
        // and counts the rest as trailing.
        let mut raw = LABELS_MAGIC.to_be_bytes().to_vec();
        raw.extend_from_slice(&1u32.to_be_bytes());
        raw.resize(10_000_000, 0);
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        enc.write_all(&raw).unwrap();
        let gz = enc.finish().unwrap();
        let err = decompress_gzip_idx(&gz, "bomb").unwrap_err();
        assert!(
            matches!(
                err,
                DataError::TrailingBytes {
                    offset: 9,
                    extra: 9_999_991,
                    ..
                }
            ),
            "{err}"
        );
    }
}
