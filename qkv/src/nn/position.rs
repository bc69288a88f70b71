//! Position information: the paper's fixed sinusoids (§3.5), learned absolute positions (BERT, GPT-2),
//! relative position representations inside attention (Shaw, Uszkoreit & Vaswani, 2018) and rotary position
//! embeddings of queries and keys (RoPE; Su et al., 2021).

use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;

use super::params::WeightInit;
use crate::{Error, Result};

/// PE(pos, 2i) = sin(pos / 10000^(2i/C)), PE(pos, 2i+1) = cos(pos / 10000^(2i/C)).
///
/// Fixed, so it extends to any length. For every offset k, PE(pos + k) is a rotation of PE(pos) by the angles
/// k·ωᵢ in each (sin, cos) pair — a linear map that does not depend on pos, which is why the paper expected
/// the model to attend by relative position easily.
#[derive(Debug, Clone, Copy)]
pub struct SinusoidalPosition {
    d_model: usize,
}

impl SinusoidalPosition {
    /// The fixed sin/cos encodings of width `d_model` (positive): no parameters, no maximum length.
    pub fn new(d_model: usize) -> Result<Self> {
        if d_model == 0 {
            return Err(Error::config("d_model", 0, "a positive width"));
        }
        Ok(Self { d_model })
    }

    /// Encodings of positions offset .. offset + len: (len, C). Computed in f64, stored in f32.
    pub fn forward(&self, len: usize, offset: usize, device: &Device) -> Result<Tensor> {
        let c = self.d_model;
        let mut table = Vec::with_capacity(len * c);
        for pos in offset..offset + len {
            for dim in 0..c {
                let pair = (dim / 2) as f64;
                let angle = pos as f64 / 10000f64.powf(2.0 * pair / c as f64);
                table.push(if dim % 2 == 0 { angle.sin() } else { angle.cos() } as f32);
            }
        }
        Ok(Tensor::from_vec(table, (len, c), device)?)
    }
}

/// A trained table of absolute position vectors (max_len, C), as in BERT and GPT-2.
#[derive(Debug, Clone)]
pub struct LearnedPosition {
    table: Tensor,
}

impl LearnedPosition {
    /// Parameter `weight` (max_len, C).
    pub fn new(vb: VarBuilder, max_len: usize, d_model: usize, init: WeightInit) -> Result<Self> {
        let table = vb.get_with_hints((max_len, d_model), "weight", init.for_matrix(max_len, d_model))?;
        Ok(Self { table })
    }

    /// The longest sequence the table covers: its number of rows.
    pub fn max_len(&self) -> usize {
        self.table.dims()[0]
    }

    /// The whole table (max_len, C).
    pub fn table(&self) -> &Tensor {
        &self.table
    }

    /// Encodings of positions offset .. offset + len: (len, C). Past the table is an error.
    pub fn forward(&self, len: usize, offset: usize) -> Result<Tensor> {
        let max_len = self.max_len();
        if offset + len > max_len {
            return Err(Error::OutOfRange {
                what: "position",
                found: (offset + len - 1) as i64,
                expected: format!("< {max_len} (the learned position table's max_len)"),
            });
        }
        Ok(self.table.narrow(0, offset, len)?)
    }

    /// Encodings of the positions in `positions` (B, T), u32: (B, T, C). Past the table is an error.
    pub fn at(&self, positions: &Tensor) -> Result<Tensor> {
        let max_len = self.max_len();
        let (b, t) = positions.dims2()?;
        let flat = positions.flatten_all()?;
        if let Some(&bad) = flat.to_vec1::<u32>()?.iter().find(|&&p| p as usize >= max_len) {
            return Err(Error::OutOfRange {
                what: "position",
                found: i64::from(bad),
                expected: format!("< {max_len} (the learned position table's max_len)"),
            });
        }
        let c = self.table.dim(1)?;
        Ok(self.table.index_select(&flat, 0)?.reshape((b, t, c))?)
    }
}

/// Shaw et al. (2018): learned vectors a^K and a^V for each clipped relative distance j − i ∈ [−k, k], shared
/// by all heads of a layer and added inside attention:
/// e_ij = qᵢ·(k_j + a^K_ij) / √Dh and z_i = Σ_j α_ij (v_j + a^V_ij).
#[derive(Debug, Clone)]
pub struct RelativePosition {
    keys: Tensor,
    values: Tensor,
    max_distance: usize,
}

/// The relative representations gathered for one attention call: a^K and a^V, each (T, S, Dh).
#[derive(Debug, Clone)]
pub struct RelativeTerms {
    /// a^K: added to the keys in the query-key scores, (T, S, Dh).
    pub keys: Tensor,
    /// a^V: added to the values in the weighted sum, (T, S, Dh).
    pub values: Tensor,
}

