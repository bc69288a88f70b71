//! Parity with PyTorch (and with float64 re-statements of the papers where PyTorch has no module), on the
//! committed fixtures from tools/fixtures/make_fixtures.py.
//!
//! Tolerances, as max |qkv − reference| / max |reference| over each tensor: outputs 1e-5, gradients 1e-4.

mod support;

use candle_core::{DType, Device};
use qkv::nn::{
    params::named_vars, Activation, AttentionConfig, AttentionMask, BatchNorm, ComplexEmbedding, Decoder, DecoderLayer,
    DropoutRates, Embedding, Encoder, EncoderLayer, LayerConfig, LayerNorm, Mode, MultiHeadAttention, NormPosition,
    SinusoidalPosition, WeightInit,
};
use support::{relative_error, Fixture};

const OUTPUT_TOL: f64 = 1e-5;
const GRAD_TOL: f64 = 1e-4;

fn attention_parity(name: &str) {
    let fx = Fixture::load(name);
    let cross: bool = fx.config_value("cross");
    let config = AttentionConfig {
        bias: fx.config_value("bias"),
        relative_max_distance: fx.config.get("relative_max_distance").and_then(|v| v.as_u64()).map(|k| k as usize),
        rotary: fx.config.get("rotary").and_then(|v| v.as_bool()).unwrap_or(false),
        ..AttentionConfig::new(fx.config_usize("d_model"), fx.config_usize("num_heads"))
    };
    let (mha, vars) = fx.build(|vb| MultiHeadAttention::new(&config, WeightInit::XavierUniform, vb));
    let query = fx.input_var("query");
    let memory = if cross { fx.input_var("memory") } else { query.clone() };
    let mut mask = AttentionMask::padding(&fx.input("key_valid")).unwrap();
    if fx.config_value("causal") {
        let t = query.dim(1).unwrap();
        mask = mask.and(&AttentionMask::causal(t, t, &Device::Cpu).unwrap()).unwrap();
    }
    let (out, weights) = mha.forward_with_weights(&query, &memory, Some(&mask), &mut Mode::Eval).unwrap();
    let out_err = fx.check_output("output", &out, OUTPUT_TOL).max(fx.check_output("weights", &weights, OUTPUT_TOL));
    let grads = fx.loss(&[("output", &out), ("weights", &weights)]).backward().unwrap();
    let mut inputs = vec![("query", &query)];
    if cross {
        inputs.push(("memory", &memory));
    }
    let grad_err = fx.check_grads(&grads, &vars, &inputs, GRAD_TOL);
    fx.report(out_err, grad_err);
}

#[test]
fn multi_head_self_attention_causal_and_padding_matches_torch() {
    attention_parity("mha_self_causal_padding");
}

#[test]
fn multi_head_self_attention_without_bias_matches_torch() {
    attention_parity("mha_self_padding_nobias");
}

#[test]
fn multi_head_cross_attention_matches_torch() {
    attention_parity("mha_cross_padding");
}

/// Against a float64 statement of Shaw et al. (2018), eqs. (3)-(4).
#[test]
fn relative_position_attention_matches_float64_reference() {
    attention_parity("relative_attention");
}

/// Against a float64 statement of Su et al.'s RoPE in complex numbers (queries and keys times e^{i·m·θᵢ}).
#[test]
fn rotary_position_attention_matches_float64_reference() {
    attention_parity("rotary_attention");
}

fn layer_config(fx: &Fixture) -> LayerConfig {
    LayerConfig {
        activation: fx.config_value::<Activation>("activation"),
        norm_position: fx.config_value::<NormPosition>("norm_position"),
        layer_norm_eps: fx.config_value("layer_norm_eps"),
        dropout: DropoutRates::uniform(0.0),
        ..LayerConfig::new(fx.config_usize("d_model"), fx.config_usize("num_heads"), fx.config_usize("d_ff"))
    }
}

fn masks(fx: &Fixture) -> (AttentionMask, Option<AttentionMask>) {
    let source = AttentionMask::padding(&fx.input("src_valid")).unwrap();
    let target = fx.has("input.tgt_valid").then(|| {
        let tgt_valid = fx.input("tgt_valid");
        let t = tgt_valid.dim(1).unwrap();
        AttentionMask::padding(&tgt_valid).unwrap().and(&AttentionMask::causal(t, t, &Device::Cpu).unwrap()).unwrap()
    });
    (source, target)
}

