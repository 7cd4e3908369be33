//! Direct convolution and weight gradient, without an im2col matrix: ResNet-20's 3×3 layers,
//! stride 1 and 2, and the input gradient of each stride-1 one, which is a convolution too
//! ([`Geometry::transposed`]). On AVX-512, the stride-1 convolutions whose output is as large as
//! their input run in place instead ([`super::same`]), and so do the weight gradients of layers
//! with fewer than 8 input channels, which these tiles decline.
//!
//! Each image is copied once, with its zero padding, into planes `W_p` wide. With stride 1
//! (`W_p = W + k_w − 1` for a 3×3 layer with padding 1), output position `q = h·W_p + w` of
//! kernel tap `(i, j)` reads position `q + i·W_p + j` of the padded plane, for every `q`: each
//! tap is a shifted view of one buffer, and
//!
//! ```text
//! y[o][q]     = Σ_c Σ_(i,j) W[o][c][i][j] · x_p[c][q + i·W_p + j]
//! ∂W[o][c][i][j] = Σ_image Σ_q ∂y[o][q] · x_p[c][q + i·W_p + j]
//! ```
//!
//! With stride `s`, the padded rows and columns are split into `s × s` phases (row `R` to phase
//! row `R mod s`, row `R / s`), and each tap is a shifted view of one phase ([`Plan::of`]).
//! Geometries whose kernel leaves a phase unread (1×1 with stride 2) keep the im2col path.
//!
//! **Forward** ([`tile`]): a register tile holds `MO` output channels × `NQ` SIMD vectors of
//! positions (the `k_w − 1` positions per row past the image are computed and dropped); per input
//! channel and tap it loads `NQ` vectors of the shifted input and broadcasts `MO` weights.
//! **Weight gradient** ([`grad_tile`]): a tile holds `R` (input channel, tap) rows × `OV` vectors of
//! output channels, and sums over the positions in its registers, one broadcast input value and
//! `OV` vectors of the transposed output gradient per position.
//!
//! Either way each input value is read from the cache rather than from a 9-times larger im2col
//! copy, and nothing is packed. AVX-512 and AVX2 (with FMA) each have their tiles; other CPUs,
//! other geometries and the weight gradients these tiles do not fit keep the im2col path.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use crate::buffer::{with_scratch, written};
use crate::lanes::vectorised;

use super::{Geometry, sum_over_chunks};

/// Output channels of a register tile, for AVX-512 (32 registers) and AVX2 (16 registers).
const MO_512: usize = 8;
const MO_256: usize = 4;
/// Vectors of positions of a one-channel tile, for convolutions with fewer output channels
/// than half a tile (the input gradient of a first layer on one-channel images).
const NQ_SINGLE: usize = 4;

/// The layout of one direct convolution.
struct Plan {
    c_in: usize,
    c_out: usize,
    /// Input height and width.
    in_h: usize,
    in_w: usize,
    /// Output height and width.
    h: usize,
    w: usize,
    stride: [usize; 2],
    /// Padding before the first row and column.
    pad: [usize; 2],
    /// Padded input rows and columns that the kernel reaches.
    reached: [usize; 2],
    /// Width of a row of a phase plane, and of the output grid.
    wp: usize,
    /// Values per phase plane (its rows, and room for the last tile's reads).
    phase: usize,
    /// Values per input channel: `stride[0] · stride[1]` phase planes.
    plane: usize,
    /// Output positions computed per image, `H_out · W_p` rounded up to whole tiles.
    positions: usize,
    /// Offset of each kernel tap in a channel's phase planes, in the weight's order.
    taps: Vec<usize>,
    /// Output channels per tile: the instruction set's, or 1 for fewer than half of them.
    mo: usize,
    /// Vectors of positions per tile.
    nq: usize,
}

