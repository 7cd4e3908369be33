//! Weight interop with PyTorch: `adp export` writes an ensemble's weights as a state dict of the
//! equivalent `torch.nn` model in `interop/adp_models.py` (`.pt` or `.safetensors`), and
//! `adp import` turns such a state dict, trained in PyTorch or exported, back into a run
//! directory that `adp eval` and `adp attack` accept.
//!
//! [`layout`] maps names and layouts, [`pt`] writes `torch.save` archives, [`files`] reads and
//! writes both formats, [`export`] and [`import`] are the two commands.

pub mod export;
pub mod files;
pub mod import;
pub mod layout;
pub mod pt;

use serde::{Deserialize, Serialize};

use crate::data::DatasetKind;
use crate::model::ModelKind;

pub use export::{ExportOptions, export_run};
pub use import::{ImportOptions, import_file};

/// File format of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum ExportFormat {
    /// A `torch.save` archive (`.pt`), loadable with `torch.load(path, weights_only=True)`.
    Pytorch,
    /// A `.safetensors` file with torch names, the description in its metadata.
    Safetensors,
}

/// What the Python side needs to build the model a state dict belongs to; written as
/// `<weights file>.json` next to every export and, for safetensors, also into its metadata
/// (key `adp`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportMeta {
    /// Always `adp-ensemble`.
    pub format: String,
    /// Version of `adp` that wrote the file.
    pub adp_version: String,
    /// Member architecture (`cnn` or `resnet20`).
    pub architecture: ModelKind,
    /// Number of members K.
    pub members: usize,
    /// Number of classes L.
    pub num_classes: usize,
    /// Input `[channels, height, width]`, pixels in `[0, 1]`.
    pub input_shape: [usize; 3],
    /// Per-channel mean subtracted inside each member (also in the state dict).
    pub mean: Vec<f32>,
    /// Per-channel standard deviation divided out inside each member (also in the state dict).
    pub std: Vec<f32>,
    /// BatchNorm ε of ResNet-20 (Keras' 1e-3).
    pub batch_norm_eps: f64,
    /// BatchNorm momentum in torch's convention (Keras' 0.99 is 0.01).
    pub batch_norm_momentum: f64,
    /// Data set the run was trained on, when known.
    pub dataset: Option<DatasetKind>,
    /// Label of the run, e.g. `ADP_{2,0.5}`.
    pub label: String,
}

/// `"adp-ensemble"`, the `format` of every [`ExportMeta`].
pub const META_FORMAT: &str = "adp-ensemble";
