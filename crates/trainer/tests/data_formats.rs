//! Each data format written to disk by the test itself, read back by its loader, and corrupted in
//! every way the loader must reject (asserting on the error variant and its message).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use bmt_trainer::data::{
    load_cifar10, load_mnist, load_text, DataError, Dataset, CIFAR10_RECORD_BYTES,
};
use candle_core::Device;
use flate2::{write::GzEncoder, Compression};

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "bmt-data-{tag}-{}-{n}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// Pixel `k` of image `i` in the synthetic idx files: distinct per (set, image, position).
fn pixel(salt: u32, i: u32, k: u32) -> u8 {
    ((salt * 101 + i * 31 + k * 7) % 256) as u8
}

fn idx_images(salt: u32, n: u32, rows: u32, cols: u32) -> Vec<u8> {
    let mut b = vec![0, 0, 8, 3];
    for d in [n, rows, cols] {
        b.extend_from_slice(&d.to_be_bytes());
    }
    for i in 0..n {
        b.extend((0..rows * cols).map(|k| pixel(salt, i, k)));
    }
    b
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 8, 1];
    b.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    b.extend_from_slice(labels);
    b
}

const TRAIN_LABELS: [u8; 5] = [3, 0, 9, 9, 1];
const TEST_LABELS: [u8; 2] = [4, 7];

/// Writes a valid 5-train / 2-test MNIST directory of 3×4 images, gzipped where asked.
fn mnist_dir(gz: [bool; 4]) -> TempDir {
    let dir = TempDir::new("mnist");
    let files = [
        ("train-images-idx3-ubyte", idx_images(1, 5, 3, 4)),
        ("train-labels-idx1-ubyte", idx_labels(&TRAIN_LABELS)),
        ("t10k-images-idx3-ubyte", idx_images(2, 2, 3, 4)),
        ("t10k-labels-idx1-ubyte", idx_labels(&TEST_LABELS)),
    ];
    for ((name, bytes), z) in files.iter().zip(gz) {
        if z {
            dir.write(&format!("{name}.gz"), &gzip(bytes));
        } else {
            dir.write(name, bytes);
        }
    }
    dir
}

fn check_mnist(dir: &Path) {
    let split = load_mnist(dir).unwrap();
    assert_eq!(split.split_seed, None);
    for (set, salt, labels) in [
        (&split.train, 1, &TRAIN_LABELS[..]),
        (&split.test, 2, &TEST_LABELS[..]),
    ] {
        assert_eq!(
            (set.channels, set.height, set.width, set.num_classes),
            (1, 3, 4, 10)
        );
        let want_labels: Vec<u32> = labels.iter().map(|&l| u32::from(l)).collect();
        assert_eq!(set.labels, want_labels);
        for i in 0..labels.len() as u32 {
            let want: Vec<f32> = (0..12)
                .map(|k| f32::from(pixel(salt, i, k)) / 255.0)
                .collect();
            assert_eq!(set.image(i as usize).unwrap(), &want[..]);
        }
    }
    let b = split.train.batch(&[4, 0], &Device::Cpu).unwrap();
    assert_eq!(b.inputs.dims(), &[2, 1, 3, 4]);
    assert_eq!(b.targets.to_vec1::<u32>().unwrap(), vec![1, 3]);
}

#[test]
fn mnist_reads_back_raw_gzip_and_mixed() {
    check_mnist(mnist_dir([false; 4]).path());
    check_mnist(mnist_dir([true; 4]).path());
    check_mnist(mnist_dir([true, false, false, true]).path());
}

/// Replaces one file of a valid raw MNIST directory and returns the loader's error.
fn mnist_error_with(name: &str, bytes: &[u8]) -> (DataError, String) {
    let dir = mnist_dir([false; 4]);
    let path = dir.write(name, bytes);
    let err = load_mnist(dir.path()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "message lacks the path: {msg}"
    );
    assert!(!msg.contains('\n'), "message is not one line: {msg}");
    (err, msg)
}