impl Plan {
    /// The plan of `g` for `lanes`-wide vectors and tiles of `mo` output channels.
    ///
    /// Padded input row `R` goes to phase row `R mod s_h`, row `R / s_h` (and the columns
    /// alike), so that output position `q = h·W_p + w` of tap `(i, j)` reads position
    /// `q + (i·d_h / s_h)·W_p + j·d_w / s_w` of phase `(i·d_h mod s_h, j·d_w mod s_w)`: one
    /// shifted view per tap, whatever the stride. With stride 1 there is one phase, the padded
    /// image itself. `None` where some phase is never read (a 1×1 kernel with stride 2): the
    /// copy would then cost more than the im2col path's gather (measured 2.7-3.9× slower).
    fn of(g: &Geometry, lanes: usize, mo: usize) -> Option<Self> {
        let ([sh, sw], [dh, dw]) = (g.stride, g.dilation);
        let every_phase =
            |k: usize, d: usize, s: usize| (0..s).all(|p| (0..k).any(|i| i * d % s == p));
        if !every_phase(g.kh, dh, sh) || !every_phase(g.kw, dw, sw) {
            return None;
        }
        let reached = [
            (g.out_h - 1) * sh + dh * (g.kh - 1) + 1,
            (g.out_w - 1) * sw + dw * (g.kw - 1) + 1,
        ];
        let (rows, wp) = (reached[0].div_ceil(sh), reached[1].div_ceil(sw));
        let mo = if g.c_out >= mo / 2 { mo } else { 1 };
        let vectors = (g.out_h * wp).div_ceil(lanes);
        // Cycles per tile and tap, on two load and two FMA ports: the larger of the loads
        // (`nq` vectors and `mo` broadcasts) and the products (`mo · nq`).
        let cost = |nq: usize| vectors.div_ceil(nq) * (nq + mo).max(mo * nq);
        let nq = if mo == 1 {
            NQ_SINGLE
        } else {
            (1..=3).rev().min_by_key(|&nq| cost(nq))?
        };
        let positions = vectors.div_ceil(nq) * nq * lanes;
        let shift = |i: usize, j: usize| (i * dh / sh) * wp + j * dw / sw;
        let phase = (rows * wp).max(positions + shift(g.kh - 1, g.kw - 1));
        let taps = (0..g.kh)
            .flat_map(|i| (0..g.kw).map(move |j| (i, j)))
            .map(|(i, j)| ((i * dh % sh) * sw + j * dw % sw) * phase + shift(i, j))
            .collect();
        Some(Self {
            c_in: g.c_in,
            c_out: g.c_out,
            in_h: g.h,
            in_w: g.w,
            h: g.out_h,
            w: g.out_w,
            stride: g.stride,
            pad: g.pad,
            reached,
            wp,
            phase,
            plane: sh * sw * phase,
            positions,
            taps,
            mo,
            nq,
        })
    }

    /// Copies one image `[C_in, H, W]` into `xp` `[C_in, plane]`, its padded rows and columns
    /// split into the stride's phases, zero outside the image.
    fn pad(&self, x: &[f32], xp: &mut [f32]) {
        let ([sh, sw], [top, left]) = (self.stride, self.pad);
        // Input columns the kernel reaches, from the first.
        let cols = self.reached[1].saturating_sub(left).min(self.in_w);
        if self.stride == [1, 1] {
            return self.pad_rows(x, xp, cols);
        }
        xp.fill(0.0);
        for (src, dst) in x
            .chunks_exact(self.in_h * self.in_w)
            .zip(xp.chunks_exact_mut(self.plane))
        {
            for (row, line) in src.chunks_exact(self.in_w).enumerate() {
                let r = row + top;
                if r >= self.reached[0] {
                    break;
                }
                let at = (r % sh) * sw * self.phase + (r / sh) * self.wp;
                if sw == 1 {
                    dst[at + left..][..cols].copy_from_slice(&line[..cols]);
                    continue;
                }
                // Padded column `C` goes to phase `C mod s_w`, column `C / s_w`: per phase, every
                // `s_w`-th input column, from the first that lands there, to consecutive columns.
                for p in 0..sw {
                    let first = (p + sw - left % sw) % sw;
                    let to = &mut dst[at + p * self.phase + (first + left) / sw..];
                    let from = line[..cols].iter().skip(first).step_by(sw);
                    to.iter_mut().zip(from).for_each(|(d, &v)| *d = v);
                }
            }
        }
    }

    /// [`Self::pad`] with stride 1, where the rows land in order: each value of `xp` is written
    /// once, the copied rows and the zeros between them.
    fn pad_rows(&self, x: &[f32], xp: &mut [f32], cols: usize) {
        let rows = self.reached[0].saturating_sub(self.pad[0]).min(self.in_h);
        for (src, dst) in x
            .chunks_exact(self.in_h * self.in_w)
            .zip(xp.chunks_exact_mut(self.plane))
        {
            let mut next = 0;
            for (row, line) in src.chunks_exact(self.in_w).take(rows).enumerate() {
                let at = (row + self.pad[0]) * self.wp + self.pad[1];
                dst[next..at].fill(0.0);
                dst[at..at + cols].copy_from_slice(&line[..cols]);
                next = at + cols;
            }
            dst[next..].fill(0.0);
        }
    }

    /// Output channels rounded up to whole tiles.
    fn rows(&self) -> usize {
        self.c_out.div_ceil(self.mo) * self.mo
    }

    /// Writes `y` `[C_out, H_out, W_out]` from the tiles' output `out` `[C_out rounded up,
    /// positions]`, dropping the positions past each row and adding `bias`.
    fn unpad(&self, out: &[f32], bias: Option<&[f32]>, y: &mut [MaybeUninit<f32>]) {
        let hw = self.h * self.w;
        for (o, (rows, dst)) in out
            .chunks_exact(self.positions)
            .zip(y.chunks_exact_mut(hw))
            .enumerate()
        {
            let b = bias.map_or(0.0, |b| b[o]);
            vectorised(
                #[inline(always)]
                || {
                    for (src, dst) in rows.chunks_exact(self.wp).zip(dst.chunks_exact_mut(self.w)) {
                        for (d, &v) in dst.iter_mut().zip(src) {
                            d.write(v + b);
                        }
                    }
                },
            );
        }
    }
}

