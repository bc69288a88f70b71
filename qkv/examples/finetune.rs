//! BERT fine-tuned for sequence classification on the shared training loop (as transformers' Trainer does it),
//! then loaded back as a classification `Pipeline`.
//!
//!     cargo run --release --example finetune [MODEL_DIR TRAIN.tsv DEV.tsv]
//!
//! Without arguments it fine-tunes the tiny random BERT committed as a test fixture on twelve built-in
//! sentiment lines (tests/fixtures/bert/toy.tsv: text, tab, label), which it can only memorise; MiniLM on
//! CoLA (../shared/data/cola) is a real task. The run directory goes under the system's temp directory and is
//! removed afterwards.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use candle_core::Device;
use qkv::inference::Pipeline;
use qkv::models::bert::BertArchitecture;
use qkv::train::classification::{ClassificationTrainer, ClassifierTraining};
use qkv::train::trainer::Event;

fn main() -> anyhow::Result<()> {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bert");
    let args: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    let (model, train, dev) = match args.as_slice() {
        [model, train, dev] => (model.clone(), train.clone(), dev.clone()),
        [] => (fixtures.join("BertModel"), fixtures.join("toy.tsv"), fixtures.join("toy.tsv")),
        _ => anyhow::bail!("usage: finetune [MODEL_DIR TRAIN.tsv DEV.tsv]"),
    };
    let out = std::env::temp_dir().join(format!("qkv-example-finetune-{}", std::process::id()));
    let mut training = ClassifierTraining {
        train_file: train,
        dev_file: dev,
        per_device_train_batch_size: 4,
        learning_rate: 1e-3,
        ..ClassifierTraining::default()
    };
    training.run.num_train_epochs = Some(20);
    let mut trainer = ClassificationTrainer::create(&out, training, model)?;
    let finish = trainer.run(&AtomicBool::new(false), |event| {
        if let Event::Eval(eval) = event {
            if eval.epoch % 5 == 0 {
                let scores: Vec<String> = eval.metrics.iter().map(|(name, v)| format!("{name} {v:.3}")).collect();
                println!("epoch {:2}: validation loss {:.3}, {}", eval.epoch, eval.val_loss, scores.join(", "));
            }
        }
    })?;
    println!("training: {finish:?}");

    // The run directory holds the best epoch's BertForSequenceClassification, as transformers saves it.
    let pipeline = Pipeline::load(&out, BertArchitecture::SequenceClassification, &Device::Cpu)?;
    let texts = [("a great film", None), ("the acting was bad", None)];
    for ((text, _), scores) in texts.iter().zip(pipeline.classify(&texts)?) {
        let best = scores.iter().max_by(|a, b| a.score.total_cmp(&b.score)).expect("at least one label");
        println!("{text:?}: {} ({:.2})", best.label, best.score);
    }
    std::fs::remove_dir_all(&out)?;
    Ok(())
}
