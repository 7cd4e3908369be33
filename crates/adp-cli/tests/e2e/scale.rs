//! `adp sweep` (grid expansion, `--jobs`, `--run-index`, bad sweep files) and sharded evaluation
//! (`adp eval --shard i/n`, `adp merge`): merged shards equal the unsharded evaluation exactly.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use adp::eval::shard::{PartialEval, Shard};
use adp::sweep::{RunState, load};
use adp::train::{Method, TrainConfig};
use common::{adp, adp_ok, assert_one_error, stdout, synthetic_data, train_args};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn fresh(name: &str) -> PathBuf {
    let d = common::scratch_dir!().join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const GRID: &str = r#"
out = "runs"
[train]
model = "cnn"
epochs = 1
lr_drops = [2]
beta = 0.25
[grid]
method = ["ece", "adp"]
seed = [0, 1, 2]
members = [2, 3]
"#;

#[test]
fn a_sweep_expands_every_combination_in_a_fixed_order() {
    let dir = fresh("expand");
    let file = write(&dir, "sweep.toml", GRID);
    let sweep = load(&file).unwrap();
    assert_eq!(sweep.runs.len(), 12);
    assert_eq!(sweep.out, dir.join("runs"));
    // Alphabetical fields (members, method, seed), the last varying fastest.
    let first = &sweep.runs[0];
    assert_eq!(first.name, "members-2_method-ece_seed-0");
    assert_eq!(sweep.runs[1].name, "members-2_method-ece_seed-1");
    assert_eq!(sweep.runs[3].name, "members-2_method-adp_seed-0");
    assert_eq!(sweep.runs[11].name, "members-3_method-adp_seed-2");
    let mut names: Vec<&str> = sweep.runs.iter().map(|r| r.name.as_str()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 12, "every run has its own directory");
    let last = &sweep.runs[11].config;
    assert_eq!((last.members, last.method, last.seed), (3, Method::Adp, 2));
    // [train] fields, the alias `beta` for adp.beta, and adp train's defaults for the rest.
    let defaults = TrainConfig::paper_mnist(Method::Adp, 2.0, 0.5);
    assert_eq!(last.adp.beta, 0.25);
    assert_eq!(last.adp.alpha, 2.0);
    assert_eq!(last.lr_drops, vec![2]);
    assert_eq!(last.batch_size, defaults.batch_size);
    assert_eq!(last.lr, defaults.lr);
    // data_dir follows the data set and is absolute, from the sweep file's directory.
    assert_eq!(last.data_dir, dir.join("data/mnist"));
    for (i, r) in sweep.runs.iter().enumerate() {
        assert_eq!(r.index, i);
        assert_eq!(r.dir, dir.join("runs").join(&r.name));
        assert_eq!(adp::sweep::state(r).unwrap(), RunState::New);
    }
}

#[test]
fn a_sweep_writes_config_toml_as_adp_train_does() {
    let dir = fresh("like-train");
    let data = synthetic_data();
    let data_s = data.to_str().unwrap();
    let trained = dir.join("trained");
    adp_ok(&train_args(data_s, trained.to_str().unwrap(), "1"));
    let file = write(
        &dir,
        "sweep.toml",
        &format!(
            "out = \"sweep\"\n[train]\nmodel = \"cnn\"\nmembers = 2\nepochs = 1\nlr_drops = [2]\n\
             data_dir = \"{data_s}\"\n[grid]\nseed = [3]\n"
        ),
    );
    let o = adp_ok(&["sweep", file.to_str().unwrap()]);
    assert!(stdout(&o).contains("config.toml written"), "{}", stdout(&o));
    let written = std::fs::read_to_string(dir.join("sweep/run/config.toml")).unwrap();
    let by_train = std::fs::read_to_string(trained.join("config.toml")).unwrap();
    assert_eq!(written, by_train);
    // A second set-up keeps it; a changed sweep is refused, naming the file and the field.
    let o = adp_ok(&["sweep", file.to_str().unwrap()]);
    assert!(stdout(&o).contains("(kept)"), "{}", stdout(&o));
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("epochs = 1", "epochs = 2")).unwrap();
    let o = adp(&["sweep", file.to_str().unwrap()]);
    assert_one_error(&o, "config.toml: `epochs` is 1", "a changed sweep");
}

