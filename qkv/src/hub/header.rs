//! What a safetensors file declares — each tensor's name, dtype, shape and byte range — read from its header
//! alone, before any tensor data is read or allocated. Loading checks the header first so that a damaged file
//! is an error naming the tensor at fault, and so that a config.json that disagrees with the weights (a
//! `vocab_size` of 10¹² over a 300-row table) is refused before the model it describes is built.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorInfo;
use safetensors::Dtype;

use super::weight_files::WeightFiles;
use crate::{Error, Result};

/// safetensors' own bound on the header (the crate refuses larger ones).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// One tensor as a header declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorEntry {
    /// The element type the header declares (F32, F16, BF16 …).
    pub dtype: Dtype,
    /// The dimensions, outermost first.
    pub shape: Vec<usize>,
    /// The file that holds it (a shard, for sharded weights).
    pub file: PathBuf,
    /// Where its bytes lie in that file, checked against its dtype, shape and the file's length (`None` for a
    /// PyTorch checkpoint, whose data candle's pickle reader finds).
    pub bytes: Option<std::ops::Range<u64>>,
}

/// The tensors of one safetensors file, or of every shard of a model directory.
#[derive(Debug, Clone, Default)]
pub struct WeightHeader {
    tensors: BTreeMap<String, TensorEntry>,
}

impl WeightHeader {
    /// The header of the safetensors file at `path`, checked: every entry well-formed, byte ranges contiguous
    /// from the start of the data, each as long as its dtype and shape require, and ending at the file's end.
    pub fn read_file(path: &Path) -> Result<Self> {
        let (header, data_start, data_len) = read_raw_header(path)?;
        let mut entries: Vec<(String, TensorInfo)> = Vec::with_capacity(header.len());
        for (name, value) in header {
            if name == "__metadata__" {
                continue;
            }
            let info: TensorInfo = serde_json::from_value(value)
                .map_err(|e| Error::input(path, None, format!("tensor `{name}`: bad header entry: {e}")))?;
            entries.push((name, info));
        }
        check_offsets(path, &mut entries, data_len)?;
        let tensors = entries
            .into_iter()
            .map(|(name, info)| {
                let (start, stop) = info.data_offsets;
                let bytes = Some(data_start + start as u64..data_start + stop as u64);
                (name, TensorEntry { dtype: info.dtype, shape: info.shape, file: path.to_path_buf(), bytes })
            })
            .collect();
        Ok(Self { tensors })
    }

    /// The weights of model directory `dir`, from the files [`super::load_weights`] would read (a PyTorch
    /// checkpoint's tensors as its checked data.pkl declares them). A directory without weights has an empty
    /// header: load_weights says what is missing.
    pub fn read_dir(dir: &Path) -> Result<Self> {
        let files = match WeightFiles::find(dir) {
            Ok(files) => files,
            Err(Error::Input { .. }) => return Ok(Self::default()),
            Err(other) => return Err(other),
        };
        let pytorch = matches!(files, WeightFiles::Pytorch(_) | WeightFiles::PytorchShards(_));
        let mut all = Self::default();
        for file in files.files()? {
            let header = if pytorch { Self::read_pytorch(&file)? } else { Self::read_file(&file)? };
            all.tensors.extend(header.tensors);
        }
        Ok(all)
    }

    /// The tensors a PyTorch checkpoint declares, after [`super::pytorch::check`].
    fn read_pytorch(path: &Path) -> Result<Self> {
        let mut tensors = BTreeMap::new();
        for info in super::pytorch::check(path)? {
            let dtype = match info.dtype {
                candle_core::DType::F16 => Dtype::F16,
                candle_core::DType::BF16 => Dtype::BF16,
                candle_core::DType::F64 => Dtype::F64,
                candle_core::DType::I64 => Dtype::I64,
                candle_core::DType::U8 => Dtype::U8,
                _ => Dtype::F32,
            };
            let entry =
                TensorEntry { dtype, shape: info.layout.dims().to_vec(), file: path.to_path_buf(), bytes: None };
            tensors.insert(info.name, entry);
        }
        Ok(Self { tensors })
    }

    /// The entry of the tensor named `name` (a checkpoint name), if the header has one.
    pub fn get(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.get(name)
    }

