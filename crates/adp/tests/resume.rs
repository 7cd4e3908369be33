//! Resuming a cascade from its kept stages ([`Cascade::resume`]), replaying the random draws of
//! an attack ([`adp::attack::draws`]), and a seed's initial ensemble on wgpu and flex. The
//! device's generator is global to the process, so these checks of its exact sequence run in a
//! test binary of their own, one at a time: in the end-to-end binary, a test that initialised a
//! model beside the wgpu one changed its draws.

use std::sync::Mutex;

use adp::attack::draws::{recorded, replay, uniform};
use adp::attack::{Cascade, Classifier, Goal, Pgd, Square, StageRecord, StageStore, Verdict};
use adp::tensor::floats;
use anyhow::Result;
use burn::prelude::*;
use burn::tensor::Distribution;

static GENERATOR: Mutex<()> = Mutex::new(());

/// Logits `W x + b` of one member.
struct Linear {
    w: Tensor<2>,
    b: Tensor<1>,
}

impl Classifier for Linear {
    fn member_logits(&self, x: Tensor<4>) -> Tensor<3> {
        let flat = x.flatten::<2>(1, 3);
        (flat.matmul(self.w.clone().transpose()) + self.b.clone().unsqueeze::<2>()).unsqueeze_dim(1)
    }
}

#[test]
fn replaying_the_draws_leaves_the_generator_where_drawing_left_it() {
    let _generator = GENERATOR.lock().unwrap_or_else(|p| p.into_inner());
    let d = adp::device::cpu();
    d.seed(7);
    let (first, all) = recorded(|| {
        let first = uniform([4], 0.0, 1.0, &d);
        uniform([3, 2], -1.0, 1.0, &d);
        uniform([5], 0.0, 1.0, &d);
        uniform([2, 1, 2, 3], -0.3, 0.3, &d);
        first
    });
    let next = floats::<f32, _>(uniform::<2>([2, 2], 0.0, 1.0, &d));
    d.seed(7);
    replay(&all, &d).unwrap();
    assert_eq!(floats::<f32, _>(uniform::<2>([2, 2], 0.0, 1.0, &d)), next);
    // The draws are replayed in order and in full: the first one again gives the same numbers,
    // and leaving one out leaves the generator elsewhere.
    d.seed(7);
    assert_eq!(
        floats::<f32, _>(uniform::<1>([4], 0.0, 1.0, &d)),
        floats::<f32, _>(first)
    );
    d.seed(7);
    replay(&all[1..], &d).unwrap();
    assert_ne!(floats::<f32, _>(uniform::<2>([2, 2], 0.0, 1.0, &d)), next);
}

/// Keeps stage records in memory and counts what it handed out.
#[derive(Default)]
struct Memory {
    kept: std::cell::RefCell<std::collections::BTreeMap<usize, StageRecord>>,
    loaded: std::cell::Cell<usize>,
}

impl StageStore for Memory {
    fn load(&self, stage: usize) -> Result<Option<StageRecord>> {
        let record = self.kept.borrow().get(&stage).cloned();
        self.loaded
            .set(self.loaded.get() + record.is_some() as usize);
        Ok(record)
    }

    fn save(&self, stage: usize, record: &StageRecord) -> Result<()> {
        self.kept.borrow_mut().insert(stage, record.clone());
        Ok(())
    }
}