#[test]
fn jobs_are_self_contained_commands_that_resume_and_never_clobber() {
    let dir = fresh("jobs");
    let data = synthetic_data();
    let file = write(
        &dir,
        "sweep.toml",
        &format!(
            "out = \"runs\"\n[train]\nmodel = \"cnn\"\nmembers = 2\nepochs = 1\nlr_drops = [2]\n\
             train_limit = 200\ndata_dir = \"{}\"\n[grid]\nmethod = [\"ece\", \"adp\"]\n",
            data.display()
        ),
    );
    // Run from another directory with a relative path: the lines must not depend on it.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_adp"))
        .args(["sweep", "sweep.toml", "--jobs"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::stderr(&o));
    let lines: Vec<String> = stdout(&o).lines().map(String::from).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(!dir.join("runs").exists(), "--jobs writes nothing");
    for (i, line) in lines.iter().enumerate() {
        let exe = std::fs::canonicalize(env!("CARGO_BIN_EXE_adp")).unwrap();
        let first = line.split(' ').next().unwrap();
        assert_eq!(std::fs::canonicalize(first).unwrap(), exe, "{line}");
        assert!(
            line.ends_with(&format!(
                " sweep {} --run-index {i}",
                dir.join("sweep.toml").display()
            )),
            "{line}"
        );
    }
    let sh = |line: &str| {
        std::process::Command::new("sh")
            .args(["-c", line])
            .current_dir("/")
            .env_clear()
            .output()
            .unwrap()
    };
    let o = sh(&lines[1]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let run = dir.join("runs/method-adp");
    let model = run.join("model.safetensors");
    let before = std::fs::read(&model).unwrap();
    let modified = std::fs::metadata(&model).unwrap().modified().unwrap();
    assert!(!dir.join("runs/method-ece/config.toml").exists());
    // Again: the finished run is left alone.
    let o = sh(&lines[1]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(
        stdout(&o).contains("had finished; left as it is"),
        "{}",
        stdout(&o)
    );
    assert_eq!(std::fs::read(&model).unwrap(), before);
    assert_eq!(
        std::fs::metadata(&model).unwrap().modified().unwrap(),
        modified
    );
    let o = adp(&["sweep", file.to_str().unwrap(), "--run-index", "2"]);
    assert_one_error(&o, "expands to 2 runs (0 to 1)", "an index out of range");
}

#[test]
fn bad_sweep_files_give_one_error_naming_the_file_and_the_field() {
    let dir = fresh("bad");
    let cases: [(&str, &str, &str); 9] = [
        (
            "typo",
            "out = \"r\"\n[train]\nepoch = 3\n",
            "`train.epoch` is not a field",
        ),
        (
            "type",
            "out = \"r\"\n[grid]\nseed = [\"x\"]\n",
            "`grid.seed` is invalid",
        ),
        (
            "scalar",
            "out = \"r\"\n[grid]\nseed = 1\n",
            "`grid.seed` must be a non-empty list",
        ),
        (
            "empty",
            "out = \"r\"\n[grid]\nseed = []\n",
            "`grid.seed` must be a non-empty list",
        ),
        ("top", "out = \"r\"\nouts = 1\n", "unknown field `outs`"),
        ("no-out", "[grid]\nseed = [1]\n", "missing field `out`"),
        (
            "members",
            "out = \"r\"\n[grid]\nmembers = [1, 3]\n",
            "`members` in",
        ),
        (
            "both",
            "out = \"r\"\n[train]\nseed = 1\n[grid]\nseed = [1]\n",
            "`seed` is set both",
        ),
        (
            "syntax",
            "out = \"r\"\n[grid\n",
            "is not a valid sweep file",
        ),
    ];
    for (name, text, expected) in cases {
        let file = write(&dir, &format!("{name}.toml"), text);
        let o = adp(&["sweep", file.to_str().unwrap()]);
        assert_one_error(&o, expected, name);
        assert_one_error(&o, &format!("{name}.toml"), name);
    }
}

/// A trained 2-member CNN run on the synthetic data (300 test images), once per test binary.
fn trained_run() -> PathBuf {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let run = common::scratch_dir!().join("shard-run");
        let data = synthetic_data();
        adp_ok(&train_args(
            data.to_str().unwrap(),
            run.to_str().unwrap(),
            "1",
        ));
        run
    })
    .clone()
}

/// A copy of the trained run, without results, for one test.
fn run_copy(name: &str) -> PathBuf {
    let src = trained_run();
    let dst = fresh(name);
    for f in [
        "config.toml",
        "model.toml",
        "model.safetensors",
        "manifest.json",
    ] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    dst
}

/// Random starts (PGD), Square's random squares, a cascade's per-stage accuracies and random
/// targets, two seeds, 8 batches of 25.
const EVAL: [&str; 21] = [
    "--limit",
    "200",
    "--attack",
    "pgd",
    "--eps",
    "0.1",
    "--attack",
    "square",
    "--eps",
    "0.1",
    "--queries",
    "20",
    "--attack",
    "apgd-cascade",
    "--eps",
    "0.1",
    "--steps",
    "5",
    "--seeds",
    "2",
    "--no-indicators",
];

fn eval_args<'a>(run: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["eval", run.to_str().unwrap()];
    a.extend(EVAL);
    a.extend(["--batch-size", "25", "--targeted"]);
    a.extend(extra);
    a
}

