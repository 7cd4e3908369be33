//! Data sets, their on-disk formats and mini-batching.
//!
//! Pixels are kept in `[0, 1]` everywhere: any normalisation lives inside the model, so attack
//! budgets (ε) and clipping are always in pixel space.

pub mod augment;
pub mod batcher;
pub mod cifar;
pub mod fetch;
pub mod idx;
pub mod synthetic;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use serde::{Deserialize, Serialize};

pub use batcher::{Batch, Batcher};

/// The data sets `adp` knows how to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// MNIST handwritten digits, 1x28x28, 10 classes.
    Mnist,
    /// Fashion-MNIST, 1x28x28, 10 classes, same IDX layout as MNIST.
    FashionMnist,
    /// CIFAR-10, 3x32x32, 10 classes (official binary version).
    Cifar10,
    /// CIFAR-100 with its 100 fine labels (official binary version).
    Cifar100,
    /// CIFAR-100 with its 20 coarse labels.
    Cifar100Coarse,
}

impl DatasetKind {
    /// Name used on the command line and in directory names.
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Mnist => "mnist",
            DatasetKind::FashionMnist => "fashion-mnist",
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::Cifar100 => "cifar100",
            DatasetKind::Cifar100Coarse => "cifar100-coarse",
        }
    }

    /// Default directory under which `adp data fetch` stores this data set (both CIFAR-100
    /// label sets share one copy of the files).
    pub fn default_dir(self) -> PathBuf {
        let name = match self {
            DatasetKind::Cifar100Coarse => DatasetKind::Cifar100.name(),
            other => other.name(),
        };
        PathBuf::from("data").join(name)
    }

    /// The CIFAR label set, for the CIFAR data sets.
    pub fn cifar(self) -> Option<cifar::CifarLabels> {
        match self {
            DatasetKind::Mnist | DatasetKind::FashionMnist => None,
            DatasetKind::Cifar10 => Some(cifar::CifarLabels::Ten),
            DatasetKind::Cifar100 => Some(cifar::CifarLabels::Fine),
            DatasetKind::Cifar100Coarse => Some(cifar::CifarLabels::Coarse),
        }
    }

    /// Number of classes L.
    pub fn num_classes(self) -> usize {
        self.cifar().map_or(10, |c| c.num_classes())
    }

    /// Shape `[channels, height, width]` of one image.
    pub fn input_shape(self) -> [usize; 3] {
        match self.cifar() {
            None => [1, 28, 28],
            Some(_) => [3, 32, 32],
        }
    }
}

/// Loads one split of any supported data set from `dir`, validating every file.
pub fn load_dataset(dir: &Path, kind: DatasetKind, split: Split) -> Result<Dataset> {
    match kind.cifar() {
        None => load_idx_dataset(dir, kind, split),
        Some(labels) => cifar::load_cifar(dir, labels, split, kind.name()),
    }
}

/// Which half of a data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// The training set.
    Train,
    /// The test set (never used for model selection).
    Test,
}

/// An in-memory image classification data set with pixels in `[0, 1]`, NCHW layout.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// `len * channels * height * width` pixels.
    pub images: Vec<f32>,
    /// One label per image, each `< num_classes`.
    pub labels: Vec<u8>,
    /// `[channels, height, width]`.
    pub shape: [usize; 3],
    /// Number of classes L.
    pub num_classes: usize,
}

