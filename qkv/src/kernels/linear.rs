//! The affine map of a Linear layer, y = x·Wᵀ (+ b), as one op over any leading dimensions.
//!
//! Composed from candle ops it is a graph of reshape, transpose, matmul, bias and reshape. candle's backward
//! pass gives every node's input a fresh zero tensor and adds the gradient into it, so the views alone cost
//! three activation-sized allocations, fills and additions per layer. Here the backward pass is two matrix
//! products and a column sum, written once.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::matmul::{product, Mat};
use super::{as_f32, fused, row_width, storage_f32, PARALLEL_MIN_ELEMENTS};
use crate::{Error, Result};

/// x (…, K) · wᵀ + b for w (M, K) and b (M): (…, M). Gradients flow to x, w and b.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (out_dim, in_dim) = weight.dims2()?;
    if x.dims().last() != Some(&in_dim) {
        return Err(Error::shape("linear input", format!("(…, {in_dim})"), x.dims()));
    }
    if let Some(b) = bias {
        if b.dims() != [out_dim] {
            return Err(Error::shape("linear bias", format!("({out_dim})"), b.dims()));
        }
    }
    if !(fused(x) && fused(weight) && bias.is_none_or(fused)) {
        return linear_composed(x, weight, bias);
    }
    let (x, weight) = (x.contiguous()?, weight.contiguous()?);
    Ok(match bias {
        None => x.apply_op2(&weight, Affine)?,
        Some(b) => x.apply_op3(&weight, &b.contiguous()?, Affine)?,
    })
}

