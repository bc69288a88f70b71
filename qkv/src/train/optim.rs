//! AdamW (Loshchilov & Hutter, 2019) applied in place: one pass over each parameter updates the moments and the
//! weights together, with gradient-norm clipping folded into the same pass. candle-nn's AdamW spends about ten
//! tensor ops, each allocating, per parameter per step.

use std::sync::Mutex;

use candle_core::{backprop::GradStore, CpuStorage, DType, InplaceOp2, Layout, Tensor, Var};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::kernels::{as_f32, storage_f32, PARALLEL_MIN_ELEMENTS};
use crate::{Error, Result};

/// Hyper-parameters; defaults are PyTorch's `torch.optim.AdamW`. Serialised under Hugging Face
/// `TrainingArguments`' names.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdamWConfig {
    /// β₁: decay rate of the first-moment (mean) estimate (default 0.9).
    #[serde(rename = "adam_beta1")]
    pub beta1: f64,
    /// β₂: decay rate of the second-moment (uncentred variance) estimate (default 0.999).
    #[serde(rename = "adam_beta2")]
    pub beta2: f64,
    /// ε added to the square root of the second moment, against division by zero (default 1e-8).
    #[serde(rename = "adam_epsilon")]
    pub eps: f64,
    /// Decoupled weight decay, applied only to parameters in the decay group.
    pub weight_decay: f64,
}

impl AdamWConfig {
    /// Errors naming the option for β outside [0, 1), a non-positive ε or a negative weight decay.
    pub fn validate(&self) -> Result<()> {
        for (option, value) in [("adam_beta1", self.beta1), ("adam_beta2", self.beta2)] {
            if !(0.0..1.0).contains(&value) {
                return Err(Error::config(option, value, "a number in [0, 1)"));
            }
        }
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return Err(Error::config("adam_epsilon", self.eps, "a positive number"));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(Error::config("weight_decay", self.weight_decay, "a non-negative number"));
        }
        Ok(())
    }
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

struct Param {
    name: String,
    var: Var,
    decay: bool,
    moments: Moments,
}

/// Adam's first and second moments of one parameter.
enum Moments {
    /// f32 CPU parameters: host vectors updated in place by the fused kernel.
    Host(Vec<f32>, Vec<f32>),
    /// Any other device or dtype: tensors beside the parameter, updated with tensor ops.
    Tensors(Tensor, Tensor),
}

/// What one step saw.
#[derive(Debug, Clone, Copy)]
pub struct StepStats {
    /// Global L2 norm of the gradients before clipping.
    pub grad_norm: f64,
}

/// AdamW over a fixed list of named parameters, its moments kept per parameter, updated in place.
pub struct AdamW {
    config: AdamWConfig,
    params: Vec<Param>,
    step: usize,
}

impl AdamW {
    /// Parameters in name order; `decay(name, var)` chooses the weight-decay group. [`AdamW::decay_matrices`] is
    /// the usual rule (matrices decay; biases, LayerNorm gains and other vectors do not).
    pub fn new(vars: Vec<(String, Var)>, config: AdamWConfig, decay: impl Fn(&str, &Var) -> bool) -> Result<Self> {
        let params = vars
            .into_iter()
            .map(|(name, var)| {
                let moments = if crate::kernels::fused(var.as_tensor()) {
                    Moments::Host(vec![0.0; var.elem_count()], vec![0.0; var.elem_count()])
                } else {
                    Moments::Tensors(var.as_tensor().zeros_like()?, var.as_tensor().zeros_like()?)
                };
                Ok(Param { decay: decay(&name, &var), name, var, moments })
            })
            .collect::<Result<_>>()?;
        Ok(Self { config, params, step: 0 })
    }

    /// The usual decay rule: parameters of rank ≥ 2 (matrices) decay; biases, norm gains and other vectors do not.
    pub fn decay_matrices(_name: &str, var: &Var) -> bool {
        var.rank() >= 2
    }

    /// Optimizer steps taken so far (the bias corrections' t).
    pub fn steps_taken(&self) -> usize {
        self.step
    }

    /// Names of the parameters in the decay group, for reports and tests.
    pub fn decayed(&self) -> impl Iterator<Item = &str> {
        self.params.iter().filter(|p| p.decay).map(|p| p.name.as_str())
    }

