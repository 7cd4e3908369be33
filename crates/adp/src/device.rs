//! Run-time choice of the device, and so of the burn backend: `--device cpu|tch|cuda|wgpu`, and
//! of the devices of a member-parallel placement: `--devices cpu,wgpu` or `tch-cuda:0,tch-cuda:1`.

use burn::prelude::Device;
use serde::{Deserialize, Serialize};

/// The CPU device of this build: `flex`, or `ndarray` when built without it. Tests and examples
/// use it instead of `Device::default()`, which picks a GPU backend (wgpu, CUDA) whenever one is
/// compiled in.
///
/// # Panics
///
/// In a build without a CPU backend (`--no-default-features --features wgpu`).
pub fn cpu() -> Device {
    DeviceKind::Cpu
        .device()
        .expect("this build has a CPU backend (feature flex or ndarray)")
}

/// The `BURN_DEVICE` value that makes [`cpu`] burn's `Device::default()`. burn creates the
/// optimizer states it loads from a checkpoint on `Device::default()` (they move to their
/// parameters' devices at the next step), and that default is a GPU backend whenever one is
/// compiled in, which panics on a machine without that GPU. A program that resumes training,
/// such as the `adp` binary, sets `BURN_DEVICE` to this before it starts any thread.
pub const CPU_BURN_DEVICE: &str = if cfg!(feature = "flex") {
    "flex"
} else {
    "ndarray"
};

/// A device the user can ask for on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum DeviceKind {
    /// burn's pure-Rust CPU backend (`flex`, default feature; `ndarray` when built with
    /// `--no-default-features --features ndarray`).
    #[default]
    Cpu,
    /// NVIDIA GPU through CUDA (cargo feature `cuda`).
    Cuda,
    /// Any GPU through wgpu (Vulkan/Metal/DX12; cargo feature `wgpu`).
    Wgpu,
    /// The CPU through LibTorch, burn's `tch` backend (cargo feature `tch`; libtorch from the
    /// PyTorch wheel, see docs/backends.md).
    Tch,
    /// An NVIDIA GPU through LibTorch (cargo feature `tch`): the CUDA build of the PyTorch wheel
    /// brings `libtorch_cuda`, cuBLAS and cuDNN, so only the driver is needed. GPU 0 of those
    /// `CUDA_VISIBLE_DEVICES` shows.
    TchCuda,
}

/// One device of a member-parallel placement (`--devices`): a backend and, for the CUDA
/// backends, which GPU. Written `cpu`, `wgpu`, `tch`, `cuda:1` or `tch-cuda:3` (no index is
/// GPU 0), on the command line and in `config.toml` alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceSpec {
    /// The backend.
    pub kind: DeviceKind,
    /// The GPU's index among those `CUDA_VISIBLE_DEVICES` shows; 0 for the other backends.
    pub index: usize,
}

impl DeviceSpec {
    /// GPU 0, or the only device, of `kind`.
    pub fn first(kind: DeviceKind) -> Self {
        Self { kind, index: 0 }
    }

    /// Creates the device, or explains which cargo feature to build with or which GPU is
    /// missing.
    pub fn device(self) -> anyhow::Result<Device> {
        match (self.kind, self.index) {
            (kind, 0) => kind.device(),
            #[cfg(feature = "cuda")]
            (DeviceKind::Cuda, i) => Ok(Device::cuda(i)),
            #[cfg(feature = "tch")]
            #[allow(deprecated)]
            (DeviceKind::TchCuda, i) => {
                let n = tch::Cuda::device_count().max(0) as usize;
                anyhow::ensure!(
                    i < n,
                    "device tch-cuda:{i}: libtorch finds {n} CUDA GPU(s), numbered from 0; {}",
                    if n == 0 {
                        why_no_cuda()
                    } else {
                        "check CUDA_VISIBLE_DEVICES"
                    }
                );
                Ok(Device::libtorch_cuda(i))
            }
            (DeviceKind::Cuda | DeviceKind::TchCuda, _) => self.kind.device(),
            (kind, i) => anyhow::bail!(
                "device {}:{i}: only the CUDA backends (cuda, tch-cuda) take a GPU index; write `{}`",
                kind.name(),
                kind.name()
            ),
        }
    }
}

/// The devices of a placement, member k on entry k mod n: `devices`, or `device` alone where
/// `devices` is empty. The first is the primary device (the data, the loss, the ensemble's
/// output). Every device is created here, so that a missing one fails before any work.
pub fn placement(device: DeviceKind, devices: &[DeviceSpec]) -> anyhow::Result<Vec<Device>> {
    match devices {
        [] => Ok(vec![device.device()?]),
        specs => specs.iter().map(|d| d.device()).collect(),
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.index {
            0 => f.write_str(self.kind.name()),
            i => write!(f, "{}:{i}", self.kind.name()),
        }
    }
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, index) = match s.split_once(':') {
            None => (s, 0),
            Some((name, i)) => (
                name,
                i.parse()
                    .map_err(|_| format!("`{s}`: the GPU index after `:` must be a number"))?,
            ),
        };
        let kind = DeviceKind::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = DeviceKind::ALL.iter().map(|k| k.name()).collect();
                format!(
                    "`{s}`: unknown device `{name}`; one of {}",
                    names.join(", ")
                )
            })?;
        Ok(Self { kind, index })
    }
}

impl Serialize for DeviceSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl DeviceKind {
    /// Every device kind, in the order of `--help`.
    pub const ALL: [DeviceKind; 5] = [
        DeviceKind::Cpu,
        DeviceKind::Cuda,
        DeviceKind::Wgpu,
        DeviceKind::Tch,
        DeviceKind::TchCuda,
    ];

