//! Checkpoints on disk. Nothing is ever half-written: files go to a temporary name in the same directory and
//! are renamed into place, and a checkpoint directory is filled under a temporary name and renamed as a whole,
//! so an interrupted save leaves the previous checkpoint intact.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};

use crate::{Error, Result};

use crate::atomic_file::temporary_sibling;
pub use crate::atomic_file::{replace_dir_atomically, write_atomically};

/// Saves named parameters as safetensors (f32, names as given).
pub fn save_parameters(vars: &[(String, Var)], path: &Path) -> Result<()> {
    let tensors: Vec<(String, Tensor)> = vars.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
    save_tensors(&tensors, path)
}

/// Saves tensors as safetensors, atomically.
pub fn save_tensors(tensors: &[(String, Tensor)], path: &Path) -> Result<()> {
    let map: HashMap<String, Tensor> = tensors.iter().cloned().collect();
    let tmp = temporary_sibling(path);
    candle_core::safetensors::save(&map, &tmp).map_err(|e| Error::input(&tmp, None, e))?;
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Every tensor of a safetensors file, as f32 on the CPU.
pub fn load_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    if !path.exists() {
        return Err(Error::input(path, None, "no such file"));
    }
    let tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| Error::input(path, None, format!("not a readable safetensors file: {e}")))?;
    tensors.into_iter().map(|(name, t)| Ok((name, t.to_dtype(DType::F32)?))).collect()
}

/// Sets every parameter from the file at `path`. A missing tensor, a tensor of another shape, or a tensor
/// the model has no parameter for is an error naming it: a checkpoint of another configuration never loads
/// half-way silently.
pub fn load_parameters(vars: &[(String, Var)], path: &Path) -> Result<()> {
    let mut tensors = load_tensors(path)?;
    for (name, var) in vars {
        let t = tensors.remove(name).ok_or_else(|| {
            Error::input(path, None, format!("tensor `{name}` is missing (expected {:?})", var.dims()))
        })?;
        if t.dims() != var.dims() {
            let message = format!("tensor `{name}` has shape {:?}, expected {:?}", t.dims(), var.dims());
            return Err(Error::input(path, None, message));
        }
        var.set(&t)?;
    }
    if let Some(name) = tensors.keys().min() {
        return Err(Error::input(path, None, format!("tensor `{name}` belongs to no parameter of this model")));
    }
    Ok(())
}

/// The element-wise mean of the parameters in `paths` (checkpoint averaging, as in the paper's §6.1 — the last
/// checkpoints of a run averaged into one model). All files must hold the same names and shapes.
pub fn average_parameters(paths: &[PathBuf]) -> Result<Vec<(String, Tensor)>> {
    let Some(first) = paths.first() else {
        return Err(Error::config("checkpoints to average", 0, "at least one"));
    };
    let mut sums = load_tensors(first)?;
    for path in &paths[1..] {
        let mut tensors = load_tensors(path)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("qkv-checkpoint-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn replacing_a_directory_keeps_the_old_one_when_filling_fails() -> Result<()> {
        let root = scratch("replace");
        let dir = root.join("ckpt");
        replace_dir_atomically(&dir, |tmp| write_atomically(&tmp.join("a"), b"first"))?;
        let failed = replace_dir_atomically(&dir, |tmp| {
            write_atomically(&tmp.join("a"), b"second")?;
            Err(Error::config("test", "fail", "an error"))
        });
        assert!(failed.is_err());
        assert_eq!(fs::read(dir.join("a")).unwrap(), b"first");
        replace_dir_atomically(&dir, |tmp| write_atomically(&tmp.join("a"), b"third"))?;
        assert_eq!(fs::read(dir.join("a")).unwrap(), b"third");
        let leftovers: Vec<_> = fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("ckpt")]);
        Ok(())
    }

    #[test]
    fn parameters_round_trip_and_mismatches_are_named() -> Result<()> {
        let root = scratch("params");
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
        load_parameters(&loaded, &path)?;
        assert_eq!(loaded[0].1.as_tensor().flatten_all()?.to_vec1::<f32>()?, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        let wrong = vec![("a.weight".to_string(), Var::zeros((3, 2), DType::F32, &dev)?)];
        let message = load_parameters(&wrong, &path).unwrap_err().to_string();
        assert!(message.contains("a.weight") && message.contains("[2, 3]"), "{message}");
        let message = load_parameters(&loaded[..1], &path).unwrap_err().to_string();
        assert!(message.contains("b.bias") && message.contains("no parameter"), "{message}");
        let averaged = average_parameters(&[path.clone(), path])?;
        assert_eq!(averaged[1].1.to_vec1::<f32>()?, vec![1.0, 2.0]);
        Ok(())
    }
}
