//! Dynamic int8 quantization for encoders (W8A8): the weights are int8 with one symmetric scale per output
//! channel (as in [`super::reduced`]), and each row of activations (one token) is quantized when it arrives, to
//! 8 bits over its own range (a scale and a zero point). The product of the two is summed exactly in i32 and
//! scaled back to f32 once per output.
//!
//! An encoder's products have many rows (every token of a batch of sentences), so they are bound by arithmetic,
//! not by reading the weights; int8 × int8 is what makes them faster. `vpdpbusd` (AVX-512 VNNI) multiplies 64
//! unsigned bytes by 64 signed bytes and adds each group of four into one of 16 i32 lanes: the activations are
//! the unsigned bytes, q_x = x / s + z, and the zero point is taken out after the sum with each output
//! channel's weight sum: Σ (q_x − z)·q_w = Σ q_x·q_w − z·Σ q_w. Per-token ranges (rather than ONNX Runtime's one
//! range per tensor) keep a token with large activations from flattening every other token of the batch.
//!
//! The weights are stored in panels of 16 output channels × 4 inputs, the order in which `vpdpbusd` takes them
//! and, 16 groups at a time, one AMX tile of weights. AMX tiles (`tdpbusd`), VNNI and a portable kernel compute
//! the same integer sums, and so bit for bit the same outputs.
//!
//! The composed twin is the f32 product of the dequantised activations ([`quantize_rows`]) with the
//! dequantised weights ([`Int8Panels::dequantize`]).

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::amx;
use super::panels::{by_tasks, RowActivation, MR, PAIR, PANEL, PANELS, ROW_BLOCK};

/// An int8 weight matrix (rows = output channels, cols = inputs) in panels, with its scales and the weight sums
/// the activations' zero points need. Rows are padded to whole pairs of panels and inputs to 64 (an AMX tile's
/// depth), with zero weights.
#[derive(Debug, Clone)]
pub struct Int8Panels {
    rows: usize,
    cols: usize,
    /// Groups of 4 inputs: 16 · ⌈cols / 64⌉.
    groups: usize,
    /// Panel p, group g: 64 bytes, byte 4j + t = w[16p + j][4g + t].
    panels: Vec<i8>,
    /// Σ_c w[r][c] for every (padded) row.
    weight_sums: Vec<i32>,
    /// One scale per (padded) row; 0 for the padding.
    scales: Vec<f32>,
}

impl Int8Panels {
    /// Panels of the row-major int8 matrix `q` (rows, cols) with one scale per row.
    pub fn pack(q: &[i8], scales: &[f32], (rows, cols): (usize, usize)) -> Self {
        debug_assert_eq!(q.len(), rows * cols);
        debug_assert_eq!(scales.len(), rows);
        let groups = cols.div_ceil(64) * 16;
        let padded = rows.div_ceil(PAIR) * PAIR;
        let mut panels = vec![0i8; padded * groups * 4];
        panels.par_chunks_mut(PANEL * groups * 4).enumerate().for_each(|(p, panel)| {
            for j in 0..PANEL.min(rows.saturating_sub(p * PANEL)) {
                let row = &q[(p * PANEL + j) * cols..][..cols];
                for (c, &v) in row.iter().enumerate() {
                    panel[(c / 4) * 64 + 4 * j + c % 4] = v;
                }
            }
        });
        let mut weight_sums: Vec<i32> = q.chunks(cols.max(1)).map(|r| r.iter().map(|&v| i32::from(v)).sum()).collect();
        weight_sums.resize(padded, 0);
        let mut scales = scales.to_vec();
        scales.resize(padded, 0.0);
        Self { rows, cols, groups, panels, weight_sums, scales }
    }

    /// Weight (r, c) as int8.
    fn at(&self, r: usize, c: usize) -> i8 {
        self.panels[(r / PANEL) * self.groups * 64 + (c / 4) * 64 + 4 * (r % PANEL) + c % 4]
    }

    /// Rows first..first + out.len() / cols as f32, into `out`.
    pub fn dequantize_rows_into(&self, first: usize, out: &mut [f32]) {
        for (i, row) in out.chunks_mut(self.cols.max(1)).enumerate() {
            let r = first + i;
            for (c, v) in row.iter_mut().enumerate() {
                *v = f32::from(self.at(r, c)) * self.scales[r];
            }
        }
    }

