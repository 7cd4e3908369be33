//! A small, learnable data set in the exact on-disk layout of MNIST (four IDX files), for tests,
//! demos and smoke runs where the real data is not wanted: class c is a bright 6x6 square at one
//! of ten fixed places on a noisy 28x28 background.

use std::path::Path;

use anyhow::Result;
use rand::{Rng, SeedableRng};

use super::IDX_FILES;
use super::idx::encode_idx;

/// Top-left corner of the square of class `c`.
fn corner(c: usize) -> (usize, usize) {
    (2 + (c / 4) * 9, 2 + (c % 4) * 6)
}

/// `n` images (row-major bytes) and labels drawn with `rng`.
fn examples(n: usize, rng: &mut impl Rng) -> (Vec<u8>, Vec<u8>) {
    let mut pixels = Vec::with_capacity(n * 784);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let c = i % 10;
        let (r0, c0) = corner(c);
        for r in 0..28 {
            for col in 0..28 {
                let inside = (r0..r0 + 6).contains(&r) && (c0..c0 + 6).contains(&col);
                let base: u8 = if inside { 200 } else { 0 };
                pixels.push(base.saturating_add(rng.random_range(0..56)));
            }
        }
        labels.push(c as u8);
    }
    (pixels, labels)
}

/// Writes `n_train` training and `n_test` test examples into `dir` as the four MNIST IDX files.
pub fn write_synthetic_mnist(dir: &Path, n_train: usize, n_test: usize, seed: u64) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let splits = [(n_train, &IDX_FILES[..2]), (n_test, &IDX_FILES[2..])];
    for (n, names) in splits {
        let (pixels, labels) = examples(n, &mut rng);
        let n = n as u32;
        crate::io::atomic_write(&dir.join(names[0]), &encode_idx(&[n, 28, 28], &pixels))?;
        crate::io::atomic_write(&dir.join(names[1]), &encode_idx(&[n], &labels))?;
    }
    Ok(())
}
