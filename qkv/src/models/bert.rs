//! BERT (Devlin et al., 2019): the Transformer's encoder over token + learned position + segment embeddings,
//! a \[CLS\] pooler, and the task heads of Hugging Face's `modeling_bert.py` (`BertModel`,
//! `BertForSequenceClassification`, `BertForTokenClassification`, `BertForQuestionAnswering`,
//! `BertForMaskedLM`, `BertForPreTraining`). Configuration names and defaults follow its config.json; loading
//! and saving Hugging Face directories is [`crate::hub::bert`]'s job.

use std::collections::BTreeMap;
use std::str::FromStr;

use candle_core::{DType, Tensor, D};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::kernels::reduced::{Packing, WeightDtype};
use crate::nn::{
    Activation, AttentionMask, Dropout, DropoutRates, DropoutScaling, Embedding, Encoder, LayerConfig, LayerNorm,
    LearnedPosition, Linear, Mode, NormPosition, WeightInit,
};
use crate::{limits, Error, Result};

/// Hugging Face's `BertConfig`. Unknown keys of a config.json are kept in `extra` and written back on save.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BertConfig {
    /// V: rows of the word-piece embedding table (bert-base-uncased: 30522).
    pub vocab_size: usize,
    /// Model width C: the size of every token's vector between sub-layers (bert-base: 768).
    pub hidden_size: usize,
    /// Number of encoder layers (bert-base: 12).
    pub num_hidden_layers: usize,
    /// H: attention heads per layer; `hidden_size` must divide by it (bert-base: 12).
    pub num_attention_heads: usize,
    /// Inner width of each layer's feed-forward network (bert-base: 3072, four times C).
    pub intermediate_size: usize,
    /// The feed-forward activation, and that of the masked-LM head's transform (`gelu` in BERT).
    pub hidden_act: Activation,
    /// Dropout on the embeddings and on each sub-layer's output before the residual sum, in [0, 1).
    pub hidden_dropout_prob: f64,
    /// Dropout on the attention probabilities, in [0, 1).
    pub attention_probs_dropout_prob: f64,
    /// Rows of the learned position table: the longest input in tokens (bert-base: 512).
    pub max_position_embeddings: usize,
    /// Rows of the segment (token-type) embedding (bert-base: 2, sentence A and sentence B).
    pub type_vocab_size: usize,
    /// Standard deviation σ of the N(0, σ²) weight initialisation (bert-base: 0.02).
    pub initializer_range: f64,
    /// ε added to the variance in every LayerNorm (BERT: 1e-12).
    pub layer_norm_eps: f64,
    /// Id of the padding token (\[PAD\], 0 in bert-base-uncased).
    pub pad_token_id: u32,
    /// Only "absolute" (learned positions) is supported.
    pub position_embedding_type: String,
    /// Dropout before the classifier of the classification heads; `None` means `hidden_dropout_prob`.
    pub classifier_dropout: Option<f64>,
    /// Hugging Face class names the checkpoint was saved as, e.g. `["BertForMaskedLM"]`; the first picks the head.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub architectures: Option<Vec<String>>,
    /// The model family; "bert" for every config this loader reads.
    pub model_type: String,
    /// Class names by index, as strings ("0" → "LABEL_0"); its size is the number of labels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id2label: Option<BTreeMap<String, String>>,
    /// The inverse of `id2label`: class name → index.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label2id: Option<BTreeMap<String, i64>>,
    /// Read when a config gives it without `id2label`; never written (Hugging Face derives it).
    #[serde(skip_serializing)]
    pub num_labels: Option<usize>,
    /// Whether the masked-LM decoder shares the word embedding matrix; qkv supports only `true` (the default).
    pub tie_word_embeddings: bool,
    /// Hugging Face's switch for a causal self-attention mask: each token sees itself and the tokens before it
    /// only, as in a decoder. BERT is bidirectional (false); `qkv study bert` trains both to show why.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub is_decoder: bool,
    /// Keys of config.json that qkv does not read, kept so that saving writes them back unchanged.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Default for BertConfig {
    /// bert-base-uncased.
    fn default() -> Self {
        Self {
            vocab_size: 30522,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: Activation::Gelu,
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            initializer_range: 0.02,
            layer_norm_eps: 1e-12,
            pad_token_id: 0,
            position_embedding_type: "absolute".into(),
            classifier_dropout: None,
            architectures: None,
            model_type: "bert".into(),
            id2label: None,
            label2id: None,
            num_labels: None,
            tie_word_embeddings: true,
            is_decoder: false,
            extra: serde_json::Map::new(),
        }
    }
}