    /// The f32 matrix these weights stand for, (rows · cols) row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        out.par_chunks_mut(64 * self.cols.max(1))
            .enumerate()
            .for_each(|(b, chunk)| self.dequantize_rows_into(64 * b, chunk));
        out
    }

    /// y (n, rows) = quantize(x) (n, cols) · wᵀ, scaled back to f32 (+ bias in every row).
    /// `after` (an activation), if any, runs over each task's rows of y while they are in cache.
    pub fn product(&self, x: &[f32], n: usize, bias: Option<&[f32]>, after: Option<RowActivation>) -> Vec<f32> {
        debug_assert_eq!(x.len(), n * self.cols);
        self.product_with(Kernel::detect(), x, n, bias, after)
    }

    /// [`product`](Self::product) with the given kernel.
    fn product_with(
        &self,
        kernel: Kernel,
        x: &[f32],
        n: usize,
        bias: Option<&[f32]>,
        after: Option<RowActivation>,
    ) -> Vec<f32> {
        let activations = quantize_rows(x, n, self.cols, 4 * self.groups);
        by_tasks(n, self.rows, after, |rows, pairs, out, width| {
            self.block(kernel, &activations, rows, pairs, bias, out, width)
        })
    }

    /// Rows `rows` of y against the panel pairs `pairs`, into `out` (rows.len() × `width`, starting at the
    /// first real channel of `pairs`).
    #[allow(clippy::too_many_arguments)]
    fn block(
        &self,
        kernel: Kernel,
        a: &QuantizedRows,
        rows: std::ops::Range<usize>,
        pairs: std::ops::Range<usize>,
        bias: Option<&[f32]>,
        out: &mut [f32],
        width: usize,
    ) {
        let k4 = 4 * self.groups;
        let tiles = Tiles { a, rows, pairs, bias, width };
        #[cfg(target_arch = "x86_64")]
        if kernel == Kernel::Amx {
            // 32 rows × 2 panels at a time (4 accumulator tiles of 16 × 16 sums), 64 inputs per step, the sums
            // then rescaled with AVX-512.
            let mut sums = [[0i32; PAIR]; 2 * amx::ROWS];
            // SAFETY: Kernel::Amx is chosen only once Linux has granted this process the tile state.
            unsafe { amx::configure() };
            self.each_tile(&tiles, 2 * amx::ROWS, out, |r0, w, epilogue, x_rows, y, cols| {
                let tall = x_rows.0.len() > amx::ROWS;
                let x = &a.q[r0 * k4..][..if tall { 2 } else { 1 } * amx::ROWS * k4];
                assert!(y.len() >= (x_rows.0.len() - 1) * width + cols);
                // SAFETY: the tiles are configured; x holds the rows the tiles read, w one pair of panels; AMX
                // implies AVX-512, and y's length is asserted above.
                unsafe {
                    amx::int8_sums(x, k4, w, self.groups, tall, &mut sums);
                    rescale_avx512(&sums[..x_rows.0.len()], epilogue, x_rows, y, width, cols);
                }
            });
            // SAFETY: as configure().
            return unsafe { amx::release() };
        }
        self.each_tile(&tiles, MR, out, |r0, w, epilogue, x_rows, y, cols| {
            kernel.run(&a.q[r0 * k4..][..MR * k4], w, self.groups, epilogue, x_rows, (y, width, cols))
        });
    }

    /// Calls `tile(first row, pair of panels, its epilogue, (x scales, x zeros), out from that row and
    /// channel, real channels)` for each pair of panels and each `step` rows of `t`.
    fn each_tile(
        &self,
        t: &Tiles,
        step: usize,
        out: &mut [f32],
        mut tile: impl FnMut(usize, &[i8], &Epilogue, (&[f32], &[i32]), &mut [f32], usize),
    ) {
        let pair_bytes = PAIR * 4 * self.groups;
        let first_col = t.pairs.start * PAIR;
        for pair in t.pairs.clone() {
            let w = &self.panels[pair * pair_bytes..][..pair_bytes];
            let (epilogue, cols) = self.epilogue(pair, t.bias);
            for r0 in t.rows.clone().step_by(step) {
                let valid = (t.rows.end - r0).min(step);
                let x_rows = (&t.a.scales[r0..r0 + valid], &t.a.zeros[r0..r0 + valid]);
                let y = &mut out[(r0 - t.rows.start) * t.width + (cols.start - first_col)..];
                tile(r0, w, &epilogue, x_rows, y, cols.len());
            }
        }
    }

    /// The rescaling of a pair of panels, and its real channels.
    fn epilogue(&self, pair: usize, bias: Option<&[f32]>) -> (Epilogue, std::ops::Range<usize>) {
        let c0 = pair * PAIR;
        let cols = c0..(c0 + PAIR).min(self.rows);
        let mut epilogue = Epilogue { weight_sums: [0; PAIR], scales: [0.0; PAIR], bias: [0.0; PAIR] };
        epilogue.weight_sums.copy_from_slice(&self.weight_sums[c0..c0 + PAIR]);
        epilogue.scales.copy_from_slice(&self.scales[c0..c0 + PAIR]);
        if let Some(b) = bias {
            epilogue.bias[..cols.len()].copy_from_slice(&b[cols.clone()]);
        }
        (epilogue, cols)
    }
}

