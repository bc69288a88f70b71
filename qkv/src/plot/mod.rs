//! PNG figures: the curves of a training run's log ([`loss_curve`]), several runs' curves in one figure
//! ([`compare_runs`]), grids of attention heatmaps ([`attention_grid`]), and charts of measured series with
//! error bars for experiment reports ([`Chart`]).
//!
//! Text is drawn with DejaVu Sans compiled into the library (the `dejavu` crate) through plotters' ab_glyph
//! renderer, so plotting needs no fonts installed on the machine. Every figure is written to a temporary file
//! beside its path and renamed over it, so a failure never leaves a half-written image behind.

mod attention;
mod chart;
mod curves;

pub use attention::attention_grid;
pub use chart::{Chart, Point, Series};
pub use curves::{compare_runs, loss_curve, CompareOptions, CurveOptions};

use std::fs;
use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::drawing::DrawingAreaErrorKind;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::{Error, Result};

/// The font family of every text element; [`register_fonts`] maps it to the embedded DejaVu Sans.
const FONT: &str = "DejaVu Sans";

/// Registers DejaVu Sans under [`FONT`] once per process. Also under "sans-serif", the family plotters uses
/// for text whose style we do not set, so that no element can ask for a font that is not there. `path` is the
/// figure the font is needed for, named in the error.
fn register_fonts(path: &Path) -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        [FONT, "sans-serif"].iter().all(|family| {
            register_font(family, FontStyle::Normal, dejavu::sans::regular()).is_ok()
                && register_font(family, FontStyle::Bold, dejavu::sans::bold()).is_ok()
        })
    });
    if !ok {
        return Err(Error::plot(path, "the embedded DejaVu Sans font could not be loaded"));
    }
    Ok(())
}

fn font(size: f64) -> TextStyle<'static> {
    TextStyle::from((FONT, size).into_font()).color(&BLACK)
}

fn bold(size: f64) -> TextStyle<'static> {
    TextStyle::from((FONT, size, FontStyle::Bold).into_font()).color(&BLACK)
}

/// Grey for notes under a title and for frames.
const NOTE_GREY: RGBColor = RGBColor(90, 90, 90);
const FRAME_GREY: RGBColor = RGBColor(150, 150, 150);

/// Matplotlib's "tab10": ten colours that stay apart for most colour-blind readers and in greyscale print.
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

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// What went wrong while drawing, without the figure's path: [`write_png`] adds it, as an [`Error::Plot`].
struct DrawError(String);

impl<E: std::error::Error + Send + Sync> From<DrawingAreaErrorKind<E>> for DrawError {
    fn from(e: DrawingAreaErrorKind<E>) -> Self {
        DrawError(e.to_string())
    }
}

type Drawn = std::result::Result<(), DrawError>;

/// Draws a `size` PNG with `draw` into a temporary file beside `path`, then renames it over `path`.
fn write_png(path: &Path, size: (u32, u32), draw: impl FnOnce(&Area) -> Drawn) -> Result<()> {
    register_fonts(path)?;
    let name = path.file_name().ok_or_else(|| Error::plot(path, "not a file path"))?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    // Ends in .png because the bitmap backend picks the encoder from the extension.
    let temp = dir.join(format!(".{}.{}.tmp.png", name.to_string_lossy(), std::process::id()));
    let drawn = render(&temp, size, draw);
    let result = match drawn {
        Ok(()) => fs::rename(&temp, path).map_err(|e| Error::io(path, e)),
        Err(DrawError(message)) => Err(Error::plot(path, message)),
    };
    if result.is_err() {
        // The backend saves what it has when dropped, even after an error.
        let _ = fs::remove_file(&temp);
    }
    result
}

fn render(path: &Path, size: (u32, u32), draw: impl FnOnce(&Area) -> Drawn) -> Drawn {
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE)?;
    draw(&root)?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_drawing_names_the_figure_and_leaves_no_file() {
        let dir = std::env::temp_dir().join(format!("qkv-plot-write-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("figure.png");
        let err = write_png(&path, (40, 30), |_| Err(DrawError("the data was wrong".into()))).unwrap_err();
        assert_eq!(err.to_string(), format!("cannot plot {}: the data was wrong", path.display()));
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
        write_png(&path, (40, 30), |_| Ok(())).unwrap();
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        let err = write_png(&dir.join("no-such-dir/figure.png"), (40, 30), |_| Ok(())).unwrap_err().to_string();
        assert!(err.contains("no-such-dir"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