impl BertConfig {
    /// Classes of the classification heads: `id2label`'s size, else `num_labels`, else Hugging Face's 2.
    pub fn labels(&self) -> usize {
        self.id2label.as_ref().map(BTreeMap::len).or(self.num_labels).unwrap_or(2)
    }

    /// The name of class `index` (`id2label`, else "LABEL_{index}" as Hugging Face names them).
    pub fn label_name(&self, index: usize) -> String {
        self.id2label
            .as_ref()
            .and_then(|m| m.get(&index.to_string()).cloned())
            .unwrap_or_else(|| format!("LABEL_{index}"))
    }

    /// Sets `labels` classes with the given names (`LABEL_i` when `names` is empty).
    pub fn set_labels(&mut self, names: &[String], labels: usize) {
        let name = |i: usize| names.get(i).cloned().unwrap_or_else(|| format!("LABEL_{i}"));
        self.id2label = Some((0..labels).map(|i| (i.to_string(), name(i))).collect());
        self.label2id = Some((0..labels).map(|i| (name(i), i as i64)).collect());
        self.num_labels = None;
    }

    /// Every encoder layer: post-LN, GELU, dropout on attention probabilities and on each sub-layer's output
    /// (none after the activation), N(0, initializer_range²) weights.
    pub fn layer(&self) -> LayerConfig {
        LayerConfig {
            activation: self.hidden_act,
            norm_position: NormPosition::Post,
            layer_norm_eps: self.layer_norm_eps,
            dropout: DropoutRates {
                embedding: self.hidden_dropout_prob,
                attention: self.attention_probs_dropout_prob,
                residual: self.hidden_dropout_prob,
                activation: 0.0,
                scaling: DropoutScaling::Inverted,
            },
            init: self.init(),
            ..LayerConfig::new(self.hidden_size, self.num_attention_heads, self.intermediate_size)
        }
    }

    fn init(&self) -> WeightInit {
        WeightInit::Normal { std: self.initializer_range }
    }

    /// About how many parameters the model has (embeddings, layers, pooler; biases and norms left out), as
    /// f64 so that absurd configs do not overflow.
    pub fn parameter_count(&self) -> f64 {
        let [v, p, t, c, f, l] = [
            self.vocab_size,
            self.max_position_embeddings,
            self.type_vocab_size,
            self.hidden_size,
            self.intermediate_size,
            self.num_hidden_layers,
        ]
        .map(|x| x as f64);
        (v + p + t) * c + l * (4.0 * c * c + 2.0 * c * f) + c * c
    }

    /// Errors for sizes that cannot work or that exceed [`crate::limits`], then for a model too large for
    /// this machine's memory, each naming the field.
    pub fn validate(&self) -> Result<()> {
        limits::sizes(&[
            ("vocab_size", self.vocab_size, limits::MAX_VOCAB),
            ("hidden_size", self.hidden_size, limits::MAX_WIDTH),
            ("intermediate_size", self.intermediate_size, limits::MAX_WIDTH),
            ("num_hidden_layers", self.num_hidden_layers, limits::MAX_LAYERS),
            ("max_position_embeddings", self.max_position_embeddings, limits::MAX_POSITIONS),
            ("type_vocab_size", self.type_vocab_size, limits::MAX_VOCAB),
            ("num_labels", self.labels(), limits::MAX_VOCAB),
        ])?;
        limits::check_parameters(self.parameter_count())?;
        if self.position_embedding_type != "absolute" {
            return Err(Error::config(
                "position_embedding_type",
                &self.position_embedding_type,
                "\"absolute\" (relative_key variants are not supported)",
            ));
        }
        self.layer().validate()
    }
}