/// One task's share of a product: its rows and pairs of panels, and the row stride of its output.
struct Tiles<'a> {
    a: &'a QuantizedRows,
    rows: std::ops::Range<usize>,
    pairs: std::ops::Range<usize>,
    bias: Option<&'a [f32]>,
    width: usize,
}

/// What turns a pair of panels' exact sums back into f32: y = (Σ − x's zero point · Σ_c w[j][c]) · (x's scale ·
/// scales) + bias.
struct Epilogue {
    weight_sums: [i32; PAIR],
    scales: [f32; PAIR],
    bias: [f32; PAIR],
}

/// Activations quantized per row to unsigned bytes with a zero point, and padded: rows to whole tasks (48
/// rows), inputs to the panels' depth (the padding meets zero weights).
pub struct QuantizedRows {
    /// (padded rows, `width`) bytes: x ≈ scale · (q − zero).
    pub q: Vec<u8>,
    /// Bytes a row: the inputs padded to the panels' depth.
    pub width: usize,
    /// One scale per real row: (max − min) / 255 over the row and 0 (0 for an all-zero row, whose bytes are 0).
    pub scales: Vec<f32>,
    /// One zero point per real row: the byte that stands for 0.
    pub zeros: Vec<i32>,
}

/// Each of the n rows of x (n, cols) to 256 levels over its own range [min(x, 0), max(x, 0)] (asymmetric: a
/// row of mostly positive values, such as GELU's outputs, or one with a single large value of one sign, gets
/// nearly twice the resolution of a symmetric ±max |x| scale), rounded to nearest even.
pub fn quantize_rows(x: &[f32], n: usize, cols: usize, k4: usize) -> QuantizedRows {
    assert!(k4 >= cols && k4.is_multiple_of(4));
    // Rows padded to whole tasks, so that a micro-kernel (12 rows) or an AMX tile (16) never reads past them.
    let padded = n.div_ceil(ROW_BLOCK) * ROW_BLOCK;
    let mut q = vec![0u8; padded * k4];
    let mut scales = vec![0f32; n];
    let mut zeros = vec![0i32; n];
    let kernel = Kernel::detect();
    let rows = q.par_chunks_mut(k4.max(1)).zip(scales.par_iter_mut().zip(zeros.par_iter_mut()));
    rows.enumerate().for_each(|(r, (out, (scale, zero)))| {
        let row = &x[r * cols..][..cols];
        let (min, max) = match kernel {
            // SAFETY: the features were detected.
            #[cfg(target_arch = "x86_64")]
            Kernel::Vnni | Kernel::Amx => unsafe { range_avx512(row) },
            Kernel::Portable => row.iter().fold((0f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v))),
        };
        if max > min {
            *scale = (max - min) / 255.0;
            let inverse = 255.0 / (max - min);
            *zero = (-min * inverse).round_ties_even().clamp(0.0, 255.0) as i32;
            match kernel {
                // SAFETY: the features were detected, and out holds at least row.len() bytes.
                #[cfg(target_arch = "x86_64")]
                Kernel::Vnni | Kernel::Amx => unsafe { to_bytes_avx512(row, inverse, *zero, out) },
                Kernel::Portable => {
                    for (o, &v) in out.iter_mut().zip(row) {
                        *o = to_byte(v, inverse, *zero);
                    }
                }
            }
        }
    });
    QuantizedRows { q, width: k4, scales, zeros }
}