impl Dataset {
    /// Builds a data set after checking that sizes, labels and pixel values are consistent.
    pub fn new(
        images: Vec<f32>,
        labels: Vec<u8>,
        shape: [usize; 3],
        num_classes: usize,
    ) -> Result<Self> {
        let per = shape.iter().product::<usize>();
        ensure!(per > 0, "image shape {shape:?} has no pixels");
        ensure!(!labels.is_empty(), "the data set is empty");
        ensure!(
            images.len() == labels.len() * per,
            "{} pixels do not make {} images of shape {shape:?}",
            images.len(),
            labels.len()
        );
        if let Some(bad) = labels.iter().find(|&&l| l as usize >= num_classes) {
            anyhow::bail!("label {bad} is out of range for {num_classes} classes");
        }
        if let Some(i) = images.iter().position(|p| !p.is_finite()) {
            anyhow::bail!(
                "pixel {i} is not finite ({}); the data is corrupt",
                images[i]
            );
        }
        Ok(Self {
            images,
            labels,
            shape,
            num_classes,
        })
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the data set has no examples (never true for a validated data set).
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels per image.
    pub fn image_len(&self) -> usize {
        self.shape.iter().product()
    }

    /// The first `n` examples (all of them when `n >= len`).
    pub fn take(&self, n: usize) -> Dataset {
        let n = n.min(self.len());
        Dataset {
            images: self.images[..n * self.image_len()].to_vec(),
            labels: self.labels[..n].to_vec(),
            shape: self.shape,
            num_classes: self.num_classes,
        }
    }

    /// The examples `range` (clamped to the data set).
    pub fn slice(&self, range: std::ops::Range<usize>) -> Dataset {
        let end = range.end.min(self.len());
        let start = range.start.min(end);
        let per = self.image_len();
        Dataset {
            images: self.images[start * per..end * per].to_vec(),
            labels: self.labels[start..end].to_vec(),
            shape: self.shape,
            num_classes: self.num_classes,
        }
    }

    /// The constants a member normalises its input with, `(mean, std)`: per-channel mean and
    /// standard deviation, or the official code's per-pixel mean (`[c·h·w]`) with a std of 1.
    pub fn normalization(&self, norm: Normalization) -> (Vec<f32>, Vec<f32>) {
        match norm {
            Normalization::MeanStd => self.channel_stats(),
            Normalization::Mean => {
                let mut sum = vec![0f64; self.image_len()];
                for img in self.images.chunks(self.image_len()) {
                    sum.iter_mut().zip(img).for_each(|(s, &p)| *s += p as f64);
                }
                let n = self.len().max(1) as f64;
                let mean = sum.iter().map(|s| (s / n) as f32).collect();
                (mean, vec![1.0; self.shape[0]])
            }
        }
    }

    /// Per-channel mean and standard deviation of the pixels, used to normalise inside the model.
    pub fn channel_stats(&self) -> (Vec<f32>, Vec<f32>) {
        let [c, h, w] = self.shape;
        let plane = h * w;
        let mut mean = vec![0f64; c];
        let mut sq = vec![0f64; c];
        for img in self.images.chunks(c * plane) {
            for ch in 0..c {
                for &p in &img[ch * plane..(ch + 1) * plane] {
                    mean[ch] += p as f64;
                    sq[ch] += (p as f64) * (p as f64);
                }
            }
        }
        let n = (self.len() * plane) as f64;
        let mean: Vec<f64> = mean.iter().map(|m| m / n).collect();
        let std = sq
            .iter()
            .zip(&mean)
            .map(|(s, m)| ((s / n - m * m).max(1e-12)).sqrt() as f32)
            .collect();
        (mean.iter().map(|&m| m as f32).collect(), std)
    }
}

/// How a member normalises its `[0, 1]` pixels before its first layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Normalization {
    /// (x − μ_c) / σ_c with the training set's per-channel mean and standard deviation.
    #[default]
    MeanStd,
    /// x − μ with the training set's per-pixel mean image and no division, as the official
    /// code does (`x_train_mean` subtracted after dividing by 255).
    Mean,
}

/// File names of the four IDX files of (Fashion-)MNIST; each may also carry a `.gz` suffix.
pub const IDX_FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// Finds `name` or `name.gz` in `dir`.
fn locate(dir: &Path, name: &str, kind: DatasetKind) -> Result<PathBuf> {
    let plain = dir.join(name);
    if plain.exists() {
        return Ok(plain);
    }
    let gz = dir.join(format!("{name}.gz"));
    if gz.exists() {
        return Ok(gz);
    }
    anyhow::bail!(
        "{} is missing (nor is there a .gz); run `adp data fetch {} --dir {}`",
        plain.display(),
        kind.name(),
        dir.display()
    )
}