/// The Hugging Face classes a BERT checkpoint can be, by their `architectures` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BertArchitecture {
    /// `BertModel`: the encoder and pooler, no task head.
    Base,
    /// `BertForSequenceClassification`: a classifier over the pooled \[CLS\] vector.
    SequenceClassification,
    /// `BertForTokenClassification`: a classifier over every token's vector (tagging, NER).
    TokenClassification,
    /// `BertForQuestionAnswering`: start and end logits of the answer span at every token.
    QuestionAnswering,
    /// `BertForMaskedLM`: vocabulary logits at every token, through the tied word embedding.
    MaskedLm,
    /// `BertForPreTraining`: the masked-LM head plus next-sentence prediction over the pooled \[CLS\] vector.
    PreTraining,
}

impl BertArchitecture {
    /// Every architecture, in the order listed above.
    pub const ALL: [Self; 6] = [
        Self::Base,
        Self::SequenceClassification,
        Self::TokenClassification,
        Self::QuestionAnswering,
        Self::MaskedLm,
        Self::PreTraining,
    ];

    /// The Hugging Face class name, as config.json's `architectures` writes it (e.g. `BertForMaskedLM`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Base => "BertModel",
            Self::SequenceClassification => "BertForSequenceClassification",
            Self::TokenClassification => "BertForTokenClassification",
            Self::QuestionAnswering => "BertForQuestionAnswering",
            Self::MaskedLm => "BertForMaskedLM",
            Self::PreTraining => "BertForPreTraining",
        }
    }

    /// Whether the class has the \[CLS\] pooler (Hugging Face builds the token-level heads without one).
    pub fn has_pooler(self) -> bool {
        matches!(self, Self::Base | Self::SequenceClassification | Self::PreTraining)
    }
}

impl FromStr for BertArchitecture {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name).ok_or_else(|| {
            let known: Vec<_> = Self::ALL.iter().map(|a| a.name()).collect();
            Error::config("architectures", name, format!("one of {}", known.join(", ")))
        })
    }
}

/// A batch of token ids as a BERT tokenizer produces them; each (B, S).
#[derive(Debug, Clone)]
pub struct BertInput {
    /// Integer ids (u32 or i64).
    pub input_ids: Tensor,
    /// 1 for real tokens, 0 for padding; `None` means no padding.
    pub attention_mask: Option<Tensor>,
    /// Segment of each token (0 = sentence A, 1 = sentence B); `None` means all 0.
    pub token_type_ids: Option<Tensor>,
}

/// Word + position + segment embeddings, summed, then LayerNorm and dropout.
#[derive(Debug, Clone)]
struct BertEmbeddings {
    word: Embedding,
    position: LearnedPosition,
    segment: Embedding,
    norm: LayerNorm,
    dropout: Dropout,
}

impl BertEmbeddings {
    fn new(config: &BertConfig, vb: VarBuilder) -> Result<Self> {
        let (c, init) = (config.hidden_size, config.init());
        Ok(Self {
            word: Embedding::token(vb.pp("word"), config.vocab_size, c, false, init)?,
            position: LearnedPosition::new(vb.pp("position"), config.max_position_embeddings, c, init)?,
            segment: Embedding::segment(vb.pp("segment"), config.type_vocab_size, c, init)?,
            norm: LayerNorm::new(vb.pp("norm"), c, config.layer_norm_eps)?,
            dropout: Dropout::new(config.hidden_dropout_prob, "hidden_dropout_prob")?,
        })
    }

    /// ids and segments (B, S) → (B, S, C). A sequence longer than the position table is an error naming it.
    fn forward(&self, ids: &Tensor, segments: &Tensor, mode: &mut Mode) -> Result<Tensor> {
        let s = ids.dim(1)?;
        if s > self.position.max_len() {
            return Err(Error::config(
                "input_ids",
                format!("{s} tokens"),
                format!("at most max_position_embeddings = {} (truncate the input)", self.position.max_len()),
            ));
        }
        self.dropout.forward(&self.norm.forward(&self.sum(ids, segments)?)?, mode)
    }

    /// word + position + segment vectors (B, S, C), before LayerNorm.
    fn sum(&self, ids: &Tensor, segments: &Tensor) -> Result<Tensor> {
        let x = self.word.forward(ids)?.broadcast_add(&self.position.forward(ids.dim(1)?, 0)?)?;
        Ok((x + self.segment.forward(segments)?)?)
    }
}

/// The masked-language-model head: dense → activation → LayerNorm, then the word embedding matrix (tied)
/// plus a bias over the vocabulary.
#[derive(Debug, Clone)]
struct MlmHead {
    transform: Linear,
    activation: Activation,
    norm: LayerNorm,
    bias: Tensor,
}

