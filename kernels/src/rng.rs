//! The seeded generator behind [`write_seeded_mlp`](crate::write_seeded_mlp): SplitMix64
//! (Steele, Lea and Flood, 2014), written out here so the weights it yields are fixed by this
//! file alone, whatever the platform or dependency versions.

/// SplitMix64: a 64-bit counter passed through a fixed mixing function.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1) on a grid of 2^-23: the top 24 bits as k / 2^24, then `2u - 1`, every
    /// step exact in f32.
    pub(crate) fn next_f32(&mut self) -> f32 {
        let u = (self.next_u64() >> 40) as f32 * (1.0 / 16_777_216.0);
        2.0 * u - 1.0
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `len` values uniform in [-1, 1) from `seed`, for tests.
    pub(crate) fn uniform_vec(seed: u64, len: usize) -> Vec<f32> {
        let mut rng = SplitMix64::new(seed);
        (0..len).map(|_| rng.next_f32()).collect()
    }

    #[test]
    fn splitmix64_reference_values() {
        // First outputs for seed 1234567 from the reference C implementation (Vigna).
        let mut r = SplitMix64::new(1_234_567);
        assert_eq!(r.next_u64(), 6_457_827_717_110_365_317);
        assert_eq!(r.next_u64(), 3_203_168_211_198_807_973);
        assert_eq!(r.next_u64(), 9_817_491_932_198_370_423);
    }

    #[test]
    fn next_f32_stays_in_range_and_spreads() {
        let v = uniform_vec(9, 10_000);
        assert!(v.iter().all(|x| (-1.0..1.0).contains(x)));
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.05, "mean {mean}");
        assert!(v.iter().any(|&x| x < -0.9) && v.iter().any(|&x| x > 0.9));
    }
}
