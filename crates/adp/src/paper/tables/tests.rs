use super::*;
use crate::attack::AttackKind::Jsma;

fn config(table: Table, preset: Preset, dataset: DatasetKind) -> TableConfig {
    TableConfig::preset(table, preset, dataset, "data".into(), DeviceKind::Cpu).unwrap()
}

#[test]
fn every_paper_row_has_one_number_per_method() {
    for table in Table::ALL {
        for dataset in [
            DatasetKind::Mnist,
            DatasetKind::Cifar10,
            DatasetKind::Cifar100,
        ] {
            if table == Table::Table3 && dataset != DatasetKind::Cifar100 {
                continue;
            }
            let c = config(table, Preset::Paper, dataset);
            let rows = c.rows();
            assert!(!rows.is_empty());
            for r in &rows {
                assert_eq!(r.paper.len(), c.methods.len(), "{table:?} {dataset:?}");
            }
            assert_eq!(
                rows.len(),
                paper_rows(table, dataset, c.reproduce.train.members).len()
            );
        }
    }
}

#[test]
fn paper_numbers_appear_only_for_the_data_set_they_were_published_on() {
    let t2 = paper_rows(Table::Table2, DatasetKind::Cifar10, 3);
    assert_eq!(t2[0].paper, vec![Some(36.5), Some(57.4), Some(61.7)]);
    assert_eq!(t2[0].key.cells(), ("FGSM".into(), "ε = 0.02".into()));
    let t2 = paper_rows(Table::Table2, DatasetKind::Mnist, 3);
    assert_eq!(t2[5].key.cells(), ("PGD".into(), "ε = 0.15".into()));
    assert_eq!(t2[5].paper, vec![Some(6.3), Some(36.2), Some(41.0)]);
    let fashion = paper_rows(Table::Table2, DatasetKind::FashionMnist, 3);
    assert!(fashion.iter().all(|r| r.paper.iter().all(Option::is_none)));
    let t1 = paper_rows(Table::Table1, DatasetKind::Cifar100, 3);
    assert_eq!(t1[3].paper, vec![Some(30.35), None, Some(29.80)]);
    let t4 = paper_rows(Table::Table4, DatasetKind::Mnist, 3);
    assert_eq!(t4[0].key.cells(), ("FGSM".into(), "ε = 0.2".into()));
    assert!(t4.iter().all(|r| r.paper.iter().all(Option::is_none)));
    let t5 = paper_rows(Table::Table5, DatasetKind::Cifar10, 5);
    assert_eq!(t5[0].key, RowKey::CleanAccuracy);
    assert_eq!(t5[6].key.cells(), ("EAD".into(), "c = 1".into()));
    assert_eq!(t5[6].paper, vec![Some(20.4), Some(65.3)]);
}

#[test]
fn presets_pick_the_papers_methods_members_and_budgets() {
    let t4 = config(Table::Table4, Preset::Cpu, DatasetKind::Cifar10);
    let labels: Vec<String> = t4
        .methods
        .iter()
        .map(|m| m.train_config(&t4.reproduce).label())
        .collect();
    assert_eq!(
        labels,
        [
            "AdvT_FGSM",
            "AdvT_FGSM + ADP_{2,0.5}",
            "AdvT_PGD",
            "AdvT_PGD + ADP_{2,0.5}"
        ]
    );
    let adv = t4.methods[0].adv_train.as_ref().unwrap();
    assert_eq!((adv.eps_min, adv.eps_max), (0.01, 0.05));
    let t4m = config(Table::Table4, Preset::Cpu, DatasetKind::Mnist);
    let adv = t4m.methods[3].adv_train.as_ref().unwrap();
    assert!((adv.eps_min - 0.05).abs() < 1e-12 && (adv.eps_max - 0.25).abs() < 1e-12);
    let t2m = config(Table::Table2, Preset::Cpu, DatasetKind::Mnist);
    assert_eq!(t4m.reproduce.train.epochs, 2);
    assert_eq!(
        t4m.reproduce.train.train_limit.map(|n| 2 * n),
        t2m.reproduce.train.train_limit
    );
    let t5 = config(Table::Table5, Preset::Cpu, DatasetKind::Cifar10);
    assert_eq!(t5.reproduce.train.members, 5);
    assert_eq!(t5.reproduce.train.epochs, t2m.reproduce.train.epochs);
    // The cpu preset leaves out C&W and EAD, the paper preset keeps them.
    assert_eq!(t5.reproduce.attacks.len(), 4);
    let t5p = config(Table::Table5, Preset::Paper, DatasetKind::Cifar10);
    assert_eq!(t5p.reproduce.attacks.len(), 6);
    assert_eq!(t5p.reproduce.train.epochs, 180);
    // Table 2's CIFAR-10 JSMA uses θ = 0.1.
    let t2 = config(Table::Table2, Preset::Paper, DatasetKind::Cifar10);
    let jsma: Vec<&AttackSpec> = t2
        .reproduce
        .attacks
        .iter()
        .filter(|a| a.kind == Jsma)
        .collect();
    assert!(jsma.iter().all(|a| a.theta == Some(0.1)), "{jsma:?}");
    let msg = TableConfig::preset(
        Table::Table3,
        Preset::Cpu,
        DatasetKind::Mnist,
        "data".into(),
        DeviceKind::Cpu,
    )
    .unwrap_err()
    .to_string();
    assert!(msg.contains("`dataset` must be cifar100"), "{msg}");
}

#[test]
fn table1_and_table2_cpu_runs_are_those_of_reproduce_mnist() {
    let rc = ReproduceConfig::preset(
        Preset::Cpu,
        DatasetKind::Mnist,
        "data".into(),
        DeviceKind::Cpu,
    );
    for table in [Table::Table1, Table::Table2] {
        let c = config(table, Preset::Cpu, DatasetKind::Mnist);
        assert_eq!(c.methods.len(), rc.methods.len());
        for (m, &(alpha, beta)) in c.methods.iter().zip(&rc.methods) {
            assert_eq!(m.train_config(&c.reproduce), rc.train_config(alpha, beta));
        }
    }
    let t2 = config(Table::Table2, Preset::Cpu, DatasetKind::Mnist);
    assert_eq!(t2.reproduce.attacks, rc.attacks);
}