/// candle's own ops, the reference for the kernel.
pub fn linear_composed(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let in_dim = weight.dim(1)?;
    let rows = x.elem_count() / in_dim.max(1);
    let y = x.reshape((rows, in_dim))?.matmul(&weight.t()?)?;
    let y = match bias {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut dims = x.dims().to_vec();
    *dims.last_mut().expect("rank checked by the caller") = weight.dim(0)?;
    Ok(y.reshape(dims)?)
}

/// The kernel: [`CustomOp2`] without a bias, [`CustomOp3`] with one.
struct Affine;

const NAME: &str = "qkv-linear";

/// Output shape (…, M) and the row count N of the flattened input.
fn output_shape(xl: &Layout, wl: &Layout) -> candle_core::Result<(Shape, usize, usize, usize)> {
    let (x_dims, w_dims) = (xl.dims(), wl.dims());
    let &[m, k] = w_dims else { candle_core::bail!("{NAME}: weight {w_dims:?}, expected (out, in)") };
    if x_dims.last() != Some(&k) {
        candle_core::bail!("{NAME}: input {x_dims:?} for a weight {w_dims:?}")
    }
    let mut dims = x_dims.to_vec();
    *dims.last_mut().expect("checked above") = m;
    let n = xl.shape().elem_count() / k.max(1);
    Ok((Shape::from(dims), n, k, m))
}

/// y (N, M) = x (N, K) · wᵀ, plus `bias` in every row. For a few rows against many outputs (one sentence, a
/// prompt, a logits row) it computes yᵀ = w · xᵀ and transposes that small result: x · wᵀ made gemm repack all
/// of w on every call, which dominated such products (one MiniLM sentence 12 → 3.3 ms).
pub(super) fn affine_forward(x: &[f32], w: &[f32], bias: Option<&[f32]>, (n, k, m): (usize, usize, usize)) -> Vec<f32> {
    let (xv, wv) = (Mat::new(x, n, k), Mat::new(w, m, k));
    if (1..=FEW_ROWS).contains(&n) && n * 16 < m {
        return few_rows(x, w, bias, (n, k, m));
    }
    if n > 1 && n * 16 < m {
        return transpose_adding(&product(wv, xv.t()), n, m, bias);
    }
    let mut y = product(xv, wv.t());
    if let Some(b) = bias {
        add_rows(&mut y, b);
    }
    y
}

/// Rows up to which [`few_rows`] beats gemm (decoding a batch of sequences: one row each).
pub(super) const FEW_ROWS: usize = 16;

/// Output rows of w a task of [`few_rows`] computes.
pub(super) const FEW_ROWS_CHUNK: usize = 64;

/// y (N, M) = x · wᵀ + b for a few rows x (N ≤ [`FEW_ROWS`]): each pair of rows of w is read once and dotted
/// with every row of x while it is in cache. For such products the cost is reading w; gemm packs w first, which
/// for 2–16 rows made a GPT-2 decoding step of 2 sequences 3× slower than one (LM head 768 × 50257: 26 ms
/// against 7.6).
fn few_rows(x: &[f32], w: &[f32], bias: Option<&[f32]>, (n, k, m): (usize, usize, usize)) -> Vec<f32> {
    few_rows_by_task((n, k, m), bias, |first, out| {
        let w = &w[first * k..(first + out.len() / n) * k];
        super::vectorized(
            #[inline(always)]
            || match n {
                1 => dots_one_row(w, x, out),
                _ => dots_by_pairs(w, x, out, (n, k)),
            },
        )
    })
}

/// The frame of every few-rows product y (N, M) = x · wᵀ + b: `task(first, out)` fills `out`, the rows
/// first.. of yᵀ (M, N), [`FEW_ROWS_CHUNK`] of them (fewer at the end); tasks run on rayon's pool when w is
/// large enough to pay for waking it, and yᵀ is transposed with the bias added.
pub(super) fn few_rows_by_task(
    (n, k, m): (usize, usize, usize),
    bias: Option<&[f32]>,
    task: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let mut yt = vec![0f32; m * n]; // (M, N): each task writes whole rows
    let run = |(c, out): (usize, &mut [f32])| task(c * FEW_ROWS_CHUNK, out);
    if m * k >= PARALLEL_MIN_ELEMENTS {
        yt.par_chunks_mut(FEW_ROWS_CHUNK * n).enumerate().for_each(run);
    } else {
        yt.chunks_mut(FEW_ROWS_CHUNK * n).enumerate().for_each(run);
    }
    transpose_adding(&yt, n, m, bias)
}

/// y (N, M) from yᵀ (M, N), plus `bias` in every row.
fn transpose_adding(yt: &[f32], n: usize, m: usize, bias: Option<&[f32]>) -> Vec<f32> {
    let mut y = Vec::with_capacity(n * m);
    for j in 0..n {
        match bias {
            Some(b) => y.extend((0..m).map(|i| yt[i * n + j] + b[i])),
            None => y.extend((0..m).map(|i| yt[i * n + j])),
        }
    }
    y
}

/// `out`, rows of yᵀ (each N wide) = each row of `w` (K wide) dotted with the N rows of x, a pair of rows of w
/// at a time. Call it inside [`super::vectorized`].
#[inline(always)]
pub(super) fn dots_by_pairs(w: &[f32], x: &[f32], out: &mut [f32], (n, k): (usize, usize)) {
    for (p, y) in out.chunks_mut(2 * n).enumerate() {
        let pair = y.len() / n; // 2, or 1 for an odd last row
        let w0 = &w[2 * p * k..(2 * p + 1) * k];
        let w1 = &w[(2 * p + pair - 1) * k..(2 * p + pair) * k];
        dots(w0, w1, x, y, pair);
    }
}

/// Lanes of the dot products' accumulators: independent sums the compiler keeps in vector registers.
pub(super) const LANES: usize = 16;

/// y[r·N + j] = w_r · x[j] for the rows w0, w1 (`pair` of them: w1 is ignored when 1) and each row x[j] of `x`,
/// four rows of x at a time: eight independent sums, so that multiply-adds do not wait on each other and each
/// load feeds several of them.
#[inline(always)]
fn dots(w0: &[f32], w1: &[f32], x: &[f32], y: &mut [f32], pair: usize) {
    let k = w0.len();
    let n = y.len() / pair;
    let body = k - k % LANES;
    for g in (0..n).step_by(4) {
        let rows = (n - g).min(4);
        let row = |r: usize| &x[(g + r.min(rows - 1)) * k..][..k];
        let (x0, x1, x2, x3) = (row(0), row(1), row(2), row(3));
        let mut a = [[0f32; LANES]; 4];
        let mut b = [[0f32; LANES]; 4];
        let lanes = w0[..body]
            .chunks_exact(LANES)
            .zip(w1[..body].chunks_exact(LANES))
            .zip(x0.chunks_exact(LANES))
            .zip(x1.chunks_exact(LANES))
            .zip(x2.chunks_exact(LANES))
            .zip(x3.chunks_exact(LANES));
        for (((((u, v), c0), c1), c2), c3) in lanes {
            for l in 0..LANES {
                a[0][l] = u[l].mul_add(c0[l], a[0][l]);
                a[1][l] = u[l].mul_add(c1[l], a[1][l]);
                a[2][l] = u[l].mul_add(c2[l], a[2][l]);
                a[3][l] = u[l].mul_add(c3[l], a[3][l]);
                b[0][l] = v[l].mul_add(c0[l], b[0][l]);
                b[1][l] = v[l].mul_add(c1[l], b[1][l]);
                b[2][l] = v[l].mul_add(c2[l], b[2][l]);
                b[3][l] = v[l].mul_add(c3[l], b[3][l]);
            }
        }
        for r in 0..rows {
            let xr = row(r);
            let tail = |w: &[f32]| (body..k).map(|t| w[t] * xr[t]).sum::<f32>();
            y[g + r] = lane_sum(a[r]) + tail(w0);
            if pair == 2 {
                y[n + g + r] = lane_sum(b[r]) + tail(w1);
            }
        }
    }
}

/// y[i] = w_i · x for the rows w_i of `w` (y.len() of them) and one row x, one row of w after the other.
/// Decoding one sequence is this product, and it is bound by reading w: one row at a time reads w as a single
/// sequential stream, which the hardware prefetcher follows. Four rows at once (one load of x for four
/// multiply-adds) are four streams a row apart, each only a few cache lines long: on an AMD EPYC (Zen 4) a GPT-2
/// small decoding step's products drew 15 GB/s on one thread that way, 26 GB/s one row at a time.
#[inline(always)]
fn dots_one_row(w: &[f32], x: &[f32], y: &mut [f32]) {
    let k = x.len();
    let body = k - k % LANES;
    for (wr, y) in w.chunks_exact(k.max(1)).zip(y.iter_mut()) {
        let mut a = [0f32; LANES];
        for (u, c) in wr[..body].chunks_exact(LANES).zip(x.chunks_exact(LANES)) {
            for l in 0..LANES {
                a[l] = u[l].mul_add(c[l], a[l]);
            }
        }
        *y = lane_sum(a) + (body..k).map(|t| wr[t] * x[t]).sum::<f32>();
    }
}

/// The sum of the lanes by halves: a tree of vector additions instead of a chain of 15 dependent scalar ones,
/// whose latency otherwise dominates a short dot product.
#[inline(always)]
pub(super) fn lane_sum(mut a: [f32; LANES]) -> f32 {
    let mut width = LANES / 2;
    while width > 0 {
        for l in 0..width {
            a[l] += a[l + width];
        }
        width /= 2;
    }
    a[0]
}

/// Σ f(v) over `row`, in [`LANES`] independent sums (an auto-vectorised loop; one running f32 sum is a chain of
/// dependent adds the compiler may not reorder).
#[inline(always)]
pub(super) fn sum_by_lanes(row: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for chunk in chunks {
        for l in 0..LANES {
            lanes[l] += f(chunk[l]);
        }
    }
    lane_sum(lanes) + tail
}

/// Adds `b` to every row of `y`. (Starting gemm from the bias rows instead, with read_dst, made MiniLM's
/// batch-32 encoding 15% slower.)
fn add_rows(y: &mut [f32], b: &[f32]) {
    let row = |r: &mut [f32]| {
        super::vectorized(
            #[inline(always)]
            || {
                let b = &b[..r.len()];
                for j in 0..r.len() {
                    r[j] += b[j];
                }
            },
        )
    };
    if y.len() >= PARALLEL_MIN_ELEMENTS {
        y.par_chunks_mut(b.len()).for_each(row);
    } else {
        y.chunks_mut(b.len()).for_each(row);
    }
}

/// dx = g · w (N, K) and dw = gᵀ · x (M, K) for the output gradient g (N, M).
fn backward(x: &[f32], w: &[f32], g: &[f32], (n, k, m): (usize, usize, usize)) -> (Vec<f32>, Vec<f32>) {
    let (gv, wv, xv) = (Mat::new(g, n, m), Mat::new(w, m, k), Mat::new(x, n, k));
    (product(gv, wv), product(gv.t(), xv))
}

/// Column sums of g (N, M): the bias's gradient, in one pass over the rows (candle's broadcast backward sums
/// with a strided reduction, which once cost a small GPT step more than all its bias additions).
fn column_sums(g: &[f32], m: usize) -> Vec<f32> {
    let mut sums = vec![0f32; m];
    for row in g.chunks(m.max(1)) {
        super::vectorized(
            #[inline(always)]
            || {
                let row = &row[..sums.len()];
                for j in 0..sums.len() {
                    sums[j] += row[j];
                }
            },
        )
    }
    sums
}

/// The gradients of x and w as tensors shaped like them, and with `bias` the bias's.
fn gradients(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    grad: &Tensor,
) -> candle_core::Result<(Tensor, Tensor, Option<Tensor>)> {
    let grad = grad.contiguous()?;
    let (xs, xl) = x.storage_and_layout();
    let (ws, wl) = w.storage_and_layout();
    let (gs, gl) = grad.storage_and_layout();
    let (_, n, k, m) = output_shape(xl, wl)?;
    let (xv, wv, gv) = (storage_f32(&xs, xl, NAME)?, storage_f32(&ws, wl, NAME)?, storage_f32(&gs, gl, NAME)?);
    let (dx, dw) = backward(xv, wv, gv, (n, k, m));
    let db = match bias {
        Some(b) => Some(Tensor::from_vec(column_sums(gv, row_width(gl)), b.shape(), b.device())?),
        None => None,
    };
    let dx = Tensor::from_vec(dx, x.shape(), x.device())?;
    let dw = Tensor::from_vec(dw, w.shape(), w.device())?;
    Ok((dx, dw, db))
}

/// The forward pass on candle's storages, shared by both ops.
fn cpu_forward(
    (xs, xl): (&CpuStorage, &Layout),
    (ws, wl): (&CpuStorage, &Layout),
    bias: Option<&[f32]>,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let (shape, n, k, m) = output_shape(xl, wl)?;
    if let Some(b) = bias {
        if b.len() != m {
            candle_core::bail!("{NAME}: bias of {} for {m} outputs", b.len())
        }
    }
    let y = affine_forward(as_f32(xs, xl, NAME)?, as_f32(ws, wl, NAME)?, bias, (n, k, m));
    Ok((CpuStorage::F32(y), shape))
}

impl CustomOp2 for Affine {
    fn name(&self) -> &'static str {
        NAME
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        cpu_forward((xs, xl), (ws, wl), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = gradients(x, w, None, grad)?;
        Ok((Some(dx), Some(dw)))
    }
}

impl CustomOp3 for Affine {
    fn name(&self) -> &'static str {
        NAME
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        cpu_forward((xs, xl), (ws, wl), Some(as_f32(bs, bl, NAME)?))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = gradients(x, w, Some(b), grad)?;
        Ok((Some(dx), Some(dw), db))
    }
}

