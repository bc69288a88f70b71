//! Running a trainer at the terminal: a progress bar, a line per evaluation and per new best model, Ctrl-C
//! handling, and loss.png drawn from the run's log at the end.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use qkv::train::trainer::{EvalRecord, Event, Finish, Task, Trainer};

use qkv::{plot, run_log};

/// Runs any trainer with a progress bar, a line per evaluation (`describe` adds the task's metrics to the
/// validation loss) and per new best checkpoint, then draws loss.png from the run's log (`plotted`: its metric
/// panels, every metric the task logs by default).
pub fn run_with_progress<T: Task>(
    trainer: &mut Trainer<T>,
    stop: &AtomicBool,
    out: &Path,
    data: &str,
    plotted: plot::CurveOptions,
    mut describe: impl FnMut(&EvalRecord) -> String,
) -> Result<Finish> {
    let unused = &trainer.resume_report().unused;
    if !unused.is_empty() {
        eprintln!("warning: the checkpoint has {} tensors the model does not use: {unused:?}", unused.len());
    }
    let bar = crate::progress::steps_bar();
    let mut planned = None;
    let mut pace = Pace::default();
    let result = trainer.run(stop, |event| match event {
        Event::Ready { parameters, steps_per_epoch, planned_steps } => {
            eprintln!("{data}, {parameters} parameters, {steps_per_epoch} steps per epoch");
            planned = planned_steps.map(|n| n as u64);
            if let Some(n) = planned {
                bar.set_length(n);
            }
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
        Event::Step(record) => {
            if planned.is_none() && bar.length().is_none_or(|len| record.step as u64 > len) {
                bar.set_length(record.step as u64);
            }
            bar.set_position(record.step as u64);
            pace.add(record.tokens, record.tokens_per_s);
            let p = record.gold_probability.map(|p| format!("  p(gold) {p:.3}")).unwrap_or_default();
            bar.set_message(format!(
                "epoch {}  loss {:.3}  lr {:.2e}  {:.0} tok/s  {:.2} steps/s{p}",
                record.epoch,
                record.loss,
                record.lr,
                record.tokens_per_s,
                pace.steps_per_second()
            ));
        }
        // Printed around the bar (not through it) so they also reach a log file when stderr is not a terminal.
        Event::Eval(eval) => bar.suspend(|| {
            eprintln!(
                "epoch {} (step {}): valid loss {:.4}  {}  ({:.1} s)",
                eval.epoch,
                eval.step,
                eval.val_loss,
                describe(eval),
                eval.seconds
            )
        }),
        Event::Checkpoint { path, best, .. } => {
            if *best {
                bar.suspend(|| eprintln!("  new best → {}", path.display()));
            }
        }
    });
    bar.finish_and_clear();
    let finish = result?;
    if pace.steps > 0 {
        eprintln!(
            "{} steps in {:.1} s of optimizer steps (evaluation excluded): {:.3} steps/s, {:.0} tokens/s",
            pace.steps,
            pace.seconds,
            pace.steps_per_second(),
            pace.tokens as f64 / pace.seconds.max(1e-9)
        );
    }
    if finish == Finish::EarlyStopped {
        eprintln!("early stopping: no new best in the last evaluations");
    }
    let log = run_log::read_log(&out.join("log.jsonl"))?;
    plot::loss_curve(&log, &plotted, &out.join("loss.png"))?;
    eprintln!("loss curve: {}", out.join("loss.png").display());
    Ok(finish)
}

/// This session's optimizer steps and the time they took (forward, backward and update; evaluations and
/// checkpoints not counted), from the step records: tokens / tokens_per_s is a step's own duration.
#[derive(Default)]
struct Pace {
    steps: usize,
    tokens: usize,
    seconds: f64,
}

impl Pace {
    fn add(&mut self, tokens: usize, tokens_per_s: f64) {
        if tokens_per_s > 0.0 && tokens_per_s.is_finite() {
            self.steps += 1;
            self.tokens += tokens;
            self.seconds += tokens as f64 / tokens_per_s;
        }
    }

    fn steps_per_second(&self) -> f64 {
        self.steps as f64 / self.seconds.max(1e-9)
    }
}

/// A loss plot titled `title` with a panel for every metric the task logs.
pub fn plotted(title: &str) -> plot::CurveOptions {
    plot::CurveOptions { title: title.to_string(), metrics: None }
}

/// Ctrl-C raises the returned flag (the trainer then checkpoints and stops); a second Ctrl-C exits at once.
pub fn stop_on_ctrl_c() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("\nsecond Ctrl-C: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!("\nCtrl-C: finishing this step, writing a checkpoint, then exiting (again to abort)");
    })
    .context("installing the Ctrl-C handler")?;
    Ok(stop)
}

/// What to tell the user when the run stopped early or finished.
pub fn report_finish(finish: &Finish, resume_command: &str) {
    if *finish == Finish::Interrupted {
        println!("interrupted; continue with: {resume_command} --resume");
    }
}
