//! Training augmentation for CIFAR as in the official code (Keras `ImageDataGenerator` with
//! shifts and flips): a random crop of the image padded by 4 zero pixels on every side, and a
//! horizontal flip with probability 1/2. Draws come from a seeded generator, so a resumed run
//! augments exactly as an uninterrupted one.

use rand::Rng;

/// Pixels of padding on every side before the random crop.
pub const PAD: usize = 4;

/// Writes a randomly shifted and possibly mirrored copy of `image` (`[c, h, w]`, row-major)
/// into `out`; pixels shifted in from outside the image are 0.
pub fn crop_and_flip(image: &[f32], shape: [usize; 3], rng: &mut impl Rng, out: &mut Vec<f32>) {
    let [c, h, w] = shape;
    let dy = rng.random_range(0..=2 * PAD) as isize - PAD as isize;
    let dx = rng.random_range(0..=2 * PAD) as isize - PAD as isize;
    let flip = rng.random_bool(0.5);
    for ch in 0..c {
        let plane = &image[ch * h * w..(ch + 1) * h * w];
        for y in 0..h {
            for x in 0..w {
                let sx = if flip { w - 1 - x } else { x } as isize + dx;
                let sy = y as isize + dy;
                let inside = (0..h as isize).contains(&sy) && (0..w as isize).contains(&sx);
                out.push(if inside {
                    plane[sy as usize * w + sx as usize]
                } else {
                    0.0
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn crops_are_shifts_of_the_image_padded_with_zeros() {
        let shape = [2, 5, 6];
        let image: Vec<f32> = (0..60).map(|i| i as f32 + 1.0).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..50 {
            let mut out = Vec::new();
            crop_and_flip(&image, shape, &mut rng, &mut out);
            assert_eq!(out.len(), image.len());
            // Every non-zero pixel comes from the same channel of the original image.
            for (i, &v) in out.iter().enumerate() {
                let ch = i / 30;
                assert!(v == 0.0 || (v as usize - 1) / 30 == ch, "pixel {i} = {v}");
            }
            // Rows stay rows: a row's non-zero pixels are consecutive values of one source row.
            let row: Vec<f32> = out[..6].iter().copied().filter(|v| *v > 0.0).collect();
            for pair in row.windows(2) {
                assert_eq!((pair[0] - pair[1]).abs(), 1.0, "{row:?}");
            }
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_augmentation() {
        let image: Vec<f32> = (0..48).map(|i| i as f32).collect();
        let run = |seed| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut out = Vec::new();
            for _ in 0..4 {
                crop_and_flip(&image, [3, 4, 4], &mut rng, &mut out);
            }
            out
        };
        assert_eq!(run(9), run(9));
        assert_ne!(run(9), run(10));
    }
}
