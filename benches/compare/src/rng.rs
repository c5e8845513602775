//! The benchmark's random numbers: xorshift64* seeded through splitmix64, so every run (and the
//! C harness in `benches/c/workloads.c`, which carries the same few lines) draws the same
//! sequence, and drawing costs a few cycles that do not show beside an allocation.
//!
//! May touch: nothing.

/// A small, fixed-seed generator (xorshift64*). Not for anything but benchmark inputs.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator for `seed`; seeds that differ in one bit give unrelated sequences.
    pub fn new(seed: u64) -> Self {
        // splitmix64 spreads small seeds (0, 1, 2 per thread) over the whole state; the `| 1`
        // keeps xorshift away from its one fixed point, zero.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng {
            state: (z ^ (z >> 31)) | 1,
        }
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n > 0`), by Lemire's multiply-shift: no division, and a bias of at
    /// most n / 2^64, which no benchmark can see.
    #[inline]
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// A number in `lo..=hi` (`lo <= hi`).
    #[inline]
    pub fn between(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn same_seed_same_sequence_other_seed_other_sequence() {
        let draw = |seed| {
            let mut r = Rng::new(seed);
            (0..16).map(|_| r.next_u64()).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn between_stays_in_bounds_and_reaches_both_ends() {
        let mut r = Rng::new(0);
        let mut seen = [false; 9];
        for _ in 0..10_000 {
            let v = r.between(8, 16);
            assert!((8..=16).contains(&v), "{v} out of 8..=16");
            seen[v - 8] = true;
        }
        assert!(
            seen.iter().all(|&s| s),
            "some value of 8..=16 never drawn: {seen:?}"
        );
    }
}
