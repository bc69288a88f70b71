//! The Gumbel-max trick (Gumbel, 1954; Maddison, Tarlow and Minka, 2014, "A* Sampling"): with Gᵥ independent
//! standard Gumbel draws, argmaxᵥ (xᵥ / τ + Gᵥ) is distributed as softmax(x / τ). Zhang et al. (ACL 2019,
//! "Bridging the Gap between Training and Inference for Neural Machine Translation") perturb the decoder's
//! scores this way to choose oracle words, and their sentence oracle's beam search too.
//!
//! τ divides the scores, not the noise's sum with them: argmax((x + G) / τ) would not depend on τ at all.

use rand::RngCore;

use crate::rng::Rng;

/// The noise a search adds: independent Gumbel draws from `rng`, at temperature `tau`.
pub struct GumbelNoise<'a> {
    /// The generator the Gumbel draws come from.
    pub rng: &'a mut Rng,
    /// τ > 0: below 1 sharpens the model's distribution, above 1 flattens it.
    pub tau: f64,
}

impl GumbelNoise<'_> {
    /// log softmax(x / τ) + G for one row of logits: scores whose argmax is a draw from softmax(x / τ), one
    /// draw per token in token order.
    pub fn perturbed_log_probs(&mut self, logits: &[f32]) -> Vec<f64> {
        let tempered: Vec<f64> = logits.iter().map(|&x| x as f64 / self.tau).collect();
        let max = tempered.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let log_sum = tempered.iter().map(|&x| (x - max).exp()).sum::<f64>().ln() + max;
        tempered.into_iter().map(|x| x - log_sum + gumbel(self.rng)).collect()
    }

    /// A token drawn from softmax(logits / τ) by the Gumbel-max trick (one draw per token); the first on ties.
    pub fn argmax(&mut self, logits: &[f32]) -> usize {
        let mut best = (0, f64::NEG_INFINITY);
        for (token, &x) in logits.iter().enumerate() {
            let score = x as f64 / self.tau + gumbel(self.rng);
            if score > best.1 {
                best = (token, score);
            }
        }
        best.0
    }
}

/// A standard Gumbel draw, −ln(−ln u) with u uniform in the open interval (0, 1), so that it is always finite.
pub fn gumbel(rng: &mut Rng) -> f64 {
    // The 53 high bits, offset by half a unit: never 0, never 1.
    let u = ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -(-u.ln()).ln()
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn softmax(logits: &[f32], tau: f64) -> Vec<f64> {
        let scaled: Vec<f64> = logits.iter().map(|&x| x as f64 / tau).collect();
        let max = scaled.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = scaled.iter().map(|x| (x - max).exp()).sum();
        scaled.iter().map(|x| (x - max).exp() / sum).collect()
    }

    /// Over 20 000 seeded draws per temperature, the frequency of each token is within 0.012 of its softmax
    /// probability (the standard error is at most √(0.25 / 20 000) ≈ 0.0035, so that is over 3σ), and the
    /// temperature really changes the distribution. The perturbed scores of a beam follow it too.
    #[test]
    fn gumbel_argmax_frequencies_follow_the_tempered_softmax() {
        let logits = [2.0f32, 1.0, 0.5, -1.0, 0.0];
        let draws = 20_000;
        let mut rng = Rng::seed_from_u64(7);
        for tau in [0.5, 1.0, 2.0] {
            let want = softmax(&logits, tau);
            let mut by_argmax = [0usize; 5];
            let mut by_scores = [0usize; 5];
            let mut noise = GumbelNoise { rng: &mut rng, tau };
            for _ in 0..draws {
                by_argmax[noise.argmax(&logits)] += 1;
                let scores = noise.perturbed_log_probs(&logits);
                by_scores[crate::decode::incremental::argmax(&scores)] += 1;
            }
            for counts in [by_argmax, by_scores] {
                for (token, (&count, &p)) in counts.iter().zip(&want).enumerate() {
                    let frequency = count as f64 / draws as f64;
                    assert!((frequency - p).abs() < 0.012, "τ = {tau}, token {token}: {frequency} vs {p}");
                }
            }
        }
        let (cold, warm) = (softmax(&logits, 0.5), softmax(&logits, 2.0));
        assert!(cold[0] - warm[0] > 0.3, "the temperatures tested must differ: {} vs {}", cold[0], warm[0]);
    }

    #[test]
    fn gumbel_draws_are_finite_and_centred_on_the_euler_constant() {
        let mut rng = Rng::seed_from_u64(1);
        let draws: Vec<f64> = (0..50_000).map(|_| gumbel(&mut rng)).collect();
        assert!(draws.iter().all(|g| g.is_finite()));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        // Mean γ ≈ 0.5772, standard deviation π/√6 ≈ 1.28: the mean of 50 000 is within 0.02 (> 3σ).
        assert!((mean - 0.5772).abs() < 0.02, "{mean}");
    }
}