    /// Creates the device, or explains which cargo feature to build with.
    pub fn device(self) -> anyhow::Result<Device> {
        match self {
            #[cfg(feature = "flex")]
            DeviceKind::Cpu => Ok(Device::flex()),
            // Kept to compare backends (`adp bench`); burn 0.22 deprecates ndarray for flex.
            #[cfg(all(feature = "ndarray", not(feature = "flex")))]
            #[allow(deprecated)]
            DeviceKind::Cpu => Ok(Device::ndarray()),
            #[cfg(feature = "cuda")]
            DeviceKind::Cuda => Ok(Device::cuda(0)),
            #[cfg(feature = "wgpu")]
            DeviceKind::Wgpu => wgpu_device(),
            // burn 0.22 deprecates its tch backend, but on CPU it is the fastest one it has.
            #[cfg(feature = "tch")]
            #[allow(deprecated)]
            DeviceKind::Tch => Ok(Device::libtorch()),
            #[cfg(feature = "tch")]
            #[allow(deprecated)]
            DeviceKind::TchCuda => {
                anyhow::ensure!(
                    tch::Cuda::device_count() > 0,
                    "device tch-cuda: libtorch finds no CUDA GPU: {}",
                    why_no_cuda()
                );
                Ok(Device::libtorch_cuda(0))
            }
            #[allow(unreachable_patterns)]
            other => anyhow::bail!(
                "device {} is not compiled into this binary; rebuild with `{}cargo build --release --features {}`",
                other.name(),
                other.build_env(),
                other.feature()
            ),
        }
    }

    /// Name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
            DeviceKind::Wgpu => "wgpu",
            DeviceKind::Tch => "tch",
            DeviceKind::TchCuda => "tch-cuda",
        }
    }

    /// Environment the build of this device's feature needs.
    fn build_env(self) -> &'static str {
        match self {
            // libtorch from the PyTorch wheel of `bash python/setup.sh` (docs/backends.md).
            DeviceKind::Tch | DeviceKind::TchCuda => {
                "PATH=$PWD/.venv/bin:$PATH LIBTORCH_USE_PYTORCH=1 "
            }
            _ => "",
        }
    }

    fn feature(self) -> &'static str {
        match self {
            DeviceKind::Cpu => "flex",
            DeviceKind::Cuda => "cuda",
            DeviceKind::Wgpu => "wgpu",
            DeviceKind::Tch | DeviceKind::TchCuda => "tch",
        }
    }
}

/// The default wgpu device, initialised once per process: `Err` with one line that says what to
/// install where wgpu finds no adapter (burn would panic at the first tensor instead).
#[cfg(feature = "wgpu")]
fn wgpu_device() -> anyhow::Result<Device> {
    static DEVICE: std::sync::OnceLock<Result<Device, String>> = std::sync::OnceLock::new();
    DEVICE
        .get_or_init(|| {
            Device::wgpu_options()
                .init()
                .map_err(|e| e.to_string().replace('\n', " "))
        })
        .clone()
        .map_err(|e| {
            anyhow::anyhow!(
                "device wgpu: no usable GPU adapter ({e}); install a Vulkan, Metal or DX12 driver \
                 (on Linux without a GPU, `bash .ci/vulkan` installs Debian's software Vulkan)"
            )
        })
}

/// Why libtorch sees no GPU: its CUDA library is not in the process (a CPU-only libtorch), no
/// NVIDIA driver is loaded, or the driver's devices are hidden.
#[cfg(feature = "tch")]
fn why_no_cuda() -> &'static str {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    if !maps.contains("libtorch_cuda") {
        "this build's libtorch has no CUDA (libtorch_cuda.so is not loaded); build against the CUDA wheel that `bash python/setup.sh` installs"
    } else if !std::path::Path::new("/proc/driver/nvidia/version").exists() {
        "no NVIDIA driver is loaded (/proc/driver/nvidia/version is missing); install the driver, or use the `tch` device on the CPU"
    } else {
        "the NVIDIA driver is loaded but shows no device; check `nvidia-smi` and CUDA_VISIBLE_DEVICES"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_spec_reads_and_writes_kind_and_gpu_index() {
        for (text, kind, index) in [
            ("cpu", DeviceKind::Cpu, 0),
            ("wgpu", DeviceKind::Wgpu, 0),
            ("tch-cuda:3", DeviceKind::TchCuda, 3),
            ("cuda:1", DeviceKind::Cuda, 1),
        ] {
            let spec: DeviceSpec = text.parse().unwrap();
            assert_eq!(spec, DeviceSpec { kind, index }, "{text}");
            assert_eq!(spec.to_string(), text);
        }
        assert_eq!("cuda:0".parse::<DeviceSpec>().unwrap().to_string(), "cuda");
        let err = "gpu".parse::<DeviceSpec>().unwrap_err();
        assert!(
            err.contains("unknown device `gpu`") && err.contains("tch-cuda"),
            "{err}"
        );
        let err = "cuda:x".parse::<DeviceSpec>().unwrap_err();
        assert!(err.contains("must be a number"), "{err}");
        let err = "cpu:1".parse::<DeviceSpec>().unwrap().device().unwrap_err();
        assert!(err.to_string().contains("only the CUDA backends"), "{err}");
    }

    #[cfg(not(feature = "tch"))]
    #[test]
    fn a_device_not_compiled_in_names_its_build_command() {
        for spec in [
            DeviceSpec::first(DeviceKind::Tch),
            "tch-cuda:1".parse().unwrap(),
        ] {
            let err = spec.device().unwrap_err().to_string();
            assert!(
                err.contains("LIBTORCH_USE_PYTORCH=1") && err.contains("--features tch"),
                "{err}"
            );
        }
    }
}
