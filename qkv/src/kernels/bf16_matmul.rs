//! bf16 × bf16 matrix products for encoders: the weights are bf16 ([`super::reduced`]), and each row of
//! activations is rounded to bf16 (nearest even) when it arrives; every product of two bf16 is exact in f32 and
//! the sums accumulate in f32.
//!
//! An encoder's products have many rows and are bound by arithmetic, so this pays only where the CPU multiplies
//! bf16 faster than f32. AMX's `tdpbf16ps` does 8 192 multiply-adds an instruction (Intel Xeon since Sapphire
//! Rapids). AVX512-BF16's `vdpbf16ps` does 32 an instruction, and on AMD's Zen 4 it issues as often as an f32
//! FMA (16): twice the multiply-adds a cycle (224 against 103 GFLOP/s on one thread of an EPYC). On Intel it
//! does no more than two f32 FMAs (MiniLM ran at 445 sentences/s with it against f32's 570): there the tiles
//! are used, and without them the bf16 weights are widened to f32 for the f32 product instead ([`available`]).
//!
//! The weights are stored in panels of 16 output channels × 2 inputs: byte for byte the layout of the int8
//! panels ([`super::dynamic_int8`]) with pairs of bf16 in place of groups of 4 bytes, 16 groups to a weight
//! tile, and a panel's group is one `vdpbf16ps` operand. The portable kernel (for the tests, and for a CPU
//! with neither) sums the same products in f32.
//!
//! The composed twin is the f32 product of the bf16-rounded activations ([`round_rows`]) with the bf16
//! weights: the kernel computes exactly that product, in another order of summation (and, as both
//! instructions do, with subnormal inputs and results flushed to zero).

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::amx;
use super::panels::{by_tasks, RowActivation, PAIR, PANEL, ROW_BLOCK};

/// f32 → bf16, rounded to nearest even (what torch's `.to(torch.bfloat16)` does).
#[inline(always)]
pub fn bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7FFF + ((bits >> 16) & 1));
    (rounded >> 16) as u16
}

