//! The PyTorch state dict of an ensemble: which tensor of `interop/adp_models.py`'s `Ensemble`
//! holds which burn parameter, and how its layout changes on the way (interop/README.md has the
//! table).
//!
//! * Module paths are the same on both sides (`members.K.conv1`, `members.K.blocks.I.a.conv`, …),
//!   with burn's enum variant (`Cnn`, `ResNet`) left out.
//! * A `Linear` weight is stored `[in, out]` by burn and `[out, in]` by torch: transposed.
//! * burn's BatchNorm `gamma`/`beta` are torch's `weight`/`bias`; `running_mean`/`running_var`
//!   keep their names; torch's extra `num_batches_tracked` (int64 scalar) is written as 0, since
//!   burn does not count batches (it only matters for `momentum=None`, which the models do not use).
//! * Convolution kernels `[out, in, kh, kw]` and all biases are identical.
//! * Each member's input normalisation, configuration in burn ([`MemberConfig::mean`] and
//!   `std`), is a pair of `[C]` buffers in torch: `members.K.norm.mean` and `members.K.norm.std`.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result, bail, ensure};
use burn::store::burn_pack::{Bytes, DType, Tensor as PackTensor};
use burn::store::{BurnToPyTorchAdapter, ModuleSnapshot, PyTorchToBurnAdapter};

use crate::model::{Ensemble, MemberConfig, ModelKind};

/// Element type of a state-dict entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TorchDtype {
    /// `torch.float32`.
    F32,
    /// `torch.int64`.
    I64,
    /// Anything else, by name (only reported in errors).
    Other(String),
}

impl TorchDtype {
    /// Name as torch prints it.
    pub fn name(&self) -> &str {
        match self {
            TorchDtype::F32 => "float32",
            TorchDtype::I64 => "int64",
            TorchDtype::Other(name) => name,
        }
    }

    /// Bytes per element (`None` for [`TorchDtype::Other`]).
    pub fn size(&self) -> Option<usize> {
        match self {
            TorchDtype::F32 => Some(4),
            TorchDtype::I64 => Some(8),
            TorchDtype::Other(_) => None,
        }
    }

    /// From burn's element type.
    pub fn from_burn(dtype: DType) -> Self {
        match dtype {
            DType::F32 => TorchDtype::F32,
            DType::I64 => TorchDtype::I64,
            other => TorchDtype::Other(format!("{other:?}").to_lowercase()),
        }
    }
}

/// One entry of a PyTorch state dict: row-major, little-endian bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct TorchTensor {
    /// Name in the state dict, e.g. `members.0.conv1.weight`.
    pub name: String,
    /// Element type.
    pub dtype: TorchDtype,
    /// Shape (empty for a scalar).
    pub shape: Vec<usize>,
    /// `numel × element size` bytes.
    pub data: Vec<u8>,
}

