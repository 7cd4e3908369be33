//! Reading and writing torch-named state dicts as `.pt` (burn-store's PyTorch reader, our
//! [`super::pt`] writer) or `.safetensors`, and the `<weights>.json` description beside them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::store::{ModuleStore, PytorchStore};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::ExportMeta;
use super::layout::{TorchDtype, TorchTensor};
use burn::store::burn_pack::Tensor as PackTensor;

/// Where the description of the weights file `weights` lives: `<weights>.json`.
pub fn meta_path(weights: &Path) -> PathBuf {
    let mut name = weights.as_os_str().to_owned();
    name.push(".json");
    PathBuf::from(name)
}

/// Whether `path` names a safetensors file (by its extension); everything else is read as a
/// PyTorch checkpoint.
pub fn is_safetensors(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "safetensors")
}

/// Writes tensors and string metadata as a safetensors file (atomically).
pub fn write_safetensors(
    path: &Path,
    tensors: &[TorchTensor],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let views = tensors
        .iter()
        .map(|t| {
            let dtype = match t.dtype {
                TorchDtype::F32 => Dtype::F32,
                TorchDtype::I64 => Dtype::I64,
                TorchDtype::Other(ref name) => {
                    anyhow::bail!("cannot write {} of type {name}", t.name)
                }
            };
            let view = TensorView::new(dtype, t.shape.clone(), &t.data)
                .with_context(|| format!("tensor {} does not fit its shape", t.name))?;
            Ok((t.name.as_str(), view))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = crate::io::canonical_safetensors(safetensors::serialize(views, Some(metadata))?)?;
    crate::io::atomic_write(path, &bytes)
}

/// Reads every tensor of a safetensors file and its string metadata.
pub fn read_safetensors(path: &Path) -> Result<(Vec<TorchTensor>, HashMap<String, String>)> {
    let bytes = crate::io::read_regular(path, crate::train::checkpoint::MAX_WEIGHTS_FILE)?;
    let corrupt = || format!("{} is not a valid safetensors file", path.display());
    let (_, header) = SafeTensors::read_metadata(&bytes).with_context(corrupt)?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let file = SafeTensors::deserialize(&bytes).with_context(corrupt)?;
    let mut tensors: Vec<TorchTensor> = file
        .iter()
        .map(|(name, view)| TorchTensor {
            name: name.to_string(),
            dtype: match view.dtype() {
                Dtype::F32 => TorchDtype::F32,
                Dtype::I64 => TorchDtype::I64,
                other => TorchDtype::Other(format!("{other:?}").to_lowercase()),
            },
            shape: view.shape().to_vec(),
            data: view.data().to_vec(),
        })
        .collect();
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((tensors, metadata))
}

/// A tensor of a state dict whose name, dtype and shape are known but whose data may not have
/// been read (or inflated) yet.
pub struct Deferred {
    /// Name, dtype and shape; `data` is empty until [`Deferred::load`].
    pub header: TorchTensor,
    source: Option<PackTensor>,
}

impl Deferred {
    /// Reads the tensor's data (for a `.pt`, inflating its storage).
    pub fn load(self) -> Result<TorchTensor> {
        match self.source {
            None => Ok(self.header),
            Some(pack) => TorchTensor::from_pack(&pack),
        }
    }
}

impl From<TorchTensor> for Deferred {
    /// A tensor whose data is already read.
    fn from(t: TorchTensor) -> Self {
        Self {
            header: t,
            source: None,
        }
    }
}

/// The tensors of a PyTorch checkpoint (`torch.save` of a state dict, any of torch's container
/// formats) by name, dtype and shape, read with burn-store's reader; no storage is inflated.
pub fn read_pt_deferred(path: &Path) -> Result<Vec<Deferred>> {
    anyhow::ensure!(path.exists(), "{} does not exist", path.display());
    // A FIFO or device would block or never end; burn-store opens the path itself.
    crate::io::open_regular(path)?;
    let mut store = PytorchStore::from_file(path).map_indices_contiguous(false);
    let all = store.get_all_tensors().with_context(|| {
        format!(
            "cannot read {} as a PyTorch checkpoint (expected `torch.save(model.state_dict(), path)`)",
            path.display()
        )
    })?;
    Ok(all
        .values()
        .map(|t| Deferred {
            header: TorchTensor {
                name: t.name.clone(),
                dtype: super::layout::TorchDtype::from_burn(t.dtype),
                shape: t.shape.to_vec(),
                data: Vec::new(),
            },
            source: Some(t.clone()),
        })
        .collect())
}

/// Reads every tensor of a PyTorch checkpoint (`torch.save` of a state dict, any of torch's
/// container formats) with burn-store's reader.
pub fn read_pt(path: &Path) -> Result<Vec<TorchTensor>> {
    read_pt_deferred(path)?
        .into_iter()
        .map(|t| {
            t.load()
                .with_context(|| format!("{} is truncated or corrupt", path.display()))
        })
        .collect()
}

/// The state dict in `path` (`.safetensors` by extension, else a PyTorch checkpoint) and its
/// description: the safetensors metadata key `adp`, else `<path>.json` when present.
pub fn read_weights(path: &Path) -> Result<(Vec<TorchTensor>, Option<ExportMeta>)> {
    let (deferred, meta) = read_weights_deferred(path)?;
    let tensors = deferred
        .into_iter()
        .map(|t| {
            t.load()
                .with_context(|| format!("{} is truncated or corrupt", path.display()))
        })
        .collect::<Result<_>>()?;
    Ok((tensors, meta))
}

/// [`read_weights`] without reading the data of a `.pt`'s tensors: their names and shapes can
/// be checked before any storage is inflated.
pub fn read_weights_deferred(path: &Path) -> Result<(Vec<Deferred>, Option<ExportMeta>)> {
    let (tensors, embedded) = if is_safetensors(path) {
        let (tensors, metadata) = read_safetensors(path)?;
        (
            tensors.into_iter().map(Deferred::from).collect(),
            metadata.get("adp").cloned(),
        )
    } else {
        (read_pt_deferred(path)?, None)
    };
    let side = meta_path(path);
    let text = match embedded {
        Some(text) => Some(text),
        None if side.exists() => Some(crate::io::read_text(&side)?),
        None => None,
    };
    let meta = text
        .map(|t| {
            serde_json::from_str::<ExportMeta>(&t).with_context(|| {
                format!(
                    "the description of {} (metadata key `adp` or {}) is corrupt; delete it and \
                     give `model`, `members` and `dataset`",
                    path.display(),
                    side.display()
                )
            })
        })
        .transpose()?;
    Ok((tensors, meta))
}
