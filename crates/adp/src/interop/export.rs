//! `adp export`: a run's ensemble as the state dict of `interop/adp_models.py`'s `Ensemble`,
//! plus its description and, on request, reference inputs and logits to check a loaded copy.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Result, ensure};
use burn::prelude::*;

use super::files::{meta_path, write_safetensors};
use super::layout::{TorchTensor, state_dict};
use super::{ExportFormat, ExportMeta, META_FORMAT, pt};
use crate::data::{Batcher, Split, load_dataset};
use crate::model::Ensemble;
use crate::train::TrainConfig;
use crate::train::checkpoint::load_run;

/// What `adp export` writes.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// File format.
    pub format: ExportFormat,
    /// Weights file to write; the description goes to `<out>.json`.
    pub out: PathBuf,
    /// Also write the first N test images, their labels and every member's logits on them to
    /// `<out>.reference.safetensors`.
    pub reference: Option<usize>,
    /// Directory of the data set for `reference` (default: the run's).
    pub data_dir: Option<PathBuf>,
}

/// Where the reference inputs and logits of an export go: `<out>.reference.safetensors`.
pub fn reference_path(out: &Path) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".reference.safetensors");
    PathBuf::from(name)
}

/// Exports the trained ensemble of `run`; returns its description.
pub fn export_run(run: &Path, opts: &ExportOptions, device: &Device) -> Result<ExportMeta> {
    let (spec, model) = load_run(run, device)?;
    let _lock = crate::lock::lock_if_inside(run, &opts.out, "export")?;
    let config_path = run.join("config.toml");
    let config: Option<TrainConfig> = if config_path.exists() {
        Some(crate::io::read_toml(&config_path)?)
    } else {
        None
    };
    let m = &spec.member;
    let meta = ExportMeta {
        format: META_FORMAT.into(),
        adp_version: env!("CARGO_PKG_VERSION").into(),
        architecture: m.kind,
        members: spec.members,
        num_classes: m.num_classes,
        input_shape: m.input_shape,
        mean: m.mean.clone(),
        std: m.std.clone(),
        batch_norm_eps: 1e-3,
        batch_norm_momentum: 0.01,
        dataset: config.as_ref().map(|c| c.dataset),
        label: config.as_ref().map_or("unknown".into(), |c| c.label()),
    };
    let tensors = state_dict(&model, m)?;
    let json = serde_json::to_string_pretty(&meta)?;
    match opts.format {
        ExportFormat::Pytorch => pt::write(&opts.out, &tensors)?,
        ExportFormat::Safetensors => {
            let metadata = HashMap::from([
                ("format".to_string(), META_FORMAT.to_string()),
                ("adp".to_string(), json.clone()),
                ("architecture".to_string(), kind_name(&meta)),
                ("members".to_string(), meta.members.to_string()),
                ("classes".to_string(), meta.num_classes.to_string()),
                ("input_shape".to_string(), format!("{:?}", meta.input_shape)),
                (
                    "dataset".to_string(),
                    meta.dataset.map_or("unknown", |d| d.name()).to_string(),
                ),
            ]);
            write_safetensors(&opts.out, &tensors, metadata)?;
        }
    }
    crate::io::atomic_write(&meta_path(&opts.out), json.as_bytes())?;
    if let Some(n) = opts.reference {
        ensure!(n >= 1, "`reference` must be at least 1");
        let config = config.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "{} has no config.toml, so its data set is unknown",
                run.display()
            )
        })?;
        let dir = opts.data_dir.clone().unwrap_or(config.data_dir.clone());
        let test = load_dataset(&dir, config.dataset, Split::Test)?.take(n);
        let refs = reference(&model.valid(), &test, device);
        write_safetensors(&reference_path(&opts.out), &refs, HashMap::new())?;
    }
    Ok(meta)
}

fn kind_name(meta: &ExportMeta) -> String {
    serde_json::to_value(meta.architecture)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// `images` `[N, C, H, W]`, `labels` `[N]` and the members' `logits` `[N, K, L]` on `data`.
pub fn reference(
    model: &Ensemble,
    data: &crate::data::Dataset,
    device: &Device,
) -> Vec<TorchTensor> {
    let [c, h, w] = data.shape;
    let n = data.len();
    let mut logits = Vec::new();
    let mut dims = [0usize; 3];
    for batch in Batcher::sequential(data, 250).iter(device) {
        let z = model.forward(batch.images).logits;
        dims = z.dims();
        logits.extend(crate::tensor::floats::<f32, _>(z));
    }
    let labels: Vec<i64> = data.labels.iter().map(|&l| l as i64).collect();
    vec![
        TorchTensor::f32("images", vec![n, c, h, w], &data.images),
        TorchTensor::i64("labels", vec![n], &labels),
        TorchTensor::f32("logits", vec![n, dims[1], dims[2]], &logits),
    ]
}
