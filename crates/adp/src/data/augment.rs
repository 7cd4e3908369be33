//! Training augmentation as in the official code, for CIFAR and MNIST alike (Keras
//! `ImageDataGenerator(width_shift_range=0.1, height_shift_range=0.1, horizontal_flip=True)`):
//! a random shift of up to a tenth of the image side in each direction, and a horizontal flip
//! with probability 1/2. Draws come from a seeded generator, so a resumed run augments exactly
//! as an uninterrupted one.
//!
//! Deviation: Keras draws a real-valued shift and interpolates; this draws whole pixels up to
//! ⌈0.1·side⌉ (4 on CIFAR's 32, 3 on MNIST's 28) and fills with 0 instead of the nearest pixel
//! (the same on MNIST's black border).

use rand::Rng;

/// The largest shift, as a fraction of the image side.
pub const SHIFT_FRACTION: f64 = 0.1;

/// The largest shift in pixels along a side of `side` pixels: ⌈0.1·side⌉.
pub fn max_shift(side: usize) -> usize {
    (side as f64 * SHIFT_FRACTION).ceil() as usize
}

/// Writes a randomly shifted and possibly mirrored copy of `image` (`[c, h, w]`, row-major)
/// into `out`; pixels shifted in from outside the image are 0.
pub fn crop_and_flip(image: &[f32], shape: [usize; 3], rng: &mut impl Rng, out: &mut Vec<f32>) {
    let [c, h, w] = shape;
    let (py, px) = (max_shift(h), max_shift(w));
    let dy = rng.random_range(0..=2 * py) as isize - py as isize;
    let dx = rng.random_range(0..=2 * px) as isize - px as isize;
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
    fn shifts_reach_a_tenth_of_the_side_and_no_further() {
        assert_eq!((max_shift(32), max_shift(28)), (4, 3));
        // A single lit pixel in the middle of a 28×28 image lands at most 3 pixels away, and
        // every offset in -3..=3 occurs.
        let mut image = vec![0f32; 28 * 28];
        image[14 * 28 + 14] = 1.0;
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut rows = std::collections::BTreeSet::new();
        for _ in 0..400 {
            let mut out = Vec::new();
            crop_and_flip(&image, [1, 28, 28], &mut rng, &mut out);
            let at = out.iter().position(|&v| v == 1.0).unwrap();
            rows.insert(at as isize / 28 - 14);
        }
        assert_eq!(
            rows.into_iter().collect::<Vec<_>>(),
            (-3..=3).collect::<Vec<_>>()
        );
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
