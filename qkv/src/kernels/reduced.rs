//! Linear layers' weights in reduced precision, for inference: bf16, or int8 with one symmetric scale per
//! output row (per output channel). Activations stay f32 and products accumulate in f32; only the weights are
//! stored narrower.
//!
//! Decoding one sequence (and a few at once) is bound by reading the weights: a GPT-2 small step reads ≈ 0.5 GB
//! of f32 weights per token. Halving (bf16) or quartering (int8) the bytes raises that bound in proportion, so
//! the few-rows product here converts each weight to f32 in the inner loop of the dot product, where the
//! conversion costs less than the load it saves. Many rows (a prompt, a batch of sentences) are bound by
//! arithmetic instead: those convert blocks of weight rows to f32 and run the f32 matrix product on them.
//!
//! An encoder's f32 weights are packed too, into the panels of [`super::f32_panels`]: not narrower, only laid out
//! once for the many-row product instead of on every call.
//!
//! The composed twin is the f32 product with the dequantised weights ([`PackedMatrix::dequantize`]): the
//! kernels compute exactly that product, in another order of summation.

use std::fmt;
use std::str::FromStr;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::as_f32;
pub use super::bf16_matmul::bf16_bits;
use super::bf16_matmul::{self, bf16_value, Bf16Panels};
use super::dynamic_int8::Int8Panels;
use super::f32_panels::{self, F32Panels};
use super::linear::{affine_forward, dots_by_pairs, few_rows_by_task, lane_sum, FEW_ROWS, LANES};
pub use super::panels::RowActivation;
use crate::{Error, Result};

/// How a model's weight matrices are stored for inference (`--dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightDtype {
    /// As trained: 4 bytes a weight.
    #[default]
    F32,
    /// bfloat16, f32's exponent with 8 bits of mantissa: 2 bytes a weight, relative error ≤ 2⁻⁹.
    Bf16,
    /// Signed bytes with one f32 scale per output row (max |w| / 127): 1 byte a weight.
    Int8,
}

impl WeightDtype {
    /// The three names, as the error for an unknown one lists them (aliases such as `bfloat16` parse too).
    pub const NAMES: &'static str = "f32, bf16 or int8";

    /// The name on the command line and in JSON: `f32`, `bf16` or `int8`.
    pub fn name(self) -> &'static str {
        match self {
            WeightDtype::F32 => "f32",
            WeightDtype::Bf16 => "bf16",
            WeightDtype::Int8 => "int8",
        }
    }
}

impl fmt::Display for WeightDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for WeightDtype {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" | "float32" => Ok(WeightDtype::F32),
            "bf16" | "bfloat16" => Ok(WeightDtype::Bf16),
            "int8" | "i8" => Ok(WeightDtype::Int8),
            other => Err(Error::config("dtype", other, WeightDtype::NAMES)),
        }
    }
}

/// How a layer's weights are packed: their dtype, and whether the activations they meet are in it too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packing {
    /// The weights' storage.
    pub dtype: WeightDtype,
    /// Reduce each row of activations (each token) to the weights' precision and multiply in it: int8 ×
    /// int8 ([`super::dynamic_int8`]), or bf16 × bf16 where [`super::bf16_matmul`] has a kernel for the CPU
    /// (elsewhere bf16 weights stay weight-only). Encoders want it: their products have many rows and are bound
    /// by arithmetic. Decoding wants weight-only: one row a step, bound
    /// by reading the weights, activations kept f32. With f32 weights it means the panels of the f32 × f32
    /// product ([`super::f32_panels`], where the CPU has AVX-512): nothing is rounded, the weights are only laid
    /// out for many-row products; without it f32 layers stay as they are.
    pub reduce_activations: bool,
}

impl Packing {
    /// Weight-only: the weights in `dtype`, activations f32 (decoders).
    pub fn weights_only(dtype: WeightDtype) -> Self {
        Self { dtype, reduce_activations: false }
    }

