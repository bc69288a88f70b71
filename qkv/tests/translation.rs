//! The translation trainer end to end on a few sentence pairs: it overfits them and then translates them
//! exactly, checkpoints load back into identical models, and a resumed run continues the uninterrupted run's
//! loss curve exactly.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use candle_core::{Device, Tensor};
use qkv::decode::DecodeOptions;
use qkv::models::TransformerConfig;
use qkv::nn::Mode;
use qkv::WeightDtype;
mod support;

use qkv::inference::attention::{attention_grids, AttentionText};
use qkv::inference::Translator;

use qkv::train::translation::{
    latest_checkpoint, Event, Finish, LoopSettings, TranslationTrainer, TranslationTraining,
};

const PAIRS: [(&str, &str); 6] = [
    ("the cat sleeps.", "die Katze schläft."),
    ("a dog runs in the park.", "ein Hund rennt im Park."),
    ("two men play football.", "zwei Männer spielen Fußball."),
    ("the woman reads a book.", "die Frau liest ein Buch."),
    ("children are eating ice cream.", "Kinder essen Eis."),
    ("a red car is parked outside.", "ein rotes Auto parkt draußen."),
];

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qkv-translation-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_corpus(dir: &Path) -> TranslationTraining {
    let source: String = PAIRS.iter().map(|p| format!("{}\n", p.0)).collect();
    let target: String = PAIRS.iter().map(|p| format!("{}\n", p.1)).collect();
    std::fs::write(dir.join("src.txt"), source).unwrap();
    std::fs::write(dir.join("tgt.txt"), target).unwrap();
    TranslationTraining {
        train_source: dir.join("src.txt"),
        train_target: dir.join("tgt.txt"),
        valid_source: dir.join("src.txt"),
        valid_target: dir.join("tgt.txt"),
        vocab_size: 120,
        max_tokens: 64,
        warmup: 30,
        lr_factor: 0.2,
        max_len: 30,
        run: LoopSettings { logging_steps: 1, ..TranslationTraining::default().run },
        ..TranslationTraining::default()
    }
}

/// `training` with the loop settings `change` makes.
fn with_run(mut training: TranslationTraining, change: impl FnOnce(&mut LoopSettings)) -> TranslationTraining {
    change(&mut training.run);
    training
}

fn tiny_model(dropout: f64) -> TransformerConfig {
    TransformerConfig {
        d_model: 32,
        encoder_layers: 2,
        decoder_layers: 2,
        encoder_attention_heads: 4,
        decoder_attention_heads: 4,
        encoder_ffn_dim: 64,
        decoder_ffn_dim: 64,
        dropout,
        attention_dropout: dropout,
        activation_dropout: dropout,
        ..TransformerConfig::default()
    }
}

/// Runs to the end, returning every step's loss.
fn train(trainer: &mut TranslationTrainer, stop_after: Option<usize>) -> (Finish, Vec<(usize, f64)>) {
    support::step_losses(trainer, stop_after)
}

#[test]
fn overfits_a_handful_of_pairs_then_translates_them_exactly() {
    let dir = scratch("overfit");
    let training = TranslationTraining {
        label_smoothing: 0.0,
        ..with_run(write_corpus(&dir), |r| r.num_train_epochs = Some(150))
    };
    let mut trainer = TranslationTrainer::create(&dir.join("run"), training, tiny_model(0.0)).unwrap();
    let (finish, losses) = train(&mut trainer, None);
    assert_eq!(finish, Finish::Completed);
    let last = losses.last().unwrap().1;
    assert!(last < 0.05, "final loss {last}");
    let model = Translator::load(&dir.join("run"), &Device::Cpu).unwrap();
    let sources: Vec<String> = PAIRS.iter().map(|p| p.0.to_string()).collect();
    for (beam, use_cache) in [(1, true), (4, false), (4, true)] {
        let options = DecodeOptions { beam, use_cache, ..DecodeOptions::default() };
        let got = model.translate(&sources, &options, 64).unwrap();
        let expected: Vec<&str> = PAIRS.iter().map(|p| p.1).collect();
        assert_eq!(got, expected, "beam {beam} cache {use_cache}");
    }
    let best = trainer.state().best_metric.unwrap();
    assert!(best > 99.0, "validation BLEU on the training pairs: {best}");
    attention_grids_cover_the_three_attentions(&dir.join("run"), &model, PAIRS[0]);
    converted_runs_translate_as_load_time_conversion(&dir, &sources);
}