/// A quick evaluation (FGSM), for the refusals.
fn quick_args<'a>(run: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let quick = [
        "--attack",
        "fgsm",
        "--eps",
        "0.1",
        "--no-indicators",
        "--batch-size",
        "40",
    ];
    eval_with(run, &quick, extra)
}

/// `adp eval RUN`, then `options`, then `extra`.
fn eval_with<'a>(run: &'a Path, options: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["eval", run.to_str().unwrap()];
    a.extend(options);
    a.extend(extra);
    a
}

fn json_without_timings(path: &Path) -> serde_json::Value {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for r in v["robust"].as_array_mut().unwrap() {
        r.as_object_mut().unwrap().remove("seconds");
    }
    v
}

#[test]
fn merged_shards_equal_the_unsharded_evaluation() {
    let run = run_copy("merge-equal");
    adp_ok(&eval_args(&run, &[]));
    let whole = json_without_timings(&run.join("eval.json"));
    let whole_csv = std::fs::read_to_string(run.join("eval.csv")).unwrap();
    assert_eq!(whole["clean"]["examples"], 200);
    for i in 0..3 {
        let shard = format!("{i}/3");
        adp_ok(&eval_args(&run, &["--shard", &shard]));
    }
    // The shards leave the unsharded result alone.
    assert_eq!(json_without_timings(&run.join("eval.json")), whole);
    assert!(!run.join("eval.1.json").exists());
    let o = adp_ok(&["merge", run.to_str().unwrap()]);
    assert!(stdout(&o).contains("merged 3 shards"), "{}", stdout(&o));
    // The earlier result is kept aside, the merged one equals it in everything but timings.
    assert_eq!(json_without_timings(&run.join("eval.1.json")), whole);
    assert_eq!(json_without_timings(&run.join("eval.json")), whole);
    assert_eq!(
        std::fs::read_to_string(run.join("eval.csv")).unwrap(),
        whole_csv
    );
    // The slices are whole batches: 8 batches of 25 cut 2/3/3.
    let parts: Vec<PartialEval> = (0..3)
        .map(|i| {
            let p = Shard { index: i, count: 3 }.path(&run);
            serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
        })
        .collect();
    let ranges: Vec<_> = parts.iter().map(|p| p.examples.clone()).collect();
    assert_eq!(ranges, vec![0..50, 50..125, 125..200]);
    // Per image: the shards' PGD outcomes are those of one unsharded `adp attack` (with EVAL's
    // `--steps`, which applies to every attack listed).
    let adv = run.join("pgd.safetensors");
    adp_ok(&[
        "attack",
        run.to_str().unwrap(),
        "--attack",
        "pgd",
        "--eps",
        "0.1",
        "--steps",
        "5",
        "--targeted",
        "--batch-size",
        "25",
        "--limit",
        "200",
        "--out",
        adv.to_str().unwrap(),
    ]);
    let bytes = std::fs::read(&adv).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let flags = |name: &str| -> String {
        let t = file.tensor(name).unwrap();
        t.data()
            .iter()
            .map(|&b| if b == 1 { '1' } else { '0' })
            .collect()
    };
    let joined = |f: fn(&adp::eval::shard::PartialRun) -> &String| -> String {
        parts
            .iter()
            .map(|p| f(&p.attacks[0].runs[0]).as_str())
            .collect()
    };
    assert_eq!(joined(|r| &r.success), flags("success"));
    assert_eq!(joined(|r| &r.correct), flags("ensemble_correct"));
    // The comparison can fail: the second seed's PGD differs from the first somewhere.
    let second: String = parts
        .iter()
        .map(|p| p.attacks[0].runs[1].success.as_str())
        .collect();
    assert_ne!(
        second,
        flags("success"),
        "seeds 0 and 1 gave the same PGD outcomes"
    );
}

