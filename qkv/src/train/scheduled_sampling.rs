//! Training the decoder on some of its own predictions instead of only gold prefixes, against exposure bias:
//! scheduled sampling for the Transformer (Mihaylova and Martins, 2019, "Scheduled Sampling for
//! Transformers") and the word-level oracle of Zhang et al. (ACL 2019, "Bridging the Gap between Training and
//! Inference for Neural Machine Translation"); the sentence-level oracle is in [`super::sentence_oracle`].
//!
//! A Transformer decoder trains every position at once, so sampling takes two passes over one encoding:
//! 1. pass 1 runs the decoder teacher-forced (dropout as in training, no gradient unless
//!    `sampling_through_pass1`) and gives a prediction at every position;
//! 2. the decoder input is rebuilt slot by slot: the gold token with probability p, otherwise the prediction
//!    made one position earlier — BOS stays first, since the prediction at j − 1 is the candidate for slot j —
//!    and padding stays padding;
//! 3. pass 2 runs the decoder on that input with gradient, and the loss is against the unchanged gold labels.
//!
//! Every draw (which slots get a prediction, sampled tokens, Gumbel noise) comes from the task's generator in
//! the step context, so a resumed run repeats them. At p = 1 nothing can be chosen and pass 1 is skipped: the
//! step is teacher forcing, draws and dropout masks included.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Tensor, D};
use rand::Rng as _;
use serde::{Deserialize, Serialize};

use super::sampling_schedule::GoldSchedule;
use super::sentence_oracle;
use crate::decode::GumbelNoise;
use crate::kernels::softmax::{masked_softmax, MASKED};
use crate::models::Transformer;
use crate::nn::{Embedding, Mode};
use crate::rng::Rng;
use crate::text::batch::Batch;
use crate::{Error, Result};

/// What the decoder is trained on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", try_from = "String")]
pub enum SamplingMode {
    /// Gold prefixes only: one pass, no draws.
    #[default]
    TeacherForcing,
    /// Mihaylova and Martins (2019): pass-1 scores turned into inputs by `sampling_mix`.
    Scheduled,
    /// Zhang et al. (2019), word level: pass-1 logits / τ plus Gumbel noise, argmax.
    WordOracle,
    /// Zhang et al. (2019), sentence level: a length-constrained beam search's candidate closest in BLEU to
    /// the reference replaces the whole gold input, with probability 1 − p per sentence.
    SentenceOracle,
}

/// How scheduled sampling turns pass 1's scores at a position into the next slot's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", try_from = "String")]
pub enum Mix {
    /// The most probable token.
    #[default]
    Argmax,
    /// The average of all token embeddings weighted by softmax(scores / temperature).
    Softmax,
    /// As `softmax`, over the `sampling_top_k` best tokens only.
    TopK,
    /// A token drawn from softmax(scores / temperature).
    Sample,
}

/// The translation task's sampling options (flattened into its training options under these names).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingOptions {
    /// What the decoder trains on: gold prefixes (default), scheduled sampling or one of Zhang et al.'s oracles.
    #[serde(rename = "sampling")]
    pub mode: SamplingMode,
    /// p, the probability of the gold token, over training.
    #[serde(flatten)]
    pub schedule: GoldSchedule,
    /// How scheduled sampling turns pass 1's scores into inputs: argmax (default), softmax, top-k or a sample.
    #[serde(rename = "sampling_mix")]
    pub mix: Mix,
    /// Divides the scores before `softmax`, `top_k` and `sample`; > 0.
    #[serde(rename = "sampling_temperature")]
    pub temperature: f64,
    /// How many best tokens the `top_k` mix averages over, ≥ 1 (default 5).
    #[serde(rename = "sampling_top_k")]
    pub top_k: usize,
    /// Back-propagate through pass 1 too (the weighted mixes only: a chosen token has no gradient).
    #[serde(rename = "sampling_through_pass1")]
    pub through_pass1: bool,
    /// τ of the oracles' Gumbel noise: they draw from softmax(logits / τ); > 0.
    #[serde(rename = "oracle_gumbel_tau")]
    pub gumbel_tau: f64,
    /// Beam of the sentence oracle's search.
    #[serde(rename = "oracle_beam")]
    pub beam: usize,
}

