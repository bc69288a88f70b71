//! Which vocabulary: BPE, WordPiece, characters or words? Measured on Multi30k (Elliott et al., 2016) with the
//! project's tokenizers ([`crate::text::tokenizer`], all four built on Hugging Face `tokenizers` and trained
//! on both sides of the training set for one joint vocabulary): how many tokens a test sentence takes at each
//! vocabulary size, how much of the test set a vocabulary cannot spell (`<unk>`), and the test BLEU of a tiny
//! Transformer trained German → English with each, exactly as `qkv train translation --subword …` trains it.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{format_spread, mean_std, Figure, Section, Study, Table};
use crate::metrics::t_test::welch;
use crate::models::TransformerConfig;
use crate::plot::{Chart, Point, Series};
use crate::text::corpus::{read_parallel, SentencePair};
use crate::text::tokenizer::{SubwordModel, Tokenizer};
use crate::train::translation::{Event, LoopSettings, TranslationTrainer, TranslationTraining};
use crate::{Error, Result};

/// Vocabulary sizes of the two subword models (the four specials included).
pub const SUBWORD_SIZES: [usize; 5] = [1000, 2000, 4000, 8000, 16000];
/// Vocabulary sizes of whole words; the largest holds every word of the training set.
pub const WORD_SIZES: [usize; 5] = [2000, 4000, 8000, 16000, 32000];
/// The budget of the character vocabulary: larger than the alphabet, so every character seen is in it.
pub const CHARACTER_BUDGET: usize = 1000;
/// The vocabulary size the translators are compared at (characters: all of them).
pub const TRAINED_VOCAB: usize = 4000;
/// Tokens per training batch, padding included: the same compute per step for every vocabulary, so
/// characters, ~5× longer, see ~5× fewer sentences per step.
pub const MAX_TOKENS: usize = 1024;
/// Optimizer steps of each translator.
pub const STEPS: usize = 1000;
/// Warm-up steps of the paper's schedule, and its factor: a peak rate of 3e-3 at d_model 64.
pub const WARMUP: usize = 100;
/// The factor of the paper's learning-rate schedule (see [`WARMUP`]): with it the peak is 3e-3 at d_model 64.
pub const LR_FACTOR: f64 = 0.25;

/// The four files of Multi30k the question reads, German and English.
const FILES: [&str; 4] = ["train.de", "train.en", "test_2016_flickr.de", "test_2016_flickr.en"];
/// The pairs a quick run uses of each set.
const QUICK_TRAIN: usize = 400;
const QUICK_TEST: usize = 40;

/// Answers "which vocabulary: BPE, WordPiece, characters or words?" on Multi30k as the report's section.
pub fn run(study: &mut Study) -> Result<Section> {
    let corpus = Corpus::locate(study)?;
    let train = read_parallel(&corpus.train.0, &corpus.train.1)?;
    let test = read_parallel(&corpus.test.0, &corpus.test.1)?;
    study.say("tokenizers: vocabulary sizes against tokens per sentence and <unk> on the test set");
    let texts: Vec<&str> = train.iter().flat_map(|p| [p.source.as_str(), p.target.as_str()]).collect();
    let measured = settings(study.quick())
        .into_iter()
        .map(|(model, size)| VocabularyStats::measure(model, size, &texts, &test))
        .collect::<Result<Vec<_>>>()?;
    let mut trained = Vec::new();
    for model in SubwordModel::ALL {
        trained.push((model, translators(study, &corpus, model)?));
    }
    vocabulary_figure(study, &measured)?;
    bleu_figure(study, &trained)?;
    Ok(section(study, &measured, &trained))
}

/// Where the question's data is: Multi30k itself, or (quick runs) its first pairs copied under the report
/// directory.
struct Corpus {
    /// German, English.
    train: (PathBuf, PathBuf),
    test: (PathBuf, PathBuf),
}