#[test]
fn missing_overlapping_and_mismatched_shards_are_refused() {
    let run = run_copy("merge-refuse");
    let r = run.to_str().unwrap();
    let o = adp(&["merge", r]);
    assert_one_error(&o, "holds no shards", "no shards");
    adp_ok(&quick_args(&run, &["--shard", "0/2"]));
    let o = adp(&["merge", r]);
    assert_one_error(&o, "shard 1/2 is missing", "a missing shard");
    adp_ok(&quick_args(&run, &["--shard", "1/2", "--seed", "5"]));
    let o = adp(&["merge", r]);
    assert_one_error(&o, "`key.settings.seed` is 5", "shards of different seeds");
    assert_one_error(&o, "different evaluations", "shards of different seeds");
    adp_ok(&quick_args(&run, &["--shard", "1/2"]));
    adp_ok(&quick_args(&run, &["--shard", "2/3"]));
    let o = adp(&["merge", r]);
    assert_one_error(&o, "shards of 2 and of 3 overlap", "overlapping shards");
    std::fs::remove_dir_all(run.join("eval-shards/2-of-3")).unwrap();
    adp_ok(&["merge", r]);
    assert!(run.join("eval.json").exists());
    // Bad --shard values and combinations.
    for (bad, expected) in [
        ("2/2", "the index i must be below the count n"),
        ("1", "is not of the form i/n"),
        ("0/0", "the count n must be at least 1"),
        (
            "0/9",
            "9 shards need at least 9 batches, but the test set makes 8",
        ),
    ] {
        let o = adp(&quick_args(&run, &["--shard", bad]));
        assert_one_error(&o, expected, bad);
    }
    // A shard with the indicators belongs to another evaluation than one without.
    std::fs::remove_dir_all(run.join("eval-shards/1-of-2")).unwrap();
    let mut with_indicators = quick_args(&run, &["--shard", "1/2", "--steps", "1"]);
    with_indicators.retain(|a| *a != "--no-indicators");
    adp_ok(&[with_indicators.as_slice(), &["--queries", "2"]].concat());
    let o = adp(&["merge", r]);
    assert_one_error(
        &o,
        "different evaluations",
        "shards with and without indicators",
    );
}

/// The indicators of a sharded evaluation (Square, random noise, the ε sweep, zero gradients)
/// add up to those of the unsharded one: each batch reseeds every indicator attack from its
/// place in the test set.
#[test]
fn merged_shards_give_the_unsharded_indicators() {
    let run = run_copy("merge-indicators");
    let eval = [
        "eval",
        run.to_str().unwrap(),
        "--limit",
        "100",
        "--attack",
        "pgd",
        "--eps",
        "0.1",
        "--steps",
        "3",
        "--queries",
        "10",
        "--batch-size",
        "25",
    ];
    adp_ok(&eval);
    let whole = json_without_timings(&run.join("eval.json"));
    let indicators = whole["indicators"].as_array().unwrap();
    assert_eq!(indicators.len(), 1, "{whole}");
    assert_eq!(indicators[0]["examples"], 100);
    for shard in ["0/2", "1/2"] {
        adp_ok(&[&eval[..], &["--shard", shard]].concat());
    }
    let o = adp_ok(&["merge", run.to_str().unwrap()]);
    assert!(
        stdout(&o).contains("indicators at ε = 0.1"),
        "{}",
        stdout(&o)
    );
    assert_eq!(json_without_timings(&run.join("eval.json")), whole);
}

