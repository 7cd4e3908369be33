//! Convolution kernels for burn-flex: per image, one `im2col` copy and one `gemm` matrix product
//! written straight into the NCHW output, in parallel over images.
//!
//! Only f32 data with `groups = 1` takes this path ([`Geometry::of`]); anything else goes to
//! burn-flex's own.

use burn::backend::Flex;
use burn::backend::ops::{ConvOptions, ModuleOps};
use burn::backend::tensor::FloatTensor;
use burn::tensor::{DType, TensorData};
use gemm::{Parallelism, gemm};
use rayon::prelude::*;

use super::FastConv2d;

type FlexTensor = FloatTensor<Flex>;

/// Sizes of one convolution.
#[derive(Clone, Copy)]
struct Geometry {
    batch: usize,
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    kh: usize,
    kw: usize,
    out_h: usize,
    out_w: usize,
    stride: [usize; 2],
    dilation: [usize; 2],
    /// Padding before the first row and column.
    pad: [usize; 2],
}

impl Geometry {
    /// The sizes of `x` convolved with `weight`, or `None` where these kernels do not apply
    /// (not f32, `groups ≠ 1`, a zero size, stride or dilation, a kernel wider than the padded
    /// image, mismatched channels): burn-flex's own op then runs, and reports any error.
    fn of(x: &FlexTensor, weight: &FlexTensor, options: &ConvOptions<2>) -> Option<Self> {
        let xs = x.layout().shape().to_vec();
        let ws = weight.layout().shape().to_vec();
        let applies = options.groups == 1
            && xs.len() == 4
            && ws.len() == 4
            && xs[1] == ws[1]
            && xs.iter().chain(&ws).all(|&d| d > 0)
            && options
                .stride
                .iter()
                .chain(&options.dilation)
                .all(|&d| d > 0)
            && x.dtype() == DType::F32
            && weight.dtype() == DType::F32;
        if !applies {
            return None;
        }
        let span = |i: usize, size: usize, k: usize| {
            let (before, after) = options.padding[i];
            let reach = options.dilation[i] * (k - 1) + 1;
            Some((size + before + after).checked_sub(reach)? / options.stride[i] + 1)
        };
        Some(Self {
            batch: xs[0],
            c_in: xs[1],
            h: xs[2],
            w: xs[3],
            c_out: ws[0],
            kh: ws[2],
            kw: ws[3],
            out_h: span(0, xs[2], ws[2])?,
            out_w: span(1, xs[3], ws[3])?,
            stride: options.stride,
            dilation: options.dilation,
            pad: [options.padding[0].0, options.padding[1].0],
        })
    }

    /// Whether `dy` is an f32 gradient of this convolution's output.
    fn fits_grad(&self, dy: &FlexTensor) -> bool {
        dy.dtype() == DType::F32
            && dy.layout().shape().to_vec() == [self.batch, self.c_out, self.out_h, self.out_w]
    }

    /// Whether `bias` is an f32 vector of one value per output channel.
    fn fits_bias(&self, bias: &FlexTensor) -> bool {
        bias.dtype() == DType::F32 && bias.layout().shape().to_vec() == [self.c_out]
    }

    /// Rows of the im2col matrix: `C_in · k_h · k_w`, in the weight's own order.
    fn k(&self) -> usize {
        self.c_in * self.kh * self.kw
    }

    /// Output positions per image.
    fn p(&self) -> usize {
        self.out_h * self.out_w
    }

    /// The input row read by output row `oh` at kernel row `i`, if inside the image.
    fn source_row(&self, oh: usize, i: usize) -> Option<usize> {
        let ih = (oh * self.stride[0] + i * self.dilation[0]).checked_sub(self.pad[0])?;
        (ih < self.h).then_some(ih)
    }

    /// The output columns `lo..hi` whose kernel column `j` falls inside the image, and the input
    /// column read by output column `lo`; from there each output column steps `stride[1]` on.
    fn source_cols(&self, j: usize) -> (usize, usize, usize) {
        let (s, offset) = (self.stride[1], j * self.dilation[1]);
        let lo = self.pad[1]
            .saturating_sub(offset)
            .div_ceil(s)
            .min(self.out_w);
        let hi = match (self.w - 1 + self.pad[1]).checked_sub(offset) {
            Some(last) => (last / s + 1).min(self.out_w),
            None => 0,
        };
        (
            lo,
            hi.max(lo),
            (lo * s + offset).saturating_sub(self.pad[1]),
        )
    }

