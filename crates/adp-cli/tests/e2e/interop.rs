//! Weight interop with PyTorch without Python: `adp export` → `adp import` round trips for the
//! CNN and ResNet-20 in both formats, the `.pt` writer read back by burn-store's PyTorch reader,
//! the torch names and layouts of interop/README.md, and clear errors for bad files.

use crate::common;

use std::path::{Path, PathBuf};

use adp::data::DatasetKind;
use adp::data::synthetic::write_synthetic_mnist;
use adp::interop::files::{read_pt, read_safetensors, read_weights, write_safetensors};
use adp::interop::layout::{TorchDtype, TorchTensor, load_state_dict, state_dict};
use adp::interop::{ExportFormat, ExportOptions, ImportOptions, export_run, import_file, pt};
use adp::model::{Ensemble, MemberConfig, ModelKind};
use adp::train::checkpoint::{ModelSpec, load_run, save_model};
use adp::train::{Method, TrainConfig};
use burn::prelude::*;
use burn::store::ModuleSnapshot;
use burn::tensor::Distribution;
use rand::{Rng, SeedableRng};

fn spec(kind: ModelKind, dataset: DatasetKind, members: usize) -> ModelSpec {
    let c = dataset.input_shape()[0];
    ModelSpec {
        members,
        member: MemberConfig {
            kind,
            input_shape: dataset.input_shape(),
            num_classes: dataset.num_classes(),
            mean: (0..c).map(|i| 0.1 + 0.2 * i as f32).collect(),
            std: (0..c).map(|i| 0.3 + 0.05 * i as f32).collect(),
        },
    }
}

/// A fresh ensemble whose every weight, bias and BatchNorm statistic is redrawn at random (so
/// that a swapped running mean and variance, or a missed transpose, changes the logits).
fn randomized(spec: &ModelSpec, seed: u64) -> Ensemble {
    let device = adp::device::cpu();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let fresh = spec.init(&device);
    let sd: Vec<TorchTensor> = state_dict(&fresh, &spec.member)
        .unwrap()
        .into_iter()
        .map(|t| {
            if t.dtype != TorchDtype::F32 || t.name.contains(".norm.") {
                return t;
            }
            let positive = t.name.ends_with("running_var");
            let values: Vec<f32> = (0..t.numel())
                .map(|_| {
                    let u: f32 = rng.random_range(-0.3..0.3);
                    if positive { 1.0 + u } else { u }
                })
                .collect();
            TorchTensor::f32(t.name, t.shape, &values)
        })
        .collect();
    load_state_dict(fresh, sd).unwrap()
}

/// Writes `model` as a finished run directory trained on `dataset` in `data_dir`.
fn write_run(
    dir: &Path,
    spec: &ModelSpec,
    model: &Ensemble,
    dataset: DatasetKind,
    data_dir: &Path,
) {
    std::fs::create_dir_all(dir).unwrap();
    save_model(model, &dir.join("model.safetensors")).unwrap();
    let config = TrainConfig {
        dataset,
        data_dir: data_dir.to_path_buf(),
        model: spec.member.kind,
        members: spec.members,
        ..TrainConfig::paper_mnist(Method::Adp, 2.0, 0.5)
    };
    adp::io::write_toml(&dir.join("config.toml"), &config).unwrap();
    adp::io::write_toml(&dir.join("model.toml"), spec).unwrap();
}

fn logits(model: &Ensemble, x: &Tensor<4>) -> Vec<f64> {
    adp::tensor::floats(model.forward(x.clone()).logits)
}

fn import_opts(file: &Path, dataset: Option<DatasetKind>, out: PathBuf) -> ImportOptions {
    ImportOptions {
        file: file.to_path_buf(),
        model: None,
        members: None,
        dataset,
        data_dir: None,
        out,
    }
}