    /// One update at learning rate `lr`. With `max_grad_norm`, gradients are scaled by min(1, max / ‖g‖) first,
    /// as `torch.nn.utils.clip_grad_norm_`. Parameters without a gradient are skipped entirely (no decay either),
    /// as PyTorch skips parameters whose `.grad` is None.
    pub fn step(&mut self, grads: &GradStore, lr: f64, max_grad_norm: Option<f64>) -> Result<StepStats> {
        let grad_norm = self.grad_norm(grads)?;
        if !grad_norm.is_finite() {
            return Err(Error::config("gradients", grad_norm, "a finite gradient norm (the loss diverged)"));
        }
        let clip = match max_grad_norm {
            Some(max) if grad_norm > max => (max / (grad_norm + 1e-6)) as f32,
            _ => 1.0,
        };
        self.step += 1;
        let t = self.step as i32;
        let c = self.config;
        for p in &mut self.params {
            let Some(grad) = grads.get(&p.var) else { continue };
            let (m, v) = match &mut p.moments {
                Moments::Host(m, v) => (m, v),
                Moments::Tensors(m, v) => {
                    let g = (grad * clip as f64)?;
                    let (new_p, new_m, new_v) = composed_step((p.var.as_tensor(), m, v), &g, c, (lr, t, p.decay))?;
                    p.var.set(&new_p)?;
                    (*m, *v) = (new_m, new_v);
                    continue;
                }
            };
            let update = Update {
                lr: lr as f32,
                beta1: c.beta1 as f32,
                beta2: c.beta2 as f32,
                eps: c.eps as f32,
                decay: if p.decay { (lr * c.weight_decay) as f32 } else { 0.0 },
                bias1: 1.0 - (c.beta1 as f32).powi(t),
                bias2: 1.0 - (c.beta2 as f32).powi(t),
                clip,
                moments: Mutex::new((m, v)),
            };
            p.var.as_tensor().inplace_op2(&grad.contiguous()?, &update)?;
        }
        Ok(StepStats { grad_norm })
    }

    /// The moments as named tensors (`m.{param}`, `v.{param}`) and the step count, for a checkpoint.
    pub fn state(&self) -> Result<(usize, Vec<(String, candle_core::Tensor)>)> {
        let mut tensors = Vec::with_capacity(2 * self.params.len());
        for p in &self.params {
            let (m, v) = match &p.moments {
                Moments::Host(m, v) => {
                    let (shape, device) = (p.var.shape(), p.var.device());
                    (Tensor::from_slice(m, shape, device)?, Tensor::from_slice(v, shape, device)?)
                }
                Moments::Tensors(m, v) => (m.clone(), v.clone()),
            };
            tensors.push((format!("m.{}", p.name), m));
            tensors.push((format!("v.{}", p.name), v));
        }
        Ok((self.step, tensors))
    }

    /// Restores what [`state`](Self::state) saved. Every parameter must have both moments with its shape; a
    /// moment for a parameter this optimizer does not have is an error too (a checkpoint of another model).
    pub fn load_state(
        &mut self,
        step: usize,
        mut tensors: std::collections::HashMap<String, candle_core::Tensor>,
    ) -> Result<()> {
        for p in &mut self.params {
            let mut take = |prefix: &str| -> Result<Tensor> {
                let name = format!("{prefix}.{}", p.name);
                let t = tensors
                    .remove(&name)
                    .ok_or_else(|| Error::config("optimizer state", &name, "a moment for every parameter (missing)"))?;
                if t.dims() != p.var.dims() {
                    return Err(Error::shape("optimizer moment", format!("{name} {:?}", p.var.dims()), t.dims()));
                }
                Ok(t)
            };
            let (m, v) = (take("m")?, take("v")?);
            p.moments = match p.moments {
                Moments::Host(..) => {
                    let host = |t: Tensor| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>();
                    Moments::Host(host(m)?, host(v)?)
                }
                Moments::Tensors(..) => {
                    let like = |t: Tensor| t.to_dtype(p.var.dtype())?.to_device(p.var.device());
                    Moments::Tensors(like(m)?, like(v)?)
                }
            };
        }
        if let Some(name) = tensors.keys().next() {
            return Err(Error::config("optimizer state", name, "only moments of this model's parameters"));
        }
        self.step = step;
        Ok(())
    }