#[test]
fn a_cascade_resumed_after_its_kept_stages_equals_the_uninterrupted_one() {
    let _generator = GENERATOR.lock().unwrap_or_else(|p| p.into_inner());
    let d = adp::device::cpu();
    d.seed(3);
    let model = Linear {
        w: Tensor::<2>::random([3, 4], Distribution::Normal(0.0, 1.0), &d),
        b: Tensor::zeros([3], &d),
    };
    let x = Tensor::<4>::random([24, 1, 2, 2], Distribution::Uniform(0.0, 1.0), &d);
    let y = model.log_probs(x.clone()).argmax(1).flatten::<1>(0, 1);
    let goal = Goal::Untargeted(y);
    // Every stage draws random numbers: random starts, then Square's stripes and squares.
    let pgd = |eps: f64| Pgd {
        steps: 3,
        step_size: eps / 3.0,
        ..Pgd::paper(eps)
    };
    let cascade = Cascade {
        label: "test".into(),
        stages: vec![
            Box::new(pgd(0.15)),
            Box::new(Square {
                queries: 30,
                ..Square::new(0.3)
            }),
            Box::new(pgd(0.6)),
        ],
    };
    let run = |store: Option<&dyn StageStore>| {
        d.seed(11);
        let r = cascade.resume(&model, x.clone(), &goal, store).unwrap();
        (floats::<f32, _>(r.output.adversarial), r.verdicts)
    };
    let full = Memory::default();
    let whole = run(Some(&full));
    assert_eq!(whole, run(None), "keeping the stages changes nothing");
    let kept = full.kept.borrow().clone();
    assert!(kept.values().all(|r| !r.draws.is_empty()));
    let broken = |s| {
        whole
            .1
            .iter()
            .filter(|v| **v == Verdict::BrokenBy(s))
            .count()
    };
    assert!(
        kept.len() == 3 && broken(0) > 0 && broken(1) + broken(2) > 0,
        "every stage runs and breaks examples: {:?}",
        whole.1
    );
    // Killed after stage 0, or after stage 1: the rest runs on the kept stages' examples,
    // from the generator where they left it.
    for done in 1..=2 {
        let partial = Memory::default();
        for s in 0..done {
            partial.save(s, &kept[&s]).unwrap();
        }
        assert_eq!(run(Some(&partial)), whole, "{done} stages kept");
        assert_eq!(partial.loaded.get(), done);
        assert_eq!(*partial.kept.borrow(), kept);
    }
    // Without the replay of the kept draws the later stages would draw other numbers.
    let no_draws = Memory::default();
    let mut first = kept[&0].clone();
    first.draws.clear();
    no_draws.save(0, &first).unwrap();
    assert_ne!(run(Some(&no_draws)).0, whole.0);
    // A kept stage of another batch (another number of examples) is refused.
    let other = Memory::default();
    let mut wrong = kept[&1].clone();
    wrong.success.push(false);
    other.save(0, &kept[&0]).unwrap();
    other.save(1, &wrong).unwrap();
    let e = cascade
        .resume(&model, x.clone(), &goal, Some(&other))
        .unwrap_err();
    assert!(e.to_string().contains("the kept stage 1"), "{e}");
}

/// A seed gives the same initial ensemble on wgpu as on flex: the weights are drawn on the CPU.
/// Where wgpu finds no adapter this prints `skipped`, unless `ADP_REQUIRE_WGPU` is set.
#[cfg(feature = "wgpu")]
#[test]
fn a_seed_gives_the_same_initial_weights_on_wgpu_as_on_flex() {
    use adp::model::{MemberConfig, ModelKind};
    use adp::train::checkpoint::ModelSpec;
    use burn::module::{Module, ModuleVisitor, Param};

    let wgpu = match adp::device::DeviceKind::Wgpu.device() {
        Ok(device) => device,
        Err(e) if std::env::var_os("ADP_REQUIRE_WGPU").is_none() => {
            eprintln!("skipped (set ADP_REQUIRE_WGPU=1 to fail instead): {e}");
            return;
        }
        Err(e) => panic!("ADP_REQUIRE_WGPU is set: {e}"),
    };
    struct Values(Vec<Vec<f32>>);
    impl ModuleVisitor for Values {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0
                .push(param.val().into_data().try_to_vec::<f32>().unwrap());
        }
    }
    let spec = ModelSpec {
        members: 2,
        member: MemberConfig {
            kind: ModelKind::Cnn,
            input_shape: [1, 28, 28],
            num_classes: 10,
            mean: vec![0.13],
            std: vec![0.31],
        },
    };
    let _generator = GENERATOR.lock().unwrap_or_else(|p| p.into_inner());
    let mut values = Vec::new();
    for device in [Device::flex(), wgpu] {
        let model = adp::train::initial_ensemble(&spec, 5, &device.autodiff()).unwrap();
        let mut v = Values(Vec::new());
        model.visit(&mut v);
        values.push(v.0);
    }
    assert_eq!(values[0].len(), values[1].len());
    for (i, (a, b)) in values[0].iter().zip(&values[1]).enumerate() {
        assert_eq!(a, b, "parameter {i}");
    }
}
