//! PNG plots: training curves from a run's `log.jsonl`, and grids of cross-attention heatmaps.
//!
//! Text is drawn with DejaVu Sans compiled into the binary (the `dejavu` crate) through plotters' ab_glyph
//! renderer, so plotting needs no fonts installed on the machine.

use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{bail, ensure, Context, Result};
use clap::{Parser, Subcommand};
use plotters::coord::types::{RangedCoordf64, RangedCoordu64};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontStyle, FontTransform};
use serde::Deserialize;

/// The font family of every text element; [`register_fonts`] maps it to the embedded DejaVu Sans.
const FONT: &str = "DejaVu Sans";

#[derive(Parser)]
pub struct Args {
    #[command(subcommand)]
    kind: Kind,
}

#[derive(Subcommand)]
enum Kind {
    /// Training and validation loss (and BLEU, when logged) against step, from a run's log.jsonl
    Loss {
        /// The training log (JSON lines with "kind": "train" or "eval")
        #[arg(long)]
        log: PathBuf,
        /// The PNG to write
        #[arg(long)]
        out: PathBuf,
        /// Title above the plot (default: the log's path)
        #[arg(long)]
        title: Option<String>,
    },
    /// Cross-attention heatmaps, one per layer and head, from a JSON file with "source_tokens",
    /// "target_tokens" and "weights" ([layer][head][target position][source position])
    Attention {
        /// The attention weights as JSON
        #[arg(long)]
        weights: PathBuf,
        /// The PNG to write
        #[arg(long)]
        out: PathBuf,
        /// Title above the grid
        #[arg(long, default_value = "cross-attention")]
        title: String,
    },
}

/// The input of `qkv plot attention`.
#[derive(Deserialize)]
struct AttentionFile {
    source_tokens: Vec<String>,
    target_tokens: Vec<String>,
    /// [layer][head][target position][source position]
    weights: Vec<Vec<Vec<Vec<f32>>>>,
}

/// `qkv plot`: reads the input file and writes the PNG.
pub fn run(args: Args) -> Result<()> {
    let out = match args.kind {
        Kind::Loss { log, out, title } => {
            let records = read_log(&log)?;
            loss_curve(&records, &title.unwrap_or_else(|| log.display().to_string()), &out)?;
            out
        }
        Kind::Attention { weights, out, title } => {
            let text = fs::read_to_string(&weights).with_context(|| format!("reading {}", weights.display()))?;
            let file: AttentionFile =
                serde_json::from_str(&text).with_context(|| format!("{}: not an attention file", weights.display()))?;
            attention_grid(&file.weights, &file.source_tokens, &file.target_tokens, &title, &out)?;
            out
        }
    };
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// One line of a run's `log.jsonl` as the trainer writes it; fields the plots do not use are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum LogRecord {
    /// A logged optimizer step.
    Train(TrainRecord),
    /// A validation pass.
    Eval(EvalRecord),
    /// A record kind the plots do not use, so that logs from newer trainers still load.
    #[serde(other)]
    Other,
}

/// A `"kind": "train"` record. Values are optional because serde_json writes NaN and infinity as `null`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TrainRecord {
    pub step: u64,
    pub loss: Option<f64>,
}

/// A `"kind": "eval"` record.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EvalRecord {
    pub step: u64,
    pub val_loss: Option<f64>,
    pub val_bleu: Option<f64>,
}

/// Reads a training log: one JSON object per line, blank lines skipped. A malformed line is an error naming
/// the file and the line.
pub fn read_log(path: &Path) -> Result<Vec<LogRecord>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut records = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(record) => records.push(record),
            Err(e) => bail!("{}:{}: not a training log record: {e}", path.display(), index + 1),
        }
    }
    Ok(records)
}

/// Registers DejaVu Sans under [`FONT`] once per process. Also under "sans-serif", the family plotters uses
/// for text whose style we do not set, so that no element can ask for a font that is not there.
fn register_fonts() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        [FONT, "sans-serif"].iter().all(|family| {
            register_font(family, FontStyle::Normal, dejavu::sans::regular()).is_ok()
                && register_font(family, FontStyle::Bold, dejavu::sans::bold()).is_ok()
        })
    });
    ensure!(ok, "the embedded DejaVu Sans font could not be loaded");
    Ok(())
}

