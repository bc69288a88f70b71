//! Position-wise feed-forward network, eq. (2): FFN(x) = act(x·W₁ + b₁)·W₂ + b₂, applied to every position
//! separately and identically.

use candle_core::Tensor;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::{dropout::Dropout, linear::Linear, mode::Mode, params::WeightInit};
use crate::kernels::reduced::{Packing, RowActivation};
use crate::kernels::{gelu, relu};
use crate::Result;

/// The non-linearity between the two projections. Names follow Hugging Face's `hidden_act` /
/// `activation_function` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// max(0, x): the paper.
    #[serde(rename = "relu")]
    Relu,
    /// x·Φ(x) with the exact normal CDF (erf): BERT.
    #[serde(rename = "gelu")]
    Gelu,
    /// 0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³))): GPT-2.
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh", alias = "gelu_tanh")]
    GeluTanh,
}

impl Activation {
    /// The same function in place on a row of f32 values, for a packed product's epilogue.
    fn in_place(self) -> RowActivation {
        match self {
            Activation::Relu => |y| y.iter_mut().for_each(|v| *v = relu::relu_value(*v)),
            Activation::Gelu => gelu::gelu_in_place,
            Activation::GeluTanh => gelu::gelu_tanh_in_place,
        }
    }

    /// The activation applied elementwise to x, any shape.
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Activation::Relu => relu::relu(x)?,
            Activation::Gelu => gelu::gelu(x)?,
            Activation::GeluTanh => gelu::gelu_tanh_approx(x)?,
        })
    }
}

/// Linear(C → d_ff) → activation → dropout → Linear(d_ff → C).
#[derive(Debug, Clone)]
pub struct FeedForward {
    fc1: Linear,
    fc2: Linear,
    activation: Activation,
    dropout: Dropout,
}

impl FeedForward {
    /// Parameters `fc1` (d_ff, C) and `fc2` (C, d_ff), each with `weight` and optionally `bias`.
    pub fn new(
        vb: VarBuilder,
        d_model: usize,
        d_ff: usize,
        activation: Activation,
        dropout: Dropout,
        bias: bool,
        init: WeightInit,
    ) -> Result<Self> {
        Ok(Self {
            fc1: Linear::new(vb.pp("fc1"), d_model, d_ff, bias, init)?,
            fc2: Linear::new(vb.pp("fc2"), d_ff, d_model, bias, init)?,
            activation,
            dropout,
        })
    }

    /// Stores fc1 and fc2 in `dtype` for inference (parameters named under `prefix`).
    pub fn pack_weights(&mut self, packing: Packing, prefix: &str) -> Result<()> {
        self.fc1.pack(packing, &format!("{prefix}.fc1.weight"))?;
        self.fc2.pack(packing, &format!("{prefix}.fc2.weight"))
    }

    /// (…, C) → (…, C)
    pub fn forward(&self, x: &Tensor, mode: &mut Mode) -> Result<Tensor> {
        // A packed fc1 applies the activation inside its product, on rows still in cache (MiniLM int8: fc1's
        // output is 6 MB a batch of 32, which a separate pass reads and writes again).
        let hidden = match self.fc1.forward_then(x, self.activation.in_place())? {
            Some(hidden) => hidden,
            None => self.activation.apply(&self.fc1.forward(x)?)?,
        };
        let hidden = self.dropout.forward(&hidden, mode)?;
        self.fc2.forward(&hidden)
    }
}
