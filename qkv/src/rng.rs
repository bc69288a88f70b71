//! The seeded random generator every random choice in qkv draws from: initialisation, dropout masks, batch
//! orders, MLM masking, sampling. It sits at the bottom of the crate (beside [`crate::error`]) because the
//! kernels draw from it too, and its state serialises (serde) so that a resumed run continues the same stream.

use rand::SeedableRng;

/// xoshiro256++: fast, small state, and its state round-trips through serde.
pub type Rng = rand_xoshiro::Xoshiro256PlusPlus;

/// A generator of its own for each of several consumers of one seed: the same `seed` and `salt` always give
/// the same stream, and different salts give unrelated ones.
pub fn seeded(seed: u64, salt: u64) -> Rng {
    Rng::seed_from_u64(seed ^ salt)
}
