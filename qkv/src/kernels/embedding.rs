//! Embedding lookup: rows of a table gathered by id, with the table's gradient as a scatter-add of the
//! output gradient's rows. candle's `index_select` backward allocates a table-sized zero tensor for
//! `index_add`, then adds that into another. The kernel fills one zero table and adds the rows in place.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{as_f32, fused, storage_f32, PARALLEL_MIN_ELEMENTS};
use crate::Result;

/// Rows `ids` (any shape, integer dtype, each < V) of `table` (V, C): (…, C). Ids must have been checked
/// against V by the caller (an id past the table is an error here, not a panic).
pub fn lookup(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    if !fused(table) {
        return lookup_composed(table, ids);
    }
    Ok(table.contiguous()?.apply_op2(&ids.contiguous()?, Lookup)?)
}

/// candle's own ops, the reference for the kernel.
pub fn lookup_composed(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let mut dims = ids.dims().to_vec();
    dims.push(table.dim(1)?);
    Ok(table.index_select(&ids.flatten_all()?, 0)?.reshape(dims)?)
}

struct Lookup;

const NAME: &str = "qkv-embedding";

/// The ids as indices, each checked against the table's `rows`.
fn indices(storage: &CpuStorage, layout: &Layout, rows: usize) -> candle_core::Result<Vec<usize>> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{NAME}: expected contiguous ids, found strides {:?}", layout.stride())
    };
    let ids: Vec<i64> = match storage {
        CpuStorage::U32(v) => v[start..end].iter().map(|&i| i as i64).collect(),
        CpuStorage::U8(v) => v[start..end].iter().map(|&i| i as i64).collect(),
        CpuStorage::I64(v) => v[start..end].to_vec(),
        _ => candle_core::bail!("{NAME}: ids must be u8, u32 or i64"),
    };
    ids.into_iter()
        .map(|i| match usize::try_from(i) {
            Ok(i) if i < rows => Ok(i),
            _ => candle_core::bail!("{NAME}: id {i} outside a table of {rows} rows"),
        })
        .collect()
}

impl CustomOp2 for Lookup {
    fn name(&self) -> &'static str {
        NAME
    }

    fn cpu_fwd(
        &self,
        ts: &CpuStorage,
        tl: &Layout,
        is: &CpuStorage,
        il: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let &[rows, c] = tl.dims() else { candle_core::bail!("{NAME}: table {:?}, expected (V, C)", tl.dims()) };
        let table = as_f32(ts, tl, NAME)?;
        let ids = indices(is, il, rows)?;
        let mut out = vec![0f32; ids.len() * c];
        let copy = |(row, &id): (&mut [f32], &usize)| row.copy_from_slice(&table[id * c..(id + 1) * c]);
        if out.len() >= PARALLEL_MIN_ELEMENTS {
            out.par_chunks_mut(c.max(1)).zip(ids.par_iter()).for_each(copy);
        } else {
            out.chunks_mut(c.max(1)).zip(ids.iter()).for_each(copy);
        }
        let mut dims = il.dims().to_vec();
        dims.push(c);
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }

    /// d table[id] += g[i] for every position i with id ids[i]; ids get no gradient.
    fn bwd(
        &self,
        table: &Tensor,
        ids: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (rows, c) = table.dims2()?;
        let grad = grad.contiguous()?;
        let (is, il) = ids.storage_and_layout();
        let candle_core::Storage::Cpu(is) = &*is else { candle_core::bail!("{NAME}: expected CPU ids") };
        let ids = indices(is, il, rows)?;
        let (gs, gl) = grad.storage_and_layout();
        let g = storage_f32(&gs, gl, NAME)?;
        let mut dt = vec![0f32; rows * c];
        for (gr, &id) in g.chunks(c.max(1)).zip(&ids) {
            let dst = &mut dt[id * c..(id + 1) * c];
            super::vectorized(
                #[inline(always)]
                || {
                    let gr = &gr[..dst.len()];
                    for j in 0..dst.len() {
                        dst[j] += gr[j];
                    }
                },
            )
        }
        Ok((Some(Tensor::from_vec(dt, (rows, c), table.device())?), None))
    }
}

#[cfg(test)]
mod tests {
    use super::super::twin::{randn, relative_error};
    use super::*;
    use candle_core::Device;

    /// Output and the table's gradient agree with index_select's, repeated ids included (their rows add up).
    #[test]
    fn kernel_matches_composed_forward_and_backward() {
        let table = randn(&[11, 6], 1, 1.0);
        for ids in [
            Tensor::new(&[[3u32, 3, 0, 10], [7, 3, 1, 1]], &Device::Cpu).unwrap(),
            Tensor::new(&[2i64, 9, 2], &Device::Cpu).unwrap(),
        ] {
            let y = lookup(&table, &ids).unwrap();
            let reference = lookup_composed(&table, &ids).unwrap();
            assert!(relative_error(&y, &reference) <= 1e-6, "forward {:?}", ids.dims());
            let r = randn(y.dims(), 2, 1.0);
            let grad = |y: &Tensor| {
                (y * r.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap().get(&table).unwrap().clone()
            };
            assert!(relative_error(&grad(&y), &grad(&reference)) <= 1e-6, "d table {:?}", ids.dims());
        }
    }

    #[test]
    fn an_id_past_the_table_is_an_error() {
        let table = randn(&[4, 3], 1, 1.0);
        let ids = Tensor::new(&[1u32, 4], &Device::Cpu).unwrap();
        let err = lookup(&table, &ids).unwrap_err().to_string();
        assert!(err.contains("id 4 outside a table of 4 rows"), "{err}");
    }
}