/// Exports a randomised ensemble in `format`, imports the file, and compares logits and weights.
fn round_trip(kind: ModelKind, dataset: DatasetKind, format: ExportFormat) {
    let tmp = tempfile::tempdir().unwrap();
    let spec = spec(kind, dataset, 2);
    let model = randomized(&spec, 7);
    let run = tmp.path().join("run");
    write_run(&run, &spec, &model, dataset, &tmp.path().join("data"));
    let ext = match format {
        ExportFormat::Pytorch => "pt",
        ExportFormat::Safetensors => "safetensors",
    };
    let file = tmp.path().join(format!("adp.{ext}"));
    let opts = ExportOptions {
        format,
        out: file.clone(),
        reference: None,
        data_dir: None,
    };
    let device = adp::device::cpu();
    let meta = export_run(&run, &opts, &device).unwrap();
    assert_eq!((meta.architecture, meta.members), (kind, 2));
    assert_eq!(meta.dataset, Some(dataset));

    // The description travels with the file, so no flag is needed.
    let back = tmp.path().join("imported");
    let imported = import_file(&import_opts(&file, None, back.clone()), &device).unwrap();
    assert_eq!(imported, spec);
    let (_, reloaded) = load_run(&back, &device).unwrap();
    let [c, h, w] = spec.member.input_shape;
    let x = Tensor::<4>::random([3, c, h, w], Distribution::Uniform(0.0, 1.0), &device);
    let (a, b) = (logits(&model.valid(), &x), logits(&reloaded.valid(), &x));
    assert_eq!(a, b, "logits changed in the round trip");
    assert_eq!(
        state_dict(&model, &spec.member).unwrap(),
        state_dict(&reloaded, &spec.member).unwrap()
    );
    let config: TrainConfig = adp::io::read_toml(&back.join("config.toml")).unwrap();
    assert_eq!(config.dataset, dataset);
    assert!(
        config.label().starts_with("imported adp."),
        "{}",
        config.label()
    );
    assert!(
        config.validate().is_err(),
        "an imported run cannot be trained"
    );
}

#[test]
fn cnn_round_trip_through_pt_gives_identical_logits() {
    round_trip(ModelKind::Cnn, DatasetKind::Mnist, ExportFormat::Pytorch);
}

#[test]
fn cnn_round_trip_through_safetensors_gives_identical_logits() {
    round_trip(
        ModelKind::Cnn,
        DatasetKind::Mnist,
        ExportFormat::Safetensors,
    );
}

#[test]
fn resnet20_round_trip_through_pt_gives_identical_logits() {
    round_trip(
        ModelKind::Resnet20,
        DatasetKind::Cifar10,
        ExportFormat::Pytorch,
    );
}

#[test]
fn resnet20_round_trip_through_safetensors_gives_identical_logits() {
    round_trip(
        ModelKind::Resnet20,
        DatasetKind::Cifar10,
        ExportFormat::Safetensors,
    );
}

#[test]
fn pt_writer_output_is_read_back_by_burn_store_with_the_same_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = spec(ModelKind::Resnet20, DatasetKind::Cifar10, 2);
    let mut tensors = state_dict(&randomized(&spec, 3), &spec.member).unwrap();
    // Sizes that need every integer opcode of the pickle.
    let big: Vec<f32> = (0..70_000).map(|i| i as f32).collect();
    tensors.push(TorchTensor::f32("big", vec![70_000], &big));
    tensors.push(TorchTensor::i64("count", Vec::new(), &[-3]));
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    let path = tmp.path().join("w.pt");
    pt::write(&path, &tensors).unwrap();
    assert_eq!(read_pt(&path).unwrap(), tensors);
    // The file is a torch.save archive: data aligned to 64 bytes, stored uncompressed.
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[..4], b"PK\x03\x04");
}