impl Default for SamplingOptions {
    fn default() -> Self {
        Self {
            mode: SamplingMode::TeacherForcing,
            schedule: GoldSchedule::default(),
            mix: Mix::Argmax,
            temperature: 1.0,
            top_k: 5,
            through_pass1: false,
            gumbel_tau: 1.0,
            beam: 4,
        }
    }
}

impl SamplingOptions {
    /// p at an optimizer step; `None` for teacher forcing, which has no p.
    pub fn gold_probability(&self, step: usize, epoch: usize) -> Option<f64> {
        (self.mode != SamplingMode::TeacherForcing).then(|| self.schedule.at(step, epoch))
    }

    /// Errors name the option. The sentence oracle fine-tunes a trained model (`has_initial_model`): from
    /// random weights its beams would be noise.
    pub fn validate(&self, has_initial_model: bool) -> Result<()> {
        self.schedule.validate()?;
        for (option, value) in [("sampling_temperature", self.temperature), ("oracle_gumbel_tau", self.gumbel_tau)] {
            if !(value > 0.0 && value.is_finite()) {
                return Err(Error::config(option, value, "a positive temperature"));
            }
        }
        for (option, value) in [("sampling_top_k", self.top_k), ("oracle_beam", self.beam)] {
            if value == 0 {
                return Err(Error::config(option, 0, "at least 1"));
            }
        }
        let weighted = self.mode == SamplingMode::Scheduled && matches!(self.mix, Mix::Softmax | Mix::TopK);
        if self.through_pass1 && !weighted {
            let expected = "false unless sampling = scheduled with sampling_mix softmax or top_k (a chosen token \
                            passes no gradient back)";
            return Err(Error::config("sampling_through_pass1", true, expected));
        }
        if self.mode == SamplingMode::SentenceOracle && !has_initial_model {
            let expected = "a trained model to start from (init_from, --init-from DIR): the sentence oracle \
                            fine-tunes, and the beams of an untrained model are noise";
            return Err(Error::config("init_from", "none", expected));
        }
        Ok(())
    }
}

/// What pass 2 reads.
#[derive(Debug, Clone)]
pub enum DecoderInput {
    /// (B, T) u32 token ids.
    Ids(Tensor),
    /// (B, T, C) vectors in the target embedding's space, before its √C scaling.
    Vectors(Tensor),
}

/// Pass 2's logits (B, T, V) for `batch` with p < 1: the encoder once, then the input `options.mode` builds,
/// then the decoder on it in `mode`. `references[b]` is row b's target ids (no specials). Pass 1 and the
/// sentence oracle's search leave no gradient unless `sampling_through_pass1`.
pub fn pass2_logits(
    model: &Transformer,
    options: &SamplingOptions,
    batch: &Batch,
    references: &[&[u32]],
    p: f64,
    rng: &mut Rng,
    mode: &mut Mode,
) -> Result<Tensor> {
    let src_mask = Transformer::source_mask(&batch.source_valid)?;
    let memory = model.encode(&batch.source, &src_mask, mode)?;
    let lengths: Vec<usize> = references.iter().map(|r| r.len()).collect();
    let input = match options.mode {
        SamplingMode::TeacherForcing => DecoderInput::Ids(batch.decoder_input.clone()),
        SamplingMode::Scheduled | SamplingMode::WordOracle => {
            let pass1 = model.project(&model.decode(&batch.decoder_input, &memory, &src_mask, mode)?)?;
            let pass1 = if options.through_pass1 { pass1 } else { pass1.detach() };
            pass2_input(model.target_embedding()?, options, &pass1, &batch.decoder_input, &lengths, p, rng)?
        }
        SamplingMode::SentenceOracle => DecoderInput::Ids(sentence_oracle::decoder_input(
            model,
            (options.beam, options.gumbel_tau),
            batch,
            references,
            p,
            rng,
        )?),
    };
    let hidden = match &input {
        DecoderInput::Ids(ids) => model.decode(ids, &memory, &src_mask, mode)?,
        DecoderInput::Vectors(vectors) => model.decode_embedded(vectors, &memory, &src_mask, mode)?,
    };
    model.project(&hidden)
}