    /// For an encoder: int8 weights meet per-token int8 activations, bf16 weights bf16 activations (where
    /// [`super::bf16_matmul`] has a kernel for the CPU), f32 weights go into the panels of the f32 product.
    pub fn encoder(dtype: WeightDtype) -> Self {
        Self { dtype, reduce_activations: true }
    }

    /// Whether a layer packed this way leaves its f32 weight as it is: f32 for decoding (the dot products of
    /// [`super::linear`] read it at the bandwidth limit), or f32 panels on a CPU without AVX-512.
    pub fn keeps_f32(self) -> bool {
        self.dtype == WeightDtype::F32 && !(self.reduce_activations && f32_panels::available())
    }
}

impl From<WeightDtype> for Packing {
    fn from(dtype: WeightDtype) -> Self {
        Self::weights_only(dtype)
    }
}

/// A (rows, cols) weight matrix in bf16 or int8, or in f32 panels.
#[derive(Clone)]
pub struct PackedMatrix {
    rows: usize,
    cols: usize,
    values: Values,
}

#[derive(Clone)]
enum Values {
    /// The upper halves of the f32 bit patterns, rounded to nearest even.
    Bf16(Vec<u16>),
    /// w ≈ scale[row] · q.
    Int8 { q: Vec<i8>, scales: Vec<f32> },
    /// The same int8 weights in the panels of the int8 × int8 product: activations quantized per token.
    Int8Dynamic(Int8Panels),
    /// The same bf16 weights in the panels of the bf16 × bf16 product: activations rounded to bf16.
    Bf16Panels(Bf16Panels),
    /// f32 weights in the panels of the f32 × f32 product (encoders).
    F32(F32Panels),
}

impl fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PackedMatrix({}, {}, {})", self.rows, self.cols, self.dtype())
    }
}