impl MlmHead {
    fn new(config: &BertConfig, vb: VarBuilder) -> Result<Self> {
        let c = config.hidden_size;
        Ok(Self {
            transform: Linear::new(vb.pp("transform"), c, c, true, config.init())?,
            activation: config.hidden_act,
            norm: LayerNorm::new(vb.pp("norm"), c, config.layer_norm_eps)?,
            bias: vb.get_with_hints(config.vocab_size, "bias", candle_nn::Init::Const(0.0))?,
        })
    }

    /// (B, S, C) → (B, S, V)
    fn forward(&self, hidden: &Tensor, word: &Embedding) -> Result<Tensor> {
        let h = self.norm.forward(&self.activation.apply(&self.transform.forward(hidden)?)?)?;
        word.unembed(&h, Some(&self.bias))
    }
}

/// What sits on top of the encoder.
#[derive(Debug, Clone)]
enum Head {
    None,
    /// Dropout, then a linear map to the labels: of the pooled [CLS] vector (sequence) or of every token.
    Classifier {
        dropout: Dropout,
        classifier: Linear,
    },
    /// Start and end logits for every token.
    Span(Linear),
    MaskedLm(MlmHead),
    PreTraining {
        mlm: MlmHead,
        next_sentence: Linear,
    },
}

/// A BERT encoder with one of Hugging Face's heads.
///
/// Parameter names (the checkpoint mapping is in [`crate::hub::bert`]): `embeddings.{word,position,segment,
/// norm}.*`, `encoder.layers.{i}.*` as [`crate::nn::EncoderLayer`] names them, `pooler.*`, and per head
/// `classifier.*`, `qa_outputs.*`, `mlm.{transform,norm}.*` + `mlm.bias`, `next_sentence.*`.
#[derive(Debug, Clone)]
pub struct Bert {
    config: BertConfig,
    architecture: BertArchitecture,
    embeddings: BertEmbeddings,
    encoder: Encoder,
    pooler: Option<Linear>,
    head: Head,
}

impl Bert {
    /// A freshly built model of `config` with `architecture`'s head, parameters under `vb` (see the type's
    /// names); errors when the config does not validate.
    pub fn new(config: &BertConfig, architecture: BertArchitecture, vb: VarBuilder) -> Result<Self> {
        Self::build(config, architecture, architecture.has_pooler(), vb)
    }

    /// BertModel without the pooler: the encoder body alone, for callers that pool the token vectors
    /// themselves (sentence embeddings) over checkpoints that have no pooler (a masked LM's).
    pub fn body(config: &BertConfig, vb: VarBuilder) -> Result<Self> {
        Self::build(config, BertArchitecture::Base, false, vb)
    }