#[inline(always)]
fn to_byte(v: f32, inverse: f32, zero: i32) -> u8 {
    ((v * inverse).round_ties_even() as i32 + zero).clamp(0, 255) as u8
}

/// The dequantised rows of [`quantize_rows`]: the composed twin's activations.
pub fn dequantize_rows(a: &QuantizedRows, n: usize, cols: usize) -> Vec<f32> {
    let k4 = a.width;
    (0..n)
        .flat_map(|r| (0..cols).map(move |c| (i32::from(a.q[r * k4 + c]) - a.zeros[r]) as f32 * a.scales[r]))
        .collect()
}

/// Whether the CPU has the AVX-512 subsets the VNNI kernel (and the AVX-512 quantization) use.
#[cfg(target_arch = "x86_64")]
fn has_vnni() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

/// (min(x, 0), max(x, 0)) of a row, 16 lanes at a time.
///
/// # Safety
/// The CPU must have AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn range_avx512(row: &[f32]) -> (f32, f32) {
    use std::arch::x86_64::*;
    let (mut lo, mut hi) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let chunks = row.chunks_exact(16);
    let tail = chunks.remainder();
    for c in chunks {
        let v = _mm512_loadu_ps(c.as_ptr());
        (lo, hi) = (_mm512_min_ps(lo, v), _mm512_max_ps(hi, v));
    }
    let start = (_mm512_reduce_min_ps(lo), _mm512_reduce_max_ps(hi));
    tail.iter().fold(start, |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

/// [`to_byte`] for every x of the row (the conversion rounds to nearest even, its default mode), into `out`.
///
/// # Safety
/// The CPU must have AVX-512 F; out.len() ≥ row.len().
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn to_bytes_avx512(row: &[f32], inverse: f32, zero: i32, out: &mut [u8]) {
    use std::arch::x86_64::*;
    let (scale, shift, floor) = (_mm512_set1_ps(inverse), _mm512_set1_epi32(zero), _mm512_setzero_si512());
    let body = row.len() - row.len() % 16;
    for i in (0..body).step_by(16) {
        let v = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(row.as_ptr().add(i)), scale)), shift);
        // Saturating to 255 from above; the floor at 0 first.
        let bytes = _mm512_cvtusepi32_epi8(_mm512_max_epi32(v, floor));
        _mm_storeu_si128(out.as_mut_ptr().add(i).cast(), bytes);
    }
    for i in body..row.len() {
        out[i] = to_byte(row[i], inverse, zero);
    }
}

/// Which micro-kernel this CPU runs, detected once: AMX tiles, else AVX-512 VNNI, else portable code.
/// `QKV_NO_AMX=1` and `QKV_NO_VNNI=1` (which also rules out AMX) step down, to measure the others on one machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Amx,
    #[cfg(target_arch = "x86_64")]
    Vnni,
    Portable,
}

