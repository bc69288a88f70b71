//! f32 × f32 matrix products over weights stored once in panels, for encoders at inference.
//!
//! An encoder's products have many rows (every token of a batch of sentences) and are bound by arithmetic.
//! The general matrix product (the `gemm` crate, behind [`super::matrix_product`]) packs its right-hand side
//! into panels on every call: for MiniLM at batch 32 that packing was 11% of the whole pass, for weights that
//! never change.
//! Here they are packed at load time, and a 12-row × 32-channel micro-kernel (24 of the 32 vector registers as
//! accumulators, two weight loads and twelve broadcasts per input) streams each pair of panels once per
//! 12 rows. One sentence (about a dozen tokens) is one micro-kernel call per pair, so its products take the
//! same path instead of the dot products meant for a single decoding row.
//!
//! The panels interleave a pair: input c of pair q is 32 consecutive values w\[32q + j\]\[c\], so a call reads one
//! stream. Each output sums its inputs in order with fused multiply-adds, whatever the thread count.
//!
//! The composed twin is the plain product x · wᵀ + b ([`super::linear`]); this kernel only sums in another
//! order. Without AVX-512 the `gemm` crate is faster than the portable code here, so layers stay unpacked
//! ([`available`]).

use std::ops::Range;

use rayon::prelude::*;

use super::panels::{by_tasks, RowActivation, MR, PAIR, PANEL};

/// Whether this CPU runs the AVX-512 micro-kernel (not with `QKV_NO_AVX512=1`): only then do encoders pack their
/// f32 weights.
pub fn available() -> bool {
    Kernel::detect() != Kernel::Portable
}

/// An f32 weight matrix (rows = output channels, cols = inputs) in interleaved pairs of panels. Rows are padded
/// to whole pairs with zero weights.
#[derive(Debug, Clone)]
pub struct F32Panels {
    rows: usize,
    cols: usize,
    /// Pair q, input c: 32 values, value j = w\[32q + j\]\[c\].
    panels: Vec<f32>,
}

impl F32Panels {
    /// Panels of the row-major matrix `values` (rows, cols).
    pub fn pack(values: &[f32], (rows, cols): (usize, usize)) -> Self {
        debug_assert_eq!(values.len(), rows * cols);
        let pairs = rows.div_ceil(PAIR);
        let mut panels = vec![0f32; pairs * PAIR * cols];
        panels.par_chunks_mut((PAIR * cols).max(1)).enumerate().for_each(|(q, pair)| {
            for j in 0..PAIR.min(rows.saturating_sub(q * PAIR)) {
                let row = &values[(q * PAIR + j) * cols..][..cols];
                for (c, &v) in row.iter().enumerate() {
                    pair[c * PAIR + j] = v;
                }
            }
        });
        Self { rows, cols, panels }
    }

    /// Rows first..first + out.len() / cols, into `out`.
    pub fn dequantize_rows_into(&self, first: usize, out: &mut [f32]) {
        for (i, row) in out.chunks_mut(self.cols.max(1)).enumerate() {
            let r = first + i;
            let pair = &self.panels[(r / PAIR) * PAIR * self.cols..];
            for (c, v) in row.iter_mut().enumerate() {
                *v = pair[c * PAIR + r % PAIR];
            }
        }
    }

    /// y (n, rows) = x (n, cols) · wᵀ (+ bias in every row). `after` (an activation), if any, runs over each
    /// task's rows of y while they are in cache.
    pub fn product(&self, x: &[f32], n: usize, bias: Option<&[f32]>, after: Option<RowActivation>) -> Vec<f32> {
        self.product_with(Kernel::detect(), x, n, bias, after)
    }

    fn product_with(
        &self,
        kernel: Kernel,
        x: &[f32],
        n: usize,
        bias: Option<&[f32]>,
        after: Option<RowActivation>,
    ) -> Vec<f32> {
        let k = self.cols;
        assert_eq!(x.len(), n * k, "f32 panels: x is not ({n}, {k})");
        // The last rows short of MR, padded with zero rows once for every task, so that the micro-kernel always
        // reads MR rows.
        let tail_start = n - n % MR;
        let mut tail = vec![0f32; if tail_start < n { MR * k } else { 0 }];
        tail[..(n - tail_start) * k].copy_from_slice(&x[tail_start * k..]);
        let a = Rows { x, tail: &tail, tail_start };
        by_tasks(n, self.rows, after, |rows, pairs, out, width| self.block(kernel, &a, rows, pairs, bias, out, width))
    }