impl PackedMatrix {
    /// Packs the (rows, cols) row-major `values`. `name` (the parameter's name) is for the error a non-finite
    /// weight gives.
    pub fn pack(values: &[f32], (rows, cols): (usize, usize), dtype: WeightDtype, name: &str) -> Result<Self> {
        if values.len() != rows * cols {
            let found = format!("{name}: {} values", values.len());
            return Err(Error::config("packed weight", found, format!("({rows}, {cols}) values")));
        }
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            let found = format!("{name}: {} at row {}, column {}", values[i], i / cols, i % cols);
            return Err(Error::config("packed weight", found, "finite weights"));
        }
        let values = match dtype {
            WeightDtype::Bf16 => Values::Bf16(values.par_iter().map(|&v| bf16_bits(v)).collect()),
            WeightDtype::Int8 => {
                let (q, scales): (Vec<Vec<i8>>, Vec<f32>) = values.par_chunks(cols.max(1)).map(quantize_row).unzip();
                Values::Int8 { q: q.concat(), scales }
            }
            WeightDtype::F32 => Values::F32(F32Panels::pack(values, (rows, cols))),
        };
        Ok(Self { rows, cols, values })
    }

    /// Packs a (rows, cols) f32 tensor as `packing` says (f32 always into panels: [`Packing::keeps_f32`] says
    /// when not to pack at all).
    pub fn pack_tensor(weight: &Tensor, packing: Packing, name: &str) -> Result<Self> {
        let (rows, cols) = weight.dims2()?;
        let values = weight.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let packed = Self::pack(&values, (rows, cols), packing.dtype, name)?;
        Ok(if packing.reduce_activations { packed.with_reduced_activations() } else { packed })
    }

    /// Int8 weights rearranged for the int8 × int8 product with activations quantized per token (the same
    /// weights and scales); bf16 weights for the bf16 × bf16 product where the CPU has a kernel for it
    /// ([`bf16_matmul::available`]), else left as they are.
    pub fn with_reduced_activations(self) -> Self {
        let dims = (self.rows, self.cols);
        let values = match self.values {
            Values::Int8 { q, scales } => Values::Int8Dynamic(Int8Panels::pack(&q, &scales, dims)),
            Values::Bf16(bits) if bf16_matmul::available() => Values::Bf16Panels(Bf16Panels::pack(&bits, dims)),
            values => values,
        };
        Self { values, ..self }
    }

    /// (rows, cols): (out, in) for a Linear weight, (V, C) for an embedding table.
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// The storage format.
    pub fn dtype(&self) -> WeightDtype {
        match self.values {
            Values::F32(_) => WeightDtype::F32,
            Values::Bf16(_) | Values::Bf16Panels(_) => WeightDtype::Bf16,
            Values::Int8 { .. } | Values::Int8Dynamic(_) => WeightDtype::Int8,
        }
    }

    /// Rows first..first + out.len() / cols as f32, into `out`.
    fn dequantize_rows_into(&self, first: usize, out: &mut [f32]) {
        let cols = self.cols;
        let start = first * cols;
        match &self.values {
            Values::Bf16(v) => {
                let v = &v[start..start + out.len()];
                super::vectorized(
                    #[inline(always)]
                    || {
                        for j in 0..out.len() {
                            out[j] = bf16_value(v[j]);
                        }
                    },
                )
            }
            Values::Int8Dynamic(panels) => panels.dequantize_rows_into(first, out),
            Values::Bf16Panels(panels) => panels.dequantize_rows_into(first, out),
            Values::F32(panels) => panels.dequantize_rows_into(first, out),
            Values::Int8 { q, scales } => {
                for (r, row) in out.chunks_mut(cols.max(1)).enumerate() {
                    let (q, s) = (&q[start + r * cols..][..row.len()], scales[first + r]);
                    super::vectorized(
                        #[inline(always)]
                        || {
                            for j in 0..row.len() {
                                row[j] = f32::from(q[j]) * s;
                            }
                        },
                    )
                }
            }
        }
    }

    /// The f32 matrix these weights stand for, (rows · cols) row-major: the composed twin's weights.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        self.dequantize_rows_parallel(0, &mut out);
        out
    }

    /// As [`dequantize_rows_into`](Self::dequantize_rows_into), 64 rows per task on rayon's pool.
    fn dequantize_rows_parallel(&self, first: usize, out: &mut [f32]) {
        const ROWS: usize = 64;
        out.par_chunks_mut(ROWS * self.cols.max(1))
            .enumerate()
            .for_each(|(b, chunk)| self.dequantize_rows_into(first + ROWS * b, chunk));
    }

    /// The dequantised rows `ids` (each < rows), concatenated: an embedding lookup from a packed table.
    pub fn rows_of(&self, ids: &[usize]) -> Vec<f32> {
        let mut out = vec![0f32; ids.len() * self.cols];
        for (&id, row) in ids.iter().zip(out.chunks_mut(self.cols.max(1))) {
            self.dequantize_rows_into(id, row);
        }
        out
    }

    /// y (N, M) = x (N, K) · wᵀ (+ bias in every row) for this w (M, K).
    pub fn product(&self, x: &[f32], n: usize, bias: Option<&[f32]>) -> Vec<f32> {
        self.product_then(x, n, bias, None)
    }

    /// [`product`](Self::product), then `after` over each row of y in place (an activation). The panel products
    /// apply it to each task's rows while they are still in cache; the others, to the whole output.
    pub fn product_then(&self, x: &[f32], n: usize, bias: Option<&[f32]>, after: Option<RowActivation>) -> Vec<f32> {
        match &self.values {
            Values::Int8Dynamic(panels) => panels.product(x, n, bias, after),
            Values::Bf16Panels(panels) => panels.product(x, n, bias, after),
            Values::F32(panels) => panels.product(x, n, bias, after),
            _ => {
                let mut y = self.weight_only_product(x, n, bias);
                if let Some(after) = after {
                    y.par_chunks_mut(self.rows.max(1)).for_each(after);
                }
                y
            }
        }
    }

    fn weight_only_product(&self, x: &[f32], n: usize, bias: Option<&[f32]>) -> Vec<f32> {
        let (m, k) = (self.rows, self.cols);
        debug_assert_eq!(x.len(), n * k);
        if (1..=FEW_ROWS).contains(&n) {
            return self.few_rows(x, n, bias);
        }
        // Blocks of weight rows converted to f32, each at most BLOCK elements (16 MiB), so that a large matrix
        // (a 50257-row LM head) never needs its whole f32 copy at once.
        const BLOCK: usize = 1 << 22;
        let block_rows = (BLOCK / k.max(1)).clamp(1, m.max(1));
        if block_rows >= m {
            return affine_forward(x, &self.dequantize(), bias, (n, k, m));
        }
        let mut y = vec![0f32; n * m];
        let mut buffer = vec![0f32; block_rows * k];
        for first in (0..m).step_by(block_rows) {
            let rows = block_rows.min(m - first);
            let w = &mut buffer[..rows * k];
            self.dequantize_rows_parallel(first, w);
            let part = affine_forward(x, w, bias.map(|b| &b[first..first + rows]), (n, k, rows));
            for (dst, src) in y.chunks_mut(m).zip(part.chunks(rows)) {
                dst[first..first + rows].copy_from_slice(src);
            }
        }
        y
    }

    /// A few rows of x, in tasks of 64 rows of w. One row of x reads w once with the
    /// conversion in the dot product's inner loop; several convert the task's rows of w once into a small f32
    /// buffer (it stays in cache) and dot that with every row of x.
    fn few_rows(&self, x: &[f32], n: usize, bias: Option<&[f32]>) -> Vec<f32> {
        let (m, k) = (self.rows, self.cols);
        few_rows_by_task((n, k, m), bias, |first, out| {
            let rows = out.len() / n;
            let span = first * k..(first + rows) * k;
            match (&self.values, n) {
                (Values::Bf16(v), 1) => dots_bf16(&v[span], x, out),
                (Values::Int8 { q, scales }, 1) => {
                    dots_int8(&q[span], x, out);
                    for (y, s) in out.iter_mut().zip(&scales[first..first + rows]) {
                        *y *= s;
                    }
                }
                _ => {
                    let mut w = vec![0f32; rows * k];
                    self.dequantize_rows_into(first, &mut w);
                    super::vectorized(
                        #[inline(always)]
                        || dots_by_pairs(&w, x, out, (n, k)),
                    )
                }
            }
        })
    }
}