impl Kernel {
    fn detect() -> Self {
        static KERNEL: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *KERNEL.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            if std::env::var_os("QKV_NO_VNNI").is_none() && has_vnni() {
                if amx::usable(amx::Product::Int8) {
                    return Kernel::Amx;
                }
                return Kernel::Vnni;
            }
            Kernel::Portable
        })
    }

    /// Every kernel this CPU can run (for the tests that compare them).
    #[cfg(test)]
    fn available() -> Vec<Self> {
        let mut kernels = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        if has_vnni() {
            kernels.push(Kernel::Vnni);
            if amx::usable(amx::Product::Int8) {
                kernels.push(Kernel::Amx);
            }
        }
        kernels
    }

    /// For the x_scales.len() ≤ MR rows of quantized bytes x (MR × 4·groups) and one pair of panels w (2 × groups
    /// × 64 bytes): the exact sums Σ_c x[r][c] · w[j][c], rescaled by `e`, into the first `cols` entries of row r
    /// of `out` (rows `stride` apart).
    fn run(
        self,
        x: &[u8],
        w: &[i8],
        groups: usize,
        e: &Epilogue,
        (x_scales, x_zeros): (&[f32], &[i32]),
        (out, stride, cols): (&mut [f32], usize, usize),
    ) {
        let rows = x_scales.len();
        assert_eq!(x_zeros.len(), rows);
        assert!(x.len() >= MR * 4 * groups && w.len() >= PANELS * groups * 64 && rows <= MR && cols <= PAIR);
        assert!(rows == 0 || out.len() >= (rows - 1) * stride + cols);
        match self {
            // SAFETY: detect() chose Vnni only where the CPU has the features, and the lengths are checked above.
            #[cfg(target_arch = "x86_64")]
            Kernel::Vnni | Kernel::Amx => unsafe { vnni(x, w, groups, e, (x_scales, x_zeros), out, stride, cols) },
            Kernel::Portable => {
                let mut sums = [[0i32; PAIR]; MR];
                super::vectorized(
                    #[inline(always)]
                    || exact_sums(x, w, groups, &mut sums),
                );
                for (r, sum) in sums.iter().enumerate().take(rows) {
                    for j in 0..cols {
                        let v = (sum[j] - x_zeros[r] * e.weight_sums[j]) as f32;
                        out[r * stride + j] = v.mul_add(x_scales[r] * e.scales[j], e.bias[j]);
                    }
                }
            }
        }
    }
}

/// The integer sums of [`Kernel::run`] in plain arithmetic (auto-vectorised where the CPU allows).
#[inline(always)]
fn exact_sums(x: &[u8], w: &[i8], groups: usize, sums: &mut [[i32; PAIR]; MR]) {
    let k4 = 4 * groups;
    let (w0, w1) = w.split_at(groups * 64);
    for (r, sum) in sums.iter_mut().enumerate() {
        let row = &x[r * k4..][..k4];
        let mut acc = [0i32; PAIR];
        for g in 0..groups {
            let xs = &row[4 * g..4 * g + 4];
            let (p0, p1) = (&w0[g * 64..][..64], &w1[g * 64..][..64]);
            for j in 0..PANEL {
                for t in 0..4 {
                    acc[j] += i32::from(xs[t]) * i32::from(p0[4 * j + t]);
                    acc[PANEL + j] += i32::from(xs[t]) * i32::from(p1[4 * j + t]);
                }
            }
        }
        *sum = acc;
    }
}

/// [`Kernel::run`] with `vpdpbusd`: per group of 4 inputs, two panel loads and 24 multiply-adds, each row's 4
/// bytes broadcast to every lane; then the rescaling in registers, stored under a mask for a short last pair.
///
/// # Safety
/// The CPU must have AVX-512 F, BW and VNNI; the lengths as [`Kernel::run`] checks them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn vnni(
    x: &[u8],
    w: &[i8],
    groups: usize,
    e: &Epilogue,
    (x_scales, x_zeros): (&[f32], &[i32]),
    out: &mut [f32],
    stride: usize,
    cols: usize,
) {
    use std::arch::x86_64::*;
    let k4 = 4 * groups;
    let (xp, wp) = (x.as_ptr(), w.as_ptr());
    let mut acc = [[_mm512_setzero_si512(); PANELS]; MR];
    for g in 0..groups {
        let w0 = _mm512_loadu_si512(wp.add(g * 64).cast());
        let w1 = _mm512_loadu_si512(wp.add((groups + g) * 64).cast());
        for (r, a) in acc.iter_mut().enumerate() {
            let xs = _mm512_set1_epi32(xp.add(r * k4 + 4 * g).cast::<i32>().read_unaligned());
            a[0] = _mm512_dpbusd_epi32(a[0], xs, w0);
            a[1] = _mm512_dpbusd_epi32(a[1], xs, w1);
        }
    }
    let mut sums = [[0i32; PAIR]; MR];
    for (a, sum) in acc.iter().zip(sums.iter_mut()) {
        _mm512_storeu_si512(sum.as_mut_ptr().cast(), a[0]);
        _mm512_storeu_si512(sum.as_mut_ptr().add(PANEL).cast(), a[1]);
    }
    rescale_avx512(&sums[..x_scales.len()], e, (x_scales, x_zeros), out, stride, cols);
}