fn encoder_layer_parity(name: &str) {
    let fx = Fixture::load(name);
    let config = layer_config(&fx);
    let (layer, vars) = fx.build(|vb| EncoderLayer::new(&config, vb));
    let x = fx.input_var("x");
    let (src_mask, _) = masks(&fx);
    let out = layer.forward(&x, Some(&src_mask), None, &mut Mode::Eval).unwrap();
    let out_err = fx.check_output("output", &out, OUTPUT_TOL);
    let grads = fx.loss(&[("output", &out)]).backward().unwrap();
    let grad_err = fx.check_grads(&grads, &vars, &[("x", &x)], GRAD_TOL);
    fx.report(out_err, grad_err);
}

#[test]
fn encoder_layer_post_ln_relu_matches_torch() {
    encoder_layer_parity("encoder_layer_post_relu");
}

#[test]
fn encoder_layer_post_ln_gelu_matches_torch() {
    encoder_layer_parity("encoder_layer_post_gelu");
}

#[test]
fn encoder_layer_pre_ln_relu_matches_torch() {
    encoder_layer_parity("encoder_layer_pre_relu");
}

#[test]
fn encoder_layer_pre_ln_gelu_matches_torch() {
    encoder_layer_parity("encoder_layer_pre_gelu");
}

#[test]
fn encoder_layer_pre_ln_gelu_tanh_matches_torch() {
    encoder_layer_parity("encoder_layer_pre_gelu_new");
}

fn decoder_layer_parity(name: &str) {
    let fx = Fixture::load(name);
    let config = layer_config(&fx);
    let (layer, vars) = fx.build(|vb| DecoderLayer::new(&config, vb));
    let (x, memory) = (fx.input_var("x"), fx.input_var("memory"));
    let (src_mask, tgt_mask) = masks(&fx);
    let out = layer.forward(&x, &memory, (tgt_mask.as_ref(), Some(&src_mask)), None, &mut Mode::Eval).unwrap();
    let out_err = fx.check_output("output", &out, OUTPUT_TOL);
    let grads = fx.loss(&[("output", &out)]).backward().unwrap();
    let grad_err = fx.check_grads(&grads, &vars, &[("x", &x), ("memory", &memory)], GRAD_TOL);
    fx.report(out_err, grad_err);
}

#[test]
fn decoder_layer_post_ln_relu_matches_torch() {
    decoder_layer_parity("decoder_layer_post_relu");
}

#[test]
fn decoder_layer_post_ln_gelu_matches_torch() {
    decoder_layer_parity("decoder_layer_post_gelu");
}

#[test]
fn decoder_layer_pre_ln_relu_matches_torch() {
    decoder_layer_parity("decoder_layer_pre_relu");
}

#[test]
fn decoder_layer_pre_ln_gelu_matches_torch() {
    decoder_layer_parity("decoder_layer_pre_gelu");
}

/// torch.nn.Transformer: two encoder and two decoder layers, each stack followed by a final LayerNorm.
fn transformer_parity(name: &str) {
    let fx = Fixture::load(name);
    let config = layer_config(&fx);
    let layers = fx.config_usize("num_layers");
    let ((encoder, decoder), vars) = fx.build(|vb| {
        Ok((
            Encoder::new(&config, layers, true, vb.pp("encoder"))?,
            Decoder::new(&config, layers, true, vb.pp("decoder"))?,
        ))
    });
    let (src, tgt) = (fx.input_var("src"), fx.input_var("tgt"));
    let (src_mask, tgt_mask) = masks(&fx);
    let memory = encoder.forward(&src, Some(&src_mask), None, &mut Mode::Eval).unwrap();
    let out = decoder.forward(&tgt, &memory, (tgt_mask.as_ref(), Some(&src_mask)), None, &mut Mode::Eval).unwrap();
    let out_err = fx.check_output("output", &out, OUTPUT_TOL);
    let grads = fx.loss(&[("output", &out)]).backward().unwrap();
    let grad_err = fx.check_grads(&grads, &vars, &[("src", &src), ("tgt", &tgt)], GRAD_TOL);
    fx.report(out_err, grad_err);
}

#[test]
fn two_layer_transformer_post_ln_matches_torch() {
    transformer_parity("transformer_post_relu");
}