/// Loads one split of MNIST or Fashion-MNIST from `dir`, validating every file.
pub fn load_idx_dataset(dir: &Path, kind: DatasetKind, split: Split) -> Result<Dataset> {
    let (img_name, lbl_name) = match split {
        Split::Train => (IDX_FILES[0], IDX_FILES[1]),
        Split::Test => (IDX_FILES[2], IDX_FILES[3]),
    };
    let img_path = locate(dir, img_name, kind)?;
    let lbl_path = locate(dir, lbl_name, kind)?;
    let images = idx::read_idx_expecting(&img_path, &[28, 28])?;
    let labels = idx::read_idx_expecting(&lbl_path, &[])?;
    let (n, h, w) = (images.dims[0], images.dims[1], images.dims[2]);
    let hint = || {
        format!(
            "delete {} and run `adp data fetch {}` again",
            dir.display(),
            kind.name()
        )
    };
    ensure!(
        (h, w) == (28, 28),
        "{} holds {h}x{w} images, expected 28x28; {}",
        img_path.display(),
        hint()
    );
    ensure!(
        labels.dims[0] == n,
        "{} holds {} labels but {} holds {n} images; {}",
        lbl_path.display(),
        labels.dims[0],
        img_path.display(),
        hint()
    );
    let pixels = images.data.iter().map(|&p| p as f32 / 255.0).collect();
    Dataset::new(pixels, labels.data, [1, h, w], kind.num_classes())
        .with_context(|| format!("{} is corrupt; {}", lbl_path.display(), hint()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::data::idx::encode_idx;

    /// Writes a tiny but well-formed MNIST-layout directory with `n` examples per split.
    pub(crate) fn write_fake_mnist(dir: &Path, n: usize) {
        crate::data::synthetic::write_synthetic_mnist(dir, n, n, 0).unwrap();
    }

    #[test]
    fn loads_a_well_formed_directory() {
        let dir = tempfile::tempdir().unwrap();
        write_fake_mnist(dir.path(), 12);
        let ds = load_idx_dataset(dir.path(), DatasetKind::Mnist, Split::Test).unwrap();
        assert_eq!(ds.len(), 12);
        assert_eq!(ds.shape, [1, 28, 28]);
        assert!(ds.images.iter().all(|p| (0.0..=1.0).contains(p)));
        assert_eq!(ds.labels[11], 1);
        assert!(ds.images.iter().any(|&p| p > 0.75));
    }

    #[test]
    fn missing_file_names_the_file_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_idx_dataset(dir.path(), DatasetKind::Mnist, Split::Train).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("train-images-idx3-ubyte"), "{msg}");
        assert!(msg.contains("adp data fetch mnist"), "{msg}");
    }

    #[test]
    fn mismatched_counts_and_bad_labels_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        write_fake_mnist(dir.path(), 5);
        std::fs::write(
            dir.path().join("t10k-labels-idx1-ubyte"),
            encode_idx(&[4], &[0, 1, 2, 3]),
        )
        .unwrap();
        let msg = format!(
            "{:#}",
            load_idx_dataset(dir.path(), DatasetKind::Mnist, Split::Test).unwrap_err()
        );
        assert!(msg.contains("4 labels"), "{msg}");
        std::fs::write(
            dir.path().join("t10k-labels-idx1-ubyte"),
            encode_idx(&[5], &[0, 1, 2, 3, 42]),
        )
        .unwrap();
        let msg = format!(
            "{:#}",
            load_idx_dataset(dir.path(), DatasetKind::Mnist, Split::Test).unwrap_err()
        );
        assert!(msg.contains("label 42"), "{msg}");
    }

    #[test]
    fn nan_pixels_and_empty_sets_are_rejected() {
        assert!(Dataset::new(vec![f32::NAN], vec![0], [1, 1, 1], 10).is_err());
        assert!(Dataset::new(vec![], vec![], [1, 1, 1], 10).is_err());
    }

    #[test]
    fn the_official_normalisation_is_the_per_pixel_mean_image_and_no_std() {
        // Two 1×1×2 images: the per-pixel means are (0.2 + 0.6)/2 and (0.4 + 1.0)/2.
        let ds = Dataset::new(vec![0.2, 0.4, 0.6, 1.0], vec![0, 1], [1, 1, 2], 10).unwrap();
        let (m, s) = ds.normalization(Normalization::Mean);
        assert_eq!(m.len(), 2);
        assert!(
            (m[0] - 0.4).abs() < 1e-6 && (m[1] - 0.7).abs() < 1e-6,
            "{m:?}"
        );
        assert_eq!(s, vec![1.0]);
        assert_eq!(ds.normalization(Normalization::MeanStd), ds.channel_stats());
    }

    #[test]
    fn channel_stats_are_exact_on_a_constant_image() {
        let ds = Dataset::new(vec![0.25; 8], vec![0, 1], [1, 2, 2], 10).unwrap();
        let (m, s) = ds.channel_stats();
        assert!((m[0] - 0.25).abs() < 1e-6);
        assert!(s[0] < 1e-5);
    }
}
