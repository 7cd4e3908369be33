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

mod ed_histogram;
mod fidelity;
mod roc;
mod transfer;
mod tsne;

pub use ed_histogram::{ED_BINS, EdHistogramFigure};
pub use fidelity::{FidelityFigure, GridBars};
pub use roc::RocFigure;
pub use transfer::TransferFigure;
pub use tsne::TsneFigure;

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
        let bytes: &'static [u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");
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
