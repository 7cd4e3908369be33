//! Hostile and careless input against the `adp` binary (issue 14): one test per case, each run
//! through the real binary on the synthetic MNIST-layout set. Concurrency is tested with real
//! processes and real OS locks; memory bounds with the peak RSS the kernel reports for the child
//! (`wait4`); a full disk with a real file-size limit (`RLIMIT_FSIZE`).
//!
//! | case | test |
//! |---|---|
//! | 1. lock on the run directory | `a_run_held_by_one_process_is_refused_to_every_other`, `two_trainings_started_together_leave_one_consistent_run` |
//! | 2. resume checks before it writes | `a_resume_with_another_member_count_writes_nothing`, `a_resume_after_the_data_changed_writes_nothing` |
//! | 3. ε = 0 | `eps_zero_is_the_clean_accuracy_and_returns_the_input`, `adversarial_training_at_eps_zero_trains` |
//! | 4. bounded reads | `a_gzip_bomb_is_refused_in_bounded_memory`, `a_device_or_a_fifo_as_data_is_refused_at_once`, `an_import_bomb_is_refused_before_any_storage_is_inflated` |
//! | 5. NaN guard at the last step | `a_diverged_last_step_saves_nothing` |
//! | 6. run files checked against each other | `a_state_json_that_disagrees_with_the_run_is_refused`, `a_model_toml_that_cannot_be_built_is_refused`, `a_config_toml_of_another_data_set_is_refused` |
//! | 7. lost `latest.json` | `a_lost_or_stale_latest_json_resumes_from_the_newest_checkpoint` |
//! | 8. eval prints before it saves | `eval_prints_its_results_before_a_failed_save_and_names_the_target` |
//! | 9. SHA-256 of the weights | `flipped_bytes_in_the_weights_are_refused` |
//! | 10. clear messages | `unclear_messages_now_name_the_file_and_field` |
//! | 11. upper bound on members | `ten_thousand_members_are_refused_before_anything_is_built` |
//! | 12. deterministic bytes | `equal_weights_give_equal_bytes`, and the resume of case 7 |

// A test binary of its own: its tests read a child's peak RSS from the kernel (`ru_maxrss`),
// which includes the memory of the process that spawned it; in the shared e2e binary that
// parent holds the models of the other modules' tests (700-820 MiB measured), here only its own.
#[path = "e2e/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use adp::data::idx::encode_idx;
use adp::data::{DatasetKind, Split, load_idx_dataset};
use common::{
    adp, adp_ok, assert_fails_with, assert_one_error, cnn_spec, scratch_dir, stderr, stdout,
    synthetic_data, train_args,
};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A finished run of 2 CNN members and 2 epochs, trained once and copied by the tests.
fn base_run() -> PathBuf {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let run = scratch_dir!().join("base");
        adp_ok(&train_args(s(&synthetic_data()), s(&run), "2"));
        run
    })
    .clone()
}

/// Copies a directory tree.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// A copy of the finished base run, named `name`.
fn copy_of_base(name: &str) -> PathBuf {
    let run = scratch_dir!().join(name);
    copy_dir(&base_run(), &run);
    run
}

/// A copy of the base run as a `kill -9` during its second epoch leaves it: no final model,
/// only the checkpoint after epoch 1, `latest.json` pointing at it.
fn unfinished_copy(name: &str) -> PathBuf {
    let run = copy_of_base(name);
    std::fs::remove_file(run.join("model.safetensors")).unwrap();
    // The final model's manifest (absent from runs of older versions).
    std::fs::remove_file(run.join("manifest.json")).ok();
    std::fs::remove_dir_all(run.join("checkpoint/epoch-0002")).unwrap();
    std::fs::write(
        run.join("latest.json"),
        r#"{"epoch": 1, "dir": "checkpoint/epoch-0001"}"#,
    )
    .unwrap();
    run
}

/// Every file under `dir` but the lock, by path: what "nothing was written" compares.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            out.extend(snapshot(&e.path()));
        } else if e.file_name() != "lock" {
            out.insert(e.path(), std::fs::read(e.path()).unwrap());
        }
    }
    out
}

fn edit_toml(path: &Path, edit: impl FnOnce(&mut toml::Table)) {
    let mut t: toml::Table = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut t);
    std::fs::write(path, toml::to_string(&t).unwrap()).unwrap();
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, serde_json::to_string(&v).unwrap()).unwrap();
}

