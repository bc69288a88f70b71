//! Weights on disk: the one stack every model directory and checkpoint goes through. Reading (single-file
//! or sharded safetensors or PyTorch pickles, as f32), writing (atomically, with the `{"format": "pt"}` metadata transformers
//! requires), setting a model's parameters through its architecture's name table, and averaging checkpoints.
//! The strictness is the same everywhere: a missing or wrongly shaped tensor is an error that names it with both
//! shapes; tensors the model has no use for are reported ([`LoadReport::unused`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;

use super::header::WeightHeader;
use super::pytorch::load_pytorch;
use super::shard_index::{read_weight_map, shard_files};
use super::weight_files::WeightFiles;
use super::WEIGHTS;
use crate::{Error, Result};

/// Every weight of a model directory as f32 on `device`, from `model.safetensors`, the shards of
/// `model.safetensors.index.json`, `pytorch_model.bin` or the shards of `pytorch_model.bin.index.json` (the
/// first that exists; PyTorch files are checked before they are read, see [`super::pytorch`]).
pub fn load_weights(dir: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let files = WeightFiles::find(dir)?;
    let load: fn(&Path, &Device) -> Result<HashMap<String, Tensor>> =
        if files.is_pytorch() { load_pytorch } else { load_safetensors };
    match &files {
        WeightFiles::Safetensors(path) | WeightFiles::Pytorch(path) => load(path, device),
        WeightFiles::SafetensorsShards(index) | WeightFiles::PytorchShards(index) => load_shards(index, device, load),
    }
}

/// Writes the weights of a PyTorch-format directory (`pytorch_model.bin` or its shards) as
/// `dir/model.safetensors` (one file, f32, transformers' metadata), through a temporary file, fsync and rename;
/// returns its path. A directory that already has safetensors weights is left alone (an error says so).
pub fn convert_to_safetensors(dir: &Path) -> Result<PathBuf> {
    let files = WeightFiles::find(dir)?;
    if !files.is_pytorch() {
        return Err(Error::input(dir, None, "already has safetensors weights: nothing to convert"));
    }
    let mut tensors: Vec<(String, Tensor)> = load_weights(dir, &Device::Cpu)?.into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let path = dir.join(WEIGHTS);
    save_safetensors(&tensors, &path)?;
    Ok(path)
}

/// Every tensor of one safetensors file as f32 on `device`. The header is checked first (offsets, sizes,
/// dtypes qkv can read), so a damaged file is an error naming the tensor rather than the allocator's abort.
pub fn load_safetensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let header = WeightHeader::read_file(path)?;
    if let Some((name, entry)) = header.iter().find(|(_, e)| !readable_dtype(e.dtype)) {
        let message = format!(
            "tensor `{name}` is {:?}; qkv reads F32, F16, BF16 or F64 weights, I8 as `qkv convert` writes them (and integer buffers)",
            entry.dtype
        );
        return Err(Error::input(path, None, message));
    }
    let unreadable = |e: candle_core::Error| Error::input(path, None, format!("not a readable safetensors file: {e}"));
    if let Some(tensors) = read_each(path, &header, device)? {
        return Ok(tensors);
    }
    // A dtype candle takes only through its own conversion (I16, I32, U16 buffers): through a map of the file.
    // SAFETY: the map lives only inside this function and every tensor is copied out of it; as with any mapped
    // file, another process rewriting the file meanwhile would change the values read, not memory safety.
    let file = unsafe { candle_core::safetensors::MmapedSafetensors::new(path) }.map_err(unreadable)?;
    let tensors = file.tensors();
    let load = |view: &safetensors::tensor::TensorView| candle_core::safetensors::Load::load(view, device);
    tensors.into_iter().map(|(name, view)| Ok((name, load(&view).map_err(unreadable)?.to_dtype(DType::F32)?))).collect()
}