#[test]
fn mnist_rejects_wrong_magic() {
    let mut f = idx_images(1, 5, 3, 4);
    f[3] = 2;
    let (err, msg) = mnist_error_with("train-images-idx3-ubyte", &f);
    assert!(
        matches!(
            err,
            DataError::BadMagic {
                expected: 0x803,
                found: 0x802,
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("0x00000803") && msg.contains("0x00000802"),
        "{msg}"
    );
    // A label file in the image slot is named as such.
    let (_, msg) = mnist_error_with("t10k-images-idx3-ubyte", &idx_labels(&TEST_LABELS));
    assert!(
        msg.contains("idx label file where an idx image file belongs"),
        "{msg}"
    );
}

#[test]
fn mnist_rejects_truncated_and_trailing() {
    let f = idx_images(1, 5, 3, 4); // 16 + 60 bytes
    let (err, msg) = mnist_error_with("train-images-idx3-ubyte", &f[..f.len() - 1]);
    assert!(
        matches!(
            err,
            DataError::Truncated {
                offset: 16,
                expected: 60,
                found: 59,
                ..
            }
        ),
        "{msg}"
    );
    let (err, _) = mnist_error_with("train-images-idx3-ubyte", &f[..7]);
    assert!(matches!(
        err,
        DataError::Truncated {
            expected: 16,
            found: 7,
            ..
        }
    ));
    let mut long = f.clone();
    long.extend_from_slice(&[0, 0, 0]);
    let (err, msg) = mnist_error_with("train-images-idx3-ubyte", &long);
    assert!(
        matches!(
            err,
            DataError::TrailingBytes {
                offset: 76,
                extra: 3,
                ..
            }
        ),
        "{msg}"
    );
    let mut labels = idx_labels(&TEST_LABELS);
    labels.push(1);
    let (err, _) = mnist_error_with("t10k-labels-idx1-ubyte", &labels);
    assert!(matches!(
        err,
        DataError::TrailingBytes {
            offset: 10,
            extra: 1,
            ..
        }
    ));
}

#[test]
fn mnist_rejects_count_mismatch_and_bad_labels() {
    let (err, msg) = mnist_error_with("train-labels-idx1-ubyte", &idx_labels(&[1, 2, 3, 4]));
    assert!(
        matches!(
            err,
            DataError::CountMismatch {
                images: 5,
                labels: 4,
                ..
            }
        ),
        "{msg}"
    );
    let (err, msg) = mnist_error_with("t10k-labels-idx1-ubyte", &idx_labels(&[4, 10]));
    assert!(
        matches!(
            err,
            DataError::LabelOutOfRange {
                offset: 9,
                label: 10,
                ..
            }
        ),
        "{msg}"
    );
    assert!(msg.contains("outside 0..=9"), "{msg}");
    let (err, _) = mnist_error_with("t10k-images-idx3-ubyte", &idx_images(2, 2, 4, 3));
    assert!(matches!(err, DataError::ShapeMismatch { .. }));
}

#[test]
fn mnist_gzip_corruption_is_reported() {
    let dir = mnist_dir([true; 4]);
    let name = "train-images-idx3-ubyte.gz";
    let good = gzip(&idx_images(1, 5, 3, 4));
    // A cut-off gzip stream.
    dir.write(name, &good[..good.len() / 2]);
    let err = load_mnist(dir.path()).unwrap_err();
    assert!(matches!(err, DataError::Gzip { .. }), "{err}");
    assert!(err.to_string().contains("(decompressed)"), "{err}");
    // Garbage after a complete gzip member is not silently ignored.
    let mut tail = good.clone();
    tail.extend_from_slice(b"garbage!");
    dir.write(name, &tail);
    let err = load_mnist(dir.path()).unwrap_err();
    assert!(matches!(err, DataError::Gzip { .. }), "{err}");
    // Trailing bytes inside the compressed payload are counted exactly.
    let mut long = idx_images(1, 5, 3, 4);
    long.extend_from_slice(&[9; 5]);
    dir.write(name, &gzip(&long));
    let err = load_mnist(dir.path()).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::TrailingBytes {
                offset: 76,
                extra: 5,
                ..
            }
        ),
        "{err}"
    );
    // A truncated payload inside a valid gzip stream.
    dir.write(name, &gzip(&idx_images(1, 5, 3, 4)[..70]));
    let err = load_mnist(dir.path()).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::Truncated {
                expected: 60,
                found: 54,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn mnist_rejects_missing_dir_and_files() {
    let dir = TempDir::new("mnist-missing");
    let gone = dir.path().join("nope");
    let err = load_mnist(&gone).unwrap_err();
    assert!(matches!(err, DataError::NotFound { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&gone.display().to_string()), "{msg}");
    assert!(
        msg.contains("train-images-idx3-ubyte") && msg.contains("t10k-labels-idx1-ubyte"),
        "{msg}"
    );
    let full = mnist_dir([false; 4]);
    std::fs::remove_file(full.path().join("t10k-labels-idx1-ubyte")).unwrap();
    let msg = load_mnist(full.path()).unwrap_err().to_string();
    assert!(
        msg.contains("t10k-labels-idx1-ubyte or t10k-labels-idx1-ubyte.gz"),
        "{msg}"
    );
}

/// A CIFAR-10 record whose label is `label` and whose pixel `k` is `(seed + k) mod 256`.
fn cifar_record(label: u8, seed: usize) -> Vec<u8> {
    let mut r = vec![label];
    r.extend((0..3072).map(|k| ((seed + k) % 256) as u8));
    r
}

const CIFAR_TRAIN: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];

/// A valid CIFAR-10 directory: 2 records per training batch (labels 2b, 2b+1), 3 test records.
fn cifar_dir() -> TempDir {
    let dir = TempDir::new("cifar");
    for (b, name) in CIFAR_TRAIN.iter().enumerate() {
        let mut bytes = cifar_record(2 * b as u8, 10 * b);
        bytes.extend(cifar_record(2 * b as u8 + 1, 10 * b + 1));
        dir.write(name, &bytes);
    }
    let test: Vec<u8> = (0..3)
        .flat_map(|i| cifar_record(9 - i, 100 + i as usize))
        .collect();
    dir.write("test_batch.bin", &test);
    dir
}

#[test]
fn cifar_reads_back_in_file_order() {
    let dir = cifar_dir();
    let split = load_cifar10(dir.path()).unwrap();
    assert_eq!(split.train.labels, (0..10).collect::<Vec<u32>>());
    assert_eq!(split.test.labels, vec![9, 8, 7]);
    assert_eq!(
        (split.train.channels, split.train.height, split.train.width),
        (3, 32, 32)
    );
    // Training sample 7 is record 1 of batch 4 (seed 31); its green plane starts at pixel 1024.
    let img = split.train.image(7).unwrap();
    assert_eq!(img[0], 31.0 / 255.0);
    assert_eq!(img[1024], f32::from(((31 + 1024) % 256) as u8) / 255.0);
    let b = split.test.batch(&[2, 1], &Device::Cpu).unwrap();
    assert_eq!(b.inputs.dims(), &[2, 3, 32, 32]);
    assert_eq!(b.targets.to_vec1::<u32>().unwrap(), vec![7, 8]);
}

#[test]
fn cifar_rejects_truncation_labels_and_missing_files() {
    let dir = cifar_dir();
    let good = std::fs::read(dir.path().join("data_batch_3.bin")).unwrap();
    // Truncated last record.
    let p = dir.write("data_batch_3.bin", &good[..good.len() - 10]);
    let err = load_cifar10(dir.path()).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::Truncated {
                offset: 3073,
                expected: 3073,
                found: 3063,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains(&p.display().to_string()), "{err}");
    // Trailing bytes after the last whole record are a partial record too.
    let mut long = good.clone();
    long.extend_from_slice(&[0; 4]);
    dir.write("data_batch_3.bin", &long);
    let err = load_cifar10(dir.path()).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::Truncated {
                offset: 6146,
                found: 4,
                ..
            }
        ),
        "{err}"
    );
    // Label out of range in the second record.
    let mut bad = good.clone();
    bad[CIFAR10_RECORD_BYTES] = 10;
    dir.write("data_batch_3.bin", &bad);
    let err = load_cifar10(dir.path()).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::LabelOutOfRange {
                offset: 3073,
                label: 10,
                ..
            }
        ),
        "{err}"
    );
    // An empty file.
    dir.write("data_batch_3.bin", &[]);
    assert!(matches!(
        load_cifar10(dir.path()),
        Err(DataError::Empty { .. })
    ));
    // A missing file, then a missing directory.
    std::fs::remove_file(dir.path().join("data_batch_3.bin")).unwrap();
    let msg = load_cifar10(dir.path()).unwrap_err().to_string();
    assert!(
        msg.contains("data_batch_3.bin") && msg.contains("test_batch.bin"),
        "{msg}"
    );
    let gone = dir.path().join("absent");
    let err = load_cifar10(&gone).unwrap_err();
    assert!(matches!(err, DataError::NotFound { .. }));
    assert!(err.to_string().contains(&gone.display().to_string()));
}

