//! Stride-1 convolutions whose output is as large as their input (ResNet-20's 3×3 layers with
//! padding 1, and the input gradient of each, [`Geometry::transposed`]), read in place with
//! masked AVX-512 loads: no padded copy, no computed-and-dropped positions.
//!
//! With the output as large as the input, output position `p = h·W + w` of kernel tap `(i, j)`
//! reads input position `p + (i·d_h − top)·W + j·d_w − left` of the same plane, whenever that
//! lands inside the image:
//!
//! ```text
//! y[o][p] = b[o] + Σ_c Σ_(i,j) W[o][c][i][j] · x[c][p + (i·d_h − top)·W + j·d_w − left]
//! ```
//!
//! Each tap is a shifted view of the image's own NCHW planes; the lanes that would read the
//! zero padding (or the neighbouring row, or past the plane) are masked off, per 16 positions
//! and tap ([`Same::masks`]), and a masked load reads nothing there. A register tile holds
//! `MO` output channels × `NQ` vectors of 16 positions of one image, as in [`super::direct`],
//! and its sums are stored straight into the NCHW output with the bias.
//!
//! Against [`super::direct`]'s padded planes (`W + k_w − 1` wide, rounded up to whole tiles
//! per image), this computes no positions past the rows (`2/W` of the work for a 3×3 layer)
//! and none past the image but its last vector, and it copies nothing in or out.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use crate::buffer::written;

use super::direct::pack;
use super::{Geometry, sum_over_chunks};

/// Output channels of a register tile (8 × 2 vectors: 16 of the 32 registers accumulate).
const MO: usize = 8;
/// Vectors of 16 positions of a tile, and of a one-channel tile (for fewer than 4 output
/// channels: the input gradient of a first layer on images of 1 to 3 channels).
const NQ: usize = 2;
const NQ_SINGLE: usize = 4;
const LANES: usize = 16;
/// Output channels of a weight-gradient tile, with `R` = 6 or 3 rows (input channel, tap): 24 or
/// 12 accumulators.
const GRAD_MO: usize = 4;

/// The layout of one in-place convolution.
pub(super) struct Same {
    c_in: usize,
    c_out: usize,
    /// Positions per plane, `H · W`.
    hw: usize,
    /// Offset of each kernel tap in the plane, `(i·d_h − top)·W + j·d_w − left`, in the
    /// weight's order.
    taps: Vec<isize>,
    /// `masks[v·taps + t]`: the lanes of vector `v` of a plane whose tap `t` lands inside the
    /// image; zero for the vectors past the plane that round up the last tile.
    masks: Vec<u16>,
    /// Output channels per tile: [`MO`], or 1 for fewer than half of them (with [`NQ_SINGLE`]
    /// vectors of positions instead of [`NQ`]).
    mo: usize,
    /// Tiles per plane.
    tiles: usize,
}

impl Same {
    /// The plan of `g`, or `None` where the output is not as large as the input, the stride is
    /// not 1, or the CPU lacks AVX-512F.
    pub(super) fn of(g: &Geometry) -> Option<Self> {
        let same = g.stride == [1, 1] && g.out_h == g.h && g.out_w == g.w;
        if !same || !std::arch::is_x86_feature_detected!("avx512f") {
            return None;
        }
        let (mo, nq) = if g.c_out >= MO / 2 {
            (MO, NQ)
        } else {
            (1, NQ_SINGLE)
        };
        let hw = g.h * g.w;
        let tiles = hw.div_ceil(nq * LANES);
        let shifts: Vec<(isize, isize)> = (0..g.kh)
            .flat_map(|i| (0..g.kw).map(move |j| (i, j)))
            .map(|(i, j)| {
                let di = (i * g.dilation[0]) as isize - g.pad[0] as isize;
                let dj = (j * g.dilation[1]) as isize - g.pad[1] as isize;
                (di, dj)
            })
            .collect();
        // Tap `t` reads inside the image at rows `h` with `0 ≤ h + di < H` and columns `w` with
        // `0 ≤ w + dj < W`: set those positions' bits, row by row.
        let taps = shifts.len();
        let mut masks = vec![0u16; tiles * nq * taps];
        let within = |d: isize, size: usize| {
            (-d).max(0) as usize..(size as isize - d).clamp(0, size as isize) as usize
        };
        for (t, &(di, dj)) in shifts.iter().enumerate() {
            for h in within(di, g.h) {
                for p in within(dj, g.w).map(|w| h * g.w + w) {
                    masks[p / LANES * taps + t] |= 1 << (p % LANES);
                }
            }
        }
        Some(Self {
            c_in: g.c_in,
            c_out: g.c_out,
            hw,
            taps: shifts
                .iter()
                .map(|&(di, dj)| di * g.w as isize + dj)
                .collect(),
            masks,
            mo,
            tiles,
        })
    }