/// Every tensor of a safetensors file read into a buffer of its own, at the byte range its checked `header`
/// gives, and converted to f32: the load holds the tensors and one tensor's bytes, never the whole file besides
/// (GPT-2 small: 539 MiB resident after the load, against 1 032 when the file was read whole; a map of the file
/// counts its pages too). `None` when a tensor's dtype is one candle cannot take from raw bytes.
fn read_each(path: &Path, header: &WeightHeader, device: &Device) -> Result<Option<HashMap<String, Tensor>>> {
    use safetensors::Dtype;
    use std::io::{Read, Seek, SeekFrom};
    let io = |e: std::io::Error| Error::io(path, e);
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut tensors = HashMap::new();
    let mut int8 = Vec::new();
    for (name, entry) in header.iter() {
        let dtype = match entry.dtype {
            Dtype::I8 => None,
            Dtype::F32 => Some(DType::F32),
            Dtype::F16 => Some(DType::F16),
            Dtype::BF16 => Some(DType::BF16),
            Dtype::F64 => Some(DType::F64),
            Dtype::U8 => Some(DType::U8),
            Dtype::U32 => Some(DType::U32),
            Dtype::I64 => Some(DType::I64),
            _ => return Ok(None),
        };
        let Some(range) = entry.bytes.clone() else { return Ok(None) };
        // The range was checked against the file's length, so this allocation is bounded by the file.
        let mut bytes = vec![0u8; (range.end - range.start) as usize];
        file.seek(SeekFrom::Start(range.start)).map_err(io)?;
        file.read_exact(&mut bytes).map_err(io)?;
        let tensor = match dtype {
            Some(dtype) => Tensor::from_raw_buffer(&bytes, dtype, &entry.shape, device)
                .map_err(|e| Error::input(path, None, format!("tensor `{name}`: {e}")))?
                .to_dtype(DType::F32)?,
            // An int8 matrix of `qkv convert`, widened with its scales once every tensor is read.
            None => {
                int8.push(name.clone());
                let values: Vec<f32> = bytes.iter().map(|&b| f32::from(b as i8)).collect();
                Tensor::from_vec(values, entry.shape.as_slice(), device)?
            }
        };
        tensors.insert(name.clone(), tensor);
    }
    widen_int8(path, &mut tensors, &int8)?;
    Ok(Some(tensors))
}

/// What an int8 matrix's scales are called in a file `qkv convert --dtype int8` writes ([`super::reduced`]): its
/// name and this.
pub const SCALE_SUFFIX: &str = ".qkv_scale";

/// The int8 matrices of a file read by the loader (their values as f32), widened with their scales: every
/// `{name}.qkv_scale` is taken out of `tensors` and multiplies `name`. An int8 matrix without its scales, or
/// scales without their matrix or of the wrong shape, is an error naming the tensor.
fn widen_int8(path: &Path, tensors: &mut HashMap<String, Tensor>, int8: &[String]) -> Result<()> {
    let scale_names: Vec<String> = tensors.keys().filter(|n| n.ends_with(SCALE_SUFFIX)).cloned().collect();
    for scale_name in &scale_names {
        let name = &scale_name[..scale_name.len() - SCALE_SUFFIX.len()];
        if !int8.iter().any(|n| n == name) {
            let message = format!("tensor `{scale_name}` has no I8 matrix `{name}` to scale");
            return Err(Error::input(path, None, message));
        }
    }
    for name in int8 {
        let scale_name = format!("{name}{SCALE_SUFFIX}");
        let Some(scales) = tensors.remove(&scale_name) else {
            let message = format!("tensor `{name}` is I8 without `{scale_name}`: qkv reads int8 matrices as `qkv convert --dtype int8` writes them");
            return Err(Error::input(path, None, message));
        };
        let q = &tensors[name];
        let (rows, cols) = q.dims2().map_err(|_| {
            Error::input(path, None, format!("tensor `{name}`: an I8 tensor must be a matrix, found {:?}", q.dims()))
        })?;
        if scales.dims() != [rows, 1] && scales.dims() != [1, cols] {
            let message =
                format!("tensor `{scale_name}` has shape {:?}; expected [{rows}, 1] or [1, {cols}]", scales.dims());
            return Err(Error::input(path, None, message));
        }
        let widened = q.broadcast_mul(&scales)?;
        tensors.insert(name.clone(), widened);
    }
    Ok(())
}

/// Dtypes candle converts to f32 exactly enough to compute with.
fn readable_dtype(dtype: safetensors::Dtype) -> bool {
    use safetensors::Dtype::*;
    matches!(dtype, F32 | F16 | BF16 | F64 | I8 | U8 | U16 | U32 | I16 | I32 | I64)
}

