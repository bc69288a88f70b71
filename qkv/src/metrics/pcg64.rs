//! numpy's default generator, `np.random.default_rng(seed)`: PCG64 (O'Neill, 2014, "PCG: A Family of Simple
//! Fast Space-Efficient Statistically Good Algorithms for Random Number Generation"; the XSL-RR 128/64
//! variant) seeded through numpy's `SeedSequence`, with `Generator.integers` / `Generator.choice` drawing
//! bounded integers by Lemire's method (2019, "Fast Random Integer Generation in an Interval").
//!
//! sacreBLEU's paired bootstrap resamples sentences with `default_rng(seed).choice(n, size=(samples, n))`, so a
//! test that draws the same indices gets the same p-values. This is that stream, not a general-purpose
//! generator: qkv's own random choices draw from [`crate::rng`]. Sources: numpy's
//! `random/bit_generator.pyx` (SeedSequence), `random/src/pcg64/pcg64.h` and
//! `random/src/distributions/distributions.c` (`random_bounded_uint64_fill`).

/// PCG64's 128-bit LCG multiplier.
const MULTIPLIER: u128 = (2_549_297_995_355_413_924u128 << 64) | 4_865_540_595_714_422_341;

/// numpy's PCG64 bit generator with its buffered 32-bit half.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pcg64 {
    state: u128,
    increment: u128,
    /// The high half of the last 64-bit output when a 32-bit draw used only its low half (`has_uint32`).
    spare_u32: Option<u32>,
}

impl Pcg64 {
    /// The generator of `np.random.default_rng(seed)`.
    pub fn new(seed: u64) -> Self {
        let words = seed_sequence_u64(seed);
        let initial_state = (u128::from(words[0]) << 64) | u128::from(words[1]);
        let sequence = (u128::from(words[2]) << 64) | u128::from(words[3]);
        // pcg_setseq_128_srandom_r
        let mut rng = Pcg64 { state: 0, increment: (sequence << 1) | 1, spare_u32: None };
        rng.step();
        rng.state = rng.state.wrapping_add(initial_state);
        rng.step();
        rng
    }

    fn step(&mut self) {
        self.state = self.state.wrapping_mul(MULTIPLIER).wrapping_add(self.increment);
    }

    /// The next raw output (`bit_generator.random_raw()`): XOR of the state's halves, rotated by its top 6 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.step();
        let (high, low) = ((self.state >> 64) as u64, self.state as u64);
        (high ^ low).rotate_right((high >> 58) as u32)
    }

    /// 32 bits: the low half of a fresh 64-bit output, then its high half.
    pub fn next_u32(&mut self) -> u32 {
        if let Some(half) = self.spare_u32.take() {
            return half;
        }
        let next = self.next_u64();
        self.spare_u32 = Some((next >> 32) as u32);
        next as u32
    }

    /// A uniform integer in `0..bound` as `Generator.integers(0, bound, dtype=np.int64)` draws it: nothing
    /// for a bound of 1, 32-bit draws while `bound - 1` fits in 32 bits, 64-bit draws above.
    ///
    /// Panics if `bound` is 0 (an empty range, which numpy refuses too).
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "Pcg64::below(0): empty range");
        let range = bound - 1;
        if range == 0 {
            0
        } else if range < u64::from(u32::MAX) {
            u64::from(self.lemire_u32(range as u32))
        } else if range == u64::from(u32::MAX) {
            u64::from(self.next_u32())
        } else {
            self.lemire_u64(range)
        }
    }

    /// `count` indices drawn with replacement from `0..population`, as `Generator.choice(population,
    /// size=count, replace=True)` (one `integers` call, so the draws continue one stream).
    pub fn choice(&mut self, population: usize, count: usize) -> Vec<usize> {
        (0..count).map(|_| self.below(population as u64) as usize).collect()
    }

    /// `buffered_bounded_lemire_uint32`: an integer in `0..=range`, `range` < 2^32 − 1.
    fn lemire_u32(&mut self, range: u32) -> u32 {
        let excl = range + 1;
        let mut m = u64::from(self.next_u32()) * u64::from(excl);
        if (m as u32) < excl {
            let threshold = (u32::MAX - range) % excl;
            while (m as u32) < threshold {
                m = u64::from(self.next_u32()) * u64::from(excl);
            }
        }
        (m >> 32) as u32
    }

    /// `bounded_lemire_uint64`: an integer in `0..=range`, `range` < 2^64 − 1.
    fn lemire_u64(&mut self, range: u64) -> u64 {
        let excl = range + 1;
        let mut m = u128::from(self.next_u64()) * u128::from(excl);
        if (m as u64) < excl {
            let threshold = (u64::MAX - range) % excl;
            while (m as u64) < threshold {
                m = u128::from(self.next_u64()) * u128::from(excl);
            }
        }
        (m >> 64) as u64
    }
}

