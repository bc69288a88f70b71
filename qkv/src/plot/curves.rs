//! Training curves against the optimizer step: one run's losses and task metrics ([`loss_curve`]), or several
//! runs' in one figure ([`compare_runs`]).
//!
//! Two losses are drawn and they are not the same quantity: the training records carry the task's objective,
//! label-smoothed where the task smooths (with translation's ε = 0.1 it stays well above zero even for a perfect
//! model), while evaluations carry plain cross-entropy. The legends say which is which, so that a gap between
//! the curves is not read as overfitting.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use plotters::coord::types::{RangedCoordf64, RangedCoordu64};
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{bold, font, write_png, Area, Drawn, NOTE_GREY, PALETTE};
use crate::run_log::LogRecord;
use crate::{Error, Result};

/// What [`loss_curve`] draws besides the log.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CurveOptions {
    /// The figure's title ("" for none).
    pub title: String,
    /// The task metrics to draw, one panel each, by their names in the eval records (`val_bleu`, `val_chrf` …).
    /// `None` draws every metric the log has. Metrics that are losses (`train_loss`) are drawn in the loss panel
    /// whether or not they are listed.
    pub metrics: Option<Vec<String>>,
}

/// What [`compare_runs`] draws besides the logs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompareOptions {
    /// The figure's title ("" for none).
    pub title: String,
    /// Also draw each run's training loss (the objective's moving average, dashed).
    pub train_loss: bool,
    /// Task metrics to compare, one panel each, by their names in the eval records; empty for losses only.
    pub metrics: Vec<String>,
}

/// Eval-record metrics that are per-token cross-entropies, so they belong on the loss axis, and their legends.
const LOSS_METRICS: [(&str, &str); 1] = [("train_loss", "train loss (eval pass, unsmoothed)")];

const TRAIN_LEGEND: &str = "train loss (objective)";
const VALIDATION_LEGEND: &str = "validation loss (unsmoothed)";
const LOSS_AXIS: &str = "cross-entropy per token (nats)";
const STEP_AXIS: &str = "optimizer step";
const GOLD_AXIS: &str = "p (gold token fed)";

const WIDTH: u32 = 1100;
/// The title and the note under it.
const HEADER_HEIGHT: u32 = 72;
const LOSS_PANEL_HEIGHT: u32 = 540;
const METRIC_PANEL_HEIGHT: u32 = 300;

/// With fewer training points than this the raw curve is drawn on its own: there is nothing to smooth.
const SMOOTH_FROM: usize = 20;

/// Draws one run's curves into a PNG at `path`: a loss panel with the training loss (the objective; raw and a
/// moving average) and the validation loss, and below it one panel per task metric (see
/// [`CurveOptions::metrics`]), all against the optimizer step. The image is 1100 pixels wide and
/// 612 + 300 × (metric panels) tall. Values that are not finite (NaN, or `null` in the log) are skipped. A run
/// whose steps log the probability of the gold token (scheduled sampling) gets one more panel for it, last.
pub fn loss_curve(records: &[LogRecord], options: &CurveOptions, path: &Path) -> Result<()> {
    if records.is_empty() {
        return Err(Error::plot(path, "the training log is empty: there is no curve to draw"));
    }
    let run = RunCurves::from_log(records);
    if run.train.is_empty() && run.val_loss.is_empty() {
        return Err(Error::plot(path, "the training log has no finite training or validation loss"));
    }
    let mut loss = Panel::new(LOSS_AXIS);
    if run.train.len() >= SMOOTH_FROM {
        loss.push(TRAIN_LEGEND, run.train.clone(), PALETTE[0], Stroke::Faint);
        loss.push(&format!("{TRAIN_LEGEND}, moving average"), smooth(&run.train), PALETTE[0], Stroke::Bold);
    } else {
        loss.push(TRAIN_LEGEND, run.train.clone(), PALETTE[0], Stroke::Marked);
    }
    loss.push(VALIDATION_LEGEND, run.val_loss.clone(), PALETTE[1], Stroke::Marked);
    for (name, legend) in LOSS_METRICS {
        if let Some(points) = run.metrics.get(name) {
            loss.push(legend, points.clone(), PALETTE[4], Stroke::Marked);
        }
    }
    let mut panels = vec![loss];
    let names = match &options.metrics {
        None => run.metrics.iter().filter(|(_, points)| !points.is_empty()).map(|(name, _)| name.clone()).collect(),
        Some(names) => {
            check_metrics(names, [&run])
                .and_then(|()| check_finite(names, [&run]))
                .map_err(|e| Error::plot(path, e))?;
            let mut once: Vec<String> = Vec::new();
            for name in names {
                if !once.contains(name) {
                    once.push(name.clone());
                }
            }
            once
        }
    };
    // Not the loss panel's blue, orange and purple.
    let colors = [PALETTE[2], PALETTE[3], PALETTE[5], PALETTE[6], PALETTE[8], PALETTE[9]];
    for (i, name) in names.iter().filter(|name| !is_loss_metric(name)).enumerate() {
        let mut panel = Panel::new(name);
        panel.legend = false;
        panel.push(name, run.metrics[name].clone(), colors[i % colors.len()], Stroke::Marked);
        panels.push(panel);
    }
    if !run.gold_probability.is_empty() {
        let mut panel = Panel::new(GOLD_AXIS);
        panel.legend = false;
        panel.push(GOLD_AXIS, run.gold_probability.clone(), PALETTE[7], Stroke::Bold);
        panels.push(panel);
    }
    let note = "train loss: the training objective per token, label-smoothed where the task smooths; \
                validation loss: cross-entropy per token, no smoothing";
    draw_figure(path, &options.title, note, &panels)
}

