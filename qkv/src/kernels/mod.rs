//! Fused CPU kernels as candle custom ops, each with a backward pass and the composed-op reference it is tested
//! against.
//!
//! Composed ops cost one pass over memory and one fresh allocation per primitive (LayerNorm is eight of them
//! forward and about fifteen backward); a kernel does the same work in one or two passes. Each public function
//! here dispatches: the kernel for contiguous f32 tensors on the CPU, the composed twin everywhere else.

#[cfg(target_arch = "x86_64")]
mod amx;
pub mod attention;
pub mod bf16_matmul;
pub mod cross_entropy;
pub mod dropout;
pub mod dynamic_int8;
pub mod embedding;
pub mod f32_panels;
pub mod gelu;
pub mod layer_norm;
pub mod linear;
pub mod linear_cross_entropy;
mod matmul;
mod panels;
pub mod reduced;
pub mod relu;
pub mod softmax;

pub use softmax::{masked_value, MASKED};

use std::sync::{Mutex, OnceLock};

use candle_core::{CpuStorage, DType, Layout, Tensor};
use rayon::prelude::*;

/// Below this many elements a kernel runs on the calling thread: waking the pool costs more than it saves
/// (small GPT training step, 2 cores: 2¹⁴ → 31.5–35 ms, 2¹⁶ → 30.8–31.3 ms, 2¹⁸ → 32.8–38.5 ms).
pub(crate) const PARALLEL_MIN_ELEMENTS: usize = 1 << 16;

/// C (m × n, row-major) = A (m × k, row-major) · B on rayon's pool, through the kernel every qkv layer's matrix
/// products take; B is (k × n) row-major, or with `b_transposed` (n × k) row-major used as its transpose (a
/// Linear weight). For benchmarks and for callers outside the tensor graph.
///
/// # Panics
/// If a slice is shorter than its shape says.
pub fn matrix_product(a: &[f32], b: &[f32], (m, k, n): (usize, usize, usize), b_transposed: bool) -> Vec<f32> {
    assert!(a.len() >= m * k && b.len() >= k * n, "matrix_product: operands shorter than {m}×{k}·{k}×{n}");
    let b = if b_transposed { matmul::Mat::new(b, n, k).t() } else { matmul::Mat::new(b, k, n) };
    matmul::product(matmul::Mat::new(a, m, k), b)
}

/// Whether the fused kernels can run on `t`.
pub(crate) fn fused(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// The f32 values of a contiguous CPU storage.
pub(crate) fn as_f32<'a>(storage: &'a CpuStorage, layout: &Layout, op: &'static str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(values) = storage else { candle_core::bail!("{op}: expected f32 storage") };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&values[start..end]),
        None => candle_core::bail!("{op}: expected a contiguous tensor, found strides {:?}", layout.stride()),
    }
}

/// The f32 values of a contiguous CPU tensor's storage, as returned by `Tensor::storage_and_layout`.
pub(crate) fn storage_f32<'a>(
    storage: &'a candle_core::Storage,
    layout: &Layout,
    op: &'static str,
) -> candle_core::Result<&'a [f32]> {
    let candle_core::Storage::Cpu(cpu) = storage else { candle_core::bail!("{op}: expected a CPU tensor") };
    as_f32(cpu, layout, op)
}

/// Width of the last dimension: the row length a row-wise kernel works on.
pub(crate) fn row_width(layout: &Layout) -> usize {
    layout.dims().last().copied().unwrap_or(1).max(1)
}

/// What a kernel's forward pass keeps for its backward pass. candle hands both passes the op by shared
/// reference, hence the lock.
pub(crate) struct Saved<T>(Mutex<Option<T>>);

impl<T> Saved<T> {
    pub fn empty() -> Self {
        Self(Mutex::new(None))
    }

    pub fn put(&self, op: &'static str, value: T) -> candle_core::Result<()> {
        *self.0.lock().map_err(|_| candle_core::Error::Msg(format!("{op}: lock poisoned")))? = Some(value);
        Ok(())
    }

    /// Runs `f` on the saved value; an error if the forward pass never stored one.
    pub fn with<R>(&self, op: &'static str, f: impl FnOnce(&T) -> candle_core::Result<R>) -> candle_core::Result<R> {
        let guard = self.0.lock().map_err(|_| candle_core::Error::Msg(format!("{op}: lock poisoned")))?;
        f(guard.as_ref().ok_or_else(|| candle_core::Error::Msg(format!("{op}: backward before forward")))?)
    }

