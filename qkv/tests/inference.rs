//! The inference layer: text streamed whole and cut at stop strings, models shared by threads, directories
//! recognised by kind.

use std::path::PathBuf;

use candle_core::Device;
use qkv::decode::generate::{GenerateOptions, StopReason};
use qkv::hub::tokenizer::PretrainedTokenizer;
use qkv::inference::{Embedder, Generator, ModelKind, TextStream};
use qkv::models::bert::BertArchitecture;

fn fixture(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(path)
}

fn greedy(tokens: usize) -> GenerateOptions {
    GenerateOptions { max_new_tokens: tokens, greedy: true, ..GenerateOptions::default() }
}

/// The pieces a completion streams add up to its text; a stop string, found even when it spans tokens,
/// ends generation and never reaches the reader.
#[test]
fn completions_stream_their_text_and_stop_at_stop_strings() {
    let generator = Generator::load(&fixture("gpt2/qkv-trained"), &Device::Cpu).unwrap();
    let prompt = generator.encode("First Citizen:").unwrap();
    let mut pieces = Vec::new();
    let full = generator
        .complete(&prompt, &greedy(40), &[], |piece| {
            pieces.push(piece.to_string());
            Ok(())
        })
        .unwrap();
    let text = full.text.clone().unwrap();
    assert_eq!(pieces.concat(), text);
    assert_eq!((full.stop, full.generated_ids.len()), (StopReason::MaxNewTokens, 40));
    assert_eq!(text, generator.tokenizer().unwrap().decode(&full.generated_ids).unwrap());

    // A stop string of three characters from the middle of the text: with a byte-level vocabulary of 320 it
    // spans several tokens.
    let start = text.char_indices().nth(text.chars().count() / 2).unwrap().0;
    let stop: String = text[start..].chars().take(3).collect();
    let cut = text.find(&stop).unwrap();
    let mut streamed = String::new();
    let stopped = generator
        .complete(&prompt, &greedy(40), std::slice::from_ref(&stop), |piece| {
            streamed.push_str(piece);
            Ok(())
        })
        .unwrap();
    assert_eq!(stopped.text.as_deref(), Some(&text[..cut]), "stop {stop:?}");
    assert_eq!(streamed, text[..cut]);
    assert_eq!(stopped.stop.name(), "stop_string");
    assert!(stopped.generated_ids.len() < 40);

    // Batched completions stop row by row at the same place.
    let batch = generator.complete_batch(&[prompt.clone(), prompt], &greedy(40), &[stop]).unwrap();
    assert!(batch.iter().all(|c| c.text == stopped.text && c.stop == StopReason::Caller));
}

/// Characters split across byte-level tokens are released only once whole, and a held-back prefix of a stop
/// string that never completes is released at the end.
#[test]
fn text_streams_release_whole_characters_only() {
    let tokenizer = PretrainedTokenizer::from_dir(&fixture("gpt2/qkv-trained")).unwrap();
    let text = "Grüße, señor — naïve café: ok";
    let ids = tokenizer.ids(text).unwrap();
    assert!(ids.len() > text.chars().count(), "the fixture's vocabulary should split multi-byte characters");
    let stops = vec!["ok!".to_string()];
    let mut stream = TextStream::new(&tokenizer, &stops);
    let mut released = String::new();
    for &id in &ids {
        let piece = stream.push(id).unwrap();
        assert!(!piece.contains('\u{fffd}'), "{piece:?}");
        released.push_str(&piece);
    }
    assert_eq!(released, &text[..text.len() - 2], "`ok` may begin the stop string `ok!`: held back");
    released.push_str(&stream.finish());
    assert_eq!(released, text);
    assert!(!stream.stopped());
}

/// One loaded model serves several threads at once, each getting what it would alone.
#[test]
fn models_are_shared_by_threads() {
    let generator = Generator::load(&fixture("gpt2/qkv-trained"), &Device::Cpu).unwrap();
    let prompt = generator.encode("To be").unwrap();
    let sampled = |seed: u64| GenerateOptions { max_new_tokens: 12, top_p: Some(0.9), seed, ..Default::default() };
    let alone: Vec<Vec<u32>> = (0..4)
        .map(|seed| generator.complete(&prompt, &sampled(seed), &[], |_| Ok(())).unwrap().generated_ids)
        .collect();
    let together: Vec<Vec<u32>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|seed| {
                let (generator, prompt) = (&generator, &prompt);
                scope.spawn(move || generator.complete(prompt, &sampled(seed), &[], |_| Ok(())).unwrap().generated_ids)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(together, alone);

    let embedder = Embedder::load(&fixture("bert/BertModel"), &Device::Cpu).unwrap();
    let sentences = ["the cat sat", "a dog ran far away", "hello"];
    let alone = embedder.embed_vectors(&sentences, 2).unwrap();
    let together: Vec<Vec<Vec<f32>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3).map(|_| scope.spawn(|| embedder.embed_vectors(&sentences, 2).unwrap())).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(together.iter().all(|rows| *rows == alone));
    assert_eq!(embedder.token_counts(&sentences).unwrap().len(), 3);
}

