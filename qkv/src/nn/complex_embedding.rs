//! Complex-valued word embeddings (Wang, Zhao, Lioma, Li, Zhang & Simonsen, "Encoding word order in complex
//! embeddings", ICLR 2020): word j at position pos is, in each of C/2 dimensions k, the complex number
//! r_jk · e^{i(ω_jk·pos + θ_jk)} — an amplitude (what the word is), a frequency (how fast it turns as it moves)
//! and an initial phase, all learned per word and dimension. Position is part of the embedding, so nothing is
//! added to it; moving a word by d positions multiplies every dimension by e^{iω_jk·d}, the same for any pos.
//!
//! The network after it is real-valued here: the C/2 complex numbers enter as C real ones, the real parts
//! followed by the imaginary parts (the paper's real-valued variant of its Transformer).

use std::f64::consts::TAU;

use candle_core::{DType, Tensor};
use candle_nn::{Init, VarBuilder};

use super::{embedding::Embedding, params::WeightInit};
use crate::{Error, Result};

/// Complex word embeddings: per token and dimension a learned amplitude, frequency and phase, giving
/// position-dependent vectors (B, L, C) with no separate position encoding.
#[derive(Debug, Clone)]
pub struct ComplexEmbedding {
    amplitude: Embedding,
    frequency: Embedding,
    phase: Embedding,
    /// √C when the model scales its embeddings (§3.4), else 1.
    scale: f64,
}

impl ComplexEmbedding {
    /// Parameters `amplitude.weight`, `frequency.weight` and `phase.weight`, each (V, C/2); C must be even.
    /// Amplitudes start as a token table would (`init`), frequencies uniform in [0, 1) radians per position and
    /// phases uniform in [0, 2π).
    pub fn new(vb: VarBuilder, vocab_size: usize, d_model: usize, scaled: bool, init: WeightInit) -> Result<Self> {
        if d_model == 0 || !d_model.is_multiple_of(2) {
            let expected = "an even width with position_encoding = complex (real and imaginary halves)";
            return Err(Error::config("d_model", d_model, expected));
        }
        let half = d_model / 2;
        let table = |name: &str, init: Init| Embedding::token_table(vb.pp(name), vocab_size, half, init);
        Ok(Self {
            amplitude: table("amplitude", init.for_matrix(vocab_size, half))?,
            frequency: table("frequency", Init::Uniform { lo: 0.0, up: 1.0 })?,
            phase: table("phase", Init::Uniform { lo: 0.0, up: TAU })?,
            scale: if scaled { (d_model as f64).sqrt() } else { 1.0 },
        })
    }

    /// ids (B, L) at positions offset .. offset + L → (B, L, C): [r cos(ω·pos + θ), r sin(ω·pos + θ)], times
    /// the scale. An id past the vocabulary is an error naming it.
    pub fn forward(&self, ids: &Tensor, offset: usize) -> Result<Tensor> {
        let len = ids.dim(1)?;
        let amplitude = self.amplitude.rows(ids)?; // (B, L, C/2)
        let frequency = self.frequency.rows(ids)?;
        let phase = self.phase.rows(ids)?;
        let positions = Tensor::arange(offset as u32, (offset + len) as u32, ids.device())?
            .to_dtype(DType::F32)?
            .reshape((1, len, 1))?;
        let angle = frequency.broadcast_mul(&positions)?.add(&phase)?;
        let real = amplitude.mul(&angle.cos()?)?;
        let imaginary = amplitude.mul(&angle.sin()?)?;
        let x = Tensor::cat(&[real, imaginary], 2)?;
        Ok(if self.scale == 1.0 { x } else { (x * self.scale)? })
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;
    use candle_nn::VarMap;

    use super::*;
    use crate::nn::seeded_var_builder;

    fn embedding(scaled: bool) -> (ComplexEmbedding, VarMap) {
        let vars = VarMap::new();
        let vb = seeded_var_builder(&vars, 3, DType::F32, &Device::Cpu);
        (ComplexEmbedding::new(vb, 7, 6, scaled, WeightInit::XavierUniform).unwrap(), vars)
    }

    fn param(vars: &VarMap, name: &str) -> Vec<Vec<f32>> {
        vars.data().lock().unwrap()[name].as_tensor().to_vec2::<f32>().unwrap()
    }

    /// Every component from the formula in f64, for a word at two positions (and ×√C when scaled).
    #[test]
    fn values_follow_the_formula() {
        for scaled in [false, true] {
            let (emb, vars) = embedding(scaled);
            let ids = Tensor::new(&[[4u32, 4, 1]], &Device::Cpu).unwrap();
            let got = emb.forward(&ids, 5).unwrap().to_vec3::<f32>().unwrap();
            let (r, w, p) =
                (param(&vars, "amplitude.weight"), param(&vars, "frequency.weight"), param(&vars, "phase.weight"));
            let scale = if scaled { 6f64.sqrt() } else { 1.0 };
            for (l, (&id, pos)) in [4usize, 4, 1].iter().zip(5..).enumerate() {
                for k in 0..3 {
                    let angle = f64::from(w[id][k]) * pos as f64 + f64::from(p[id][k]);
                    let amplitude = f64::from(r[id][k]);
                    let real = scale * amplitude * angle.cos();
                    let imaginary = scale * amplitude * angle.sin();
                    assert!((f64::from(got[0][l][k]) - real).abs() < 1e-5, "real part {k} at {pos}");
                    assert!((f64::from(got[0][l][3 + k]) - imaginary).abs() < 1e-5, "imaginary part {k} at {pos}");
                }
            }
        }
    }

    /// The same word at two positions has the same amplitude (|z| per dimension): position only turns it.
    #[test]
    fn position_changes_the_phase_not_the_modulus() {
        let (emb, _) = embedding(false);
        let ids = Tensor::new(&[[2u32, 2]], &Device::Cpu).unwrap();
        let z = emb.forward(&ids, 0).unwrap().to_vec3::<f32>().unwrap();
        for k in 0..3 {
            let modulus = |l: usize| z[0][l][k].hypot(z[0][l][3 + k]);
            assert!((modulus(0) - modulus(1)).abs() < 1e-6);
        }
        assert_ne!(z[0][0], z[0][1]);
    }

    #[test]
    fn odd_widths_and_unknown_ids_are_errors() {
        let vars = VarMap::new();
        let vb = seeded_var_builder(&vars, 3, DType::F32, &Device::Cpu);
        let err = ComplexEmbedding::new(vb, 7, 5, false, WeightInit::XavierUniform).unwrap_err().to_string();
        assert!(err.contains("d_model") && err.contains("even"), "{err}");
        let (emb, _) = embedding(false);
        let err = emb.forward(&Tensor::new(&[[9u32]], &Device::Cpu).unwrap(), 0).unwrap_err().to_string();
        assert!(err.contains("token id") && err.contains("9"), "{err}");
    }
}