/// The weights `[C_out, C_in, taps]` as tiles of `mo` output channels, `[C_out / mo][C_in][tap]
/// [mo]`, the missing channels of the last tile zero.
pub(super) fn pack(ws: &[f32], c_in: usize, c_out: usize, taps: usize, mo: usize) -> Vec<f32> {
    let blocks = c_out.div_ceil(mo);
    let mut packed = vec![0f32; blocks * c_in * taps * mo];
    for (o, kernels) in ws.chunks_exact(c_in * taps).enumerate() {
        let block = &mut packed[o / mo * c_in * taps * mo..];
        for (c, kernel) in kernels.chunks_exact(taps).enumerate() {
            for (t, &v) in kernel.iter().enumerate() {
                block[(c * taps + t) * mo + o % mo] = v;
            }
        }
    }
    packed
}

/// One SIMD register of `N` f32 lanes.
trait Lanes: Copy {
    const N: usize;
    unsafe fn zero() -> Self;
    unsafe fn load(p: *const f32) -> Self;
    unsafe fn splat(p: *const f32) -> Self;
    /// `self + a · b`, fused.
    unsafe fn mul_add(self, a: Self, b: Self) -> Self;
    unsafe fn store(self, p: *mut f32);
    unsafe fn add(self, b: Self) -> Self;
}

impl Lanes for __m512 {
    const N: usize = 16;
    #[inline(always)]
    unsafe fn zero() -> Self {
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn splat(p: *const f32) -> Self {
        unsafe { _mm512_set1_ps(*p) }
    }
    #[inline(always)]
    unsafe fn mul_add(self, a: Self, b: Self) -> Self {
        unsafe { _mm512_fmadd_ps(a, b, self) }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        unsafe { _mm512_storeu_ps(p, self) }
    }
    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        unsafe { _mm512_add_ps(self, b) }
    }
}

impl Lanes for __m256 {
    const N: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> Self {
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn splat(p: *const f32) -> Self {
        unsafe { _mm256_broadcast_ss(&*p) }
    }
    #[inline(always)]
    unsafe fn mul_add(self, a: Self, b: Self) -> Self {
        unsafe { _mm256_fmadd_ps(a, b, self) }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        unsafe { _mm256_storeu_ps(p, self) }
    }
    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        unsafe { _mm256_add_ps(self, b) }
    }
}

/// One register tile: output channels `MO` of block `w` (packed, [`Plan::pack`]) at the `NQ`
/// vectors of positions from `q`, written to `out` (rows `positions` apart).
///
/// # Safety
///
/// The CPU has `V`'s instructions; `xp` holds `C_in` padded planes, `w` one packed block, and
/// `out` `MO` rows of `positions` values with `q + NQ·N ≤ positions`.
#[inline(always)]
unsafe fn tile<V: Lanes, const MO: usize, const NQ: usize>(
    plan: &Plan,
    xp: &[f32],
    w: &[f32],
    q: usize,
    out: &mut [f32],
) {
    let mut acc = [[unsafe { V::zero() }; NQ]; MO];
    let mut wp = w.as_ptr();
    for c in 0..plan.c_in {
        let x = xp[c * plan.plane + q..].as_ptr();
        for &d in &plan.taps {
            let mut xv = [unsafe { V::zero() }; NQ];
            for (v, xv) in xv.iter_mut().enumerate() {
                // SAFETY: `plane ≥ positions + reach` keeps `q + d + NQ·N` inside the plane.
                *xv = unsafe { V::load(x.add(d + v * V::N)) };
            }
            for row in acc.iter_mut() {
                // SAFETY: the packed block holds `MO` weights per channel and tap.
                let wv = unsafe { V::splat(wp) };
                for (a, &x) in row.iter_mut().zip(&xv) {
                    *a = unsafe { a.mul_add(wv, x) };
                }
                wp = unsafe { wp.add(1) };
            }
        }
    }
    for (m, row) in acc.iter().enumerate() {
        for (v, a) in row.iter().enumerate() {
            let at = m * plan.positions + q + v * V::N;
            assert!(at + V::N <= out.len());
            unsafe { a.store(out.as_mut_ptr().add(at)) };
        }
    }
}

/// Every tile of one image: `out` `[C_out rounded up to MO, positions]`.
///
/// # Safety
///
/// As [`tile`].
#[inline(always)]
unsafe fn image<V: Lanes, const MO: usize, const NQ: usize>(
    plan: &Plan,
    xp: &[f32],
    packed: &[f32],
    out: &mut [f32],
) {
    let block = plan.c_in * plan.taps.len() * MO;
    for (w, rows) in packed
        .chunks_exact(block)
        .zip(out.chunks_exact_mut(MO * plan.positions))
    {
        for q in (0..plan.positions).step_by(NQ * V::N) {
            unsafe { tile::<V, MO, NQ>(plan, xp, w, q, rows) };
        }
    }
}

