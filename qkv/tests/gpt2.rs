//! GPT-2 against Hugging Face transformers on the fixtures of tools/fixtures/make_gpt2_fixtures.py:
//! random-initialised GPT2Model and GPT2LMHeadModel checkpoints (tied and untied heads, one sharded) with a
//! right-padded batch. Tolerance: max |qkv − reference| ≤ 1e-5 · max(1, max |reference|).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use qkv::hub::gpt2;
use qkv::nn::Mode;

const TOL: f32 = 1e-5;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gpt2").join(name)
}

fn io(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name).join("io.safetensors"), &Device::Cpu).unwrap()
}

fn error(got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims());
    let diff = (got - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    let scale = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    diff / scale.max(1.0)
}

/// The output the fixture's class returns: last_hidden_state (GPT2Model) or logits (GPT2LMHeadModel).
fn check(name: &str) -> gpt2::LoadedGpt2 {
    let loaded = gpt2::load(&fixture(name), &Device::Cpu).unwrap();
    assert!(loaded.report.unused.is_empty(), "{:?}", loaded.report.unused);
    let io = io(name);
    let (ids, mask) = (&io["input.input_ids"], &io["input.attention_mask"]);
    let hidden = loaded.model.hidden_masked(ids, Some(mask), &mut Mode::Eval).unwrap();
    let (got, key) = match io.contains_key("output.logits") {
        true => (loaded.model.logits(&hidden).unwrap(), "output.logits"),
        false => (hidden, "output.last_hidden_state"),
    };
    let err = error(&got, &io[key]);
    assert!(err <= TOL, "{name} {key}: {err:e}");
    loaded
}

#[test]
fn gpt2_model_matches_transformers() {
    check("GPT2Model");
}

/// Every block's attention weights equal transformers' `output_attentions` (eager) on the right-padded batch.
#[test]
fn attention_weights_match_transformers() {
    let (model, _) = gpt2::load_frozen(&fixture("GPT2Model"), &Device::Cpu).unwrap();
    let expected = candle_core::safetensors::load(fixture("../attention.safetensors"), &Device::Cpu).unwrap();
    let io = io("GPT2Model");
    let weights = model.attention_weights(&io["input.input_ids"], Some(&io["input.attention_mask"])).unwrap();
    assert_eq!(weights.len(), 2);
    for (i, got) in weights.iter().enumerate() {
        let err = error(got, &expected[&format!("gpt2.attention.{i}")]);
        assert!(err <= TOL, "block {i}: error {err:e}");
    }
}

#[test]
fn lm_head_model_from_shards_matches_transformers() {
    assert!(fixture("GPT2LMHeadModel/model.safetensors.index.json").exists());
    check("GPT2LMHeadModel");
}

#[test]
fn untied_lm_head_with_relu_matches_transformers() {
    check("GPT2LMHeadModel-untied");
}