/// One row's int8 values and scale: max |w| / 127, so that the largest weight is ±127 exactly (an all-zero row
/// gets scale 0 and zeros).
pub(crate) fn quantize_row(row: &[f32]) -> (Vec<i8>, f32) {
    let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
    if max == 0.0 {
        return (vec![0; row.len()], 0.0);
    }
    let scale = max / 127.0;
    let q = row.iter().map(|&v| (v / scale).round().clamp(-127.0, 127.0) as i8).collect();
    (q, scale)
}

/// A stored weight widened to f32 where it is used.
trait Narrow: Copy {
    fn widen(self) -> f32;
}

impl Narrow for u16 {
    #[inline(always)]
    fn widen(self) -> f32 {
        bf16_value(self)
    }
}

impl Narrow for i8 {
    #[inline(always)]
    fn widen(self) -> f32 {
        f32::from(self)
    }
}

/// y[i] = w_i · x for the narrow rows w_i of `w` and one f32 row x, four rows of w against each load of x (as
/// the f32 kernel), each weight widened to f32 where it is used. `L` weights of a row per iteration: one cache
/// line of each row (32 bf16, 64 int8), so that as many bytes are in flight per iteration as in the f32 loop —
/// with 16 weights per iteration the int8 product of an LM head drew half the f32 loop's bandwidth.
#[inline(always)]
fn dots_narrow<W: Narrow, const L: usize>(w: &[W], x: &[f32], y: &mut [f32]) {
    let k = x.len();
    let body = k - k % L;
    for (g, out) in y.chunks_mut(4).enumerate() {
        let rows = out.len();
        let row = |r: usize| &w[(4 * g + r.min(rows - 1)) * k..][..k];
        let (w0, w1, w2, w3) = (row(0), row(1), row(2), row(3));
        let mut a = [[0f32; L]; 4];
        let lanes = x[..body]
            .chunks_exact(L)
            .zip(w0.chunks_exact(L))
            .zip(w1.chunks_exact(L))
            .zip(w2.chunks_exact(L))
            .zip(w3.chunks_exact(L));
        // The rows AHEAD on, a line of each per iteration: a row is only 12–48 lines long, too short for the
        // hardware prefetcher to ramp up before it ends.
        let ahead = w.as_ptr().wrapping_add((4 * g + AHEAD) * k);
        for (i, ((((c, u0), u1), u2), u3)) in lanes.enumerate() {
            for r in 0..4 {
                prefetch(ahead.wrapping_add(i * L + r * k));
            }
            for l in 0..L {
                a[0][l] = u0[l].widen().mul_add(c[l], a[0][l]);
                a[1][l] = u1[l].widen().mul_add(c[l], a[1][l]);
                a[2][l] = u2[l].widen().mul_add(c[l], a[2][l]);
                a[3][l] = u3[l].widen().mul_add(c[l], a[3][l]);
            }
        }
        for (r, y) in out.iter_mut().enumerate() {
            let wr = row(r);
            let mut lanes = [0f32; LANES];
            for part in a[r].chunks_exact(LANES) {
                for l in 0..LANES {
                    lanes[l] += part[l];
                }
            }
            *y = lane_sum(lanes) + (body..k).map(|t| wr[t].widen() * x[t]).sum::<f32>();
        }
    }
}