    fn build(config: &BertConfig, architecture: BertArchitecture, pooler: bool, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let (c, init) = (config.hidden_size, config.init());
        let pooler = if pooler { Some(Linear::new(vb.pp("pooler"), c, c, true, init)?) } else { None };
        let classifier_dropout = || {
            let p = config.classifier_dropout.unwrap_or(config.hidden_dropout_prob);
            Dropout::new(p, "classifier_dropout")
        };
        let head = match architecture {
            BertArchitecture::Base => Head::None,
            BertArchitecture::SequenceClassification | BertArchitecture::TokenClassification => Head::Classifier {
                dropout: classifier_dropout()?,
                classifier: Linear::new(vb.pp("classifier"), c, config.labels(), true, init)?,
            },
            BertArchitecture::QuestionAnswering => Head::Span(Linear::new(vb.pp("qa_outputs"), c, 2, true, init)?),
            BertArchitecture::MaskedLm => Head::MaskedLm(MlmHead::new(config, vb.pp("mlm"))?),
            BertArchitecture::PreTraining => Head::PreTraining {
                mlm: MlmHead::new(config, vb.pp("mlm"))?,
                next_sentence: Linear::new(vb.pp("next_sentence"), c, 2, true, init)?,
            },
        };
        Ok(Self {
            config: config.clone(),
            architecture,
            embeddings: BertEmbeddings::new(config, vb.pp("embeddings"))?,
            encoder: Encoder::new(&config.layer(), config.num_hidden_layers, false, vb.pp("encoder"))?,
            pooler,
            head,
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// Which Hugging Face class (task head) this model is.
    pub fn architecture(&self) -> BertArchitecture {
        self.architecture
    }

    /// Stores the encoder layers' matrices in `dtype` for inference (see [`crate::kernels::reduced`]); in int8
    /// their inputs are quantized per token too ([`crate::kernels::dynamic_int8`]), and f32 weights go into the
    /// panels of [`crate::kernels::f32_panels`] where the CPU has AVX-512. The embeddings, LayerNorms, pooler and
    /// task heads stay f32: they hold a few percent of the weights and the most error per byte (the embeddings
    /// feed every layer; a head's error goes straight to the scores).
    pub fn pack_weights(&mut self, dtype: WeightDtype) -> Result<()> {
        self.encoder.pack_weights(Packing::encoder(dtype), "encoder")
    }

    /// The encoder's output (B, S, C) and, with a pooler, tanh(W·h_\[CLS\] + b) (B, C).
    pub fn encode(&self, input: &BertInput, mode: &mut Mode) -> Result<(Tensor, Option<Tensor>)> {
        let (x, mask) = self.embed(input, mode)?;
        let hidden = self.encoder.forward(&x, mask.as_ref(), None, mode)?;
        let pooled = match &self.pooler {
            Some(pooler) => Some(pooler.forward(&hidden.narrow(1, 0, 1)?.squeeze(1)?)?.tanh()?),
            None => None,
        };
        Ok((hidden, pooled))
    }

    /// The word (V, C), position (max_len, C) and segment (types, C) tables, in that order.
    pub fn embedding_tables(&self) -> [&Tensor; 3] {
        let e = &self.embeddings;
        [e.word.table(), e.position.table(), e.segment.table()]
    }

    /// The sum of the word, position and segment vectors of `ids` and `segments` (B, S) → (B, S, C), before the
    /// embeddings' LayerNorm: what (B, S, V + max_len + types) one-hot rows times the stacked tables give.
    pub fn embedding_sum(&self, ids: &Tensor, segments: &Tensor) -> Result<Tensor> {
        self.embeddings.sum(ids, segments)
    }

    /// Every layer's self-attention weights (B, H, S, S) in eval mode: transformers' `output_attentions`.
    pub fn attention_weights(&self, input: &BertInput) -> Result<Vec<Tensor>> {
        let mode = &mut Mode::Eval;
        let (x, mask) = self.embed(input, mode)?;
        Ok(self.encoder.forward_with_weights(&x, mask.as_ref(), None, mode)?.1)
    }

    /// The checked input's embeddings (B, S, C) and its padding mask.
    fn embed(&self, input: &BertInput, mode: &mut Mode) -> Result<(Tensor, Option<AttentionMask>)> {
        let ids = &input.input_ids;
        // An empty batch or sequence has no [CLS] to pool and nothing to attend to.
        if ids.rank() != 2 || ids.dims().contains(&0) {
            return Err(Error::shape("input_ids", "(batch, sequence), both at least 1", ids.dims()));
        }
        let segments = match &input.token_type_ids {
            Some(t) if t.dims() != ids.dims() => {
                return Err(Error::shape("token_type_ids", format!("{:?} like input_ids", ids.dims()), t.dims()))
            }
            Some(t) => t.clone(),
            None => ids.zeros_like()?,
        };
        let mask = match &input.attention_mask {
            Some(m) if m.dims() != ids.dims() => {
                return Err(Error::shape("attention_mask", format!("{:?} like input_ids", ids.dims()), m.dims()))
            }
            Some(m) => Some(AttentionMask::padding(m)?),
            None => None,
        };
        let mask = if self.config.is_decoder {
            let s = ids.dim(1)?;
            let causal = AttentionMask::causal(s, s, ids.device())?;
            Some(match mask {
                Some(padding) => causal.and(&padding)?,
                None => causal,
            })
        } else {
            mask
        };
        Ok((self.embeddings.forward(ids, &segments, mode)?, mask))
    }

    /// Every output the Hugging Face class returns, under its name: `last_hidden_state` and `pooler_output`
    /// (BertModel), `logits` (classification, masked LM), `start_logits` / `end_logits` (question
    /// answering), `prediction_logits` / `seq_relationship_logits` (pre-training).
    pub fn forward(&self, input: &BertInput, mode: &mut Mode) -> Result<BTreeMap<&'static str, Tensor>> {
        let (hidden, pooled) = self.encode(input, mode)?;
        let mut out = BTreeMap::new();
        let pooled_or_err = || pooled.clone().ok_or_else(|| Error::config("pooler", "missing", "a pooler"));
        match &self.head {
            Head::None => {
                out.insert("last_hidden_state", hidden);
                if let Some(p) = pooled {
                    out.insert("pooler_output", p);
                }
            }
            Head::Classifier { dropout, classifier } => {
                let features = match self.architecture {
                    BertArchitecture::SequenceClassification => pooled_or_err()?, // (B, C)
                    _ => hidden,                                                  // (B, S, C)
                };
                out.insert("logits", classifier.forward(&dropout.forward(&features, mode)?)?);
            }
            Head::Span(qa) => {
                let logits = qa.forward(&hidden)?; // (B, S, 2)
                out.insert("start_logits", logits.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?);
                out.insert("end_logits", logits.narrow(D::Minus1, 1, 1)?.squeeze(D::Minus1)?);
            }
            Head::MaskedLm(mlm) => {
                out.insert("logits", mlm.forward(&hidden, &self.embeddings.word)?);
            }
            Head::PreTraining { mlm, next_sentence } => {
                out.insert("prediction_logits", mlm.forward(&hidden, &self.embeddings.word)?);
                out.insert("seq_relationship_logits", next_sentence.forward(&pooled_or_err()?)?);
            }
        }
        Ok(out)
    }
}

impl Bert {
    /// The pre-training heads where the loss needs them: the masked-LM logits (N, V) of the flattened (B·S)
    /// positions `rows` (N,) only and, for BertForPreTraining, the next-sentence logits (B, 2). The vocabulary
    /// projection at every position is most of a small model's cost, and masked LM predicts ~15% of them;
    /// [`forward`](Self::forward) gives all of them, as transformers does.
    pub fn masked_lm_at(&self, input: &BertInput, rows: &Tensor, mode: &mut Mode) -> Result<(Tensor, Option<Tensor>)> {
        let (hidden, pooled) = self.encode(input, mode)?;
        let c = hidden.dim(D::Minus1)?;
        let chosen = hidden.reshape(((), c))?.index_select(rows, 0)?; // (N, C)
        let word = &self.embeddings.word;
        match &self.head {
            Head::MaskedLm(mlm) => Ok((mlm.forward(&chosen, word)?, None)),
            Head::PreTraining { mlm, next_sentence } => {
                let pooled = pooled.ok_or_else(|| Error::config("pooler", "missing", "a pooler"))?;
                Ok((mlm.forward(&chosen, word)?, Some(next_sentence.forward(&pooled)?)))
            }
            _ => Err(Error::config("model", self.architecture.name(), "BertForMaskedLM or BertForPreTraining")),
        }
    }
}

/// Mean of the token vectors (B, S, C) over the real tokens of each sequence (mask (B, S), 1 = real) → (B, C):
/// sentence-transformers' mean pooling. A sequence without real tokens gets a zero vector.
pub fn mean_pool(hidden: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let mask = mask.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?; // (B, S, 1)
    let summed = hidden.broadcast_mul(&mask)?.sum(1)?; // (B, C)
    let counts = mask.sum(1)?.clamp(1e-9, f64::INFINITY)?; // (B, 1)
    Ok(summed.broadcast_div(&counts)?)
}

/// The \[CLS\] vector of each sequence: (B, S, C) → (B, C).
pub fn cls_pool(hidden: &Tensor) -> Result<Tensor> {
    Ok(hidden.narrow(1, 0, 1)?.squeeze(1)?)
}

/// Element-wise maximum over the real tokens: (B, S, C) → (B, C).
pub fn max_pool(hidden: &Tensor, mask: &Tensor) -> Result<Tensor> {
    // Padding gets −1e9 so it never wins (sentence-transformers does the same).
    let bias = mask.to_dtype(DType::F32)?.affine(1e9, -1e9)?.unsqueeze(D::Minus1)?;
    Ok(hidden.broadcast_add(&bias)?.max(1)?)
}

/// Rows scaled to unit L2 norm (a zero row stays zero): (B, C) → (B, C).
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12, f64::INFINITY)?;
    Ok(x.broadcast_div(&norm)?)
}
