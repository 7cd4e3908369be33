//! Hostile inputs: every reader of files a user hands us must answer arbitrary bytes with an
//! error, never a panic. Bounded property tests (proptest's default 256 cases each, overridable
//! with `PROPTEST_CASES=N` for longer runs) over random and mutated inputs.

use crate::common;

use adp::data::cifar::{CifarLabels, encode_records, parse_records};
use adp::data::idx::{encode_idx, parse_idx};
use adp::train::TrainConfig;
use adp::train::checkpoint::{ModelSpec, load_model};
use common::cnn_spec;
use proptest::prelude::*;

/// A valid file with a few bytes overwritten and a random length cut.
fn mutated(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let n = valid.len();
    (prop::collection::vec((0..n, any::<u8>()), 0..8), 0..=n).prop_map(move |(edits, cut)| {
        let mut v = valid.clone();
        for (i, b) in edits {
            v[i] = b;
        }
        v.truncate(cut.max(1));
        v
    })
}

proptest! {
    #[test]
    fn idx_parser_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64), ndim in 1usize..4) {
        let _ = parse_idx(&bytes, ndim);
    }

    #[test]
    fn idx_parser_survives_mutated_valid_files(bytes in mutated(encode_idx(&[3, 2, 2], &[7; 12]))) {
        if let Ok(idx) = parse_idx(&bytes, 3) {
            prop_assert_eq!(idx.data.len(), idx.dims.iter().product::<usize>());
        }
    }

    #[test]
    fn cifar_parser_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..8000)) {
        let (mut pixels, mut labels) = (Vec::new(), Vec::new());
        for kind in [CifarLabels::Ten, CifarLabels::Fine, CifarLabels::Coarse] {
            if parse_records(&bytes, kind, &mut pixels, &mut labels).is_ok() {
                prop_assert_eq!(pixels.len(), labels.len() * 3072);
            }
            pixels.clear();
            labels.clear();
        }
    }

    #[test]
    fn cifar_parser_survives_mutated_valid_files(bytes in mutated(encode_records(2, CifarLabels::Fine, |i| i as u8, |_, j| j as u8))) {
        let (mut pixels, mut labels) = (Vec::new(), Vec::new());
        let _ = parse_records(&bytes, CifarLabels::Fine, &mut pixels, &mut labels);
    }

    #[test]
    fn config_reader_never_panics(text in ".{0,200}") {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, &text).unwrap();
        let _ = adp::io::read_toml::<TrainConfig>(&path);
        let _ = adp::io::read_toml::<ModelSpec>(&path);
    }
}

/// Overwrites bytes of the file at `path` at the `edits` positions and cuts it at `cut` (keeping at
/// least one byte).
fn corrupt_file(
    path: &std::path::Path,
    edits: Vec<(prop::sample::Index, u8)>,
    cut: prop::sample::Index,
) {
    let mut bytes = std::fs::read(path).unwrap();
    for (i, b) in edits {
        let i = i.index(bytes.len());
        bytes[i] = b;
    }
    bytes.truncate(cut.index(bytes.len()).max(1));
    std::fs::write(path, &bytes).unwrap();
}

fn small_spec() -> ModelSpec {
    cnn_spec(2, [1, 8, 8], 3, 0.5, 0.25)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn weights_reader_never_panics_on_mutated_safetensors(seed in any::<u64>(), edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6), cut in any::<prop::sample::Index>()) {
        let device = adp::device::cpu();
        device.seed(seed);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        adp::train::checkpoint::save_model(&small_spec().init(&device), &path).unwrap();
        corrupt_file(&path, edits, cut);
        let result = std::panic::catch_unwind(|| load_model(small_spec().init(&device), &path).map(|_| ()));
        prop_assert!(result.is_ok(), "loading a corrupt weights file panicked");
    }
}

/// The PyTorch state dict of a small CNN ensemble, as `adp export` writes it.
fn small_state_dict() -> Vec<adp::interop::layout::TorchTensor> {
    let device = adp::device::cpu();
    device.seed(0);
    let spec = small_spec();
    adp::interop::layout::state_dict(&spec.init(&device), &spec.member).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// `adp import` reads `.pt` archives with burn-store's PyTorch reader and `.safetensors` with
    /// ours: mutated and truncated files are errors, never panics.
    #[test]
    fn import_readers_never_panic_on_mutated_files(safetensors in any::<bool>(), edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6), cut in any::<prop::sample::Index>()) {
        let tensors = small_state_dict();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(if safetensors { "w.safetensors" } else { "w.pt" });
        if safetensors {
            adp::interop::files::write_safetensors(&path, &tensors, Default::default()).unwrap();
        } else {
            adp::interop::pt::write(&path, &tensors).unwrap();
        }
        corrupt_file(&path, edits, cut);
        let result = std::panic::catch_unwind(|| adp::interop::files::read_weights(&path).map(|_| ()));
        prop_assert!(result.is_ok(), "reading a corrupt weights file panicked");
    }
}