    /// The convolution of the `[N, C_in, H, W]` images `xs` with the weights `ws`, plus `bias`:
    /// `[N, C_out, H, W]`, in parallel over images.
    pub(super) fn convolve(&self, xs: &[f32], ws: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
        assert_eq!(ws.len(), self.c_out * self.c_in * self.taps.len());
        let packed = pack(ws, self.c_in, self.c_out, self.taps.len(), self.mo);
        let bias: Vec<f32> = match bias {
            Some(b) => b.to_vec(),
            None => vec![0.0; self.c_out],
        };
        let (image, output) = (self.c_in * self.hw, self.c_out * self.hw);
        written(xs.len() / image * output, output, |b, y| {
            let x = &xs[b * image..][..image];
            // SAFETY: `of` checked that the CPU has AVX-512F.
            unsafe { image_avx512(self, x, &packed, &bias, y) }
        })
    }

    /// `∂L/∂W` `[C_out, C_in, k_h, k_w]` from the images `xs` and the output gradient `dys`,
    /// both read in place, or `None` where `C_out` is not a multiple of [`GRAD_MO`] or
    /// `C_in · taps` of 3:
    ///
    /// ```text
    /// ∂W[o][c][t] = Σ_image Σ_p ∂y[o][p] · x[c][p + offset(t)]
    /// ```
    ///
    /// over the positions `p` whose `p + offset(t)` lies inside the image.
    ///
    /// The images are summed in fixed chunks ([`sum_over_chunks`]), so the result does not
    /// depend on the number of threads.
    pub(super) fn weight_grad(&self, xs: &[f32], dys: &[f32]) -> Option<Vec<f32>> {
        let rows = self.c_in * self.taps.len();
        if !self.c_out.is_multiple_of(GRAD_MO) || !rows.is_multiple_of(3) {
            return None;
        }
        let (image, grad) = (self.c_in * self.hw, self.c_out * self.hw);
        let len = self.c_out * rows;
        Some(sum_over_chunks(
            (xs, image),
            (dys, grad),
            len,
            |xc, dyc, dw| {
                // SAFETY: `of` checked that the CPU has AVX-512F.
                unsafe { grad_avx512(self, xc, dyc, dw) }
            },
        ))
    }
}

/// [`grad_chunk`] with 6 rows per tile where they divide `C_in · taps`, else 3.
///
/// # Safety
///
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn grad_avx512(s: &Same, xc: &[f32], dyc: &[f32], dw: &mut [f32]) {
    unsafe {
        if (s.c_in * s.taps.len()).is_multiple_of(6) {
            grad_chunk::<6>(s, xc, dyc, dw)
        } else {
            grad_chunk::<3>(s, xc, dyc, dw)
        }
    }
}

