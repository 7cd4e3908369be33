use super::*;
use crate::data::DatasetKind;
use crate::device::DeviceKind;

fn grid(preset: Preset) -> FidelityConfig {
    FidelityConfig::new(ReproduceConfig::preset(
        preset,
        DatasetKind::Mnist,
        "data".into(),
        DeviceKind::Cpu,
    ))
}

#[test]
fn the_cpu_grid_starts_from_the_cnn_and_ends_with_the_cpu_preset() {
    let cpu = grid(Preset::Cpu);
    let default = &cpu.rows[0].train;
    assert_eq!(
        (default.model, default.epochs, default.train_limit),
        (ModelKind::Cnn, 4, Some(20_000))
    );
    let last = cpu.rows.last().unwrap();
    assert_eq!(last.name, "preset");
    assert_eq!(last.train, cpu.base.train);
    assert_eq!(last.train.model, ModelKind::Resnet20);
    // Every other row changes exactly what its name says.
    let row = |name: &str| &cpu.rows.iter().find(|r| r.name == name).unwrap().train;
    assert_eq!(row("resnet20").model, ModelKind::Resnet20);
    assert_eq!(
        TrainConfig {
            model: ModelKind::Cnn,
            ..row("resnet20").clone()
        },
        *default
    );
    assert_eq!(
        row("budget").train_limit,
        None,
        "3 × 20,000 is all of MNIST"
    );
}

#[test]
fn a_preset_that_trains_as_a_row_adds_no_row() {
    // `tiny` trains the default row's CNN; `paper` trains the `all` row.
    for preset in [Preset::Tiny, Preset::Paper] {
        let g = grid(preset);
        assert!(g.rows.iter().all(|r| r.name != "preset"), "{preset:?}");
    }
    let paper = grid(Preset::Paper);
    let all = paper.rows.iter().find(|r| r.name == "all").unwrap();
    assert_eq!(all.train, paper.base.train);
}
