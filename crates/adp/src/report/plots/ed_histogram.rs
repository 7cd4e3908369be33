//! App. B.3, Fig. 5: overlaid histograms of the log ensemble diversity.

use anyhow::Result;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::{FONT, Figure, color, err};
use crate::eval::ed_histogram::EdHistogram;

/// Fig. 5: overlaid histograms of log ED (true label removed) with each run's median.
pub struct EdHistogramFigure<'a>(pub &'a [EdHistogram]);

/// Number of histogram bins of [`EdHistogramFigure`] (and of its CSV).
pub const ED_BINS: usize = 40;

impl Figure for EdHistogramFigure<'_> {
    fn size(&self) -> (u32, u32) {
        (900, 560)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let bins = EdHistogram::bins(self.0, ED_BINS);
        let (lo, hi) = (bins.edges[0], bins.edges[ED_BINS]);
        let top = bins
            .counts
            .iter()
            .flatten()
            .copied()
            .max()
            .unwrap_or(1)
            .max(1) as f64
            * 1.15;
        let examples = self.0.first().map_or(0, |h| h.log_ed.len());
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!("log ensemble diversity on {examples} test examples (true label removed)"),
                (FONT, 20),
            )
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(60)
            .build_cartesian_2d(lo..hi, 0f64..top)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("log ED (true label removed)")
            .y_desc("number of test examples")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 14))
            .draw()
            .map_err(err)?;
        for (h, (hist, counts)) in self.0.iter().zip(&bins.counts).enumerate() {
            let c = color(h);
            chart
                .draw_series(
                    counts
                        .iter()
                        .enumerate()
                        .filter(|(_, n)| **n > 0)
                        .map(|(b, &n)| {
                            Rectangle::new(
                                [(bins.edges[b], 0.0), (bins.edges[b + 1], n as f64)],
                                c.mix(0.35).filled(),
                            )
                        }),
                )
                .map_err(err)?
                .label(format!("{} (median {:.2})", hist.label, hist.median))
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 16, y + 6)], c.mix(0.6).filled())
                });
            chart
                .draw_series(DashedLineSeries::new(
                    [(hist.median, 0.0), (hist.median, top)],
                    8,
                    5,
                    c.stroke_width(2),
                ))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font((FONT, 16))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
        Ok(())
    }
}