/// [`image`] with the tile of `plan`, on buffers checked to be large enough.
///
/// # Safety
///
/// The CPU has `V`'s instructions.
#[inline(always)]
unsafe fn dispatch<V: Lanes, const MO: usize>(
    plan: &Plan,
    xp: &[f32],
    packed: &[f32],
    out: &mut [f32],
) {
    assert!(plan.mo == MO || plan.mo == 1);
    assert!(xp.len() >= plan.c_in * plan.plane);
    assert!(packed.len() >= plan.rows() * plan.c_in * plan.taps.len());
    assert!(out.len() >= plan.rows() * plan.positions);
    unsafe {
        if plan.mo == 1 {
            return image::<V, 1, NQ_SINGLE>(plan, xp, packed, out);
        }
        match plan.nq {
            1 => image::<V, MO, 1>(plan, xp, packed, out),
            2 => image::<V, MO, 2>(plan, xp, packed, out),
            _ => image::<V, MO, 3>(plan, xp, packed, out),
        }
    }
}

/// The weight gradient's layout: `∂Wᵀ` `[rows, C_out]`, one row per input channel and tap
/// (`r = c·taps + t`, the weight's own order), rounded up to whole tiles of rows.
struct GradPlan<'a> {
    plan: &'a Plan,
    /// Offset in the padded images of each row's input channel and tap, `c·plane + i·W_p + j`
    /// (0 for the rows past `C_in · taps`, whose sums are dropped).
    bases: Vec<usize>,
    /// Output-channel vectors per tile.
    ov: usize,
}

impl GradPlan<'_> {
    fn rows(&self) -> usize {
        self.bases.len()
    }
}

/// One tile of the weight gradient: rows `r..r + R` of `∂Wᵀ` at output channels `o..o + OV·N`,
/// summed over the positions of one image and added to `dwt`:
///
/// ```text
/// ∂Wᵀ[c·taps + t][o] += Σ_(h,w) ∂y[o][h][w] · x_p[c][(h + i)·W_p + w + j]
/// ```
///
/// The output gradient comes transposed, `dyt` `[H·W, C_out]`, so that each position gives `OV`
/// vectors of output channels; each row broadcasts one input value. Every product lands in its
/// own register: no sum across lanes.
///
/// # Safety
///
/// The CPU has `V`'s instructions; `xp` holds one image's padded planes, `dyt` its transposed
/// gradient, `dwt` `[rows, C_out]`; `r + R ≤ rows` and `o + OV·N ≤ C_out`.
#[inline(always)]
unsafe fn grad_tile<V: Lanes, const OV: usize, const R: usize>(
    gp: &GradPlan,
    xp: &[f32],
    dyt: &[f32],
    (r, o): (usize, usize),
    dwt: &mut [f32],
) {
    let plan = gp.plan;
    let c_out = plan.c_out;
    let mut acc = [[unsafe { V::zero() }; OV]; R];
    let bases: [usize; R] = std::array::from_fn(|k| gp.bases[r + k]);
    let (x, mut dy) = (xp.as_ptr(), dyt[o..].as_ptr());
    for h in 0..plan.h {
        for q in h * plan.wp..h * plan.wp + plan.w {
            let mut g = [unsafe { V::zero() }; OV];
            for (v, g) in g.iter_mut().enumerate() {
                // SAFETY: `o + OV·N ≤ C_out` within this position's row of `dyt`.
                *g = unsafe { V::load(dy.add(v * V::N)) };
            }
            for (row, &base) in acc.iter_mut().zip(&bases) {
                // SAFETY: `base + q < xp.len()`, checked in `grad_image`.
                let xv = unsafe { V::splat(x.add(base + q)) };
                for (a, &g) in row.iter_mut().zip(&g) {
                    *a = unsafe { a.mul_add(xv, g) };
                }
            }
            dy = unsafe { dy.add(c_out) };
        }
    }
    for (k, row) in acc.iter().enumerate() {
        for (v, a) in row.iter().enumerate() {
            // SAFETY: row `r + k < rows`, channels `o + v·N + N ≤ C_out`.
            unsafe {
                let at = dwt.as_mut_ptr().add((r + k) * c_out + o + v * V::N);
                V::load(at).add(*a).store(at);
            }
        }
    }
}

/// The weight gradient of one image into `dwt` ([`grad_tile`]), with tiles of `OV` vectors of
/// output channels and `R` rows, on buffers checked to be large enough.
///
/// # Safety
///
/// The CPU has `V`'s instructions.
#[inline(always)]
unsafe fn grad_image<V: Lanes, const OV: usize, const R: usize>(
    gp: &GradPlan,
    xp: &[f32],
    dyt: &[f32],
    dwt: &mut [f32],
) {
    let plan = gp.plan;
    assert!(gp.rows().is_multiple_of(R) && plan.c_out.is_multiple_of(OV * V::N));
    // Row `r` reads `base + q` for the positions `q < H · W_p`.
    assert!(gp.bases.iter().all(|&b| b + plan.h * plan.wp <= xp.len()));
    assert!(dyt.len() >= plan.h * plan.w * plan.c_out && dwt.len() >= gp.rows() * plan.c_out);
    for o in (0..plan.c_out).step_by(OV * V::N) {
        for r in (0..gp.rows()).step_by(R) {
            unsafe { grad_tile::<V, OV, R>(gp, xp, dyt, (r, o), dwt) };
        }
    }
}