impl Corpus {
    fn locate(study: &Study) -> Result<Self> {
        let dir = &study.data().multi30k;
        for file in FILES {
            let path = dir.join(file);
            if !path.is_file() {
                let message = "not found: `qkv study tokenizers` reads Multi30k (train.de/.en, \
                               test_2016_flickr.de/.en) from the directory given by --multi30k";
                return Err(Error::input(path, None, message));
            }
        }
        // Absolute, so that kept runs do not depend on where the study was started from.
        let dir = std::fs::canonicalize(dir).map_err(|e| Error::io(dir, e))?;
        if !study.quick() {
            let at = |i: usize| dir.join(FILES[i]);
            return Ok(Self { train: (at(0), at(1)), test: (at(2), at(3)) });
        }
        let quick = study.scratch_dir("tokenizers-data")?;
        let cut = FILES
            .iter()
            .enumerate()
            .map(|(i, file)| {
                first_lines(&dir.join(file), &quick.join(file), if i < 2 { QUICK_TRAIN } else { QUICK_TEST })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { train: (cut[0].clone(), cut[1].clone()), test: (cut[2].clone(), cut[3].clone()) })
    }
}

/// Writes the first `lines` lines of `from` to `to`.
fn first_lines(from: &Path, to: &Path, lines: usize) -> Result<PathBuf> {
    let text = std::fs::read_to_string(from).map_err(|e| Error::io(from, e))?;
    let kept: String = text.lines().take(lines).flat_map(|line| [line, "\n"]).collect();
    crate::atomic_file::write_atomically(to, kept.as_bytes())?;
    Ok(to.to_path_buf())
}

/// The (model, vocabulary size) pairs measured on the test set.
fn settings(quick: bool) -> Vec<(SubwordModel, usize)> {
    let (subword, word): (&[usize], &[usize]) = if quick { (&[1000], &[1000]) } else { (&SUBWORD_SIZES, &WORD_SIZES) };
    let mut all = Vec::new();
    for model in [SubwordModel::Bpe, SubwordModel::WordPiece] {
        all.extend(subword.iter().map(|&size| (model, size)));
    }
    all.extend(word.iter().map(|&size| (SubwordModel::Word, size)));
    all.push((SubwordModel::Character, CHARACTER_BUDGET));
    all
}

/// One vocabulary on the test set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VocabularyStats {
    /// BPE, WordPiece, characters or words.
    pub model: SubwordModel,
    /// The size asked for.
    pub asked: usize,
    /// The size trained (the specials included): below `asked` where the data runs out of merges or words.
    pub vocab_size: usize,
    /// Mean tokens per test sentence, German and English.
    pub tokens_per_sentence: (f64, f64),
    /// Test tokens (both sides) that are `<unk>`, as a fraction.
    pub unk_tokens: f64,
    /// Test sentences (both sides) with at least one `<unk>`, as a fraction.
    pub unk_sentences: f64,
}

impl VocabularyStats {
    fn measure(model: SubwordModel, asked: usize, texts: &[&str], test: &[SentencePair]) -> Result<Self> {
        let tokenizer = Tokenizer::train(texts, model, asked)?;
        let unk = tokenizer.unk_id();
        let (mut lengths, mut unk_tokens, mut unk_sentences) = ([0usize; 2], 0usize, 0usize);
        for pair in test {
            for (side, text) in [&pair.source, &pair.target].into_iter().enumerate() {
                let ids = tokenizer.encode(text)?;
                let unknown = ids.iter().filter(|&&id| id == unk).count();
                lengths[side] += ids.len();
                unk_tokens += unknown;
                unk_sentences += usize::from(unknown > 0);
            }
        }
        let n = test.len().max(1) as f64;
        Ok(Self {
            model,
            asked,
            vocab_size: tokenizer.vocab_size(),
            tokens_per_sentence: (lengths[0] as f64 / n, lengths[1] as f64 / n),
            unk_tokens: unk_tokens as f64 / (lengths[0] + lengths[1]).max(1) as f64,
            unk_sentences: unk_sentences as f64 / (2.0 * n),
        })
    }

    /// Tokens per sentence, the two languages averaged.
    fn mean_tokens(&self) -> f64 {
        (self.tokens_per_sentence.0 + self.tokens_per_sentence.1) / 2.0
    }
}