    /// Every tensor with its entry, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &TensorEntry)> {
        self.tensors.iter()
    }

    /// The first of `names` the header holds, with its name.
    fn first_of<'a>(&'a self, names: &'a [String]) -> Option<(&'a str, &'a TensorEntry)> {
        names.iter().find_map(|n| self.tensors.get(n).map(|t| (n.as_str(), t)))
    }

    /// Layers stored under `prefix` (`encoder.layer.` → indices `encoder.layer.{i}.…`): the highest index + 1.
    pub fn layer_count(&self, prefix: &str) -> usize {
        self.tensors
            .keys()
            .filter_map(|name| name.strip_prefix(prefix)?.split('.').next()?.parse::<usize>().ok())
            .map(|i| i + 1)
            .max()
            .unwrap_or(0)
    }

    /// Refuses a config that disagrees with these weights: each size must equal the tensor axis that stores
    /// it, and each stack must have its layers. The error names the config file, the field, its value and
    /// the tensor. A tensor absent from the header is not judged here (loading names it as missing).
    pub fn check_config(&self, config: &Path, agreements: &[Agreement]) -> Result<()> {
        for agreement in agreements {
            match agreement {
                Agreement::Axis { field, value, tensors, axis } => {
                    let Some((name, entry)) = self.first_of(tensors) else { continue };
                    if entry.shape.get(*axis) != Some(value) {
                        // The shape the config implies: the stored one with this axis set to the field's value.
                        let expected = match entry.shape.get(*axis) {
                            Some(_) => {
                                let mut shape = entry.shape.clone();
                                shape[*axis] = *value;
                                format!("expected {shape:?}")
                            }
                            None => format!("which has no axis {axis}"),
                        };
                        let message = format!(
                            "{field} = {value}, but tensor `{name}` in {} has shape {:?}, {expected}",
                            entry.file.display(),
                            entry.shape,
                        );
                        return Err(Error::input(config, None, message));
                    }
                }
                Agreement::Layers { field, value, prefix } => {
                    let stored = self.layer_count(prefix);
                    if stored > 0 && stored < *value {
                        let message = format!(
                            "{field} = {value}, but the weights hold {stored} layer(s) ({prefix}0 … {prefix}{})",
                            stored - 1
                        );
                        return Err(Error::input(config, None, message));
                    }
                }
            }
        }
        Ok(())
    }
}

/// A config field that a tensor's shape must repeat.
#[derive(Debug, Clone)]
pub enum Agreement {
    /// `field` = `value` is the size of `axis` of the first of `tensors` present (names differ between
    /// checkpoint flavours, e.g. with and without the `bert.` prefix).
    Axis {
        /// The config.json field, e.g. `vocab_size`.
        field: &'static str,
        /// Its value in the config.
        value: usize,
        /// The names the tensor may have in a checkpoint (with and without a prefix); the first present is checked.
        tensors: Vec<String>,
        /// The dimension (0-based) whose size must equal `value`.
        axis: usize,
    },
    /// `field` = `value` layers must be stored under `prefix{i}.` (fewer is an error; more are reported as
    /// unused by loading).
    Layers {
        /// The config.json field, e.g. `num_hidden_layers`.
        field: &'static str,
        /// Its value in the config.
        value: usize,
        /// The checkpoint name prefix of every layer, before its index (e.g. `encoder.layer.`).
        prefix: String,
    },
}

impl Agreement {
    /// An [`Agreement::Axis`]: `field` = `value` must be the size of dimension `axis` of the first of `tensors`
    /// present.
    pub fn axis(field: &'static str, value: usize, tensors: &[&str], axis: usize) -> Self {
        Self::Axis { field, value, tensors: tensors.iter().map(|t| t.to_string()).collect(), axis }
    }

    /// An [`Agreement::Layers`]: `field` = `value` layers must be stored under `prefix{i}.`.
    pub fn layers(field: &'static str, value: usize, prefix: &str) -> Self {
        Self::Layers { field, value, prefix: prefix.to_string() }
    }
}

/// The `__metadata__` of the safetensors file at `path` (empty when it has none); a value that is not a string
/// is an error.
pub fn read_metadata(path: &Path) -> Result<BTreeMap<String, String>> {
    let (mut header, _, _) = read_raw_header(path)?;
    let Some(metadata) = header.remove("__metadata__") else { return Ok(BTreeMap::new()) };
    serde_json::from_value(metadata)
        .map_err(|e| Error::input(path, None, format!("__metadata__ must map names to strings: {e}")))
}

/// The header's JSON object and the number of data bytes after it.
fn read_raw_header(path: &Path) -> Result<(BTreeMap<String, serde_json::Value>, u64, u64)> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut length = [0u8; 8];
    file.read_exact(&mut length)
        .map_err(|_| Error::input(path, None, format!("not a safetensors file: {file_len} bytes, too short")))?;
    let n = u64::from_le_bytes(length);
    if n > MAX_HEADER_BYTES || n > file_len.saturating_sub(8) {
        let message = format!(
            "not a safetensors file: its first 8 bytes give a header of {n} bytes, but the file holds {file_len} bytes"
        );
        return Err(Error::input(path, None, message));
    }
    let mut bytes = vec![0u8; n as usize];
    file.read_exact(&mut bytes).map_err(|e| Error::io(path, e))?;
    let header = serde_json::from_slice(&bytes).map_err(|e| {
        Error::input(path, None, format!("not a safetensors file: the header is not a JSON object: {e}"))
    })?;
    Ok((header, 8 + n, file_len - 8 - n))
}