/// Pass 2's input from pass 1's logits (B, T, V) over the gold input `gold` (B, T) whose row b has
/// `lengths[b]` target tokens after BOS (the rest padding): each of those slots takes, with probability
/// 1 − p, the candidate pass 1 made one position earlier — a token (`argmax`, `sample`, the word oracle) or
/// a weighted average of embedding rows (`softmax`, `top_k`).
pub fn pass2_input(
    embedding: &Embedding,
    options: &SamplingOptions,
    pass1: &Tensor,
    gold: &Tensor,
    lengths: &[usize],
    p: f64,
    rng: &mut Rng,
) -> Result<DecoderInput> {
    let (b, t, _) = pass1.dims3()?;
    if gold.dims() != [b, t] || lengths.len() != b || lengths.iter().any(|&n| n + 1 > t) {
        return Err(Error::shape(
            "gold decoder input",
            format!("({b}, {t}) with rows of ≤ {} tokens", t - 1),
            gold.dims(),
        ));
    }
    let gates = draw_gates(lengths, t, p, rng);
    let weighted = options.mode == SamplingMode::Scheduled && matches!(options.mix, Mix::Softmax | Mix::TopK);
    if weighted {
        let weights = mixture_weights(pass1, options)?;
        return Ok(DecoderInput::Vectors(mixed_vectors(embedding, gold, &weights, &gates)?));
    }
    let predictions = predicted_tokens(pass1, options, &gates, rng)?;
    let gold_ids = gold.flatten_all()?.to_vec1::<u32>()?;
    let ids = shifted_ids(&gold_ids, &predictions, &gates, t);
    Ok(DecoderInput::Ids(Tensor::from_vec(ids, (b, t), gold.device())?))
}

/// Which slots (B · T, row-major) take a prediction: each target slot `1 ..= lengths[b]` of row b with
/// probability 1 − p (one uniform draw per slot, in order); BOS and padding never.
pub fn draw_gates(lengths: &[usize], t: usize, p: f64, rng: &mut Rng) -> Vec<bool> {
    let mut gates = vec![false; lengths.len() * t];
    for (row, &length) in lengths.iter().enumerate() {
        for slot in 1..=length {
            gates[row * t + slot] = rng.random::<f64>() >= p;
        }
    }
    gates
}

/// The gold ids (B · T) with each gated slot j replaced by the prediction made at position j − 1.
pub fn shifted_ids(gold: &[u32], predictions: &[u32], gates: &[bool], t: usize) -> Vec<u32> {
    let mut ids = gold.to_vec();
    for (i, id) in ids.iter_mut().enumerate() {
        if gates[i] && i % t > 0 {
            *id = predictions[i - 1];
        }
    }
    ids
}

/// The token predicted at every position (B · T) whose next slot is gated (0 elsewhere): the argmax, a draw
/// from softmax(logits / temperature), or the word oracle's Gumbel-max at τ, drawn in slot order.
fn predicted_tokens(pass1: &Tensor, options: &SamplingOptions, gates: &[bool], rng: &mut Rng) -> Result<Vec<u32>> {
    let (b, t, v) = pass1.dims3()?;
    let sources: Vec<u32> = (0..b * t).filter(|&i| gates[i]).map(|i| (i - 1) as u32).collect();
    let mut predictions = vec![0u32; b * t];
    if options.mode == SamplingMode::Scheduled && options.mix == Mix::Argmax {
        let best = pass1.argmax(D::Minus1)?.flatten_all()?.to_vec1::<u32>()?; // (B · T)
        for &i in &sources {
            predictions[i as usize] = best[i as usize];
        }
        return Ok(predictions);
    }
    if sources.is_empty() {
        return Ok(predictions);
    }
    // Only the rows a gated slot reads come to the host.
    let index = Tensor::from_vec(sources.clone(), sources.len(), pass1.device())?;
    let rows = pass1.reshape((b * t, v))?.index_select(&index, 0)?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    for (&i, row) in sources.iter().zip(&rows) {
        predictions[i as usize] = match options.mode {
            SamplingMode::WordOracle => GumbelNoise { rng: &mut *rng, tau: options.gumbel_tau }.argmax(row),
            _ => sample(row, options.temperature, rng),
        } as u32;
    }
    Ok(predictions)
}

