//! Fig. 2: t-SNE scatter plots of the members' hidden features.

use anyhow::Result;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::{FONT, Figure, color, err};
use crate::eval::feature_tsne::TsneReport;

/// Fig. 2: one t-SNE scatter plot per run (rows) and member (columns), points coloured by class,
/// with one class legend on the right.
pub struct TsneFigure<'a>(pub &'a [TsneReport]);

const TSNE_PANEL: u32 = 380;
const TSNE_LEGEND: u32 = 110;

impl Figure for TsneFigure<'_> {
    fn size(&self) -> (u32, u32) {
        let cols = self.0.iter().map(|r| r.members.len()).max().unwrap_or(1) as u32;
        (
            TSNE_PANEL * cols.max(1) + TSNE_LEGEND,
            TSNE_PANEL * self.0.len().max(1) as u32 + 50,
        )
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let examples = self.0.first().map_or(0, |r| r.labels.len());
        let root = root
            .titled(
                &format!(
                    "t-SNE of each member's final hidden features on {examples} test images (colour: class)"
                ),
                (FONT, 20),
            )
            .map_err(err)?;
        let width = root.dim_in_pixel().0;
        let (panels, legend) = root.split_horizontally(width.saturating_sub(TSNE_LEGEND));
        let cols = self.0.iter().map(|r| r.members.len()).max().unwrap_or(1);
        let grid = panels.split_evenly((self.0.len().max(1), cols.max(1)));
        // Few points get larger dots.
        let radius = if examples > 3000 { 1 } else { 2 };
        for (r, report) in self.0.iter().enumerate() {
            for (m, e) in report.members.iter().enumerate() {
                let (x, y) = bounds(&e.coords);
                let mut chart = ChartBuilder::on(&grid[r * cols + m])
                    .caption(
                        format!(
                            "{}, member {} (kNN agreement {:.2})",
                            report.label,
                            m + 1,
                            e.embedding_agreement
                        ),
                        (FONT, 14),
                    )
                    .margin(8)
                    .x_label_area_size(36)
                    .y_label_area_size(46)
                    .build_cartesian_2d(x, y)
                    .map_err(err)?;
                chart
                    .configure_mesh()
                    .disable_mesh()
                    .x_labels(5)
                    .y_labels(5)
                    .x_label_formatter(&|v| format!("{v:.0}"))
                    .y_label_formatter(&|v| format!("{v:.0}"))
                    .x_desc("t-SNE 1")
                    .y_desc("t-SNE 2")
                    .label_style((FONT, 10))
                    .axis_desc_style((FONT, 12))
                    .draw()
                    .map_err(err)?;
                chart
                    .draw_series(e.coords.iter().zip(&report.labels).map(|(c, &l)| {
                        Circle::new(
                            (c[0] as f64, c[1] as f64),
                            radius,
                            color(l as usize).mix(0.7).filled(),
                        )
                    }))
                    .map_err(err)?;
            }
        }
        let classes = self.0.iter().map(|r| r.num_classes).max().unwrap_or(0);
        for c in 0..classes {
            let y = 60 + 26 * c as i32;
            legend
                .draw(&Circle::new((16, y), 6, color(c).filled()))
                .map_err(err)?;
            legend
                .draw(&Text::new(
                    format!("class {c}"),
                    (30, y - 8),
                    (FONT, 14).into_font(),
                ))
                .map_err(err)?;
        }
        Ok(())
    }
}

/// Axis ranges covering every point with a 5% margin (a unit range around a single point).
fn bounds(coords: &[[f32; 2]]) -> (std::ops::Range<f64>, std::ops::Range<f64>) {
    let range = |axis: usize| {
        let values = coords.iter().map(|c| c[axis] as f64);
        let lo = values.clone().fold(f64::INFINITY, f64::min);
        let hi = values.fold(f64::NEG_INFINITY, f64::max);
        if !(lo.is_finite() && hi > lo) {
            let c = if lo.is_finite() { lo } else { 0.0 };
            return c - 0.5..c + 0.5;
        }
        let pad = 0.05 * (hi - lo);
        lo - pad..hi + pad
    };
    (range(0), range(1))
}