#[cfg(test)]
mod tests {
    use super::super::twin::{randn, relative_error};
    use super::*;

    /// Forward and every gradient agree with the composed twin, for few and many rows, with and without a bias,
    /// over leading dimensions.
    #[test]
    fn kernel_matches_composed_twin() {
        let cases = [
            (0, vec![2, 7, 24], 40),
            (1, vec![3, 24], 96),
            (2, vec![24], 96),
            (3, vec![1, 24], 8),
            (4, vec![5, 40], 700), // few rows, K not a multiple of the lanes, M past one task
            (5, vec![16, 32], 600),
            (6, vec![1, 40], 700),   // one row (decoding): row-parallel dot products
            (7, vec![37], 130),      // one row, K not a multiple of the lanes, a last task of 2 outputs
            (8, vec![1, 1, 64], 67), // one row, outputs not a multiple of 4
        ];
        for (case, dims, out) in cases {
            for with_bias in [false, true] {
                let seed = 10 * case + with_bias as u64;
                let x = randn(&dims, seed, 1.0);
                let w = randn(&[out, dims[dims.len() - 1]], seed + 100, 0.3);
                let b = randn(&[out], seed + 200, 0.5);
                let r = randn(&[&dims[..dims.len() - 1], &[out]].concat(), seed + 300, 1.0);
                let bias = with_bias.then(|| b.as_tensor());
                let y = linear(&x, &w, bias).unwrap();
                let reference = linear_composed(&x, &w, bias).unwrap();
                let label = format!("{dims:?} → {out}, bias {with_bias}");
                assert!(relative_error(&y, &reference) <= 1e-5, "{label}: forward");
                let grads = |y: &Tensor| (y * r.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
                let (ours, theirs) = (grads(&y), grads(&reference));
                let mut vars = vec![("x", &x), ("w", &w)];
                if with_bias {
                    vars.push(("b", &b));
                }
                for (name, var) in vars {
                    let err = relative_error(ours.get(var).unwrap(), theirs.get(var).unwrap());
                    assert!(err <= 1e-5, "{label}: d{name} {err:e}");
                }
            }
        }
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        let x = randn(&[2, 5], 1, 1.0);
        let w = randn(&[3, 4], 2, 1.0);
        assert!(linear(&x, &w, None).unwrap_err().to_string().contains("(…, 4)"));
        let w = randn(&[3, 5], 2, 1.0);
        let b = randn(&[4], 3, 1.0);
        assert!(linear(&x, &w, Some(&b)).unwrap_err().to_string().contains("(3)"));
    }
}
