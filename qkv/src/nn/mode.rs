//! Training or evaluation, passed explicitly to every forward pass.

use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

/// The random generator behind dropout. Seeded, so a training run can be repeated exactly; its state
/// serialises (serde), so a resumed run can continue the same stream.
pub type Rng = Xoshiro256PlusPlus;

/// Whether a forward pass trains (dropout active, drawing from the generator it owns) or evaluates
/// (dropout is the identity, results are deterministic).
#[derive(Debug, Clone)]
pub enum Mode {
    Eval,
    Train(Rng),
}

impl Mode {
    /// Training mode with a dropout generator seeded from `seed`.
    pub fn train(seed: u64) -> Self {
        Mode::Train(Rng::seed_from_u64(seed))
    }

    pub fn is_train(&self) -> bool {
        matches!(self, Mode::Train(_))
    }
}
