//! The kernel choices of the GPU backends, kept with a run.
//!
//! cubecl, which runs burn's `wgpu` and `cuda` backends, chooses among several kernels for a
//! convolution, a matrix product or a reduction by timing each on its first call (autotuning),
//! and caches the winner on disk. The candidates sum in different orders, so they agree only to
//! rounding; on a loaded machine the timings, and hence the winners, change from process to
//! process. Two runs of one seed then differ in the last bits after the first step, and a resumed
//! run would drift from the uninterrupted one.
//!
//! [`KernelChoices::keep_in`] makes `<run>/kernels.db` the cache while a run trains. A new run's
//! file starts as a copy of the machine's cache (its tuning and compilation records left out),
//! every choice the run makes is written there as it is made, and a resume reads the same
//! choices back, so it runs the same kernels. When the guard drops, the machine's cache imports
//! the run's choices, keeping any it already had. cubecl's cache is process-wide, so one process trains one such run at a
//! time (the run lock already keeps a run to one process). The CPU backends (flex, ndarray,
//! LibTorch) do not autotune and keep nothing.

use std::path::Path;

use crate::device::DeviceKind;

/// The file in a run directory that holds its kernel choices.
pub const FILE: &str = "kernels.db";

/// While alive, cubecl reads and records its kernel choices in a run's [`FILE`]; dropping it
/// goes back to the cache that was in use before.
#[must_use = "the run's kernel choices are kept only while the guard is alive"]
pub struct KernelChoices {
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    /// The cache in use before, and the run's file.
    previous: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl KernelChoices {
    /// Keeps the kernel choices of a run on `devices` in `run`/[`FILE`]; for devices that do
    /// not autotune, it does nothing.
    pub fn keep_in(run: &Path, devices: impl IntoIterator<Item = DeviceKind>) -> Self {
        let tuned = devices
            .into_iter()
            .any(|d| matches!(d, DeviceKind::Wgpu | DeviceKind::Cuda));
        #[cfg(any(feature = "wgpu", feature = "cuda"))]
        {
            use burn::cubecl::{bundle, environment};
            let previous = tuned.then(|| {
                let previous = environment::path();
                let file = run.join(FILE);
                if !file.exists() {
                    // A new run starts from what this machine has tuned and compiled already.
                    // Should the copy fail, the run only tunes and compiles afresh.
                    let copy = bundle::ExportOptions {
                        excluded_namespaces: vec!["records".into()],
                        ..Default::default()
                    };
                    let _ = bundle::export(&[&previous], &file, &copy);
                }
                environment::load(&file);
                (previous, file)
            });
            Self { previous }
        }
        #[cfg(not(any(feature = "wgpu", feature = "cuda")))]
        {
            // Without a cubecl backend no device can autotune.
            let _ = (run, tuned);
            Self {}
        }
    }
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl Drop for KernelChoices {
    fn drop(&mut self) {
        use burn::cubecl::{bundle, environment};
        if let Some((previous, file)) = self.previous.take() {
            environment::load(previous);
            // The machine's cache learns what the run tuned (it keeps what it knew before).
            if let Ok(run) = bundle::open(file) {
                bundle::import(run.as_ref());
            }
        }
    }
}

#[cfg(all(test, feature = "wgpu"))]
mod tests {
    use super::*;
    use burn::cubecl::environment;

    #[test]
    fn only_a_run_on_an_autotuning_device_keeps_its_choices_and_only_while_it_trains() {
        let run = tempfile::tempdir().unwrap();
        let before = environment::path();
        {
            let _cpu = KernelChoices::keep_in(run.path(), [DeviceKind::Cpu, DeviceKind::Tch]);
            assert_eq!(environment::path(), before);
        }
        {
            let _wgpu = KernelChoices::keep_in(run.path(), [DeviceKind::Cpu, DeviceKind::Wgpu]);
            assert_eq!(environment::path(), run.path().join(FILE));
        }
        assert_eq!(environment::path(), before);
    }
}