    /// Moves the saved value out (`None` if the forward pass stored none, or a backward pass took it), for ops
    /// whose backward pass hands over what the forward pass computed.
    pub fn take(&self) -> Option<T> {
        self.0.lock().ok()?.take()
    }
}

/// For a layout of rank ≥ 1 whose last dimension has stride 1 (a broadcast bias, say), the storage offset of
/// each row: rows are numbered in row-major order over all but the last dimension.
pub(crate) fn row_offset(layout: &Layout, row: usize) -> usize {
    let dims = layout.dims();
    let strides = layout.stride();
    let mut rest = row;
    let mut offset = layout.start_offset();
    for d in (0..dims.len().saturating_sub(1)).rev() {
        offset += (rest % dims[d]) * strides[d];
        rest /= dims[d];
    }
    offset
}

/// Applies `f` element-wise from `input` to `output`, in parallel blocks for large inputs.
pub(crate) fn map_elements(input: &[f32], output: &mut [f32], f: impl Fn(f32) -> f32 + Sync) {
    const BLOCK: usize = 4096;
    let block = |(o, i): (&mut [f32], &[f32])| {
        vectorized(
            #[inline(always)]
            || {
                let i = &i[..o.len()];
                for j in 0..o.len() {
                    o[j] = f(i[j]);
                }
            },
        )
    };
    if input.len() >= PARALLEL_MIN_ELEMENTS {
        output.par_chunks_mut(BLOCK).zip(input.par_chunks(BLOCK)).for_each(block);
    } else {
        block((output, input));
    }
}

/// An element-wise function f and its derivative f′ as a candle op: one pass forward, one pass backward
/// (∂x = g·f′(x)). Pass fn items or closures, not fn pointers, so that both inline into the vectorised loops.
pub(crate) struct Elementwise<F, D> {
    pub name: &'static str,
    pub f: F,
    pub df: D,
}

impl<F, D> candle_core::CustomOp1 for Elementwise<F, D>
where
    F: Fn(f32) -> f32 + Send + Sync,
    D: Fn(f32) -> f32 + Send + Sync,
{
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, candle_core::Shape)> {
        let x = as_f32(s, l, self.name)?;
        let mut y = vec![0f32; x.len()];
        map_elements(x, &mut y, &self.f);
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (x, grad) = (x.contiguous()?, grad.contiguous()?);
        let ((xs, xl), (gs, gl)) = (x.storage_and_layout(), grad.storage_and_layout());
        let (xv, gv) = (storage_f32(&xs, xl, self.name)?, storage_f32(&gs, gl, self.name)?);
        let mut dx = vec![0f32; xv.len()];
        zip_elements(xv, gv, &mut dx, |x, g| g * (self.df)(x));
        Ok(Some(Tensor::from_vec(dx, xl.shape(), x.device())?))
    }
}

/// Applies `f(x, g)` element-wise over two equally long inputs, in parallel blocks for large inputs.
pub(crate) fn zip_elements(a: &[f32], b: &[f32], output: &mut [f32], f: impl Fn(f32, f32) -> f32 + Sync) {
    const BLOCK: usize = 4096;
    let block = |(o, (a, b)): (&mut [f32], (&[f32], &[f32]))| {
        vectorized(
            #[inline(always)]
            || {
                let (a, b) = (&a[..o.len()], &b[..o.len()]);
                for j in 0..o.len() {
                    o[j] = f(a[j], b[j]);
                }
            },
        )
    };
    if a.len() >= PARALLEL_MIN_ELEMENTS {
        output.par_chunks_mut(BLOCK).zip(a.par_chunks(BLOCK).zip(b.par_chunks(BLOCK))).for_each(block);
    } else {
        block((output, (a, b)));
    }
}

/// exp(x) for f32 without a libm call and without branches, so loops over it vectorise: x = n·ln2 + r with
/// |r| ≤ ln2/2, e^r by a degree-6 Taylor polynomial (relative error < 2e-7 on that interval), 2^n by writing n
/// into the exponent bits. Below −87.3 (where e^x leaves the normal range) the result is exactly 0, so masked
/// scores get exactly zero probability; above 88 it saturates at e^88.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    // Adding 1.5·2²³ rounds to the nearest integer and leaves it in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let clamped = x.clamp(-87.3, 88.0);
    let shifted = clamped * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = clamped - n * 0.693_145_75 - n * 1.428_606_8e-6; // ln2 split in two for an exact product with n
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let e = p * f32::from_bits(n_bits.wrapping_add(127).wrapping_shl(23));
    if x < -87.3 {
        0.0
    } else {
        e
    }
}