/// One translator trained with one seed, scored on the test set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TranslationRun {
    /// The seed of the run.
    pub seed: u64,
    /// sacreBLEU-compatible corpus BLEU (13a) of greedy translations of the test set against its raw
    /// references.
    pub bleu: f64,
    /// sacreBLEU-compatible corpus chrF2 of the same translations.
    pub chrf: f64,
    /// The vocabulary trained (specials included).
    pub vocab_size: usize,
    /// Trainable parameters (scalars) of the model: the embedding grows with the vocabulary.
    pub parameters: usize,
    /// Optimizer steps taken.
    pub steps: usize,
    /// Target tokens trained on, over all steps.
    pub target_tokens: usize,
    /// The training loss (label-smoothed), averaged over the last ten steps.
    pub final_loss: f64,
    /// Building the task (training the tokenizer, encoding the corpus, building the model).
    pub prepare_seconds: f64,
    /// Wall-clock seconds of the training loop, without scoring the test set.
    pub train_seconds: f64,
    /// Translating and scoring the test set.
    pub eval_seconds: f64,
}

/// The tiny Transformer every vocabulary is trained with: 1 + 1 layers, d_model 64, 4 heads, FFN 256, the
/// paper's post-LN, dropout 0.1 and tied embeddings (sized so that the question takes minutes on two cores).
pub fn tiny_model() -> TransformerConfig {
    TransformerConfig {
        d_model: 64,
        encoder_layers: 1,
        decoder_layers: 1,
        encoder_attention_heads: 4,
        decoder_attention_heads: 4,
        encoder_ffn_dim: 256,
        decoder_ffn_dim: 256,
        ..TransformerConfig::default()
    }
}

/// The options of `qkv train translation` for one vocabulary and seed; the test set is the validation set,
/// evaluated once, after the last step (the run ends before its first epoch does).
fn training(corpus: &Corpus, model: SubwordModel, seed: u64, quick: bool) -> TranslationTraining {
    let defaults = TranslationTraining::default();
    TranslationTraining {
        train_source: corpus.train.0.clone(),
        train_target: corpus.train.1.clone(),
        valid_source: corpus.test.0.clone(),
        valid_target: corpus.test.1.clone(),
        subword: model,
        vocab_size: if model == SubwordModel::Character { CHARACTER_BUDGET } else { TRAINED_VOCAB },
        max_tokens: MAX_TOKENS,
        lr_factor: LR_FACTOR,
        warmup: WARMUP,
        run: LoopSettings {
            num_train_epochs: None,
            max_steps: Some(if quick { 3 } else { STEPS }),
            // Two shards whatever the machine, so that the numbers do not depend on its core count.
            shards: 2,
            seed,
            ..defaults.run
        },
        ..defaults
    }
}

/// The translators of `model`, one per seed, each read back from `runs/` when it finished before.
fn translators(study: &mut Study, corpus: &Corpus, model: SubwordModel) -> Result<Vec<TranslationRun>> {
    let mut runs = Vec::new();
    for seed in study.seeds() {
        let config = (training(corpus, model, seed, study.quick()), tiny_model());
        let label = format!("tokenizers: {} translator, seed {seed}", model.name());
        runs.push(study.kept(&format!("training {label}"), &config, |_| train_translator(&config))?);
    }
    Ok(runs)
}

