//! A plain chart of measured series, for experiment reports: lines with markers, optional error bars (± one
//! spread, e.g. a standard deviation over seeds), a numeric or categorical x axis, and a legend. Described by a
//! [`Chart`] (serde, so scripts can write one as JSON for `qkv plot chart`).

use std::path::Path;

use plotters::coord::ranged1d::ValueFormatter;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use super::{bold, font, write_png, Drawn, NOTE_GREY, PALETTE};
use crate::{Error, Result};

/// A figure of several series over one x axis.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Chart {
    /// The figure's title, above the plot.
    pub title: String,
    /// A line under the title (setup, seeds, what the bars are).
    pub note: String,
    /// The x axis's caption.
    pub x_label: String,
    /// The y axis's caption.
    pub y_label: String,
    /// Names of the x positions 0, 1, 2 …: a categorical axis (points' x are indices). Empty: numeric x.
    pub x_categories: Vec<String>,
    /// A logarithmic x axis (every x must then be positive).
    pub log_x: bool,
    /// The lines, each in its own colour and named in the legend.
    pub series: Vec<Series>,
}

/// One named line: points (x, y) with an optional error bar each.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Series {
    /// The series' name in the legend.
    pub name: String,
    /// Its points, drawn in order.
    pub points: Vec<Point>,
    /// A dashed line instead of a solid one.
    pub dashed: bool,
    /// Markers without a line between them (a scatter: trials of a search, say).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub points_only: bool,
}

/// `[x, y]` or `[x, y, spread]`: the error bar goes from y − spread to y + spread.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(from = "Vec<f64>", into = "Vec<f64>")]
pub struct Point {
    /// Position on the x axis (a category's index on a categorical axis).
    pub x: f64,
    /// The measured value.
    pub y: f64,
    /// Half the error bar's height (e.g. one standard deviation), ≥ 0; `None` for no bar.
    pub spread: Option<f64>,
}

impl From<Vec<f64>> for Point {
    fn from(v: Vec<f64>) -> Self {
        // A point with fewer than two numbers is NaN and skipped when drawn; `validate` names it first.
        let at = |i: usize| v.get(i).copied().unwrap_or(f64::NAN);
        Self { x: at(0), y: at(1), spread: v.get(2).copied() }
    }
}

impl From<Point> for Vec<f64> {
    fn from(p: Point) -> Self {
        std::iter::once(p.x).chain(std::iter::once(p.y)).chain(p.spread).collect()
    }
}

const SIZE: (u32, u32) = (1000, 640);

impl Chart {
    /// Reads a chart from JSON, naming `source` in errors.
    pub fn from_json(text: &str, source: &Path) -> Result<Self> {
        let chart: Chart = serde_json::from_str(text).map_err(|e| Error::input(source, Some(e.line()), e))?;
        chart.validate(source)?;
        Ok(chart)
    }

    /// Every point finite (spreads non-negative), categorical x within the categories, log x positive.
    pub fn validate(&self, source: &Path) -> Result<()> {
        for series in &self.series {
            for (i, p) in series.points.iter().enumerate() {
                let bad = !p.x.is_finite()
                    || !p.y.is_finite()
                    || p.spread.is_some_and(|s| !(s >= 0.0 && s.is_finite()))
                    || (self.log_x && p.x <= 0.0)
                    || (!self.x_categories.is_empty() && (p.x < 0.0 || p.x >= self.x_categories.len() as f64));
                if bad {
                    let message = format!(
                        "series `{}` point {i} is {:?}: expected finite [x, y] or [x, y, spread ≥ 0]{}",
                        series.name,
                        Vec::<f64>::from(*p),
                        if self.x_categories.is_empty() { "" } else { " with x a category index" }
                    );
                    return Err(Error::input(source, None, message));
                }
            }
        }
        Ok(())
    }

    /// Draws the chart into a 1000 × 640 PNG at `path`.
    pub fn draw(&self, path: &Path) -> Result<()> {
        self.validate(path)?;
        write_png(path, SIZE, |root| self.draw_on(root))
    }