/// The tensors of the shards `index` lists, each shard read by `load`; every tensor the index names must be in
/// the shard it names.
fn load_shards(
    index: &Path,
    device: &Device,
    load: fn(&Path, &Device) -> Result<HashMap<String, Tensor>>,
) -> Result<HashMap<String, Tensor>> {
    let weight_map = read_weight_map(index)?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut shards: BTreeMap<PathBuf, HashMap<String, Tensor>> = BTreeMap::new();
    for path in shard_files(index)? {
        let tensors = load(&path, device)?;
        shards.insert(path, tensors);
    }
    let mut weights = HashMap::new();
    for (name, file) in &weight_map {
        let path = dir.join(file);
        let tensor = shards.get_mut(&path).and_then(|s| s.remove(name));
        let tensor = tensor.ok_or_else(|| Error::input(&path, None, format!("has no tensor `{name}`")))?;
        weights.insert(name.clone(), tensor);
    }
    Ok(weights)
}

/// What loading did besides setting parameters from the checkpoint.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    /// Parameters the checkpoint did not have, left at their fresh initialisation (new task heads).
    pub initialized: Vec<String>,
    /// Checkpoint tensors this model has no use for (another class's head, buffers).
    pub unused: Vec<String>,
}

/// Sets each of `vars` (qkv names) from `weights` (checkpoint names) through `to_checkpoint`, the
/// architecture's name table. A wrongly shaped tensor is an error naming both names and shapes; a missing one
/// is an error unless `may_initialize(name)` says the parameter may keep its fresh value.
pub(crate) fn assign(
    vars: &[(String, Var)],
    mut weights: HashMap<String, Tensor>,
    source: &Path,
    to_checkpoint: impl Fn(&str) -> String,
    may_initialize: impl Fn(&str) -> bool,
) -> Result<LoadReport> {
    let mut report = LoadReport::default();
    for (name, var) in vars {
        let key = to_checkpoint(name);
        match weights.remove(&key) {
            Some(t) if t.dims() == var.dims() => var.set(&t)?,
            Some(t) => {
                let message = format!("tensor `{key}` has shape {:?}, expected {:?}", t.dims(), var.dims());
                return Err(Error::input(source, None, message));
            }
            None if may_initialize(name) => report.initialized.push(key),
            None => {
                let message = format!("tensor `{key}` is missing (expected shape {:?})", var.dims());
                return Err(Error::input(source, None, message));
            }
        }
    }
    report.unused = weights.into_keys().collect();
    report.unused.sort();
    Ok(report)
}

/// Writes `tensors` as a safetensors file that transformers accepts (it requires `{"format": "pt"}` in the
/// metadata), through a temporary file and a rename.
pub fn save_safetensors(tensors: &[(String, Tensor)], path: &Path) -> Result<()> {
    let mut data = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.to_dtype(DType::F32)?.contiguous()?;
        let bytes: Vec<u8> = t.flatten_all()?.to_vec1::<f32>()?.iter().flat_map(|v| v.to_le_bytes()).collect();
        data.push(RawTensor { name: name.clone(), dtype: safetensors::Dtype::F32, shape: t.dims().to_vec(), bytes });
    }
    write_raw(&data, &[], path)
}