/// Rows ahead a prefetch asks for (LM head 768 × 50257 int8, 2 threads: none 6.7 ms, 8 rows 2.8–2.9, 64 rows 2.4–2.9).
const AHEAD: usize = 64;

/// Asks for the cache line at `address` (one past the matrix is harmless: a prefetch never faults).
#[inline(always)]
fn prefetch<T>(address: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching reads nothing and cannot fault, whatever the address.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(address.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

fn dots_bf16(w: &[u16], x: &[f32], y: &mut [f32]) {
    super::vectorized(
        #[inline(always)]
        || dots_narrow::<u16, 32>(w, x, y),
    )
}

/// The caller multiplies by each row's scale.
fn dots_int8(q: &[i8], x: &[f32], y: &mut [f32]) {
    super::vectorized(
        #[inline(always)]
        || dots_narrow::<i8, 64>(q, x, y),
    )
}

/// A Linear layer for inference with packed weights: y = x · wᵀ + b over any leading dimensions. No gradient
/// flows through it (a packed model is not trained).
#[derive(Debug, Clone)]
pub struct PackedLinear {
    weight: PackedMatrix,
    bias: Option<Vec<f32>>,
}

const NAME: &str = "qkv-packed-linear";

impl PackedLinear {
    /// A layer of `weight` (out, in) and an optional `bias` (out); a bias of another length is an error.
    pub fn new(weight: PackedMatrix, bias: Option<Vec<f32>>) -> Result<Self> {
        if let Some(b) = &bias {
            if b.len() != weight.rows {
                return Err(Error::shape("packed linear bias", format!("({})", weight.rows), &[b.len()]));
            }
        }
        Ok(Self { weight, bias })
    }

    /// The packed weight (out, in).
    pub fn weight(&self) -> &PackedMatrix {
        &self.weight
    }

    /// (…, in) → (…, out), for f32 inputs on the CPU.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_then(x, None)
    }

    /// [`forward`](Self::forward), then `after` over the output in place (fused into the product's tasks where
    /// the weights are in panels).
    pub fn forward_then(&self, x: &Tensor, after: Option<RowActivation>) -> Result<Tensor> {
        let in_dim = self.weight.cols;
        if x.dims().last() != Some(&in_dim) {
            return Err(Error::shape("linear input", format!("(…, {in_dim})"), x.dims()));
        }
        if !super::fused(x) {
            let found = format!("{:?} on {:?}", x.dtype(), x.device().location());
            return Err(Error::config("dtype", found, format!("f32 inputs on the CPU for {}", self.weight.dtype())));
        }
        Ok(x.contiguous()?.apply_op1_no_bwd(&Product { layer: self, after })?)
    }
}

/// One call of a packed layer, as a candle op.
struct Product<'a> {
    layer: &'a PackedLinear,
    after: Option<RowActivation>,
}

