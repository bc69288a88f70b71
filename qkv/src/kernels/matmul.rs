//! Matrix products on slices: small single-threaded ones for kernels that parallelise over something else
//! (attention parallelises over batch × heads), and whole-layer ones on rayon's pool. A safe face on gemm's
//! strided entry point.

/// A matrix inside a slice: element (i, j) is `data[i·row_stride + j·col_stride]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> Mat<'a> {
    /// Row-major (rows, cols) starting at `data[0]`.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self { data, rows, cols, row_stride: cols, col_stride: 1 }
    }

    /// (rows, cols) starting at `data[0]` with rows `row_stride` apart (a head's block inside a wider matrix).
    pub fn strided(data: &'a [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        Self { data, rows, cols, row_stride, col_stride: 1 }
    }

    /// The transpose, as a view.
    pub fn t(self) -> Self {
        Self { rows: self.cols, cols: self.rows, row_stride: self.col_stride, col_stride: self.row_stride, ..self }
    }

    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride < self.data.len()
    }
}

/// dst (a.rows × b.cols, row-major) = a · b, or dst += a · b with `accumulate`.
///
/// # Panics
/// If the shapes disagree or a view reaches past its slice — callers build views from checked dimensions, so
/// this is a bug check, not input validation.
pub(crate) fn matmul(dst: &mut [f32], a: Mat, b: Mat, accumulate: bool) {
    assert!(dst.len() >= a.rows * b.cols, "matmul: destination too short");
    // SAFETY: dst holds a.rows rows of b.cols, row-major, and is borrowed exclusively.
    unsafe { gemm_into(dst.as_mut_ptr(), b.cols, a, b, accumulate, gemm::Parallelism::None) }
}

/// dst = a · b, or dst += a · b with `accumulate`, for a destination whose rows are `dst_row_stride` apart —
/// a block inside a wider matrix that other threads write other blocks of.
///
/// # Safety
/// `dst` must be valid for reads and writes at i·dst_row_stride + j for i < a.rows, j < b.cols, and no other
/// thread may touch those elements during the call.
///
/// # Panics
/// As [`matmul`].
pub(crate) unsafe fn matmul_into(dst: *mut f32, dst_row_stride: usize, a: Mat, b: Mat, accumulate: bool) {
    gemm_into(dst, dst_row_stride, a, b, accumulate, gemm::Parallelism::None)
}

/// A new row-major matrix a · b of a.rows × b.cols, on rayon's pool.
///
/// # Panics
/// As [`matmul`].
pub(crate) fn product(a: Mat, b: Mat) -> Vec<f32> {
    let len = a.rows * b.cols;
    let mut dst = Vec::with_capacity(len);
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: dst has capacity for a.rows rows of b.cols, row-major. Without `accumulate`, `gemm_into` writes
    // every element and reads none, so the length can be set afterwards.
    unsafe {
        gemm_into(dst.as_mut_ptr(), b.cols, a, b, false, parallelism);
        dst.set_len(len);
    }
    dst
}

/// The one call into gemm behind [`matmul`], [`matmul_into`] and [`product`].
///
/// # Safety
/// As [`matmul_into`].
unsafe fn gemm_into(
    dst: *mut f32,
    dst_row_stride: usize,
    a: Mat,
    b: Mat,
    accumulate: bool,
    parallelism: gemm::Parallelism,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert!(b.rows == k && a.fits() && b.fits(), "matmul: inconsistent views");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                std::ptr::write_bytes(dst.add(i * dst_row_stride), 0, n);
            }
        }
        return;
    }
    // SAFETY: every index gemm reads is (i·rs + j·cs) for i < rows, j < cols of a view checked by `fits`; the
    // destination is the caller's promise; f32 is one of gemm's supported types.
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_row_stride as isize,
        accumulate,
        a.data.as_ptr(),
        a.col_stride as isize,
        a.row_stride as isize,
        b.data.as_ptr(),
        b.col_stride as isize,
        b.row_stride as isize,
        1.0,
        1.0,
        false,
        false,
        false,
        parallelism,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_with_transposed_views_and_accumulation() {
        let a = [1f32, 2.0, 3.0, 4.0, 5.0, 6.0]; // 2×3
        let b = [1f32, 0.0, 0.0, 1.0, 1.0, 1.0]; // 3×2
        let mut c = [0f32; 4];
        matmul(&mut c, Mat::new(&a, 2, 3), Mat::new(&b, 3, 2), false);
        assert_eq!(c, [4.0, 5.0, 10.0, 11.0]);
        matmul(&mut c, Mat::new(&a, 2, 3), Mat::new(&b, 3, 2), true);
        assert_eq!(c, [8.0, 10.0, 20.0, 22.0]);
        let mut g = [0f32; 4]; // a · aᵀ
        matmul(&mut g, Mat::new(&a, 2, 3), Mat::new(&a, 2, 3).t(), false);
        assert_eq!(g, [14.0, 32.0, 32.0, 77.0]);
        assert_eq!(product(Mat::new(&a, 2, 3), Mat::new(&b, 3, 2)), [4.0, 5.0, 10.0, 11.0]);
    }

    /// Small integers as f32: their products and sums are exact, so any order of summation gives the same bits.
    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len as u32).map(|i| ((i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 28) as f32) - 8.0).collect()
    }

    fn naive(a: Mat, b: Mat) -> Vec<f32> {
        let at = |m: Mat, i: usize, j: usize| m.data[i * m.row_stride + j * m.col_stride];
        let mut c = Vec::with_capacity(a.rows * b.cols);
        for i in 0..a.rows {
            c.extend((0..b.cols).map(|j| (0..a.cols).map(|p| at(a, i, p) * at(b, p, j)).sum::<f32>()));
        }
        c
    }

    /// Products large enough for gemm to share between two threads, with odd edges and transposed operands:
    /// exact to the bit (tolerance 0; the operands make every sum exact).
    #[test]
    fn threaded_products_match_the_naive_product() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        for (m, k, n) in [(130, 100, 90), (20, 300, 501), (257, 64, 300)] {
            let (a_data, b_data) = (values(m * k, 1), values(k * n, 2));
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                let a = if ta { Mat::new(&a_data, k, m).t() } else { Mat::new(&a_data, m, k) };
                let b = if tb { Mat::new(&b_data, n, k).t() } else { Mat::new(&b_data, k, n) };
                let got = pool.install(|| product(a, b));
                assert_eq!(got, naive(a, b), "{m}×{k}×{n}, transposed {ta}/{tb}");
            }
        }
    }
}