fn font(size: f64) -> TextStyle<'static> {
    TextStyle::from((FONT, size).into_font()).color(&BLACK)
}

fn bold(size: f64) -> TextStyle<'static> {
    TextStyle::from((FONT, size, FontStyle::Bold).into_font()).color(&BLACK)
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// Draws a `size` PNG with `draw` into a temporary file beside `path`, then renames it over `path`, so that a
/// failure never leaves a half-written image behind.
fn write_png(path: &Path, size: (u32, u32), draw: impl FnOnce(&Area) -> Result<()>) -> Result<()> {
    let name = path.file_name().with_context(|| format!("{}: not a file path", path.display()))?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    // Ends in .png because the bitmap backend picks the encoder from the extension.
    let temp = dir.join(format!(".{}.{}.tmp.png", name.to_string_lossy(), std::process::id()));
    let result = render(&temp, size, draw).and_then(|()| Ok(fs::rename(&temp, path)?));
    if result.is_err() {
        // The backend saves what it has when dropped, even after an error.
        let _ = fs::remove_file(&temp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

fn render(path: &Path, size: (u32, u32), draw: impl FnOnce(&Area) -> Result<()>) -> Result<()> {
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE)?;
    draw(&root)?;
    root.present()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Loss curve

const TRAIN_COLOR: RGBColor = RGBColor(31, 119, 180);
const VALID_COLOR: RGBColor = RGBColor(230, 110, 0);
const BLEU_COLOR: RGBColor = RGBColor(44, 160, 44);

/// With fewer training points than this the raw curve is drawn on its own: there is nothing to smooth.
const SMOOTH_FROM: usize = 20;

/// The finite (step, value) series of a log.
#[derive(Default)]
struct Curves {
    train: Vec<(u64, f64)>,
    val_loss: Vec<(u64, f64)>,
    val_bleu: Vec<(u64, f64)>,
}

impl Curves {
    fn from_log(log: &[LogRecord]) -> Self {
        let mut curves = Curves::default();
        let push = |series: &mut Vec<(u64, f64)>, step: u64, value: Option<f64>| {
            if let Some(v) = value.filter(|v| v.is_finite()) {
                series.push((step, v));
            }
        };
        for record in log {
            match record {
                LogRecord::Train(r) => push(&mut curves.train, r.step, r.loss),
                LogRecord::Eval(r) => {
                    push(&mut curves.val_loss, r.step, r.val_loss);
                    push(&mut curves.val_bleu, r.step, r.val_bleu);
                }
                LogRecord::Other => {}
            }
        }
        // A resumed run can log a step twice; sorting keeps the lines monotone in x.
        for series in [&mut curves.train, &mut curves.val_loss, &mut curves.val_bleu] {
            series.sort_by_key(|&(step, _)| step);
        }
        curves
    }

    /// Steps covered by any series, with 2% (at least one step) to spare on each side so that the dots at the
    /// ends are not cut in half by the axes.
    fn steps(&self) -> Range<u64> {
        let all = || self.train.iter().chain(&self.val_loss).chain(&self.val_bleu).map(|&(s, _)| s);
        let (lo, hi) = (all().min().unwrap_or(0), all().max().unwrap_or(0));
        let pad = ((hi - lo) / 50).max(1);
        lo.saturating_sub(pad)..hi.saturating_add(pad)
    }
}

/// Plots training loss (raw and smoothed) and validation loss against step, and validation BLEU in a second
/// panel when the log has it, into a PNG at `path`. Non-finite values are skipped.
pub fn loss_curve(log: &[LogRecord], title: &str, path: &Path) -> Result<()> {
    ensure!(!log.is_empty(), "the training log is empty: no loss curve to draw for {}", path.display());
    let curves = Curves::from_log(log);
    ensure!(
        !curves.train.is_empty() || !curves.val_loss.is_empty(),
        "the training log has no finite training or validation loss: no loss curve to draw for {}",
        path.display()
    );
    register_fonts()?;
    let height = if curves.val_bleu.is_empty() { 620 } else { 900 };
    write_png(path, (1100, height), |root| {
        let body = root.margin(14, 0, 0, 0).titled(title, bold(24.0))?;
        if curves.val_bleu.is_empty() {
            return loss_panel(&body, &curves);
        }
        let split = body.dim_in_pixel().1 as f64 * 0.64;
        let (top, bottom) = body.split_vertically(split as u32);
        loss_panel(&top, &curves)?;
        bleu_panel(&bottom, &curves)
    })
}

fn loss_panel(area: &Area, curves: &Curves) -> Result<()> {
    let values = curves.train.iter().chain(&curves.val_loss).map(|&(_, v)| v);
    let mut chart = ChartBuilder::on(area)
        .margin(16)
        .x_label_area_size(52)
        .y_label_area_size(78)
        .build_cartesian_2d(curves.steps(), value_range(values))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("loss (cross-entropy per token)")
        .label_style(font(15.0))
        .axis_desc_style(font(17.0))
        .light_line_style(TRANSPARENT)
        .bold_line_style(RGBColor(225, 225, 225))
        .draw()?;
    if curves.train.len() >= SMOOTH_FROM {
        let raw = LineSeries::new(curves.train.iter().copied(), TRAIN_COLOR.mix(0.3).stroke_width(1));
        chart.draw_series(raw)?.label("training loss").legend(legend_line(TRAIN_COLOR.mix(0.3)));
        let smooth = LineSeries::new(smooth(&curves.train), TRAIN_COLOR.stroke_width(3));
        chart.draw_series(smooth)?.label("training loss (moving average)").legend(legend_line(TRAIN_COLOR));
    } else if !curves.train.is_empty() {
        draw_line_with_points(&mut chart, &curves.train, TRAIN_COLOR, "training loss")?;
    }
    if !curves.val_loss.is_empty() {
        draw_line_with_points(&mut chart, &curves.val_loss, VALID_COLOR, "validation loss")?;
    }
    draw_legend(&mut chart, SeriesLabelPosition::UpperRight)
}

fn bleu_panel(area: &Area, curves: &Curves) -> Result<()> {
    let values = curves.val_bleu.iter().map(|&(_, v)| v);
    let mut chart = ChartBuilder::on(area)
        .margin(16)
        .x_label_area_size(52)
        .y_label_area_size(78)
        .build_cartesian_2d(curves.steps(), value_range(values))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("validation BLEU")
        .label_style(font(15.0))
        .axis_desc_style(font(17.0))
        .light_line_style(TRANSPARENT)
        .bold_line_style(RGBColor(225, 225, 225))
        .draw()?;
    draw_line_with_points(&mut chart, &curves.val_bleu, BLEU_COLOR, "validation BLEU")?;
    // BLEU rises, so the lower right corner is the one most likely to be empty.
    draw_legend(&mut chart, SeriesLabelPosition::LowerRight)
}

/// A 2-pixel line through `points` with a dot on each, so that a single point still shows.
fn draw_line_with_points(chart: &mut LossChart, points: &[(u64, f64)], color: RGBColor, label: &str) -> Result<()> {
    let line = LineSeries::new(points.iter().copied(), color.stroke_width(2));
    chart.draw_series(line)?.label(label).legend(legend_line(color));
    chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
    Ok(())
}

type LossChart<'a, 'b> = ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordu64, RangedCoordf64>>;

fn legend_line<S: Into<ShapeStyle>>(style: S) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    let style = style.into().stroke_width(3);
    move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style)
}

fn draw_legend<'a>(chart: &mut LossChart<'a, 'a>, position: SeriesLabelPosition) -> Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .label_font(font(15.0))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .margin(12)
        .draw()?;
    Ok(())
}