/// A token drawn from softmax(row / temperature) by inverting its distribution function with one uniform draw.
pub fn sample(row: &[f32], temperature: f64, rng: &mut Rng) -> usize {
    let scaled: Vec<f64> = row.iter().map(|&x| x as f64 / temperature).collect();
    let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = scaled.iter().map(|&x| (x - max).exp()).collect();
    let mut left = rng.random::<f64>() * weights.iter().sum::<f64>();
    for (token, &w) in weights.iter().enumerate() {
        if left < w {
            return token;
        }
        left -= w;
    }
    // Rounding left a sliver past the last token: the last one with any weight.
    weights.iter().rposition(|&w| w > 0.0).unwrap_or(0)
}

/// Convex weights (B, T, V) over the vocabulary from logits (B, T, V): softmax(logits / temperature), or
/// (`top_k`) the same over each position's k highest logits, the rest exactly 0 (ties at the k-th value are
/// all kept). Differentiable in the logits that keep weight.
pub fn mixture_weights(logits: &Tensor, options: &SamplingOptions) -> Result<Tensor> {
    let scale = 1.0 / options.temperature;
    if options.mix != Mix::TopK {
        return masked_softmax(logits, None, scale);
    }
    let (b, t, v) = logits.dims3()?;
    let k = options.top_k.min(v);
    let rows = logits.detach().to_dtype(DType::F32)?.reshape((b * t, v))?.to_vec2::<f32>()?;
    let thresholds: Vec<f32> =
        rows.into_iter().map(|mut row| *row.select_nth_unstable_by(k - 1, |x, y| y.total_cmp(x)).1).collect();
    let thresholds = Tensor::from_vec(thresholds, (b, t, 1), logits.device())?.to_dtype(logits.dtype())?;
    let kept = logits.broadcast_ge(&thresholds)?.to_dtype(DType::F32)?; // (B, T, V) 1 or 0
                                                                        // 0 where kept, MASKED elsewhere: exp underflows to exactly 0 there.
    let bias = ((kept - 1.0)? * -(MASKED as f64))?.to_dtype(logits.dtype())?;
    masked_softmax(logits, Some(&bias), scale)
}

/// Pass 2's input vectors (B, T, C): the gold rows of the embedding table, except that each gated slot j
/// takes weights[j − 1] · E, the mixture of the rows pass 1 weighted one position earlier.
pub fn mixed_vectors(embedding: &Embedding, gold: &Tensor, weights: &Tensor, gates: &[bool]) -> Result<Tensor> {
    let (b, t, _) = weights.dims3()?;
    let gold_rows = embedding.rows(gold)?; // (B, T, C)
    if t < 2 {
        return Ok(gold_rows);
    }
    let c = gold_rows.dim(2)?;
    let mixtures = weights.broadcast_matmul(&embedding.table().to_dtype(weights.dtype())?)?; // (B, T, C)
    let shifted = Tensor::cat(&[&mixtures.zeros_like()?.narrow(1, 0, 1)?, &mixtures.narrow(1, 0, t - 1)?], 1)?;
    let gates: Vec<u8> = gates.iter().map(|&g| u8::from(g)).collect();
    let gates = Tensor::from_vec(gates, (b, t, 1), gold.device())?.broadcast_as((b, t, c))?;
    Ok(gates.where_cond(&shifted, &gold_rows)?)
}

impl fmt::Display for SamplingMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SamplingMode::TeacherForcing => "teacher-forcing",
            SamplingMode::Scheduled => "scheduled",
            SamplingMode::WordOracle => "word-oracle",
            SamplingMode::SentenceOracle => "sentence-oracle",
        })
    }
}

impl FromStr for SamplingMode {
    type Err = Error;