const INIT_A: u32 = 0x43b0_d7e5;
const MULT_A: u32 = 0x931e_8875;
const INIT_B: u32 = 0x8b51_f9dd;
const MULT_B: u32 = 0x58f3_8ded;
const MIX_MULT_L: u32 = 0xca01_f9dd;
const MIX_MULT_R: u32 = 0x4973_f715;
const POOL_SIZE: usize = 4;

/// `SeedSequence(seed).generate_state(4, np.uint64)`: the words PCG64 is seeded from (state high, state low,
/// sequence high, sequence low).
fn seed_sequence_u64(seed: u64) -> [u64; 4] {
    // The entropy as 32-bit words, lowest first; 0 is one word.
    let entropy: Vec<u32> = if seed >> 32 == 0 { vec![seed as u32] } else { vec![seed as u32, (seed >> 32) as u32] };
    // mix_entropy: every entropy word fits the pool, so the pool is hashed, then cross-mixed.
    let mut hash_const = INIT_A;
    let mut hashmix = |value: u32| {
        let mut value = value ^ hash_const;
        hash_const = hash_const.wrapping_mul(MULT_A);
        value = value.wrapping_mul(hash_const);
        value ^ (value >> 16)
    };
    let mut pool = [0u32; POOL_SIZE];
    for (i, word) in pool.iter_mut().enumerate() {
        *word = hashmix(entropy.get(i).copied().unwrap_or(0));
    }
    let mix = |x: u32, y: u32| {
        let result = MIX_MULT_L.wrapping_mul(x).wrapping_sub(MIX_MULT_R.wrapping_mul(y));
        result ^ (result >> 16)
    };
    for src in 0..POOL_SIZE {
        for dst in 0..POOL_SIZE {
            if src != dst {
                pool[dst] = mix(pool[dst], hashmix(pool[src]));
            }
        }
    }
    // generate_state: 8 words cycling over the pool, paired little-endian into 4 u64.
    let mut hash_const = INIT_B;
    let mut words = [0u32; 2 * POOL_SIZE];
    for (i, word) in words.iter_mut().enumerate() {
        let mut value = pool[i % POOL_SIZE] ^ hash_const;
        hash_const = hash_const.wrapping_mul(MULT_B);
        value = value.wrapping_mul(hash_const);
        *word = value ^ (value >> 16);
    }
    std::array::from_fn(|i| u64::from(words[2 * i]) | (u64::from(words[2 * i + 1]) << 32))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// numpy 2.4.6: `np.random.SeedSequence(12345).generate_state(4, np.uint64)`.
    #[test]
    fn seed_sequence_matches_numpy() {
        assert_eq!(
            seed_sequence_u64(12345),
            [13091511679009522556, 13538552136045918767, 7269824232120749972, 4520223790601600371]
        );
    }

    /// numpy's own docstring example, `default_rng(12345).integers(low=0, high=10, size=3)`, and the first
    /// indices of `default_rng(12345).choice(200, size=(3, 200))`.
    #[test]
    fn bounded_draws_match_numpy() {
        let mut rng = Pcg64::new(12345);
        assert_eq!([rng.below(10), rng.below(10), rng.below(10)], [6, 2, 7]);
        assert_eq!(Pcg64::new(12345).choice(200, 10), [139, 45, 157, 63, 40, 159, 128, 135, 197, 78]);
    }

    #[test]
    fn a_population_of_one_draws_nothing() {
        let mut rng = Pcg64::new(1);
        assert_eq!(rng.choice(1, 5), [0; 5]);
        assert_eq!(rng, Pcg64::new(1));
    }

    #[test]
    fn thirty_two_bit_draws_split_one_output() {
        let mut wide = Pcg64::new(99);
        let mut narrow = Pcg64::new(99);
        let x = wide.next_u64();
        assert_eq!((narrow.next_u32(), narrow.next_u32()), (x as u32, (x >> 32) as u32));
        assert_eq!(wide.next_u64(), narrow.next_u64());
    }
}
