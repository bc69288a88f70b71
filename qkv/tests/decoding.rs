//! Decoding invariants: the key/value cache changes nothing but speed, beam 1 is greedy, and a beam wide enough
//! to keep every hypothesis finds the best output an exhaustive search finds.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use qkv::decode::{beam_search, greedy, DecodeOptions};
use qkv::models::{PositionEncoding, Transformer, TransformerConfig};
use qkv::nn::{seeded_var_builder, Mode, NormPosition, Normalization};

fn model(
    position_encoding: PositionEncoding,
    norm_position: NormPosition,
    vocab_size: usize,
    seed: u64,
) -> Transformer {
    let vars = VarMap::new();
    let config = config(position_encoding, norm_position, vocab_size);
    Transformer::new(&config, seeded_var_builder(&vars, seed, DType::F32, &Device::Cpu)).unwrap()
}

fn config(position_encoding: PositionEncoding, norm_position: NormPosition, vocab_size: usize) -> TransformerConfig {
    TransformerConfig {
        vocab_size,
        d_model: 16,
        encoder_layers: 2,
        decoder_layers: 2,
        encoder_attention_heads: 4,
        decoder_attention_heads: 4,
        encoder_ffn_dim: 32,
        decoder_ffn_dim: 32,
        dropout: 0.0,
        attention_dropout: 0.0,
        activation_dropout: 0.0,
        position_encoding,
        norm_position,
        max_position_embeddings: 64,
        relative_max_distance: 3,
        tie_word_embeddings: position_encoding != PositionEncoding::Complex,
        ..TransformerConfig::default()
    }
}

/// Three sources of different lengths, padded.
fn sources() -> (Tensor, Tensor) {
    let src = Tensor::new(&[[5u32, 6, 7, 8, 2], [9, 10, 2, 0, 0], [11, 12, 13, 2, 0]], &Device::Cpu).unwrap();
    let valid = Tensor::new(&[[1u8, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], &Device::Cpu).unwrap();
    (src, valid)
}

const KINDS: [(PositionEncoding, NormPosition); 6] = [
    (PositionEncoding::Sinusoidal, NormPosition::Post),
    (PositionEncoding::Learned, NormPosition::Pre),
    (PositionEncoding::Relative, NormPosition::Post),
    (PositionEncoding::Relative, NormPosition::Pre),
    (PositionEncoding::Rotary, NormPosition::Post),
    (PositionEncoding::Complex, NormPosition::Pre),
];

/// Logits for each new token from the cache equal those of recomputing the whole prefix, at every step,
/// whether the steps feed one token or several.
#[test]
fn cached_steps_give_the_logits_of_full_recomputation() {
    for (kind, norm) in KINDS {
        assert_cached_steps_match_full(&model(kind, norm, 30, 3), &format!("{kind:?} {norm:?}"));
    }
}

/// With BatchNorm, evaluation normalises every position with the running statistics alone, so the cache stays
/// exact; two training passes first move those statistics away from their starting 0 and 1.
#[test]
fn cached_steps_with_batch_norm_give_the_logits_of_full_recomputation() {
    for norm in [NormPosition::Post, NormPosition::Pre] {
        let config = TransformerConfig {
            normalization: Normalization::BatchNorm,
            ..config(PositionEncoding::Sinusoidal, norm, 30)
        };
        let vars = VarMap::new();
        let model = Transformer::new(&config, seeded_var_builder(&vars, 3, DType::F32, &Device::Cpu)).unwrap();
        let (src, valid) = sources();
        let tgt = Tensor::new(&[[1u32, 14, 15, 2], [1, 16, 2, 0], [1, 17, 18, 19]], &Device::Cpu).unwrap();
        for seed in [1, 2] {
            model.forward(&src, &valid, &tgt, &mut Mode::train(seed)).unwrap();
        }
        assert_cached_steps_match_full(&model, &format!("batch norm {norm:?}"));
    }
}

/// Feeds a 9-token target in steps of 1, 1, 3, 1, 2 and 1 tokens through the cache and compares each step's
/// logits with those of the whole prefix recomputed.
fn assert_cached_steps_match_full(model: &Transformer, label: &str) {
    let tolerance = 1e-5; // max |Δ| / max |logit|
    let (src, valid) = sources();
    let src_mask = Transformer::source_mask(&valid).unwrap();
    let memory = model.encode(&src, &src_mask, &mut Mode::Eval).unwrap();
    let tgt = Tensor::new(&[[1u32, 14, 15, 16, 17, 18, 19, 20, 21]; 3], &Device::Cpu).unwrap();
    let full = model.project(&model.decode(&tgt, &memory, &src_mask, &mut Mode::Eval).unwrap()).unwrap();
    let mut cache = model.new_cache();
    let mut start = 0;
    for step in [1, 1, 3, 1, 2, 1] {
        let piece = tgt.narrow(1, start, step).unwrap();
        let hidden = model.decode_step(&piece, &memory, &src_mask, &mut cache).unwrap();
        let cached = model.project(&hidden).unwrap();
        let expected = full.narrow(1, start, step).unwrap();
        let diff = (cached - &expected).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let scale = expected.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff / scale <= tolerance, "{label} positions {start}..{}: {}", start + step, diff / scale);
        start += step;
        assert_eq!(cache.len(), start);
    }
}