/// One tensor as safetensors stores it: little-endian bytes of `dtype`.
pub(super) struct RawTensor {
    pub name: String,
    pub dtype: safetensors::Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

/// Writes `tensors` as a safetensors file with transformers' `{"format": "pt"}` and `metadata` besides, through
/// a temporary file and a rename.
pub(super) fn write_raw(tensors: &[RawTensor], metadata: &[(&str, &str)], path: &Path) -> Result<()> {
    let views = tensors
        .iter()
        .map(|t| {
            let view = safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.bytes)
                .map_err(|e| Error::input(path, None, format!("tensor `{}`: {e}", t.name)))?;
            Ok((t.name.as_str(), view))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut all = HashMap::from([("format".to_string(), "pt".to_string())]);
    all.extend(metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let bytes = safetensors::serialize(views, Some(all)).map_err(|e| Error::input(path, None, e))?;
    crate::atomic_file::write_atomically(path, &bytes)
}

/// Copies model directory `from` to the new directory `to`, every file but the weights (of any layout: a single
/// file, an index and its shards), which the caller writes.
pub fn copy_without_weights(from: &Path, to: &Path) -> Result<()> {
    copy_tree(from, to, true)
}

fn copy_tree(from: &Path, to: &Path, top: bool) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| Error::io(to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| Error::io(from, e))? {
        let entry = entry.map_err(|e| Error::io(from, e))?;
        let (path, name) = (entry.path(), entry.file_name());
        if path.is_dir() {
            copy_tree(&path, &to.join(&name), false)?;
        } else if !(top && WeightFiles::is_weight_file(&name.to_string_lossy())) {
            std::fs::copy(&path, to.join(&name)).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

/// Tensors a model is built over directly (no fresh initialisation, no variables: nothing records gradients),
/// remembering which names the model read so the rest can be reported. A missing or wrongly shaped tensor
/// fails the build with an error naming the file, the tensor and both shapes.
#[derive(Clone)]
pub struct WeightSource(Arc<Source>);

/// qkv parameter name → the name its tensor has in the source (an architecture's name table).
type NameTable = Box<dyn Fn(&str) -> String + Send + Sync>;

struct Source {
    tensors: HashMap<String, Tensor>,
    origin: PathBuf,
    names: Option<NameTable>,
    read: Mutex<BTreeSet<String>>,
}

impl WeightSource {
    /// Tensors under qkv's parameter names.
    pub fn new(tensors: HashMap<String, Tensor>, origin: &Path) -> Self {
        Self::named(tensors, origin, None)
    }

    /// Tensors under a checkpoint's names; `names` maps each qkv parameter to its checkpoint name.
    pub fn renamed(
        tensors: HashMap<String, Tensor>,
        origin: &Path,
        names: impl Fn(&str) -> String + Send + Sync + 'static,
    ) -> Self {
        Self::named(tensors, origin, Some(Box::new(names)))
    }

    fn named(tensors: HashMap<String, Tensor>, origin: &Path, names: Option<NameTable>) -> Self {
        let read = Mutex::new(BTreeSet::new());
        Self(Arc::new(Source { tensors, origin: origin.to_path_buf(), names, read }))
    }

    fn key(&self, name: &str) -> String {
        self.0.names.as_ref().map_or_else(|| name.to_string(), |names| names(name))
    }

    /// The tensors of a safetensors file (qkv's own checkpoints: qkv's names).
    pub fn from_file(path: &Path, device: &Device) -> Result<Self> {
        Ok(Self::new(load_safetensors(path, device)?, path))
    }

    /// A VarBuilder that hands out these tensors as `dtype` on `device`.
    pub fn builder(&self, dtype: DType, device: &Device) -> candle_nn::VarBuilder<'static> {
        candle_nn::VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }

    /// What the build read and did not: tensors no parameter asked for.
    pub fn report(&self) -> LoadReport {
        let read = self.0.read.lock().map(|r| r.clone()).unwrap_or_default();
        let mut unused: Vec<String> = self.0.tensors.keys().filter(|k| !read.contains(*k)).cloned().collect();
        unused.sort();
        LoadReport { initialized: Vec::new(), unused }
    }

    fn fetch(&self, name: &str, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        let key = self.key(name);
        let tensor = self.0.tensors.get(&key).ok_or_else(|| {
            candle_core::Error::Msg(format!("{}: tensor `{key}` is missing", self.0.origin.display()))
        })?;
        if let Ok(mut read) = self.0.read.lock() {
            read.insert(key);
        }
        tensor.to_dtype(dtype)?.to_device(device)
    }
}

impl SimpleBackend for WeightSource {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self.fetch(name, dtype, dev)?;
        if tensor.shape() != &shape {
            let (origin, key) = (self.0.origin.display(), self.key(name));
            let message =
                format!("{origin}: tensor `{key}` has shape {:?}, expected {:?}", tensor.dims(), shape.dims());
            return Err(candle_core::Error::Msg(message));
        }
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.fetch(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.tensors.contains_key(&self.key(name))
    }
}

/// Saves named parameters under their own names.
pub fn save_parameters(vars: &[(String, Var)], path: &Path) -> Result<()> {
    let tensors: Vec<(String, Tensor)> = vars.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
    save_safetensors(&tensors, path)
}

/// Sets every parameter from the file at `path`, which holds them under their own names (qkv's checkpoints).
pub fn load_parameters(vars: &[(String, Var)], path: &Path) -> Result<LoadReport> {
    if !path.exists() {
        return Err(Error::input(path, None, "no such file"));
    }
    let device = vars.first().map(|(_, v)| v.device().clone()).unwrap_or(Device::Cpu);
    assign(vars, load_safetensors(path, &device)?, path, str::to_string, |_| false)
}

/// The element-wise mean of the tensors in `paths` (checkpoint averaging, as in the paper's §6.1 — the last
/// checkpoints of a run averaged into one model). All files must hold the same names and shapes.
pub fn average_parameters(paths: &[PathBuf]) -> Result<Vec<(String, Tensor)>> {
    let Some(first) = paths.first() else {
        return Err(Error::config("checkpoints to average", 0, "at least one"));
    };
    let mut sums = load_safetensors(first, &Device::Cpu)?;
    for path in &paths[1..] {
        let mut tensors = load_safetensors(path, &Device::Cpu)?;
        for (name, sum) in sums.iter_mut() {
            let t = tensors.remove(name).ok_or_else(|| {
                Error::input(path, None, format!("tensor `{name}` is missing (present in {})", first.display()))
            })?;
            if t.dims() != sum.dims() {
                let message = format!("tensor `{name}` has shape {:?}, expected {:?}", t.dims(), sum.dims());
                return Err(Error::input(path, None, message));
            }
            *sum = (&*sum + t)?;
        }
        if let Some(name) = tensors.keys().min() {
            return Err(Error::input(path, None, format!("tensor `{name}` is not in {}", first.display())));
        }
    }
    let n = paths.len() as f64;
    let mut averaged: Vec<(String, Tensor)> =
        sums.into_iter().map(|(name, sum)| Ok((name, (sum / n)?))).collect::<Result<_>>()?;
    averaged.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(averaged)
}

/// Averages the weights of the model directories `inputs` into a new model directory `out` (written
/// atomically), with the first input's config and tokenizer files.
pub fn average_model_dirs(inputs: &[PathBuf], out: &Path) -> Result<()> {
    for dir in inputs {
        std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    }
    check_same_vocabulary(inputs)?;
    let files: Vec<PathBuf> = inputs.iter().map(|d| d.join(WEIGHTS)).collect();
    let averaged = average_parameters(&files)?;
    crate::atomic_file::replace_dir_atomically(out, |tmp| {
        let first = &inputs[0];
        for name in ["config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"] {
            let from = first.join(name);
            if from.exists() {
                std::fs::copy(&from, tmp.join(name)).map_err(|e| Error::io(&from, e))?;
            }
        }
        save_safetensors(&averaged, &tmp.join(WEIGHTS))
    })
}

/// The files that fix what each token id means.
const VOCABULARY_FILES: [&str; 4] = ["tokenizer.json", "vocab.txt", "vocab.json", "merges.txt"];

/// Models averaged together must share their vocabulary: two same-shape embedding tables over different
/// tokenizers average row i of one with an unrelated token's row of the other. JSON files are compared as
/// values (formatting aside), the others byte for byte; a file present in one directory only differs too.
fn check_same_vocabulary(inputs: &[PathBuf]) -> Result<()> {
    let Some(first) = inputs.first() else { return Ok(()) };
    for name in VOCABULARY_FILES {
        let reference = vocabulary_file(&first.join(name))?;
        for other in &inputs[1..] {
            let path = other.join(name);
            if vocabulary_file(&path)? != reference {
                let message = format!(
                    "differs from {}: models with different vocabularies cannot be averaged (one id would mean \
                     different tokens)",
                    first.join(name).display()
                );
                return Err(Error::input(path, None, message));
            }
        }
    }
    Ok(())
}

/// What a vocabulary file says: parsed for JSON, raw bytes otherwise.
#[derive(PartialEq)]
enum Contents {
    Json(serde_json::Value),
    Bytes(Vec<u8>),
}

/// The content of `path`, if it exists.
fn vocabulary_file(path: &Path) -> Result<Option<Contents>> {
    if !super::exists(path)? {
        return Ok(None);
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if path.extension().is_some_and(|e| e == "json") {
        let value = serde_json::from_slice(&bytes).map_err(|e| Error::input(path, Some(e.line()), e))?;
        return Ok(Some(Contents::Json(value)));
    }
    Ok(Some(Contents::Bytes(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reading tensor by tensor gives what candle's whole-file reader gives, bit for bit, over f32, bf16, f16,
    /// f64 and integer (u8, i64, u32) tensors.
    #[test]
    fn tensor_by_tensor_reads_equal_the_whole_file() {
        let dir = std::env::temp_dir().join(format!("qkv-read-each-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dev = Device::Cpu;
        let base = Tensor::arange(-3f32, 9.0, &dev).unwrap().affine(0.37, 0.1).unwrap().reshape((3, 4)).unwrap();
        let mut tensors: Vec<(String, Tensor)> = [DType::F32, DType::BF16, DType::F16, DType::F64, DType::U8]
            .iter()
            .map(|&d| (format!("{d:?}"), base.abs().unwrap().to_dtype(d).unwrap()))
            .collect();
        tensors.push(("ids".into(), Tensor::new(&[3i64, 1, 4], &dev).unwrap()));
        let path = dir.join("each.safetensors");
        candle_core::safetensors::save(&tensors.iter().cloned().collect::<HashMap<_, _>>(), &path).unwrap();
        let read = |path: &Path| read_each(path, &WeightHeader::read_file(path).unwrap(), &dev).unwrap();
        let each = read(&path).expect("every dtype is read raw");
        let whole = candle_core::safetensors::load(&path, &dev).unwrap();
        assert_eq!(each.len(), whole.len());
        for (name, t) in &whole {
            let want = t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let got = each[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(got, want, "{name}");
        }
        let unsigned = HashMap::from([("i".to_string(), Tensor::new(&[7u32, 8], &dev).unwrap())]);
        candle_core::safetensors::save(&unsigned, &path).unwrap();
        assert_eq!(read(&path).unwrap()["i"].to_vec1::<f32>().unwrap(), [7.0, 8.0]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A model built over a WeightSource gets the tensors themselves; a missing or wrongly shaped one fails
    /// the build naming the file and tensor; tensors nobody asked for are reported.
    #[test]
    fn weight_sources_name_what_is_wrong_and_report_the_rest() {
        let dev = Device::Cpu;
        let tensors = HashMap::from([
            ("w".to_string(), Tensor::arange(0f32, 6.0, &dev).unwrap().reshape((2, 3)).unwrap()),
            ("spare".to_string(), Tensor::zeros(2, DType::F32, &dev).unwrap()),
        ]);
        let source =
            WeightSource::renamed(tensors, Path::new("dir/model.safetensors"), |name| name.replace("ours.", ""));
        let vb = source.builder(DType::F32, &dev);
        let w = vb.get((2, 3), "ours.w").unwrap();
        assert_eq!(w.to_vec2::<f32>().unwrap()[1], vec![3.0, 4.0, 5.0]);
        assert_eq!(source.report().unused, vec!["spare".to_string()]);
        let message = vb.get((3, 2), "ours.w").unwrap_err().to_string();
        assert!(
            message.contains("dir/model.safetensors") && message.contains("`w`") && message.contains("[2, 3]"),
            "{message}"
        );
        let message = vb.get(4, "ours.b").unwrap_err().to_string();
        assert!(message.contains("`b` is missing"), "{message}");
    }

    #[test]
    fn parameters_round_trip_and_mismatches_are_named() -> Result<()> {
        let root = std::env::temp_dir().join(format!("qkv-weights-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let dev = Device::Cpu;
        let vars = vec![
            ("a.weight".to_string(), Var::from_tensor(&Tensor::arange(0f32, 6.0, &dev)?.reshape((2, 3))?)?),
            ("b.bias".to_string(), Var::from_tensor(&Tensor::new(&[1f32, 2.0], &dev)?)?),
        ];
        let path = root.join("model.safetensors");
        save_parameters(&vars, &path)?;
        let loaded = vec![
            ("a.weight".to_string(), Var::zeros((2, 3), DType::F32, &dev)?),
            ("b.bias".to_string(), Var::zeros(2, DType::F32, &dev)?),
        ];
        assert_eq!(load_parameters(&loaded, &path)?, LoadReport::default());
        assert_eq!(loaded[0].1.as_tensor().flatten_all()?.to_vec1::<f32>()?, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        let wrong = vec![("a.weight".to_string(), Var::zeros((3, 2), DType::F32, &dev)?)];
        let message = load_parameters(&wrong, &path).unwrap_err().to_string();
        assert!(message.contains("a.weight") && message.contains("[2, 3]"), "{message}");
        let missing = vec![("c.weight".to_string(), Var::zeros(2, DType::F32, &dev)?)];
        let message = load_parameters(&missing, &path).unwrap_err().to_string();
        assert!(message.contains("c.weight") && message.contains("missing"), "{message}");
        // A tensor no parameter takes is reported, as in every other load.
        let report = load_parameters(&loaded[..1], &path)?;
        assert_eq!(report.unused, vec!["b.bias".to_string()]);
        let averaged = average_parameters(&[path.clone(), path])?;
        assert_eq!(averaged[1].1.to_vec1::<f32>()?, vec![1.0, 2.0]);
        std::fs::remove_dir_all(&root).unwrap();
        Ok(())
    }
}