    /// The names in kebab or snake case.
    fn from_str(name: &str) -> Result<Self> {
        match name.replace('_', "-").as_str() {
            "teacher-forcing" => Ok(SamplingMode::TeacherForcing),
            "scheduled" => Ok(SamplingMode::Scheduled),
            "word-oracle" => Ok(SamplingMode::WordOracle),
            "sentence-oracle" => Ok(SamplingMode::SentenceOracle),
            _ => Err(Error::config("sampling", name, "teacher-forcing, scheduled, word-oracle or sentence-oracle")),
        }
    }
}

impl TryFrom<String> for SamplingMode {
    type Error = Error;
    fn try_from(name: String) -> Result<Self> {
        name.parse()
    }
}

impl FromStr for Mix {
    type Err = Error;

    /// The names in kebab or snake case.
    fn from_str(name: &str) -> Result<Self> {
        match name.replace('_', "-").as_str() {
            "argmax" => Ok(Mix::Argmax),
            "softmax" => Ok(Mix::Softmax),
            "top-k" => Ok(Mix::TopK),
            "sample" => Ok(Mix::Sample),
            _ => Err(Error::config("sampling_mix", name, "argmax, softmax, top-k or sample")),
        }
    }
}

impl TryFrom<String> for Mix {
    type Error = Error;
    fn try_from(name: String) -> Result<Self> {
        name.parse()
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};
    use candle_nn::VarMap;
    use rand::SeedableRng;

    use super::*;
    use crate::models::TransformerConfig;
    use crate::nn::seeded_var_builder;
    use crate::text::batch::Example;

    const V: usize = 12;
    const PAD: u32 = 0;
    const BOS: u32 = 1;

    fn options(mode: SamplingMode, mix: Mix) -> SamplingOptions {
        SamplingOptions { mode, mix, ..SamplingOptions::default() }
    }

    /// Two rows of T = 5: BOS + 4 targets, and BOS + 2 targets + 2 pads.
    fn gold() -> (Tensor, Vec<usize>) {
        let ids = Tensor::new(&[[BOS, 3, 4, 5, 6], [BOS, 7, 8, PAD, PAD]], &Device::Cpu).unwrap();
        (ids, vec![4, 2])
    }

    /// The token pass 1 "predicts" at position i of the flattened (B · T) batch: known, and unlike any gold one.
    fn known_prediction(i: usize) -> u32 {
        2 + (i as u32 * 5) % 10
    }

    /// Logits (2, 5, V) whose every distribution is all but certain of [`known_prediction`].
    fn forced_logits() -> Tensor {
        let mut values = vec![0f32; 2 * 5 * V];
        for i in 0..10 {
            values[i * V + known_prediction(i) as usize] = 60.0;
        }
        Tensor::from_vec(values, (2, 5, V), &Device::Cpu).unwrap()
    }

    fn embedding() -> Embedding {
        let varmap = VarMap::new();
        let vb = seeded_var_builder(&varmap, 2, DType::F32, &Device::Cpu);
        Embedding::token(vb, V, 4, true, crate::nn::WeightInit::Normal { std: 0.5 }).unwrap()
    }

    fn ids(input: DecoderInput) -> Vec<Vec<u32>> {
        match input {
            DecoderInput::Ids(ids) => ids.to_vec2::<u32>().unwrap(),
            DecoderInput::Vectors(_) => panic!("expected ids"),
        }
    }