/// The epilogue of every AVX-512 kernel: row r of `sums` (one per x scale), rescaled by `e`, into the first
/// `cols` entries of row r of `out` (`stride` apart), stored under a mask for a short last pair.
///
/// # Safety
/// The CPU must have AVX-512 F; out holds (sums.len() − 1) · stride + cols values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn rescale_avx512(
    sums: &[[i32; PAIR]],
    e: &Epilogue,
    (x_scales, x_zeros): (&[f32], &[i32]),
    out: &mut [f32],
    stride: usize,
    cols: usize,
) {
    use std::arch::x86_64::*;
    let masks = [(1u32 << cols.min(PANEL)) - 1, (1u32 << cols.saturating_sub(PANEL)) - 1].map(|m| m as __mmask16);
    for (r, sum) in sums.iter().enumerate() {
        let (sx, zero) = (_mm512_set1_ps(x_scales[r]), _mm512_set1_epi32(x_zeros[r]));
        for (p, &mask) in masks.iter().enumerate() {
            let a = _mm512_loadu_si512(sum.as_ptr().add(p * PANEL).cast());
            let weight_sums = _mm512_loadu_si512(e.weight_sums.as_ptr().add(p * PANEL).cast());
            let v = _mm512_cvtepi32_ps(_mm512_sub_epi32(a, _mm512_mullo_epi32(zero, weight_sums)));
            let s = _mm512_mul_ps(sx, _mm512_loadu_ps(e.scales.as_ptr().add(p * PANEL)));
            let y = _mm512_fmadd_ps(v, s, _mm512_loadu_ps(e.bias.as_ptr().add(p * PANEL)));
            _mm512_mask_storeu_ps(out.as_mut_ptr().add(r * stride + p * PANEL), mask, y);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::reduced::quantize_row;
    use crate::kernels::twin::product_operands;

    fn panels_of(w: &[f32], (rows, cols): (usize, usize)) -> Int8Panels {
        let (q, scales): (Vec<Vec<i8>>, Vec<f32>) = w.chunks(cols).map(quantize_row).unzip();
        Int8Panels::pack(&q.concat(), &scales, (rows, cols))
    }

    /// The product equals the f32 product of the dequantised activations and weights (relative 1e-5 of the
    /// largest output: only the order of the f32 rounding differs), for every shape class: rows below, at and
    /// above a micro-kernel's and a task's, channels not a multiple of 32, inputs not a multiple of 4.
    #[test]
    fn products_match_the_dequantised_twin() {
        let cases =
            [(1, 8, 32), (3, 37, 70), (12, 64, 32), (13, 40, 100), (49, 384, 384), (200, 33, 65), (97, 1536, 40)];
        for (case, &(n, k, m)) in cases.iter().enumerate() {
            let seed = 7 * case as u64;
            let (x, w, b) = product_operands((n, k, m), seed);
            let packed = panels_of(&w, (m, k));
            let y = packed.product(&x, n, Some(&b), None);
            let xd = dequantize_rows(&quantize_rows(&x, n, k, 4 * packed.groups), n, k);
            let wd = packed.dequantize();
            let twin: Vec<f32> = (0..n)
                .flat_map(|r| {
                    let (xd, wd, b) = (&xd, &wd, &b);
                    (0..m).map(move |c| (0..k).map(|t| xd[r * k + t] * wd[c * k + t]).sum::<f32>() + b[c])
                })
                .collect();
            let scale = twin.iter().fold(0f32, |a, v| a.max(v.abs()));
            let err = y.iter().zip(&twin).fold(0f32, |a, (p, q)| a.max((p - q).abs())) / scale;
            assert!(err <= 1e-5, "({n}, {k}) · ({m}, {k})ᵀ: {err:e}");
        }
    }

    /// The VNNI kernel and the portable one sum the same integers: equal bit for bit (where the CPU has VNNI).
    #[test]
    fn vnni_and_portable_kernels_agree_exactly() {
        let groups = 11;
        let x: Vec<u8> = (0..MR * 4 * groups).map(|i| (i * 37 % 256) as u8).collect();
        let w: Vec<i8> = (0..PANELS * groups * 64).map(|i| ((i * 91 % 255) as i32 - 127) as i8).collect();
        let mut portable_sums = [[0i32; PAIR]; MR];
        exact_sums(&x, &w, groups, &mut portable_sums);
        // The extremes: 255 · −127 · 4 · groups fits i32 by far.
        let expect = |r: usize, j: usize| -> i32 {
            let (p, jj) = (j / PANEL, j % PANEL);
            (0..4 * groups)
                .map(|c| i32::from(x[r * 4 * groups + c]) * i32::from(w[(p * groups + c / 4) * 64 + 4 * jj + c % 4]))
                .sum()
        };
        for (r, row) in portable_sums.iter().enumerate() {
            for (j, &s) in row.iter().enumerate() {
                assert_eq!(s, expect(r, j), "row {r}, channel {j}");
            }
        }
        // Through the epilogue (scales, shift and bias chosen so that every output is exact in f32), with a
        // short last pair and fewer rows than MR.
        let e = Epilogue { weight_sums: [3; PAIR], scales: [0.5; PAIR], bias: [0.25; PAIR] };
        let (rows, cols) = (MR - 1, PAIR - 5);
        let (x_scales, x_zeros) = (vec![2.0f32; rows], vec![1i32; rows]);
        let run = |kernel: Kernel| {
            let mut out = vec![f32::NAN; rows * PAIR];
            kernel.run(&x, &w, groups, &e, (&x_scales, &x_zeros), (&mut out, PAIR, cols));
            out
        };
        let portable = run(Kernel::Portable);
        for r in 0..rows {
            for j in 0..PAIR {
                let y = portable[r * PAIR + j];
                if j < cols {
                    assert_eq!(y, (expect(r, j) - 3) as f32 + 0.25, "row {r}, channel {j}");
                } else {
                    assert!(y.is_nan(), "row {r}, channel {j} is past the last column and must be left alone");
                }
            }
        }
        for kernel in Kernel::available() {
            let other = run(kernel);
            assert!(portable.iter().zip(&other).all(|(a, b)| a.to_bits() == b.to_bits()), "{kernel:?}");
        }
    }

    /// Every kernel this CPU has (AMX tiles, VNNI, portable) gives the same product bit for bit, through every
    /// task shape: one row, rows within one tile, 16 and 32 rows (one and two AMX tiles), many row blocks.
    #[test]
    fn every_kernel_gives_the_same_product() {
        for (case, &(n, k, m)) in
            [(1, 64, 32), (7, 100, 70), (16, 384, 64), (33, 200, 96), (300, 128, 40)].iter().enumerate()
        {
            let seed = 100 + 3 * case as u64;
            let (x, w, b) = product_operands((n, k, m), seed);
            let packed = panels_of(&w, (m, k));
            let reference = packed.product_with(Kernel::Portable, &x, n, Some(&b), None);
            for kernel in Kernel::available() {
                let y = packed.product_with(kernel, &x, n, Some(&b), None);
                assert!(
                    y.iter().zip(&reference).all(|(p, q)| p.to_bits() == q.to_bits()),
                    "{kernel:?} ({n}, {k}, {m})"
                );
            }
        }
    }

    /// Activation rounding: a row's range [min(x, 0), max(x, 0)] spans the 256 levels, 0 is a level exactly,
    /// every value is within half a step, and an all-zero row gets scale 0 (its outputs are then the bias).
    #[test]
    fn activations_are_quantized_per_row() {
        let x = [0.5f32, -0.51, 2.04, 0.003, 0.0, 0.0, 0.0, 0.0];
        let a = quantize_rows(&x, 2, 4, 4);
        assert_eq!(a.q.len(), ROW_BLOCK * 4);
        assert!((a.scales[0] - 0.01).abs() < 1e-7);
        assert_eq!((a.q[1], a.q[2], a.zeros[0]), (0, 255, 51));
        for (v, q) in x[..4].iter().zip(&a.q[..4]) {
            assert!((v - (i32::from(*q) - a.zeros[0]) as f32 * a.scales[0]).abs() <= a.scales[0] / 2.0 + 1e-6);
        }
        assert_eq!(a.scales[1], 0.0);
        let positive = quantize_rows(&[1.0, 3.0], 1, 2, 4);
        assert_eq!((positive.zeros[0], positive.q[1]), (0, 255));
        let packed = panels_of(&[1.0, 2.0, 3.0, 4.0], (1, 4));
        assert_eq!(packed.product(&x[4..], 1, Some(&[0.25]), None), vec![0.25]);
    }
}