/// Entries sorted by offset; each must start where the previous one ends and span exactly its dtype × shape,
/// and the last must end where the file does (what safetensors requires, with the tensor named).
fn check_offsets(path: &Path, entries: &mut [(String, TensorInfo)], data_len: u64) -> Result<()> {
    entries.sort_by_key(|(_, info)| info.data_offsets);
    let bad = |name: &str, message: String| Error::input(path, None, format!("tensor `{name}`: {message}"));
    let mut end = 0usize;
    let mut previous: Option<&str> = None;
    for (name, info) in entries.iter() {
        let (start, stop) = info.data_offsets;
        if start != end {
            let after = previous.map_or("the start of the data".to_string(), |p| format!("the end of `{p}`"));
            return Err(bad(name, format!("data_offsets start at byte {start}, expected {end} ({after})")));
        }
        let bits = info.shape.iter().try_fold(info.dtype.bitsize(), |acc, &d| acc.checked_mul(d));
        let bytes = bits.filter(|b| b % 8 == 0).map(|b| b / 8);
        match bytes {
            Some(bytes) if stop >= start && stop - start == bytes => {}
            Some(bytes) => {
                let message = format!(
                    "data_offsets [{start}, {stop}] hold {} bytes, but {:?} {:?} needs {bytes}",
                    stop as i128 - start as i128,
                    info.dtype,
                    info.shape
                );
                return Err(bad(name, message));
            }
            None => return Err(bad(name, format!("shape {:?} of {:?} is too large", info.shape, info.dtype))),
        }
        end = stop;
        previous = Some(name);
    }
    if end as u64 != data_len {
        let message = match previous {
            Some(last) if end as u64 > data_len => {
                format!("tensor `{last}` ends at byte {end} of the data, but the file holds {data_len}: truncated?")
            }
            _ => format!("the tensors span {end} bytes of data, but the file holds {data_len}"),
        };
        return Err(Error::input(path, None, message));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file from a header (as JSON text) and `data_len` zero bytes of data.
    fn file(name: &str, header: &str, data_len: usize) -> PathBuf {
        let path = std::env::temp_dir().join(format!("qkv-header-{}-{name}", std::process::id()));
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend(header.as_bytes());
        bytes.resize(bytes.len() + data_len, 0);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn headers_are_read_and_bad_offsets_name_the_tensor() {
        let good = r#"{"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"b":{"dtype":"F16","shape":[4],"data_offsets":[24,32]}}"#;
        let header = WeightHeader::read_file(&file("good", good, 32)).unwrap();
        assert_eq!(header.get("a").unwrap().shape, vec![2, 3]);
        assert_eq!(header.get("b").unwrap().dtype, Dtype::F16);
        let cases = [
            (
                "gap",
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}}"#,
                16,
                "`b`: data_offsets start at byte 12, expected 8",
            ),
            (
                "size",
                r#"{"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}}"#,
                20,
                "`a`: data_offsets [0, 20] hold 20 bytes",
            ),
            (
                "short",
                r#"{"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}}"#,
                10,
                "`a` ends at byte 24 of the data, but the file holds 10",
            ),
            ("entry", r#"{"a":{"dtype":"F32","shape":[2,3]}}"#, 0, "tensor `a`: bad header entry"),
            ("huge", r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#, 8, "`a`: shape"),
            ("json", "{not json", 0, "header is not a JSON object"),
        ];
        for (name, header, data_len, expected) in cases {
            let message = WeightHeader::read_file(&file(name, header, data_len)).unwrap_err().to_string();
            assert!(message.contains(expected), "{name}: {message}");
        }
        let path = std::env::temp_dir().join(format!("qkv-header-{}-length", std::process::id()));
        std::fs::write(&path, u64::MAX.to_le_bytes()).unwrap();
        let message = WeightHeader::read_file(&path).unwrap_err().to_string();
        assert!(message.contains("header of 18446744073709551615 bytes"), "{message}");
    }

    #[test]
    fn configs_that_disagree_with_the_weights_name_field_value_and_tensor() {
        let text = r#"{"emb":{"dtype":"F32","shape":[3,2],"data_offsets":[0,24]},"layer.0.w":{"dtype":"F32","shape":[1],"data_offsets":[24,28]},"layer.1.w":{"dtype":"F32","shape":[1],"data_offsets":[28,32]}}"#;
        let header = WeightHeader::read_file(&file("config", text, 32)).unwrap();
        assert_eq!(header.layer_count("layer."), 2);
        let config = Path::new("dir/config.json");
        let ok = [Agreement::axis("vocab_size", 3, &["other", "emb"], 0), Agreement::layers("layers", 2, "layer.")];
        header.check_config(config, &ok).unwrap();
        let message = header
            .check_config(config, &[Agreement::axis("vocab_size", 1_000_000_000_000, &["emb"], 0)])
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with("dir/config.json: vocab_size = 1000000000000, but tensor `emb`")
                && message.contains("shape [3, 2], expected [1000000000000, 2]"),
            "{message}"
        );
        let message = header.check_config(config, &[Agreement::layers("layers", 12, "layer.")]).unwrap_err();
        assert!(message.to_string().contains("layers = 12, but the weights hold 2 layer(s)"), "{message}");
        header.check_config(config, &[Agreement::axis("absent", 7, &["nothing"], 0)]).unwrap();
    }
}