#[test]
fn exported_names_and_shapes_follow_the_documented_mapping() {
    let device = adp::device::cpu();
    let cnn = spec(ModelKind::Cnn, DatasetKind::Mnist, 2);
    let model = randomized(&cnn, 1);
    let sd = state_dict(&model, &cnn.member).unwrap();
    let names: Vec<(String, Vec<usize>)> = sd
        .iter()
        .filter(|t| t.name.starts_with("members.1."))
        .map(|t| (t.name.clone(), t.shape.clone()))
        .collect();
    let expected: Vec<(String, Vec<usize>)> = [
        ("conv1.bias", vec![32]),
        ("conv1.weight", vec![32, 1, 3, 3]),
        ("conv2.bias", vec![64]),
        ("conv2.weight", vec![64, 32, 3, 3]),
        ("fc1.bias", vec![128]),
        ("fc1.weight", vec![128, 3136]),
        ("fc2.bias", vec![10]),
        ("fc2.weight", vec![10, 128]),
        ("norm.mean", vec![1]),
        ("norm.std", vec![1]),
    ]
    .into_iter()
    .map(|(n, s)| (format!("members.1.{n}"), s))
    .collect();
    assert_eq!(names, expected);
    // Linear weights are transposed, convolution kernels are not.
    let burn: Vec<_> = model.collect(None, None, true);
    let find = |name: &str| burn.iter().find(|t| t.name == name).unwrap();
    let torch = |name: &str| {
        sd.iter()
            .find(|t| t.name == name)
            .unwrap()
            .to_f32()
            .unwrap()
    };
    let fc2 = TorchTensor::from_pack(find("members.1.fc2.weight")).unwrap();
    assert_eq!(fc2.shape, vec![128, 10]);
    let fc2 = fc2.to_f32().unwrap();
    let fc2_t = torch("members.1.fc2.weight");
    for o in 0..10 {
        for i in 0..128 {
            assert_eq!(fc2_t[o * 128 + i], fc2[i * 10 + o]);
        }
    }
    let conv = TorchTensor::from_pack(find("members.1.conv2.weight")).unwrap();
    assert_eq!(conv.to_f32().unwrap(), torch("members.1.conv2.weight"));

    let resnet = spec(ModelKind::Resnet20, DatasetKind::Cifar10, 1);
    let model = randomized(&resnet, 2);
    let sd = state_dict(&model, &resnet.member).unwrap();
    let shape = |name: &str| sd.iter().find(|t| t.name == name).map(|t| t.shape.clone());
    assert_eq!(
        sd.len(),
        21 * 2 + 19 * 5 + 2 + 2,
        "21 convs, 19 BNs, head, norm"
    );
    assert_eq!(shape("members.0.stem.conv.weight"), Some(vec![16, 3, 3, 3]));
    for p in ["weight", "bias", "running_mean", "running_var"] {
        assert_eq!(
            shape(&format!("members.0.blocks.8.b.bn.{p}")),
            Some(vec![64])
        );
    }
    assert_eq!(shape("members.0.stem.bn.num_batches_tracked"), Some(vec![]));
    assert_eq!(
        shape("members.0.blocks.3.shortcut.weight"),
        Some(vec![32, 16, 1, 1])
    );
    assert_eq!(
        shape("members.0.blocks.6.shortcut.weight"),
        Some(vec![64, 32, 1, 1])
    );
    assert_eq!(shape("members.0.blocks.0.shortcut.weight"), None);
    assert_eq!(shape("members.0.head.weight"), Some(vec![10, 64]));
    // BatchNorm gamma/beta are torch's weight/bias; the running statistics keep their names.
    let burn: Vec<_> = model.collect(None, None, true);
    for (b, t) in [
        ("gamma", "weight"),
        ("beta", "bias"),
        ("running_var", "running_var"),
    ] {
        let b = burn
            .iter()
            .find(|x| x.name == format!("members.0.stem.bn.{b}"))
            .unwrap();
        let t = sd
            .iter()
            .find(|x| x.name == format!("members.0.stem.bn.{t}"))
            .unwrap();
        assert_eq!(TorchTensor::from_pack(b).unwrap().data, t.data);
    }
    drop(device);
}

/// A valid exported CNN (K = 2, MNIST) in safetensors form, for the error tests.
fn exported_tensors() -> Vec<TorchTensor> {
    let spec = spec(ModelKind::Cnn, DatasetKind::Mnist, 2);
    state_dict(&randomized(&spec, 5), &spec.member).unwrap()
}

fn import_error(tensors: &[TorchTensor], dataset: Option<DatasetKind>) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("w.safetensors");
    write_safetensors(&file, tensors, Default::default()).unwrap();
    let opts = import_opts(&file, dataset, tmp.path().join("out"));
    let err = import_file(&opts, &adp::device::cpu()).unwrap_err();
    assert!(!tmp.path().join("out/model.toml").exists());
    format!("{err:#}")
}

