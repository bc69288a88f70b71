//! An encoder-decoder Transformer trained on a few built-in English → German pairs until it knows them, then
//! loaded back as a `Translator` and decoded with beam search.
//!
//!     cargo run --release --example translate [MODEL_DIR SENTENCE...]
//!
//! With MODEL_DIR (a run or model directory of `qkv train translation`), it translates the sentences given
//! instead. The built-in training takes a few seconds and writes its run directory under the system's temp
//! directory, removed afterwards.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use candle_core::Device;
use qkv::decode::DecodeOptions;
use qkv::inference::Translator;
use qkv::models::TransformerConfig;
use qkv::train::translation::{TranslationTrainer, TranslationTraining};

const PAIRS: [(&str, &str); 4] = [
    ("the cat sleeps.", "die Katze schläft."),
    ("a dog runs in the park.", "ein Hund rennt im Park."),
    ("two men play football.", "zwei Männer spielen Fußball."),
    ("the woman reads a book.", "die Frau liest ein Buch."),
];

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some((dir, sentences)) = args.split_first() {
        return translate(Path::new(dir), sentences);
    }
    let scratch = std::env::temp_dir().join(format!("qkv-example-translate-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let run = scratch.join("run");
    train(&scratch, &run)?;
    let sources: Vec<String> = PAIRS.iter().map(|p| p.0.to_string()).collect();
    translate(&run, &sources)?;
    std::fs::remove_dir_all(&scratch)?;
    Ok(())
}

/// Trains a 2 + 2-layer, 32-wide model on the pairs (validation on the same pairs: this is memorisation, to
/// show the calls) into `run`.
fn train(scratch: &Path, run: &Path) -> anyhow::Result<()> {
    let write = |name: &str, lines: Vec<&str>| -> std::io::Result<PathBuf> {
        let path = scratch.join(name);
        std::fs::write(&path, lines.iter().map(|line| format!("{line}\n")).collect::<String>())?;
        Ok(path)
    };
    let source = write("source.txt", PAIRS.iter().map(|p| p.0).collect())?;
    let target = write("target.txt", PAIRS.iter().map(|p| p.1).collect())?;
    let mut training = TranslationTraining {
        train_source: source.clone(),
        train_target: target.clone(),
        valid_source: source,
        valid_target: target,
        vocab_size: 100,
        max_tokens: 64,
        warmup: 30,
        lr_factor: 0.2,
        max_len: 30,
        label_smoothing: 0.0,
        ..TranslationTraining::default()
    };
    training.run.num_train_epochs = Some(150);
    let model = TransformerConfig {
        d_model: 32,
        encoder_layers: 2,
        decoder_layers: 2,
        encoder_attention_heads: 4,
        decoder_attention_heads: 4,
        encoder_ffn_dim: 64,
        decoder_ffn_dim: 64,
        dropout: 0.0,
        attention_dropout: 0.0,
        activation_dropout: 0.0,
        ..TransformerConfig::default()
    };
    let mut trainer = TranslationTrainer::create(run, training, model)?;
    let finish = trainer.run(&AtomicBool::new(false), |_| {})?;
    println!("training: {finish:?} after {} steps", trainer.state().step);
    Ok(())
}

fn translate(dir: &Path, sentences: &[String]) -> anyhow::Result<()> {
    let translator = Translator::load(dir, &Device::Cpu)?;
    let options = DecodeOptions { beam: 4, ..DecodeOptions::default() };
    for (source, output) in sentences.iter().zip(translator.translate(sentences, &options, 4096)?) {
        println!("{source}  →  {output}");
    }
    Ok(())
}