/// Saving writes transformers' layout (Conv1D weights transposed, fused c_attn); loading it back gives the
/// same logits bit for bit.
#[test]
fn saved_models_reload_identically() {
    for name in ["GPT2LMHeadModel", "GPT2LMHeadModel-untied"] {
        let loaded = check(name);
        let out = std::env::temp_dir().join(format!("qkv-gpt2-save-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&out).unwrap();
        gpt2::save(&out, &loaded.model, &loaded.vars).unwrap();
        let reloaded = gpt2::load(&out, &Device::Cpu).unwrap();
        let ids = &io(name)["input.input_ids"];
        let a = loaded.model.forward(ids, &mut Mode::Eval).unwrap();
        let b = reloaded.model.forward(ids, &mut Mode::Eval).unwrap();
        assert_eq!(error(&a, &b), 0.0, "{name}");
        let keys = candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
        assert!(keys.contains_key("transformer.h.0.attn.c_attn.weight"), "{:?}", keys.keys());
        std::fs::remove_dir_all(&out).unwrap();
    }
}

/// Incremental decoding: a 4-token prompt, then one token at a time, gives at every step the logits of
/// recomputing the whole prefix (≤ 1e-5); going past n_positions is an error naming it.
#[test]
fn cached_decoding_equals_full_recomputation() {
    let loaded = gpt2::load(&fixture("GPT2LMHeadModel"), &Device::Cpu).unwrap();
    let model = &loaded.model;
    let ids: Vec<u32> = vec![5, 17, 3, 88, 41, 2, 60, 9, 33, 71];
    let row = |s: &[u32]| Tensor::from_vec(s.to_vec(), (1, s.len()), &Device::Cpu).unwrap();
    let mut cache = model.new_cache();
    let prompt = model.forward_step(&row(&ids[..4]), &mut cache, &mut Mode::Eval).unwrap();
    let full = model.forward(&row(&ids[..4]), &mut Mode::Eval).unwrap();
    assert!(error(&prompt, &full) <= TOL);
    for end in 5..=ids.len() {
        let step = model.forward_step(&row(&ids[end - 1..end]), &mut cache, &mut Mode::Eval).unwrap();
        let full = model.forward(&row(&ids[..end]), &mut Mode::Eval).unwrap();
        let last = full.narrow(1, end - 1, 1).unwrap();
        let err = error(&step, &last);
        assert!(err <= TOL, "position {}: {err:e}", end - 1);
    }
    // n_positions = 20: ten more tokens fit, the eleventh does not.
    let more = row(&[1; 10]);
    model.forward_step(&more, &mut cache, &mut Mode::Eval).unwrap();
    let message = model.forward_step(&row(&[1]), &mut cache, &mut Mode::Eval).unwrap_err().to_string();
    assert!(message.contains("n_positions = 20"), "{message}");
}

/// Greedy generation equals transformers' `generate(do_sample=False)` token for token (with and without a
/// repetition penalty), cached or not; sampling with top_k = 1 is greedy; a seed makes sampling repeatable.
#[test]
fn generation_matches_transformers_generate() {
    use qkv::decode::generate::{generate, GenerateOptions, StopReason};
    for name in ["GPT2LMHeadModel", "GPT2LMHeadModel-untied"] {
        let loaded = gpt2::load(&fixture(name), &Device::Cpu).unwrap();
        let io = io(name);
        let prompt: Vec<u32> =
            io["generate.prompt"].flatten_all().unwrap().to_dtype(candle_core::DType::U32).unwrap().to_vec1().unwrap();
        for (key, penalty) in [("generate.greedy", 1.0), ("generate.greedy_penalty_1.3", 1.3)] {
            let expected: Vec<u32> =
                io[key].flatten_all().unwrap().to_dtype(candle_core::DType::U32).unwrap().to_vec1().unwrap();
            for use_cache in [true, false] {
                let options = GenerateOptions {
                    max_new_tokens: 12,
                    greedy: true,
                    repetition_penalty: penalty,
                    use_cache,
                    ..GenerateOptions::default()
                };
                let mut streamed = Vec::new();
                let (tokens, reason) = generate(&loaded.model, &prompt, &options, |t| {
                    streamed.push(t);
                    Ok(true)
                })
                .unwrap();
                assert_eq!(reason, StopReason::MaxNewTokens);
                assert_eq!(tokens, streamed);
                assert_eq!([prompt.clone(), tokens].concat(), expected, "{name} {key} cache {use_cache}");
            }
        }
        let greedy = GenerateOptions { max_new_tokens: 12, greedy: true, ..GenerateOptions::default() };
        let top1 = GenerateOptions { greedy: false, top_k: Some(1), temperature: 0.7, seed: 9, ..greedy.clone() };
        let run = |o: &GenerateOptions| generate(&loaded.model, &prompt, o, |_| Ok(true)).unwrap().0;
        assert_eq!(run(&top1), run(&greedy));
        let sampled = GenerateOptions { greedy: false, top_p: Some(0.9), seed: 4, ..greedy.clone() };
        assert_eq!(run(&sampled), run(&sampled));
        let first = run(&greedy)[0];
        let stop = GenerateOptions { eos_token_id: Some(first), ..greedy.clone() };
        let (tokens, reason) = generate(&loaded.model, &prompt, &stop, |_| Ok(true)).unwrap();
        assert_eq!((tokens, reason), (vec![first], StopReason::Eos));
    }
}

fn ids_of(t: &Tensor) -> Vec<Vec<u32>> {
    t.to_dtype(candle_core::DType::U32).unwrap().to_vec2().unwrap()
}

/// A batch of prompts of different lengths, padded on the left: each row's continuation equals transformers'
/// batched `generate(do_sample=False)`, cached or not, and equals generating that prompt alone.
#[test]
fn batched_generation_with_left_padding_matches_transformers() {
    use qkv::decode::generate::{generate, generate_batch, GenerateOptions, StopReason};
    for name in ["GPT2LMHeadModel", "GPT2LMHeadModel-untied"] {
        let loaded = gpt2::load(&fixture(name), &Device::Cpu).unwrap();
        let io = io(name);
        let (padded, mask, expected) = (
            ids_of(&io["generate.batch_prompt"]),
            ids_of(&io["generate.batch_mask"]),
            ids_of(&io["generate.batch_greedy"]),
        );
        let prompts: Vec<Vec<u32>> = padded
            .iter()
            .zip(&mask)
            .map(|(ids, m)| ids.iter().zip(m).filter(|(_, &v)| v == 1).map(|(&i, _)| i).collect())
            .collect();
        assert!(prompts.iter().map(Vec::len).min() < prompts.iter().map(Vec::len).max(), "prompts of one length");
        let width = padded[0].len();
        for use_cache in [true, false] {
            let options = GenerateOptions { max_new_tokens: 8, greedy: true, use_cache, ..GenerateOptions::default() };
            let out = generate_batch(&loaded.model, &prompts, &options, 0, |_, _| Ok(true)).unwrap();
            for (row, generated) in out.iter().enumerate() {
                assert_eq!(generated.stop, StopReason::MaxNewTokens);
                assert_eq!(generated.tokens, expected[row][width..], "{name} row {row} cache {use_cache}");
                let alone = generate(&loaded.model, &prompts[row], &options, |_| Ok(true)).unwrap().0;
                assert_eq!(alone, generated.tokens, "{name} row {row} alone");
            }
        }
    }
}

/// A model trained and saved by `qkv train lm` (byte-level BPE, tools/fixtures/make_gpt2_fixtures.py) loads in
/// transformers: its tokenizer.json gives the same ids and GPT2LMHeadModel the same logits as qkv.
#[test]
fn a_model_trained_here_loads_in_transformers_with_the_same_logits() {
    use qkv::hub::tokenizer::PretrainedTokenizer;
    let loaded = gpt2::load(&fixture("qkv-trained"), &Device::Cpu).unwrap();
    let io = io("qkv-trained");
    let tokenizer = PretrainedTokenizer::from_dir(&fixture("qkv-trained")).unwrap();
    let ids = tokenizer.ids("To be, or not to be: that is the question.").unwrap();
    assert_eq!(vec![ids.clone()], ids_of(&io["input.input_ids"]));
    let logits = loaded.model.forward(&Tensor::new(vec![ids], &Device::Cpu).unwrap(), &mut Mode::Eval).unwrap();
    let err = error(&logits, &io["output.logits"]);
    assert!(err <= TOL, "{err:e}");
}

/// GPT-2's original tokenizer files (vocab.json + merges.txt) encode as transformers' GPT2Tokenizer does and
/// decode back to the text.
#[test]
fn vocab_json_and_merges_txt_encode_like_transformers() {
    use qkv::hub::tokenizer::PretrainedTokenizer;
    let dir = fixture("vocab-merges");
    assert!(!dir.join("tokenizer.json").exists());
    let tokenizer = PretrainedTokenizer::from_dir(&dir).unwrap();
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let texts = expected["texts"].as_array().unwrap();
    for (i, text) in texts.iter().enumerate() {
        let text = text.as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(expected["ids"][i].clone()).unwrap();
        let ids = tokenizer.ids(text).unwrap();
        assert_eq!(ids, want, "{text:?}");
        assert_eq!(tokenizer.decode(&ids).unwrap(), expected["decoded"][i].as_str().unwrap());
    }
    assert_eq!(tokenizer.token_to_id("<|endoftext|>"), Some(0));
}

/// With `slide`, generation goes on past n_positions: once the window is full, each token is the greedy choice
/// of a fresh forward pass over the last n_positions − 1 tokens, positions counted from the window's start.
#[test]
fn sliding_generation_continues_past_the_context() {
    use qkv::decode::generate::{generate, GenerateOptions, StopReason};
    let loaded = gpt2::load(&fixture("GPT2LMHeadModel"), &Device::Cpu).unwrap();
    let limit = loaded.model.config().n_positions; // 20
    let prompt = vec![5u32, 17, 3, 40];
    let options = GenerateOptions { max_new_tokens: 30, greedy: true, slide: true, ..GenerateOptions::default() };
    let (tokens, reason) = generate(&loaded.model, &prompt, &options, |_| Ok(true)).unwrap();
    assert_eq!((tokens.len(), reason), (30, StopReason::MaxNewTokens));
    let all = [prompt.clone(), tokens.clone()].concat();
    for end in limit..all.len() {
        let window = &all[end - (limit - 1)..end];
        let logits = loaded.model.forward(&Tensor::new(vec![window.to_vec()], &Device::Cpu).unwrap(), &mut Mode::Eval);
        let last = logits.unwrap().get(0).unwrap().get(limit - 2).unwrap().to_vec1::<f32>().unwrap();
        let best = (0..last.len()).max_by(|&a, &b| last[a].total_cmp(&last[b])).unwrap() as u32;
        assert_eq!(all[end], best, "token {end}");
    }
    let stopping = GenerateOptions { slide: false, ..options };
    let (tokens, reason) = generate(&loaded.model, &prompt, &stopping, |_| Ok(true)).unwrap();
    assert_eq!((tokens.len(), reason), (limit - prompt.len(), StopReason::ContextFull));
}

/// Continuous batching: sequences that join a running batch at different steps, with different lengths,
/// options and stopping points, each generate exactly what they generate alone — greedy and seeded sampling
/// alike, the log-probabilities within 1e-5 — while rows leave (finished, cancelled, context full) and the
/// cache narrows to the longest live sequence.
#[test]
fn continuous_batching_equals_generating_each_sequence_alone() {
    use qkv::decode::continuous::{ContinuousBatch, Finished};
    use qkv::decode::generate::{generate_batch_choices, GenerateOptions, StopReason, TokenChoice};
    let loaded = gpt2::load(&fixture("GPT2LMHeadModel"), &Device::Cpu).unwrap();
    let model = &loaded.model;
    let greedy = |max_new_tokens| GenerateOptions { max_new_tokens, greedy: true, ..GenerateOptions::default() };
    let sampled = |seed| GenerateOptions {
        max_new_tokens: 9,
        temperature: 0.8,
        top_p: Some(0.9),
        repetition_penalty: 1.3,
        seed,
        logprobs: Some(3),
        ..GenerateOptions::default()
    };
    // (joins before step, id, prompt, options)
    let plan: Vec<(usize, u64, Vec<u32>, GenerateOptions)> = vec![
        (0, 1, vec![5, 17, 3], greedy(6)),
        (0, 2, vec![9], sampled(11)),
        (2, 3, vec![40, 2, 8, 33, 12, 7], greedy(10)),
        (3, 4, vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], greedy(30)), // fills the 20 positions
        (5, 5, vec![21, 22], sampled(12)),
        (5, 6, vec![30, 31, 32], greedy(8)), // cancelled after 3 tokens
    ];
    let mut batch = ContinuousBatch::new(model);
    let mut seen: HashMap<u64, Vec<TokenChoice>> = HashMap::new();
    let mut finished: Vec<Finished> = Vec::new();
    let (mut step, mut cancelled) = (0, false);
    while step < 6 || !batch.is_empty() {
        for (_, id, prompt, options) in plan.iter().filter(|p| p.0 == step) {
            assert_eq!(batch.join(model, *id, prompt, options.clone()).unwrap(), None);
        }
        if seen.get(&6).map_or(0, Vec::len) == 3 && !cancelled {
            assert!(batch.cancel(6).unwrap());
            cancelled = true;
        }
        finished.extend(
            batch
                .step(model, |id, choice| {
                    seen.entry(id).or_default().push(choice.clone());
                    Ok(true)
                })
                .unwrap(),
        );
        let longest = plan
            .iter()
            .filter(|p| finished.iter().all(|f| f.id != p.1) && p.0 <= step && (p.1 != 6 || seen[&6].len() < 3))
            .map(|p| p.2.len() + seen.get(&p.1).map_or(0, Vec::len))
            .max();
        if !batch.is_empty() {
            assert_eq!(Some(batch.width()), longest, "step {step}: the cache is as wide as the longest live row");
        }
        step += 1;
    }
    assert_eq!(batch.width(), 0);
    for (_, id, prompt, options) in &plan {
        let mut alone = Vec::new();
        let reference = generate_batch_choices(model, std::slice::from_ref(prompt), options, 0, |_, choice| {
            alone.push(choice.clone());
            Ok(true)
        })
        .unwrap();
        let got = &seen[id];
        let tokens: Vec<u32> = got.iter().map(|c| c.token).collect();
        if *id == 6 {
            assert_eq!(tokens, reference[0].tokens[..3], "cancelled sequence {id}");
            assert!(finished.iter().all(|f| f.id != 6));
            continue;
        }
        assert_eq!(tokens, reference[0].tokens, "sequence {id}");
        let done = finished.iter().find(|f| f.id == *id).unwrap();
        assert_eq!((done.stop, done.generated), (reference[0].stop, tokens.len()), "sequence {id}");
        for (a, b) in got.iter().zip(&alone) {
            let close = |x: f64, y: f64| (x - y).abs() <= 1e-5;
            assert!(a.logprob.zip(b.logprob).is_none_or(|(x, y)| close(x, y)), "{:?} vs {:?}", a.logprob, b.logprob);
            assert_eq!(a.top.len(), b.top.len());
            for ((ta, la), (tb, lb)) in a.top.iter().zip(&b.top) {
                assert!(ta == tb && close(*la, *lb), "sequence {id}: top {ta} {la} vs {tb} {lb}");
            }
        }
    }
    assert_eq!(finished.iter().find(|f| f.id == 4).unwrap().stop, StopReason::ContextFull);
    assert!(seen[&2].iter().all(|c| c.top.len() == 3 && c.logprob.is_some()));
}

/// A sequence that asks for no tokens never joins; bad options and prompts are errors naming them.
#[test]
fn continuous_batching_rejects_what_it_cannot_decode() {
    use qkv::decode::continuous::ContinuousBatch;
    use qkv::decode::generate::{GenerateOptions, StopReason};
    let loaded = gpt2::load(&fixture("GPT2LMHeadModel"), &Device::Cpu).unwrap();
    let model = &loaded.model;
    let mut batch = ContinuousBatch::new(model);
    let none = GenerateOptions { max_new_tokens: 0, ..GenerateOptions::default() };
    assert_eq!(batch.join(model, 1, &[3], none).unwrap(), Some(StopReason::MaxNewTokens));
    assert!(batch.is_empty());
    let long = vec![1u32; model.config().n_positions + 1];
    let error = batch.join(model, 2, &long, GenerateOptions::default()).unwrap_err().to_string();
    assert!(error.contains("prompt") && error.contains("n_positions"), "{error}");
    let error = batch.join(model, 3, &[], GenerateOptions::default()).unwrap_err().to_string();
    assert!(error.contains("prompt"), "{error}");
    let sliding = GenerateOptions { slide: true, ..GenerateOptions::default() };
    assert!(batch.join(model, 4, &[1], sliding).unwrap_err().to_string().contains("slide"));
    batch.join(model, 5, &[1], GenerateOptions::default()).unwrap();
    let error = batch.join(model, 5, &[2], GenerateOptions::default()).unwrap_err().to_string();
    assert!(error.contains("sequence id"), "{error}");
    assert!(!batch.cancel(99).unwrap());
}