/// Draws several runs' validation losses (and, with [`CompareOptions::train_loss`], their training losses) in
/// one panel, one colour per run and labelled by the run's name, with a panel below for each metric of
/// [`CompareOptions::metrics`] (a run that lacks the metric is left out of its panel). `runs` are (name, log)
/// pairs. Every run needs a finite validation loss (or a training loss, when it is drawn), and names must
/// differ. The image is 1100 pixels wide and 612 + 300 × (metric panels) tall.
pub fn compare_runs(runs: &[(&str, &[LogRecord])], options: &CompareOptions, path: &Path) -> Result<()> {
    let fail = |message: String| Error::plot(path, message);
    if runs.is_empty() {
        return Err(fail("no runs to compare".into()));
    }
    let mut curves = Vec::with_capacity(runs.len());
    for (i, &(name, records)) in runs.iter().enumerate() {
        if runs[..i].iter().any(|&(earlier, _)| earlier == name) {
            return Err(fail(format!("two runs are named `{name}`: the legend could not tell them apart")));
        }
        if records.is_empty() {
            return Err(fail(format!("run `{name}`: the training log is empty")));
        }
        let run = RunCurves::from_log(records);
        let drawn_train = options.train_loss && !run.train.is_empty();
        if run.val_loss.is_empty() && !drawn_train {
            let hint = if options.train_loss || run.train.is_empty() { "" } else { " (it has a training loss)" };
            return Err(fail(format!("run `{name}` has no finite validation loss{hint}")));
        }
        curves.push(run);
    }
    check_metrics(&options.metrics, &curves).and_then(|()| check_finite(&options.metrics, &curves)).map_err(fail)?;
    let color = |i: usize| run_color(i, runs.len());
    let mut loss = Panel::new(LOSS_AXIS);
    for (i, (&(name, _), run)) in runs.iter().zip(&curves).enumerate() {
        // With validation losses alone the note says what the curves are, and the legend needs only the names.
        let legend = if options.train_loss { format!("{name}: {VALIDATION_LEGEND}") } else { name.to_string() };
        loss.push(&legend, run.val_loss.clone(), color(i), Stroke::Marked);
        if options.train_loss {
            let (points, legend) = if run.train.len() >= SMOOTH_FROM {
                (smooth(&run.train), format!("{name}: {TRAIN_LEGEND}, moving average"))
            } else {
                (run.train.clone(), format!("{name}: {TRAIN_LEGEND}"))
            };
            loss.push(&legend, points, color(i), Stroke::Dashed);
        }
    }
    let mut panels = vec![loss];
    for metric in &options.metrics {
        let mut panel = Panel::new(metric);
        for (i, (&(name, _), run)) in runs.iter().zip(&curves).enumerate() {
            if let Some(points) = run.metrics.get(metric) {
                panel.push(name, points.clone(), color(i), Stroke::Marked);
            }
        }
        panels.push(panel);
    }
    let note = if options.train_loss {
        "one colour per run; solid: validation loss (no smoothing); dashed: train loss (the objective, \
         label-smoothed where the task smooths)"
    } else {
        "one colour per run; each curve its validation loss: cross-entropy per token, no smoothing"
    };
    draw_figure(path, &options.title, note, &panels)
}

