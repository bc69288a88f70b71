//! Loading the PyTorch parity fixtures written by tools/fixtures/make_fixtures.py and comparing against them;
//! running a trainer and collecting its loss curve.
#![allow(dead_code)] // each test crate uses a different subset

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use candle_core::{backprop::GradStore, DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use qkv::nn::{params::named_vars, seeded_var_builder};

pub struct Fixture {
    pub name: String,
    tensors: HashMap<String, Tensor>,
    pub config: serde_json::Value,
}

/// max |got − want| / max(1, max |want|): absolute for small references, relative for large ones.
pub fn error_scaled_to_one(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.dims(), want.dims());
    let max = |t: Tensor| t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap() as f64;
    max((got - want).unwrap()) / max(want.clone()).max(1.0)
}

/// max |got − want| / max |want|, in f64.
pub fn relative_error(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.dims(), want.dims(), "shape mismatch");
    let got = got.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let want = want.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    assert!(got.iter().all(|v| v.is_finite()), "non-finite values in result");
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
    let diff = got.iter().zip(&want).fold(0f64, |m, (a, b)| m.max((a - b).abs()));
    diff / scale
}

fn max_abs(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
}

impl Fixture {
    pub fn load(name: &str) -> Self {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(format!("{name}.safetensors"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).expect("safetensors header");
        let config = metadata
            .metadata()
            .as_ref()
            .and_then(|m| m.get("config"))
            .map(|c| serde_json::from_str(c).expect("config metadata is JSON"))
            .unwrap_or(serde_json::Value::Null);
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).expect("fixture tensors");
        Self { name: name.to_string(), tensors, config }
    }

    pub fn has(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    pub fn tensor(&self, key: &str) -> Tensor {
        self.tensors.get(key).unwrap_or_else(|| panic!("fixture {} has no tensor {key}", self.name)).clone()
    }

    /// A float input as a trainable variable (f32), so its gradient can be checked.
    pub fn input_var(&self, name: &str) -> Var {
        Var::from_tensor(&self.tensor(&format!("input.{name}")).to_dtype(DType::F32).unwrap()).unwrap()
    }

    pub fn input(&self, name: &str) -> Tensor {
        self.tensor(&format!("input.{name}"))
    }

    pub fn config_usize(&self, key: &str) -> usize {
        self.config[key].as_u64().unwrap_or_else(|| panic!("config key {key}")) as usize
    }

    pub fn config_value<T: serde::de::DeserializeOwned>(&self, key: &str) -> T {
        serde_json::from_value(self.config[key].clone()).unwrap_or_else(|e| panic!("config key {key}: {e}"))
    }

    /// Builds a block with fresh parameters, then overwrites every parameter with the fixture's values.
    /// The block's parameter names must be exactly the fixture's, so nothing is left at its initial value and
    /// nothing in the fixture goes unused.
    pub fn build<M>(&self, build: impl FnOnce(VarBuilder<'static>) -> qkv::Result<M>) -> (M, VarMap) {
        let mut vars = VarMap::new();
        let block = build(seeded_var_builder(&vars, 0, DType::F32, &Device::Cpu)).expect("block builds");
        let params: BTreeMap<String, Tensor> = self
            .tensors
            .iter()
            .filter_map(|(k, t)| k.strip_prefix("param.").map(|n| (n.to_string(), t.clone())))
            .collect();
        let ours: BTreeSet<String> = named_vars(&vars).into_iter().map(|(n, _)| n).collect();
        let theirs: BTreeSet<String> = params.keys().cloned().collect();
        assert_eq!(ours, theirs, "{}: parameter names differ from the fixture", self.name);
        for (name, value) in params {
            vars.set_one(&name, value.to_dtype(DType::F32).unwrap()).unwrap();
        }
        (block, vars)
    }

    /// Σ sum(output · R) over the named outputs, with the fixture's fixed R.
    pub fn loss(&self, outputs: &[(&str, &Tensor)]) -> Tensor {
        let mut total: Option<Tensor> = None;
        for (name, out) in outputs {
            let r = self.tensor(&format!("loss.{name}")).to_dtype(out.dtype()).unwrap();
            let term = (*out * r).unwrap().sum_all().unwrap();
            total = Some(match total {
                Some(t) => (t + term).unwrap(),
                None => term,
            });
        }
        total.expect("at least one output")
    }

    /// Checks an output against `output.{name}`; returns the relative error.
    pub fn check_output(&self, name: &str, got: &Tensor, tolerance: f64) -> f64 {
        let err = relative_error(got, &self.tensor(&format!("output.{name}")));
        assert!(err <= tolerance, "{}: output {name} relative error {err:.3e} > {tolerance:.0e}", self.name);
        err
    }

    /// Checks the gradient of every parameter in the fixture, and of the named inputs; returns the worst
    /// relative error. A parameter without a gradient fails: gradients must reach every parameter.
    ///
    /// The key projection's bias is the exception to the relative measure: it adds q·b_K to every score of a
    /// query, a constant the softmax removes, so its exact gradient is zero and both implementations return
    /// rounding noise. It must stay below `tolerance` × the largest gradient in the fixture. (With rotary
    /// positions b_K is turned differently at every key and its gradient is real: it is then checked as the
    /// others are.)
    pub fn check_grads(&self, grads: &GradStore, vars: &VarMap, inputs: &[(&str, &Var)], tolerance: f64) -> f64 {
        let mut checks: Vec<(String, Tensor)> = Vec::new();
        for (name, var) in named_vars(vars) {
            let got = grads.get(&var).unwrap_or_else(|| panic!("{}: no gradient reached parameter {name}", self.name));
            checks.push((format!("param.{name}"), got.clone()));
        }
        for (name, var) in inputs {
            let got = grads.get(var).unwrap_or_else(|| panic!("{}: no gradient reached input {name}", self.name));
            checks.push((format!("input.{name}"), got.clone()));
        }
        let largest =
            checks.iter().map(|(label, _)| max_abs(&self.tensor(&format!("grad.{label}")))).fold(0f64, f64::max);
        let mut worst = 0f64;
        for (label, got) in checks {
            let reference = self.tensor(&format!("grad.{label}"));
            if label.ends_with("k_proj.bias") && max_abs(&reference) <= tolerance * largest {
                let noise = max_abs(&got);
                assert!(noise <= tolerance * largest, "{}: {label} should be ~0, got {noise:.3e}", self.name);
                continue;
            }
            let err = relative_error(&got, &reference);
            assert!(err <= tolerance, "{}: gradient of {label} relative error {err:.3e} > {tolerance:.0e}", self.name);
            worst = worst.max(err);
        }
        worst
    }

    pub fn report(&self, output_err: f64, grad_err: f64) {
        println!("{:<28} output {output_err:.2e}  gradients {grad_err:.2e}", self.name);
    }
}

/// Runs `trainer` to its end, or raises the stop flag (as Ctrl-C does) after step `stop_after`; returns how it
/// ended and each step's (step, loss).
pub fn step_losses<T: qkv::train::trainer::Task>(
    trainer: &mut qkv::train::trainer::Trainer<T>,
    stop_after: Option<usize>,
) -> (qkv::train::trainer::Finish, Vec<(usize, f64)>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = AtomicBool::new(false);
    let mut losses = Vec::new();
    let finish = trainer
        .run(&stop, |event| {
            if let qkv::train::trainer::Event::Step(r) = event {
                losses.push((r.step, r.loss));
                if stop_after == Some(r.step) {
                    stop.store(true, Ordering::Relaxed);
                }
            }
        })
        .unwrap();
    (finish, losses)
}
