//! Properties that need no reference implementation: causality, padding invariance, masked rows, determinism,
//! dropout's scale, the sinusoids' shift property, errors instead of panics, and end-to-end learning.

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use qkv::models::{PositionEncoding, Transformer, TransformerConfig};
use qkv::nn::{
    params::named_vars, seeded_var_builder, AttentionConfig, AttentionMask, Decoder, Dropout, DropoutRates, Embedding,
    Encoder, LayerConfig, LearnedPosition, Linear, Mode, MultiHeadAttention, NormPosition, Normalization,
    ScaledDotProduct, SinusoidalPosition, WeightInit,
};
use qkv::Error;

const C: usize = 16;

fn fresh(seed: u64) -> (VarMap, VarBuilder<'static>) {
    let vars = VarMap::new();
    let vb = seeded_var_builder(&vars, seed, DType::F32, &Device::Cpu);
    (vars, vb)
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    // Deterministic pseudo-random values without a global RNG: a seeded parameter draw.
    let (_, vb) = fresh(seed);
    vb.get_with_hints(shape, "x", candle_nn::Init::Randn { mean: 0.0, stdev: 1.0 }).unwrap()
}

fn small_layer(position: NormPosition) -> LayerConfig {
    LayerConfig { norm_position: position, dropout: DropoutRates::uniform(0.0), ..LayerConfig::new(C, 4, 32) }
}

fn tiny_model(position_encoding: PositionEncoding, dropout: f64) -> TransformerConfig {
    TransformerConfig {
        vocab_size: 20,
        d_model: C,
        encoder_layers: 2,
        decoder_layers: 2,
        encoder_attention_heads: 4,
        decoder_attention_heads: 4,
        encoder_ffn_dim: 32,
        decoder_ffn_dim: 32,
        dropout,
        attention_dropout: dropout,
        activation_dropout: dropout,
        position_encoding,
        max_position_embeddings: 16,
        relative_max_distance: 3,
        // A complex embedding depends on position: there is no one table to tie the output to.
        tie_word_embeddings: position_encoding != PositionEncoding::Complex,
        ..TransformerConfig::default()
    }
}

/// Every kind of position information the model has.
const ENCODINGS: [PositionEncoding; 6] = [
    PositionEncoding::Sinusoidal,
    PositionEncoding::Learned,
    PositionEncoding::Relative,
    PositionEncoding::Rotary,
    PositionEncoding::Complex,
    PositionEncoding::None,
];