/// `qkv convert --dtype` on a run (its `best/`): the saved directory loads in its dtype and translates exactly
/// as the run converted at load does (the same packed weights: bf16 bits equal, int8 values equal and scales
/// within one ulp).
fn converted_runs_translate_as_load_time_conversion(dir: &Path, sources: &[String]) {
    for dtype in [WeightDtype::Bf16, WeightDtype::Int8] {
        let out = dir.join(format!("converted-{dtype}"));
        qkv::inference::convert::convert(&dir.join("run"), dtype, &out).unwrap();
        assert_eq!(qkv::hub::reduced::stored_dtype(&out).unwrap(), dtype);
        let options = DecodeOptions { beam: 4, ..DecodeOptions::default() };
        let at_load = Translator::load_as(&dir.join("run"), &Device::Cpu, dtype).unwrap();
        let saved = Translator::load(&out, &Device::Cpu).unwrap();
        let want = at_load.translate(sources, &options, 64).unwrap();
        assert_eq!(saved.translate(sources, &options, 64).unwrap(), want, "{dtype}");
    }
}

/// `qkv attention` on a translation run: the encoder's, the decoder's and the cross-attention, each layer and
/// head, rows summing to 1 (within 1e-5, f32) and the decoder's self-attention causal (exact zeros above the
/// diagonal).
fn attention_grids_cover_the_three_attentions(run: &Path, model: &Translator, (source, target): (&str, &str)) {
    let input = AttentionText { text: source, target: None };
    let grids = attention_grids(run, input, &Device::Cpu).unwrap();
    let names: Vec<&str> = grids.iter().map(|g| g.name).collect();
    assert_eq!(names, ["encoder self-attention", "decoder self-attention", "cross-attention"]);
    let tokens = |text: &str| model.tokenizer.encode(text).unwrap().len() + 1; // + EOS (or BOS)
    let (s, t) = (tokens(source), tokens(target));
    for (grid, rows, columns) in [(&grids[0], s, s), (&grids[1], t, t), (&grids[2], t, s)] {
        assert_eq!((grid.target_tokens.len(), grid.source_tokens.len()), (rows, columns), "{}", grid.name);
        assert_eq!(grid.weights.len(), 2, "{}: one entry per layer", grid.name);
        for (layer, heads) in grid.weights.iter().enumerate() {
            assert_eq!(heads.len(), 4);
            for (head, matrix) in heads.iter().enumerate() {
                assert_eq!(matrix.len(), rows);
                for (i, row) in matrix.iter().enumerate() {
                    let sum: f32 = row.iter().sum();
                    assert!((sum - 1.0).abs() <= 1e-5, "{} layer {layer} head {head} row {i}: {sum}", grid.name);
                    if grid.name == "decoder self-attention" {
                        assert!(row[i + 1..].iter().all(|&w| w == 0.0), "row {i} sees the future: {row:?}");
                    }
                }
            }
        }
    }
    assert_eq!(grids[1].source_tokens[0], "<s>", "decoder columns are the tokens read, BOS first");
    assert_eq!(grids[2].target_tokens.last().map(String::as_str), Some("</s>"), "rows: the tokens predicted");
}