/// Accumulators of a weight-gradient tile: `R · OV` of them, the rest of the registers holding
/// the `OV` gradient vectors and one broadcast.
const GRAD_ACC_512: usize = 24;
const GRAD_ACC_256: usize = 12;

#[target_feature(enable = "avx512f")]
fn grad_avx512(gp: &GradPlan, xp: &[f32], dyt: &[f32], dwt: &mut [f32]) {
    // SAFETY: this function only runs where the CPU has AVX-512F.
    unsafe {
        match gp.ov {
            1 => grad_image::<__m512, 1, GRAD_ACC_512>(gp, xp, dyt, dwt),
            2 => grad_image::<__m512, 2, { GRAD_ACC_512 / 2 }>(gp, xp, dyt, dwt),
            3 => grad_image::<__m512, 3, { GRAD_ACC_512 / 3 }>(gp, xp, dyt, dwt),
            _ => grad_image::<__m512, 4, { GRAD_ACC_512 / 4 }>(gp, xp, dyt, dwt),
        }
    }
}

#[target_feature(enable = "avx2,fma")]
fn grad_avx2(gp: &GradPlan, xp: &[f32], dyt: &[f32], dwt: &mut [f32]) {
    // SAFETY: this function only runs where the CPU has AVX2 and FMA.
    unsafe {
        match gp.ov {
            1 => grad_image::<__m256, 1, GRAD_ACC_256>(gp, xp, dyt, dwt),
            _ => grad_image::<__m256, 2, { GRAD_ACC_256 / 2 }>(gp, xp, dyt, dwt),
        }
    }
}

#[target_feature(enable = "avx512f")]
fn image_avx512(plan: &Plan, xp: &[f32], packed: &[f32], out: &mut [f32]) {
    // SAFETY: this function only runs where the CPU has AVX-512F.
    unsafe { dispatch::<__m512, MO_512>(plan, xp, packed, out) }
}

#[target_feature(enable = "avx2,fma")]
fn image_avx2(plan: &Plan, xp: &[f32], packed: &[f32], out: &mut [f32]) {
    // SAFETY: this function only runs where the CPU has AVX2 and FMA.
    unsafe { dispatch::<__m256, MO_256>(plan, xp, packed, out) }
}

/// A tile for one instruction set: its vector width, its output channels, and the function
/// computing one image.
#[derive(Clone, Copy)]
struct Kernel {
    lanes: usize,
    mo: usize,
    run: fn(&Plan, &[f32], &[f32], &mut [f32]),
    grad: fn(&GradPlan, &[f32], &[f32], &mut [f32]),
    /// Accumulator registers of a weight-gradient tile, and its most output-channel vectors.
    grad_acc: usize,
    grad_ov: usize,
}

/// The kernels this CPU can run, widest first.
fn kernels() -> Vec<Kernel> {
    let mut all = Vec::new();
    if std::arch::is_x86_feature_detected!("avx512f") {
        all.push(Kernel {
            lanes: 16,
            mo: MO_512,
            // SAFETY: the CPU has AVX-512F, checked just above.
            run: |p, x, w, o| unsafe { image_avx512(p, x, w, o) },
            // SAFETY: as above.
            grad: |p, x, dy, dw| unsafe { grad_avx512(p, x, dy, dw) },
            grad_acc: GRAD_ACC_512,
            grad_ov: 4,
        });
    }
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        all.push(Kernel {
            lanes: 8,
            mo: MO_256,
            // SAFETY: the CPU has AVX2 and FMA, checked just above.
            run: |p, x, w, o| unsafe { image_avx2(p, x, w, o) },
            // SAFETY: as above.
            grad: |p, x, dy, dw| unsafe { grad_avx2(p, x, dy, dw) },
            grad_acc: GRAD_ACC_256,
            grad_ov: 2,
        });
    }
    all
}

/// The convolution of `g` (images `xs`, weights `ws`, optional `bias`) computed directly, or
/// `None` where the geometry or the CPU does not allow it.
pub(super) fn convolve(
    g: &Geometry,
    xs: &[f32],
    ws: &[f32],
    bias: Option<&[f32]>,
) -> Option<Vec<f32>> {
    let kernel = *kernels().first()?;
    let plan = Plan::of(g, kernel.lanes, kernel.mo)?;
    Some(convolve_with(kernel, &plan, xs, ws, bias))
}