#[test]
fn shape_and_name_mismatches_are_listed_by_tensor() {
    let mut t = exported_tensors();
    let i = t
        .iter()
        .position(|t| t.name == "members.1.fc1.weight")
        .unwrap();
    t[i] = TorchTensor::f32(
        "members.1.fc1.weight",
        vec![3136, 128],
        &vec![0.0; 3136 * 128],
    );
    let err = import_error(&t, Some(DatasetKind::Mnist));
    assert!(
        err.contains("members.1.fc1.weight has shape [3136, 128], expected [128, 3136]"),
        "{err}"
    );

    let mut t = exported_tensors();
    t.retain(|t| t.name != "members.0.conv2.bias");
    t.push(TorchTensor::f32("members.0.extra", vec![2], &[1.0, 2.0]));
    let err = import_error(&t, Some(DatasetKind::Mnist));
    assert!(err.contains("missing members.0.conv2.bias [64]"), "{err}");
    assert!(err.contains("unexpected members.0.extra [2]"), "{err}");

    // A float64 tensor, as a model saved without `.float()` holds.
    use safetensors::tensor::{Dtype, TensorView};
    let t = exported_tensors();
    let f64_bias = vec![0u8; 80];
    let views: Vec<(&str, TensorView)> = t
        .iter()
        .map(|x| {
            let view = if x.name == "members.0.fc2.bias" {
                TensorView::new(Dtype::F64, vec![10], &f64_bias)
            } else {
                let dtype = if x.dtype == TorchDtype::I64 {
                    Dtype::I64
                } else {
                    Dtype::F32
                };
                TensorView::new(dtype, x.shape.clone(), &x.data)
            };
            (x.name.as_str(), view.unwrap())
        })
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("f64.safetensors");
    std::fs::write(&file, safetensors::serialize(views, None).unwrap()).unwrap();
    let opts = import_opts(&file, Some(DatasetKind::Mnist), tmp.path().join("out"));
    let err = format!("{:#}", import_file(&opts, &adp::device::cpu()).unwrap_err());
    assert!(
        err.contains("members.0.fc2.bias is f64, expected float32"),
        "{err}"
    );
}

#[test]
fn missing_information_and_conflicting_flags_are_explained() {
    let t = exported_tensors();
    let err = import_error(&t, None);
    assert!(err.contains("set `dataset`"), "{err}");
    let err = import_error(&t, Some(DatasetKind::Cifar10));
    assert!(err.contains("1 input channels"), "{err}");

    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("w.safetensors");
    write_safetensors(&file, &t, Default::default()).unwrap();
    let mut opts = import_opts(&file, Some(DatasetKind::Mnist), tmp.path().join("out"));
    opts.members = Some(3);
    let err = format!("{:#}", import_file(&opts, &adp::device::cpu()).unwrap_err());
    assert!(err.contains("members 3 was given, but"), "{err}");
    opts.members = None;
    opts.model = Some(ModelKind::Resnet20);
    let err = format!("{:#}", import_file(&opts, &adp::device::cpu()).unwrap_err());
    assert!(err.contains("model Resnet20 was given"), "{err}");
    opts.model = None;
    import_file(&opts, &adp::device::cpu()).unwrap();
    let err = format!("{:#}", import_file(&opts, &adp::device::cpu()).unwrap_err());
    assert!(err.contains("already holds a run"), "{err}");

    let mut other = t.clone();
    for x in other.iter_mut() {
        x.name = x.name.replace("members.", "net.");
    }
    let err = import_error(&other, Some(DatasetKind::Mnist));
    assert!(err.contains("no tensor is named members.K"), "{err}");
}