/// Whether the kernels written with AVX-512 intrinsics may run: `QKV_NO_AVX512=1` turns all of them off at once
/// (to measure or test the code beside them); each still checks the CPU's own features.
pub(crate) fn avx512_allowed() -> bool {
    static ALLOWED: OnceLock<bool> = OnceLock::new();
    *ALLOWED.get_or_init(|| std::env::var_os("QKV_NO_AVX512").is_none())
}

/// Runs `f` compiled for the widest vector instructions this CPU has (AVX-512, AVX2+FMA, or baseline), so the
/// plain loops inside it auto-vectorise. Pass closures marked `#[inline(always)]` and write index loops rather
/// than iterator adapters inside them: pulp's target-feature function only lends its instruction set to code
/// inlined into it, and LLVM declines to inline large closures or adapter `fold`s on its own (they then run at
/// the baseline's 4-wide SSE).
/// The CPU's features are detected once; kernels call this per row.
#[inline(always)]
pub(crate) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    static ARCH: OnceLock<pulp::Arch> = OnceLock::new();
    ARCH.get_or_init(pulp::Arch::new).dispatch(f)
}

#[cfg(test)]
pub(crate) mod twin {
    //! Comparing a kernel with its composed twin.
    use candle_core::{DType, Device, Tensor, Var};

    /// The additive bias of a 0/1 `visible` tensor: 0 where visible, [`super::MASKED`] where not.
    pub fn bias_of(visible: &Tensor) -> Tensor {
        let masked = super::MASKED as f64;
        visible.ne(0u8).unwrap().to_dtype(DType::F32).unwrap().affine(-masked, masked).unwrap()
    }

    /// The causal bias (1, 1, T, S) of `t` queries that are the last `t` of `s` positions.
    pub fn causal_bias(t: usize, s: usize) -> Tensor {
        let visible: Vec<u8> = (0..t).flat_map(|i| (0..s).map(move |j| u8::from(j + t <= i + s))).collect();
        bias_of(&Tensor::from_vec(visible, (1, 1, t, s), &Device::Cpu).unwrap())
    }

    /// The padding bias (B, 1, 1, S) of key validity `valid` (B, S).
    pub fn padding_bias(valid: &Tensor) -> Tensor {
        bias_of(&valid.unsqueeze(1).unwrap().unsqueeze(1).unwrap())
    }

    /// Keys masked by either bias stay masked.
    pub fn both(a: &Tensor, b: &Tensor) -> Tensor {
        a.broadcast_minimum(b).unwrap()
    }

    /// max |a − b| / max |b|
    pub fn relative_error(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(a.iter().all(|v| v.is_finite()), "non-finite kernel output");
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
        a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    /// `len` normal values × `scale`, seeded: the operands of the panel products' tests.
    pub fn normal_values(len: usize, seed: u64, scale: f32) -> Vec<f32> {
        use rand_distr::Distribution;
        let mut rng = crate::rng::seeded(seed, 0);
        (0..len).map(|_| Distribution::<f32>::sample(&rand_distr::StandardNormal, &mut rng) * scale).collect()
    }

    /// The operands of a matrix-product kernel's test case: x (n, k) of scale 1, w (m, k) of scale 0.3 and a bias
    /// (m) of scale 0.5, from seeds `seed`, `seed + 1` and `seed + 2`.
    pub fn product_operands((n, k, m): (usize, usize, usize), seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        (normal_values(n * k, seed, 1.0), normal_values(m * k, seed + 1, 0.3), normal_values(m, seed + 2, 0.5))
    }

    /// A variable of normal values with a seeded generator (candle's CPU generator cannot be seeded).
    pub fn randn(shape: &[usize], seed: u64, scale: f32) -> Var {
        use rand::SeedableRng;
        use rand_distr::{Distribution, StandardNormal};
        let mut rng = crate::rng::Rng::seed_from_u64(seed);
        let n = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|_| {
                let z: f32 = StandardNormal.sample(&mut rng);
                scale * z
            })
            .collect();
        Var::from_tensor(&Tensor::from_vec(values, shape, &Device::Cpu).unwrap()).unwrap()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fast_exp_is_accurate_over_the_range_softmax_uses() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x < 87.9 {
            let rel = (super::exp(x) - x.exp()).abs() / x.exp();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 5e-7, "worst relative error {worst:e}");
        assert_eq!(super::exp(-1e9), 0.0);
        assert_eq!(super::exp(0.0), 1.0);
    }
}
