//! Memory for the `flex` kernels without a zeroing pass: outputs written chunk by chunk straight
//! into fresh allocations, and per-thread scratch (im2col matrices) kept from call to call.
//!
//! A training step of ResNet-20 allocates a few hundred activation-sized buffers. Zeroing one
//! up front (`vec![0.0; n]`) and then overwriting it costs two passes over memory that no longer
//! fits the cache; profiled, the zeroing and the cold first writes took about a quarter of the
//! step (docs/performance.md, "Writing each activation once").

use std::cell::Cell;
use std::mem::MaybeUninit;

use rayon::prelude::*;

/// A vector of `len` values, `len` a multiple of `chunk`, whose chunk `i` is written in parallel
/// by `write(i, chunk)`. `write` must initialise every value of its chunk (with
/// [`MaybeUninit::write`], or with [`zeroed`] before accumulating into it).
pub(crate) fn written(
    len: usize,
    chunk: usize,
    write: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    assert!(chunk > 0 && len.is_multiple_of(chunk));
    let mut out = Vec::<f32>::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk)
        .enumerate()
        .for_each(|(i, c)| write(i, c));
    // SAFETY: `write` initialised each of the `len` values (its contract above); f32 has no
    // invalid bit patterns to guard against beyond being initialised.
    unsafe { out.set_len(len) };
    out
}

/// `chunk` set to zeros, as initialised values to accumulate into.
pub(crate) fn zeroed(chunk: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    chunk.fill(MaybeUninit::new(0.0));
    // SAFETY: every value was just initialised; `MaybeUninit<f32>` has the layout of `f32`.
    unsafe { &mut *(chunk as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// `chunk` as the initialised values it now holds.
///
/// # Safety
///
/// Every value of `chunk` must have been written.
pub(crate) unsafe fn assume_written(chunk: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: the caller guarantees initialisation; the layouts are the same.
    unsafe { &mut *(chunk as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

thread_local! {
    static SCRATCH: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Runs `f` on `len` values of this thread's scratch buffer, kept for the next call. The values
/// are whatever an earlier call left there: `f` must write before it reads. A nested call (a
/// rayon job stolen while `f` waits) gets a buffer of its own.
pub(crate) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buffer = SCRATCH.take();
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    let result = f(&mut buffer[..len]);
    SCRATCH.set(buffer);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_holds_what_each_chunk_wrote_and_zeroed_clears_old_values() {
        let v = written(12, 4, |i, c| {
            for (j, x) in c.iter_mut().enumerate() {
                x.write((10 * i + j) as f32);
            }
        });
        assert_eq!(v, [0., 1., 2., 3., 10., 11., 12., 13., 20., 21., 22., 23.]);
        let mut old = [MaybeUninit::new(7.0f32); 3];
        assert_eq!(zeroed(&mut old), [0.0; 3]);
    }

    #[test]
    fn scratch_is_reused_grown_and_separate_when_nested() {
        let first = with_scratch(8, |s| {
            s.fill(1.0);
            s.as_ptr() as usize
        });
        let again = with_scratch(4, |s| {
            assert_eq!(s, [1.0; 4], "the buffer left by the last call");
            s.as_ptr() as usize
        });
        assert_eq!(first, again);
        with_scratch(4, |outer| {
            outer.fill(2.0);
            with_scratch(4, |inner| inner.fill(3.0));
            assert_eq!(
                outer, [2.0; 4],
                "a nested call must not write into the outer buffer"
            );
        });
        with_scratch(100, |s| assert_eq!(s.len(), 100));
    }
}