#[test]
fn corrupt_and_missing_files_give_errors_not_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("none.pt");
    let err = format!("{:#}", read_weights(&missing).unwrap_err());
    assert!(err.contains("none.pt"), "{err}");

    let garbage = tmp.path().join("garbage.pt");
    std::fs::write(&garbage, b"not a checkpoint at all").unwrap();
    let err = format!("{:#}", read_weights(&garbage).unwrap_err());
    assert!(
        err.contains("cannot read") && err.contains("garbage.pt"),
        "{err}"
    );

    let good = pt::to_bytes(&exported_tensors()).unwrap();
    for cut in [good.len() / 2, good.len() - 30, 100] {
        let truncated = tmp.path().join(format!("cut{cut}.pt"));
        std::fs::write(&truncated, &good[..cut]).unwrap();
        assert!(read_weights(&truncated).is_err(), "cut at {cut}");
    }
    let st = tmp.path().join("bad.safetensors");
    std::fs::write(&st, [8u8, 0, 0, 0, 0, 0, 0, 0, b'{', b'}']).unwrap();
    let err = format!("{:#}", read_safetensors(&st).unwrap_err());
    assert!(err.contains("bad.safetensors"), "{err}");

    let meta_broken = tmp.path().join("m.safetensors");
    write_safetensors(&meta_broken, &exported_tensors(), Default::default()).unwrap();
    std::fs::write(tmp.path().join("m.safetensors.json"), "{").unwrap();
    let err = format!("{:#}", read_weights(&meta_broken).unwrap_err());
    assert!(err.contains("is corrupt"), "{err}");
}

#[test]
fn export_reference_holds_the_runs_logits_on_its_test_images() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_synthetic_mnist(&data, 10, 20, 3).unwrap();
    let spec = spec(ModelKind::Cnn, DatasetKind::Mnist, 2);
    let model = randomized(&spec, 9);
    let run = tmp.path().join("run");
    write_run(&run, &spec, &model, DatasetKind::Mnist, &data);
    let out = tmp.path().join("a.safetensors");
    let opts = ExportOptions {
        format: ExportFormat::Safetensors,
        out: out.clone(),
        reference: Some(5),
        data_dir: None,
    };
    export_run(&run, &opts, &adp::device::cpu()).unwrap();
    let (refs, _) = read_safetensors(&adp::interop::export::reference_path(&out)).unwrap();
    let get = |n: &str| refs.iter().find(|t| t.name == n).unwrap();
    assert_eq!(get("images").shape, vec![5, 1, 28, 28]);
    assert_eq!(get("labels").shape, vec![5]);
    let x = Tensor::<1>::from_floats(
        get("images").to_f32().unwrap().as_slice(),
        &adp::device::cpu(),
    )
    .reshape([5, 1, 28, 28]);
    let expected: Vec<f32> = logits(&model.valid(), &x)
        .into_iter()
        .map(|v| v as f32)
        .collect();
    assert_eq!(get("logits").shape, vec![5, 2, 10]);
    assert_eq!(get("logits").to_f32().unwrap(), expected);
}

#[test]
fn the_command_line_exports_imports_and_evaluates_an_imported_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_synthetic_mnist(&data, 10, 20, 4).unwrap();
    let spec = spec(ModelKind::Cnn, DatasetKind::Mnist, 2);
    let run = tmp.path().join("run");
    write_run(
        &run,
        &spec,
        &randomized(&spec, 11),
        DatasetKind::Mnist,
        &data,
    );
    let adp = |args: &[&str]| {
        let out = common::adp(args);
        (
            out.status.success(),
            common::stdout(&out) + &common::stderr(&out),
        )
    };
    let path = |p: &str| tmp.path().join(p).to_string_lossy().to_string();
    let (ok, text) = adp(&[
        "export",
        &path("run"),
        "--format",
        "pytorch",
        "--out",
        &path("w.pt"),
    ]);
    assert!(ok, "{text}");
    let (ok, text) = adp(&[
        "import",
        &path("w.pt"),
        "--out",
        &path("back"),
        "--data-dir",
        &path("data"),
    ]);
    assert!(ok, "{text}");
    let (ok, text) = adp(&[
        "eval",
        &path("back"),
        "--attack",
        "fgsm",
        "--eps",
        "0.1",
        "--limit",
        "8",
        "--no-indicators",
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("imported w.pt"), "{text}");
    let (ok, text) = adp(&["train", "--resume", &path("back")]);
    assert!(
        !ok && text.contains("imported from") && !text.contains("panicked"),
        "{text}"
    );
    let (ok, text) = adp(&[
        "import",
        &path("missing.pt"),
        "--dataset",
        "mnist",
        "--out",
        &path("x"),
    ]);
    assert!(
        !ok && text.contains("missing.pt does not exist") && !text.contains("panicked"),
        "{text}"
    );
}
