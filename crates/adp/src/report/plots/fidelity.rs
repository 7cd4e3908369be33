//! The fidelity grid's figure: one panel per attack, a bar with its standard error per row and method.

use anyhow::Result;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::{FONT, Figure, color, err};

/// The fidelity grid: accuracy under each attack (one panel per attack), one bar per row and
/// method, ECE and ADP side by side in two colours, with ±1 binomial standard error.
pub struct FidelityFigure<'a> {
    /// The grid's lines, one bar group each.
    pub lines: &'a [GridBars],
    /// Titles of the attack cells.
    pub titles: &'a [String],
}

/// One row and method of [`FidelityFigure`]: the accuracy under each attack, as (mean, binomial
/// standard error) fractions.
pub struct GridBars {
    /// Row name.
    pub row: String,
    /// Method label.
    pub label: String,
    /// One (mean, standard error) per attack, in the order of the titles.
    pub bars: Vec<(f64, f64)>,
}

impl Figure for FidelityFigure<'_> {
    fn size(&self) -> (u32, u32) {
        (1200, 300 * self.titles.len().max(1) as u32 + 40)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let root = root
            .titled(
                "Accuracy under attack per fidelity row (bars: mean over seeds, ±1 s.e.)",
                (FONT, 20),
            )
            .map_err(err)?;
        let panels = root.split_evenly((self.titles.len().max(1), 1));
        let labels: Vec<String> = self.lines.iter().map(|l| l.label.clone()).collect();
        let methods: Vec<&String> = labels.iter().fold(Vec::new(), |mut v, l| {
            if !v.contains(&l) {
                v.push(l);
            }
            v
        });
        let n = self.lines.len();
        for (a, title) in self.titles.iter().enumerate() {
            let mut chart = ChartBuilder::on(&panels[a])
                .caption(title, (FONT, 14))
                .margin(8)
                .x_label_area_size(30)
                .y_label_area_size(46)
                .build_cartesian_2d(0f64..n.max(1) as f64, 0f64..100f64)
                .map_err(err)?;
            let row_of = |v: &f64| {
                let i = v.floor() as usize;
                let centred = (v - v.floor() - 0.5).abs() < 1e-9 && i < n;
                // One row name under each pair of bars.
                match (
                    centred,
                    self.lines.get(i),
                    i.checked_sub(1).and_then(|j| self.lines.get(j)),
                ) {
                    (true, Some(l), prev) if prev.is_none_or(|p| p.row != l.row) => l.row.clone(),
                    _ => String::new(),
                }
            };
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(2 * n + 1)
                .x_label_formatter(&row_of)
                .y_desc("accuracy (%)")
                .label_style((FONT, 12))
                .axis_desc_style((FONT, 12))
                .draw()
                .map_err(err)?;
            for (i, line) in self.lines.iter().enumerate() {
                let Some(&(mean, se)) = line.bars.get(a) else {
                    continue;
                };
                let m = methods.iter().position(|l| **l == line.label).unwrap_or(0);
                let (x0, x1) = (i as f64 + 0.15, i as f64 + 0.85);
                let (mean, se) = (100.0 * mean, 100.0 * se);
                chart
                    .draw_series([Rectangle::new([(x0, 0.0), (x1, mean)], color(m).filled())])
                    .map_err(err)?;
                let xc = i as f64 + 0.5;
                chart
                    .draw_series([PathElement::new(
                        vec![(xc, (mean - se).max(0.0)), (xc, (mean + se).min(100.0))],
                        BLACK.stroke_width(2),
                    )])
                    .map_err(err)?;
            }
            for (m, label) in methods.iter().enumerate() {
                chart
                    .draw_series([Rectangle::new([(0.0, 0.0), (0.0, 0.0)], color(m).filled())])
                    .map_err(err)?
                    .label(label.as_str())
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 10, y + 5)], color(m).filled())
                    });
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .label_font((FONT, 12))
                .background_style(WHITE.mix(0.8))
                .draw()
                .map_err(err)?;
        }
        Ok(())
    }
}