/// Every metric in `names` must appear in at least one run's eval records; the error lists those that do.
fn check_metrics<'a>(
    names: &[String],
    runs: impl IntoIterator<Item = &'a RunCurves> + Clone,
) -> std::result::Result<(), String> {
    for name in names {
        if !runs.clone().into_iter().any(|run| run.metrics.contains_key(name)) {
            let mut known: Vec<&str> =
                runs.into_iter().flat_map(|run| run.metrics.keys()).map(String::as_str).collect();
            known.sort_unstable();
            known.dedup();
            let has = if known.is_empty() { "none".to_string() } else { known.join(", ") };
            return Err(format!("no metric `{name}` in the eval records (metrics there: {has})"));
        }
    }
    Ok(())
}

/// A metric asked for by name must have at least one finite value, or its panel would be empty.
fn check_finite<'a>(
    names: &[String],
    runs: impl IntoIterator<Item = &'a RunCurves> + Clone,
) -> std::result::Result<(), String> {
    for name in names {
        if runs.clone().into_iter().all(|run| run.metrics.get(name).is_none_or(Vec::is_empty)) {
            return Err(format!("metric `{name}` has no finite value in the eval records"));
        }
    }
    Ok(())
}

fn is_loss_metric(name: &str) -> bool {
    LOSS_METRICS.iter().any(|&(loss, _)| loss == name)
}

/// Colours of the palette while they last, then evenly spaced hues.
fn run_color(i: usize, runs: usize) -> RGBColor {
    if runs <= PALETTE.len() {
        return PALETTE[i];
    }
    let (r, g, b) = HSLColor(i as f64 / runs as f64, 0.65, 0.45).rgb();
    RGBColor(r, g, b)
}

/// A run's finite (step, value) series, sorted by step.
#[derive(Default)]
struct RunCurves {
    train: Points,
    val_loss: Points,
    /// The probability of the gold token, where the training records carry it.
    gold_probability: Points,
    /// Every metric the eval records name, with its finite points (empty when none is finite).
    metrics: BTreeMap<String, Points>,
}

type Points = Vec<(u64, f64)>;

impl RunCurves {
    fn from_log(records: &[LogRecord]) -> Self {
        // A resumed run logs again the steps after its last checkpoint: one point per step, the later record's.
        let mut train = BTreeMap::new();
        let mut val_loss = BTreeMap::new();
        let mut gold_probability = BTreeMap::new();
        let mut metrics: BTreeMap<String, BTreeMap<u64, f64>> = BTreeMap::new();
        let put = |series: &mut BTreeMap<u64, f64>, step: usize, value: f64| {
            if value.is_finite() {
                series.insert(step as u64, value);
            }
        };
        for record in records {
            match record {
                LogRecord::Train(r) => {
                    put(&mut train, r.step, r.loss);
                    if let Some(p) = r.gold_probability {
                        put(&mut gold_probability, r.step, p);
                    }
                }
                LogRecord::Eval(r) => {
                    put(&mut val_loss, r.step, r.val_loss);
                    for (name, &value) in &r.metrics {
                        put(metrics.entry(name.clone()).or_default(), r.step, value);
                    }
                }
                LogRecord::Other => {}
            }
        }
        let points = |series: BTreeMap<u64, f64>| series.into_iter().collect();
        Self {
            train: points(train),
            val_loss: points(val_loss),
            gold_probability: points(gold_probability),
            metrics: metrics.into_iter().map(|(name, series)| (name, points(series))).collect(),
        }
    }
}

#[derive(Clone, Copy)]
enum Stroke {
    /// Thin and pale: raw training points under their moving average.
    Faint,
    /// Thick, without dots: a moving average.
    Bold,
    /// A dashed line: another run's training loss beside its validation loss.
    Dashed,
    /// A line with a dot on each point, so that a single point still shows: evaluations.
    Marked,
}

struct Series {
    label: String,
    points: Points,
    color: RGBColor,
    stroke: Stroke,
}

/// One chart of a figure: its y-axis label and its curves.
struct Panel {
    axis: String,
    series: Vec<Series>,
    legend: bool,
}

impl Panel {
    fn new(axis: &str) -> Self {
        Self { axis: axis.to_string(), series: Vec::new(), legend: true }
    }

    /// Adds a curve; an empty one is left out, so that the legend lists only what is drawn.
    fn push(&mut self, label: &str, points: Points, color: RGBColor, stroke: Stroke) {
        if !points.is_empty() {
            self.series.push(Series { label: label.to_string(), points, color, stroke });
        }
    }