#[test]
fn two_layer_transformer_pre_ln_matches_torch() {
    transformer_parity("transformer_pre_gelu");
}

/// The decoder-only model against the benchmark's PyTorch twin (tools/bench/train_gpt.py): logits and every
/// parameter's gradient, so `qkv bench train` and its reference time the same computation.
#[test]
fn gpt_matches_the_torch_benchmark_model() {
    let fx = Fixture::load("gpt_char");
    let config = qkv::models::Gpt2Config {
        vocab_size: fx.config_usize("vocab_size"),
        n_positions: fx.config_usize("n_positions"),
        n_embd: fx.config_usize("n_embd"),
        n_layer: fx.config_usize("n_layer"),
        n_head: fx.config_usize("n_head"),
        activation_function: Activation::Gelu,
        resid_pdrop: 0.0,
        embd_pdrop: 0.0,
        attn_pdrop: 0.0,
        bias: false,
        ..qkv::models::Gpt2Config::default()
    };
    let (model, vars) = fx.build(|vb| qkv::models::Gpt2::new(&config, vb));
    let logits = model.forward(&fx.input("ids"), &mut Mode::Eval).unwrap();
    let out_err = fx.check_output("logits", &logits, OUTPUT_TOL);
    let grads = fx.loss(&[("logits", &logits)]).backward().unwrap();
    let grad_err = fx.check_grads(&grads, &vars, &[], GRAD_TOL);
    fx.report(out_err, grad_err);
}

#[test]
fn layer_norm_matches_torch() {
    let fx = Fixture::load("layer_norm");
    let (norm, vars) = fx.build(|vb| LayerNorm::new(vb, fx.config_usize("d_model"), fx.config_value("layer_norm_eps")));
    let x = fx.input_var("x");
    let out = norm.forward(&x).unwrap();
    let out_err = fx.check_output("output", &out, OUTPUT_TOL);
    let grads = fx.loss(&[("output", &out)]).backward().unwrap();
    let grad_err = fx.check_grads(&grads, &vars, &[("x", &x)], GRAD_TOL);
    fx.report(out_err, grad_err);
}

#[test]
fn scaled_token_and_segment_embeddings_match_torch() {
    let fx = Fixture::load("embedding");
    let c = fx.config_usize("d_model");
    let init = WeightInit::Normal { std: 0.02 };
    let ((token, segment), vars) = fx.build(|vb| {
        Ok((
            Embedding::token(vb.pp("token"), fx.config_usize("vocab_size"), c, true, init)?,
            Embedding::segment(vb.pp("segment"), fx.config_usize("type_vocab_size"), c, init)?,
        ))
    });
    let out = (token.forward(&fx.input("ids")).unwrap() + segment.forward(&fx.input("type_ids")).unwrap()).unwrap();
    let out_err = fx.check_output("output", &out, OUTPUT_TOL);
    let grads = fx.loss(&[("output", &out)]).backward().unwrap();
    let grad_err = fx.check_grads(&grads, &vars, &[], GRAD_TOL);
    fx.report(out_err, grad_err);
}

/// Against a float64 statement of Wang et al.'s complex word embedding, r·e^{i(ω·pos + θ)} as real and
/// imaginary halves, × √C, at positions that start past 0.
#[test]
fn complex_embedding_matches_float64_reference() {
    let fx = Fixture::load("complex_embedding");
    let (vocab, c) = (fx.config_usize("vocab_size"), fx.config_usize("d_model"));
    let scaled: bool = fx.config_value("scaled");
    let (embedding, vars) = fx.build(|vb| ComplexEmbedding::new(vb, vocab, c, scaled, WeightInit::XavierUniform));
    let out = embedding.forward(&fx.input("ids"), fx.config_usize("offset")).unwrap();
    let out_err = fx.check_output("output", &out, OUTPUT_TOL);
    let grads = fx.loss(&[("output", &out)]).backward().unwrap();
    let grad_err = fx.check_grads(&grads, &vars, &[], GRAD_TOL);
    fx.report(out_err, grad_err);
}