fn train_translator((training, model): &(TranslationTraining, TransformerConfig)) -> Result<TranslationRun> {
    let started = Instant::now();
    let mut trainer = TranslationTrainer::in_memory(training.clone(), model.clone())?;
    let prepare_seconds = started.elapsed().as_secs_f64();
    let (mut parameters, mut target_tokens, mut losses, mut evaluation) = (0, 0, Vec::new(), None);
    let started = Instant::now();
    trainer.run(&AtomicBool::new(false), |event| match event {
        Event::Ready { parameters: p, .. } => parameters = *p,
        Event::Step(record) => {
            target_tokens += record.tokens;
            losses.push(record.loss);
        }
        Event::Eval(record) => evaluation = Some(record.clone()),
        Event::Checkpoint { .. } => {}
    })?;
    let seconds = started.elapsed().as_secs_f64();
    let Some(evaluation) = evaluation else {
        return Err(Error::config("max_steps", STEPS, "at least one step, so that the test set is scored"));
    };
    let tail = &losses[losses.len().saturating_sub(10)..];
    Ok(TranslationRun {
        seed: training.run.seed,
        bleu: evaluation.metric("val_bleu"),
        chrf: evaluation.metric("val_chrf"),
        vocab_size: trainer.tokenizer().vocab_size(),
        parameters,
        steps: trainer.state().step,
        target_tokens,
        final_loss: tail.iter().sum::<f64>() / tail.len().max(1) as f64,
        prepare_seconds,
        train_seconds: seconds - evaluation.seconds,
        eval_seconds: evaluation.seconds,
    })
}

/// What the report calls each vocabulary.
fn label(model: SubwordModel) -> &'static str {
    match model {
        SubwordModel::Bpe => "BPE",
        SubwordModel::WordPiece => "WordPiece",
        SubwordModel::Character => "characters",
        SubwordModel::Word => "words",
    }
}

/// The steps the translators trained (all train as many).
fn steps(trained: &[(SubwordModel, Vec<TranslationRun>)]) -> usize {
    trained.first().and_then(|(_, runs)| runs.first()).map_or(0, |r| r.steps)
}

fn bleu(runs: &[TranslationRun]) -> Vec<f64> {
    runs.iter().map(|r| r.bleu).collect()
}

/// Welch's p of `runs`' BLEU against BPE's, NaN with fewer than two seeds.
fn p_against(runs: &[TranslationRun], bpe: &[TranslationRun]) -> f64 {
    welch(&bleu(runs), &bleu(bpe)).map_or(f64::NAN, |t| t.p)
}

fn section(study: &Study, measured: &[VocabularyStats], trained: &[(SubwordModel, Vec<TranslationRun>)]) -> Section {
    let seeds = study.seeds();
    let bpe = &trained[0].1;
    let mut answer = format!("{} De→en test BLEU after {} steps: ", sizes_answer(measured), steps(trained));
    let scores: Vec<String> = trained
        .iter()
        .map(|(model, runs)| {
            let score = format!("{} {}", label(*model), format_spread(&bleu(runs), 1));
            if *model == SubwordModel::Bpe {
                return score;
            }
            match p_against(runs, bpe) {
                p if p < 0.05 => format!("{score} (differs from BPE, p = {p:.3})"),
                p if p >= 0.05 => format!("{score} (within noise of BPE, p = {p:.3})"),
                _ => format!("{score} (one seed: no test)"),
            }
        })
        .collect();
    answer.push_str(&scores.join(", "));
    answer.push('.');
    Section {
        name: "tokenizers".into(),
        question: "Which vocabulary: BPE, WordPiece, characters or words?".into(),
        answer,
        setup: setup(study, &seeds),
        tables: vec![vocabulary_table(measured), translation_table(trained, &seeds)],
        figures: vec![
            Figure {
                file: "tokenizers_length.png".into(),
                caption: "Vocabulary size against tokens per Multi30k test sentence (German and English averaged)"
                    .into(),
            },
            Figure {
                file: "tokenizers_bleu.png".into(),
                caption: "Test BLEU (de→en, greedy) of the tiny Transformer per vocabulary (mean ± std over seeds)"
                    .into(),
            },
        ],
        results: json!({
            "vocabularies": measured,
            "translation": trained.iter().map(|(model, runs)| json!({"subword": model, "runs": runs})).collect::<Vec<_>>(),
        }),
    }
}