    /// With pass 1's predictions known, each token-valued input is [BOS, pred₀, pred₁, …] where a slot is
    /// chosen and gold elsewhere; BOS and padding never change. At p = 0 every target slot is chosen.
    #[test]
    fn the_prediction_made_one_position_earlier_fills_each_chosen_slot() {
        let (gold_ids, lengths) = gold();
        let gold_rows = gold_ids.to_vec2::<u32>().unwrap();
        let mut rng = Rng::seed_from_u64(3);
        let modes = [
            options(SamplingMode::Scheduled, Mix::Argmax),
            options(SamplingMode::Scheduled, Mix::Sample),
            options(SamplingMode::WordOracle, Mix::Argmax),
        ];
        for sampling in modes {
            let all = ids(
                pass2_input(&embedding(), &sampling, &forced_logits(), &gold_ids, &lengths, 0.0, &mut rng).unwrap()
            );
            let shifted = |b: usize, j: usize| known_prediction(b * 5 + j - 1);
            assert_eq!(all[0], [BOS, shifted(0, 1), shifted(0, 2), shifted(0, 3), shifted(0, 4)], "{sampling:?}");
            assert_eq!(all[1], [BOS, shifted(1, 1), shifted(1, 2), PAD, PAD], "{sampling:?}");

            let mut chosen = 0;
            for _ in 0..50 {
                let half = pass2_input(&embedding(), &sampling, &forced_logits(), &gold_ids, &lengths, 0.5, &mut rng);
                for (b, row) in ids(half.unwrap()).iter().enumerate() {
                    assert_eq!((row[0], &row[lengths[b] + 1..]), (BOS, &gold_rows[b][lengths[b] + 1..]));
                    for j in 1..=lengths[b] {
                        assert!(row[j] == gold_rows[b][j] || row[j] == shifted(b, j), "{sampling:?} ({b}, {j})");
                        chosen += usize::from(row[j] == shifted(b, j));
                    }
                }
            }
            // 300 slots at p = ½: 150 expected, σ ≈ 8.7.
            assert!((110..=190).contains(&chosen), "{sampling:?}: {chosen} of 300 slots took a prediction");
        }
    }

    #[test]
    fn at_p_one_the_input_is_gold_exactly() {
        let (gold_ids, lengths) = gold();
        let mut rng = Rng::seed_from_u64(3);
        let argmax = options(SamplingMode::Scheduled, Mix::Argmax);
        let got =
            ids(pass2_input(&embedding(), &argmax, &forced_logits(), &gold_ids, &lengths, 1.0, &mut rng).unwrap());
        assert_eq!(got, gold_ids.to_vec2::<u32>().unwrap());
        let softmax = options(SamplingMode::Scheduled, Mix::Softmax);
        let e = embedding();
        let DecoderInput::Vectors(vectors) =
            pass2_input(&e, &softmax, &forced_logits(), &gold_ids, &lengths, 1.0, &mut rng).unwrap()
        else {
            panic!("a weighted mix gives vectors")
        };
        let rows = e.rows(&gold_ids).unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(flat(&vectors), flat(&rows));
        assert_eq!(draw_gates(&lengths, 5, 1.0, &mut rng), vec![false; 10]);
        let gates = draw_gates(&lengths, 5, 0.0, &mut rng);
        let expected: Vec<bool> = (0..10).map(|i| [1, 2, 3, 4, 6, 7].contains(&i)).collect();
        assert_eq!(gates, expected, "every target slot, never BOS or padding");
    }

    /// Softmax and top-k weights are non-negative and sum to 1 (within 10⁻⁶), top-k has exactly k non-zero
    /// weights (distinct logits), and each chosen slot's vector is weights[j − 1] · E (within 10⁻⁵, against a
    /// sum in f64), every other slot the gold row exactly.
    #[test]
    fn weighted_mixtures_are_convex_combinations_of_embedding_rows() {
        let (gold_ids, lengths) = gold();
        let logits: Vec<f32> = (0..2 * 5 * V).map(|i| ((i * 37 % 101) as f32 / 13.0).sin() * 3.0).collect();
        let logits = Tensor::from_vec(logits, (2, 5, V), &Device::Cpu).unwrap();
        let e = embedding();
        let table = e.table().to_vec2::<f32>().unwrap();
        let gold_rows = e.rows(&gold_ids).unwrap().to_vec3::<f32>().unwrap();
        let mut rng = Rng::seed_from_u64(9);
        for (mix, temperature) in [(Mix::Softmax, 1.0), (Mix::Softmax, 0.3), (Mix::TopK, 1.0), (Mix::TopK, 2.0)] {
            let sampling = SamplingOptions { temperature, top_k: 3, ..options(SamplingMode::Scheduled, mix) };
            let weights = mixture_weights(&logits, &sampling).unwrap().to_vec3::<f32>().unwrap();
            for w in weights.iter().flatten() {
                assert!(w.iter().all(|&x| x >= 0.0));
                assert!((w.iter().map(|&x| x as f64).sum::<f64>() - 1.0).abs() < 1e-6, "{mix:?}: {w:?}");
                if mix == Mix::TopK {
                    assert_eq!(w.iter().filter(|&&x| x > 0.0).count(), 3);
                }
            }
            let gates = draw_gates(&lengths, 5, 0.4, &mut rng);
            let weights_tensor = mixture_weights(&logits, &sampling).unwrap();
            let vectors = mixed_vectors(&e, &gold_ids, &weights_tensor, &gates).unwrap().to_vec3::<f32>().unwrap();
            for b in 0..2 {
                for j in 0..5 {
                    if !gates[b * 5 + j] {
                        assert_eq!(vectors[b][j], gold_rows[b][j], "({b}, {j}) stays gold");
                        continue;
                    }
                    for c in 0..4 {
                        let want: f64 = (0..V).map(|v| weights[b][j - 1][v] as f64 * table[v][c] as f64).sum();
                        assert!((vectors[b][j][c] as f64 - want).abs() < 1e-5, "{mix:?} ({b}, {j}, {c})");
                    }
                }
            }
        }
    }