    /// √(Σ ‖g‖²) over every parameter's gradient.
    fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut total = 0f64;
        for p in &self.params {
            let Some(grad) = grads.get(&p.var) else { continue };
            if !crate::kernels::fused(grad) {
                total += grad.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
                continue;
            }
            let grad = grad.contiguous()?;
            let (storage, layout) = grad.storage_and_layout();
            let g = storage_f32(&storage, layout, "gradient norm")?;
            total += g.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>();
        }
        Ok(total.sqrt())
    }
}

/// The in-place update of one parameter from its gradient.
struct Update<'a> {
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    /// lr · weight_decay, or 0 outside the decay group.
    decay: f32,
    bias1: f32,
    bias2: f32,
    clip: f32,
    /// Borrowed for the duration of the op; candle's in-place ops take `&self`.
    moments: Mutex<(&'a mut Vec<f32>, &'a mut Vec<f32>)>,
}

impl Update<'_> {
    /// PyTorch's AdamW: p ← p·(1 − lr·λ); m ← β₁m + (1−β₁)g; v ← β₂v + (1−β₂)g²;
    /// p ← p − (lr / (1−β₁ᵗ)) · m / (√v / √(1−β₂ᵗ) + ε).
    fn apply(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        let step_size = self.lr / self.bias1;
        let sqrt_bias2 = self.bias2.sqrt();
        for i in 0..p.len() {
            let g = g[i] * self.clip;
            m[i] = self.beta1 * m[i] + (1.0 - self.beta1) * g;
            v[i] = self.beta2 * v[i] + (1.0 - self.beta2) * g * g;
            p[i] *= 1.0 - self.decay;
            p[i] -= step_size * m[i] / (v[i].sqrt() / sqrt_bias2 + self.eps);
        }
    }
}

const NAME: &str = "qkv-adamw";

impl InplaceOp2 for Update<'_> {
    fn name(&self) -> &'static str {
        NAME
    }

    fn cpu_fwd(&self, dst: &mut CpuStorage, dst_l: &Layout, gs: &CpuStorage, gl: &Layout) -> candle_core::Result<()> {
        let g = as_f32(gs, gl, NAME)?;
        let CpuStorage::F32(p) = dst else { candle_core::bail!("{NAME}: parameters must be f32") };
        let Some((start, end)) = dst_l.contiguous_offsets() else { candle_core::bail!("{NAME}: strided parameter") };
        let p = &mut p[start..end];
        if p.len() != g.len() {
            candle_core::bail!("{NAME}: parameter of {} values, gradient of {}", p.len(), g.len())
        }
        let mut moments = self.moments.lock().map_err(|_| candle_core::Error::Msg(format!("{NAME}: lock poisoned")))?;
        let (m, v) = &mut *moments;
        const BLOCK: usize = 8192;
        if p.len() >= PARALLEL_MIN_ELEMENTS {
            p.par_chunks_mut(BLOCK)
                .zip(g.par_chunks(BLOCK))
                .zip(m.par_chunks_mut(BLOCK).zip(v.par_chunks_mut(BLOCK)))
                .for_each(|((p, g), (m, v))| self.apply(p, g, m, v));
        } else {
            self.apply(p, g, m, v);
        }
        Ok(())
    }
}