    fn points(&self) -> impl Iterator<Item = &(u64, f64)> {
        self.series.iter().flat_map(|s| &s.points)
    }
}

/// The figure: title and note, then the panels one under the other (the first, the loss panel, taller),
/// sharing the step axis.
fn draw_figure(path: &Path, title: &str, note: &str, panels: &[Panel]) -> Result<()> {
    let steps = step_range(panels.iter().flat_map(Panel::points).map(|&(s, _)| s));
    let height = HEADER_HEIGHT + LOSS_PANEL_HEIGHT + METRIC_PANEL_HEIGHT * (panels.len() as u32 - 1);
    write_png(path, (WIDTH, height), |root| {
        let (header, mut rest) = root.split_vertically(HEADER_HEIGHT);
        let center = WIDTH as i32 / 2;
        if !title.is_empty() {
            header.draw_text(title, &bold(24.0).pos(Pos::new(HPos::Center, VPos::Top)), (center, 12))?;
        }
        let note_style = font(14.0).color(&NOTE_GREY).pos(Pos::new(HPos::Center, VPos::Top));
        header.draw_text(note, &note_style, (center, 46))?;
        for (i, panel) in panels.iter().enumerate() {
            let (area, below) = rest.split_vertically(if i == 0 { LOSS_PANEL_HEIGHT } else { METRIC_PANEL_HEIGHT });
            draw_panel(&area, steps.clone(), panel)?;
            rest = below;
        }
        Ok(())
    })
}

type Chart<'a, 'b> = ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordu64, RangedCoordf64>>;

fn draw_panel(area: &Area, steps: Range<u64>, panel: &Panel) -> Drawn {
    let mut chart = ChartBuilder::on(area)
        .margin(16)
        .x_label_area_size(52)
        .y_label_area_size(78)
        .build_cartesian_2d(steps, value_range(panel.points().map(|&(_, v)| v)))?;
    chart
        .configure_mesh()
        .x_desc(STEP_AXIS)
        .y_desc(panel.axis.as_str())
        .label_style(font(15.0))
        .axis_desc_style(font(17.0))
        .light_line_style(TRANSPARENT)
        .bold_line_style(RGBColor(225, 225, 225))
        .draw()?;
    for series in &panel.series {
        draw_series(&mut chart, series)?;
    }
    if !panel.legend || panel.series.is_empty() {
        return Ok(());
    }
    chart
        .configure_series_labels()
        .position(legend_position(panel))
        .label_font(font(15.0))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .margin(12)
        .draw()?;
    Ok(())
}

fn draw_series(chart: &mut Chart, series: &Series) -> Drawn {
    let points = series.points.iter().copied();
    let color = series.color;
    match series.stroke {
        Stroke::Faint => {
            let pale = color.mix(0.3);
            chart
                .draw_series(LineSeries::new(points, pale.stroke_width(1)))?
                .label(&series.label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], pale.stroke_width(3)));
        }
        Stroke::Bold => {
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(3)))?
                .label(&series.label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3)));
        }
        Stroke::Dashed => {
            let style = color.stroke_width(2);
            chart
                .draw_series(DashedLineSeries::new(points, 9, 6, style))?
                .label(&series.label)
                .legend(move |(x, y)| DashedPathElement::new(vec![(x, y), (x + 24, y)], 7, 5, color.stroke_width(3)));
        }
        Stroke::Marked => {
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(&series.label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3)));
            chart.draw_series(points.map(|p| Circle::new(p, 4, color.filled())))?;
        }
    }
    Ok(())
}

/// The corner the curves are least likely to cross: upper right for falling curves (losses), lower right
/// for rising ones (BLEU), judged by the first curve's ends.
fn legend_position(panel: &Panel) -> SeriesLabelPosition {
    let first = panel.series.first().map(|s| &s.points);
    match first.and_then(|p| Some((p.first()?.1, p.last()?.1))) {
        Some((start, end)) if end > start => SeriesLabelPosition::LowerRight,
        _ => SeriesLabelPosition::UpperRight,
    }
}