/// [`convolve`] with `kernel`, on `plan` (made for its lanes and tile channels).
fn convolve_with(
    kernel: Kernel,
    plan: &Plan,
    xs: &[f32],
    ws: &[f32],
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let packed = pack(ws, plan.c_in, plan.c_out, plan.taps.len(), plan.mo);
    let rows = plan.rows();
    let image = plan.c_in * plan.in_h * plan.in_w;
    let output = plan.c_out * plan.h * plan.w;
    let (padded, tiles) = (plan.c_in * plan.plane, rows * plan.positions);
    written(xs.len() / image * output, output, |b, y| {
        with_scratch(padded + tiles, |scratch| {
            let (xp, out) = scratch.split_at_mut(padded);
            plan.pad(&xs[b * image..][..image], xp);
            (kernel.run)(plan, xp, &packed, out);
            // Writes all `C_out · H · W` values of `y`.
            plan.unpad(out, bias, y);
        });
    })
}

/// `∂L/∂W` of `g` `[C_out, C_in, k_h, k_w]` given the images `xs` and the output gradient `dys`,
/// computed directly, or `None` where the geometry or the CPU does not allow it. The images are
/// summed in fixed chunks of [`super::WEIGHT_GRAD_CHUNK`], then the chunks in order, as on the im2col
/// path: the result does not depend on the number of threads.
pub(super) fn weight_grad(g: &Geometry, xs: &[f32], dys: &[f32]) -> Option<Vec<f32>> {
    let kernel = *kernels().first()?;
    let plan = Plan::of(g, kernel.lanes, kernel.mo)?;
    // Measured against the im2col path on ResNet-20's layers at batch 64 (`conv_timing`,
    // docs/performance.md): 1.6-1.7× faster on the 16-, 32- and 64-channel layers, 2× slower on
    // the one-channel first layer, whose 9 rows fill only part of a tile (0.7-0.9 against
    // 0.3-0.4 ms); its im2col product is small anyway.
    let pays = plan.c_in >= 8;
    pays.then(|| weight_grad_with(kernel, &plan, xs, dys))?
}

/// [`weight_grad`] with `kernel`, on `plan`, or `None` where its tiles do not fit `C_out`.
fn weight_grad_with(kernel: Kernel, plan: &Plan, xs: &[f32], dys: &[f32]) -> Option<Vec<f32>> {
    let (c_out, taps) = (plan.c_out, plan.taps.len());
    if !c_out.is_multiple_of(kernel.lanes) {
        return None;
    }
    let vectors = c_out / kernel.lanes;
    let ov = (1..=kernel.grad_ov.min(vectors))
        .rev()
        .find(|&ov| vectors.is_multiple_of(ov))?;
    let k = plan.c_in * taps;
    let r_tile = kernel.grad_acc / ov;
    let bases = (0..k.div_ceil(r_tile) * r_tile)
        .map(|r| {
            if r < k {
                r / taps * plan.plane + plan.taps[r % taps]
            } else {
                0
            }
        })
        .collect();
    let gp = GradPlan { plan, bases, ov };
    let size = gp.rows() * c_out;
    let (hw, padded) = (plan.h * plan.w, plan.c_in * plan.plane);
    let (image, grad) = (plan.c_in * plan.in_h * plan.in_w, c_out * hw);
    let dwt = sum_over_chunks((xs, image), (dys, grad), size, |xc, dyc, dwt| {
        with_scratch(padded + grad, |scratch| {
            let (xp, dyt) = scratch.split_at_mut(padded);
            for (x, dy) in xc.chunks_exact(image).zip(dyc.chunks_exact(grad)) {
                plan.pad(x, xp);
                transpose(dy, hw, dyt);
                (kernel.grad)(&gp, xp, dyt, dwt);
            }
        });
    });
    // `∂Wᵀ [rows, C_out]` back to `[C_out, C_in · taps]`.
    Some((0..c_out * k).map(|i| dwt[i % k * c_out + i / k]).collect())
}