/// Adds the weight gradient of a chunk of images to `dw` `[C_out, C_in · taps]`. A tile holds
/// [`GRAD_MO`] output channels × `R` rows (input channel, tap) as 16-lane sums over the positions
/// of all the chunk's images: per vector of positions, `GRAD_MO` loads of the output gradient and
/// `R` masked loads of the shifted input. Each sum is reduced across its lanes once per chunk.
///
/// # Safety
///
/// The CPU has AVX-512F; `GRAD_MO` divides `C_out` and `R` divides `C_in · taps`.
#[inline(always)]
unsafe fn grad_chunk<const R: usize>(s: &Same, xc: &[f32], dyc: &[f32], dw: &mut [f32]) {
    let (taps, hw) = (s.taps.len(), s.hw);
    let rows = s.c_in * taps;
    let (image, grad) = (s.c_in * hw, s.c_out * hw);
    let images = xc.len() / image;
    let vectors = hw.div_ceil(LANES);
    assert!(xc.len() == images * image && dyc.len() == images * grad);
    assert!(dw.len() == s.c_out * rows && s.masks.len() >= vectors * taps);
    assert!(s.c_out.is_multiple_of(GRAD_MO) && rows.is_multiple_of(R));
    // The lanes of each vector inside the plane.
    let tail: Vec<u16> = (0..vectors).map(|v| first_lanes(hw - v * LANES)).collect();
    for o in (0..s.c_out).step_by(GRAD_MO) {
        for r in (0..rows).step_by(R) {
            // Row `r + j` reads input channel `(r + j) / taps` at tap `(r + j) % taps`: its offset
            // in an image, and its masks (`taps` apart, one per vector).
            let (offset, masks): ([isize; R], [*const u16; R]) = {
                let row = |j: usize| ((r + j) / taps, (r + j) % taps);
                let offset = |(c, t): (usize, usize)| (c * hw) as isize + s.taps[t];
                (
                    std::array::from_fn(|j| offset(row(j))),
                    std::array::from_fn(|j| s.masks[row(j).1..].as_ptr()),
                )
            };
            let mut acc = [[unsafe { _mm512_setzero_ps() }; R]; GRAD_MO];
            for (x, dy) in xc.chunks_exact(image).zip(dyc.chunks_exact(grad)) {
                let planes: [*const f32; R] =
                    std::array::from_fn(|j| x.as_ptr().wrapping_offset(offset[j]));
                let dy = dy[o * hw..].as_ptr();
                for (v, &tail) in tail.iter().enumerate() {
                    let at = v * LANES;
                    // SAFETY: the tail mask keeps the loads inside channel `o + m`'s plane.
                    let g: [__m512; GRAD_MO] = std::array::from_fn(|m| unsafe {
                        _mm512_maskz_loadu_ps(tail, dy.wrapping_add(m * hw + at))
                    });
                    for j in 0..R {
                        // SAFETY: `masks[v · taps + t]` exists (asserted above), and its lanes
                        // lie inside channel `c` of `x` (`Same::masks`).
                        let xv = unsafe {
                            let mask = *masks[j].add(v * taps);
                            _mm512_maskz_loadu_ps(mask, planes[j].wrapping_add(at))
                        };
                        for (a, &g) in acc.iter_mut().zip(&g) {
                            a[j] = unsafe { _mm512_fmadd_ps(g, xv, a[j]) };
                        }
                    }
                }
            }
            for (m, sums) in acc.iter().enumerate() {
                for (j, &sum) in sums.iter().enumerate() {
                    dw[(o + m) * rows + r + j] += unsafe { _mm512_reduce_add_ps(sum) };
                }
            }
        }
    }
}

/// The mask of the first `n` of 16 lanes, `1 ≤ n` (all of them for `n ≥ 16`).
fn first_lanes(n: usize) -> u16 {
    (u32::MAX >> (32 - n.min(LANES))) as u16
}

