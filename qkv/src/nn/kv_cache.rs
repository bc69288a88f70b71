//! Keys and values kept between decoding steps, so that generating token t attends over the projections of
//! tokens 0..t computed once each instead of recomputing the whole prefix (incremental decoding).

use candle_core::{DType, Tensor};

use crate::{Error, Result};

/// The growing key/value cache of one self-attention block: (B, H, L, Dh) each, held in buffers with spare
/// capacity along L. A step writes its new rows in place and returns views of the first L rows, so the cache is
/// never copied as a whole except when the capacity doubles (amortised O(1) per token) or beams are reordered.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    /// (B, H, capacity, Dh) each.
    buffers: Option<(Tensor, Tensor)>,
    len: usize,
}

/// Rows the buffers start with when the first step is shorter: enough for a typical sentence.
const INITIAL_CAPACITY: usize = 64;

impl KvCache {
    /// An empty cache; buffers are allocated at the first step.
    pub fn new() -> Self {
        Self::default()
    }

    /// Positions cached so far: the position of the next token.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing has been cached yet (before the first step).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends this step's keys and values (B, H, t, Dh) and returns all of them so far, (B, H, L + t, Dh) each,
    /// as views into the buffers (contiguous within each head).
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = k.dim(2)?;
        self.reserve(k, v, self.len + t)?;
        let (keys, values) = self.buffers.as_ref().ok_or_else(|| Error::config("kv cache", "empty", "buffers"))?;
        keys.slice_set(&k.contiguous()?, 2, self.len)?;
        values.slice_set(&v.contiguous()?, 2, self.len)?;
        self.len += t;
        Ok((keys.narrow(2, 0, self.len)?, values.narrow(2, 0, self.len)?))
    }

    /// Keeps, for each row of the batch, the cache of row `sources[i]` (beam search: each surviving hypothesis
    /// continues the one it extends). `sources` is a u32 tensor (B').
    pub fn reorder(&mut self, sources: &Tensor) -> Result<()> {
        if let Some((keys, values)) = &self.buffers {
            self.buffers = Some((keys.index_select(sources, 0)?, values.index_select(sources, 0)?));
        }
        Ok(())
    }

    /// The rows of several caches as one batch, each aligned to the right (continuous batching: a sequence that
    /// joins a running batch is left-padded to its width, and the batch is padded when the newcomer is longer).
    /// Padded positions hold zeros; the caller masks them out of attention.
    pub fn stack(parts: &[&KvCache]) -> Result<Self> {
        let len = parts.iter().map(|c| c.len).max().unwrap_or(0);
        let mut keys = Vec::new();
        let mut values = Vec::new();
        for part in parts {
            let Some((k, v)) = &part.buffers else { continue };
            let pad = len - part.len;
            keys.push(Self::pad_front(&k.narrow(2, 0, part.len)?, pad)?);
            values.push(Self::pad_front(&v.narrow(2, 0, part.len)?, pad)?);
        }
        if keys.is_empty() {
            return Ok(Self::new());
        }
        let (keys, values) = (Tensor::cat(&keys, 0)?, Tensor::cat(&values, 0)?);
        let mut stacked = Self { buffers: None, len: 0 };
        stacked.reserve(&keys, &values, len)?;
        stacked.append(&keys, &values)?;
        Ok(stacked)
    }

    /// Forgets the first `n` positions of every row (columns that have become padding in all of them).
    pub fn drop_front(&mut self, n: usize) -> Result<()> {
        let n = n.min(self.len);
        if n == 0 {
            return Ok(());
        }
        let Some((k, v)) = self.buffers.take() else { return Ok(()) };
        let kept = self.len - n;
        let (k, v) = (k.narrow(2, n, kept)?.contiguous()?, v.narrow(2, n, kept)?.contiguous()?);
        self.len = 0;
        self.reserve(&k, &v, kept)?;
        self.append(&k, &v)?;
        Ok(())
    }

    /// `x` (B, H, L, Dh) with `pad` zero positions in front.
    fn pad_front(x: &Tensor, pad: usize) -> Result<Tensor> {
        if pad == 0 {
            return Ok(x.contiguous()?);
        }
        let (b, h, _, dh) = x.dims4()?;
        let zeros = Tensor::zeros((b, h, pad, dh), x.dtype(), x.device())?;
        Ok(Tensor::cat(&[&zeros, x], 2)?)
    }

    /// Makes room for `needed` rows, doubling the capacity so growth costs O(1) per token over a sequence.
    fn reserve(&mut self, k: &Tensor, v: &Tensor, needed: usize) -> Result<()> {
        let (b, h, _, dh) = k.dims4()?;
        if v.dims() != k.dims() || k.dtype() != DType::F32 {
            return Err(Error::shape("cached values", format!("{:?} like the keys, f32", k.dims()), v.dims()));
        }
        let capacity = self.buffers.as_ref().map_or(0, |(keys, _)| keys.dim(2).unwrap_or(0));
        if let Some((keys, _)) = &self.buffers {
            let (cb, ch, _, cdh) = keys.dims4()?;
            if (cb, ch, cdh) != (b, h, dh) {
                return Err(Error::shape("new keys", format!("({cb}, {ch}, t, {cdh}) like the cache"), k.dims()));
            }
        }
        if needed <= capacity {
            return Ok(());
        }
        let capacity = needed.max(2 * capacity).max(INITIAL_CAPACITY);
        let grow = |old: Option<&Tensor>| -> Result<Tensor> {
            let buffer = Tensor::zeros((b, h, capacity, dh), DType::F32, k.device())?;
            if let Some(old) = old {
                // Only the first `len` rows hold data; the old buffer is contiguous as a whole.
                buffer.slice_set(&old.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
            }
            Ok(buffer)
        };
        let (old_k, old_v) = match &self.buffers {
            Some((keys, values)) => (Some(keys), Some(values)),
            None => (None, None),
        };
        self.buffers = Some((grow(old_k)?, grow(old_v)?));
        Ok(())
    }
}