#[test]
fn a_saved_checkpoint_loads_into_an_identical_model() {
    let dir = scratch("roundtrip");
    let training = with_run(write_corpus(&dir), |r| r.num_train_epochs = Some(3));
    let mut trainer = TranslationTrainer::create(&dir.join("run"), training, tiny_model(0.1)).unwrap();
    train(&mut trainer, None);
    let checkpoint = latest_checkpoint(&dir.join("run")).unwrap().unwrap();
    let loaded = Translator::load(&checkpoint, &Device::Cpu).unwrap();
    let src = Tensor::new(&[[5u32, 6, 7, 2]], &Device::Cpu).unwrap();
    let valid = Tensor::ones((1, 4), candle_core::DType::U8, &Device::Cpu).unwrap();
    let tgt = Tensor::new(&[[1u32, 8, 9]], &Device::Cpu).unwrap();
    let a = trainer.model().forward(&src, &valid, &tgt, &mut Mode::Eval).unwrap();
    let b = loaded.model.forward(&src, &valid, &tgt, &mut Mode::Eval).unwrap();
    let (a, b) =
        (a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    assert_eq!(a, b, "the reloaded model must compute the same logits bit for bit");
}

/// Interrupting after step 7 (mid-epoch, with dropout on) and resuming gives the same losses, bit for bit, as
/// running straight through: same batches, same dropout masks, same optimizer moments.
#[test]
fn a_resumed_run_continues_the_uninterrupted_loss_curve() {
    let straight_dir = scratch("straight");
    let training = TranslationTraining {
        max_tokens: 40,
        ..with_run(write_corpus(&straight_dir), |r| r.num_train_epochs = Some(4))
    };
    let mut straight =
        TranslationTrainer::create(&straight_dir.join("run"), training.clone(), tiny_model(0.1)).unwrap();
    let (_, expected) = train(&mut straight, None);
    assert!(expected.len() > 8, "the test needs an interruption mid-run; {} steps", expected.len());

    let resumed_dir = scratch("resumed");
    let training = TranslationTraining {
        max_tokens: 40,
        ..with_run(write_corpus(&resumed_dir), |r| r.num_train_epochs = Some(4))
    };
    let mut first = TranslationTrainer::create(&resumed_dir.join("run"), training, tiny_model(0.1)).unwrap();
    let (finish, mut losses) = train(&mut first, Some(7));
    assert_eq!(finish, Finish::Interrupted);
    assert_eq!(losses.len(), 7);
    drop(first);
    let mut second = TranslationTrainer::resume(&resumed_dir.join("run")).unwrap();
    let (finish, rest) = train(&mut second, None);
    assert_eq!(finish, Finish::Completed);
    losses.extend(rest);
    assert_eq!(losses, expected);
}

#[test]
fn bad_inputs_are_errors_that_name_the_file_and_line() {
    let dir = scratch("bad");
    let training = write_corpus(&dir);
    std::fs::write(dir.join("short.txt"), "one line\n").unwrap();
    let mismatched = TranslationTraining { train_target: dir.join("short.txt"), ..training.clone() };
    let err = TranslationTrainer::create(&dir.join("a"), mismatched, tiny_model(0.0)).err().unwrap().to_string();
    assert!(err.contains("short.txt") && err.contains('6') && err.contains('1'), "{err}");
    std::fs::write(dir.join("latin1.txt"), b"fine\nna\xefve\n").unwrap();
    let latin1 = TranslationTraining { train_source: dir.join("latin1.txt"), ..training.clone() };
    let err = TranslationTrainer::create(&dir.join("b"), latin1, tiny_model(0.0)).err().unwrap().to_string();
    assert!(err.contains("latin1.txt:2") && err.contains("UTF-8"), "{err}");
    let missing = TranslationTraining { valid_source: dir.join("nope.txt"), ..training };
    let err = TranslationTrainer::create(&dir.join("c"), missing, tiny_model(0.0)).err().unwrap().to_string();
    assert!(err.contains("nope.txt"), "{err}");
}

/// Summing the gradients of several small batches (accumulate) takes the same optimizer steps as one batch
/// holding all of them: the losses agree to float rounding (the batches pad differently).
#[test]
fn gradient_accumulation_equals_one_large_batch() {
    let run = |name: &str, max_tokens: usize, accumulate: usize| {
        let dir = scratch(name);
        let training = TranslationTraining {
            max_tokens,
            ..with_run(write_corpus(&dir), |r| {
                (r.num_train_epochs, r.gradient_accumulation_steps) = (Some(5), accumulate)
            })
        };
        let mut trainer = TranslationTrainer::create(&dir.join("run"), training, tiny_model(0.0)).unwrap();
        let mut batches_per_step = 0;
        let stop = AtomicBool::new(false);
        let mut losses = Vec::new();
        trainer
            .run(&stop, |event| match event {
                Event::Ready { steps_per_epoch, .. } => batches_per_step = *steps_per_epoch,
                Event::Step(r) => losses.push(r.loss),
                _ => {}
            })
            .unwrap();
        (batches_per_step, losses)
    };
    let (steps_per_epoch, large) = run("one-batch", 1000, 1);
    assert_eq!(steps_per_epoch, 1, "all pairs must fit one batch");
    let (_, split) = run("accumulated", 40, 100);
    let (small_batches, _) = run("small-batches", 40, 1);
    assert!(small_batches >= 3, "the test needs several batches per epoch; got {small_batches}");
    assert_eq!(large.len(), 5);
    assert_eq!(split.len(), 5);
    for (step, (a, b)) in large.iter().zip(&split).enumerate() {
        assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "step {}: one batch {a}, accumulated {b}", step + 1);
    }
}