impl RelativePosition {
    /// Parameters `keys` and `values`, each (2k + 1, Dh); row k holds distance 0.
    pub fn new(vb: VarBuilder, max_distance: usize, head_dim: usize, init: WeightInit) -> Result<Self> {
        if max_distance == 0 {
            return Err(Error::config("relative_max_distance", 0, "a clipping distance k ≥ 1"));
        }
        let rows = 2 * max_distance + 1;
        let keys = vb.get_with_hints((rows, head_dim), "keys", init.for_matrix(rows, head_dim))?;
        let values = vb.get_with_hints((rows, head_dim), "values", init.for_matrix(rows, head_dim))?;
        Ok(Self { keys, values, max_distance })
    }

    /// The clipping distance k: relative distances beyond ±k share the outermost representation.
    pub fn max_distance(&self) -> usize {
        self.max_distance
    }

    /// Representations for `t` queries that are the last `t` of `s` key positions (t = s without a cache).
    pub fn terms(&self, t: usize, s: usize) -> Result<RelativeTerms> {
        if t > s {
            return Err(Error::config("relative attention", format!("{t} queries over {s} keys"), "queries ≤ keys"));
        }
        let k = self.max_distance as i64;
        let offset = (s - t) as i64;
        let index: Vec<u32> = (0..t as i64)
            .flat_map(|i| (0..s as i64).map(move |j| ((j - (i + offset)).clamp(-k, k) + k) as u32))
            .collect();
        let index = Tensor::from_vec(index, t * s, self.keys.device())?;
        let head_dim = self.keys.dims()[1];
        let gather =
            |table: &Tensor| -> Result<Tensor> { Ok(table.index_select(&index, 0)?.reshape((t, s, head_dim))?) };
        Ok(RelativeTerms { keys: gather(&self.keys)?, values: gather(&self.values)? })
    }
}

impl RelativeTerms {
    /// qᵢ·a^K_ij for queries q (B, H, T, Dh) → (B, H, T, S).
    pub fn key_scores(&self, q: &Tensor) -> Result<Tensor> {
        let (b, h, t, dh) = q.dims4()?;
        let q = q.permute((2, 0, 1, 3))?.reshape((t, b * h, dh))?; // (T, B·H, Dh)
        let scores = q.matmul(&self.keys.transpose(1, 2)?)?; // (T, B·H, S)
        let s = scores.dim(2)?;
        Ok(scores.reshape((t, b, h, s))?.permute((1, 2, 0, 3))?.contiguous()?)
    }

    /// Σ_j α_ij a^V_ij for attention weights α (B, H, T, S) → (B, H, T, Dh).
    pub fn weighted_values(&self, weights: &Tensor) -> Result<Tensor> {
        let (b, h, t, s) = weights.dims4()?;
        let w = weights.permute((2, 0, 1, 3))?.reshape((t, b * h, s))?; // (T, B·H, S)
        let out = w.matmul(&self.values)?; // (T, B·H, Dh)
        let dh = out.dim(2)?;
        Ok(out.reshape((t, b, h, dh))?.permute((1, 2, 0, 3))?.contiguous()?)
    }
}

/// RoPE (Su et al., 2021, eq. (34)): at position m each pair (x₂ᵢ, x₂ᵢ₊₁) of every head's query and key is turned
/// by the angle m·θᵢ, θᵢ = 10000^(−2i/Dh). A rotation keeps lengths and the dot product of two rotated vectors
/// depends on their angle difference only, so q_m·k_n sees the relative position m − n — and nothing is added to
/// the embeddings, no parameter is learned, and any length can be encoded.
#[derive(Debug, Clone, Copy)]
pub struct RotaryPosition {
    head_dim: usize,
}

impl RotaryPosition {
    /// The base of the angles, Su et al.'s (as the sinusoids').
    pub const BASE: f64 = 10000.0;

