//! The calling thread as one of rayon's threads, so that the kernels' parallel loops start on a
//! thread that is awake.
//!
//! Called from a thread outside the pool (a program's main thread), each parallel loop of these
//! kernels queues its work, wakes the pool's threads and puts the caller to sleep until they are
//! done: one round trip through the operating system's scheduler per convolution or batch-norm
//! pass, several hundred per training step of a ResNet-20 ensemble, while the pool's threads
//! wait for the serial work between the loops. Called from a thread of the pool, a loop starts on
//! that thread at once and the other threads steal from it.

/// Builds rayon's global pool with the calling thread as its first thread (index 0), and
/// rayon's default number of threads in all (`RAYON_NUM_THREADS`, or one per CPU), the caller
/// included. Call it first thing in a program's `main`, from the thread that stays alive until
/// the end; the thread keeps its own stack, and its thread-local values are dropped at exit as
/// before. Returns `false`, and changes nothing, where the pool exists already.
pub fn join_global_pool() -> bool {
    builder().build_global().is_ok()
}

fn builder() -> rayon::ThreadPoolBuilder {
    rayon::ThreadPoolBuilder::new().use_current_thread()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    /// The same builder on a pool of its own (the global one is shared by every test of this
    /// binary): the thread that builds it is thread 0, and its parallel loops run in the pool.
    #[test]
    fn the_building_thread_is_the_pools_first_thread() {
        std::thread::spawn(|| {
            assert_eq!(rayon::current_thread_index(), None, "a thread of its own");
            let pool = builder().num_threads(2).build().unwrap();
            assert_eq!(rayon::current_thread_index(), Some(0));
            assert_eq!(pool.current_thread_index(), Some(0));
            let sum: u64 = pool.install(|| (1..=100u64).into_par_iter().sum());
            assert_eq!(sum, 5050);
        })
        .join()
        .unwrap();
    }
}
