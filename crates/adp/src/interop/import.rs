//! `adp import`: a torch-named state dict (`.pt` or `.safetensors`) of the architectures in
//! `interop/adp_models.py` becomes a run directory for `adp eval` and `adp attack`.
//!
//! Architecture, K, L, input channels and normalisation are read from the tensors; the data set
//! (and so the image size) from `--dataset` or the file's description; every flag given must agree
//! with what the file says.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use burn::prelude::*;

use super::files::{Deferred, read_weights_deferred};
use super::layout::{
    TorchTensor, check_layout, check_names_and_shapes, infer, load_state_dict, state_dict,
};
use crate::data::DatasetKind;
use crate::model::{MemberConfig, ModelKind};
use crate::train::checkpoint::{ModelSpec, save_model};
use crate::train::{Method, TrainConfig};

/// The most entries of a normalisation buffer (a per-pixel mean of the largest input, CIFAR's
/// 3×32×32), checked before the buffer is read.
const MAX_NORM_ENTRIES: usize = 3 * 32 * 32;

/// What `adp import` reads and writes.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// The `.pt` or `.safetensors` state dict.
    pub file: PathBuf,
    /// Expected architecture (checked against the file).
    pub model: Option<ModelKind>,
    /// Expected number of members (checked against the file).
    pub members: Option<usize>,
    /// Data set the weights belong to (default: from the file's description).
    pub dataset: Option<DatasetKind>,
    /// Directory of that data set for later `adp eval` (default: `data/<dataset>`).
    pub data_dir: Option<PathBuf>,
    /// Run directory to create.
    pub out: PathBuf,
}

/// Imports the state dict and writes the run directory; returns the ensemble's description.
pub fn import_file(opts: &ImportOptions, device: &Device) -> Result<ModelSpec> {
    let file = &opts.file;
    ensure!(
        !opts.out.join("model.toml").exists(),
        "{} already holds a run; choose another output directory (`out`)",
        opts.out.display()
    );
    // Names and shapes first: no storage is inflated before they fit an ensemble adp builds.
    // Only the small normalisation buffers, which say what the ensemble is, are read for that.
    let (deferred, meta) = read_weights_deferred(file)?;
    let mut headers = Vec::with_capacity(deferred.len());
    let mut rest = Vec::with_capacity(deferred.len());
    for d in deferred {
        if d.header.name.contains(".norm.") {
            ensure!(
                d.header.numel() <= MAX_NORM_ENTRIES,
                "{}: {} has shape {:?}; a normalisation buffer has at most {MAX_NORM_ENTRIES} entries",
                file.display(),
                d.header.name,
                d.header.shape
            );
            let t = d
                .load()
                .with_context(|| format!("{} is truncated or corrupt", file.display()))?;
            headers.push(t.clone());
            rest.push(Deferred::from(t));
        } else {
            let h = &d.header;
            headers.push(TorchTensor {
                name: h.name.clone(),
                dtype: h.dtype.clone(),
                shape: h.shape.clone(),
                data: Vec::new(),
            });
            rest.push(d);
        }
    }
    let found = infer(&headers).with_context(|| format!("cannot import {}", file.display()))?;
    if let Some(kind) = opts.model {
        ensure!(
            kind == found.kind,
            "model {kind:?} was given, but {} holds {:?} members",
            file.display(),
            found.kind
        );
    }
    if let Some(k) = opts.members {
        ensure!(
            k == found.members,
            "members {k} was given, but {} holds {} members",
            file.display(),
            found.members
        );
    }
    let dataset = match (opts.dataset, meta.as_ref().and_then(|m| m.dataset)) {
        (Some(d), _) | (None, Some(d)) => d,
        (None, None) => bail!(
            "{} does not say which data set it belongs to; set `dataset` (mnist, \
             fashion-mnist, cifar10, cifar100 or cifar100-coarse)",
            file.display()
        ),
    };
    let input_shape = dataset.input_shape();
    if let Some(m) = &meta {
        ensure!(
            m.input_shape == input_shape,
            "{} was exported for {:?} inputs, but `dataset` {} has {:?}",
            file.display(),
            m.input_shape,
            dataset.name(),
            input_shape
        );
    }
    ensure!(
        found.channels == input_shape[0] && found.num_classes == dataset.num_classes(),
        "{} takes {} input channels and predicts {} classes, but {} has {} channels and {} classes",
        file.display(),
        found.channels,
        found.num_classes,
        dataset.name(),
        input_shape[0],
        dataset.num_classes()
    );
    let pixels: usize = input_shape.iter().product();
    ensure!(
        found.mean.len() == input_shape[0] || found.mean.len() == pixels,
        "{}'s normalisation mean has {} entries; {} needs {} (per channel) or {pixels} (per pixel)",
        file.display(),
        found.mean.len(),
        dataset.name(),
        input_shape[0]
    );
    let spec = ModelSpec {
        members: found.members,
        member: MemberConfig {
            kind: found.kind,
            input_shape,
            num_classes: found.num_classes,
            mean: found.mean,
            std: found.std,
        },
    };
    let fresh = spec.init(device);
    let expected = state_dict(&fresh, &spec.member)?;
    let not_ours = || {
        format!(
            "{} is not a {}-member {:?} ensemble for {} as interop/adp_models.py builds it",
            file.display(),
            spec.members,
            spec.member.kind,
            dataset.name()
        )
    };
    check_names_and_shapes(&expected, &headers).with_context(not_ours)?;
    let tensors = rest
        .into_iter()
        .map(|d| {
            d.load()
                .with_context(|| format!("{} is truncated or corrupt", file.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    check_layout(&expected, &tensors).with_context(not_ours)?;
    let model = load_state_dict(fresh, tensors)?;
    let _lock = crate::lock::RunLock::acquire(&opts.out, "import")?;
    ensure!(
        !opts.out.join("model.toml").exists(),
        "{} already holds a run; choose another output directory (`out`)",
        opts.out.display()
    );
    write_run(opts, file, dataset, &spec, &model)?;
    Ok(spec)
}

/// `model.toml`, `config.toml` (marking the run as imported) and `model.safetensors`.
fn write_run(
    opts: &ImportOptions,
    file: &Path,
    dataset: DatasetKind,
    spec: &ModelSpec,
    model: &crate::model::Ensemble,
) -> Result<()> {
    let config = TrainConfig {
        dataset,
        data_dir: opts.data_dir.clone().unwrap_or(dataset.default_dir()),
        model: spec.member.kind,
        members: spec.members,
        imported_from: Some(std::path::absolute(file).unwrap_or(file.to_path_buf())),
        ..TrainConfig::paper_mnist(Method::Ece, 0.0, 0.0)
    };
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("cannot create {}", opts.out.display()))?;
    // model.toml last: it is what marks a directory as a run.
    let sha = save_model(model, &opts.out.join("model.safetensors"))?;
    let manifest = crate::train::Manifest::new(&config, 0, [("model.safetensors", sha)]);
    crate::io::write_json(&opts.out.join("manifest.json"), &manifest)?;
    crate::io::write_toml(&opts.out.join("config.toml"), &config)?;
    crate::io::write_toml(&opts.out.join("model.toml"), spec)
}