    /// Splits im2col row `r` into its input channel and kernel tap `(i, j)`.
    fn tap(&self, r: usize) -> (usize, usize, usize) {
        (r / (self.kh * self.kw), r / self.kw % self.kh, r % self.kw)
    }

    /// `im2col` of one image `[C_in, H, W]` into `col` `[K, P]`.
    fn im2col(&self, x: &[f32], col: &mut [f32]) {
        let (p, s) = (self.p(), self.stride[1]);
        for (r, row) in col.chunks_exact_mut(p).enumerate() {
            let (ci, i, j) = self.tap(r);
            let plane = &x[ci * self.h * self.w..][..self.h * self.w];
            let (lo, hi, first) = self.source_cols(j);
            for (oh, out) in row.chunks_exact_mut(self.out_w).enumerate() {
                let Some(ih) = self.source_row(oh, i) else {
                    out.fill(0.0);
                    continue;
                };
                out[..lo].fill(0.0);
                out[hi..].fill(0.0);
                if lo == hi {
                    continue;
                }
                let src = &plane[ih * self.w + first..];
                if s == 1 {
                    out[lo..hi].copy_from_slice(&src[..hi - lo]);
                } else {
                    for (v, &x) in out[lo..hi].iter_mut().zip(src.iter().step_by(s)) {
                        *v = x;
                    }
                }
            }
        }
    }

    /// Adds `col` `[K, P]` back onto one image's gradient `[C_in, H, W]` (the adjoint of im2col).
    fn col2im(&self, col: &[f32], dx: &mut [f32]) {
        let (p, s) = (self.p(), self.stride[1]);
        for (r, row) in col.chunks_exact(p).enumerate() {
            let (ci, i, j) = self.tap(r);
            let plane = &mut dx[ci * self.h * self.w..][..self.h * self.w];
            let (lo, hi, first) = self.source_cols(j);
            for (oh, out) in row.chunks_exact(self.out_w).enumerate() {
                let Some(ih) = self.source_row(oh, i).filter(|_| lo < hi) else {
                    continue;
                };
                let dst = &mut plane[ih * self.w + first..];
                if s == 1 {
                    for (d, &v) in dst[..hi - lo].iter_mut().zip(&out[lo..hi]) {
                        *d += v;
                    }
                } else {
                    for (d, &v) in dst.iter_mut().step_by(s).zip(&out[lo..hi]) {
                        *d += v;
                    }
                }
            }
        }
    }
}

/// `dst[m×n] (+)= lhs[m×k] · rhs[k×n]`, each operand given by its row and column strides.
#[allow(clippy::too_many_arguments)]
fn matmul(
    dst: &mut [f32],
    accumulate: bool,
    (m, k, n): (usize, usize, usize),
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
    parallelism: Parallelism,
) {
    assert!(dst.len() >= m * n && lhs.len() >= m * k && rhs.len() >= k * n);
    // SAFETY: the assertion above bounds every index `gemm` reads or writes with these strides
    // (row-major `dst`, and `lhs` / `rhs` of exactly `m·k` / `k·n` elements in either order).
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Images per partial sum of the weight gradient.
const WEIGHT_GRAD_CHUNK: usize = 8;

/// Threads inside each product: none when the images already keep every thread busy.
fn inner_parallelism(batch: usize) -> Parallelism {
    if batch >= rayon::current_num_threads() {
        Parallelism::None
    } else {
        Parallelism::Rayon(0)
    }
}

fn slice(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("contiguous f32 data")
}

fn tensor(data: Vec<f32>, shape: [usize; 4]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, shape))
}

