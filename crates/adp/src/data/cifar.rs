//! Readers for the official binary versions of CIFAR-10 and CIFAR-100 (Krizhevsky, 2009).
//!
//! - CIFAR-10, `cifar-10-batches-bin/`: `data_batch_1.bin` … `data_batch_5.bin` (training) and
//!   `test_batch.bin`, each a sequence of 3073-byte records: one label byte (< 10) then the
//!   32x32 image as three 1024-byte planes (R, G, B), row-major.
//! - CIFAR-100, `cifar-100-binary/`: `train.bin` and `test.bin`, 3074-byte records: the coarse
//!   label (< 20), the fine label (< 100), then the image as above.
//!
//! Every file is checked: its length must be a whole number of records and every label in range;
//! an error names the file and what to do.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};

use super::{Dataset, Split};

/// Pixels of one CIFAR image (3 x 32 x 32).
pub const IMAGE_BYTES: usize = 3 * 32 * 32;

/// Which CIFAR labels to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CifarLabels {
    /// CIFAR-10's 10 classes.
    Ten,
    /// CIFAR-100's 100 fine classes.
    Fine,
    /// CIFAR-100's 20 coarse superclasses.
    Coarse,
}

impl CifarLabels {
    /// Folder of the official binary archive, inside the data directory.
    pub fn folder(self) -> &'static str {
        match self {
            CifarLabels::Ten => "cifar-10-batches-bin",
            CifarLabels::Fine | CifarLabels::Coarse => "cifar-100-binary",
        }
    }

    /// The files of one split, relative to [`folder`](Self::folder).
    pub fn files(self, split: Split) -> Vec<String> {
        match (self, split) {
            (CifarLabels::Ten, Split::Train) => {
                (1..=5).map(|i| format!("data_batch_{i}.bin")).collect()
            }
            (CifarLabels::Ten, Split::Test) => vec!["test_batch.bin".into()],
            (_, Split::Train) => vec!["train.bin".into()],
            (_, Split::Test) => vec!["test.bin".into()],
        }
    }

    /// Number of classes.
    pub fn num_classes(self) -> usize {
        match self {
            CifarLabels::Ten => 10,
            CifarLabels::Fine => 100,
            CifarLabels::Coarse => 20,
        }
    }

    /// Label bytes before the image in each record.
    fn label_bytes(self) -> usize {
        match self {
            CifarLabels::Ten => 1,
            CifarLabels::Fine | CifarLabels::Coarse => 2,
        }
    }

    /// Which of the label bytes holds the label.
    fn label_offset(self) -> usize {
        match self {
            CifarLabels::Ten | CifarLabels::Coarse => 0,
            CifarLabels::Fine => 1,
        }
    }
}

/// Parses the records of one file into pixels in `[0, 1]` and labels, appending to `pixels` and
/// `labels`.
pub fn parse_records(
    bytes: &[u8],
    labels_kind: CifarLabels,
    pixels: &mut Vec<f32>,
    labels: &mut Vec<u8>,
) -> Result<()> {
    let record = labels_kind.label_bytes() + IMAGE_BYTES;
    ensure!(!bytes.is_empty(), "the file is empty");
    ensure!(
        bytes.len().is_multiple_of(record),
        "{} bytes is not a whole number of {record}-byte records (truncated or not this data set)",
        bytes.len()
    );
    for (i, r) in bytes.chunks_exact(record).enumerate() {
        let label = r[labels_kind.label_offset()];
        ensure!(
            (label as usize) < labels_kind.num_classes(),
            "record {i} has label {label}, but there are only {} classes (corrupt file, or CIFAR-100 read as CIFAR-10)",
            labels_kind.num_classes()
        );
        labels.push(label);
        pixels.extend(
            r[labels_kind.label_bytes()..]
                .iter()
                .map(|&p| p as f32 / 255.0),
        );
    }
    Ok(())
}