    /// Rows `rows` of y against the pairs `pairs`, into `out` (rows.len() × `width`, starting at the first real
    /// channel of `pairs`).
    #[allow(clippy::too_many_arguments)]
    fn block(
        &self,
        kernel: Kernel,
        a: &Rows,
        rows: Range<usize>,
        pairs: Range<usize>,
        bias: Option<&[f32]>,
        out: &mut [f32],
        width: usize,
    ) {
        let k = self.cols;
        let first_col = pairs.start * PAIR;
        for pair in pairs {
            let w = &self.panels[pair * PAIR * k..][..PAIR * k];
            let c0 = pair * PAIR;
            let cols = (c0 + PAIR).min(self.rows) - c0;
            let mut b = [0f32; PAIR];
            if let Some(bias) = bias {
                b[..cols].copy_from_slice(&bias[c0..c0 + cols]);
            }
            for r0 in rows.clone().step_by(MR) {
                let valid = (rows.end - r0).min(MR);
                let xs = if r0 == a.tail_start { a.tail } else { &a.x[r0 * k..][..MR * k] };
                let y = &mut out[(r0 - rows.start) * width + (c0 - first_col)..];
                kernel.run(xs, w, k, &b, valid, (y, width, cols));
            }
        }
    }
}

/// A product's activations: whole groups of MR rows read in place, the last partial group from a padded copy.
struct Rows<'a> {
    x: &'a [f32],
    tail: &'a [f32],
    tail_start: usize,
}

/// The AVX-512 micro-kernel where the CPU has it, else portable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    Portable,
}

impl Kernel {
    fn detect() -> Self {
        static KERNEL: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *KERNEL.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            if super::avx512_allowed() && is_x86_feature_detected!("avx512f") {
                return Kernel::Avx512;
            }
            Kernel::Portable
        })
    }

    /// Every kernel this CPU can run (for the tests that compare them).
    #[cfg(test)]
    fn available() -> Vec<Self> {
        let mut kernels = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx512f") {
            kernels.push(Kernel::Avx512);
        }
        kernels
    }

    /// For MR rows of x (MR × k; only the first `rows` are real) and one pair of panels w (k × 32): Σ_c x[r][c] ·
    /// w[j][c] + b[j] into the first `cols` entries of row r < `rows` of `out` (rows `stride` apart).
    fn run(
        self,
        x: &[f32],
        w: &[f32],
        k: usize,
        b: &[f32; PAIR],
        rows: usize,
        (out, stride, cols): (&mut [f32], usize, usize),
    ) {
        assert!(x.len() >= MR * k && w.len() >= PAIR * k && rows <= MR && cols <= PAIR);
        assert!(rows == 0 || out.len() >= (rows - 1) * stride + cols);
        match self {
            // SAFETY: detect() chose Avx512 only where the CPU has it, and the lengths are checked above.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => unsafe {
                sums_avx512(x.as_ptr(), w.as_ptr(), k, b, rows, out.as_mut_ptr(), stride, cols)
            },
            Kernel::Portable => {
                let mut sums = [[0f32; PAIR]; MR];
                super::vectorized(
                    #[inline(always)]
                    || {
                        for c in 0..k {
                            let wc = &w[c * PAIR..][..PAIR];
                            for (r, sum) in sums.iter_mut().enumerate() {
                                let a = x[r * k + c];
                                for j in 0..PAIR {
                                    sum[j] = a.mul_add(wc[j], sum[j]);
                                }
                            }
                        }
                    },
                );
                for (r, sum) in sums.iter().enumerate().take(rows) {
                    for j in 0..cols {
                        out[r * stride + j] = sum[j] + b[j];
                    }
                }
            }
        }
    }
}

/// How far ahead of the current input the micro-kernel prefetches the pair: 16 inputs, 2 KiB.
#[cfg(target_arch = "x86_64")]
const PREFETCH: usize = 16 * PAIR;

