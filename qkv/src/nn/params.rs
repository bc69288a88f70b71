//! Fresh parameters: a candle `VarBuilder` whose missing tensors are created as trainable `Var`s, initialised
//! from a seeded generator.
//!
//! candle's CPU device cannot be seeded (`Device::set_seed` fails on CPU), so a `VarMap`-backed builder would
//! initialise differently on every run. This backend draws every initial value from its own generator instead,
//! in construction order, so the same seed gives the same model.

use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::{var_builder::SimpleBackend, Init, VarBuilder, VarMap};
use rand::{Rng as _, SeedableRng};
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

use super::mode::Rng;

/// How a weight matrix is initialised. Biases start at zero and LayerNorm gains at one in every block.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightInit {
    /// Glorot & Bengio (2010): U(−a, a), a = √(6 / (fan_in + fan_out)); the usual choice for the original
    /// Transformer.
    XavierUniform,
    /// N(0, std²), as BERT and GPT-2 use with std = `initializer_range` = 0.02.
    Normal {
        /// Standard deviation of the normal distribution.
        std: f64,
    },
}

impl WeightInit {
    /// The candle initialiser for a weight of shape (fan_out, fan_in) — the layout of `Linear` and of embedding
    /// tables (rows × width).
    pub fn for_matrix(self, fan_out: usize, fan_in: usize) -> Init {
        match self {
            WeightInit::XavierUniform => {
                let bound = (6.0 / (fan_in + fan_out) as f64).sqrt();
                Init::Uniform { lo: -bound, up: bound }
            }
            WeightInit::Normal { std } => Init::Randn { mean: 0.0, stdev: std },
        }
    }
}

/// `init` with every drawn value multiplied by `factor` (its standard deviation times `factor`), for the
/// uniform, normal and constant initialisers [`WeightInit`] gives; candle's Kaiming is returned unchanged.
pub fn scaled(init: Init, factor: f64) -> Init {
    match init {
        Init::Uniform { lo, up } => Init::Uniform { lo: lo * factor, up: up * factor },
        Init::Randn { mean, stdev } => Init::Randn { mean: mean * factor, stdev: stdev * factor },
        Init::Const(value) => Init::Const(value * factor),
        other => other,
    }
}

struct SeededBackend {
    vars: VarMap,
    rng: Mutex<Rng>,
}

impl SeededBackend {
    fn sample(&self, init: Init, n: usize) -> candle_core::Result<Vec<f32>> {
        let mut rng =
            self.rng.lock().map_err(|_| candle_core::Error::Msg("parameter generator lock poisoned".into()))?;
        Ok(match init {
            Init::Const(c) => vec![c as f32; n],
            Init::Uniform { lo, up } => (0..n).map(|_| rng.random_range(lo..up) as f32).collect(),
            Init::Randn { mean, stdev } => {
                let normal = Normal::new(mean, stdev).map_err(candle_core::Error::wrap)?;
                (0..n).map(|_| normal.sample(&mut *rng) as f32).collect()
            }
            Init::Kaiming { .. } => {
                candle_core::bail!("Kaiming initialisation is not used by qkv's blocks; use WeightInit")
            }
        })
    }
}

impl SimpleBackend for SeededBackend {
    fn get(&self, shape: Shape, name: &str, init: Init, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        let mut vars =
            self.vars.data().lock().map_err(|_| candle_core::Error::Msg("parameter map lock poisoned".into()))?;
        if let Some(var) = vars.get(name) {
            let tensor = var.as_tensor();
            if tensor.shape() != &shape {
                candle_core::bail!(
                    "parameter `{name}` exists with shape {:?}, requested {:?}",
                    tensor.dims(),
                    shape.dims()
                )
            }
            return tensor.to_dtype(dtype);
        }
        let values = self.sample(init, shape.elem_count())?;
        let tensor = Tensor::from_vec(values, shape, device)?.to_dtype(dtype)?;
        let var = Var::from_tensor(&tensor)?;
        vars.insert(name.to_string(), var.clone());
        Ok(var.as_tensor().clone())
    }

    fn get_unchecked(&self, name: &str, dtype: DType, _device: &Device) -> candle_core::Result<Tensor> {
        let vars =
            self.vars.data().lock().map_err(|_| candle_core::Error::Msg("parameter map lock poisoned".into()))?;
        match vars.get(name) {
            Some(var) => var.as_tensor().to_dtype(dtype),
            None => candle_core::bail!("no parameter named `{name}`"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.vars.data().lock().map(|vars| vars.contains_key(name)).unwrap_or(false)
    }
}

/// A `VarBuilder` that creates every requested parameter as a `Var` in `vars`, initialised from a generator
/// seeded with `seed`. Parameters already in `vars` are reused (that is how weights are tied).
pub fn seeded_var_builder(vars: &VarMap, seed: u64, dtype: DType, device: &Device) -> VarBuilder<'static> {
    let backend = SeededBackend { vars: vars.clone(), rng: Mutex::new(Rng::seed_from_u64(seed)) };
    VarBuilder::from_backend(Box::new(backend), dtype, device.clone())
}

/// All trainable parameters of `vars`, sorted by name so that iteration order never depends on hashing.
pub fn named_vars(vars: &VarMap) -> Vec<(String, Var)> {
    let data = vars.data().lock().map(|d| d.iter().map(|(name, var)| (name.clone(), var.clone())).collect::<Vec<_>>());
    let mut named = data.unwrap_or_default();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_parameters() {
        let draw = |seed| {
            let vars = VarMap::new();
            let vb = seeded_var_builder(&vars, seed, DType::F32, &Device::Cpu);
            vb.get_with_hints((4, 3), "w", WeightInit::XavierUniform.for_matrix(4, 3))
                .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
                .unwrap()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        let bound = (6.0f32 / 7.0).sqrt();
        assert!(draw(7).iter().all(|v| v.abs() <= bound));
    }

    #[test]
    fn existing_parameter_is_reused_and_shape_checked() {
        let vars = VarMap::new();
        let vb = seeded_var_builder(&vars, 0, DType::F32, &Device::Cpu);
        let a = vb.get_with_hints((2, 2), "w", Init::Const(1.0)).unwrap();
        let b = vb.get_with_hints((2, 2), "w", Init::Const(5.0)).unwrap();
        assert_eq!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
        assert!(vb.get_with_hints((3, 2), "w", Init::Const(0.0)).is_err());
        assert_eq!(named_vars(&vars).len(), 1);
    }
}