    /// The extent of the data (error bars included), padded by 5% (y) so no point sits on the frame.
    fn ranges(&self) -> (std::ops::Range<f64>, std::ops::Range<f64>) {
        let points = || self.series.iter().flat_map(|s| &s.points);
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for p in points() {
            let s = p.spread.unwrap_or(0.0);
            (x0, x1, y0, y1) = (x0.min(p.x), x1.max(p.x), y0.min(p.y - s), y1.max(p.y + s));
        }
        if x0 > x1 {
            (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
        }
        if !self.x_categories.is_empty() {
            (x0, x1) = (-0.5, self.x_categories.len() as f64 - 0.5);
        } else if x0 == x1 && self.log_x && x0 > 0.0 {
            (x0, x1) = (x0 / 2.0, x1 * 2.0); // one point on a log axis: a range that stays positive
        } else if x0 == x1 {
            (x0, x1) = (x0 - 0.5, x1 + 0.5);
        }
        let pad = ((y1 - y0) * 0.05).max(1e-9);
        // A scatter's extreme points would sit on the frame: widen x by 5% too (in log space on a log axis).
        if self.series.iter().any(|s| s.points_only) && self.x_categories.is_empty() {
            if self.log_x && x0 > 0.0 {
                let widen = (x1 / x0).powf(0.05).max(1.0 + 1e-9);
                (x0, x1) = (x0 / widen, x1 * widen);
            } else {
                let pad = ((x1 - x0) * 0.05).max(1e-9);
                (x0, x1) = (x0 - pad, x1 + pad);
            }
        }
        (x0..x1, y0 - pad..y1 + pad)
    }

    fn draw_on(&self, root: &super::Area) -> Drawn {
        let (x, y) = self.ranges();
        let (header, body) = root.split_vertically(if self.note.is_empty() { 40 } else { 64 });
        header.draw_text(&self.title, &bold(20.0), (20, 10))?;
        header.draw_text(&self.note, &font(14.0).color(&NOTE_GREY), (20, 38))?;
        if self.log_x {
            let mut chart = self.frame(&body).build_cartesian_2d(x.log_scale(), y)?;
            self.mesh(&mut chart.configure_mesh())?;
            self.lines(&mut chart)?;
            legend(&mut chart)
        } else {
            let mut chart = self.frame(&body).build_cartesian_2d(x, y)?;
            let categories = &self.x_categories;
            let category = |v: &f64| {
                let i = v.round();
                let near = (v - i).abs() < 1e-6 && i >= 0.0;
                near.then(|| categories.get(i as usize).cloned()).flatten().unwrap_or_default()
            };
            let mut mesh = chart.configure_mesh();
            if !categories.is_empty() {
                mesh.x_labels(categories.len() + 1).x_label_formatter(&category);
            }
            self.mesh(&mut mesh)?;
            self.lines(&mut chart)?;
            legend(&mut chart)
        }
    }

    fn frame<'a, 'b>(&self, area: &'a super::Area<'b>) -> ChartBuilder<'a, 'b, BitMapBackend<'b>> {
        let mut builder = ChartBuilder::on(area);
        builder.margin(16).x_label_area_size(48).y_label_area_size(72);
        builder
    }

