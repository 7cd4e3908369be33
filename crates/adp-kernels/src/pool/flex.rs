//! The native `relu(max_pool2d(x))` kernels for burn-flex: per `H × W` plane, in parallel over
//! planes, one output row of windows at a time. The backward finds each window's maximum again
//! instead of storing its index.
//!
//! A window-by-window scan (burn-flex's) branches on every comparison, which random data
//! mispredicts half the time. Here each tap of a window is applied to all windows of a row at
//! once, as selects without branches, which the compiler vectorises (with AVX2, and where the
//! windows are 2 wide: [`vectorised`], [`Windows::with_width`]). Rows holding a NaN take the
//! exact scalar scan.

use burn::backend::Flex;
use burn::backend::tensor::FloatTensor;
use burn::tensor::{DType, TensorData};

use crate::buffer::{written, zeroed};
use crate::lanes::{relu, vectorised};

use super::FastMaxPool;

type FlexTensor = FloatTensor<Flex>;

/// One pooling: `[N, C, H, W]` planes cut into `k_h × k_w` windows.
struct Windows {
    planes: usize,
    h: usize,
    w: usize,
    kernel: [usize; 2],
    out_h: usize,
    out_w: usize,
}

impl Windows {
    /// The windows of `x`, or `None` where this kernel does not apply (not f32 of rank 4, an
    /// empty size or window, a window larger than the image, a plane of 2³² values or more,
    /// whose positions `u32` cannot hold): burn's own operations then run, and report any error.
    fn of(x: &FlexTensor, kernel: [usize; 2]) -> Option<Self> {
        let dims = x.layout().shape().to_vec();
        let [n, c, h, w] = dims[..] else { return None };
        let applies = x.dtype() == DType::F32
            && n * c > 0
            && kernel.iter().all(|&k| k > 0)
            && h >= kernel[0]
            && w >= kernel[1]
            && u32::try_from(h * w).is_ok();
        applies.then_some(Self {
            planes: n * c,
            h,
            w,
            kernel,
            out_h: h / kernel[0],
            out_w: w / kernel[1],
        })
    }

    /// Input values per plane.
    fn plane(&self) -> usize {
        self.h * self.w
    }

    /// Output values per plane.
    fn out_plane(&self) -> usize {
        self.out_h * self.out_w
    }

    /// `f(k_w)`, with `k_w` a compile-time constant where it is 2 (the CNN's windows), so that the
    /// compiler vectorises the strided taps of that case.
    #[inline(always)]
    fn with_width<R>(&self, mut f: impl FnMut(usize) -> R) -> R {
        match self.kernel[1] {
            2 => f(2),
            kw => f(kw),
        }
    }

    /// Each window's maximum of output row `oh` of `plane` into `best`, and its position in the
    /// plane into `at`: the first maximum in row-major order (burn's choice), or `false` if a
    /// window holds a NaN (whose maximum and position [`Self::exact`] then gives).
    #[inline(always)]
    fn row_max(
        &self,
        plane: &[f32],
        oh: usize,
        best: &mut [f32],
        at: &mut [u32],
        kw: usize,
    ) -> bool {
        let top = oh * self.kernel[0] * self.w;
        let mut nan = false;
        for i in 0..self.kernel[0] {
            let row = &plane[top + i * self.w..][..self.out_w * kw];
            for j in 0..kw {
                let first = i == 0 && j == 0;
                let mut pos = (top + i * self.w + j) as u32;
                for ((b, a), win) in best.iter_mut().zip(at.iter_mut()).zip(row.chunks_exact(kw)) {
                    let v = win[j];
                    nan |= v.is_nan();
                    let take = first | (v > *b);
                    *b = if take { v } else { *b };
                    *a = if take { pos } else { *a };
                    pos += kw as u32;
                }
            }
        }
        !nan
    }