/// One register tile: output channels `o..o + MO` (block `w` of the packed weights, `[C_in]
/// [tap][MO]`) at vectors `v0..v0 + NQ` of image `x`, stored with the bias into `y`'s planes.
///
/// # Safety
///
/// The CPU has AVX-512F; `x` holds `C_in · H·W` values, `w` one packed block, `y` the image's
/// `C_out · H·W` outputs, and `v0 + NQ ≤ tiles · nq`.
#[inline(always)]
unsafe fn tile<const MO: usize, const NQ: usize>(
    s: &Same,
    x: &[f32],
    w: &[f32],
    (o, v0): (usize, usize),
    bias: &[f32],
    y: &mut [MaybeUninit<f32>],
) {
    let taps = s.taps.len();
    assert!(w.len() >= s.c_in * taps * MO && (v0 + NQ) * taps <= s.masks.len());
    let mut acc = [[unsafe { _mm512_setzero_ps() }; NQ]; MO];
    let masks = &s.masks[v0 * taps..];
    let mut wp = w.as_ptr();
    for c in 0..s.c_in {
        // Pointers may point outside `x` (by at most one plane); a masked load reads only its
        // lanes inside the image.
        let plane = x.as_ptr().wrapping_add(c * s.hw + v0 * LANES);
        for (t, &d) in s.taps.iter().enumerate() {
            let mut xv = [unsafe { _mm512_setzero_ps() }; NQ];
            for (v, xv) in xv.iter_mut().enumerate() {
                let at = plane.wrapping_offset(d + (v * LANES) as isize);
                // SAFETY: the mask's lanes lie inside channel `c` of `x` (`Same::masks`).
                *xv = unsafe { _mm512_maskz_loadu_ps(masks[v * taps + t], at) };
            }
            for row in acc.iter_mut() {
                // SAFETY: the block holds `MO` weights per channel and tap (asserted above).
                let wv = unsafe { _mm512_set1_ps(*wp) };
                for (a, &x) in row.iter_mut().zip(&xv) {
                    *a = unsafe { _mm512_fmadd_ps(wv, x, *a) };
                }
                wp = unsafe { wp.add(1) };
            }
        }
    }
    for (m, row) in acc.iter().enumerate().take(s.c_out - o) {
        let b = unsafe { _mm512_set1_ps(bias[o + m]) };
        for (v, a) in row.iter().enumerate() {
            let first = (v0 + v) * LANES;
            if first >= s.hw {
                break;
            }
            let lanes = (s.hw - first).min(LANES);
            let at = &mut y[(o + m) * s.hw + first..][..lanes];
            // SAFETY: the mask covers the `lanes` values of `at`.
            unsafe {
                _mm512_mask_storeu_ps(
                    at.as_mut_ptr().cast(),
                    first_lanes(lanes),
                    _mm512_add_ps(*a, b),
                )
            };
        }
    }
}

/// Every tile of one image, writing all of `y`.
///
/// # Safety
///
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn image_avx512(
    s: &Same,
    x: &[f32],
    packed: &[f32],
    bias: &[f32],
    y: &mut [MaybeUninit<f32>],
) {
    unsafe {
        match s.mo {
            1 => image::<1, NQ_SINGLE>(s, x, packed, bias, y),
            _ => image::<MO, NQ>(s, x, packed, bias, y),
        }
    }
}

/// [`image_avx512`] with `MO`-channel tiles of `NQ` vectors.
///
/// # Safety
///
/// As [`tile`].
#[inline(always)]
unsafe fn image<const MO: usize, const NQ: usize>(
    s: &Same,
    x: &[f32],
    packed: &[f32],
    bias: &[f32],
    y: &mut [MaybeUninit<f32>],
) {
    assert!(x.len() == s.c_in * s.hw && y.len() == s.c_out * s.hw && bias.len() == s.c_out);
    let block = s.c_in * s.taps.len() * MO;
    // Every block of output channels of a tile before the next tile: the tile's input rows are
    // read from the cache once.
    for t in 0..s.tiles {
        for (b, w) in packed.chunks_exact(block).enumerate() {
            unsafe { tile::<MO, NQ>(s, x, w, (b * MO, t * NQ), bias, y) };
        }
    }
}