/// What one decoder layer keeps between steps: its self-attention's growing keys and values, and the
/// cross-attention's keys and values of the encoder memory, projected once at the first step.
#[derive(Debug, Clone, Default)]
pub struct DecoderLayerCache {
    /// The self-attention's keys and values of the positions decoded so far.
    pub self_attn: KvCache,
    /// The cross-attention's keys and values of the encoder memory, (B, H, S, Dh) each; `None` until the first step.
    pub cross_attn: Option<(Tensor, Tensor)>,
}

/// The cache of a whole decoder stack, owned by the caller of incremental decoding: one per batch of sequences
/// being decoded, started empty.
#[derive(Debug, Clone)]
pub struct DecoderCache {
    layers: Vec<DecoderLayerCache>,
}

impl DecoderCache {
    /// An empty cache for a stack of `num_layers` decoder layers.
    pub fn new(num_layers: usize) -> Self {
        Self { layers: vec![DecoderLayerCache::default(); num_layers] }
    }

    /// Target positions decoded so far: the position of the next token.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |layer| layer.self_attn.len())
    }

    /// Whether no target position has been decoded yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Row i continues row `sources[i]` (u32, (B')). The memory's keys and values are reordered too, since
    /// they follow the rows.
    pub fn reorder(&mut self, sources: &Tensor) -> Result<()> {
        for layer in &mut self.layers {
            layer.self_attn.reorder(sources)?;
            if let Some((k, v)) = &layer.cross_attn {
                layer.cross_attn = Some((k.index_select(sources, 0)?, v.index_select(sources, 0)?));
            }
        }
        Ok(())
    }

    pub(crate) fn layers_len(&self) -> usize {
        self.layers.len()
    }

    pub(crate) fn layers_mut(&mut self) -> &mut [DecoderLayerCache] {
        &mut self.layers
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, IndexOp};

    use super::*;

    #[test]
    fn append_returns_everything_so_far_across_growth() -> Result<()> {
        let dev = Device::Cpu;
        let all = Tensor::arange(0f32, (2 * 3 * 150 * 4) as f32, &dev)?.reshape((2, 3, 150, 4))?;
        let mut cache = KvCache::new();
        let mut pos = 0;
        for step in [1, 1, 5, 70, 1, 72] {
            let chunk = all.narrow(2, pos, step)?;
            let (k, v) = cache.append(&chunk, &(&chunk * 2.0)?)?;
            pos += step;
            assert_eq!(cache.len(), pos);
            let expected = all.narrow(2, 0, pos)?;
            assert_eq!(k.flatten_all()?.to_vec1::<f32>()?, expected.flatten_all()?.to_vec1::<f32>()?);
            assert_eq!(v.flatten_all()?.to_vec1::<f32>()?, (expected * 2.0)?.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(())
    }

    #[test]
    fn reorder_follows_the_chosen_rows() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::arange(0f32, 12.0, &dev)?.reshape((3, 1, 2, 2))?;
        let mut cache = KvCache::new();
        cache.append(&x, &x)?;
        cache.reorder(&Tensor::new(&[2u32, 2, 0], &dev)?)?;
        let (k, _) = cache.append(&x.narrow(2, 0, 1)?, &x.narrow(2, 0, 1)?)?;
        assert_eq!(k.i((0, 0, 0))?.to_vec1::<f32>()?, vec![8.0, 9.0]);
        assert_eq!(k.i((2, 0, 1))?.to_vec1::<f32>()?, vec![2.0, 3.0]);
        assert_eq!(k.i((2, 0, 2))?.to_vec1::<f32>()?, vec![8.0, 9.0]); // this step's own row
        Ok(())
    }

    #[test]
    fn stacked_rows_are_right_aligned_and_drop_front_forgets_columns() -> Result<()> {
        let dev = Device::Cpu;
        let long = Tensor::arange(0f32, 12.0, &dev)?.reshape((1, 1, 6, 2))?;
        let short = Tensor::arange(100f32, 104.0, &dev)?.reshape((1, 1, 2, 2))?;
        let (mut a, mut b) = (KvCache::new(), KvCache::new());
        a.append(&long, &long)?;
        b.append(&short, &(&short * -1.0)?)?;
        let mut both = KvCache::stack(&[&b, &a])?;
        assert_eq!(both.len(), 6);
        let step = Tensor::full(7f32, (2, 1, 1, 2), &dev)?;
        let (k, v) = both.append(&step, &step)?;
        assert_eq!(k.i((0, 0))?.to_vec2::<f32>()?[..4], [[0.0; 2], [0.0; 2], [0.0; 2], [0.0; 2]]);
        assert_eq!(k.i((0, 0, 4))?.to_vec1::<f32>()?, vec![100.0, 101.0]);
        assert_eq!(v.i((0, 0, 5))?.to_vec1::<f32>()?, vec![-102.0, -103.0]);
        assert_eq!(k.i((1, 0))?.to_vec2::<f32>()?[..6], long.i((0, 0))?.to_vec2::<f32>()?[..]);
        assert_eq!(k.i((1, 0, 6))?.to_vec1::<f32>()?, vec![7.0, 7.0]);
        both.reorder(&Tensor::new(&[0u32], &dev)?)?;
        both.drop_front(4)?;
        assert_eq!(both.len(), 3);
        let (k, _) = both.append(&step.narrow(0, 0, 1)?, &step.narrow(0, 0, 1)?)?;
        let expected = vec![vec![100.0, 101.0], vec![102.0, 103.0], vec![7.0, 7.0], vec![7.0, 7.0]];
        assert_eq!(k.i((0, 0))?.to_vec2::<f32>()?, expected);
        Ok(())
    }

    #[test]
    fn mismatched_steps_are_errors() -> Result<()> {
        let dev = Device::Cpu;
        let mut cache = KvCache::new();
        cache
            .append(&Tensor::zeros((1, 2, 1, 4), DType::F32, &dev)?, &Tensor::zeros((1, 2, 1, 4), DType::F32, &dev)?)?;
        let wrong = Tensor::zeros((1, 3, 1, 4), DType::F32, &dev)?;
        assert!(cache.append(&wrong, &wrong).is_err());
        Ok(())
    }
}