impl CustomOp1 for Product<'_> {
    fn name(&self) -> &'static str {
        NAME
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = as_f32(storage, layout, NAME)?;
        let (m, k) = self.layer.weight.dims();
        let n = x.len() / k.max(1);
        let mut dims = layout.dims().to_vec();
        *dims.last_mut().ok_or_else(|| candle_core::Error::Msg(format!("{NAME}: scalar input")))? = m;
        let y = self.layer.weight.product_then(x, n, self.layer.bias.as_deref(), self.after);
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::twin::{randn, relative_error};
    use candle_core::Device;

    fn values(t: &candle_core::Var) -> Vec<f32> {
        t.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// Every path (one row, a few, many; a matrix in one block and in several) computes the f32 product with the
    /// dequantised weights.
    #[test]
    fn packed_products_match_the_dequantised_twin() {
        let cases = [(1, 40, 700), (1, 37, 130), (1, 64, 67), (3, 24, 96), (16, 32, 600), (17, 40, 70), (40, 24, 9)];
        for (case, &(n, k, m)) in cases.iter().enumerate() {
            for dtype in [WeightDtype::Bf16, WeightDtype::Int8] {
                let seed = 10 * case as u64;
                let x = randn(&[n, k], seed, 1.0);
                let w = randn(&[m, k], seed + 1, 0.3);
                let b = values(&randn(&[m], seed + 2, 0.5));
                let packed = PackedMatrix::pack(&values(&w), (m, k), dtype, "w").unwrap();
                let layer = PackedLinear::new(packed.clone(), Some(b.clone())).unwrap();
                let y = layer.forward(x.as_tensor()).unwrap();
                let twin_w = Tensor::from_vec(packed.dequantize(), (m, k), &Device::Cpu).unwrap();
                let twin_b = Tensor::from_vec(b, m, &Device::Cpu).unwrap();
                let twin = crate::kernels::linear::linear_composed(x.as_tensor(), &twin_w, Some(&twin_b)).unwrap();
                let err = relative_error(&y, &twin);
                assert!(err <= 1e-5, "{dtype} ({n}, {k}) · ({m}, {k})ᵀ: {err:e}");
            }
        }
    }

    /// An activation fused into the product (applied to each task's rows) gives the bits of the product
    /// followed by the activation as its own op, for every packing: weight-only, per-token int8 and bf16 tiles
    /// (where the CPU has them), with one row (channel-split tasks) and many.
    #[test]
    fn fused_activations_equal_the_separate_op() {
        for (n, k, m) in [(1, 40, 200), (100, 64, 96)] {
            let x = randn(&[n, k], 5, 1.0);
            let w = values(&randn(&[m, k], 6, 0.3));
            let b = values(&randn(&[m], 7, 0.5));
            for dtype in [WeightDtype::Bf16, WeightDtype::Int8] {
                for packing in [Packing::weights_only(dtype), Packing::encoder(dtype)] {
                    let wt = Tensor::from_vec(w.clone(), (m, k), &Device::Cpu).unwrap();
                    let matrix = PackedMatrix::pack_tensor(&wt, packing, "w").unwrap();
                    let layer = PackedLinear::new(matrix, Some(b.clone())).unwrap();
                    let fused = layer.forward_then(x.as_tensor(), Some(super::super::gelu::gelu_in_place)).unwrap();
                    let separate = super::super::gelu::gelu(&layer.forward(x.as_tensor()).unwrap()).unwrap();
                    let (f, g) = (fused.flatten_all().unwrap(), separate.flatten_all().unwrap());
                    let (f, g) = (f.to_vec1::<f32>().unwrap(), g.to_vec1::<f32>().unwrap());
                    assert!(f.iter().zip(&g).all(|(a, b)| a.to_bits() == b.to_bits()), "{packing:?} ({n}, {k}, {m})");
                }
            }
        }
    }

    /// A matrix larger than one conversion block (2²² elements) is converted in several, with the bias split
    /// with it.
    #[test]
    fn many_rows_over_several_blocks_match_the_twin() {
        let (n, k, m) = (20, 1024, 4500);
        let x = randn(&[n, k], 1, 1.0);
        let w = randn(&[m, k], 2, 0.1);
        let b = values(&randn(&[m], 3, 0.5));
        let packed = PackedMatrix::pack(&values(&w), (m, k), WeightDtype::Int8, "w").unwrap();
        let y = packed.product(&values(&x), n, Some(&b));
        let twin = affine_forward(&values(&x), &packed.dequantize(), Some(&b), (n, k, m));
        let scale = twin.iter().fold(0f32, |a, v| a.max(v.abs()));
        let err = y.iter().zip(&twin).fold(0f32, |a, (p, q)| a.max((p - q).abs())) / scale;
        assert!(err <= 1e-5, "{err:e}");
    }

    /// bf16 rounds to nearest even (torch's rule) and int8 keeps each weight within half a step of its row's
    /// scale, the largest at ±127 exactly.
    #[test]
    fn rounding_rules() {
        assert_eq!(bf16_bits(1.0), 0x3F80);
        assert_eq!(bf16_bits(f32::from_bits(0x3F80_8000)), 0x3F80); // a tie rounds to the even mantissa
        assert_eq!(bf16_bits(f32::from_bits(0x3F81_8000)), 0x3F82);
        assert_eq!(bf16_bits(f32::from_bits(0x3F80_8001)), 0x3F81);
        let row = [0.5f32, -1.27, 0.003, 0.0];
        let (q, s) = quantize_row(&row);
        assert_eq!(q[1], -127);
        assert!((s - 0.01).abs() < 1e-7);
        for (v, q) in row.iter().zip(&q) {
            assert!((v - f32::from(*q) * s).abs() <= s / 2.0 + 1e-7);
        }
        assert_eq!(quantize_row(&[0.0, 0.0]), (vec![0, 0], 0.0));
    }

    #[test]
    fn bad_weights_and_inputs_are_errors() {
        let err = PackedMatrix::pack(&[1.0, f32::NAN], (1, 2), WeightDtype::Int8, "h.0.mlp.c_fc.weight");
        let message = err.unwrap_err().to_string();
        assert!(message.contains("h.0.mlp.c_fc.weight") && message.contains("column 1"), "{message}");
        let packed = PackedMatrix::pack(&[1.0, 2.0], (1, 2), WeightDtype::Bf16, "w").unwrap();
        let layer = PackedLinear::new(packed, None).unwrap();
        let x = Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(layer.forward(&x).unwrap_err().to_string().contains("(…, 2)"));
        assert_eq!("int8".parse::<WeightDtype>().unwrap(), WeightDtype::Int8);
        assert!("fp8".parse::<WeightDtype>().unwrap_err().to_string().contains("bf16"));
    }
}