    fn mesh<X, Y>(&self, mesh: &mut plotters::chart::MeshStyle<'_, '_, X, Y, BitMapBackend<'_>>) -> Drawn
    where
        X: Ranged<ValueType = f64> + ValueFormatter<f64>,
        Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
    {
        mesh.x_desc(self.x_label.as_str())
            .y_desc(self.y_label.as_str())
            .label_style(font(14.0))
            .axis_desc_style(font(15.0))
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        Ok(())
    }

    fn lines<X, Y>(&self, chart: &mut ChartContext<'_, BitMapBackend<'_>, Cartesian2d<X, Y>>) -> Drawn
    where
        X: Ranged<ValueType = f64>,
        Y: Ranged<ValueType = f64>,
    {
        // On a categorical axis the series are spread a little around each category, so that their error bars
        // do not hide one another.
        let spread = if self.x_categories.is_empty() { 0.0 } else { 0.05 };
        let centre = (self.series.len() as f64 - 1.0) / 2.0;
        for (i, series) in self.series.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            let style = colour.stroke_width(2);
            let shift = (i as f64 - centre) * spread;
            let points: Vec<(f64, f64)> = series.points.iter().map(|p| (p.x + shift, p.y)).collect();
            let drawn = if series.points_only {
                chart.draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())?
            } else if series.dashed {
                chart.draw_series(std::iter::once(DashedPathElement::new(points.clone(), 8, 5, style)))?
            } else {
                chart.draw_series(LineSeries::new(points.clone(), style))?
            };
            if series.points_only {
                drawn.label(series.name.as_str()).legend(move |(x, y)| Circle::new((x + 12, y), 4, colour.filled()));
            } else {
                drawn.label(series.name.as_str()).legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], style));
            }
            chart.draw_series(points.iter().map(|&(x, y)| Circle::new((x, y), 4, colour.filled())))?;
            let bars = series.points.iter().filter_map(|p| p.spread.map(|s| (p.x + shift, p.y - s, p.y + s)));
            chart.draw_series(bars.map(|(x, lo, hi)| PathElement::new([(x, lo), (x, hi)], colour.stroke_width(2))))?;
        }
        Ok(())
    }
}

fn legend<'a, X, Y>(chart: &mut ChartContext<'a, BitMapBackend<'a>, Cartesian2d<X, Y>>) -> Drawn
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    chart
        .configure_series_labels()
        .label_font(font(14.0))
        .background_style(WHITE.mix(0.85))
        .border_style(NOTE_GREY)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_reads_from_json_and_bad_points_are_named() {
        let source = Path::new("chart.json");
        let text = r#"{"title": "BLEU by length", "x_categories": ["1-10", "11-20"],
                       "series": [{"name": "tf", "points": [[0, 30.5, 1.2], [1, 28.0]]}]}"#;
        let chart = Chart::from_json(text, source).unwrap();
        assert_eq!(chart.series[0].points[0], Point { x: 0.0, y: 30.5, spread: Some(1.2) });
        assert_eq!(chart.series[0].points[1].spread, None);

        let outside = text.replace("[1, 28.0]", "[2, 28.0]");
        let message = Chart::from_json(&outside, source).unwrap_err().to_string();
        assert!(message.contains("chart.json") && message.contains("series `tf` point 1"), "{message}");
        let short = text.replace("[1, 28.0]", "[1]");
        assert!(Chart::from_json(&short, source).is_err());
        let unknown = text.replace("\"title\"", "\"titel\"");
        assert!(Chart::from_json(&unknown, source).unwrap_err().to_string().contains("titel"));
    }

    #[test]
    fn a_chart_draws_numeric_categorical_and_log_axes() {
        let dir = std::env::temp_dir().join(format!("qkv-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let series = |name: &str, dashed| Series {
            name: name.into(),
            points: (1..5).map(|i| Point { x: i as f64, y: (i * i) as f64, spread: Some(0.5) }).collect(),
            dashed,
            points_only: false,
        };
        let numeric =
            Chart { title: "t".into(), series: vec![series("a", false), series("b", true)], ..Chart::default() };
        let categorical =
            Chart { x_categories: ["0", "1", "2", "3", "4"].map(String::from).to_vec(), ..numeric.clone() };
        let log = Chart { log_x: true, note: "a note".into(), ..numeric.clone() };
        let mut scatter = log.clone();
        scatter.series[0].points_only = true;
        let mut one_point = scatter.clone();
        one_point.series =
            vec![Series { points: vec![Point { x: 3e-5, y: 0.2, spread: None }], ..scatter.series[0].clone() }];
        let charts = [
            ("numeric", numeric),
            ("categorical", categorical),
            ("log", log),
            ("scatter", scatter),
            ("one", one_point),
        ];
        for (name, chart) in charts {
            let path = dir.join(format!("{name}.png"));
            chart.draw(&path).unwrap();
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(&bytes[1..4], b"PNG", "{name}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
