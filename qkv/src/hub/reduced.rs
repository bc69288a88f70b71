//! Model directories saved in reduced precision by `qkv convert --dtype`: the checkpoint's own tensor names,
//! with the matrices the model packs at inference stored as it would pack them, and every other tensor f32.
//!
//! - bf16: the matrices as BF16 (bf16 → f32 → bf16 is exact, so loading and packing again gives the same bits).
//! - int8: each matrix as I8 with one f32 scale per output channel beside it, `{name}.qkv_scale`, shaped to
//!   broadcast along the channels' axis ((out, 1) for a Linear's (out, in); (1, out) for GPT-2's Conv1D
//!   (in, out)). The reader widens q · scale to f32; packing it again gives the same int8 values (the largest
//!   |q · scale| over a channel is 127 · scale within one rounding, so every q / scale′ is within 2⁻²² of q) and
//!   a scale within one ulp of the stored one.
//!
//! The file's metadata says which (`"qkv_dtype": "bf16"`), so the inference commands load it in that dtype
//! unless `--dtype` says otherwise. transformers reads a bf16 directory as it is; an int8 one is qkv's own.

use std::path::Path;

use candle_core::{DType, Tensor};

use super::header::read_metadata;
pub use super::weights::SCALE_SUFFIX;
use super::weights::{write_raw, RawTensor};
use super::WEIGHTS;
use crate::kernels::reduced::{bf16_bits, quantize_row, WeightDtype};
use crate::{Error, Result};

/// The metadata key that names the dtype of a converted file.
pub const DTYPE_KEY: &str = "qkv_dtype";

/// The axis of a stored matrix that runs over output channels (each has its own int8 scale).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputAxis {
    /// (out, in): a Linear's weight, an embedding table (a tied LM head's rows).
    Rows,
    /// (in, out): GPT-2's Conv1D.
    Columns,
}

/// The dtype `dir`'s weights were saved in by `qkv convert --dtype` (a translation run directory: its
/// `best/`), f32 for any other directory.
pub fn stored_dtype(dir: &Path) -> Result<WeightDtype> {
    // As [`super::transformer::model_dir`] resolves a run directory, without importing the name table.
    let file = [dir.join(WEIGHTS), dir.join("best").join(WEIGHTS)].into_iter().find(|p| p.is_file());
    let Some(file) = file else { return Ok(WeightDtype::F32) };
    match read_metadata(&file)?.get(DTYPE_KEY) {
        None => Ok(WeightDtype::F32),
        Some(name) => name.parse().map_err(|_| {
            Error::input(&file, None, format!("metadata {DTYPE_KEY} is {name:?}; expected {}", WeightDtype::NAMES))
        }),
    }
}

/// `dtype` when one is given (`--dtype`), else the dtype `dir` was saved in.
pub fn dtype_or_stored(dtype: Option<WeightDtype>, dir: &Path) -> Result<WeightDtype> {
    dtype.map_or_else(|| stored_dtype(dir), Ok)
}

/// Writes `tensors` (f32) to `path` in `dtype`: those `packed` gives an axis for reduced, the rest f32;
/// through a temporary file, fsync and rename.
pub fn save(
    tensors: &[(String, Tensor)],
    packed: impl Fn(&str, &[usize]) -> Option<OutputAxis>,
    dtype: WeightDtype,
    path: &Path,
) -> Result<()> {
    let mut data = Vec::new();
    let raw = |name: String, dtype, shape, bytes| RawTensor { name, dtype, shape, bytes };
    for (name, t) in tensors {
        let shape = t.dims().to_vec();
        let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let axis = packed(name, &shape).filter(|_| shape.len() == 2 && dtype != WeightDtype::F32);
        let Some(axis) = axis else {
            data.push(raw(name.clone(), safetensors::Dtype::F32, shape, le_bytes(&values, f32::to_le_bytes)));
            continue;
        };
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            let message =
                format!("tensor `{name}`: {} at element {i}; a reduced matrix needs finite weights", values[i]);
            return Err(Error::input(path, None, message));
        }
        match dtype {
            WeightDtype::Bf16 => {
                let bits: Vec<u16> = values.iter().map(|&v| bf16_bits(v)).collect();
                data.push(raw(name.clone(), safetensors::Dtype::BF16, shape, le_bytes(&bits, u16::to_le_bytes)));
            }
            _ => {
                let (q, scales, scale_shape) = quantize(&values, (shape[0], shape[1]), axis);
                data.push(raw(name.clone(), safetensors::Dtype::I8, shape, q.iter().map(|&v| v as u8).collect()));
                let scale_name = format!("{name}{SCALE_SUFFIX}");
                data.push(raw(scale_name, safetensors::Dtype::F32, scale_shape, le_bytes(&scales, f32::to_le_bytes)));
            }
        }
    }
    write_raw(&data, &[(DTYPE_KEY, dtype.name())], path)
}

fn le_bytes<T: Copy, const N: usize>(values: &[T], to_bytes: fn(T) -> [u8; N]) -> Vec<u8> {
    values.iter().flat_map(|&v| to_bytes(v)).collect()
}

/// The (rows, cols) matrix `values` as int8 with one scale per output channel (as the packing computes them),
/// in the stored orientation; the scales' shape broadcasts along `axis`.
fn quantize(values: &[f32], (rows, cols): (usize, usize), axis: OutputAxis) -> (Vec<i8>, Vec<f32>, Vec<usize>) {
    match axis {
        OutputAxis::Rows => {
            let (q, scales): (Vec<Vec<i8>>, Vec<f32>) = values.chunks(cols.max(1)).map(quantize_row).unzip();
            (q.concat(), scales, vec![rows, 1])
        }
        OutputAxis::Columns => {
            let transposed: Vec<f32> = (0..cols).flat_map(|c| (0..rows).map(move |r| values[r * cols + c])).collect();
            let (q, scales): (Vec<Vec<i8>>, Vec<f32>) = transposed.chunks(rows.max(1)).map(quantize_row).unzip();
            let q: Vec<i8> = (0..rows).flat_map(|r| q.iter().map(move |column| column[r])).collect();
            (q, scales, vec![1, cols])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Per-channel scales along either axis: the largest weight of each channel is ±127 · its scale, and the
    /// Conv1D orientation is the transpose of the Linear one.
    #[test]
    fn scales_run_along_the_output_axis() {
        let values = [1.0f32, -2.0, 0.5, 4.0, 0.25, -1.0];
        let (q, scales, shape) = quantize(&values, (2, 3), OutputAxis::Rows);
        assert_eq!((q[1], q[3], shape), (-127, 127, vec![2, 1]));
        assert_eq!(scales, vec![2.0 / 127.0, 4.0 / 127.0]);
        let (qt, st, shape) = quantize(&values, (2, 3), OutputAxis::Columns);
        assert_eq!(shape, vec![1, 3]);
        assert_eq!(st, vec![4.0 / 127.0, 2.0 / 127.0, 1.0 / 127.0]);
        assert_eq!((qt[3], qt[1], qt[5]), (127, -127, -127));
    }
}