/// Against float64 sinusoids from the paper's formula (§3.5); 1e-6 because the only error is f32 rounding.
#[test]
fn sinusoidal_positions_match_float64_formula() {
    let fx = Fixture::load("sinusoidal_position");
    for (key, (len, d)) in [("d16", (64, 16)), ("d128", (200, 128))] {
        let table = SinusoidalPosition::new(d).unwrap().forward(len, 0, &Device::Cpu).unwrap();
        let err = fx.check_output(key, &table, 1e-6);
        println!("sinusoidal {key:<18} output {err:.2e}");
    }
    // An offset window is the same rows of the table.
    let whole = SinusoidalPosition::new(16).unwrap().forward(64, 0, &Device::Cpu).unwrap();
    let window = SinusoidalPosition::new(16).unwrap().forward(10, 40, &Device::Cpu).unwrap();
    assert_eq!(relative_error(&window, &whole.narrow(0, 40, 10).unwrap()), 0.0);
}

#[test]
fn label_smoothed_cross_entropy_matches_torch() {
    let fx = Fixture::load("cross_entropy");
    let logits = fx.input_var("logits");
    let targets = fx.input("targets").to_dtype(DType::U32).unwrap();
    let ignore = fx.config_usize("ignore_index") as u32;
    let loss = qkv::train::cross_entropy(&logits, &targets, Some(ignore), fx.config_value("label_smoothing")).unwrap();
    let out_err = fx.check_output("loss", &loss.reshape(1).unwrap(), OUTPUT_TOL);
    let grads = loss.backward().unwrap();
    let got = grads.get(&logits).expect("gradient reaches the logits");
    let grad_err = relative_error(got, &fx.tensor("grad.input.logits"));
    assert!(grad_err <= GRAD_TOL, "cross-entropy gradient relative error {grad_err:.3e}");
    fx.report(out_err, grad_err);
}

/// Against `torch.nn.BatchNorm1d` in float64 applied to the gathered non-padding rows: the training forward
/// (padding rows zeroed on both sides, carrying no loss), the gradients of x, γ and β through the batch
/// statistics, the running statistics after each of two training steps (momentum 0.1, unbiased variance), and
/// the evaluation forward with them. Tolerances: outputs and running statistics 1e-5, gradients 1e-4.
#[test]
fn batch_norm_over_real_positions_matches_torch_batch_norm_1d() {
    let fx = Fixture::load("batch_norm");
    let (c, eps) = (fx.config_usize("d_model"), fx.config_value::<f64>("layer_norm_eps"));
    let (norm, vars) = fx.build(|vb| BatchNorm::new(vb, c, eps));
    let var =
        |name: &str| named_vars(&vars).into_iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no {name}")).1;
    let zero_padding = |y: &candle_core::Tensor, valid: &candle_core::Tensor| {
        y.broadcast_mul(&valid.to_dtype(DType::F32).unwrap().unsqueeze(2).unwrap()).unwrap()
    };
    let x = fx.input_var("x");
    let valid = fx.input("valid");
    let train = zero_padding(&norm.forward(&x, Some(&valid), &Mode::train(0)).unwrap(), &valid);
    let mut out_err = fx.check_output("train", &train, OUTPUT_TOL);
    let grads = fx.loss(&[("train", &train)]).backward().unwrap();
    let mut grad_err = 0f64;
    for (label, var) in [("input.x", &x), ("param.weight", &var("weight")), ("param.bias", &var("bias"))] {
        let got = grads.get(var).unwrap_or_else(|| panic!("no gradient reached {label}"));
        let err = relative_error(got, &fx.tensor(&format!("grad.{label}")));
        assert!(err <= GRAD_TOL, "gradient of {label} relative error {err:.3e}");
        grad_err = grad_err.max(err);
    }
    let mut check_running = |step: &str| {
        let (mean, var) = norm.running_statistics();
        for (name, got) in [("running_mean", mean), ("running_var", var)] {
            out_err = out_err.max(fx.check_output(&format!("{name}.{step}"), got, OUTPUT_TOL));
        }
    };
    check_running("step1");
    let x2 = fx.input("x2").to_dtype(DType::F32).unwrap();
    norm.forward(&x2, Some(&fx.input("valid2")), &Mode::train(1)).unwrap();
    check_running("step2");
    let x3 = fx.input("x3").to_dtype(DType::F32).unwrap();
    let eval = norm.forward(&x3, None, &Mode::Eval).unwrap();
    out_err = out_err.max(fx.check_output("eval", &eval, OUTPUT_TOL));
    fx.report(out_err, grad_err);
}