#[test]
fn shards_cover_every_batch_once() {
    for batches in 1..40 {
        for count in 1..=batches {
            let mut next = 0;
            for index in 0..count {
                let r = Shard { index, count }.batches(batches).unwrap();
                assert_eq!(r.start, next, "{index}/{count} of {batches}");
                assert!(!r.is_empty(), "{index}/{count} of {batches} is empty");
                next = r.end;
            }
            assert_eq!(next, batches);
        }
        assert!(
            Shard {
                index: 0,
                count: batches + 1
            }
            .batches(batches)
            .is_err()
        );
    }
}

/// AutoAttack on one batch, cut short enough for a test (its stages all draw random numbers).
fn autoattack_args<'a>(run: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let autoattack = [
        "--attack",
        "autoattack",
        "--eps",
        "0.05",
        "--steps",
        "10",
        "--queries",
        "500",
        "--limit",
        "60",
        "--batch-size",
        "60",
        "--no-indicators",
    ];
    eval_with(run, &autoattack, extra)
}

fn partial_without_timings(run: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(Shard::WHOLE.path(run)).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    for run in v["attacks"][0]["runs"].as_array_mut().unwrap() {
        run.as_object_mut().unwrap().remove("seconds");
    }
    v
}

/// A shard killed (SIGKILL) in the middle of AutoAttack keeps the stages it finished; run again,
/// it takes them instead of running them, and its result equals that of an uninterrupted run.
#[test]
fn a_killed_cascade_resumes_after_its_finished_stages() {
    let run = run_copy("cascade-resume");
    let progress = Shard::WHOLE.dir(&run).join("progress");
    let args = autoattack_args(&run, &["--shard", "0/1"]);
    adp_ok(&args);
    let whole = partial_without_timings(&run);
    assert!(
        !progress.exists(),
        "the kept stages are removed once the result is saved"
    );
    let verdicts = whole["attacks"][0]["runs"][0]["verdicts"].as_str().unwrap();
    assert!(
        verdicts.contains('0') && verdicts.contains('r'),
        "{verdicts}"
    );
    std::fs::remove_dir_all(Shard::WHOLE.dir(&run)).unwrap();

    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_adp"))
        .args(&args)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let first_stage = loop {
        let kept = std::fs::read_dir(&progress).ok().and_then(|mut d| d.next());
        if let Some(dir) = kept {
            let file = dir.unwrap().path().join("stage-0.safetensors");
            if file.exists() {
                break file;
            }
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the shard finished before it could be killed"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!Shard::WHOLE.path(&run).exists());
    let key_file = first_stage.with_file_name("key.json");
    let (key, kept) = (
        std::fs::read(&key_file).unwrap(),
        std::fs::read(&first_stage).unwrap(),
    );

    let o = adp_ok(&args);
    let err = common::stderr(&o);
    assert!(err.contains("resuming after the"), "{err}");
    assert_eq!(partial_without_timings(&run), whole);
    assert!(!progress.exists());

    // A damaged kept stage stops the shard with one error naming the file.
    std::fs::remove_dir_all(Shard::WHOLE.dir(&run)).unwrap();
    std::fs::create_dir_all(first_stage.parent().unwrap()).unwrap();
    std::fs::write(&key_file, key).unwrap();
    std::fs::write(&first_stage, &kept[..kept.len() / 2]).unwrap();
    let o = adp(&args);
    assert_one_error(
        &o,
        "is not a kept cascade stage; remove it",
        "a damaged stage",
    );
    assert_one_error(&o, "stage-0.safetensors", "a damaged stage");
}

/// `adp eval` without shards keeps its cascades' stages in the run until eval.json is written.
#[test]
fn an_unsharded_evaluation_leaves_no_kept_stages() {
    let run = run_copy("cascade-unsharded");
    adp_ok(&autoattack_args(&run, &[]));
    assert!(run.join("eval.json").exists());
    assert!(!run.join(adp::eval::resume::RESUME_DIR).exists());
}