/// Steps covered by the points, with 2% (at least one step) to spare on each side so that the dots at the
/// ends are not cut in half by the axes.
fn step_range(steps: impl Iterator<Item = u64>) -> Range<u64> {
    let (lo, hi) = steps.fold((u64::MAX, 0), |(lo, hi), s| (lo.min(s), hi.max(s)));
    let (lo, hi) = if lo > hi { (0, 0) } else { (lo, hi) };
    let pad = ((hi - lo) / 50).max(1);
    lo.saturating_sub(pad)..hi.saturating_add(pad)
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
fn smooth(points: &[(u64, f64)]) -> Points {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run_log::{EvalRecord, StepRecord};

    fn train(step: usize, loss: f64) -> LogRecord {
        LogRecord::Train(StepRecord {
            step,
            epoch: 1,
            loss,
            lr: 1e-3,
            grad_norm: 1.0,
            tokens: 10,
            tokens_per_s: 1.0,
            gold_probability: None,
        })
    }

    fn eval(step: usize, val_loss: f64, metrics: &[(&str, f64)]) -> LogRecord {
        let metrics = metrics.iter().map(|&(k, v)| (k.to_string(), v)).collect();
        LogRecord::Eval(EvalRecord { step, epoch: 1, val_loss, metrics, seconds: 1.0 })
    }

    #[test]
    fn curves_skip_non_finite_values_and_keep_the_later_record_of_a_step() {
        let log = [
            train(1, 5.0),
            train(2, f64::NAN),
            eval(2, 4.0, &[("val_bleu", f64::NAN), ("train_loss", 3.5)]),
            LogRecord::Other,
            // Resumed from step 1: step 2 again.
            train(2, 4.5),
            eval(2, 3.9, &[("val_bleu", 1.0)]),
        ];
        let run = RunCurves::from_log(&log);
        assert_eq!(run.train, [(1, 5.0), (2, 4.5)]);
        assert_eq!(run.val_loss, [(2, 3.9)]);
        assert_eq!(run.metrics["val_bleu"], [(2, 1.0)]);
        assert_eq!(run.metrics["train_loss"], [(2, 3.5)]);
        assert!(run.gold_probability.is_empty(), "teacher forcing logs no p");
        let mut sampled = StepRecord {
            step: 4,
            epoch: 1,
            loss: 2.0,
            lr: 1e-3,
            grad_norm: 1.0,
            tokens: 10,
            tokens_per_s: 1.0,
            gold_probability: Some(0.9),
        };
        let first = LogRecord::Train(sampled.clone());
        sampled.step = 5;
        sampled.gold_probability = Some(0.8);
        let run = RunCurves::from_log(&[first, LogRecord::Train(sampled)]);
        assert_eq!(run.gold_probability, [(4, 0.9), (5, 0.8)]);
        let run = RunCurves::from_log(&[eval(3, 1.0, &[("val_chrf", f64::NAN)])]);
        assert!(run.metrics["val_chrf"].is_empty());
        assert!(check_metrics(&["val_chrf".into()], [&run]).is_ok());
        assert!(check_finite(&["val_chrf".into()], [&run]).unwrap_err().contains("`val_chrf` has no finite value"));
        let err = check_metrics(&["val_bleu".into()], [&run]).unwrap_err();
        assert!(err.contains("no metric `val_bleu`") && err.contains("(metrics there: val_chrf)"), "{err}");
    }

    #[test]
    fn smoothing_starts_at_the_first_value_and_keeps_a_constant() {
        let points: Points = (0..300).map(|s| (s, 2.5)).collect();
        assert!(smooth(&points).iter().all(|&(_, v)| (v - 2.5).abs() < 1e-12));
        let rising: Points = (0..300).map(|s| (s, s as f64)).collect();
        assert_eq!(smooth(&rising)[0], (0, 0.0));
    }

    #[test]
    fn axis_ranges_pad_the_data() {
        assert_eq!(value_range([3.0].into_iter()), 2.5..3.5);
        assert_eq!(value_range([].into_iter()), 0.0..1.0);
        let r = value_range([1.0, 2.0].into_iter());
        assert!((r.start - 0.94).abs() < 1e-12 && (r.end - 2.06).abs() < 1e-12);
        assert_eq!(value_range([0.01, 10.0].into_iter()).start, 0.0);
        assert_eq!(step_range([7].into_iter()), 6..8);
        assert_eq!(step_range([100, 600].into_iter()), 90..610);
        assert_eq!(step_range([].into_iter()), 0..1);
    }

    #[test]
    fn many_runs_get_distinct_colours() {
        let colors: Vec<RGBColor> = (0..14).map(|i| run_color(i, 14)).collect();
        for (i, a) in colors.iter().enumerate() {
            assert!(colors[i + 1..].iter().all(|b| b != a), "colour {i} repeats");
        }
        assert_eq!(run_color(3, 5), PALETTE[3]);
    }
}