/// The range shown on a value axis: the data's range with 6% padding, never below zero for data that is not
/// negative (losses, BLEU), and one unit wide around a single value.
fn value_range(values: impl Iterator<Item = f64>) -> Range<f64> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !(lo.is_finite() && hi.is_finite()) {
        return 0.0..1.0;
    }
    let pad = if hi - lo > 1e-9 { (hi - lo) * 0.06 } else { (hi.abs() * 0.1).max(0.5) };
    let floor = if lo >= 0.0 { 0.0 } else { f64::NEG_INFINITY };
    (lo - pad).max(floor)..hi + pad
}

/// Exponential moving average with the bias correction TensorBoard uses, so the curve starts at the first value
/// instead of rising from zero. It averages over about 1/20 of the points, so the line keeps its shape whatever
/// the log interval.
fn smooth(points: &[(u64, f64)]) -> Vec<(u64, f64)> {
    let span = (points.len() as f64 / 20.0).clamp(1.0, 200.0);
    let keep = 1.0 - 2.0 / (span + 1.0);
    let (mut average, mut weight) = (0.0, 0.0);
    points
        .iter()
        .map(|&(step, v)| {
            average = keep * average + (1.0 - keep) * v;
            weight = keep * weight + (1.0 - keep);
            (step, average / weight)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------------
// Cross-attention grid

/// Tokens longer than this are cut (with an ellipsis) so one long subword cannot widen every panel.
const MAX_LABEL_CHARS: usize = 14;
/// Neither side of the image grows past this many pixels; cells shrink instead.
const MAX_SIDE: u32 = 7000;

/// Pixel geometry of the grid, computed once from the data and the label sizes.
struct GridLayout {
    layers: usize,
    heads: usize,
    /// Target tokens (rows of a heatmap) and source tokens (columns).
    t: usize,
    s: usize,
    cell: i32,
    gap: i32,
    /// Top-left pixel of the heatmap of layer 0, head 0.
    origin: (i32, i32),
    label_size: f64,
    /// Every `stride`-th token is labelled when cells are smaller than the text.
    stride: usize,
}

impl GridLayout {
    fn panel_size(&self) -> (i32, i32) {
        (self.s as i32 * self.cell, self.t as i32 * self.cell)
    }

    /// Top-left pixel of the heatmap of (`layer`, `head`).
    fn panel(&self, layer: usize, head: usize) -> (i32, i32) {
        let (w, h) = self.panel_size();
        (self.origin.0 + head as i32 * (w + self.gap), self.origin.1 + layer as i32 * (h + self.gap))
    }

    /// Bottom-right pixel of the whole grid of heatmaps.
    fn grid_end(&self) -> (i32, i32) {
        let (x, y) = self.panel(self.layers - 1, self.heads - 1);
        let (w, h) = self.panel_size();
        (x + w, y + h)
    }
}

/// Draws one heatmap per (layer, head) of cross-attention `weights` ([layer][head][target position][source
/// position], values in [0, 1]): layers as rows, heads as columns, source tokens along x and target tokens along
/// y. Every matrix must be `target_tokens.len()` × `source_tokens.len()`.
pub fn attention_grid(
    weights: &[Vec<Vec<Vec<f32>>>],
    source_tokens: &[String],
    target_tokens: &[String],
    title: &str,
    path: &Path,
) -> Result<()> {
    let heads = check_shapes(weights, source_tokens.len(), target_tokens.len())?;
    register_fonts()?;
    let sources: Vec<String> = source_tokens.iter().map(|t| short_label(t)).collect();
    let targets: Vec<String> = target_tokens.iter().map(|t| short_label(t)).collect();
    let layout = grid_layout(weights.len(), heads, &sources, &targets)?;
    let (end_x, end_y) = layout.grid_end();
    let size = ((end_x + COLORBAR_WIDTH + 30) as u32, (end_y + text_extent(&sources, layout.label_size)? + 40) as u32);
    write_png(path, size, |root| {
        draw_titles(root, &layout, title)?;
        for (l, layer) in weights.iter().enumerate() {
            for (h, matrix) in layer.iter().enumerate() {
                draw_heatmap(root, &layout, layout.panel(l, h), matrix)?;
            }
        }
        draw_token_labels(root, &layout, &sources, &targets)?;
        draw_colorbar(root, &layout)
    })
}

/// Checks that the grid is rectangular and every matrix is T × S; returns the number of heads.
fn check_shapes(weights: &[Vec<Vec<Vec<f32>>>], s: usize, t: usize) -> Result<usize> {
    ensure!(!weights.is_empty(), "no attention weights: the list of layers is empty");
    ensure!(s > 0 && t > 0, "no tokens to label the heatmaps ({t} target, {s} source)");
    let heads = weights[0].len();
    for (l, layer) in weights.iter().enumerate() {
        ensure!(!layer.is_empty(), "attention weights: layer {l} has no heads");
        ensure!(layer.len() == heads, "attention weights: layer {l} has {} heads, layer 0 has {heads}", layer.len());
        for (h, matrix) in layer.iter().enumerate() {
            let bad_row = matrix.iter().find(|row| row.len() != s);
            if matrix.len() != t || bad_row.is_some() {
                let cols = bad_row.or(matrix.first()).map_or(0, Vec::len);
                bail!(
                    "attention weights: layer {l} head {h} is {}×{cols} (target × source), expected {t}×{s} for \
                     {t} target and {s} source tokens",
                    matrix.len()
                );
            }
        }
    }
    Ok(heads)
}

fn short_label(token: &str) -> String {
    if token.chars().count() <= MAX_LABEL_CHARS {
        return token.to_string();
    }
    let head: String = token.chars().take(MAX_LABEL_CHARS - 1).collect();
    format!("{head}…")
}

const TITLE_HEIGHT: i32 = 64;
const HEAD_TITLE_HEIGHT: i32 = 26;
const LAYER_TITLE_WIDTH: i32 = 30;
const COLORBAR_WIDTH: i32 = 90;

fn grid_layout(layers: usize, heads: usize, sources: &[String], targets: &[String]) -> Result<GridLayout> {
    let (t, s) = (targets.len(), sources.len());
    let longest = t.max(s) as i32;
    // ~24 px cells for ten tokens; smaller for long sentences and for grids that would pass MAX_SIDE.
    let cell = (240 / longest).clamp(6, 26);
    let fit_x = (MAX_SIDE as i32 - 400) / (heads * s) as i32;
    let fit_y = (MAX_SIDE as i32 - 400) / (layers * t) as i32;
    ensure!(
        fit_x >= 1 && fit_y >= 1,
        "too much to draw: {layers} layers × {heads} heads of {t}×{s} attention would not fit in {MAX_SIDE}×{MAX_SIDE} \
         pixels; plot fewer layers or heads, or a shorter sentence"
    );
    let cell = cell.min(fit_x).min(fit_y);
    let label_size = (cell as f64 * 0.62).clamp(10.0, 14.0);
    let stride = ((label_size + 2.0) / cell as f64).ceil().max(1.0) as usize;
    let y_labels = text_extent(targets, label_size)?;
    let origin = (12 + LAYER_TITLE_WIDTH + y_labels + 8, TITLE_HEIGHT + HEAD_TITLE_HEIGHT);
    Ok(GridLayout { layers, heads, t, s, cell, gap: 14.max(cell / 2), origin, label_size, stride })
}

/// The widest of `labels` in pixels at `size` (the space a column of labels, or a row of rotated ones, needs).
fn text_extent(labels: &[String], size: f64) -> Result<i32> {
    let style = font(size);
    let mut widest = 0;
    for label in labels {
        let (w, _) = style.font.box_size(label).map_err(|e| anyhow::anyhow!("measuring label {label:?}: {e:?}"))?;
        widest = widest.max(w as i32);
    }
    Ok(widest)
}

fn draw_titles(root: &Area, layout: &GridLayout, title: &str) -> Result<()> {
    let (end_x, _) = layout.grid_end();
    let center = (layout.origin.0 + end_x) / 2;
    let top = bold(22.0).pos(Pos::new(HPos::Center, VPos::Top));
    root.draw_text(title, &top, (center, 12))?;
    let note = "rows: target tokens (queries), columns: source tokens (keys), colour: attention weight";
    let small = font(13.0).color(&RGBColor(90, 90, 90)).pos(Pos::new(HPos::Center, VPos::Top));
    root.draw_text(note, &small, (center, 40))?;
    let (w, h) = layout.panel_size();
    let head_style = bold(14.0).pos(Pos::new(HPos::Center, VPos::Bottom));
    for head in 0..layout.heads {
        let (x, y) = layout.panel(0, head);
        root.draw_text(&format!("head {head}"), &head_style, (x + w / 2, y - 8))?;
    }
    let layer_style = bold(14.0).transform(FontTransform::Rotate270).pos(Pos::new(HPos::Center, VPos::Top));
    for layer in 0..layout.layers {
        let (_, y) = layout.panel(layer, 0);
        root.draw_text(&format!("layer {layer}"), &layer_style, (12, y + h / 2))?;
    }
    Ok(())
}

fn draw_heatmap(root: &Area, layout: &GridLayout, (x0, y0): (i32, i32), matrix: &[Vec<f32>]) -> Result<()> {
    let c = layout.cell;
    for (i, row) in matrix.iter().enumerate() {
        for (j, &w) in row.iter().enumerate() {
            let (x, y) = (x0 + j as i32 * c, y0 + i as i32 * c);
            root.draw(&Rectangle::new([(x, y), (x + c, y + c)], weight_color(w).filled()))?;
        }
    }
    let (w, h) = layout.panel_size();
    root.draw(&Rectangle::new([(x0 - 1, y0 - 1), (x0 + w, y0 + h)], RGBColor(150, 150, 150)))?;
    Ok(())
}

/// Target tokens left of the first column of heatmaps, source tokens (rotated) below the last row.
fn draw_token_labels(root: &Area, layout: &GridLayout, sources: &[String], targets: &[String]) -> Result<()> {
    let c = layout.cell;
    let y_style = font(layout.label_size).pos(Pos::new(HPos::Right, VPos::Center));
    for layer in 0..layout.layers {
        let (x0, y0) = layout.panel(layer, 0);
        for (i, token) in targets.iter().enumerate().step_by(layout.stride) {
            root.draw_text(token, &y_style, (x0 - 6, y0 + i as i32 * c + c / 2))?;
        }
    }
    // Rotated a quarter turn so each label reads upwards and ends just under its column.
    let x_style = font(layout.label_size).transform(FontTransform::Rotate270).pos(Pos::new(HPos::Right, VPos::Center));
    let (_, bottom) = layout.grid_end();
    for head in 0..layout.heads {
        let (x0, _) = layout.panel(layout.layers - 1, head);
        for (j, token) in sources.iter().enumerate().step_by(layout.stride) {
            root.draw_text(token, &x_style, (x0 + j as i32 * c + c / 2, bottom + 6))?;
        }
    }
    Ok(())
}

/// A vertical scale from 0 (bottom) to 1 (top), as tall as one row of heatmaps but at least 120 px.
fn draw_colorbar(root: &Area, layout: &GridLayout) -> Result<()> {
    let (end_x, _) = layout.grid_end();
    let (x0, top) = (end_x + 24, layout.origin.1);
    let height = layout.panel_size().1.max(120);
    for px in 0..height {
        let w = 1.0 - px as f32 / (height - 1) as f32;
        root.draw(&Rectangle::new([(x0, top + px), (x0 + 16, top + px + 1)], weight_color(w).filled()))?;
    }
    root.draw(&Rectangle::new([(x0, top), (x0 + 16, top + height)], RGBColor(150, 150, 150)))?;
    let style = font(12.0).pos(Pos::new(HPos::Left, VPos::Center));
    for tick in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let y = top + ((1.0 - tick) * (height - 1) as f64).round() as i32;
        root.draw(&PathElement::new(vec![(x0 + 16, y), (x0 + 20, y)], BLACK))?;
        root.draw_text(&format!("{tick}"), &style, (x0 + 23, y))?;
    }
    Ok(())
}

/// A white → dark blue ramp (the end points of ColorBrewer's "Blues") over [0, 1]: near-zero weights, most of
/// any attention map, stay light. Out-of-range values are clamped; NaN is grey.
fn weight_color(w: f32) -> RGBColor {
    if w.is_nan() {
        return RGBColor(190, 190, 190);
    }
    const STOPS: [(f32, [f32; 3]); 3] =
        [(0.0, [247.0, 251.0, 255.0]), (0.5, [107.0, 174.0, 214.0]), (1.0, [8.0, 48.0, 107.0])];
    let w = w.clamp(0.0, 1.0);
    let (lo, hi) = if w <= STOPS[1].0 { (STOPS[0], STOPS[1]) } else { (STOPS[1], STOPS[2]) };
    let f = (w - lo.0) / (hi.0 - lo.0);
    let channel = |k: usize| (lo.1[k] + f * (hi.1[k] - lo.1[k])).round() as u8;
    RGBColor(channel(0), channel(1), channel(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];

    /// A fresh directory under the system temp dir, unique to this test and process, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(test: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("qkv-plot-{test}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn join(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn assert_png(path: &Path, min_bytes: usize) {
        let bytes = fs::read(path).unwrap();
        assert_eq!(bytes[..8], PNG_SIGNATURE, "{} is not a PNG", path.display());
        assert!(bytes.len() > min_bytes, "{} has only {} bytes", path.display(), bytes.len());
    }

    fn files(dir: &TempDir) -> Vec<String> {
        fs::read_dir(&dir.0).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
    }

    fn train(step: u64, loss: f64) -> LogRecord {
        LogRecord::Train(TrainRecord { step, loss: Some(loss) })
    }

    fn eval(step: u64, val_loss: f64, val_bleu: Option<f64>) -> LogRecord {
        LogRecord::Eval(EvalRecord { step, val_loss: Some(val_loss), val_bleu })
    }

    /// A plausible run starting at step 101 (a resumed run), with a NaN and an infinite loss in it.
    fn sample_log() -> Vec<LogRecord> {
        let mut log = Vec::new();
        for step in (101..=3000u64).step_by(10) {
            let x = step as f64;
            let noise = (step.wrapping_mul(2_654_435_761) % 1000) as f64 / 1000.0 - 0.5;
            let loss = 2.0 + 7.0 * (-x / 600.0).exp() + 0.6 * noise;
            log.push(train(step, loss));
            if step % 500 == 1 {
                log.push(eval(step, 2.3 + 6.5 * (-x / 600.0).exp(), Some(30.0 * (1.0 - (-x / 900.0).exp()))));
            }
        }
        log.push(train(3010, f64::NAN));
        log.push(train(3020, f64::INFINITY));
        log.push(eval(3020, f64::NAN, Some(f64::NAN)));
        log
    }

    #[test]
    fn loss_curve_writes_a_png_and_no_temporary_file() {
        let dir = TempDir::new("loss");
        let path = dir.join("loss.png");
        loss_curve(&sample_log(), "sample run", &path).unwrap();
        assert_png(&path, 10_000);
        assert_eq!(files(&dir), ["loss.png"]);
    }

    #[test]
    fn loss_curve_without_bleu_and_with_a_single_point() {
        let dir = TempDir::new("loss-small");
        let no_bleu: Vec<_> = (5..40).map(|s| train(s, 10.0 / s as f64)).chain([eval(39, 0.5, None)]).collect();
        loss_curve(&no_bleu, "no BLEU", &dir.join("no-bleu.png")).unwrap();
        assert_png(&dir.join("no-bleu.png"), 5_000);
        loss_curve(&[train(7, 3.5)], "one step", &dir.join("one.png")).unwrap();
        assert_png(&dir.join("one.png"), 5_000);
        loss_curve(&[eval(7, 3.5, Some(1.0))], "one eval", &dir.join("one-eval.png")).unwrap();
        assert_png(&dir.join("one-eval.png"), 5_000);
    }

    #[test]
    fn loss_curve_rejects_an_empty_or_non_finite_log() {
        let dir = TempDir::new("loss-empty");
        let path = dir.join("loss.png");
        let err = loss_curve(&[], "empty", &path).unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");
        let err = loss_curve(&[train(1, f64::NAN), LogRecord::Other], "nan", &path).unwrap_err().to_string();
        assert!(err.contains("no finite"), "{err}");
        assert!(!path.exists());
    }

    #[test]
    fn read_log_accepts_extra_fields_nulls_and_unknown_kinds() {
        let dir = TempDir::new("log-ok");
        let path = dir.join("log.jsonl");
        let text = r#"{"kind":"train","step":120,"epoch":1,"loss":4.31,"lr":0.0007,"tokens_per_s":5100.0}

{"kind":"train","step":130,"epoch":1,"loss":null,"lr":0.0007,"grad_norm":1.2}
{"kind":"eval","step":400,"epoch":1,"val_loss":3.2,"val_bleu":12.5,"seconds":3.0}
{"kind":"checkpoint","step":400}
"#;
        fs::write(&path, text).unwrap();
        let log = read_log(&path).unwrap();
        assert_eq!(
            log,
            [
                train(120, 4.31),
                LogRecord::Train(TrainRecord { step: 130, loss: None }),
                eval(400, 3.2, Some(12.5)),
                LogRecord::Other
            ]
        );
    }

    #[test]
    fn read_log_names_the_file_and_line_of_a_malformed_record() {
        let dir = TempDir::new("log-bad");
        let path = dir.join("log.jsonl");
        fs::write(&path, "{\"kind\":\"train\",\"step\":1,\"loss\":2.0}\n\n{\"kind\":\"train\",\"loss\":2.0}\n")
            .unwrap();
        let err = read_log(&path).unwrap_err().to_string();
        assert!(err.contains(&format!("{}:3:", path.display())), "{err}");
        assert!(err.contains("step"), "{err}");
        fs::write(&path, "{\"kind\":\"train\",\"step\":1,\"loss\":2.0}\n{\"kind\":\"train\",\"st").unwrap();
        let err = read_log(&path).unwrap_err().to_string();
        assert!(err.contains(&format!("{}:2:", path.display())), "{err}");
    }

    /// [layer][head][target][source]: each head looks `shift` positions off the diagonal, softly.
    fn sample_weights(layers: usize, heads: usize, t: usize, s: usize) -> Vec<Vec<Vec<Vec<f32>>>> {
        let row = |i: usize, shift: usize| -> Vec<f32> {
            let scores: Vec<f32> = (0..s).map(|j| -((j as f32 - (i + shift) as f32 % s as f32).powi(2))).collect();
            let total: f32 = scores.iter().map(|x| x.exp()).sum();
            scores.iter().map(|x| x.exp() / total).collect()
        };
        (0..layers).map(|l| (0..heads).map(|h| (0..t).map(|i| row(i, l + h)).collect()).collect()).collect()
    }

    fn tokens(words: &str) -> Vec<String> {
        words.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn attention_grid_writes_a_png() {
        let dir = TempDir::new("attention");
        let path = dir.join("attention.png");
        let source = tokens("▁the ▁cat ▁sat ▁on ▁the ▁mat ▁extraordinarily_long_subword . </s>");
        let target = tokens("▁die ▁Katze ▁saß ▁auf ▁der ▁Matte . </s>");
        let weights = sample_weights(2, 4, target.len(), source.len());
        attention_grid(&weights, &source, &target, "cross-attention", &path).unwrap();
        assert_png(&path, 10_000);
        assert_eq!(files(&dir), ["attention.png"]);
    }

    #[test]
    fn attention_grid_names_the_layer_and_head_of_a_wrong_shape() {
        let dir = TempDir::new("attention-bad");
        let path = dir.join("attention.png");
        let (source, target) = (tokens("a b c"), tokens("x y"));
        let mut weights = sample_weights(2, 3, 2, 3);
        weights[1][2].push(vec![0.0; 3]);
        let err = attention_grid(&weights, &source, &target, "", &path).unwrap_err().to_string();
        assert!(err.contains("layer 1 head 2 is 3×3") && err.contains("expected 2×3"), "{err}");
        let mut weights = sample_weights(2, 3, 2, 3);
        weights[0][1][1].pop();
        let err = attention_grid(&weights, &source, &target, "", &path).unwrap_err().to_string();
        assert!(err.contains("layer 0 head 1 is 2×2"), "{err}");
        let mut weights = sample_weights(2, 3, 2, 3);
        weights[1].pop();
        let err = attention_grid(&weights, &source, &target, "", &path).unwrap_err().to_string();
        assert!(err.contains("layer 1 has 2 heads"), "{err}");
        assert!(attention_grid(&[], &source, &target, "", &path).is_err());
        let long: Vec<String> = (0..2000).map(|i| format!("t{i}")).collect();
        let err = attention_grid(&sample_weights(1, 8, 2, 2000), &long, &target, "", &path).unwrap_err().to_string();
        assert!(err.contains("too much to draw"), "{err}");
        assert!(!path.exists());
    }

    #[test]
    fn smoothing_starts_at_the_first_value_and_keeps_a_constant() {
        let points: Vec<(u64, f64)> = (0..300).map(|s| (s, 2.5)).collect();
        assert!(smooth(&points).iter().all(|&(_, v)| (v - 2.5).abs() < 1e-12));
        let rising: Vec<(u64, f64)> = (0..300).map(|s| (s, s as f64)).collect();
        assert_eq!(smooth(&rising)[0], (0, 0.0));
        assert_eq!(value_range([3.0].into_iter()), 2.5..3.5);
        assert_eq!(weight_color(0.0), RGBColor(247, 251, 255));
        assert_eq!(weight_color(2.0), RGBColor(8, 48, 107));
    }
}