fn ids(rows: &[&[u32]]) -> Tensor {
    let width = rows[0].len();
    Tensor::from_vec(rows.concat(), (rows.len(), width), &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn max_relative_difference(a: &Tensor, b: &Tensor) -> f32 {
    let (a, b) = (values(a), values(b));
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

// ---- causality ----

#[test]
fn changing_a_future_token_leaves_earlier_attention_outputs_bit_identical() {
    let (_, vb) = fresh(1);
    let mha = MultiHeadAttention::new(&AttentionConfig::new(C, 4), WeightInit::XavierUniform, vb).unwrap();
    let causal = AttentionMask::causal(6, 6, &Device::Cpu).unwrap();
    let x = randn(&[2, 6, C], 2);
    let changed = x.slice_assign(&[0..2, 4..5, 0..C], &randn(&[2, 1, C], 3)).unwrap();
    let a = mha.forward(&x, &x, Some(&causal), &mut Mode::Eval).unwrap();
    let b = mha.forward(&changed, &changed, Some(&causal), &mut Mode::Eval).unwrap();
    assert_eq!(values(&a.narrow(1, 0, 4).unwrap()), values(&b.narrow(1, 0, 4).unwrap()));
    assert_ne!(values(&a.narrow(1, 4, 2).unwrap()), values(&b.narrow(1, 4, 2).unwrap()));
}

#[test]
fn changing_a_future_target_token_leaves_earlier_logits_bit_identical() {
    for encoding in ENCODINGS {
        for norm in [NormPosition::Post, NormPosition::Pre] {
            let config = TransformerConfig { norm_position: norm, ..tiny_model(encoding, 0.0) };
            let (_, vb) = fresh(4);
            let model = Transformer::new(&config, vb).unwrap();
            let src = ids(&[&[5, 6, 7, 8, 9]]);
            let valid = Tensor::ones((1, 5), DType::U8, &Device::Cpu).unwrap();
            let a = model.forward(&src, &valid, &ids(&[&[1, 10, 11, 12, 13]]), &mut Mode::Eval).unwrap();
            let b = model.forward(&src, &valid, &ids(&[&[1, 10, 11, 19, 13]]), &mut Mode::Eval).unwrap();
            let earlier = |t: &Tensor| values(&t.narrow(1, 0, 3).unwrap());
            assert_eq!(earlier(&a), earlier(&b), "{encoding:?} {norm:?}");
            assert_ne!(values(&a), values(&b), "{encoding:?} {norm:?}: the change must matter somewhere");
        }
    }
}

// ---- padding ----

#[test]
fn appending_masked_padding_leaves_real_positions_unchanged() {
    for norm in [NormPosition::Post, NormPosition::Pre] {
        let config = small_layer(norm);
        let (_, vb) = fresh(5);
        let encoder = Encoder::new(&config, 2, true, vb.pp("encoder")).unwrap();
        let decoder = Decoder::new(&config, 2, true, vb.pp("decoder")).unwrap();
        let src = randn(&[1, 5, C], 6);
        let padded = Tensor::cat(&[&src, &randn(&[1, 3, C], 7)], 1).unwrap();
        let mask = |real: usize, total: usize| {
            let v: Vec<u8> = (0..total).map(|i| u8::from(i < real)).collect();
            AttentionMask::padding(&Tensor::from_vec(v, (1, total), &Device::Cpu).unwrap()).unwrap()
        };
        let (short_mask, long_mask) = (mask(5, 5), mask(5, 8));
        let short = encoder.forward(&src, Some(&short_mask), None, &mut Mode::Eval).unwrap();
        let long = encoder.forward(&padded, Some(&long_mask), None, &mut Mode::Eval).unwrap();
        assert!(max_relative_difference(&long.narrow(1, 0, 5).unwrap(), &short) <= 1e-6, "encoder {norm:?}");

        let tgt = randn(&[1, 4, C], 8);
        let causal = AttentionMask::causal(4, 4, &Device::Cpu).unwrap();
        let a = decoder.forward(&tgt, &short, (Some(&causal), Some(&short_mask)), None, &mut Mode::Eval).unwrap();
        let b = decoder.forward(&tgt, &long, (Some(&causal), Some(&long_mask)), None, &mut Mode::Eval).unwrap();
        assert!(max_relative_difference(&b, &a) <= 1e-6, "decoder over padded memory {norm:?}");
    }
}

#[test]
fn padding_a_source_batch_leaves_each_translation_unchanged() {
    let (_, vb) = fresh(9);
    let model = Transformer::new(&tiny_model(PositionEncoding::Relative, 0.0), vb).unwrap();
    let tgt = ids(&[&[1, 10, 11]]);
    let alone = model
        .forward(&ids(&[&[5, 6, 7]]), &Tensor::ones((1, 3), DType::U8, &Device::Cpu).unwrap(), &tgt, &mut Mode::Eval)
        .unwrap();
    let valid = Tensor::new(&[[1u8, 1, 1, 0, 0]], &Device::Cpu).unwrap();
    let padded = model.forward(&ids(&[&[5, 6, 7, 0, 0]]), &valid, &tgt, &mut Mode::Eval).unwrap();
    assert!(max_relative_difference(&padded, &alone) <= 1e-6);
}

// ---- fully masked rows ----

#[test]
fn queries_with_every_key_masked_get_zero_weights_and_outputs() {
    let attention = ScaledDotProduct::new(true, 0.0).unwrap();
    let q = candle_core::Var::from_tensor(&randn(&[2, 2, 3, 4], 10)).unwrap();
    let k = randn(&[2, 2, 5, 4], 11);
    let v = randn(&[2, 2, 5, 4], 12);
    let valid = Tensor::new(&[[1u8, 1, 0, 0, 0], [0, 0, 0, 0, 0]], &Device::Cpu).unwrap();
    let mask = AttentionMask::padding(&valid).unwrap();
    let (out, weights) = attention.forward((&q, &k, &v), Some(&mask), None, &mut Mode::Eval, true).unwrap();
    let weights = weights.unwrap();
    assert!(values(&out.get(1).unwrap()).iter().all(|&x| x == 0.0));
    assert!(values(&weights.get(1).unwrap()).iter().all(|&x| x == 0.0));
    let row_sums = values(&weights.get(0).unwrap().sum(D::Minus1).unwrap());
    assert!(row_sums.iter().all(|s| (s - 1.0).abs() < 1e-6));
    let grads = out.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    assert!(values(grads.get(&q).unwrap()).iter().all(|g| g.is_finite()));
    // The fused path (no weights requested) zeroes the same rows.
    let (fused, none) = attention.forward((&q, &k, &v), Some(&mask), None, &mut Mode::Eval, false).unwrap();
    assert!(none.is_none() && max_relative_difference(&fused, &out) <= 1e-6);
    assert!(values(&fused.get(1).unwrap()).iter().all(|&x| x == 0.0));

    // Causal and padding together can also empty a row: a padded first position sees only itself.
    let first_padded = Tensor::new(&[[0u8, 1, 1]], &Device::Cpu).unwrap();
    let both = AttentionMask::padding(&first_padded)
        .unwrap()
        .and(&AttentionMask::causal(3, 3, &Device::Cpu).unwrap())
        .unwrap();
    let (_, vb) = fresh(13);
    let mha = MultiHeadAttention::new(
        &AttentionConfig { bias: false, ..AttentionConfig::new(C, 4) },
        WeightInit::XavierUniform,
        vb,
    )
    .unwrap();
    let x = randn(&[1, 3, C], 14);
    let out = mha.forward(&x, &x, Some(&both), &mut Mode::Eval).unwrap();
    assert!(values(&out.narrow(1, 0, 1).unwrap()).iter().all(|&x| x == 0.0));
    assert!(values(&out).iter().all(|x| x.is_finite()));
}

// ---- train and eval ----

#[test]
fn evaluation_is_deterministic_and_training_draws_from_its_seed() {
    let (_, vb) = fresh(15);
    let model = Transformer::new(&tiny_model(PositionEncoding::Sinusoidal, 0.3), vb).unwrap();
    let (src, tgt) = (ids(&[&[5, 6, 7, 8]]), ids(&[&[1, 9, 10]]));
    let valid = Tensor::ones((1, 4), DType::U8, &Device::Cpu).unwrap();
    let run = |mode: &mut Mode| values(&model.forward(&src, &valid, &tgt, mode).unwrap());
    assert_eq!(run(&mut Mode::Eval), run(&mut Mode::Eval));
    assert_eq!(run(&mut Mode::train(1)), run(&mut Mode::train(1)));
    assert_ne!(run(&mut Mode::train(1)), run(&mut Mode::train(2)));
    assert_ne!(run(&mut Mode::train(1)), run(&mut Mode::Eval));
}

#[test]
fn training_dropout_keeps_the_expected_scale() {
    let x = Tensor::ones((200, 500), DType::F32, &Device::Cpu).unwrap();
    for p in [0.1, 0.3, 0.5] {
        let y = values(&Dropout::new(p, "p").unwrap().forward(&x, &mut Mode::train(7)).unwrap());
        let n = y.len() as f64;
        let mean = y.iter().map(|&v| v as f64).sum::<f64>() / n;
        let dropped = y.iter().filter(|&&v| v == 0.0).count() as f64 / n;
        assert!((mean - 1.0).abs() < 0.01, "p = {p}: mean {mean}");
        assert!((dropped - p).abs() < 0.01, "p = {p}: dropped {dropped}");
        let kept = 1.0 / (1.0 - p) as f32;
        assert!(y.iter().all(|&v| v == 0.0 || (v - kept).abs() < 1e-6));
    }
}

// ---- positions ----

/// §3.5: "for any fixed offset k, PE(pos+k) can be represented as a linear function of PE(pos)" — each
/// (sin, cos) pair rotates by k·ωᵢ, so M_k is block-diagonal with 2×2 rotations and does not depend on pos.
#[test]
fn sinusoid_at_pos_plus_k_is_a_fixed_linear_map_of_pos() {
    let (d, len) = (32, 300);
    let pe = SinusoidalPosition::new(d).unwrap().forward(len + 100, 0, &Device::Cpu).unwrap();
    let pe = pe.to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap();
    for k in [1usize, 3, 17, 100] {
        for pos in 0..len {
            for pair in 0..d / 2 {
                let omega = 1.0 / 10000f64.powf(2.0 * pair as f64 / d as f64);
                let (s, c) = ((k as f64 * omega).sin(), (k as f64 * omega).cos());
                let (sin_pos, cos_pos) = (pe[pos][2 * pair], pe[pos][2 * pair + 1]);
                let rotated = [c * sin_pos + s * cos_pos, -s * sin_pos + c * cos_pos];
                let actual = [pe[pos + k][2 * pair], pe[pos + k][2 * pair + 1]];
                for (r, a) in rotated.iter().zip(actual) {
                    assert!((r - a).abs() < 1e-5, "k {k} pos {pos} pair {pair}: {r} vs {a}");
                }
            }
        }
    }
}

// ---- errors, not panics ----

fn message(result: Result<impl std::fmt::Debug, Error>) -> String {
    result.expect_err("expected an error").to_string()
}

#[test]
fn bad_shapes_and_options_are_errors_that_name_the_problem() {
    let (_, vb) = fresh(16);
    let err = message(MultiHeadAttention::new(&AttentionConfig::new(10, 3), WeightInit::XavierUniform, vb.pp("a")));
    assert!(err.contains("num_heads = 3") && err.contains("d_model = 10"), "{err}");

    let err = message(Encoder::new(&LayerConfig { d_ff: 0, ..small_layer(NormPosition::Post) }, 1, false, vb.pp("e")));
    assert!(err.contains("d_ff"), "{err}");

    let linear = Linear::new(vb.pp("l"), 4, 3, true, WeightInit::XavierUniform).unwrap();
    let err = message(linear.forward(&randn(&[2, 5], 17)));
    assert!(err.contains("linear input") && err.contains("[2, 5]"), "{err}");

    let mha = MultiHeadAttention::new(&AttentionConfig::new(C, 4), WeightInit::XavierUniform, vb.pp("m")).unwrap();
    let err = message(mha.forward(&randn(&[3, C], 18), &randn(&[3, C], 18), None, &mut Mode::Eval));
    assert!(err.contains("attention query"), "{err}");
    let err = message(mha.forward(&randn(&[2, 3, C], 19), &randn(&[1, 4, C], 20), None, &mut Mode::Eval));
    assert!(err.contains("attention memory") && err.contains("(2, S, 16)"), "{err}");
    let wrong_keys = AttentionMask::causal(3, 3, &Device::Cpu).unwrap();
    let x = randn(&[1, 5, C], 21);
    assert!(mha.forward(&x, &x, Some(&wrong_keys), &mut Mode::Eval).is_err());

    let embedding = Embedding::token(vb.pp("t"), 10, C, true, WeightInit::XavierUniform).unwrap();
    let err = message(embedding.forward(&ids(&[&[3, 12]])));
    assert!(err.contains("token id: 12") && err.contains("< 10"), "{err}");
    let err = message(embedding.forward(&randn(&[2], 22)));
    assert!(err.contains("input_ids"), "{err}");

    let positions = LearnedPosition::new(vb.pp("p"), 8, C, WeightInit::XavierUniform).unwrap();
    assert!(message(positions.forward(9, 0)).contains("max_len"));

    assert!(message(AttentionMask::from_visible(&Tensor::ones(3, DType::U8, &Device::Cpu).unwrap())).contains("mask"));
    assert!(message(Dropout::new(1.5, "dropout.residual")).contains("dropout.residual"));

    let (_, vb) = fresh(23);
    let err = message(Transformer::new(
        &TransformerConfig { pad_token_id: 99, ..tiny_model(PositionEncoding::Sinusoidal, 0.0) },
        vb.pp("x"),
    ));
    assert!(err.contains("pad_token_id"), "{err}");
    let model = Transformer::new(&tiny_model(PositionEncoding::Learned, 0.0), vb.pp("y")).unwrap();
    let src = Tensor::new(&[5u32, 6], &Device::Cpu).unwrap();
    let valid = Tensor::ones(2, DType::U8, &Device::Cpu).unwrap();
    assert!(model.forward(&src, &valid, &ids(&[&[1]]), &mut Mode::Eval).is_err());
    let long: Vec<u32> = vec![5; 17];
    let valid = Tensor::ones((1, 17), DType::U8, &Device::Cpu).unwrap();
    let err = message(model.forward(&ids(&[&long]), &valid, &ids(&[&[1]]), &mut Mode::Eval));
    assert!(err.contains("position: 16"), "{err}");
}

// ---- training ----

#[test]
fn gradients_reach_every_parameter_and_tied_weights_are_one_tensor() {
    for encoding in ENCODINGS {
        for tied in [true, false] {
            let config = TransformerConfig {
                share_encoder_decoder_embeddings: tied,
                tie_word_embeddings: tied && encoding != PositionEncoding::Complex,
                ..tiny_model(encoding, 0.1)
            };
            let (vars, vb) = fresh(24);
            let model = Transformer::new(&config, vb).unwrap();
            let names: Vec<String> = named_vars(&vars).into_iter().map(|(n, _)| n).collect();
            let embeddings: Vec<&String> =
                names.iter().filter(|n| n.contains("embed_tokens") || n.starts_with("shared")).collect();
            // A complex embedding is three tables: amplitude, frequency and phase.
            let per_stack = if encoding == PositionEncoding::Complex { 3 } else { 1 };
            assert_eq!(embeddings.len(), per_stack * if tied { 1 } else { 2 }, "{names:?}");
            assert_eq!(names.iter().any(|n| n.starts_with("lm_head")), !config.tie_word_embeddings);

            let valid = Tensor::new(&[[1u8, 1, 1, 0], [1, 1, 1, 1]], &Device::Cpu).unwrap();
            let logits = model
                .forward(
                    &ids(&[&[5, 6, 7, 0], &[8, 9, 10, 11]]),
                    &valid,
                    &ids(&[&[1, 12, 13], &[1, 14, 15]]),
                    &mut Mode::train(3),
                )
                .unwrap();
            let targets = Tensor::new(&[12u32, 13, 2, 14, 15, 2], &Device::Cpu).unwrap();
            let loss = qkv::train::cross_entropy(&logits.flatten_to(1).unwrap(), &targets, Some(0), 0.1).unwrap();
            let grads = loss.backward().unwrap();
            for (name, var) in named_vars(&vars) {
                let g = grads.get(&var).unwrap_or_else(|| panic!("{encoding:?}: no gradient for {name}"));
                let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(norm > 0.0 && norm.is_finite(), "{encoding:?} tied={tied}: gradient of {name} is {norm}");
            }
        }
    }
}

/// With BatchNorm in every sub-layer (and the final norms of pre-norm stacks) the gradient still reaches every
/// parameter, through the batch statistics; the running statistics get none, but the training pass moved them.
#[test]
fn gradients_reach_every_parameter_with_batch_norm() {
    for norm_position in [NormPosition::Post, NormPosition::Pre] {
        let config = TransformerConfig {
            normalization: Normalization::BatchNorm,
            norm_position,
            ..tiny_model(PositionEncoding::Sinusoidal, 0.1)
        };
        let (vars, vb) = fresh(24);
        let model = Transformer::new(&config, vb).unwrap();
        let valid = Tensor::new(&[[1u8, 1, 1, 0], [1, 1, 1, 1]], &Device::Cpu).unwrap();
        let tgt = ids(&[&[1, 12, 13, 0], &[1, 14, 15, 16]]);
        let logits = model.forward(&ids(&[&[5, 6, 7, 0], &[8, 9, 10, 11]]), &valid, &tgt, &mut Mode::train(3)).unwrap();
        let targets = Tensor::new(&[12u32, 13, 2, 0, 14, 15, 16, 2], &Device::Cpu).unwrap();
        let loss = qkv::train::cross_entropy(&logits.flatten_to(1).unwrap(), &targets, Some(0), 0.1).unwrap();
        let grads = loss.backward().unwrap();
        let mut statistics = 0;
        for (name, var) in named_vars(&vars) {
            if qkv::nn::norm::is_running_statistic(&name) {
                assert!(grads.get(&var).is_none(), "{norm_position:?}: {name} got a gradient");
                let start = if name.ends_with("running_mean") { 0.0 } else { 1.0 };
                assert!(values(&var).iter().any(|&v| v != start), "{norm_position:?}: {name} never moved");
                statistics += 1;
                continue;
            }
            let g = grads.get(&var).unwrap_or_else(|| panic!("{norm_position:?}: no gradient for {name}"));
            let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(norm > 0.0 && norm.is_finite(), "{norm_position:?}: gradient of {name} is {norm}");
        }
        // Two statistics per norm: 2 + 3 sub-layers per encoder + decoder layer, 2 layers each, and with
        // pre-norm the two final norms.
        let norms = 2 * (2 + 3) + if norm_position == NormPosition::Pre { 2 } else { 0 };
        assert_eq!(statistics, 2 * norms);
    }
}

/// The running statistics travel with the parameters: a model loaded from the saved file evaluates exactly as
/// the trained one does (and a fresh one, with the starting 0 and 1, does not).
#[test]
fn batch_norm_running_statistics_are_saved_and_loaded() {
    let config =
        TransformerConfig { normalization: Normalization::BatchNorm, ..tiny_model(PositionEncoding::Sinusoidal, 0.0) };
    let (vars, vb) = fresh(24);
    let model = Transformer::new(&config, vb).unwrap();
    let (src, tgt) = (ids(&[&[5, 6, 7, 0], &[8, 9, 10, 11]]), ids(&[&[1, 12, 13, 0], &[1, 14, 15, 16]]));
    let valid = Tensor::new(&[[1u8, 1, 1, 0], [1, 1, 1, 1]], &Device::Cpu).unwrap();
    model.forward(&src, &valid, &tgt, &mut Mode::train(1)).unwrap();
    let dir = std::env::temp_dir().join(format!("qkv-batch-norm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.safetensors");
    qkv::hub::save_parameters(&named_vars(&vars), &path).unwrap();
    let (loaded_vars, vb) = fresh(24);
    let loaded = Transformer::new(&config, vb).unwrap();
    let before = loaded.forward(&src, &valid, &tgt, &mut Mode::Eval).unwrap();
    let report = qkv::hub::load_parameters(&named_vars(&loaded_vars), &path).unwrap();
    assert!(report.unused.is_empty(), "{:?}", report.unused);
    std::fs::remove_dir_all(&dir).unwrap();
    let trained = model.forward(&src, &valid, &tgt, &mut Mode::Eval).unwrap();
    let after = loaded.forward(&src, &valid, &tgt, &mut Mode::Eval).unwrap();
    assert_eq!(values(&after), values(&trained));
    assert_ne!(values(&before), values(&trained));
}

/// BatchNorm tells real target positions from padding by the pad id: a BOS that is the pad id is refused, and
/// so is a run that would deal each batch into shards with statistics of their own.
#[test]
fn batch_norm_refuses_what_it_cannot_do() {
    let config = TransformerConfig {
        normalization: Normalization::BatchNorm,
        bos_token_id: 0,
        ..tiny_model(PositionEncoding::Sinusoidal, 0.0)
    };
    let err = message(config.validate());
    assert!(err.contains("normalization") && err.contains("bos_token_id"), "{err}");
    use qkv::train::options::TrainingOptions;
    let mut synthetic =
        qkv::train::synthetic::SyntheticConfig { normalization: Normalization::BatchNorm, ..Default::default() };
    synthetic.run.shards = 2;
    let err = message(synthetic.validate());
    assert!(err.contains("shards") && err.contains("batch_norm"), "{err}");
    synthetic.run.shards = 1;
    synthetic.validate().unwrap();
}

#[test]
fn encoder_decoder_learns_to_copy_end_to_end() {
    use qkv::train::synthetic::{run, SyntheticConfig, Task};
    use qkv::train::trainer::LoopSettings;
    let config = SyntheticConfig { task: Task::Copy, max_len: 6, eval_size: 200, ..SyntheticConfig::default() };
    let config = SyntheticConfig { run: LoopSettings { max_steps: Some(300), ..config.run.clone() }, ..config };
    let mut losses = Vec::new();
    let report = run(&config, |step| losses.push(step.loss)).unwrap();
    assert_eq!(losses.len(), 300);
    assert!(losses[299] < losses[0] / 5.0, "loss {} → {}", losses[0], losses[299]);
    // Chance is 10^-len; 0.8 leaves margin for numerically different but equally valid runs.
    assert!(report.exact_match_rate() >= 0.8, "exact match {}", report.exact_match_rate());
}

#[test]
fn unscaled_attention_equals_scaled_attention_on_queries_times_sqrt_dh() {
    let (q, k, v) = (randn(&[1, 2, 3, 4], 25), randn(&[1, 2, 5, 4], 26), randn(&[1, 2, 5, 4], 27));
    let scaled = ScaledDotProduct::new(true, 0.0).unwrap();
    let unscaled = ScaledDotProduct::new(false, 0.0).unwrap();
    let (a, wa) = scaled.forward((&(&q * 2.0).unwrap(), &k, &v), None, None, &mut Mode::Eval, true).unwrap(); // √Dh = 2
    let (b, wb) = unscaled.forward((&q, &k, &v), None, None, &mut Mode::Eval, true).unwrap();
    let (wa, wb) = (wa.unwrap(), wb.unwrap());
    assert!(max_relative_difference(&a, &b) <= 1e-6 && max_relative_difference(&wa, &wb) <= 1e-6);
    let (_, plain) = scaled.forward((&q, &k, &v), None, None, &mut Mode::Eval, true).unwrap();
    assert!(max_relative_difference(&plain.unwrap(), &wb) > 1e-3, "the option must change the weights");
}

// ---- GPT-2 (decoder-only) ----

fn tiny_gpt2(tied: bool) -> qkv::models::Gpt2Config {
    qkv::models::Gpt2Config {
        vocab_size: 30,
        n_positions: 12,
        n_embd: C,
        n_layer: 2,
        n_head: 4,
        tie_word_embeddings: tied,
        ..qkv::models::Gpt2Config::default()
    }
}

#[test]
fn gpt2_future_tokens_never_change_earlier_logits() {
    let (_, vb) = fresh(30);
    let model = qkv::models::Gpt2::new(&tiny_gpt2(true), vb).unwrap();
    let a = model.forward(&ids(&[&[1, 2, 3, 4, 5, 6]]), &mut Mode::Eval).unwrap();
    let b = model.forward(&ids(&[&[1, 2, 3, 4, 29, 0]]), &mut Mode::Eval).unwrap();
    assert_eq!(values(&a.narrow(1, 0, 4).unwrap()), values(&b.narrow(1, 0, 4).unwrap()));
    assert_ne!(values(&a.narrow(1, 4, 2).unwrap()), values(&b.narrow(1, 4, 2).unwrap()));
    let err = message(model.forward(&ids(&[&[1; 13]]), &mut Mode::Eval));
    assert!(err.contains("position: 12") && err.contains("< 12"), "{err}");
}

#[test]
fn gpt2_gradients_reach_every_parameter_and_the_head_is_tied() {
    for tied in [true, false] {
        let (vars, vb) = fresh(31);
        let model = qkv::models::Gpt2::new(&tiny_gpt2(tied), vb).unwrap();
        let names: Vec<String> = named_vars(&vars).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names.iter().any(|n| n.starts_with("lm_head")), !tied, "{names:?}");
        let logits = model.forward(&ids(&[&[1, 2, 3, 4], &[5, 6, 7, 8]]), &mut Mode::train(1)).unwrap();
        let targets = Tensor::new(&[2u32, 3, 4, 5, 6, 7, 8, 9], &Device::Cpu).unwrap();
        let loss = qkv::train::cross_entropy(&logits.flatten_to(1).unwrap(), &targets, None, 0.0).unwrap();
        let grads = loss.backward().unwrap();
        for (name, var) in named_vars(&vars) {
            let g = grads.get(&var).unwrap_or_else(|| panic!("no gradient for {name}"));
            let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(norm > 0.0 && norm.is_finite(), "tied={tied}: gradient of {name} is {norm}");
        }
    }
}