/// Dealing each batch into parallel micro-batches (shards) takes the same optimizer steps as running it whole:
/// without dropout the losses agree to float rounding (the parts pad differently).
#[test]
fn sharded_batches_equal_whole_batches() {
    let run = |name: &str, shards: usize| {
        let dir = scratch(name);
        let training = TranslationTraining {
            max_tokens: 60,
            ..with_run(write_corpus(&dir), |r| (r.num_train_epochs, r.shards) = (Some(4), shards))
        };
        let mut trainer = TranslationTrainer::create(&dir.join("run"), training, tiny_model(0.0)).unwrap();
        let mut losses = Vec::new();
        let stop = AtomicBool::new(false);
        trainer
            .run(&stop, |event| {
                if let Event::Step(r) = event {
                    losses.push((r.loss, r.tokens))
                }
            })
            .unwrap();
        losses
    };
    let whole = run("shards-1", 1);
    assert!(whole.len() >= 8, "the test needs several steps; got {}", whole.len());
    for shards in [2, 3] {
        let sharded = run(&format!("shards-{shards}"), shards);
        assert_eq!(sharded.len(), whole.len());
        for (step, ((a, ta), (b, tb))) in whole.iter().zip(&sharded).enumerate() {
            assert_eq!(ta, tb, "step {}: tokens", step + 1);
            assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "step {}: whole {a}, {shards} shards {b}", step + 1);
        }
    }
}

/// The time limit ends a run like max_steps does: evaluation and a checkpoint, then `Completed`.
#[test]
fn a_time_limit_stops_training_with_a_checkpoint() {
    let dir = scratch("time-limit");
    let training =
        with_run(write_corpus(&dir), |r| (r.num_train_epochs, r.time_limit_minutes) = (Some(1000), Some(0.02)));
    let mut trainer = TranslationTrainer::create(&dir.join("run"), training, tiny_model(0.0)).unwrap();
    let started = std::time::Instant::now();
    let (finish, losses) = train(&mut trainer, None);
    let wall = started.elapsed().as_secs_f64();
    assert_eq!(finish, Finish::Completed);
    assert!(!losses.is_empty() && losses.len() < 1000, "{} steps", losses.len());
    assert!(wall >= 1.2, "stopped after {wall} s, before the 1.2 s limit");
    // The last checkpoint records the clock when it was written: after the limit when the limit cut an epoch
    // short, or at the end of the epoch during which the limit passed (the next epoch never starts).
    let state = trainer.state();
    assert!(state.seconds > 0.0 && state.seconds <= wall, "recorded {} s of a {wall} s run", state.seconds);
    assert!(state.epoch < 1000, "the limit, not the epochs, ended the run");
    assert!(latest_checkpoint(&dir.join("run")).unwrap().is_some());
}