/// Loads one split of CIFAR from `dir` (which holds the archive's folder).
pub fn load_cifar(
    dir: &Path,
    labels_kind: CifarLabels,
    split: Split,
    fetch_name: &str,
) -> Result<Dataset> {
    let folder = dir.join(labels_kind.folder());
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for name in labels_kind.files(split) {
        let path: PathBuf = folder.join(&name);
        ensure!(
            path.exists(),
            "{} is missing; run `adp data fetch {fetch_name} --dir {}`, or unpack the official binary archive there (it creates {}/)",
            path.display(),
            dir.display(),
            labels_kind.folder()
        );
        // The largest official file, CIFAR-100's train.bin, is 50 000 records of 3074 bytes.
        let bytes = crate::io::read_regular(&path, 50_000 * (2 + IMAGE_BYTES as u64))?;
        parse_records(&bytes, labels_kind, &mut pixels, &mut labels).with_context(|| {
            format!(
                "{} is not a valid CIFAR binary file; delete it and run `adp data fetch {fetch_name}` again",
                path.display()
            )
        })?;
    }
    Dataset::new(pixels, labels, [3, 32, 32], labels_kind.num_classes())
}

/// Writes `n` records of CIFAR layout `labels_kind` with labels `label(i)` and pixels
/// `pixel(i, j)`: the inverse of [`parse_records`], for tests and for converting data sets.
pub fn encode_records(
    n: usize,
    labels_kind: CifarLabels,
    label: impl Fn(usize) -> u8,
    pixel: impl Fn(usize, usize) -> u8,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * (labels_kind.label_bytes() + IMAGE_BYTES));
    for i in 0..n {
        match labels_kind {
            CifarLabels::Ten => out.push(label(i)),
            // Fine label f, coarse label f / 5 (the official mapping differs; tests need only a valid one).
            CifarLabels::Fine | CifarLabels::Coarse => out.extend([label(i) / 5, label(i)]),
        }
        out.extend((0..IMAGE_BYTES).map(|j| pixel(i, j)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, kind: CifarLabels, per_file: usize) {
        let folder = dir.join(kind.folder());
        std::fs::create_dir_all(&folder).unwrap();
        for split in [Split::Train, Split::Test] {
            for name in kind.files(split) {
                let bytes = encode_records(
                    per_file,
                    kind,
                    |i| (i * 7 % kind.num_classes().min(100)) as u8,
                    |i, j| ((i + j) % 256) as u8,
                );
                std::fs::write(folder.join(name), bytes).unwrap();
            }
        }
    }

    #[test]
    fn reads_cifar10_layout_with_planes_in_order() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), CifarLabels::Ten, 4);
        let train = load_cifar(dir.path(), CifarLabels::Ten, Split::Train, "cifar10").unwrap();
        assert_eq!(
            (train.len(), train.shape, train.num_classes),
            (20, [3, 32, 32], 10)
        );
        let test = load_cifar(dir.path(), CifarLabels::Ten, Split::Test, "cifar10").unwrap();
        assert_eq!(test.labels, vec![0, 7, 4, 1]);
        // Image 1, green plane, first pixel: byte (1 + 1024) % 256.
        assert_eq!(test.images[IMAGE_BYTES + 1024], (1025 % 256) as f32 / 255.0);
    }

    #[test]
    fn reads_cifar100_fine_and_coarse_labels() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), CifarLabels::Fine, 30);
        let fine = load_cifar(dir.path(), CifarLabels::Fine, Split::Test, "cifar100").unwrap();
        let coarse = load_cifar(dir.path(), CifarLabels::Coarse, Split::Test, "cifar100").unwrap();
        assert_eq!((fine.num_classes, coarse.num_classes), (100, 20));
        assert_eq!(fine.labels[15], (15 * 7 % 100) as u8);
        assert_eq!(coarse.labels[15], fine.labels[15] / 5);
    }

    #[test]
    fn truncated_missing_and_mislabelled_files_name_the_file_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let msg = format!(
            "{:#}",
            load_cifar(dir.path(), CifarLabels::Ten, Split::Test, "cifar10").unwrap_err()
        );
        assert!(
            msg.contains("test_batch.bin") && msg.contains("adp data fetch cifar10"),
            "{msg}"
        );
        write(dir.path(), CifarLabels::Ten, 3);
        let path = dir.path().join("cifar-10-batches-bin/test_batch.bin");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        let msg = format!(
            "{:#}",
            load_cifar(dir.path(), CifarLabels::Ten, Split::Test, "cifar10").unwrap_err()
        );
        assert!(
            msg.contains("test_batch.bin") && msg.contains("truncated"),
            "{msg}"
        );
        let mut bad = bytes.clone();
        bad[0] = 42;
        std::fs::write(&path, &bad).unwrap();
        let msg = format!(
            "{:#}",
            load_cifar(dir.path(), CifarLabels::Ten, Split::Test, "cifar10").unwrap_err()
        );
        assert!(msg.contains("label 42"), "{msg}");
    }
}
