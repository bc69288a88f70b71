//! What the panel-stored matrix products ([`super::dynamic_int8`]) share: weights
//! stored in panels of 16 output channels (one vector register of results), a micro-kernel that fills two
//! panels for [`MR`] rows of activations at a time, and the split of a product into tasks on rayon's pool.

use std::ops::Range;

use rayon::prelude::*;

/// Output channels per panel: one vector of 16 f32 or i32 sums.
pub(super) const PANEL: usize = 16;
/// Panels a micro-kernel call fills.
pub(super) const PANELS: usize = 2;
/// Output channels of a micro-kernel call.
pub(super) const PAIR: usize = PANEL * PANELS;
/// Activation rows a micro-kernel call takes: 12 rows × 2 panels = 24 accumulators of the 32 vector registers.
pub(super) const MR: usize = 12;
/// Rows a task takes when tasks split the rows: 4 micro-kernel calls reuse each pair of panels from L1.
pub(super) const ROW_BLOCK: usize = 4 * MR;

/// An element-wise function applied in place to rows of a product's output (GELU after fc1).
pub type RowActivation = fn(&mut [f32]);

/// y (n, m) from tasks on rayon's pool, each `block(rows, pairs, out, width)` writing its rows × the real
/// channels of its pairs of panels into `out` (rows `width` apart), then `after` over each of those rows while
/// they are in cache. Many rows: a task takes a block of rows
/// across every channel, written in place. Few rows (one sentence): tasks split the channels too, or one core
/// would do all the work.
pub(super) fn by_tasks(
    n: usize,
    m: usize,
    after: Option<RowActivation>,
    block: impl Fn(Range<usize>, Range<usize>, &mut [f32], usize) + Sync,
) -> Vec<f32> {
    let block = |rows: Range<usize>, pairs: Range<usize>, out: &mut [f32], width: usize| {
        block(rows, pairs, out, width);
        if let Some(after) = after {
            out.chunks_mut(width.max(1)).for_each(after);
        }
    };
    let mut y = vec![0f32; n * m];
    if n == 0 || m == 0 {
        return y;
    }
    let pairs = m.div_ceil(PAIR);
    let threads = rayon::current_num_threads();
    let row_blocks = n.div_ceil(ROW_BLOCK);
    let rows_of = |b: usize| b * ROW_BLOCK..(b * ROW_BLOCK + ROW_BLOCK).min(n);
    let columns = |p: &Range<usize>| (p.start * PAIR).min(m)..(p.end * PAIR).min(m);
    if row_blocks >= 2 * threads {
        y.par_chunks_mut(ROW_BLOCK * m).enumerate().for_each(|(b, out)| block(rows_of(b), 0..pairs, out, m));
        return y;
    }
    let parts = (4 * threads).div_ceil(row_blocks).clamp(1, pairs);
    let per_part = pairs.div_ceil(parts);
    let tasks: Vec<(usize, Range<usize>)> = (0..row_blocks)
        .flat_map(|b| (0..pairs).step_by(per_part).map(move |p| (b, p..(p + per_part).min(pairs))))
        .collect();
    let outputs: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|(b, pairs)| {
            let (rows, cols) = (rows_of(*b), columns(pairs));
            let mut out = vec![0f32; rows.len() * cols.len()];
            block(rows, pairs.clone(), &mut out, cols.len());
            out
        })
        .collect();
    for ((b, pairs), part) in tasks.iter().zip(&outputs) {
        let cols = columns(pairs);
        for (i, src) in part.chunks(cols.len()).enumerate() {
            y[(b * ROW_BLOCK + i) * m..][cols.clone()].copy_from_slice(src);
        }
    }
    y
}
