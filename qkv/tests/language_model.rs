//! `qkv train lm` end to end on a short text: the model learns it (loss falls far below the uniform
//! guess and greedy generation continues the text), a resumed run continues the uninterrupted one's loss curve
//! exactly, and the saved best model reloads as a GPT-2 directory with identical logits.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use qkv::decode::generate::{generate, GenerateOptions};
use qkv::hub::{gpt2, tokenizer::PretrainedTokenizer};
use qkv::models::Gpt2Config;
use qkv::nn::Mode;
use qkv::text::lm_tokenizer::LmVocabulary;
use qkv::train::language_model::{LmTrainer, LmTraining};
use qkv::train::trainer::{Finish, LoopSettings};

mod support;

const VERSE: &str = "twinkle, twinkle, little star, how I wonder what you are! up above the world so high, \
                     like a diamond in the sky. ";

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qkv-lm-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn setup(dir: &std::path::Path, max_steps: usize) -> (LmTraining, Gpt2Config) {
    std::fs::write(dir.join("text.txt"), VERSE.repeat(12)).unwrap();
    let training = LmTraining {
        text: dir.join("text.txt"),
        block_size: 40,
        batch_size: 8,
        eval_interval: 25,
        eval_batches: 2,
        learning_rate: 1e-2,
        min_lr: 1e-3,
        warmup: 10,
        run: LoopSettings { max_steps: Some(max_steps), ..LmTraining::default().run },
        ..LmTraining::default()
    };
    let config = Gpt2Config {
        n_positions: 48,
        n_embd: 32,
        n_layer: 2,
        n_head: 2,
        resid_pdrop: 0.1,
        embd_pdrop: 0.1,
        attn_pdrop: 0.1,
        ..Gpt2Config::default()
    };
    (training, config)
}

fn losses(trainer: &mut LmTrainer, stop_after: Option<usize>) -> (Finish, Vec<f64>) {
    let (finish, losses) = support::step_losses(trainer, stop_after);
    (finish, losses.into_iter().map(|(_, loss)| loss).collect())
}

#[test]
fn learns_a_short_text_and_continues_it() {
    let dir = scratch("learn");
    let (training, config) = setup(&dir, 250);
    let config = Gpt2Config { resid_pdrop: 0.0, embd_pdrop: 0.0, attn_pdrop: 0.0, ..config };
    let mut trainer = LmTrainer::create(&dir.join("run"), training, config).unwrap();
    let vocab = trainer.task().model().config().vocab_size;
    let (finish, curve) = losses(&mut trainer, None);
    assert_eq!((finish, curve.len()), (Finish::Completed, 250));
    let uniform = (vocab as f64).ln();
    let val = trainer.state().best_val_loss.unwrap();
    assert!(val < 0.3 * uniform, "validation loss {val} against ln V = {uniform}");

    // The best model is a GPT-2 directory: it reloads with the same logits and continues the verse.
    let best = dir.join("run/best");
    let loaded = gpt2::load(&best, &Device::Cpu).unwrap();
    let tokenizer = PretrainedTokenizer::from_dir(&best).unwrap();
    let prompt = tokenizer.ids("how I wonder what you").unwrap();
    let ids = Tensor::new(vec![prompt.clone()], &Device::Cpu).unwrap();
    let reloaded = loaded.model.forward(&ids, &mut Mode::Eval).unwrap();
    assert_eq!(prompt.len(), 21, "one token per character");
    let options = GenerateOptions { max_new_tokens: 12, greedy: true, ..GenerateOptions::default() };
    let (tokens, _) = generate(&loaded.model, &prompt, &options, |_| Ok(true)).unwrap();
    assert_eq!(tokenizer.decode(&tokens).unwrap(), " are! up abo");
    assert_eq!(reloaded.dims(), &[1, 21, vocab]);
}

#[test]
fn a_resumed_run_continues_the_uninterrupted_loss_curve() {
    let straight_dir = scratch("straight");
    let (training, config) = setup(&straight_dir, 60);
    let mut straight = LmTrainer::create(&straight_dir.join("run"), training, config).unwrap();
    let (_, expected) = losses(&mut straight, None);

    let resumed_dir = scratch("resumed");
    let (training, config) = setup(&resumed_dir, 60);
    let mut first = LmTrainer::create(&resumed_dir.join("run"), training, config).unwrap();
    let (finish, mut curve) = losses(&mut first, Some(33));
    assert_eq!(finish, Finish::Interrupted);
    let mut second = LmTrainer::resume(&resumed_dir.join("run")).unwrap();
    let (finish, rest) = losses(&mut second, None);
    assert_eq!(finish, Finish::Completed);
    curve.extend(rest);
    assert_eq!(curve, expected);
}

#[test]
fn byte_level_vocabulary_and_bad_options_are_reported() {
    let dir = scratch("options");
    let (training, config) = setup(&dir, 5);
    let bpe = LmTraining { vocabulary: LmVocabulary::ByteBpe, vocab_size: 300, ..training.clone() };
    let mut trainer = LmTrainer::create(&dir.join("bpe"), bpe, config.clone()).unwrap();
    assert!(trainer.task().model().config().vocab_size <= 300);
    assert_eq!(losses(&mut trainer, None).0, Finish::Completed);

    let long = LmTraining { block_size: 64, ..training.clone() };
    let message = LmTrainer::create(&dir.join("long"), long, config.clone()).err().unwrap().to_string();
    assert!(message.contains("n_positions") && message.contains("block_size = 64"), "{message}");
    // The held-out tenth is 138 characters.
    let short = LmTraining { block_size: 150, ..training.clone() };
    let wide = Gpt2Config { n_positions: 150, ..config.clone() };
    let message = LmTrainer::create(&dir.join("short"), short, wide).err().unwrap().to_string();
    assert!(message.contains("held-out part") && message.contains("block_size = 150"), "{message}");
    std::fs::write(dir.join("latin1.txt"), b"line one\nGr\xf6\xdfe\n").unwrap();
    let latin1 = LmTraining { text: dir.join("latin1.txt"), ..training };
    let message = LmTrainer::create(&dir.join("latin1"), latin1, config).err().unwrap().to_string();
    assert!(message.contains("latin1.txt:2") && message.contains("UTF-8"), "{message}");
}