    /// burn's scan of window `(oh, ow)`: the first maximum in row-major order, a NaN over any
    /// number (the last NaN); its value and its position in the plane.
    fn exact(&self, plane: &[f32], oh: usize, ow: usize) -> (f32, usize) {
        let [kh, kw] = self.kernel;
        let first = oh * kh * self.w + ow * kw;
        let mut best = (plane[first], first);
        for i in 0..kh {
            let row = first + i * self.w;
            for (j, &v) in plane[row..row + kw].iter().enumerate() {
                if v > best.0 || v.is_nan() {
                    best = (v, row + j);
                }
            }
        }
        best
    }

    /// [`Self::row_max`], with the NaN rows scanned exactly.
    #[inline(always)]
    fn maxima(&self, plane: &[f32], oh: usize, best: &mut [f32], at: &mut [u32]) {
        let clean = self.with_width(
            #[inline(always)]
            |kw| self.row_max(plane, oh, best, at, kw),
        );
        if !clean {
            for (ow, (b, a)) in best.iter_mut().zip(at.iter_mut()).enumerate() {
                let (v, pos) = self.exact(plane, oh, ow);
                (*b, *a) = (v, pos as u32);
            }
        }
    }
}

impl FastMaxPool for Flex {
    fn fast_max_pool2d_relu(x: FlexTensor, kernel: [usize; 2]) -> FlexTensor {
        let Some(win) = Windows::of(&x, kernel) else {
            return super::burn_forward::<Flex>(x, kernel);
        };
        let x = x.to_contiguous();
        let (xs, dims) = (slice(&x), x.layout().shape().to_vec());
        let out = written(win.planes * win.out_plane(), win.out_plane(), |i, o| {
            let plane = &xs[i * win.plane()..][..win.plane()];
            let (mut best, mut at) = (vec![0.0; win.out_w], vec![0; win.out_w]);
            vectorised(
                #[inline(always)]
                || {
                    for (oh, row) in o.chunks_exact_mut(win.out_w).enumerate() {
                        win.maxima(plane, oh, &mut best, &mut at);
                        for (o, &v) in row.iter_mut().zip(&best) {
                            o.write(relu(v));
                        }
                    }
                },
            );
        });
        let shape = [dims[0], dims[1], win.out_h, win.out_w];
        FlexTensor::from_data(TensorData::new(out, shape))
    }

    fn fast_max_pool2d_relu_backward(
        x: FlexTensor,
        output_grad: FlexTensor,
        kernel: [usize; 2],
    ) -> FlexTensor {
        let dims = x.layout().shape().to_vec();
        let win = Windows::of(&x, kernel).filter(|win| {
            output_grad.dtype() == DType::F32
                && output_grad.layout().shape().to_vec() == [dims[0], dims[1], win.out_h, win.out_w]
        });
        let Some(win) = win else {
            return super::burn_backward::<Flex>(x, output_grad, kernel);
        };
        let (x, dy) = (x.to_contiguous(), output_grad.to_contiguous());
        let (xs, dys) = (slice(&x), slice(&dy));
        let dx = written(win.planes * win.plane(), win.plane(), |i, dx| {
            let dx = zeroed(dx);
            let plane = &xs[i * win.plane()..][..win.plane()];
            let g = &dys[i * win.out_plane()..][..win.out_plane()];
            let (mut best, mut at) = (vec![0.0; win.out_w], vec![0; win.out_w]);
            vectorised(
                #[inline(always)]
                || {
                    for (oh, g) in g.chunks_exact(win.out_w).enumerate() {
                        win.maxima(plane, oh, &mut best, &mut at);
                        // burn's `relu_backward`: no gradient where the output is `≤ 0`. The
                        // windows do not overlap: each position is written at most once.
                        for ((&g, &m), &at) in g.iter().zip(&best).zip(&at) {
                            dx[at as usize] = if relu(m) == 0.0 { 0.0 } else { g };
                        }
                    }
                },
            );
        });
        FlexTensor::from_data(TensorData::new(dx, dims))
    }
}

fn slice(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("contiguous f32 data")
}