/// The length and `<unk>` half of the answer: characters, the subwords at their extremes, words at the
/// compared size.
fn sizes_answer(measured: &[VocabularyStats]) -> String {
    let find = |model: SubwordModel, size: usize| measured.iter().find(|s| s.model == model && s.asked == size);
    let extremes = |model: SubwordModel| {
        let of: Vec<&VocabularyStats> = measured.iter().filter(|s| s.model == model).collect();
        match (of.first(), of.last()) {
            (Some(a), Some(b)) => format!(
                "{} {:.1} at {} to {:.1} at {}",
                label(model),
                a.mean_tokens(),
                a.vocab_size,
                b.mean_tokens(),
                b.vocab_size
            ),
            _ => String::new(),
        }
    };
    let characters = find(SubwordModel::Character, CHARACTER_BUDGET);
    let words =
        find(SubwordModel::Word, TRAINED_VOCAB).or_else(|| measured.iter().find(|s| s.model == SubwordModel::Word));
    let unk = |s: Option<&VocabularyStats>| s.map_or(f64::NAN, |s| 100.0 * s.unk_tokens);
    let words_text = words.map_or(String::new(), |w| {
        format!(
            "; words (one token each whatever the size) at {} take {:.1} but leave {:.1}% of test tokens `<unk>` ({:.0}% of sentences have one)",
            w.vocab_size,
            w.mean_tokens(),
            100.0 * w.unk_tokens,
            100.0 * w.unk_sentences
        )
    });
    // The subwords spell every test character seen in training at every size: their worst size says it.
    let worst = |model: SubwordModel| {
        measured.iter().filter(|s| s.model == model).map(|s| 100.0 * s.unk_tokens).fold(0.0, f64::max)
    };
    format!(
        "Tokens per test sentence: characters {:.1} ({} symbols, {:.2}% `<unk>`), {}, {}{}; BPE and WordPiece leave at most {:.2}% and {:.2}% `<unk>`.",
        characters.map_or(f64::NAN, VocabularyStats::mean_tokens),
        characters.map_or(0, |c| c.vocab_size),
        unk(characters),
        extremes(SubwordModel::Bpe),
        extremes(SubwordModel::WordPiece),
        words_text,
        worst(SubwordModel::Bpe),
        worst(SubwordModel::WordPiece),
    )
}

fn setup(study: &Study, seeds: &[u64]) -> String {
    let model = tiny_model();
    let quick = if study.quick() {
        format!(" Quick run: the first {QUICK_TRAIN} training and {QUICK_TEST} test pairs, 3 steps.")
    } else {
        String::new()
    };
    format!(
        "Multi30k (Elliott et al., 2016; {}): every vocabulary is joint, trained on both sides of the 29 000 training pairs by Hugging Face `tokenizers` (NFC, spaces as ▁): BPE and WordPiece as `qkv train translation` trains them; characters: a WordLevel vocabulary over single characters (the space is a token of its own), every character seen in training (budget {CHARACTER_BUDGET}); words: a WordLevel vocabulary over the text split at spaces and around every punctuation mark, the most frequent up to the size asked, the rest `<unk>`. Lengths and `<unk>` are measured on test_2016_flickr (1000 pairs, both languages). Translation German → English with the same training as `qkv train translation --subword …`: {}+{} layers, d_model {}, {} heads, FFN {}, dropout {}, tied embeddings, {STEPS} Adam steps of {MAX_TOKENS} tokens (padding included; the same compute per step, so longer tokenizations see fewer sentences), warm-up {WARMUP}, lr factor {LR_FACTOR}, label smoothing 0.1, vocabulary {TRAINED_VOCAB} for BPE, WordPiece and words; seeds {seeds:?}. BLEU: sacreBLEU-compatible corpus BLEU (13a tokenisation) of greedy translations of the test set, decoded to text, against the raw references; p: Welch's t-test against BPE over seeds.{quick}",
        study.data().multi30k.display(),
        model.encoder_layers,
        model.decoder_layers,
        model.d_model,
        model.encoder_attention_heads,
        model.encoder_ffn_dim,
        model.dropout,
    )
}

