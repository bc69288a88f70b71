//! The figures of `qkv::plot`: each writes a PNG of the promised size and nothing else, and bad input is an
//! error that says what was wrong. `QKV_KEEP_PLOTS=DIR cargo test --release -p qkv --test plot` keeps the
//! images in DIR to look at.

use std::fs;
use std::path::{Path, PathBuf};

use qkv::plot::{attention_grid, compare_runs, loss_curve, CompareOptions, CurveOptions};
use qkv::run_log::{read_log, EvalRecord, LogRecord, StepRecord};

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

    fn files(&self) -> Vec<String> {
        let mut names: Vec<String> =
            fs::read_dir(&self.0).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(keep) = std::env::var_os("QKV_KEEP_PLOTS") {
            let keep = PathBuf::from(keep);
            let _ = fs::create_dir_all(&keep);
            for name in self.files() {
                let _ = fs::copy(self.join(&name), keep.join(&name));
            }
        }
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Width and height from the PNG's IHDR chunk, after checking the signature: the first chunk of every PNG.
fn png_size(path: &Path) -> (u32, u32) {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(bytes[..8], [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a], "{} is not a PNG", path.display());
    assert_eq!(&bytes[12..16], b"IHDR", "{}", path.display());
    let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    (be(16), be(20))
}

fn assert_png(path: &Path, size: (u32, u32), min_bytes: u64) {
    assert_eq!(png_size(path), size, "{}", path.display());
    let bytes = fs::metadata(path).unwrap().len();
    assert!(bytes > min_bytes, "{} has only {bytes} bytes", path.display());
}

fn train(step: usize, loss: f64) -> LogRecord {
    LogRecord::Train(StepRecord {
        step,
        epoch: 1,
        loss,
        lr: 7e-4,
        grad_norm: 1.0,
        tokens: 900,
        tokens_per_s: 5e3,
        gold_probability: None,
    })
}

fn eval(step: usize, val_loss: f64, metrics: &[(&str, f64)]) -> LogRecord {
    let metrics = metrics.iter().map(|&(k, v)| (k.to_string(), v)).collect();
    LogRecord::Eval(EvalRecord { step, epoch: 1, val_loss, metrics, seconds: 2.0 })
}

/// A plausible translation run starting at step 101 (a resumed run), its loss falling at `speed`, with BLEU
/// and chrF, and a NaN and an infinite value at the end.
fn translation_log(speed: f64) -> Vec<LogRecord> {
    let mut log = Vec::new();
    for step in (101..=3000usize).step_by(10) {
        let x = step as f64 * speed;
        let noise = (step.wrapping_mul(2_654_435_761) % 1000) as f64 / 1000.0 - 0.5;
        log.push(train(step, 2.0 + 7.0 * (-x / 600.0).exp() + 0.6 * noise));
        if step % 500 == 1 {
            let bleu = 30.0 * (1.0 - (-x / 900.0).exp());
            log.push(eval(step, 1.6 + 6.5 * (-x / 600.0).exp(), &[("val_bleu", bleu), ("val_chrf", 1.6 * bleu)]));
        }
    }
    log.push(train(3010, f64::NAN));
    log.push(train(3020, f64::INFINITY));
    log.push(eval(3020, f64::NAN, &[("val_bleu", f64::NAN), ("val_chrf", f64::NAN)]));
    log
}

/// A language-model run: its eval records carry `train_loss`, which belongs in the loss panel.
fn language_model_log() -> Vec<LogRecord> {
    let mut log = Vec::new();
    for step in 1..=60usize {
        let loss = 1.5 + 4.0 / (step as f64).sqrt();
        log.push(train(step, loss));
        if step % 15 == 0 {
            log.push(eval(step, loss + 0.2, &[("train_loss", loss - 0.1)]));
        }
    }
    log
}

fn options(title: &str, metrics: Option<&[&str]>) -> CurveOptions {
    CurveOptions { title: title.into(), metrics: metrics.map(|m| m.iter().map(|s| s.to_string()).collect()) }
}

#[test]
fn loss_curve_has_a_panel_per_metric_and_leaves_no_temporary_file() {
    let dir = TempDir::new("loss");
    loss_curve(&translation_log(1.0), &options("translation run", None), &dir.join("loss.png")).unwrap();
    assert_png(&dir.join("loss.png"), (1100, 612 + 2 * 300), 20_000);
    loss_curve(&translation_log(1.0), &options("BLEU only", Some(&["val_bleu"])), &dir.join("bleu.png")).unwrap();
    assert_png(&dir.join("bleu.png"), (1100, 612 + 300), 20_000);
    // train_loss is drawn with the losses, not in a panel of its own.
    loss_curve(&language_model_log(), &options("language model", None), &dir.join("lm.png")).unwrap();
    assert_png(&dir.join("lm.png"), (1100, 612), 10_000);
    loss_curve(&language_model_log(), &options("", Some(&[])), &dir.join("untitled.png")).unwrap();
    assert_png(&dir.join("untitled.png"), (1100, 612), 10_000);
    assert_eq!(dir.files(), ["bleu.png", "lm.png", "loss.png", "untitled.png"]);
}

/// A scheduled-sampling run logs p with each step: one more panel, below the metrics.
#[test]
fn loss_curve_draws_the_gold_probability_when_the_log_has_it() {
    let dir = TempDir::new("loss-gold");
    let log: Vec<LogRecord> = translation_log(1.0)
        .into_iter()
        .map(|record| match record {
            LogRecord::Train(r) => {
                LogRecord::Train(StepRecord { gold_probability: Some(1.0 - r.step as f64 / 4000.0), ..r })
            }
            other => other,
        })
        .collect();
    loss_curve(&log, &options("scheduled sampling", Some(&["val_bleu"])), &dir.join("loss.png")).unwrap();
    assert_png(&dir.join("loss.png"), (1100, 612 + 2 * 300), 20_000);
}

#[test]
fn loss_curve_draws_single_points() {
    let dir = TempDir::new("loss-small");
    loss_curve(&[train(7, 3.5)], &options("one step", None), &dir.join("one.png")).unwrap();
    assert_png(&dir.join("one.png"), (1100, 612), 5_000);
    loss_curve(&[eval(7, 3.5, &[("val_bleu", 1.0)])], &options("one eval", None), &dir.join("one-eval.png")).unwrap();
    assert_png(&dir.join("one-eval.png"), (1100, 912), 5_000);
}

#[test]
fn loss_curve_rejects_an_empty_log_and_unknown_metrics() {
    let dir = TempDir::new("loss-bad");
    let path = dir.join("loss.png");
    let err = loss_curve(&[], &CurveOptions::default(), &path).unwrap_err().to_string();
    assert!(err.contains(&path.display().to_string()) && err.contains("the training log is empty"), "{err}");
    let err = loss_curve(&[train(1, f64::NAN), LogRecord::Other], &CurveOptions::default(), &path).unwrap_err();
    assert!(err.to_string().contains("no finite training or validation loss"), "{err}");
    let err = loss_curve(&translation_log(1.0), &options("", Some(&["val_blue"])), &path).unwrap_err().to_string();
    assert!(err.contains("no metric `val_blue`") && err.contains("val_bleu, val_chrf"), "{err}");
    let log = [train(1, 2.0), eval(1, 2.0, &[("val_bleu", f64::NAN)])];
    let err = loss_curve(&log, &options("", Some(&["val_bleu"])), &path).unwrap_err().to_string();
    assert!(err.contains("`val_bleu` has no finite value"), "{err}");
    assert!(dir.files().is_empty(), "{:?}", dir.files());
}

#[test]
fn a_log_with_null_losses_loads_and_plots() {
    let dir = TempDir::new("nulls");
    let log = dir.join("log.jsonl");
    let step = |s: usize, loss: &str| {
        let rest = r#""lr":0.001,"grad_norm":0.5,"tokens":64,"tokens_per_s":900.0"#;
        format!(r#"{{"kind":"train","step":{s},"epoch":1,"loss":{loss},{rest}}}"#)
    };
    let lines = [
        step(1, "4.0"),
        step(2, "null"),
        step(3, "3.0"),
        r#"{"kind":"eval","step":3,"epoch":1,"val_loss":null,"val_bleu":2.5,"seconds":0.5}"#.to_string(),
        r#"{"kind":"eval","step":6,"epoch":2,"val_loss":2.5,"val_bleu":null,"seconds":0.5}"#.to_string(),
    ];
    fs::write(&log, lines.join("\n") + "\n").unwrap();
    let records = read_log(&log).unwrap();
    assert_eq!(records.len(), 5);
    assert!(matches!(&records[1], LogRecord::Train(r) if r.loss.is_nan()));
    loss_curve(&records, &options("nulls", None), &dir.join("nulls.png")).unwrap();
    assert_png(&dir.join("nulls.png"), (1100, 912), 5_000);
}

#[test]
fn compare_runs_draws_one_colour_per_run() {
    let dir = TempDir::new("compare");
    let (fast, slow, lm) = (translation_log(1.6), translation_log(1.0), language_model_log());
    let runs: [(&str, &[LogRecord]); 2] = [("lr 1e-3", &fast), ("lr 5e-4", &slow)];
    let plain = CompareOptions { title: "learning rate".into(), ..Default::default() };
    compare_runs(&runs, &plain, &dir.join("val.png")).unwrap();
    assert_png(&dir.join("val.png"), (1100, 612), 10_000);
    let full = CompareOptions { title: "learning rate".into(), train_loss: true, metrics: vec!["val_bleu".into()] };
    compare_runs(&runs, &full, &dir.join("full.png")).unwrap();
    assert_png(&dir.join("full.png"), (1100, 912), 20_000);
    // A run without the metric is left out of its panel; the metric must be in one run at least.
    let mixed: [(&str, &[LogRecord]); 2] = [("translation", &slow), ("language model", &lm)];
    compare_runs(&mixed, &full, &dir.join("mixed.png")).unwrap();
    assert_png(&dir.join("mixed.png"), (1100, 912), 10_000);
    // More runs than the palette has colours.
    let many: Vec<Vec<LogRecord>> = (0..12).map(|i| translation_log(0.5 + 0.1 * i as f64)).collect();
    let names: Vec<String> = (0..12).map(|i| format!("run {i}")).collect();
    let runs: Vec<(&str, &[LogRecord])> =
        names.iter().map(String::as_str).zip(many.iter().map(Vec::as_slice)).collect();
    compare_runs(&runs, &plain, &dir.join("many.png")).unwrap();
    assert_png(&dir.join("many.png"), (1100, 612), 10_000);
    assert_eq!(dir.files(), ["full.png", "many.png", "mixed.png", "val.png"]);
}

#[test]
fn compare_runs_names_the_run_at_fault() {
    let dir = TempDir::new("compare-bad");
    let path = dir.join("compare.png");
    let good = translation_log(1.0);
    let only_train = [train(1, 3.0), train(2, 2.5)];
    let plain = CompareOptions::default();
    let err = compare_runs(&[], &plain, &path).unwrap_err().to_string();
    assert!(err.contains("no runs to compare"), "{err}");
    let err = compare_runs(&[("a", &good), ("b", &[])], &plain, &path).unwrap_err().to_string();
    assert!(err.contains("run `b`: the training log is empty"), "{err}");
    let err = compare_runs(&[("a", &good), ("a", &good)], &plain, &path).unwrap_err().to_string();
    assert!(err.contains("two runs are named `a`"), "{err}");
    let err = compare_runs(&[("a", &good), ("b", &only_train)], &plain, &path).unwrap_err().to_string();
    assert!(err.contains("run `b` has no finite validation loss (it has a training loss)"), "{err}");
    let with_train = CompareOptions { train_loss: true, ..Default::default() };
    compare_runs(&[("a", &good), ("b", &only_train)], &with_train, &path).unwrap();
    assert_png(&path, (1100, 612), 10_000);
    fs::remove_file(&path).unwrap();
    let bleu = CompareOptions { metrics: vec!["val_bleu".into()], ..Default::default() };
    let lm = language_model_log();
    let err = compare_runs(&[("lm", &lm)], &bleu, &path).unwrap_err().to_string();
    assert!(err.contains("no metric `val_bleu` in the eval records (metrics there: train_loss)"), "{err}");
    assert!(dir.files().is_empty(), "{:?}", dir.files());
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
fn attention_grid_writes_a_png_big_enough_for_its_cells() {
    let dir = TempDir::new("attention");
    let path = dir.join("attention.png");
    let source = tokens("▁the ▁cat ▁sat ▁on ▁the ▁mat ▁extraordinarily_long_subword . </s>");
    let target = tokens("▁die ▁Katze ▁saß ▁auf ▁der ▁Matte . </s>");
    let (layers, heads) = (2, 4);
    attention_grid(&sample_weights(layers, heads, target.len(), source.len()), &source, &target, "grid", &path)
        .unwrap();
    // 26-pixel cells for sentences this short (240 / 9 tokens, at most 26), gaps of 14 between panels, and
    // room for titles, labels and the colour bar on top of that.
    let (width, height) = png_size(&path);
    let cells = |panels: u32, tokens: u32| panels * tokens * 26 + (panels - 1) * 14;
    assert!(width > cells(heads as u32, source.len() as u32) + 90 && width < 2000, "{width}");
    assert!(height > cells(layers as u32, target.len() as u32) + 90 && height < 1200, "{height}");
    assert!(fs::metadata(&path).unwrap().len() > 10_000);
    // Only the token lengths shape the grid: the same input gives the same size.
    attention_grid(&sample_weights(layers, heads, target.len(), source.len()), &source, &target, "", &path).unwrap();
    assert_eq!(png_size(&path), (width, height));
    assert_eq!(dir.files(), ["attention.png"]);
}

#[test]
fn attention_grid_names_the_layer_and_head_of_ragged_weights() {
    let dir = TempDir::new("attention-bad");
    let path = dir.join("attention.png");
    let (source, target) = (tokens("a b c"), tokens("x y"));
    let draw = |weights: &[Vec<Vec<Vec<f32>>>], source: &[String]| {
        attention_grid(weights, source, &target, "", &path).unwrap_err().to_string()
    };
    let mut weights = sample_weights(2, 3, 2, 3);
    weights[1][2].push(vec![0.0; 3]);
    let err = draw(&weights, &source);
    assert!(err.contains("layer 1 head 2 is 3×3") && err.contains("expected 2×3"), "{err}");
    assert!(err.starts_with(&format!("cannot plot {}", path.display())), "{err}");
    let mut weights = sample_weights(2, 3, 2, 3);
    weights[0][1][1].pop();
    assert!(draw(&weights, &source).contains("layer 0 head 1 is 2×2"));
    let mut weights = sample_weights(2, 3, 2, 3);
    weights[1].pop();
    assert!(draw(&weights, &source).contains("layer 1 has 2 heads, layer 0 has 3"));
    assert!(draw(&[], &source).contains("the list of layers is empty"));
    assert!(draw(&sample_weights(1, 1, 2, 0), &[]).contains("no tokens"));
    let long: Vec<String> = (0..2000).map(|i| format!("t{i}")).collect();
    assert!(draw(&sample_weights(1, 8, 2, 2000), &long).contains("too much to draw"));
    assert!(dir.files().is_empty(), "{:?}", dir.files());
}