impl TorchTensor {
    /// A float32 tensor.
    pub fn f32(name: impl Into<String>, shape: Vec<usize>, values: &[f32]) -> Self {
        Self {
            name: name.into(),
            dtype: TorchDtype::F32,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// An int64 tensor.
    pub fn i64(name: impl Into<String>, shape: Vec<usize>, values: &[i64]) -> Self {
        Self {
            name: name.into(),
            dtype: TorchDtype::I64,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The values of a float32 tensor.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        ensure!(
            self.dtype == TorchDtype::F32,
            "tensor {} is {}, expected float32",
            self.name,
            self.dtype.name()
        );
        Ok(self
            .data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// Reads a tensor that burn-store produced (from a module or a file).
    pub fn from_pack(t: &PackTensor) -> Result<Self> {
        let data = t
            .to_bytes()
            .with_context(|| format!("cannot read the data of tensor {}", t.name))?;
        Ok(Self {
            name: t.name.clone(),
            dtype: TorchDtype::from_burn(t.dtype),
            shape: t.shape.to_vec(),
            data: data.to_vec(),
        })
    }

    fn into_pack(self) -> PackTensor {
        let dtype = match self.dtype {
            TorchDtype::I64 => DType::I64,
            _ => DType::F32,
        };
        PackTensor::new(
            self.name,
            dtype,
            self.shape,
            None,
            Bytes::from_bytes_vec(self.data),
        )
    }
}

/// Name of member `k`'s normalisation buffer `mean` or `std`.
fn norm_name(k: usize, which: &str) -> String {
    format!("members.{k}.norm.{which}")
}

/// The state dict of `adp_models.Ensemble` that holds `model`'s weights, sorted by name.
pub fn state_dict(model: &Ensemble, member: &MemberConfig) -> Result<Vec<TorchTensor>> {
    let mut out = Vec::new();
    for t in model.collect(None, Some(Box::new(BurnToPyTorchAdapter)), true) {
        let t = TorchTensor::from_pack(&t)?;
        ensure!(
            t.dtype == TorchDtype::F32,
            "parameter {} is {}; export needs float32 weights",
            t.name,
            t.dtype.name()
        );
        if let Some(prefix) = t.name.strip_suffix(".running_var") {
            out.push(TorchTensor::i64(
                format!("{prefix}.num_batches_tracked"),
                Vec::new(),
                &[0],
            ));
        }
        out.push(t);
    }
    let c = member.std.len();
    // A per-channel mean is `[C]`; the official code's per-pixel mean image is `[C, H, W]`.
    let mean_shape = if member.mean.len() == c {
        vec![c]
    } else {
        member.input_shape.to_vec()
    };
    for k in 0..model.len() {
        out.push(TorchTensor::f32(
            norm_name(k, "mean"),
            mean_shape.clone(),
            &member.mean,
        ));
        out.push(TorchTensor::f32(norm_name(k, "std"), vec![c], &member.std));
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// What a state dict says about the ensemble it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct Inferred {
    /// Architecture of the members.
    pub kind: ModelKind,
    /// Number of members K.
    pub members: usize,
    /// Number of classes L.
    pub num_classes: usize,
    /// Input channels.
    pub channels: usize,
    /// Normalisation mean: per channel, or a per-pixel image whose first axis is the channel.
    pub mean: Vec<f32>,
    /// Per-channel normalisation standard deviation.
    pub std: Vec<f32>,
}

/// Infers architecture, K, L, input channels and normalisation from a state dict's names and
/// shapes; the input's height and width cannot be read from the weights of every architecture.
pub fn infer(tensors: &[TorchTensor]) -> Result<Inferred> {
    let by_name: BTreeMap<&str, &TorchTensor> =
        tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    let indices: BTreeSet<usize> = tensors
        .iter()
        .filter_map(|t| t.name.strip_prefix("members."))
        .filter_map(|rest| rest.split('.').next()?.parse().ok())
        .collect();
    let example: Vec<&str> = tensors.iter().take(5).map(|t| t.name.as_str()).collect();
    ensure!(
        !indices.is_empty(),
        "no tensor is named members.K.*; this is not the state dict of an adp_models.Ensemble \
         (first names: {example:?}; see interop/README.md)"
    );
    let members = indices.len();
    ensure!(
        members <= crate::model::MAX_MEMBERS,
        "the state dict holds {members} members; adp takes at most {}",
        crate::model::MAX_MEMBERS
    );
    ensure!(
        indices.iter().copied().eq(0..members),
        "the members are numbered {indices:?}; expected members.0 to members.{}",
        members - 1
    );
    let get = |name: &str| -> Result<&TorchTensor> {
        by_name
            .get(name)
            .copied()
            .with_context(|| format!("tensor {name} is missing"))
    };
    let (kind, first, last) = if by_name.contains_key("members.0.conv1.weight") {
        (ModelKind::Cnn, "conv1.weight", "fc2.weight")
    } else if by_name.contains_key("members.0.stem.conv.weight") {
        (ModelKind::Resnet20, "stem.conv.weight", "head.weight")
    } else {
        bail!(
            "neither members.0.conv1.weight (cnn) nor members.0.stem.conv.weight (resnet20) is \
             present; cannot tell the architecture (first names: {example:?})"
        );
    };
    let first = get(&format!("members.0.{first}"))?;
    let last = get(&format!("members.0.{last}"))?;
    ensure!(
        first.shape.len() == 4 && last.shape.len() == 2,
        "{} has shape {:?} and {} has shape {:?}; expected a 4-d kernel and a 2-d weight",
        first.name,
        first.shape,
        last.name,
        last.shape
    );
    let (channels, num_classes) = (first.shape[1], last.shape[0]);
    let mut norm: Option<(Vec<f32>, Vec<f32>)> = None;
    for k in 0..members {
        let mean_tensor = get(&norm_name(k, "mean"))?;
        let per_pixel = mean_tensor.shape.len() == 3 && mean_tensor.shape[0] == channels;
        let mean = mean_tensor.to_f32()?;
        let std = get(&norm_name(k, "std"))?.to_f32()?;
        ensure!(
            (mean.len() == channels || per_pixel) && std.len() == channels,
            "{} must have {channels} entries (one per input channel) or shape [{channels}, H, W], \
             and {} {channels} entries",
            norm_name(k, "mean"),
            norm_name(k, "std")
        );
        ensure!(
            std.iter().all(|s| s.is_finite() && *s > 0.0),
            "{} must be positive, got {std:?}",
            norm_name(k, "std")
        );
        match &norm {
            None => norm = Some((mean, std)),
            Some(n) => ensure!(
                n == &(mean.clone(), std.clone()),
                "member {k} normalises its input with mean {mean:?}, std {std:?}, member 0 with \
                 {:?}, {:?}; adp's members share one normalisation",
                n.0,
                n.1
            ),
        }
    }
    let (mean, std) = norm.expect("at least one member");
    Ok(Inferred {
        kind,
        members,
        num_classes,
        channels,
        mean,
        std,
    })
}

/// Checks that `found` has exactly the names, shapes and dtypes of `expected`; the error lists
/// every offending tensor.
pub fn check_layout(expected: &[TorchTensor], found: &[TorchTensor]) -> Result<()> {
    check(expected, found, true)
}

/// [`check_layout`] on names, shapes and dtypes only: for tensors whose data has not been read
/// yet (it is then read only if they fit).
pub fn check_names_and_shapes(expected: &[TorchTensor], found: &[TorchTensor]) -> Result<()> {
    check(expected, found, false)
}

fn check(expected: &[TorchTensor], found: &[TorchTensor], with_data: bool) -> Result<()> {
    let want: BTreeMap<&str, &TorchTensor> =
        expected.iter().map(|t| (t.name.as_str(), t)).collect();
    let have: BTreeMap<&str, &TorchTensor> = found.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut problems = Vec::new();
    for (name, w) in &want {
        match have.get(name) {
            None => problems.push(format!("missing {name} {:?}", w.shape)),
            Some(h) if h.shape != w.shape => problems.push(format!(
                "{name} has shape {:?}, expected {:?}",
                h.shape, w.shape
            )),
            Some(h) if h.dtype != w.dtype && w.dtype == TorchDtype::F32 => problems.push(format!(
                "{name} is {}, expected float32 (save the model after `.float()`)",
                h.dtype.name()
            )),
            Some(h) if !matches!(h.dtype, TorchDtype::I64 | TorchDtype::F32) => problems.push(
                format!("{name} is {}, expected {}", h.dtype.name(), w.dtype.name()),
            ),
            Some(h) if with_data && h.dtype.size().map(|s| s * h.numel()) != Some(h.data.len()) => {
                problems.push(format!(
                    "{name} holds {} bytes, not {} for its shape",
                    h.data.len(),
                    h.numel() * h.dtype.size().unwrap_or(0)
                ))
            }
            Some(_) => {}
        }
    }
    for (name, h) in &have {
        if !want.contains_key(name) {
            problems.push(format!("unexpected {name} {:?}", h.shape));
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    let shown = problems.len().min(12);
    bail!(
        "{} tensor(s) do not match: {}{}",
        problems.len(),
        problems[..shown].join("; "),
        if problems.len() > shown {
            format!("; and {} more", problems.len() - shown)
        } else {
            String::new()
        }
    )
}

/// Loads a state dict that [`check_layout`] accepted into `model` (the normalisation buffers
/// and `num_batches_tracked` are configuration, not parameters, in burn).
pub fn load_state_dict(mut model: Ensemble, tensors: Vec<TorchTensor>) -> Result<Ensemble> {
    let params: Vec<PackTensor> = tensors
        .into_iter()
        .filter(|t| !t.name.contains(".norm.") && !t.name.ends_with(".num_batches_tracked"))
        .map(TorchTensor::into_pack)
        .collect();
    let result = model.apply(params, None, Some(Box::new(PyTorchToBurnAdapter)), true);
    ensure!(
        result.errors.is_empty() && result.missing.is_empty() && result.unused.is_empty(),
        "the weights do not fit the model: {result}"
    );
    Ok(model)
}