    /// 20 000 seeded draws: each token's frequency is within 0.012 of softmax(row / T) (over 3σ).
    #[test]
    fn sampled_tokens_follow_the_tempered_softmax() {
        let row = [1.0f32, 0.0, 2.0, -0.5];
        let mut rng = Rng::seed_from_u64(4);
        for temperature in [0.5, 1.5] {
            let scaled: Vec<f64> = row.iter().map(|&x| (x as f64 / temperature).exp()).collect();
            let total: f64 = scaled.iter().sum();
            let mut counts = [0usize; 4];
            for _ in 0..20_000 {
                counts[sample(&row, temperature, &mut rng)] += 1;
            }
            for (token, &count) in counts.iter().enumerate() {
                let (frequency, p) = (count as f64 / 20_000.0, scaled[token] / total);
                assert!((frequency - p).abs() < 0.012, "T = {temperature}, token {token}: {frequency} vs {p}");
            }
        }
    }

    fn tiny_model() -> (Transformer, Vec<Var>) {
        let config = TransformerConfig {
            vocab_size: V,
            d_model: 16,
            encoder_layers: 1,
            decoder_layers: 1,
            encoder_attention_heads: 2,
            decoder_attention_heads: 2,
            encoder_ffn_dim: 32,
            decoder_ffn_dim: 32,
            ..TransformerConfig::default()
        };
        let varmap = VarMap::new();
        let model = Transformer::new(&config, seeded_var_builder(&varmap, 5, DType::F32, &Device::Cpu)).unwrap();
        (model, varmap.all_vars())
    }

    fn batch() -> (Batch, Vec<Vec<u32>>) {
        let examples = [
            Example { source: vec![4, 5, 6], target: vec![7, 8, 9, 10] },
            Example { source: vec![3, 11], target: vec![6, 4] },
        ];
        let refs: Vec<&Example> = examples.iter().collect();
        let batch = Batch::new(&refs, PAD, BOS, 2, &Device::Cpu).unwrap();
        (batch, examples.iter().map(|e| e.target.clone()).collect())
    }

    /// Pass 2 at p = 1, whatever the mix, computes the teacher-forced logits bit for bit.
    #[test]
    fn two_passes_at_p_one_are_teacher_forcing() {
        let (model, _) = tiny_model();
        let (batch, targets) = batch();
        let references: Vec<&[u32]> = targets.iter().map(Vec::as_slice).collect();
        let forced = model.forward(&batch.source, &batch.source_valid, &batch.decoder_input, &mut Mode::Eval).unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut rng = Rng::seed_from_u64(1);
        for (mode, mix) in [
            (SamplingMode::Scheduled, Mix::Argmax),
            (SamplingMode::Scheduled, Mix::Softmax),
            (SamplingMode::Scheduled, Mix::TopK),
            (SamplingMode::WordOracle, Mix::Argmax),
            (SamplingMode::SentenceOracle, Mix::Argmax),
        ] {
            let sampling = options(mode, mix);
            let logits = pass2_logits(&model, &sampling, &batch, &references, 1.0, &mut rng, &mut Mode::Eval).unwrap();
            assert_eq!(flat(&logits), flat(&forced), "{mode:?} {mix:?}");
        }
    }

