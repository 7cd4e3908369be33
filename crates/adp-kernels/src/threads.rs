//! Where the caller's own work runs: on a thread of rayon's global pool, so that the kernels'
//! parallel loops start on a thread that is awake.
//!
//! Called from a thread outside the pool (a program's main thread), each parallel loop of these
//! kernels queues its work, wakes the pool's threads and puts the caller to sleep until they are
//! done: one round trip through the operating system's scheduler per convolution or batch-norm
//! pass, several hundred per training step of a ResNet-20 ensemble, while the pool's threads
//! wait for the serial work between the loops. Called from a thread of the pool, a loop starts on
//! that thread at once and the other threads steal from it.

/// Stack size of the pool's threads when [`run_in_pool`] builds it: that of a program's main
/// thread on Linux (rayon's threads otherwise get Rust's 2 MiB).
const STACK: usize = 8 << 20;

/// Runs `f` on a thread of rayon's global pool and returns its result. If nothing has built the
/// pool yet, it is built first with 8-MiB stacks and rayon's default number of threads
/// (`RAYON_NUM_THREADS`, or one per CPU); a pool that exists keeps its settings.
pub fn run_in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    // An error here means only that the pool exists already.
    let _ = rayon::ThreadPoolBuilder::new()
        .stack_size(STACK)
        .build_global();
    // `scope` runs its closure on a thread of the pool, the caller waiting for it.
    rayon::scope(|_| f())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_work_runs_on_a_thread_of_the_pool_and_returns_its_result() {
        assert_eq!(rayon::current_thread_index(), None, "a test thread");
        let (index, sum) = run_in_pool(|| {
            let sum: u64 = rayon::iter::ParallelIterator::sum(
                rayon::iter::IntoParallelIterator::into_par_iter(1..=100u64),
            );
            (rayon::current_thread_index(), sum)
        });
        assert!(index.is_some(), "ran outside the pool");
        assert_eq!(sum, 5050);
    }
}
