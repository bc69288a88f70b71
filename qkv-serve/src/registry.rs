//! The served models, each loaded once from its directory as the kind its files say it is.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::Device;
use qkv::inference::{Embedder, Generator, ModelKind, Translator};
use qkv::WeightDtype;

use crate::api::ApiError;

/// A loaded model (boxed: the variants differ in size and each is shared behind an `Arc` anyway).
pub enum Served {
    Embedder(Box<Embedder>),
    Generator(Box<Generator>),
    Translator(Box<Translator>),
}

impl Served {
    fn kind(&self) -> &'static str {
        match self {
            Served::Embedder(_) => "an embedding model",
            Served::Generator(_) => "a generative (GPT-2) model",
            Served::Translator(_) => "a translation model",
        }
    }
}

/// The models by name.
pub struct Registry {
    models: BTreeMap<String, Arc<Served>>,
}

impl Registry {
    /// Loads every (name, directory), weights stored in `dtype` (`None`: the dtype each was saved in); a
    /// directory of a kind the server has no endpoint for is an error.
    pub fn load(models: &[(String, PathBuf)], dtype: Option<WeightDtype>) -> qkv::Result<Self> {
        let device = Device::Cpu;
        let mut loaded = BTreeMap::new();
        for (name, dir) in models {
            let dtype = qkv::hub::reduced::dtype_or_stored(dtype, dir)?;
            let served = match ModelKind::detect(dir)? {
                ModelKind::Embedder => Served::Embedder(Box::new(Embedder::load_as(dir, &device, dtype)?)),
                ModelKind::Generator => Served::Generator(Box::new(Generator::load_as(dir, &device, dtype)?)),
                ModelKind::Translator => Served::Translator(Box::new(Translator::load_as(dir, &device, dtype)?)),
                ModelKind::BertTask(head) => {
                    let message = format!("a BERT with a {head:?} head: the server has no endpoint for it yet");
                    return Err(qkv::Error::io(dir, std::io::Error::other(message)));
                }
            };
            loaded.insert(name.clone(), Arc::new(served));
        }
        Ok(Self { models: loaded })
    }

    pub fn names(&self) -> Vec<String> {
        self.models.keys().cloned().collect()
    }

    fn get(&self, name: &str) -> Result<Arc<Served>, ApiError> {
        self.models.get(name).cloned().ok_or_else(|| ApiError::model_not_found(name, &self.names()))
    }

    /// The embedding model `name`, or a 4xx saying why not.
    pub fn embedder(&self, name: &str) -> Result<Arc<Served>, ApiError> {
        self.of_kind(name, "an embedding model", |s| matches!(s, Served::Embedder(_)))
    }

    /// The translation model `name`, or a 4xx saying why not.
    pub fn translator(&self, name: &str) -> Result<Arc<Served>, ApiError> {
        self.of_kind(name, "a translation model", |s| matches!(s, Served::Translator(_)))
    }

    /// The generative model `name`, or a 4xx saying why not.
    pub fn generator(&self, name: &str) -> Result<Arc<Served>, ApiError> {
        self.of_kind(name, "a generative model", |s| matches!(s, Served::Generator(_)))
    }

    /// Model `name` if `is_wanted` says it is `wanted` (for the error), else 404 or 400.
    fn of_kind(&self, name: &str, wanted: &str, is_wanted: fn(&Served) -> bool) -> Result<Arc<Served>, ApiError> {
        let served = self.get(name)?;
        if is_wanted(&served) {
            return Ok(served);
        }
        Err(ApiError::invalid("model", format!("`{name}` is {}, not {wanted}", served.kind())))
    }
}