    /// Rotations of heads `head_dim` wide, which must be even (the rotation turns pairs of dimensions).
    pub fn new(head_dim: usize) -> Result<Self> {
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(Error::config(
                "head_dim",
                head_dim,
                "an even width (rotary positions turn pairs of dimensions)",
            ));
        }
        Ok(Self { head_dim })
    }

    /// cos(m·θᵢ) and sin(m·θᵢ) for m in offset .. offset + len: each (len, 1, Dh/2), computed in f64.
    fn angles(&self, len: usize, offset: usize, device: &Device) -> Result<(Tensor, Tensor)> {
        let half = self.head_dim / 2;
        let (mut cos, mut sin) = (Vec::with_capacity(len * half), Vec::with_capacity(len * half));
        for m in offset..offset + len {
            for i in 0..half {
                let angle = m as f64 * Self::BASE.powf(-2.0 * i as f64 / self.head_dim as f64);
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        let table = |v: Vec<f32>| Tensor::from_vec(v, (len, 1, half), device);
        Ok((table(cos)?, table(sin)?))
    }

    /// Queries or keys x (B, L, H·Dh), heads as column blocks, at positions offset .. offset + L → the same
    /// shape, each pair rotated: (x₂ᵢ cos − x₂ᵢ₊₁ sin, x₂ᵢ₊₁ cos + x₂ᵢ sin). Differentiable.
    pub fn rotate(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
        let (b, l, width) = x.dims3()?;
        if width % self.head_dim != 0 {
            let expected = format!("(B, L, H·{}) queries or keys", self.head_dim);
            return Err(Error::shape("rotary position input", expected, x.dims()));
        }
        let (heads, half) = (width / self.head_dim, self.head_dim / 2);
        let pairs = x.reshape((b, l, heads, half, 2))?;
        let even = pairs.narrow(4, 0, 1)?.squeeze(4)?; // (B, L, H, Dh/2)
        let odd = pairs.narrow(4, 1, 1)?.squeeze(4)?;
        let (cos, sin) = self.angles(l, offset, x.device())?;
        let (cos, sin) = (cos.to_dtype(x.dtype())?, sin.to_dtype(x.dtype())?);
        let turned_even = (even.broadcast_mul(&cos)? - odd.broadcast_mul(&sin)?)?;
        let turned_odd = (odd.broadcast_mul(&cos)? + even.broadcast_mul(&sin)?)?;
        Ok(Tensor::stack(&[turned_even, turned_odd], 4)?.reshape((b, l, width))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;
    use candle_nn::VarMap;

    #[test]
    fn sinusoid_values_from_the_formula() {
        let pe = SinusoidalPosition::new(4).unwrap().forward(3, 0, &Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(pe[0], vec![0.0, 1.0, 0.0, 1.0]);
        assert!((pe[2][0] - 2f32.sin()).abs() < 1e-7);
        assert!((pe[2][3] - (2.0f32 / 100.0).cos()).abs() < 1e-7);
    }

    #[test]
    fn learned_positions_stop_at_max_len() {
        let vars = VarMap::new();
        let vb = crate::nn::seeded_var_builder(&vars, 0, DType::F32, &Device::Cpu);
        let pos = LearnedPosition::new(vb, 8, 4, WeightInit::Normal { std: 0.02 }).unwrap();
        assert_eq!(pos.forward(8, 0).unwrap().dims(), &[8, 4]);
        let err = pos.forward(3, 6).unwrap_err().to_string();
        assert!(err.contains("position: 8") && err.contains("< 8"), "{err}");
    }

    #[test]
    fn relative_distances_are_clipped() {
        let vars = VarMap::new();
        let vb = crate::nn::seeded_var_builder(&vars, 0, DType::F32, &Device::Cpu);
        let rel = RelativePosition::new(vb, 2, 3, WeightInit::XavierUniform).unwrap();
        let terms = rel.terms(4, 4).unwrap();
        assert_eq!(terms.keys.dims(), &[4, 4, 3]);
        let table = rel.keys.to_vec2::<f32>().unwrap();
        let got = terms.keys.to_vec3::<f32>().unwrap();
        assert_eq!(got[0][3], table[4]); // j − i = 3 clipped to 2 → row 2 + k
        assert_eq!(got[3][0], table[0]); // −3 → −2
        assert_eq!(got[1][1], table[2]); // 0
    }

    #[test]
    fn rotary_turns_each_pair_by_position_times_its_frequency() {
        let rope = RotaryPosition::new(4).unwrap();
        // One head of width 4 at positions 0 and 3: pairs (1, 0) and (0, 1).
        let x = Tensor::new(&[[[1f32, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 1.0]]], &Device::Cpu).unwrap();
        let got = rope.rotate(&x, 2).unwrap().to_vec3::<f32>().unwrap(); // positions 2 and 3
        for (row, m) in got[0].iter().zip([2f32, 3.0]) {
            let (a0, a1) = (m, m / 100.0); // θ₀ = 1, θ₁ = 10000^(−1/2)
            let expected = [a0.cos(), a0.sin(), -a1.sin(), a1.cos()];
            for (g, e) in row.iter().zip(expected) {
                assert!((g - e).abs() < 1e-6, "position {m}: {row:?} against {expected:?}");
            }
        }
        assert!(RotaryPosition::new(5).unwrap_err().to_string().contains("even"));
    }

    /// q_m·k_n depends on m − n only: shifting both positions by the same amount leaves every score unchanged.
    #[test]
    fn rotary_scores_depend_on_the_relative_position_only() {
        let rope = RotaryPosition::new(8).unwrap();
        let q = Tensor::randn(0f32, 1.0, (1, 5, 16), &Device::Cpu).unwrap();
        let k = Tensor::randn(0f32, 1.0, (1, 5, 16), &Device::Cpu).unwrap();
        let scores = |offset: usize| {
            let (q, k) = (rope.rotate(&q, offset).unwrap(), rope.rotate(&k, offset).unwrap());
            q.matmul(&k.t().unwrap()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        let (near, far) = (scores(0), scores(1000));
        for (a, b) in near.iter().zip(&far) {
            assert!((a - b).abs() <= 1e-3 * a.abs().max(1.0), "{a} against {b}");
        }
    }
}
