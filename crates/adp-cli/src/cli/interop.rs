//! `adp export` and `adp import`: a run's weights to and from PyTorch state dicts.

use std::path::PathBuf;

use anyhow::Result;

use adp::data::DatasetKind;
use adp::device::DeviceKind;
use adp::model::ModelKind;

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// The run directory.
    pub run: PathBuf,
    /// File format.
    #[arg(long, value_enum, default_value = "pytorch")]
    pub format: adp::interop::ExportFormat,
    /// Weights file to write (`.pt` or `.safetensors`).
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the first N test images with every member's logits on them to
    /// `<out>.reference.safetensors`, to check a loaded copy.
    #[arg(long)]
    pub reference: Option<usize>,
    /// Directory of the data set for --reference (default: the run's).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// The `.pt` or `.safetensors` state dict (torch names, see interop/README.md).
    pub file: PathBuf,
    /// Architecture of the members (default: read from the tensor names; checked if given).
    #[arg(long, value_enum)]
    pub model: Option<ModelKind>,
    /// Number of members K (default: read from the tensor names; checked if given).
    #[arg(long)]
    pub members: Option<usize>,
    /// Data set the weights belong to (default: from the file's description).
    #[arg(long, value_enum)]
    pub dataset: Option<DatasetKind>,
    /// Directory of that data set (default: data/DATASET).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Run directory to create.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run_export(a: ExportArgs) -> Result<()> {
    let opts = adp::interop::ExportOptions {
        format: a.format,
        out: a.out,
        reference: a.reference,
        data_dir: a.data_dir,
    };
    let meta = adp::interop::export_run(&a.run, &opts, &DeviceKind::Cpu.device()?)?;
    println!(
        "exported {} ({} x {:?}, {} classes) to {} (described in {})",
        meta.label,
        meta.members,
        meta.architecture,
        meta.num_classes,
        opts.out.display(),
        adp::interop::files::meta_path(&opts.out).display()
    );
    Ok(())
}

pub fn run_import(a: ImportArgs) -> Result<()> {
    let opts = adp::interop::ImportOptions {
        file: a.file,
        model: a.model,
        members: a.members,
        dataset: a.dataset,
        data_dir: a.data_dir,
        out: a.out,
    };
    let spec = adp::interop::import_file(&opts, &DeviceKind::Cpu.device()?)?;
    println!(
        "imported {} x {:?} into {}; evaluate with `adp eval {}`",
        spec.members,
        spec.member.kind,
        opts.out.display(),
        opts.out.display()
    );
    Ok(())
}
