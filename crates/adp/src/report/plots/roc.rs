//! Fig. 4: ROC curves of the detector that thresholds the ensemble diversity.

use anyhow::Result;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::{FONT, Figure, color, err};
use crate::eval::detect::DetectionReport;

/// Fig. 4: ROC curves of the diversity detector, one panel per run, one curve per attack.
pub struct RocFigure<'a>(pub &'a [DetectionReport]);

impl Figure for RocFigure<'_> {
    fn size(&self) -> (u32, u32) {
        (520 * self.0.len().max(1) as u32, 560)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let root = root
            .titled(
                "Detection by ensemble diversity: score −log ED (predicted class removed)",
                (FONT, 20),
            )
            .map_err(err)?;
        let panels = root.split_evenly((1, self.0.len().max(1)));
        for (report, area) in self.0.iter().zip(&panels) {
            let mut chart = ChartBuilder::on(area)
                .caption(
                    format!(
                        "{}: {} clean vs adversarial",
                        report.label,
                        report.clean_log_ed.len()
                    ),
                    (FONT, 16),
                )
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(50)
                .build_cartesian_2d(0f64..1f64, 0f64..1f64)
                .map_err(err)?;
            chart
                .configure_mesh()
                .x_desc("false positive rate (clean flagged)")
                .y_desc("true positive rate (adversarial flagged)")
                .label_style((FONT, 14))
                .axis_desc_style((FONT, 14))
                .draw()
                .map_err(err)?;
            chart
                .draw_series(DashedLineSeries::new(
                    [(0.0, 0.0), (1.0, 1.0)],
                    6,
                    4,
                    BLACK.mix(0.4).into(),
                ))
                .map_err(err)?;
            for (i, a) in report.attacks.iter().enumerate() {
                let curve = report.roc(a)?;
                let style = color(i).stroke_width(2);
                chart
                    .draw_series(LineSeries::new(
                        curve.fpr.iter().copied().zip(curve.tpr.iter().copied()),
                        style,
                    ))
                    .map_err(err)?
                    .label(format!(
                        "{} {} (AUC {:.3})",
                        a.attack.to_uppercase(),
                        a.parameter,
                        curve.auc
                    ))
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .label_font((FONT, 14))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(err)?;
        }
        Ok(())
    }
}