#[inline(always)]
pub(super) fn bf16_value(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// Whether this CPU runs a bf16 kernel: the tiles (AMX-BF16, granted by Linux; not with `QKV_NO_AMX=1`), or
/// AVX512-BF16 on an AMD CPU (not with `QKV_NO_AVX512=1`). Only then is it faster than converting the weights
/// to f32.
pub fn available() -> bool {
    Kernel::detect() != Kernel::Portable
}

/// A bf16 weight matrix (rows = output channels, cols = inputs) in panels. Rows are padded to whole pairs of
/// panels and inputs to 32 (an AMX tile's depth in bf16), with zero weights.
#[derive(Debug, Clone)]
pub struct Bf16Panels {
    rows: usize,
    cols: usize,
    /// Pairs of inputs: 16 · ⌈cols / 32⌉.
    groups: usize,
    /// Panel p, group g: 32 values, value 2j + t = w[16p + j][2g + t].
    panels: Vec<u16>,
}

impl Bf16Panels {
    /// Panels of the row-major bf16 matrix `bits` (rows, cols).
    pub fn pack(bits: &[u16], (rows, cols): (usize, usize)) -> Self {
        debug_assert_eq!(bits.len(), rows * cols);
        let groups = cols.div_ceil(32) * 16;
        let padded = rows.div_ceil(PAIR) * PAIR;
        let mut panels = vec![0u16; padded * groups * 2];
        panels.par_chunks_mut(PANEL * groups * 2).enumerate().for_each(|(p, panel)| {
            for j in 0..PANEL.min(rows.saturating_sub(p * PANEL)) {
                let row = &bits[(p * PANEL + j) * cols..][..cols];
                for (c, &v) in row.iter().enumerate() {
                    panel[(c / 2) * 32 + 2 * j + c % 2] = v;
                }
            }
        });
        Self { rows, cols, groups, panels }
    }

    /// Weight (r, c) as bf16 bits.
    fn at(&self, r: usize, c: usize) -> u16 {
        self.panels[(r / PANEL) * self.groups * 32 + (c / 2) * 32 + 2 * (r % PANEL) + c % 2]
    }

    /// Rows first..first + out.len() / cols as f32, into `out`.
    pub fn dequantize_rows_into(&self, first: usize, out: &mut [f32]) {
        for (i, row) in out.chunks_mut(self.cols.max(1)).enumerate() {
            for (c, v) in row.iter_mut().enumerate() {
                *v = bf16_value(self.at(first + i, c));
            }
        }
    }

    /// y (n, rows) = bf16(x) (n, cols) · wᵀ, summed in f32 (+ bias in every row).
    /// `after` (an activation), if any, runs over each task's rows of y while they are in cache.
    pub fn product(&self, x: &[f32], n: usize, bias: Option<&[f32]>, after: Option<RowActivation>) -> Vec<f32> {
        debug_assert_eq!(x.len(), n * self.cols);
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
        let a = round_rows(x, n, self.cols, 2 * self.groups);
        by_tasks(n, self.rows, after, |rows, pairs, out, width| self.block(kernel, &a, rows, pairs, bias, out, width))
    }

    /// Rows `rows` of y against the panel pairs `pairs`, into `out` (rows.len() × `width`, starting at the
    /// first real channel of `pairs`).
    #[allow(clippy::too_many_arguments)]
    fn block(
        &self,
        kernel: Kernel,
        a: &[u16],
        rows: std::ops::Range<usize>,
        pairs: std::ops::Range<usize>,
        bias: Option<&[f32]>,
        out: &mut [f32],
        width: usize,
    ) {
        let k2 = 2 * self.groups;
        let pair_len = PAIR * k2;
        let first_col = pairs.start * PAIR;
        let mut sums = [[0f32; PAIR]; STEP];
        #[cfg(target_arch = "x86_64")]
        if kernel == Kernel::Amx {
            // SAFETY: Kernel::Amx is chosen only once Linux has granted this process the tile state.
            unsafe { amx::configure() };
        }
        for pair in pairs {
            let w = &self.panels[pair * pair_len..][..pair_len];
            let c0 = pair * PAIR;
            let cols = (c0 + PAIR).min(self.rows) - c0;
            let mut b = [0f32; PAIR];
            if let Some(bias) = bias {
                b[..cols].copy_from_slice(&bias[c0..c0 + cols]);
            }
            for r0 in rows.clone().step_by(STEP) {
                let valid = (rows.end - r0).min(STEP);
                let x = &a[r0 * k2..][..valid.div_ceil(16) * 16 * k2];
                kernel.sums(x, w, self.groups, valid, &mut sums);
                let y = &mut out[(r0 - rows.start) * width + (c0 - first_col)..];
                for (r, sum) in sums.iter().enumerate().take(valid) {
                    for j in 0..cols {
                        y[r * width + j] = sum[j] + b[j];
                    }
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        if kernel == Kernel::Amx {
            // SAFETY: as configure().
            unsafe { amx::release() };
        }
    }
}

/// Rows of activations a kernel call takes: two AMX tiles.
const STEP: usize = 32;

/// The n rows of x (n, cols) rounded to bf16 (nearest even), padded: rows to whole tasks (48 rows, so that a
/// 32-row step never reads past them), inputs to `k2` (the padding meets zero weights).
pub fn round_rows(x: &[f32], n: usize, cols: usize, k2: usize) -> Vec<u16> {
    assert!(k2 >= cols);
    let padded = n.div_ceil(ROW_BLOCK) * ROW_BLOCK;
    let mut a = vec![0u16; padded * k2];
    a.par_chunks_mut(k2.max(1)).take(n).enumerate().for_each(|(r, out)| {
        let row = &x[r * cols..][..cols];
        super::vectorized(
            #[inline(always)]
            || {
                for (o, &v) in out.iter_mut().zip(row) {
                    *o = bf16_bits(v);
                }
            },
        )
    });
    a
}

/// The tile kernel where the CPU has it, else AVX512-BF16, else portable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Amx,
    #[cfg(target_arch = "x86_64")]
    Avx512Bf16,
    Portable,
}

impl Kernel {
    fn detect() -> Self {
        static KERNEL: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *KERNEL.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            if amx::usable(amx::Product::Bf16) {
                return Kernel::Amx;
            }
            #[cfg(target_arch = "x86_64")]
            if super::avx512_allowed() && has_avx512_bf16() && is_amd() {
                return Kernel::Avx512Bf16;
            }
            Kernel::Portable
        })
    }

    /// sums[r][j] = Σ_c x[r][c] · w[j][c] for the first `valid` ≤ 32 rows of x (32 rows of k2 = 2 · groups
    /// values, the padding included) and one pair of panels w (2 × groups × 32 values).
    fn sums(self, x: &[u16], w: &[u16], groups: usize, valid: usize, sums: &mut [[f32; PAIR]; STEP]) {
        let k2 = 2 * groups;
        assert!(valid <= STEP && x.len() >= valid.div_ceil(16) * 16 * k2 && w.len() >= PAIR * k2);
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: detect() chose Amx only where the tiles are usable, and configure() ran on this thread;
            // the lengths are checked above.
            Kernel::Amx => unsafe { amx::bf16_sums(x, 2 * k2, w, groups, valid > amx::ROWS, sums) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: detect() chose Avx512Bf16 only where the CPU has it; the lengths are checked above.
            Kernel::Avx512Bf16 => unsafe { avx512_bf16::sums(x, k2, w, groups, valid, sums) },
            Kernel::Portable => {
                let (w0, w1) = w.split_at(groups * 32);
                for (r, sum) in sums.iter_mut().enumerate().take(valid) {
                    let row = &x[r * k2..][..k2];
                    *sum = [0.0; PAIR];
                    for g in 0..groups {
                        let xs = [bf16_value(row[2 * g]), bf16_value(row[2 * g + 1])];
                        let (p0, p1) = (&w0[g * 32..][..32], &w1[g * 32..][..32]);
                        for j in 0..PANEL {
                            for t in 0..2 {
                                sum[j] += xs[t] * bf16_value(p0[2 * j + t]);
                                sum[PANEL + j] += xs[t] * bf16_value(p1[2 * j + t]);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Every kernel this CPU can run (for the tests that compare them).
    #[cfg(test)]
    fn available() -> Vec<Self> {
        let mut kernels = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        if amx::usable(amx::Product::Bf16) {
            kernels.push(Kernel::Amx);
        }
        #[cfg(target_arch = "x86_64")]
        if has_avx512_bf16() {
            kernels.push(Kernel::Avx512Bf16);
        }
        kernels
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx512_bf16() -> bool {
    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
}

/// AMD's CPUs: the ones whose `vdpbf16ps` issues as often as an f32 FMA (Zen 4 and later).
#[cfg(target_arch = "x86_64")]
fn is_amd() -> bool {
    let id = std::arch::x86_64::__cpuid(0);
    [id.ebx, id.edx, id.ecx] == [0x6874_7541, 0x6974_6E65, 0x444D_4163] // "AuthenticAMD"
}

#[cfg(target_arch = "x86_64")]
mod avx512_bf16 {
    //! The AVX512-BF16 micro-kernel: per pair of inputs, one load of each panel's group (16 channels × 2
    //! inputs) and, per row, the row's pair broadcast to every lane and one `vdpbf16ps` per panel.
    use std::arch::x86_64::*;

    use super::{PAIR, PANEL, STEP};

    /// Rows a call of [`rows`] sums at once: 24 of the 32 vector registers are accumulators.
    const MR: usize = 12;

    /// How far ahead the panels are prefetched: 16 pairs of inputs, 1 KiB of each panel.
    const PREFETCH: usize = 16 * 32;

    /// [`super::Kernel::sums`]: rows in calls of 12, the last 8 or fewer in a call of 8.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F and BF16; x must hold `valid` rows of k2 = 2 · groups values, w two panels of
    /// groups × 32 values.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn sums(
        x: &[u16],
        k2: usize,
        w: &[u16],
        groups: usize,
        valid: usize,
        sums: &mut [[f32; PAIR]; STEP],
    ) {
        let mut r0 = 0;
        while r0 < valid {
            let left = valid - r0;
            let out = &mut sums[r0..];
            let x = x[r0 * k2..].as_ptr();
            if left > 8 {
                rows::<MR>(x, k2, w.as_ptr(), groups, left.min(MR), out);
                r0 += MR;
            } else {
                rows::<8>(x, k2, w.as_ptr(), groups, left, out);
                r0 += 8;
            }
        }
    }

    /// sums[r] for the first `valid` ≤ R rows of x (R rows are read: the missing ones repeat the last real one).
    ///
    /// # Safety
    /// As [`sums`], for `valid` rows from x.
    #[inline(always)]
    unsafe fn rows<const R: usize>(
        x: *const u16,
        k2: usize,
        w: *const u16,
        groups: usize,
        valid: usize,
        sums: &mut [[f32; PAIR]],
    ) {
        let row: [*const u16; R] = std::array::from_fn(|r| x.add(r.min(valid - 1) * k2));
        let (w0, w1) = (w, w.add(groups * 32));
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        for g in 0..groups {
            _mm_prefetch::<_MM_HINT_T0>(w0.wrapping_add(g * 32 + PREFETCH).cast());
            _mm_prefetch::<_MM_HINT_T0>(w1.wrapping_add(g * 32 + PREFETCH).cast());
            let p0: __m512bh = std::mem::transmute(_mm512_loadu_si512(w0.add(g * 32).cast()));
            let p1: __m512bh = std::mem::transmute(_mm512_loadu_si512(w1.add(g * 32).cast()));
            for (acc, row) in acc.iter_mut().zip(&row) {
                let pair = row.add(2 * g).cast::<i32>().read_unaligned();
                let a: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                acc[0] = _mm512_dpbf16_ps(acc[0], a, p0);
                acc[1] = _mm512_dpbf16_ps(acc[1], a, p1);
            }
        }
        for (sum, acc) in sums.iter_mut().zip(&acc).take(valid) {
            _mm512_storeu_ps(sum.as_mut_ptr(), acc[0]);
            _mm512_storeu_ps(sum.as_mut_ptr().add(PANEL), acc[1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::twin::product_operands;

    /// Every kernel this CPU has computes the f32 product of the bf16-rounded activations and the bf16 weights
    /// (relative 1e-5 of the largest output: each product of two bf16 is exact in f32, so only the order of
    /// the f32 sums differs), for every shape class: rows below, at and above a tile's, a step's and a task's,
    /// channels not a multiple of 32, inputs not a multiple of 32 (or of 2).
    #[test]
    fn products_match_the_rounded_twin() {
        let cases =
            [(1, 8, 32), (3, 37, 70), (16, 64, 32), (17, 40, 100), (33, 384, 384), (49, 33, 65), (200, 1536, 40)];
        for (case, &(n, k, m)) in cases.iter().enumerate() {
            let seed = 11 * case as u64;
            let (x, w, b) = product_operands((n, k, m), seed);
            let bits: Vec<u16> = w.iter().map(|&v| bf16_bits(v)).collect();
            let packed = Bf16Panels::pack(&bits, (m, k));
            let xr: Vec<f32> = x.iter().map(|&v| bf16_value(bf16_bits(v))).collect();
            let twin: Vec<f32> = (0..n)
                .flat_map(|r| {
                    let (xr, bits, b) = (&xr, &bits, &b);
                    (0..m).map(move |c| (0..k).map(|t| xr[r * k + t] * bf16_value(bits[c * k + t])).sum::<f32>() + b[c])
                })
                .collect();
            let scale = twin.iter().fold(0f32, |a, v| a.max(v.abs()));
            for kernel in Kernel::available() {
                let y = packed.product_with(kernel, &x, n, Some(&b), None);
                let err = y.iter().zip(&twin).fold(0f32, |a, (p, q)| a.max((p - q).abs())) / scale;
                assert!(err <= 1e-5, "{kernel:?} ({n}, {k}) · ({m}, {k})ᵀ: {err:e}");
            }
        }
    }

    /// The panels give back every weight, the padding excluded.
    #[test]
    fn panels_round_trip() {
        let (m, k) = (35, 45);
        let bits: Vec<u16> = (0..m * k).map(|i| bf16_bits(i as f32 - 700.0)).collect();
        let packed = Bf16Panels::pack(&bits, (m, k));
        let mut out = vec![0f32; m * k];
        packed.dequantize_rows_into(0, &mut out);
        assert!(out.iter().zip(&bits).all(|(v, &b)| *v == bf16_value(b)));
    }
}