#[test]
fn directories_are_recognised_by_kind() {
    assert_eq!(ModelKind::detect(&fixture("bert/BertModel")).unwrap(), ModelKind::Embedder);
    assert_eq!(
        ModelKind::detect(&fixture("bert/BertForMaskedLM")).unwrap(),
        ModelKind::BertTask(BertArchitecture::MaskedLm)
    );
    assert_eq!(ModelKind::detect(&fixture("gpt2/GPT2LMHeadModel")).unwrap(), ModelKind::Generator);
    let dir = std::env::temp_dir().join(format!("qkv-kind-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("best")).unwrap();
    let config = serde_json::json!({"d_model": 16, "encoder_layers": 1, "decoder_layers": 1});
    std::fs::write(dir.join("best/config.json"), config.to_string()).unwrap();
    assert_eq!(ModelKind::detect(&dir).unwrap(), ModelKind::Translator, "a run directory means its best/");
    std::fs::write(dir.join("config.json"), r#"{"model_type": "t5"}"#).unwrap();
    let message = ModelKind::detect(&dir).unwrap_err().to_string();
    assert!(message.contains("config.json") && message.contains("\"t5\""), "{message}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Log-probabilities are those of the model's own distribution: the first generated token's equals the log
/// softmax of a full forward pass over the prompt, and a greedy choice is the top alternative.
#[test]
fn completions_report_the_model_s_log_probabilities() {
    use candle_core::{Tensor, D};
    use qkv::nn::Mode;
    let generator = Generator::load(&fixture("gpt2/qkv-trained"), &Device::Cpu).unwrap();
    let prompt = generator.encode("First Citizen:").unwrap();
    let options = GenerateOptions { logprobs: Some(3), ..greedy(6) };
    let done = generator.complete(&prompt, &options, &[], |_| Ok(())).unwrap();
    assert_eq!(done.logprobs.len(), 6);
    for (choice, &token) in done.logprobs.iter().zip(&done.generated_ids) {
        assert_eq!(choice.token, token);
        assert_eq!(choice.top.len(), 3);
        assert_eq!((choice.top[0].0, choice.top[0].1), (token, choice.logprob.unwrap()));
        assert!(choice.top.windows(2).all(|w| w[0].1 >= w[1].1));
    }
    let ids = Tensor::new(prompt.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let logits = generator.model().forward(&ids, &mut Mode::Eval).unwrap(); // (1, T, V)
    let last = logits.get(0).unwrap().get(prompt.len() - 1).unwrap().to_dtype(candle_core::DType::F64).unwrap();
    let log_softmax = (&last
        - last.exp().unwrap().sum_keepdim(D::Minus1).unwrap().log().unwrap().broadcast_as(last.shape()).unwrap())
    .unwrap();
    let want = log_softmax.to_vec1::<f64>().unwrap()[done.generated_ids[0] as usize];
    let got = done.logprobs[0].logprob.unwrap();
    assert!((got - want).abs() <= 1e-4, "{got} against {want}");
    let without = generator.complete(&prompt, &greedy(6), &[], |_| Ok(())).unwrap();
    assert!(without.logprobs.is_empty());
    assert_eq!(without.generated_ids, done.generated_ids, "asking for log-probabilities changes no choice");
}

/// `qkv attention` on BERT and GPT-2 directories: the tokens the tokenizer gives on both axes ([CLS] … [SEP] for
/// BERT), one matrix per layer and head whose rows sum to 1 (within 1e-5, f32), GPT-2's causal (exact zeros
/// above the diagonal); `--target` is refused for models that are not translators.
#[test]
fn attention_grids_of_bert_and_gpt2_have_the_text_s_tokens() {
    use qkv::inference::attention::{attention_grids, AttentionText};
    let text = AttentionText { text: "hello world", target: None };
    let bert = attention_grids(&fixture("bert/BertModel"), text, &Device::Cpu).unwrap();
    let tokenizer = PretrainedTokenizer::from_dir(&fixture("bert/BertModel")).unwrap();
    let gpt2_dir = fixture("gpt2/qkv-trained");
    let gpt2 = attention_grids(&gpt2_dir, text, &Device::Cpu).unwrap();
    let gpt2_ids = PretrainedTokenizer::from_dir(&gpt2_dir).unwrap().ids(text.text).unwrap();
    for (grids, name, layers, heads) in [(&bert, "self-attention", 2, 4), (&gpt2, "causal self-attention", 2, 2)] {
        assert_eq!(grids.len(), 1);
        let grid = &grids[0];
        assert_eq!(grid.name, name);
        assert_eq!(grid.source_tokens, grid.target_tokens);
        assert_eq!((grid.weights.len(), grid.weights[0].len()), (layers, heads), "{name}");
        let n = grid.source_tokens.len();
        for matrix in grid.weights.iter().flatten() {
            assert_eq!(matrix.len(), n);
            for (i, row) in matrix.iter().enumerate() {
                let sum: f32 = row.iter().sum();
                assert!((sum - 1.0).abs() <= 1e-5, "{name} row {i}: {sum}");
                if name == "causal self-attention" {
                    assert!(row[i + 1..].iter().all(|&w| w == 0.0), "{name} row {i} sees the future");
                }
            }
        }
    }
    let cls = tokenizer.cls_id().and_then(|id| tokenizer.id_to_token(id)).unwrap();
    assert_eq!(bert[0].source_tokens.first(), Some(&cls));
    assert_eq!(gpt2[0].source_tokens.len(), gpt2_ids.len(), "GPT-2 reads the text's ids, nothing added");
    let with_target = AttentionText { text: "hello", target: Some("hallo") };
    let message = attention_grids(&gpt2_dir, with_target, &Device::Cpu).unwrap_err().to_string();
    assert!(message.contains("--target") && message.contains("translation"), "{message}");
}