impl FastConv2d for Flex {
    fn fast_conv2d(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        options: ConvOptions<2>,
    ) -> FlexTensor {
        let Some(g) = Geometry::of(&x, &weight, &options).filter(|g| g.fits_bias(&bias)) else {
            return <Flex as ModuleOps<Flex>>::conv2d(x, weight, Some(bias), options);
        };
        let (x, weight) = (x.to_contiguous(), weight.to_contiguous());
        let bias = bias.to_contiguous();
        let bias = slice(&bias);
        let (xs, ws) = (slice(&x), slice(&weight));
        let (k, p) = (g.k(), g.p());
        let parallelism = inner_parallelism(g.batch);
        let mut out = vec![0f32; g.batch * g.c_out * p];
        out.par_chunks_mut(g.c_out * p)
            .zip(xs.par_chunks(g.c_in * g.h * g.w))
            .for_each_init(
                || vec![0f32; k * p],
                |col, (y, x)| {
                    g.im2col(x, col);
                    for (row, &b) in y.chunks_exact_mut(p).zip(bias) {
                        row.fill(b);
                    }
                    matmul(
                        y,
                        true,
                        (g.c_out, k, p),
                        ws,
                        (k, 1),
                        col,
                        (p, 1),
                        parallelism,
                    );
                },
            );
        tensor(out, [g.batch, g.c_out, g.out_h, g.out_w])
    }

    fn fast_conv2d_x_backward(
        x: FlexTensor,
        weight: FlexTensor,
        output_grad: FlexTensor,
        options: ConvOptions<2>,
    ) -> FlexTensor {
        let geometry = Geometry::of(&x, &weight, &options).filter(|g| g.fits_grad(&output_grad));
        let Some(g) = geometry else {
            return <Flex as ModuleOps<Flex>>::conv2d_x_backward(x, weight, output_grad, options);
        };
        let (weight, dy) = (weight.to_contiguous(), output_grad.to_contiguous());
        let (ws, dys) = (slice(&weight), slice(&dy));
        let (k, p) = (g.k(), g.p());
        let parallelism = inner_parallelism(g.batch);
        let mut dx = vec![0f32; g.batch * g.c_in * g.h * g.w];
        dx.par_chunks_mut(g.c_in * g.h * g.w)
            .zip(dys.par_chunks(g.c_out * p))
            .for_each_init(
                || vec![0f32; k * p],
                |col, (dx, dy)| {
                    // Wᵀ [K, C_out] · ∂y [C_out, P]: W read with swapped strides.
                    matmul(
                        col,
                        false,
                        (k, g.c_out, p),
                        ws,
                        (1, k),
                        dy,
                        (p, 1),
                        parallelism,
                    );
                    g.col2im(col, dx);
                },
            );
        tensor(dx, [g.batch, g.c_in, g.h, g.w])
    }

    fn fast_conv2d_weight_backward(
        x: FlexTensor,
        weight: FlexTensor,
        output_grad: FlexTensor,
        options: ConvOptions<2>,
    ) -> FlexTensor {
        let geometry = Geometry::of(&x, &weight, &options).filter(|g| g.fits_grad(&output_grad));
        let Some(g) = geometry else {
            return <Flex as ModuleOps<Flex>>::conv2d_weight_backward(
                x,
                weight,
                output_grad,
                options,
            );
        };
        let (x, dy) = (x.to_contiguous(), output_grad.to_contiguous());
        let (xs, dys) = (slice(&x), slice(&dy));
        let (k, p) = (g.k(), g.p());
        let parallelism = inner_parallelism(g.batch);
        // Fixed chunks of images, each summed in order, then the chunks' sums in order: the
        // result does not depend on how the threads share the work, so runs are reproducible.
        let (image, grad) = (g.c_in * g.h * g.w, g.c_out * p);
        let partials: Vec<Vec<f32>> = xs
            .par_chunks(image * WEIGHT_GRAD_CHUNK)
            .zip(dys.par_chunks(grad * WEIGHT_GRAD_CHUNK))
            .map(|(xc, dyc)| {
                let (mut dw, mut col) = (vec![0f32; g.c_out * k], vec![0f32; k * p]);
                for (x, dy) in xc.chunks_exact(image).zip(dyc.chunks_exact(grad)) {
                    g.im2col(x, &mut col);
                    matmul(
                        &mut dw,
                        true,
                        (g.c_out, p, k),
                        dy,
                        (p, 1),
                        &col,
                        (1, p),
                        parallelism,
                    );
                }
                dw
            })
            .collect();
        let mut dw = vec![0f32; g.c_out * k];
        for partial in &partials {
            dw.iter_mut().zip(partial).for_each(|(a, b)| *a += b);
        }
        tensor(dw, [g.c_out, g.c_in, g.kh, g.kw])
    }
}