    /// Without `sampling_through_pass1` the gradient reaches the parameters through pass 2 alone; with it, pass
    /// 1's weights change the gradient too.
    #[test]
    fn pass_one_passes_gradient_only_when_asked() {
        let (model, vars) = tiny_model();
        let (batch, targets) = batch();
        let references: Vec<&[u32]> = targets.iter().map(Vec::as_slice).collect();
        let gradient = |through_pass1: bool| {
            let sampling = SamplingOptions { through_pass1, ..options(SamplingMode::Scheduled, Mix::Softmax) };
            let mut rng = Rng::seed_from_u64(8);
            let logits = pass2_logits(&model, &sampling, &batch, &references, 0.0, &mut rng, &mut Mode::Eval).unwrap();
            let grads = logits.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            let total: f64 = vars
                .iter()
                .filter_map(|v| grads.get(v))
                .map(|g| g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64)
                .sum();
            total
        };
        let (detached, through) = (gradient(false), gradient(true));
        assert!(detached > 0.0 && (through - detached).abs() > 1e-6 * detached, "{detached} vs {through}");
    }

    #[test]
    fn bad_options_are_errors_naming_the_option() {
        let message = |o: SamplingOptions, init: bool| o.validate(init).unwrap_err().to_string();
        let sentence = options(SamplingMode::SentenceOracle, Mix::Argmax);
        let err = message(sentence, false);
        assert!(err.contains("init_from") && err.contains("sentence oracle"), "{err}");
        assert!(sentence.validate(true).is_ok());
        let err =
            message(SamplingOptions { through_pass1: true, ..options(SamplingMode::Scheduled, Mix::Argmax) }, false);
        assert!(err.contains("sampling_through_pass1"), "{err}");
        let err = message(SamplingOptions { temperature: 0.0, ..SamplingOptions::default() }, false);
        assert!(err.contains("sampling_temperature = 0"), "{err}");
        let err = message(SamplingOptions { gumbel_tau: -1.0, ..SamplingOptions::default() }, false);
        assert!(err.contains("oracle_gumbel_tau = -1"), "{err}");
        let err = message(SamplingOptions { top_k: 0, ..SamplingOptions::default() }, false);
        assert!(err.contains("sampling_top_k = 0"), "{err}");
        let err = message(SamplingOptions { beam: 0, ..SamplingOptions::default() }, false);
        assert!(err.contains("oracle_beam = 0"), "{err}");
        let bad_k = GoldSchedule { k: 0.0, ..GoldSchedule::default() };
        let err = message(SamplingOptions { schedule: bad_k, ..SamplingOptions::default() }, false);
        assert!(err.contains("sampling_k = 0"), "{err}");
        let err = "mean".parse::<Mix>().unwrap_err().to_string();
        assert!(err.contains("sampling_mix = mean") && err.contains("top-k"), "{err}");
        let err = serde_json::from_str::<SamplingOptions>(r#"{"sampling_mix": "mean"}"#).unwrap_err().to_string();
        assert!(err.contains("sampling_mix = mean"), "{err}");
        let err = serde_json::from_str::<SamplingOptions>(r#"{"sampling": "oracle"}"#).unwrap_err().to_string();
        assert!(err.contains("sampling = oracle"), "{err}");
        let read: SamplingOptions =
            serde_json::from_str(r#"{"sampling": "word-oracle", "sampling_mix": "top_k"}"#).unwrap();
        assert_eq!((read.mode, read.mix), (SamplingMode::WordOracle, Mix::TopK));
        let written = serde_json::to_value(read).unwrap();
        assert_eq!(
            (written["sampling"].as_str(), written["sampling_mix"].as_str()),
            (Some("word_oracle"), Some("top_k"))
        );
    }
}