/// [`Kernel::run`] with AVX-512: per input, two loads of the pair and 24 fused multiply-adds, each row's value
/// broadcast to every lane; then the bias, stored under a mask for a short last pair.
///
/// # Safety
/// The CPU must have AVX-512 F; x must hold MR rows of k, w k × 32 values, and out `rows` rows `stride` apart of
/// at least `cols` ≤ 32 values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn sums_avx512(
    x: *const f32,
    w: *const f32,
    k: usize,
    b: &[f32; PAIR],
    rows: usize,
    out: *mut f32,
    stride: usize,
    cols: usize,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    for c in 0..k {
        // The pair's two cache lines 16 inputs ahead: without it the loads of w stall (+5–10% on MiniLM's shapes).
        let ahead = w.wrapping_add(c * PAIR + PREFETCH);
        _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(PANEL).cast());
        let w0 = _mm512_loadu_ps(w.add(c * PAIR));
        let w1 = _mm512_loadu_ps(w.add(c * PAIR + PANEL));
        for (r, acc) in acc.iter_mut().enumerate() {
            let a = _mm512_set1_ps(*x.add(r * k + c));
            acc[0] = _mm512_fmadd_ps(a, w0, acc[0]);
            acc[1] = _mm512_fmadd_ps(a, w1, acc[1]);
        }
    }
    let (b0, b1) = (_mm512_loadu_ps(b.as_ptr()), _mm512_loadu_ps(b.as_ptr().add(PANEL)));
    let mask = |n: usize| if n >= PANEL { 0xFFFF } else { ((1u32 << n) - 1) as u16 };
    let (m0, m1) = (mask(cols), mask(cols.saturating_sub(PANEL)));
    for (r, acc) in acc.iter().enumerate().take(rows) {
        let y = out.add(r * stride);
        _mm512_mask_storeu_ps(y, m0, _mm512_add_ps(acc[0], b0));
        _mm512_mask_storeu_ps(y.add(PANEL), m1, _mm512_add_ps(acc[1], b1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::twin::product_operands;

    /// Every kernel this CPU has computes x · wᵀ + b (relative 1e-5 of the largest output: only the order of the
    /// sums differs), for rows below, at and above a micro-kernel's and a task's, channels not a multiple of 32
    /// (or of 16) and odd inputs, with and without a bias, and with an activation after.
    #[test]
    fn products_match_the_plain_product() {
        let cases =
            [(1, 8, 32), (3, 37, 70), (12, 64, 16), (13, 40, 100), (49, 384, 384), (100, 33, 65), (200, 1536, 40)];
        for (case, &(n, k, m)) in cases.iter().enumerate() {
            let seed = 7 * case as u64;
            let (x, w, b) = product_operands((n, k, m), seed);
            let packed = F32Panels::pack(&w, (m, k));
            let bias = (case % 2 == 0).then_some(&b[..]);
            let twin: Vec<f32> = (0..n)
                .flat_map(|r| {
                    let (x, w) = (&x, &w);
                    (0..m).map(move |c| {
                        let dot: f64 = (0..k).map(|t| f64::from(x[r * k + t]) * f64::from(w[c * k + t])).sum();
                        dot as f32 + bias.map_or(0.0, |b| b[c])
                    })
                })
                .collect();
            let scale = twin.iter().fold(0f32, |a, v| a.max(v.abs()));
            for kernel in Kernel::available() {
                let y = packed.product_with(kernel, &x, n, bias, None);
                let err = y.iter().zip(&twin).fold(0f32, |a, (p, q)| a.max((p - q).abs())) / scale;
                assert!(err <= 1e-5, "{kernel:?} ({n}, {k}) · ({m}, {k})ᵀ: {err:e}");
                let relu: RowActivation = |row| row.iter_mut().for_each(|v| *v = v.max(0.0));
                let relu = packed.product_with(kernel, &x, n, bias, Some(relu));
                assert!(
                    relu.iter().zip(&y).all(|(r, v)| *r == v.max(0.0)),
                    "{kernel:?}: the activation after the product"
                );
            }
        }
    }

    /// The panels give back every weight, the padding excluded.
    #[test]
    fn panels_round_trip() {
        let (m, k) = (35, 45);
        let w: Vec<f32> = (0..m * k).map(|i| i as f32 - 700.0).collect();
        let mut out = vec![0f32; m * k];
        F32Panels::pack(&w, (m, k)).dequantize_rows_into(0, &mut out);
        assert_eq!(out, w);
    }
}
