//! Helpers shared by the end-to-end tests (`use crate::common;` in each module): running the
//! `adp` binary and reading its output, the arguments of `adp reproduce … --preset tiny`, the
//! one-clear-error checks of bad command lines, small CNN ensembles and a scratch directory per
//! test module. Each module uses a subset, hence the `allow`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use adp::model::{MemberConfig, ModelKind};
use adp::train::checkpoint::ModelSpec;

/// Runs the `adp` binary with `args` and waits for it.
pub fn adp(args: &[&str]) -> Output {
    adp_with(args, |_| {})
}

/// Runs the `adp` binary with `args`, its command first changed by `configure` (a working
/// directory, environment variables), and waits for it.
pub fn adp_with(args: &[&str], configure: impl FnOnce(&mut Command)) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_adp"));
    command.args(args);
    configure(&mut command);
    command.output().expect("the adp binary runs")
}

/// Runs the `adp` binary with `args` and asserts that it succeeded (its stderr otherwise).
pub fn adp_ok(args: &[&str]) -> Output {
    adp_ok_with(args, |_| {})
}

/// [`adp_ok`], with the command changed by `configure` as in [`adp_with`].
pub fn adp_ok_with(args: &[&str], configure: impl FnOnce(&mut Command)) -> Output {
    let o = adp_with(args, configure);
    assert!(o.status.success(), "{}", stderr(&o));
    o
}

/// What a run of the binary wrote to stderr.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// What a run of the binary wrote to stdout.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts that `o` failed with `expected` in its stderr and without a panic; `what` (the
/// arguments, say) names the case in the messages. Returns the stderr.
pub fn assert_fails_with(o: &Output, expected: &str, what: &str) -> String {
    let err = stderr(o);
    assert!(!o.status.success(), "{what} succeeded");
    assert!(
        err.contains(expected),
        "{what}: expected {expected:?} in {err:?}"
    );
    assert!(!err.contains("panicked"), "{what} panicked: {err}");
    err
}

/// [`assert_fails_with`], and the stderr holds exactly one line starting with `error`.
pub fn assert_one_error(o: &Output, expected: &str, what: &str) {
    let err = assert_fails_with(o, expected, what);
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error")).count(),
        1,
        "{what}: {err}"
    );
}

/// `adp reproduce WHAT --preset tiny --data-dir DATA --out OUT`.
pub fn reproduce_tiny_args<'a>(what: &'a str, data: &'a Path, out: &'a Path) -> Vec<&'a str> {
    vec![
        "reproduce",
        what,
        "--preset",
        "tiny",
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]
}

/// A CNN ensemble of `members` on `input_shape` images of `num_classes` classes, normalised with
/// one `mean` and `std` for every channel.
pub fn cnn_spec(
    members: usize,
    input_shape: [usize; 3],
    num_classes: usize,
    mean: f32,
    std: f32,
) -> ModelSpec {
    ModelSpec {
        members,
        member: MemberConfig {
            kind: ModelKind::Cnn,
            input_shape,
            num_classes,
            mean: vec![mean; input_shape[0]],
            std: vec![std; input_shape[0]],
        },
    }
}

/// 1200 training and 300 test images of the synthetic MNIST-layout set, written once per test
/// binary.
pub fn synthetic_data() -> std::path::PathBuf {
    static DONE: OnceLock<std::path::PathBuf> = OnceLock::new();
    DONE.get_or_init(|| {
        let dir = scratch().join("data");
        adp::data::synthetic::write_synthetic_mnist(&dir, 1200, 300, 7).unwrap();
        dir
    })
    .clone()
}

/// `adp train` of 2 CNN members for `epochs` epochs (seed 3) on `data` into `out`.
pub fn train_args<'a>(data: &'a str, out: &'a str, epochs: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--model",
        "cnn",
        "--members",
        "2",
        "--epochs",
        epochs,
        "--lr-drops",
        "2",
        "--seed",
        "3",
        "--data-dir",
        data,
        "--out",
        out,
    ]
}

/// A temporary directory shared by the tests of the binary (a static: it is never dropped, so it
/// stays for the life of the process).
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

/// The directory of one test module in [`scratch`], created: the modules share one binary, and
/// each keeps its names (`data`, `run`, …) in a directory of its own.
pub fn module_scratch(module_path: &str) -> PathBuf {
    let module = module_path.rsplit("::").next().unwrap_or(module_path);
    let dir = scratch().join(module);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// [`module_scratch`] of the module that calls it.
macro_rules! scratch_dir {
    () => {
        $crate::common::module_scratch(module_path!())
    };
}
pub(crate) use scratch_dir;

/// Resumes `run`, trained for 1 epoch, to 2: its `config.toml` is changed to 2 epochs and its
/// final model removed, as if the run had been killed after its first checkpoint. Asserts that
/// `adp train --resume` said it was resuming; returns its output.
pub fn resume_to_two_epochs(run: &Path) -> Output {
    resume_to_two_epochs_with(run, |_| {})
}

/// [`resume_to_two_epochs`], with the `adp` command changed by `configure` as in [`adp_with`].
pub fn resume_to_two_epochs_with(run: &Path, configure: impl FnOnce(&mut Command)) -> Output {
    let config = run.join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("epochs = 1", "epochs = 2")).unwrap();
    std::fs::remove_file(run.join("model.safetensors")).unwrap();
    let o = adp_ok_with(&["train", "--resume", run.to_str().unwrap()], configure);
    assert!(stderr(&o).contains("resuming"), "{}", stderr(&o));
    o
}
