//! The attacks' random draws (random starts, Square's stripes and squares), made through
//! [`uniform`] so that a caller can record them. A [`Cascade`](super::Cascade) resumed from a
//! saved stage replays that stage's draws ([`replay`]) instead of running it: the device's
//! generator then stands where the uninterrupted run left it, and the later stages draw the same
//! numbers, so a resumed evaluation equals an uninterrupted one example for example.

use std::cell::RefCell;

use anyhow::{Result, bail};
use burn::prelude::*;
use burn::tensor::Distribution;
use serde::{Deserialize, Serialize};

/// One draw: a tensor of numbers uniform in `[low, high)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Draw {
    /// The tensor's shape.
    pub shape: Vec<usize>,
    /// Lower bound.
    pub low: f64,
    /// Upper bound.
    pub high: f64,
}

thread_local! {
    /// The draws of the innermost [`recorded`] call running on this thread, if any.
    static LOG: RefCell<Option<Vec<Draw>>> = const { RefCell::new(None) };
}

/// A tensor of numbers uniform in `[low, high)` from the device's generator, logged where a
/// [`recorded`] call is running.
pub fn uniform<const D: usize>(
    shape: [usize; D],
    low: f64,
    high: f64,
    device: &Device,
) -> Tensor<D> {
    LOG.with_borrow_mut(|log| {
        if let Some(log) = log {
            log.push(Draw {
                shape: shape.to_vec(),
                low,
                high,
            });
        }
    });
    Tensor::random(shape, Distribution::Uniform(low, high), device)
}

/// Runs `f` and returns what it returned with the draws it made, in order. A call nested in
/// another passes its draws on to the outer one too.
pub fn recorded<T>(f: impl FnOnce() -> T) -> (T, Vec<Draw>) {
    let outer = LOG.with_borrow_mut(|log| log.replace(Vec::new()));
    let out = f();
    let draws = LOG.with_borrow_mut(|log| std::mem::replace(log, outer).unwrap_or_default());
    LOG.with_borrow_mut(|log| {
        if let Some(outer) = log {
            outer.extend(draws.iter().cloned());
        }
    });
    (out, draws)
}

/// Makes `draws` again and drops them: the generator advances as it did when they were made.
pub fn replay(draws: &[Draw], device: &Device) -> Result<()> {
    for d in draws {
        let (low, high) = (d.low, d.high);
        match *d.shape.as_slice() {
            [a] => drop(uniform([a], low, high, device)),
            [a, b] => drop(uniform([a, b], low, high, device)),
            [a, b, c] => drop(uniform([a, b, c], low, high, device)),
            [a, b, c, e] => drop(uniform([a, b, c, e], low, high, device)),
            _ => bail!(
                "a recorded draw has {} dimensions; attacks draw tensors of 1 to 4",
                d.shape.len()
            ),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // That replaying leaves the generator where drawing left it is checked in
    // tests/resume.rs, a test binary of its own: the generator is global to the process, so
    // tests running beside it would draw from it too.
    #[test]
    fn a_record_lists_the_draws_in_order_and_passes_them_outwards() {
        let d = crate::device::cpu();
        let ((_, inner), all) = recorded(|| {
            let outer = uniform([4], 0.0, 1.0, &d);
            let inner = recorded(|| {
                uniform([3, 2], -1.0, 1.0, &d);
                uniform([2, 1, 2, 3], -0.3, 0.3, &d)
            });
            (outer, inner.1)
        });
        let shapes: Vec<_> = all.iter().map(|d| d.shape.clone()).collect();
        assert_eq!(shapes, [vec![4], vec![3, 2], vec![2, 1, 2, 3]]);
        assert_eq!(all[1..], inner[..]);
        assert_eq!((all[2].low, all[2].high), (-0.3, 0.3));
        assert!(
            LOG.with_borrow(|log| log.is_none()),
            "no record runs outside `recorded`"
        );
        assert!(
            replay(
                &[Draw {
                    shape: vec![1; 5],
                    low: 0.0,
                    high: 1.0
                }],
                &d
            )
            .is_err()
        );
    }
}