/// `dyt` `[H·W, C_out]` from `dy` `[C_out, H·W]`, in blocks of 16 positions, whose rows of
/// `dyt` stay in the cache while every channel fills them.
fn transpose(dy: &[f32], hw: usize, dyt: &mut [f32]) {
    let c_out = dy.len() / hw;
    for p0 in (0..hw).step_by(16) {
        let block = &mut dyt[p0 * c_out..(p0 + 16).min(hw) * c_out];
        for (o, plane) in dy.chunks_exact(hw).enumerate() {
            for (row, &v) in block.chunks_exact_mut(c_out).zip(&plane[p0..]) {
                row[o] = v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::WEIGHT_GRAD_CHUNK;
    use super::*;

    /// A stride-1 geometry with the output as large as the input.
    fn same(x: [usize; 4], c_out: usize, k: [usize; 2], pad: [usize; 2]) -> Geometry {
        let after = [k[0] - 1 - pad[0], k[1] - 1 - pad[1]];
        strided(
            x,
            c_out,
            k,
            [1, 1],
            [1, 1],
            [pad[0], pad[1], after[0], after[1]],
        )
    }

    /// Any geometry: padding `[top, left, bottom, right]`.
    fn strided(
        [batch, c_in, h, w]: [usize; 4],
        c_out: usize,
        [kh, kw]: [usize; 2],
        stride: [usize; 2],
        dilation: [usize; 2],
        [top, left, bottom, right]: [usize; 4],
    ) -> Geometry {
        let span = |size: usize, k: usize, s: usize, d: usize| (size - d * (k - 1) - 1) / s + 1;
        Geometry {
            batch,
            c_in,
            h,
            w,
            c_out,
            kh,
            kw,
            out_h: span(h + top + bottom, kh, stride[0], dilation[0]),
            out_w: span(w + left + right, kw, stride[1], dilation[1]),
            stride,
            dilation,
            pad: [top, left],
        }
    }

    /// `x[b][c][oh·s + i·d − pad][ow·s + j·d − pad]`, or `None` in the padding.
    fn tap_input(
        g: &Geometry,
        x: &[f32],
        (b, c, oh, ow): (usize, usize, usize, usize),
        r: usize,
    ) -> Option<f64> {
        let (_, i, j) = g.tap(r);
        let (ih, iw) = (
            oh * g.stride[0] + i * g.dilation[0],
            ow * g.stride[1] + j * g.dilation[1],
        );
        let ih = ih.checked_sub(g.pad[0]).filter(|&h| h < g.h)?;
        let iw = iw.checked_sub(g.pad[1]).filter(|&w| w < g.w)?;
        Some(f64::from(x[((b * g.c_in + c) * g.h + ih) * g.w + iw]))
    }

    /// Every `(image, output channel, row, column)` of `g`'s output, in its order.
    fn outputs(g: &Geometry) -> impl Iterator<Item = (usize, usize, usize, usize)> + '_ {
        (0..g.batch).flat_map(move |b| {
            (0..g.c_out).flat_map(move |o| {
                (0..g.out_h).flat_map(move |oh| (0..g.out_w).map(move |ow| (b, o, oh, ow)))
            })
        })
    }

    /// The convolution by its definition, in f64.
    fn definition(g: &Geometry, x: &[f32], w: &[f32], bias: &[f32]) -> Vec<f64> {
        outputs(g)
            .map(|(b, o, oh, ow)| {
                let taps = (0..g.k()).filter_map(|r| {
                    let v = tap_input(g, x, (b, g.tap(r).0, oh, ow), r)?;
                    Some(v * f64::from(w[o * g.k() + r]))
                });
                f64::from(bias[o]) + taps.sum::<f64>()
            })
            .collect()
    }

    /// `∂W` by its definition, in f64: `Σ_b Σ_(oh,ow) ∂y[b][o][oh][ow] · x[b][c][oh+i−p][ow+j−p]`.
    fn weight_definition(g: &Geometry, x: &[f32], dy: &[f32]) -> Vec<f64> {
        let mut dw = vec![0f64; g.c_out * g.k()];
        for (at, (b, o, oh, ow)) in outputs(g).enumerate() {
            for r in 0..g.k() {
                if let Some(v) = tap_input(g, x, (b, g.tap(r).0, oh, ow), r) {
                    dw[o * g.k() + r] += f64::from(dy[at]) * v;
                }
            }
        }
        dw
    }

    /// A stride whose phases the kernel does not all read (1×1 with stride 2, or dilation 2
    /// with stride 2) keeps the im2col path.
    #[test]
    fn geometries_that_skip_a_phase_keep_the_im2col_path() {
        for g in [
            strided([1, 16, 14, 14], 32, [1, 1], [2, 2], [1, 1], [0, 0, 0, 0]),
            strided([1, 8, 10, 9], 16, [3, 3], [2, 1], [2, 1], [2, 1, 2, 1]),
        ] {
            assert!(Plan::of(&g, 16, MO_512).is_none());
        }
        let g = strided([1, 16, 14, 14], 32, [3, 3], [2, 2], [1, 1], [1, 1, 1, 1]);
        assert!(Plan::of(&g, 16, MO_512).is_some());
    }

    fn floats(n: usize, seed: u64) -> Vec<f32> {
        crate::testing::values(n, seed)
            .iter()
            .map(|&v| v as f32)
            .collect()
    }

    /// The weight gradient of each tile this CPU has against the f64 definition, over batches
    /// of one chunk of images and of more than one (a partial last chunk), with 1 to 4 vectors
    /// of output channels per tile and rows that leave the last tile part empty; and the same
    /// read in place where it applies.
    #[test]
    fn direct_weight_gradient_matches_the_definition() {
        let cases = [
            same([3, 16, 28, 28], 16, [3, 3], [1, 1]),
            same([2, 64, 7, 7], 64, [3, 3], [1, 1]),
            same([WEIGHT_GRAD_CHUNK + 3, 5, 9, 11], 48, [3, 3], [1, 1]),
            same([2, 7, 5, 6], 32, [1, 1], [0, 0]),
            same([1, 8, 4, 3], 16, [5, 5], [2, 2]),
            same([2, 3, 6, 5], 32, [2, 3], [1, 0]),
            same([1, 3, 4, 3], 16, [5, 5], [2, 2]),
            strided([1, 6, 7, 8], 16, [3, 3], [1, 1], [2, 2], [2, 2, 2, 2]),
            strided([2, 16, 28, 28], 32, [3, 3], [2, 2], [1, 1], [1, 1, 1, 1]),
            strided([1, 8, 10, 9], 32, [3, 3], [2, 3], [1, 2], [2, 0, 1, 3]),
        ];
        let mut in_place = 0;
        for (n, g) in cases.iter().enumerate() {
            let x = floats(g.batch * g.c_in * g.h * g.w, n as u64);
            let dy = floats(g.batch * g.c_out * g.out_h * g.out_w, 70 + n as u64);
            let want = weight_definition(g, &x, &dy);
            let terms = (g.batch * g.h * g.w) as f64;
            let check = |dw: Vec<f32>, path: &str| {
                assert_eq!(dw.len(), want.len(), "case {n}");
                for (i, (&a, &b)) in dw.iter().zip(&want).enumerate() {
                    assert!(
                        (f64::from(a) - b).abs() <= 1e-6 * (1.0 + b.abs()) * terms,
                        "case {n}, {path}: dW[{i}] = {a}, definition {b}"
                    );
                }
            };
            for kernel in kernels() {
                let plan = Plan::of(g, kernel.lanes, kernel.mo)
                    .unwrap_or_else(|| panic!("case {n}: no plan"));
                let dw = weight_grad_with(kernel, &plan, &x, &dy)
                    .unwrap_or_else(|| panic!("case {n}: the direct path declined"));
                check(dw, &format!("{} lanes", kernel.lanes));
            }
            let same = super::super::same::Same::of(g);
            if let Some(dw) = same.and_then(|s| s.weight_grad(&x, &dy)) {
                check(dw, "in place");
                in_place += 1;
            }
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            // The stride-1 same-size cases with `C_out` a multiple of 4 and `C_in · taps` of 3.
            assert_eq!(in_place, 6, "cases run in place");
        }
    }

    /// Each tile this CPU has against the f64 definition: ResNet-20's three stages, a channel
    /// count that leaves the last tile part empty, 1×1, a kernel wider than the image, and
    /// padding on one side.
    #[test]
    fn direct_convolution_matches_the_definition() {
        let cases = [
            same([2, 16, 28, 28], 16, [3, 3], [1, 1]),
            same([1, 32, 14, 14], 32, [3, 3], [1, 1]),
            same([2, 64, 7, 7], 64, [3, 3], [1, 1]),
            same([1, 1, 28, 28], 16, [3, 3], [1, 1]),
            same([2, 16, 28, 28], 1, [3, 3], [1, 1]),
            same([1, 4, 9, 11], 3, [3, 3], [1, 1]),
            same([2, 5, 9, 11], 9, [3, 3], [1, 1]),
            same([1, 7, 5, 6], 12, [1, 1], [0, 0]),
            same([1, 8, 4, 3], 8, [5, 5], [2, 2]),
            same([1, 3, 6, 5], 10, [2, 3], [1, 0]),
            strided([2, 16, 28, 28], 32, [3, 3], [2, 2], [1, 1], [1, 1, 1, 1]),
            strided([1, 5, 9, 11], 10, [3, 3], [2, 2], [1, 1], [1, 1, 1, 1]),
            strided([1, 6, 10, 9], 9, [3, 3], [2, 3], [1, 2], [2, 0, 1, 3]),
            strided([1, 4, 7, 8], 8, [3, 3], [1, 1], [2, 2], [2, 2, 2, 2]),
            strided([1, 2, 3, 4], 8, [3, 3], [3, 2], [1, 1], [4, 3, 4, 3]),
        ];
        let kernels = kernels();
        if kernels.is_empty() {
            eprintln!("no AVX2 or AVX-512 on this CPU: nothing to test");
        }
        let mut in_place = 0;
        for (n, g) in cases.iter().enumerate() {
            let x = floats(g.batch * g.c_in * g.h * g.w, n as u64);
            let w = floats(g.c_out * g.k(), 50 + n as u64);
            let bias: Vec<f32> = (0..g.c_out).map(|o| o as f32 / 7.0 - 0.5).collect();
            let want = definition(g, &x, &w, &bias);
            let check = |y: Vec<f32>, path: &str| {
                assert_eq!(y.len(), want.len(), "case {n}");
                for (i, (&a, &b)) in y.iter().zip(&want).enumerate() {
                    assert!(
                        (f64::from(a) - b).abs() <= 1e-6 * (1.0 + b.abs()) * g.k() as f64,
                        "case {n}, {path}: y[{i}] = {a}, definition {b}"
                    );
                }
            };
            for &kernel in &kernels {
                let plan = Plan::of(g, kernel.lanes, kernel.mo)
                    .unwrap_or_else(|| panic!("case {n}: the direct path declined"));
                let lanes = format!("{} lanes", kernel.lanes);
                check(convolve_with(kernel, &plan, &x, &w, Some(&bias)), &lanes);
            }
            if let Some(same) = super::super::same::Same::of(g) {
                check(same.convolve(&x, &w, Some(&bias)), "in place");
                in_place += 1;
            }
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            // Every stride-1 case whose output is as large as its input.
            assert_eq!(in_place, 11, "cases run in place");
        }
    }
}
