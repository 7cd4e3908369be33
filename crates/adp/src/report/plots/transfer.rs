//! Fig. 3: heatmaps of how adversarial examples transfer between members.

use anyhow::Result;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{FONT, Figure, err};
use crate::eval::transfer::TransferReport;

/// Fig. 3: one annotated heatmap per run (rows) and attack mode (columns).
pub struct TransferFigure<'a>(pub &'a [TransferReport]);

const CELL_PANEL: u32 = 340;

impl Figure for TransferFigure<'_> {
    fn size(&self) -> (u32, u32) {
        let cols = self.0.iter().map(|r| r.matrices.len()).max().unwrap_or(1) as u32;
        (
            CELL_PANEL * cols.max(1),
            CELL_PANEL * self.0.len().max(1) as u32 + 50,
        )
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let root = root
            .titled(
                "Transferability among members (rows: crafted on member i, columns: fed to member j)",
                (FONT, 20),
            )
            .map_err(err)?;
        let cols = self.0.iter().map(|r| r.matrices.len()).max().unwrap_or(1);
        let rows = root.split_evenly((self.0.len().max(1), cols.max(1)));
        for (r, report) in self.0.iter().enumerate() {
            for (c, m) in report.matrices.iter().enumerate() {
                let area = &rows[r * cols + c];
                let k = m.values.len();
                let mut chart = ChartBuilder::on(area)
                    .caption(format!("{}: {}", report.label, m.title()), (FONT, 14))
                    .margin(8)
                    .x_label_area_size(38)
                    .y_label_area_size(44)
                    .build_cartesian_2d(0f64..k as f64, 0f64..k as f64)
                    .map_err(err)?;
                // Row i of the matrix is drawn at height k − 1 − i so member 1 is on top.
                let member = |v: &f64, flip: bool| {
                    let i = v.floor() as usize;
                    let centred = (v - v.floor() - 0.5).abs() < 1e-9 && i < k;
                    match (centred, flip) {
                        (false, _) => String::new(),
                        (true, false) => format!("{}", i + 1),
                        (true, true) => format!("{}", k - i),
                    }
                };
                chart
                    .configure_mesh()
                    .disable_mesh()
                    .x_labels(2 * k + 1)
                    .y_labels(2 * k + 1)
                    .x_label_formatter(&|v| member(v, false))
                    .y_label_formatter(&|v| member(v, true))
                    .x_desc(format!("fed to member j — {}", m.metric()))
                    .y_desc("crafted on member i")
                    .label_style((FONT, 12))
                    .axis_desc_style((FONT, 12))
                    .draw()
                    .map_err(err)?;
                for (i, row) in m.values.iter().enumerate() {
                    for (j, &v) in row.iter().enumerate() {
                        let y = (k - 1 - i) as f64;
                        let shade = (255.0 * (1.0 - v.clamp(0.0, 1.0))) as u8;
                        let fill = RGBColor(shade, shade, 255);
                        chart
                            .draw_series(std::iter::once(Rectangle::new(
                                [(j as f64, y), (j as f64 + 1.0, y + 1.0)],
                                fill.filled(),
                            )))
                            .map_err(err)?;
                        let text_color = if v > 0.55 { WHITE } else { BLACK };
                        let style = (FONT, 16)
                            .into_font()
                            .color(&text_color)
                            .pos(Pos::new(HPos::Center, VPos::Center));
                        chart
                            .draw_series(std::iter::once(Text::new(
                                format!("{:.1}", 100.0 * v),
                                (j as f64 + 0.5, y + 0.5),
                                style,
                            )))
                            .map_err(err)?;
                    }
                }
            }
        }
        Ok(())
    }
}