#[test]
fn text_reads_back_utf8_and_binary() {
    let dir = TempDir::new("text");
    let utf8 = "Schrödinger's cat 🐈 sleeps. ".repeat(40);
    let binary: Vec<u8> = (0..3000u32).map(|i| (i * 37 % 256) as u8).collect();
    for bytes in [utf8.as_bytes(), &binary[..]] {
        let file = dir.write("corpus.bin", bytes);
        let context = 16;
        let split = load_text(&file, context, 0.2, 11).unwrap();
        assert_eq!(split.split_seed, Some(11));
        // Every window is the file's bytes at its block offset, the target shifted by one.
        for set in [&split.train, &split.test] {
            let mut i = 0;
            for r in set.source_ranges() {
                for s in r.start..r.end - context {
                    let (x, y) = set.window(i).unwrap();
                    assert_eq!(x, &bytes[s..s + context]);
                    assert_eq!(y, &bytes[s + 1..s + context + 1]);
                    i += 1;
                }
            }
            assert_eq!(i, set.len());
        }
        let b = split
            .test
            .batch(&[0, split.test.len() - 1], &Device::Cpu)
            .unwrap();
        assert_eq!(b.inputs.dims(), &[2, context]);
        assert_eq!(b.targets.dims(), &[2, context]);
        // Same seed, same split; another seed, another choice of validation blocks.
        let again = load_text(&file, context, 0.2, 11).unwrap();
        assert_eq!(again.test.source_ranges(), split.test.source_ranges());
        let other = load_text(&file, context, 0.2, 12).unwrap();
        assert_ne!(other.test.source_ranges(), split.test.source_ranges());
    }
}

#[test]
fn text_rejects_missing_and_tiny_files() {
    let dir = TempDir::new("text-bad");
    let gone = dir.path().join("missing.txt");
    let err = load_text(&gone, 8, 0.1, 0).unwrap_err();
    assert!(matches!(err, DataError::NotFound { .. }));
    assert!(err.to_string().contains("missing.txt"), "{err}");
    let tiny = dir.write("tiny.txt", b"hello");
    let err = load_text(&tiny, 8, 0.0, 0).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            DataError::TextTooSmall {
                size: 5,
                context: 8,
                required: 9,
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("tiny.txt") && msg.contains("5 bytes") && msg.contains("context 8"),
        "{msg}"
    );
    let err = load_text(dir.path(), 8, 0.0, 0).unwrap_err();
    assert!(matches!(err, DataError::NotFound { .. }), "{err}");
}
