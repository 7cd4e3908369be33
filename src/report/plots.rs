//! Figures of the paper's experiments drawn with `plotters`, each written as PNG and SVG:
//! t-SNE scatter plots of the members' hidden features (Fig. 2), transfer heatmaps (Fig. 3), ROC
//! curves of the diversity detector (Fig. 4) and overlaid histograms of log ensemble diversity
//! (App. B.3, Fig. 5).
//!
//! Text is rendered by `ab_glyph` from DejaVu Sans embedded in the binary
//! (`assets/fonts/DejaVuSans.ttf`, Bitstream Vera license with DejaVu's public-domain changes,
//! see `assets/fonts/LICENSE-DejaVu.txt`), so no fontconfig or FreeType is needed at run time.

use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::eval::detect::DetectionReport;
use crate::eval::ed_histogram::EdHistogram;
use crate::eval::feature_tsne::TsneReport;
use crate::eval::transfer::TransferReport;

/// Family name the embedded font is registered under. Every text size is even: plotters' glyph
/// placement truncates `size / 2 + top`, which for odd sizes lifts small glyphs such as `.` by a
/// pixel relative to the others.
const FONT: &str = "sans-serif";
/// Colours of successive series and classes (the "tab10" palette).
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
        if plotters::style::register_font(FONT, FontStyle::Normal, bytes).is_err() {
            panic!("the embedded DejaVu Sans font is a valid TrueType file");
        }
    });
}

fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing failed: {e}")
}

/// A figure that can draw itself on any plotters backend.
pub trait Figure {
    /// Size in pixels (PNG) or user units (SVG).
    fn size(&self) -> (u32, u32);
    /// Draws the whole figure on `root`.
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>;
}

/// Writes `figure` as `stem.png` and `stem.svg` and returns both paths.
pub fn save(figure: &impl Figure, stem: &Path) -> Result<Vec<PathBuf>> {
    register_font();
    let (png, svg) = (stem.with_extension("png"), stem.with_extension("svg"));
    {
        let root = BitMapBackend::new(&png, figure.size()).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        figure.draw(&root)?;
        root.present().map_err(err)?;
    }
    {
        let root = SVGBackend::new(&svg, figure.size()).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        figure.draw(&root)?;
        root.present().map_err(err)?;
    }
    Ok(vec![png, svg])
}

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