/// The same update written with tensor ops, for parameters the kernel cannot update (other devices and
/// dtypes) and as the kernel's reference in tests: (p, m, v) after step `t`.
fn composed_step(
    (p, m, v): (&Tensor, &Tensor, &Tensor),
    g: &Tensor,
    config: AdamWConfig,
    (lr, t, decay): (f64, i32, bool),
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let m = ((m * config.beta1)? + (g * (1.0 - config.beta1))?)?;
    let v = ((v * config.beta2)? + (g.sqr()? * (1.0 - config.beta2))?)?;
    let p = if decay { (p * (1.0 - lr * config.weight_decay))? } else { p.clone() };
    let (b1, b2) = (1.0 - config.beta1.powi(t), 1.0 - config.beta2.powi(t));
    let denom = ((v.sqrt()? / b2.sqrt())? + config.eps)?;
    let p = (p - ((&m / denom)? * (lr / b1))?)?;
    Ok((p, m, v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::twin::{randn, relative_error};

    /// Three in-place steps equal the tensor-op reference, for a decayed matrix and an undecayed vector, with
    /// and without clipping.
    #[test]
    fn in_place_update_matches_reference() {
        let config = AdamWConfig { weight_decay: 0.1, ..AdamWConfig::default() };
        for clip in [None, Some(0.5)] {
            let w = randn(&[40, 600], 1, 1.0);
            let b = randn(&[7], 2, 1.0);
            let mut opt =
                AdamW::new(vec![("b".into(), b.clone()), ("w".into(), w.clone())], config, AdamW::decay_matrices)
                    .unwrap();
            assert_eq!(opt.decayed().collect::<Vec<_>>(), vec!["w"]);
            let mut reference: Vec<(Tensor, Tensor, Tensor, bool)> = [(&w, true), (&b, false)]
                .iter()
                .map(|(var, decay)| {
                    let t = var.as_tensor().copy().unwrap();
                    (t.clone(), t.zeros_like().unwrap(), t.zeros_like().unwrap(), *decay)
                })
                .collect();
            for step in 1..=3 {
                let loss = ((w.as_tensor().sqr().unwrap().sum_all().unwrap() * 0.5).unwrap()
                    + b.as_tensor().sum_all().unwrap())
                .unwrap();
                let grads = loss.backward().unwrap();
                let stats = opt.step(&grads, 1e-2, clip).unwrap();
                let coef = match clip {
                    Some(max) if stats.grad_norm > max => max / (stats.grad_norm + 1e-6),
                    _ => 1.0,
                };
                for (i, var) in [&w, &b].iter().enumerate() {
                    let (p, m, v, decay) = &reference[i];
                    let g = (grads.get(var).unwrap() * coef).unwrap();
                    let (p, m, v) = composed_step((p, m, v), &g, config, (1e-2, step, *decay)).unwrap();
                    let err = relative_error(var.as_tensor(), &p);
                    assert!(err <= 1e-5, "clip {clip:?} step {step} param {i}: {err:e}");
                    reference[i] = (p, m, v, *decay);
                }
            }
        }
    }

    /// Parameters the kernel cannot take (here f64) are updated by the composed twin, to the same values as
    /// f32 parameters through the kernel, and their moments round-trip through the optimizer state.
    #[test]
    fn other_dtypes_take_the_composed_update() {
        let config = AdamWConfig { weight_decay: 0.1, ..AdamWConfig::default() };
        let w32 = randn(&[5, 6], 3, 1.0);
        let w64 = Var::from_tensor(&w32.as_tensor().to_dtype(DType::F64).unwrap()).unwrap();
        let mut fused = AdamW::new(vec![("w".into(), w32.clone())], config, AdamW::decay_matrices).unwrap();
        let mut composed = AdamW::new(vec![("w".into(), w64.clone())], config, AdamW::decay_matrices).unwrap();
        for _ in 0..3 {
            let g32 = w32.as_tensor().sqr().unwrap().sum_all().unwrap().backward().unwrap();
            let g64 = w64.as_tensor().sqr().unwrap().sum_all().unwrap().backward().unwrap();
            let (a, b) = (fused.step(&g32, 1e-2, Some(1.0)).unwrap(), composed.step(&g64, 1e-2, Some(1.0)).unwrap());
            assert!((a.grad_norm - b.grad_norm).abs() <= 1e-5 * a.grad_norm);
        }
        let err = relative_error(&w64.as_tensor().to_dtype(DType::F32).unwrap(), w32.as_tensor());
        assert!(err <= 1e-5, "{err:e}");
        let (step, moments) = composed.state().unwrap();
        assert_eq!((step, moments[0].1.dtype()), (3, DType::F64));
        let mut again = AdamW::new(vec![("w".into(), w64.clone())], config, AdamW::decay_matrices).unwrap();
        again.load_state(step, moments.into_iter().collect()).unwrap();
        assert_eq!(
            again.state().unwrap().1[1].1.to_vec2::<f64>().unwrap(),
            composed.state().unwrap().1[1].1.to_vec2::<f64>().unwrap()
        );
    }

    #[test]
    fn diverged_gradients_are_an_error() {
        let w = randn(&[3], 1, 1.0);
        let mut opt = AdamW::new(vec![("w".into(), w.clone())], AdamWConfig::default(), AdamW::decay_matrices).unwrap();
        let loss = (w.as_tensor() * f64::NAN).unwrap().sum_all().unwrap();
        let err = opt.step(&loss.backward().unwrap(), 1e-3, None).unwrap_err().to_string();
        assert!(err.contains("finite gradient norm"), "{err}");
    }
}
