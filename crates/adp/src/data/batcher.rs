//! Mini-batches as tensors, with a shuffle that depends only on `(seed, epoch)` so that a resumed
//! run sees exactly the batches an uninterrupted one would.

use burn::prelude::*;
use burn::tensor::TensorData;
use rand::SeedableRng;
use rand::seq::SliceRandom;

use super::Dataset;

/// One mini-batch on a device.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[batch, channels, height, width]`, pixels in `[0, 1]`.
    pub images: Tensor<4>,
    /// `[batch]` class indices.
    pub labels: Tensor<1, Int>,
}

/// Splits a [`Dataset`] into mini-batches.
#[derive(Debug, Clone)]
pub struct Batcher<'a> {
    data: &'a Dataset,
    batch_size: usize,
    order: Vec<usize>,
    /// Seed of the random crops and flips, when augmenting.
    augment: Option<u64>,
}

impl<'a> Batcher<'a> {
    /// Batches in data-set order (evaluation).
    pub fn sequential(data: &'a Dataset, batch_size: usize) -> Self {
        Self {
            data,
            batch_size: batch_size.max(1),
            order: (0..data.len()).collect(),
            augment: None,
        }
    }

    /// Batches in an order shuffled by `(seed, epoch)` (training).
    pub fn shuffled(data: &'a Dataset, batch_size: usize, seed: u64, epoch: usize) -> Self {
        let mut order: Vec<usize> = (0..data.len()).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(
            seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        order.shuffle(&mut rng);
        Self {
            data,
            batch_size: batch_size.max(1),
            order,
            augment: None,
        }
    }

    /// Augments every batch with random crops and flips ([`super::augment`]) drawn from
    /// `(seed, epoch, batch index)`, so that each batch is reproducible on its own.
    pub fn augmented(mut self, seed: u64, epoch: usize) -> Self {
        self.augment =
            Some(seed ^ 0xA5A5_5A5A ^ (epoch as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
        self
    }

    /// Number of batches (the last one may be smaller).
    pub fn num_batches(&self) -> usize {
        self.order.len().div_ceil(self.batch_size)
    }

    /// Indices into the data set of batch `i`.
    pub fn indices(&self, i: usize) -> &[usize] {
        let start = i * self.batch_size;
        &self.order[start..(start + self.batch_size).min(self.order.len())]
    }

    /// Materialises batch `i` on `device`.
    pub fn batch(&self, i: usize, device: &Device) -> Batch {
        let mut rng = self
            .augment
            .map(|seed| rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(i as u64)));
        gather(self.data, self.indices(i), rng.as_mut(), device)
    }

    /// Iterates over all batches in order.
    pub fn iter<'b>(&'b self, device: &'b Device) -> impl Iterator<Item = Batch> + 'b {
        (0..self.num_batches()).map(move |i| self.batch(i, device))
    }
}

/// Builds a batch from the examples at `indices`, augmenting each image when `augment` is given.
pub fn gather(
    data: &Dataset,
    indices: &[usize],
    mut augment: Option<&mut rand::rngs::StdRng>,
    device: &Device,
) -> Batch {
    let per = data.image_len();
    let mut pixels = Vec::with_capacity(indices.len() * per);
    let mut labels = Vec::with_capacity(indices.len());
    for &i in indices {
        let image = &data.images[i * per..(i + 1) * per];
        match augment.as_deref_mut() {
            Some(rng) => super::augment::crop_and_flip(image, data.shape, rng, &mut pixels),
            None => pixels.extend_from_slice(image),
        }
        labels.push(data.labels[i] as i64);
    }
    let [c, h, w] = data.shape;
    let n = indices.len();
    Batch {
        images: Tensor::from_data(TensorData::new(pixels, [n, c, h, w]), device),
        labels: Tensor::from_data(TensorData::new(labels, [n]), device),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(n: usize) -> Dataset {
        let images = (0..n).map(|i| i as f32 / n as f32).collect();
        let labels = (0..n).map(|i| (i % 10) as u8).collect();
        Dataset::new(images, labels, [1, 1, 1], 10).unwrap()
    }

    #[test]
    fn shuffle_is_a_seeded_permutation() {
        let ds = toy(103);
        let a = Batcher::shuffled(&ds, 10, 7, 3);
        let b = Batcher::shuffled(&ds, 10, 7, 3);
        let c = Batcher::shuffled(&ds, 10, 7, 4);
        assert_eq!(a.order, b.order);
        assert_ne!(a.order, c.order);
        let mut sorted = a.order.clone();
        sorted.sort();
        assert_eq!(sorted, (0..103).collect::<Vec<_>>());
        assert_eq!(a.num_batches(), 11);
        assert_eq!(a.indices(10).len(), 3);
    }

    #[test]
    fn augmented_batches_are_reproducible_and_differ_from_the_originals() {
        let images: Vec<f32> = (0..8 * 3 * 8 * 8).map(|i| (i % 97) as f32 / 97.0).collect();
        let ds = Dataset::new(images, (0..8).collect(), [3, 8, 8], 10).unwrap();
        let device = crate::device::cpu();
        let plain = Batcher::shuffled(&ds, 4, 1, 0);
        let aug = Batcher::shuffled(&ds, 4, 1, 0).augmented(1, 0);
        let px = |b: Batch| b.images.into_data().try_into_vec_as::<f32>().unwrap();
        assert_eq!(px(aug.batch(1, &device)), px(aug.batch(1, &device)));
        assert_ne!(px(aug.batch(1, &device)), px(plain.batch(1, &device)));
        assert_eq!(aug.batch(1, &device).images.dims(), [4, 3, 8, 8]);
    }

    #[test]
    fn batches_carry_the_right_pixels_and_labels() {
        let ds = toy(20);
        let device = crate::device::cpu();
        let batch = Batcher::sequential(&ds, 8).batch(1, &device);
        assert_eq!(batch.images.dims(), [8, 1, 1, 1]);
        let labels: Vec<i64> = batch.labels.into_data().try_into_vec_as::<i64>().unwrap();
        assert_eq!(labels, vec![8, 9, 0, 1, 2, 3, 4, 5]);
    }
}