fn vocabulary_table(measured: &[VocabularyStats]) -> Table {
    let mut table = Table::new(
        "Vocabulary against tokens per test sentence and unknown tokens (Multi30k test 2016, 1000 pairs)",
        &[
            "vocabulary",
            "size asked",
            "size trained",
            "tokens/sentence de",
            "tokens/sentence en",
            "`<unk>` % of tokens",
            "sentences with `<unk>` %",
        ],
    );
    for s in measured {
        table.row(vec![
            label(s.model).to_string(),
            s.asked.to_string(),
            s.vocab_size.to_string(),
            format!("{:.1}", s.tokens_per_sentence.0),
            format!("{:.1}", s.tokens_per_sentence.1),
            format!("{:.2}", 100.0 * s.unk_tokens),
            format!("{:.1}", 100.0 * s.unk_sentences),
        ]);
    }
    table
}

fn translation_table(trained: &[(SubwordModel, Vec<TranslationRun>)], seeds: &[u64]) -> Table {
    let mut table = Table::new(
        format!(
            "German → English test BLEU of the tiny Transformer per vocabulary ({} steps, {} seeds)",
            steps(trained),
            seeds.len()
        ),
        &[
            "vocabulary",
            "size",
            "parameters",
            "BLEU",
            "chrF2",
            "vs BPE (Welch p)",
            "target tokens trained on",
            "final training loss",
            "train s/run",
            "test translation s/run",
        ],
    );
    let bpe = &trained[0].1;
    for (model, runs) in trained {
        let column = |f: fn(&TranslationRun) -> f64| runs.iter().map(f).collect::<Vec<f64>>();
        let first = runs.first();
        table.row(vec![
            label(*model).to_string(),
            first.map_or(String::new(), |r| r.vocab_size.to_string()),
            first.map_or(String::new(), |r| r.parameters.to_string()),
            format_spread(&bleu(runs), 1),
            format_spread(&column(|r| r.chrf), 1),
            if *model == SubwordModel::Bpe { "—".into() } else { format!("{:.3}", p_against(runs, bpe)) },
            format!("{:.0}", mean_std(&column(|r| r.target_tokens as f64)).0),
            format_spread(&column(|r| r.final_loss), 2),
            format!("{:.0}", mean_std(&column(|r| r.train_seconds)).0),
            format!("{:.0}", mean_std(&column(|r| r.eval_seconds)).0),
        ]);
    }
    table
}

fn vocabulary_figure(study: &Study, measured: &[VocabularyStats]) -> Result<()> {
    let series = [SubwordModel::Bpe, SubwordModel::WordPiece, SubwordModel::Word, SubwordModel::Character]
        .into_iter()
        .map(|model| Series {
            name: label(model).into(),
            points: measured
                .iter()
                .filter(|s| s.model == model)
                .map(|s| Point { x: s.vocab_size as f64, y: s.mean_tokens(), spread: None })
                .collect(),
            dashed: model == SubwordModel::Word,
            points_only: false,
        })
        .collect();
    Chart {
        title: "Vocabulary size against sentence length".into(),
        note: "Multi30k test 2016, German and English averaged; joint vocabularies trained on the training set".into(),
        x_label: "vocabulary size (log)".into(),
        y_label: "tokens per sentence".into(),
        log_x: true,
        series,
        ..Chart::default()
    }
    .draw(&study.figure("tokenizers_length.png"))
}

fn bleu_figure(study: &Study, trained: &[(SubwordModel, Vec<TranslationRun>)]) -> Result<()> {
    Chart {
        title: "Translation quality per vocabulary".into(),
        note: format!(
            "Multi30k de→en test, greedy; tiny Transformer, {} steps; mean ± std over {} seeds",
            steps(trained),
            study.seeds().len()
        ),
        x_label: "vocabulary".into(),
        y_label: "test BLEU".into(),
        x_categories: trained.iter().map(|(model, _)| label(*model).to_string()).collect(),
        series: vec![Series {
            name: "BLEU".into(),
            points: trained
                .iter()
                .enumerate()
                .map(|(i, (_, runs))| {
                    let (mean, std) = mean_std(&bleu(runs));
                    Point { x: i as f64, y: mean, spread: Some(std) }
                })
                .collect(),
            dashed: false,
            points_only: false,
        }],
        ..Chart::default()
    }
    .draw(&study.figure("tokenizers_bleu.png"))
}