/// A named edit of a parsed file and the message it must draw.
type Edit<T> = (&'static str, fn(&mut T), &'static str);

/// `adp eval RUN --attack fgsm --eps 0.1 --limit 20`.
fn eval(run: &Path) -> std::process::Output {
    adp(&[
        "eval",
        s(run),
        "--attack",
        "fgsm",
        "--eps",
        "0.1",
        "--limit",
        "20",
    ])
}

/// What a child run under [`measured`] did.
struct Measured {
    success: bool,
    stderr: String,
    /// Peak resident set size in KiB, as the kernel accounts it (`ru_maxrss` of `wait4`).
    peak_kib: i64,
}

/// Runs `adp args`, killing it after `timeout` (a hang fails the test), and reads its peak RSS
/// from the kernel.
fn measured(args: &[&str], timeout: Duration) -> Measured {
    let err_path = scratch_dir!().join(format!("stderr-{}", rand_suffix()));
    let child = Command::new(env!("CARGO_BIN_EXE_adp"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let start = Instant::now();
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break;
        }
        assert_eq!(r, 0, "wait4 failed");
        if start.elapsed() > timeout {
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::wait4(pid, &mut status, 0, &mut usage);
            }
            panic!("adp {args:?} was still running after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(child);
    Measured {
        success: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        stderr: std::fs::read_to_string(&err_path).unwrap(),
        peak_kib: usage.ru_maxrss,
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The peak RSS below which a refused hostile input counts as bounded (the binary itself needs a
/// few tens of MiB).
const BOUNDED_KIB: i64 = 200 * 1024;

// ---------------------------------------------------------------------------------------------
// 1. Locks

#[test]
fn a_run_held_by_one_process_is_refused_to_every_other() {
    let run = scratch_dir!().join("held");
    let data = synthetic_data();
    let mut holder = Command::new(env!("CARGO_BIN_EXE_adp"))
        .args(train_args(s(&data), s(&run), "40"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !run.join("latest.json").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let holder_is = format!("is in use by process {}", holder.id());
    let o = adp(&["train", "--resume", s(&run)]);
    assert_one_error(&o, &holder_is, "a second resume");
    assert_one_error(&eval(&run), &holder_is, "eval during training");
    let o = adp(&train_args(s(&data), s(&run), "1"));
    assert_fails_with(&o, "", "a second training into the same directory");
    holder.kill().unwrap();
    holder.wait().unwrap();
    // A killed holder leaves no stale lock: the OS released it.
    let o = eval(&run);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn two_trainings_started_together_leave_one_consistent_run() {
    let run = scratch_dir!().join("raced");
    let data = synthetic_data();
    let start = |seed: &'static str| {
        let mut args = train_args(s(&data), s(&run), "1");
        let at = args.iter().position(|a| *a == "--seed").unwrap();
        args[at + 1] = seed;
        args.extend(["--train-limit", "300"]);
        Command::new(env!("CARGO_BIN_EXE_adp"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (start("11"), start("12"));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(
        a.status.success() != b.status.success(),
        "exactly one of two trainings into one directory may succeed: {} / {}",
        stderr(&a),
        stderr(&b)
    );
    let (winner, loser) = if a.status.success() {
        ("11", &b)
    } else {
        ("12", &a)
    };
    let err = stderr(loser);
    assert!(
        // "by process N" once the holder has written its id, "by another process" before.
        err.contains("is in use by") || err.contains("already holds a run"),
        "{err}"
    );
    let config: toml::Table =
        toml::from_str(&std::fs::read_to_string(run.join("config.toml")).unwrap()).unwrap();
    assert_eq!(config["seed"].as_integer().unwrap().to_string(), winner);
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("checkpoint/epoch-0001/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["seed"].to_string(), winner);
}

// ---------------------------------------------------------------------------------------------
// 2. Resume checks before it writes

#[test]
fn a_resume_with_another_member_count_writes_nothing() {
    let run = copy_of_base("members-changed");
    edit_toml(&run.join("config.toml"), |t| {
        t.insert("members".into(), 3.into());
    });
    let before = snapshot(&run);
    let o = adp(&["train", "--resume", s(&run)]);
    assert_one_error(&o, "`members` is 2", "resume with members = 3");
    assert!(stderr(&o).contains("model.toml"), "{}", stderr(&o));
    assert!(snapshot(&run) == before, "the refused resume wrote files");

    // What is not in model.toml is checked against the checkpoint's manifest.
    let run = unfinished_copy("seed-changed");
    edit_toml(&run.join("config.toml"), |t| {
        t.insert("seed".into(), 4.into());
    });
    let before = snapshot(&run);
    let o = adp(&["train", "--resume", s(&run)]);
    assert_one_error(
        &o,
        "`seed` is 4, but the checkpoint was trained with 3",
        "seed 4",
    );
    assert!(snapshot(&run) == before, "the refused resume wrote files");
}

#[test]
fn a_resume_after_the_data_changed_writes_nothing() {
    let data = scratch_dir!().join("changing-data");
    adp::data::synthetic::write_synthetic_mnist(&data, 300, 50, 1).unwrap();
    let run = scratch_dir!().join("data-changed");
    adp_ok(&train_args(s(&data), s(&run), "1"));
    adp::data::synthetic::write_synthetic_mnist(&data, 300, 50, 2).unwrap();
    let before = snapshot(&run);
    let o = adp(&["train", "--resume", s(&run)]);
    assert_one_error(&o, "`member.mean[0]`", "resume after the data changed");
    assert!(snapshot(&run) == before, "the refused resume wrote files");
}

// ---------------------------------------------------------------------------------------------
// 3. ε = 0

#[test]
fn eps_zero_is_the_clean_accuracy_and_returns_the_input() {
    let run = copy_of_base("eps-zero");
    let o = adp(&[
        "eval",
        s(&run),
        "--attack",
        "fgsm",
        "--eps",
        "0",
        "--attack",
        "pgd",
        "--eps",
        "0",
        "--attack",
        "mim",
        "--eps",
        "0",
        "--attack",
        "apgd-ce",
        "--eps",
        "0",
        "--attack",
        "adaptive",
        "--eps",
        "0",
        "--steps",
        "3",
        "--limit",
        "60",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("eval.json")).unwrap()).unwrap();
    let clean = 1.0 - report["clean"]["ensemble_error"].as_f64().unwrap();
    let robust = report["robust"].as_array().unwrap();
    assert_eq!(robust.len(), 5);
    for r in robust {
        let acc = r["accuracy"].as_f64().unwrap();
        assert!(
            (acc - clean).abs() < 1e-12,
            "{acc} vs the clean {clean}: {r}"
        );
    }

    let adv = scratch_dir!().join("eps-zero.safetensors");
    let o = adp(&[
        "attack",
        s(&run),
        "--attack",
        "pgd",
        "--eps",
        "0",
        "--limit",
        "20",
        "--out",
        s(&adv),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(&adv).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let got = file.tensor("adversarial").unwrap();
    let test = load_idx_dataset(&synthetic_data(), DatasetKind::Mnist, Split::Test)
        .unwrap()
        .take(20);
    let expected: Vec<u8> = test.images.iter().flat_map(|p| p.to_le_bytes()).collect();
    assert!(
        got.data() == expected.as_slice(),
        "PGD at ε = 0 moved a pixel"
    );
}

#[test]
fn adversarial_training_at_eps_zero_trains() {
    let run = scratch_dir!().join("advt-eps-zero");
    let data = synthetic_data();
    let mut args = train_args(s(&data), s(&run), "1");
    args.extend([
        "--adv-train",
        "pgd",
        "--adv-eps",
        "0,0",
        "--train-limit",
        "128",
    ]);
    adp_ok(&args);
    assert!(run.join("model.safetensors").exists());
}

// ---------------------------------------------------------------------------------------------
// 4. Bounded reads

/// A data directory whose test and label files are fine and whose training images are `images`.
fn data_with_train_images(name: &str, images: impl FnOnce(&Path)) -> PathBuf {
    let dir = scratch_dir!().join(name);
    adp::data::synthetic::write_synthetic_mnist(&dir, 10, 10, 0).unwrap();
    std::fs::remove_file(dir.join("train-images-idx3-ubyte")).unwrap();
    images(&dir.join("train-images-idx3-ubyte"));
    dir
}

#[test]
fn a_gzip_bomb_is_refused_in_bounded_memory() {
    use flate2::{Compression, write::GzEncoder};
    // 10 images as the header promises, then 512 MiB more: about 0.5 MB compressed.
    let bomb = data_with_train_images("gz-bomb", |path| {
        let mut gz = GzEncoder::new(File::create(path).unwrap(), Compression::default());
        gz.write_all(&encode_idx(&[10, 28, 28], &[7; 7840]))
            .unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..512 {
            gz.write_all(&zeros).unwrap();
        }
        gz.finish().unwrap();
    });
    assert!(
        std::fs::metadata(bomb.join("train-images-idx3-ubyte"))
            .unwrap()
            .len()
            < 4 << 20
    );
    let out = scratch_dir!().join("gz-bomb-run");
    let m = measured(
        &train_args(s(&bomb), s(&out), "1"),
        Duration::from_secs(300),
    );
    assert!(!m.success);
    assert!(m.peak_kib < BOUNDED_KIB, "peak RSS {} KiB", m.peak_kib);
    assert!(
        m.stderr.contains("more data than its IDX header"),
        "{}",
        m.stderr
    );

    // A header promising more than the compressed file can hold is refused before any data.
    let huge = data_with_train_images("gz-huge-header", |path| {
        let mut gz = GzEncoder::new(File::create(path).unwrap(), Compression::default());
        gz.write_all(&encode_idx(&[1 << 24, 28, 28], &[0; 1 << 20]))
            .unwrap();
        gz.finish().unwrap();
    });
    let m = measured(
        &train_args(s(&huge), s(&out), "1"),
        Duration::from_secs(300),
    );
    assert!(!m.success);
    assert!(
        m.stderr.contains("more than a file of its size can hold"),
        "{}",
        m.stderr
    );
    assert!(m.peak_kib < BOUNDED_KIB, "peak RSS {} KiB", m.peak_kib);
}

#[test]
fn a_device_or_a_fifo_as_data_is_refused_at_once() {
    let out = scratch_dir!().join("device-run");
    let zero = data_with_train_images("dev-zero", |path| {
        std::os::unix::fs::symlink("/dev/zero", path).unwrap();
    });
    let m = measured(
        &train_args(s(&zero), s(&out), "1"),
        Duration::from_secs(120),
    );
    assert!(!m.success);
    assert!(m.stderr.contains("is not a regular file"), "{}", m.stderr);
    assert!(m.peak_kib < BOUNDED_KIB, "peak RSS {} KiB", m.peak_kib);

    let fifo = data_with_train_images("fifo", |path| {
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    });
    // Nothing ever writes to the FIFO: reading it would block until the timeout.
    let m = measured(
        &train_args(s(&fifo), s(&out), "1"),
        Duration::from_secs(120),
    );
    assert!(!m.success);
    assert!(m.stderr.contains("is not a regular file"), "{}", m.stderr);
}

/// A `torch.save` archive whose pickle names `refs` tensors `members.0.w{i}` of `numel` floats,
/// every one of them a view of the same single storage: a small file whose tensors, read one by
/// one, take `refs` times its size.
fn shared_storage_pt(path: &Path, refs: usize, numel: usize) {
    fn string(p: &mut Vec<u8>, s: &str) {
        p.push(b'X');
        p.extend((s.len() as u32).to_le_bytes());
        p.extend(s.as_bytes());
    }
    fn int(p: &mut Vec<u8>, v: usize) {
        p.push(b'J');
        p.extend((v as i32).to_le_bytes());
    }
    fn ordered_dict(p: &mut Vec<u8>) {
        p.extend(b"ccollections\nOrderedDict\n)R");
    }
    let mut p = vec![0x80, 2];
    ordered_dict(&mut p);
    p.push(b'(');
    for i in 0..refs {
        string(&mut p, &format!("members.0.w{i}"));
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        p.push(b'(');
        string(&mut p, "storage");
        p.extend(b"ctorch\nFloatStorage\n");
        string(&mut p, "0");
        string(&mut p, "cpu");
        int(&mut p, numel);
        p.extend(b"tQ");
        int(&mut p, 0);
        p.push(b'(');
        int(&mut p, numel);
        p.push(b't');
        p.push(b'(');
        int(&mut p, 1);
        p.push(b't');
        p.push(0x89);
        ordered_dict(&mut p);
        p.extend(b"tR");
    }
    p.extend(b"u.");
    let mut zip = zip::ZipWriter::new(File::create(path).unwrap());
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut entry = |name: &str, bytes: &[u8]| {
        zip.start_file(format!("archive/{name}"), stored).unwrap();
        zip.write_all(bytes).unwrap();
    };
    entry("data.pkl", &p);
    entry("byteorder", b"little");
    entry("data/0", &vec![0u8; 4 * numel]);
    entry("version", b"3\n");
    zip.finish().unwrap();
}

#[test]
fn an_import_bomb_is_refused_before_any_storage_is_inflated() {
    let bomb = scratch_dir!().join("bomb.pt");
    // 4 MiB of file; read tensor by tensor, 200 views of it would take 800 MiB.
    shared_storage_pt(&bomb, 200, 1 << 20);
    let declared = adp::interop::files::read_pt_deferred(&bomb).unwrap();
    assert_eq!(declared.len(), 200, "the reader sees every view");
    assert!(declared.iter().all(|t| t.header.numel() == 1 << 20));
    let m = measured(
        &[
            "import",
            s(&bomb),
            "--dataset",
            "mnist",
            "--out",
            s(&scratch_dir!().join("bomb-run")),
        ],
        Duration::from_secs(300),
    );
    assert!(!m.success);
    assert!(m.stderr.contains("members.0.conv1.weight"), "{}", m.stderr);
    assert!(m.peak_kib < BOUNDED_KIB, "peak RSS {} KiB", m.peak_kib);
}

// ---------------------------------------------------------------------------------------------
// 5. NaN guard

#[test]
fn a_diverged_last_step_saves_nothing() {
    // One step per epoch: the step that diverges is the epoch's last.
    let run = scratch_dir!().join("diverged");
    let data = synthetic_data();
    let mut args = train_args(s(&data), s(&run), "1");
    args.extend(["--lr", "1e30", "--train-limit", "64", "--batch-size", "64"]);
    let o = adp(&args);
    assert_one_error(&o, "non-finite", "training at --lr 1e30");
    assert!(!run.join("model.safetensors").exists());
    assert!(!run.join("checkpoint/epoch-0001").exists());
}

// ---------------------------------------------------------------------------------------------
// 6. Files checked against each other

#[test]
fn a_state_json_that_disagrees_with_the_run_is_refused() {
    let edits: [Edit<serde_json::Value>; 2] = [
        (
            "short-frozen",
            |v| v["frozen"] = serde_json::json!([false]),
            "`frozen` has 1 entries",
        ),
        (
            "empty-best-ce",
            |v| v["best_ce"] = serde_json::json!([]),
            "`best_ce` has 0 entries",
        ),
    ];
    for (name, edit, expected) in edits {
        let run = unfinished_copy(name);
        edit_json(&run.join("checkpoint/epoch-0001/state.json"), edit);
        let before = snapshot(&run);
        let o = adp(&["train", "--resume", s(&run)]);
        assert_one_error(&o, expected, name);
        assert!(stderr(&o).contains("state.json"), "{}", stderr(&o));
        assert!(
            snapshot(&run) == before,
            "{name}: the refused resume wrote files"
        );
    }
}

#[test]
fn a_model_toml_that_cannot_be_built_is_refused() {
    let edits: [Edit<toml::Table>; 5] = [
        (
            "zero-members",
            |t| {
                t.insert("members".into(), 0.into());
            },
            "`members` is 0",
        ),
        (
            "one-member",
            |t| {
                t.insert("members".into(), 1.into());
            },
            "`members` is 2 but",
        ),
        (
            "short-mean",
            |t| {
                t["member"]["mean"] = toml::Value::try_from(vec![0.1f32, 0.2]).unwrap();
            },
            "`member.mean` has 2 entries",
        ),
        (
            "long-std",
            |t| {
                t["member"]["std"] = toml::Value::try_from(vec![0.3f32, 0.3]).unwrap();
            },
            "`member.std` has 2 entries",
        ),
        (
            "zero-std",
            |t| {
                t["member"]["std"] = toml::Value::try_from(vec![0.0f32]).unwrap();
            },
            "`member.std` must be finite and > 0",
        ),
    ];
    for (name, edit, expected) in edits {
        let run = copy_of_base(name);
        edit_toml(&run.join("model.toml"), edit);
        assert_one_error(&eval(&run), expected, name);
        let out = scratch_dir!().join(format!("{name}.pt"));
        let o = adp(&["export", s(&run), "--out", s(&out)]);
        assert_one_error(&o, expected, name);
        assert!(!out.exists(), "{name}: export wrote a file");
    }
}

#[test]
fn a_config_toml_of_another_data_set_is_refused() {
    let run = copy_of_base("other-dataset");
    edit_toml(&run.join("config.toml"), |t| {
        t.insert("dataset".into(), "cifar10".into());
    });
    let o = eval(&run);
    assert_one_error(&o, "`dataset` is cifar10", "config.toml of cifar10");
    assert!(stderr(&o).contains("config.toml"), "{}", stderr(&o));
}

// ---------------------------------------------------------------------------------------------
// 7. Lost latest.json (and 12: a resumed run is byte-identical to the uninterrupted one)

#[test]
fn a_lost_or_stale_latest_json_resumes_from_the_newest_checkpoint() {
    let finished = std::fs::read(base_run().join("model.safetensors")).unwrap();
    let lost = unfinished_copy("latest-lost");
    std::fs::remove_file(lost.join("latest.json")).unwrap();
    let stale = unfinished_copy("latest-stale");
    std::fs::write(
        stale.join("latest.json"),
        r#"{"epoch": 9, "dir": "checkpoint/epoch-0009"}"#,
    )
    .unwrap();
    for run in [lost, stale] {
        let first = std::fs::read(run.join("checkpoint/epoch-0001/model.bpk")).unwrap();
        let o = adp_ok(&["train", "--resume", s(&run)]);
        assert!(stderr(&o).contains("after epoch 1"), "{}", stderr(&o));
        assert!(
            std::fs::read(run.join("model.safetensors")).unwrap() == finished,
            "{}: the resumed run's weights differ from the uninterrupted run's bytes",
            run.display()
        );
        assert!(
            std::fs::read(run.join("checkpoint/epoch-0001/model.bpk")).unwrap() == first,
            "the checkpoint of epoch 1 was rewritten"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 8. Eval prints before it saves

#[test]
fn eval_prints_its_results_before_a_failed_save_and_names_the_target() {
    let run = copy_of_base("full-disk");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_adp"));
    cmd.args([
        "eval",
        s(&run),
        "--attack",
        "fgsm",
        "--eps",
        "0.1",
        "--limit",
        "20",
    ]);
    // SAFETY: signal and setrlimit are async-signal-safe. Files the child writes stop at 256
    // bytes with EFBIG, as on a full disk (an ignored SIGXFSZ survives exec).
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let limit = libc::rlimit {
                rlim_cur: 256,
                rlim_max: 256,
            };
            libc::setrlimit(libc::RLIMIT_FSIZE, &limit);
            Ok(())
        });
    }
    let o = cmd.output().unwrap();
    let err = assert_fails_with(&o, "were not saved to", "eval on a full disk");
    assert!(err.contains(s(&run.join("eval.json"))), "{err}");
    assert!(
        !err.contains(&format!("{}/.tmp", s(&run))),
        "names a temporary file: {err}"
    );
    assert!(stdout(&o).contains("| FGSM |"), "{}", stdout(&o));
}

// ---------------------------------------------------------------------------------------------
// 9. SHA-256 of the weights

#[test]
fn flipped_bytes_in_the_weights_are_refused() {
    let flip_last = |path: &Path| {
        let mut bytes = std::fs::read(path).unwrap();
        *bytes.last_mut().unwrap() ^= 0x10;
        std::fs::write(path, bytes).unwrap();
    };
    let run = copy_of_base("flipped-final");
    flip_last(&run.join("model.safetensors"));
    let o = eval(&run);
    assert_one_error(&o, "SHA-256", "eval of flipped weights");
    assert!(
        stderr(&o).contains("model.safetensors is corrupt"),
        "{}",
        stderr(&o)
    );

    let run = unfinished_copy("flipped-checkpoint");
    flip_last(&run.join("checkpoint/epoch-0001/model.bpk"));
    let before = snapshot(&run);
    let o = adp(&["train", "--resume", s(&run)]);
    assert_one_error(&o, "SHA-256", "resume from flipped weights");
    assert!(
        stderr(&o).contains("model.bpk is corrupt"),
        "{}",
        stderr(&o)
    );
    assert!(snapshot(&run) == before, "the refused resume wrote files");
}

// ---------------------------------------------------------------------------------------------
// 10. Clear messages

#[test]
fn unclear_messages_now_name_the_file_and_field() {
    let run = unfinished_copy("state-garbage");
    std::fs::write(run.join("checkpoint/epoch-0001/state.json"), "garbage").unwrap();
    let o = adp(&["train", "--resume", s(&run)]);
    assert_one_error(
        &o,
        "state.json is not a valid training state",
        "garbage state.json",
    );

    let run = unfinished_copy("state-missing");
    std::fs::remove_file(run.join("checkpoint/epoch-0001/state.json")).unwrap();
    let o = adp(&["train", "--resume", s(&run)]);
    assert_one_error(
        &o,
        "epoch-0001 is incomplete (it has no state.json)",
        "no state.json",
    );

    let file = scratch_dir!().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let o = adp(&train_args(s(&synthetic_data()), s(&file), "1"));
    assert_one_error(&o, "is a file, not a run directory", "--out at a file");

    // The weights of a 1-channel CNN under a model.toml (and config.toml) of CIFAR's 3 channels.
    let run = copy_of_base("shape-mismatch");
    edit_toml(&run.join("config.toml"), |t| {
        t.insert("dataset".into(), "cifar10".into());
    });
    edit_toml(&run.join("model.toml"), |t| {
        let m = t["member"].as_table_mut().unwrap();
        m.insert(
            "input_shape".into(),
            toml::Value::try_from([3, 32, 32]).unwrap(),
        );
        m.insert("mean".into(), toml::Value::try_from([0.5f32; 3]).unwrap());
        m.insert("std".into(), toml::Value::try_from([0.25f32; 3]).unwrap());
    });
    let o = eval(&run);
    assert_one_error(
        &o,
        "does not hold the ensemble that model.toml describes",
        "shapes",
    );
    assert!(!stderr(&o).contains("missing or corrupt"), "{}", stderr(&o));

    let run = unfinished_copy("config-value");
    edit_toml(&run.join("config.toml"), |t| {
        t.insert("lr".into(), 0.0.into());
    });
    let o = adp(&["train", "--resume", s(&run)]);
    assert_one_error(&o, "`lr` in", "lr = 0 in config.toml");
    assert!(
        stderr(&o).contains("config.toml must be > 0"),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("--lr"), "{}", stderr(&o));

    let missing = scratch_dir!().join("no-such-dir");
    let o = adp(&["report", s(&missing)]);
    assert_one_error(&o, "does not exist", "report of a missing directory");
}

// ---------------------------------------------------------------------------------------------
// 11. Upper bound on members

#[test]
fn ten_thousand_members_are_refused_before_anything_is_built() {
    let run = scratch_dir!().join("huge-ensemble");
    let data = synthetic_data();
    let mut args = train_args(s(&data), s(&run), "1");
    let at = args.iter().position(|a| *a == "--members").unwrap();
    args[at + 1] = "10000";
    let m = measured(&args, Duration::from_secs(120));
    assert!(!m.success);
    assert!(m.stderr.contains("at most 100, got 10000"), "{}", m.stderr);
    assert!(m.peak_kib < BOUNDED_KIB, "peak RSS {} KiB", m.peak_kib);
    assert!(!run.exists(), "a refused run created its directory");
}

// ---------------------------------------------------------------------------------------------
// 12. Deterministic bytes

#[test]
fn equal_weights_give_equal_bytes() {
    let device = adp::device::cpu();
    device.seed(5);
    let model = cnn_spec(2, [1, 8, 8], 3, 0.5, 0.25).init(&device);
    let dir = tempfile::tempdir().unwrap();
    let bytes: Vec<Vec<u8>> = (0..6)
        .map(|i| {
            let path = dir.path().join(format!("m{i}.safetensors"));
            adp::train::checkpoint::save_model(&model, &path).unwrap();
            std::fs::read(path).unwrap()
        })
        .collect();
    assert!(
        bytes.windows(2).all(|w| w[0] == w[1]),
        "save_model is not deterministic"
    );

    let tensors = vec![adp::interop::layout::TorchTensor::f32(
        "w",
        vec![2],
        &[1.0, 2.0],
    )];
    let meta: std::collections::HashMap<String, String> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|k| (k.to_string(), format!("value {k}")))
        .collect();
    let exported: Vec<Vec<u8>> = (0..6)
        .map(|i| {
            let path = dir.path().join(format!("e{i}.safetensors"));
            adp::interop::files::write_safetensors(&path, &tensors, meta.clone()).unwrap();
            std::fs::read(path).unwrap()
        })
        .collect();
    assert!(
        exported.windows(2).all(|w| w[0] == w[1]),
        "write_safetensors is not deterministic"
    );
    let (_, read_meta) =
        adp::interop::files::read_safetensors(&dir.path().join("e0.safetensors")).unwrap();
    assert_eq!(read_meta, meta);
}
