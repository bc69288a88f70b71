//! Dropout's mask drawn and applied in one pass, in parallel blocks, and kept as bytes for the backward pass.
//!
//! The composed form draws one f32 per element from the model's generator on one thread, builds an f32 mask
//! tensor and multiplies by it: on a Multi30k step (20 M elements dropped out) that was 8% of the time. Here
//! each block of the mask comes from its own generator, seeded from one draw of the model's stream and the
//! block's index, so the mask depends on the seed alone, not on the number of threads; each 64-bit draw
//! decides two elements.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rand::{RngCore as _, SeedableRng as _};
use rayon::prelude::*;

use super::{as_f32, storage_f32, Saved, PARALLEL_MIN_ELEMENTS};
use crate::Result;

const NAME: &str = "qkv-dropout";

/// Elements per generator (even, so that each draw's two halves stay in one block).
const BLOCK: usize = 4096;

/// x with each element multiplied by 0 with probability `p` and by `keep` otherwise (1/(1 − p) for inverted
/// dropout). x is multiplied either way, so a NaN in x stays NaN. `seed` fixes the mask.
pub fn fused(x: &Tensor, p: f32, keep: f32, seed: u64) -> Result<Tensor> {
    // Dropped where the low or high 32 bits of a draw fall below p·2³².
    let threshold = ((p as f64) * 4_294_967_296.0) as u64;
    Ok(x.contiguous()?.apply_op1(DropoutOp { threshold, keep, seed, mask: Saved::empty() })?)
}

struct DropoutOp {
    threshold: u64,
    keep: f32,
    seed: u64,
    /// 1 where the element was kept, from the forward pass.
    mask: Saved<Vec<u8>>,
}

impl DropoutOp {
    /// Block `index` of the output and its mask. The draws come first, as 32-bit halves (element 2i takes the
    /// low half of draw i, 2i + 1 the high half), so that the pass that applies them has no generator in it and
    /// vectorises.
    fn block(&self, index: usize, x: &[f32], y: &mut [f32], mask: &mut [u8]) {
        let mut rng = crate::rng::Rng::seed_from_u64(self.seed.wrapping_add(index as u64));
        let mut halves = [0u32; BLOCK];
        for pair in halves[..x.len().next_multiple_of(2)].chunks_exact_mut(2) {
            let draw = rng.next_u64();
            pair[0] = draw as u32;
            pair[1] = (draw >> 32) as u32;
        }
        let (threshold, keep) = (self.threshold, self.keep);
        for (((x, y), m), &half) in x.iter().zip(y.iter_mut()).zip(mask.iter_mut()).zip(&halves) {
            let kept = half as u64 >= threshold;
            *m = kept as u8;
            *y = x * if kept { keep } else { 0.0 };
        }
    }
}

impl CustomOp1 for DropoutOp {
    fn name(&self) -> &'static str {
        NAME
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = as_f32(storage, layout, NAME)?;
        let (mut y, mut mask) = (vec![0f32; x.len()], vec![0u8; x.len()]);
        if x.len() >= PARALLEL_MIN_ELEMENTS {
            let outputs = y.par_chunks_mut(BLOCK).zip(mask.par_chunks_mut(BLOCK));
            x.par_chunks(BLOCK).zip(outputs).enumerate().for_each(|(i, (x, (y, m)))| self.block(i, x, y, m));
        } else {
            let outputs = y.chunks_mut(BLOCK).zip(mask.chunks_mut(BLOCK));
            x.chunks(BLOCK).zip(outputs).enumerate().for_each(|(i, (x, (y, m)))| self.block(i, x, y, m));
        }
        self.mask.put(NAME, mask)?;
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    /// ∂x = g · keep where kept, 0 where dropped.
    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        let (gs, gl) = grad.storage_and_layout();
        let g = storage_f32(&gs, gl, NAME)?;
        let factor = [0.0, self.keep];
        let dx = self.mask.with(NAME, |mask| {
            let mut dx = vec![0f32; g.len()];
            let row = |((d, g), m): ((&mut [f32], &[f32]), &[u8])| {
                d.iter_mut().zip(g).zip(m).for_each(|((d, &g), &m)| *d = g * factor[m as usize]);
            };
            let chunks = dx.par_chunks_mut(BLOCK).zip(g.par_chunks(BLOCK)).zip(mask.par_chunks(BLOCK));
            chunks.for_each(row);
            Ok(dx)
        })?;
        Ok(Some(Tensor::from_vec(dx, gl.shape(), grad.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::twin::{randn, relative_error};

    /// Every output is x·0 or x·keep; the dropped fraction is p within 4 standard deviations; the mask is the
    /// same on 1 and 2 threads; and the gradient equals the composed twin's, x · mask with the mask the kernel
    /// drew (tolerance 0: the same products).
    #[test]
    fn kernel_matches_composed_forward_and_backward() {
        let (n, p) = (100_003, 0.3f32);
        let keep = 1.0 / (1.0 - p);
        let x = randn(&[n], 4, 1.0);
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let two = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let y1 = one.install(|| fused(&x, p, keep, 17)).unwrap();
        let y2 = two.install(|| fused(&x, p, keep, 17)).unwrap();
        let (xs, ys) = (x.to_vec1::<f32>().unwrap(), y2.to_vec1::<f32>().unwrap());
        assert_eq!(y1.to_vec1::<f32>().unwrap(), ys, "the mask depends on the thread count");
        let mask: Vec<f32> = ys.iter().map(|&y| if y == 0.0 { 0.0 } else { keep }).collect();
        assert!(xs.iter().zip(&ys).zip(&mask).all(|((&x, &y), &m)| y == x * m), "outputs are not x·0 or x·keep");
        let dropped = mask.iter().filter(|&&m| m == 0.0).count() as f64 / n as f64;
        let sigma = (p as f64 * (1.0 - p as f64) / n as f64).sqrt();
        assert!((dropped - p as f64).abs() < 4.0 * sigma, "dropped {dropped}, p {p}");
        let weights = randn(&[n], 5, 1.0);
        let mask = Tensor::from_vec(mask, n, x.device()).unwrap();
        let grad = |y: Tensor| (y * weights.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        let (a, b) = (grad(y2), grad((x.as_tensor() * &mask).unwrap()));
        assert_eq!(relative_error(a.get(&x).unwrap(), b.get(&x).unwrap()), 0.0);
    }

    /// The mask is the blocks' streams read in order: element 2i of a block is kept when the low 32 bits of
    /// its generator's draw i are at least p·2³², element 2i + 1 by the high 32 bits (an odd-length last block
    /// included). Written here draw by draw, as the kernel was first written; the outputs must be equal.
    #[test]
    fn mask_follows_each_blocks_stream() {
        let (n, p, seed) = (2 * BLOCK + 7, 0.4f32, 99u64);
        let threshold = ((p as f64) * 4_294_967_296.0) as u64;
        let ones = Tensor::ones(n, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        let y = fused(&ones, p, 2.0, seed).unwrap().to_vec1::<f32>().unwrap();
        let mut reference = Vec::with_capacity(n);
        for (b, start) in (0..n).step_by(BLOCK).enumerate() {
            let mut rng = crate::rng::Rng::seed_from_u64(seed.wrapping_add(b as u64));
            let mut draw = 0u64;
            for i in 0..BLOCK.min(n - start) {
                if i % 2 == 0 {
                    draw = rng.next_u64();
                }
                let kept = ((draw >> (32 * (i % 2))) & 0xffff_ffff) >= threshold;
                reference.push(if kept { 2.0 } else { 0.0 });
            }
        }
        assert_eq!(y, reference);
    }
}
