//! Training or evaluation, passed explicitly to every forward pass.

use rand::SeedableRng;

pub use crate::rng::Rng;

/// Whether a forward pass trains (dropout active, drawing from the generator it owns) or evaluates
/// (dropout is the identity, results are deterministic).
#[derive(Debug, Clone)]
pub enum Mode {
    /// Evaluation: dropout is the identity and the pass is deterministic.
    Eval,
    /// Training: dropout draws its masks from this generator.
    Train(Rng),
}

impl Mode {
    /// Training mode with a dropout generator seeded from `seed`.
    pub fn train(seed: u64) -> Self {
        Mode::Train(Rng::seed_from_u64(seed))
    }

    /// Whether this is a training pass.
    pub fn is_train(&self) -> bool {
        matches!(self, Mode::Train(_))
    }
}
