//! Reading and writing torch-named state dicts as `.pt` (burn-store's PyTorch reader, our
//! [`super::pt`] writer) or `.safetensors`, and the `<weights>.json` description beside them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::store::{ModuleStore, PytorchStore};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::ExportMeta;
use super::layout::{TorchDtype, TorchTensor};

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
    let bytes = safetensors::serialize(views, Some(metadata))?;
    crate::io::atomic_write(path, &bytes)
}

/// Reads every tensor of a safetensors file and its string metadata.
pub fn read_safetensors(path: &Path) -> Result<(Vec<TorchTensor>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
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

/// Reads every tensor of a PyTorch checkpoint (`torch.save` of a state dict, any of torch's
/// container formats) with burn-store's reader.
pub fn read_pt(path: &Path) -> Result<Vec<TorchTensor>> {
    anyhow::ensure!(path.exists(), "{} does not exist", path.display());
    let mut store = PytorchStore::from_file(path).map_indices_contiguous(false);
    let all = store.get_all_tensors().with_context(|| {
        format!(
            "cannot read {} as a PyTorch checkpoint (expected `torch.save(model.state_dict(), path)`)",
            path.display()
        )
    })?;
    all.values()
        .map(|t| {
            TorchTensor::from_pack(t)
                .with_context(|| format!("{} is truncated or corrupt", path.display()))
        })
        .collect()
}

/// The state dict in `path` (`.safetensors` by extension, else a PyTorch checkpoint) and its
/// description: the safetensors metadata key `adp`, else `<path>.json` when present.
pub fn read_weights(path: &Path) -> Result<(Vec<TorchTensor>, Option<ExportMeta>)> {
    let (tensors, embedded) = if is_safetensors(path) {
        let (tensors, metadata) = read_safetensors(path)?;
        (tensors, metadata.get("adp").cloned())
    } else {
        (read_pt(path)?, None)
    };
    let side = meta_path(path);
    let text = match embedded {
        Some(text) => Some(text),
        None if side.exists() => Some(
            std::fs::read_to_string(&side)
                .with_context(|| format!("cannot read {}", side.display()))?,
        ),
        None => None,
    };
    let meta = text
        .map(|t| {
            serde_json::from_str::<ExportMeta>(&t).with_context(|| {
                format!(
                    "the description of {} (metadata key `adp` or {}) is corrupt; delete it and \
                     pass --model, --members and --dataset",
                    path.display(),
                    side.display()
                )
            })
        })
        .transpose()?;
    Ok((tensors, meta))
}