#[test]
fn cached_and_uncached_decoding_give_identical_tokens() {
    let mut tokens_compared = 0;
    for (kind, norm) in KINDS {
        let model = model(kind, norm, 30, 5);
        let (src, valid) = sources();
        for beam in [1, 4] {
            let cached = DecodeOptions { beam, ..DecodeOptions::default() };
            let uncached = DecodeOptions { use_cache: false, ..cached };
            let a = beam_search(&model, &src, &valid, &cached).unwrap();
            let b = beam_search(&model, &src, &valid, &uncached).unwrap();
            assert_eq!(
                a.iter().map(|h| &h.tokens).collect::<Vec<_>>(),
                b.iter().map(|h| &h.tokens).collect::<Vec<_>>()
            );
            tokens_compared += a.iter().map(|h| h.tokens.len()).sum::<usize>();
        }
        let g1 = greedy(&model, &src, &valid, &DecodeOptions::greedy()).unwrap();
        let g2 = greedy(&model, &src, &valid, &DecodeOptions { use_cache: false, ..DecodeOptions::greedy() }).unwrap();
        assert_eq!(g1, g2, "{kind:?} {norm:?}");
        tokens_compared += g1.iter().map(Vec::len).sum::<usize>();
    }
    assert!(tokens_compared >= 50, "only {tokens_compared} tokens decoded: the comparison would be vacuous");
}

#[test]
fn beam_of_one_is_greedy_decoding() {
    let mut tokens_compared = 0;
    for seed in 0..6 {
        let model = model(PositionEncoding::Sinusoidal, NormPosition::Post, 16, seed);
        let (src, valid) = sources();
        for length_penalty in [0.0, 1.0] {
            let options = DecodeOptions { beam: 1, length_penalty, ..DecodeOptions::default() };
            let beam: Vec<Vec<u32>> =
                beam_search(&model, &src, &valid, &options).unwrap().into_iter().map(|h| h.tokens).collect();
            assert_eq!(beam, greedy(&model, &src, &valid, &options).unwrap(), "seed {seed}");
            tokens_compared += beam.iter().map(Vec::len).sum::<usize>();
        }
    }
    assert!(tokens_compared >= 50, "only {tokens_compared} tokens decoded: the comparison would be vacuous");
}

/// log p(tokens [, EOS] | source 0) by teacher forcing.
fn sequence_log_prob(model: &Transformer, src: &Tensor, valid: &Tensor, tokens: &[u32], with_eos: bool) -> f64 {
    let config = model.config();
    let mut input = vec![config.bos_token_id];
    input.extend(tokens);
    let mut targets = tokens.to_vec();
    if with_eos {
        targets.push(config.eos_token_id);
    } else {
        input.pop();
    }
    let tgt = Tensor::from_vec(input.clone(), (1, input.len()), &Device::Cpu).unwrap();
    let logits = model.forward(src, valid, &tgt, &mut Mode::Eval).unwrap().squeeze(0).unwrap();
    let rows = logits.to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap();
    targets
        .iter()
        .zip(rows)
        .map(|(&t, row)| {
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let log_sum = row.iter().map(|x| (x - max).exp()).sum::<f64>().ln() + max;
            row[t as usize] - log_sum
        })
        .sum()
}

/// With a 5-token vocabulary and outputs of at most 3 tokens there are 85 candidate outputs; a beam of 80 never
/// prunes one, so beam search must return the best of all of them under the length penalty.
#[test]
fn an_unpruned_beam_finds_the_exhaustive_optimum() {
    for seed in 0..4 {
        let model = model(PositionEncoding::Sinusoidal, NormPosition::Post, 5, 40 + seed);
        let src = Tensor::new(&[[3u32, 4, 2]], &Device::Cpu).unwrap();
        let valid = Tensor::ones((1, 3), DType::U8, &Device::Cpu).unwrap();
        let options = DecodeOptions { beam: 80, length_penalty: 0.7, max_len_a: 0.0, max_len_b: 3, use_cache: true };
        let found = beam_search(&model, &src, &valid, &options).unwrap().remove(0);
        let eos = model.config().eos_token_id;
        let penalty = |len: usize| ((5.0 + len as f64) / 6.0).powf(options.length_penalty);
        let mut best = (f64::NEG_INFINITY, Vec::new());
        let non_eos: Vec<u32> = (0..5).filter(|&t| t != eos).collect();
        let mut prefixes: Vec<Vec<u32>> = vec![vec![]];
        for len in 0..=3 {
            for p in &prefixes {
                // Ends with EOS before the limit, or is cut at the limit without it.
                if len < 3 {
                    let with_eos = sequence_log_prob(&model, &src, &valid, p, true) / penalty(len + 1);
                    if with_eos > best.0 {
                        best = (with_eos, p.clone());
                    }
                } else {
                    let cut = sequence_log_prob(&model, &src, &valid, p, false) / penalty(len);
                    if cut > best.0 {
                        best = (cut, p.clone());
                    }
                }
            }
            prefixes =
                prefixes.iter().flat_map(|p| non_eos.iter().map(move |&t| [p.clone(), vec![t]].concat())).collect();
        }
        assert_eq!(found.tokens, best.1, "seed {seed}");
        assert!((found.score - best.0).abs() < 1e-4, "seed {seed}: {} vs {}", found.score, best.0);
    }
}
