//! Rotary position embedding tables, computed the same way on every machine.
//!
//! RoPE rotates each consecutive pair `(x[2i], x[2i+1])` of a head by the angle
//! `pos · base^(−2i/d)`. The table of `(cos, sin)` for every position and pair is computed here
//! once, in f64 with this module's own `exp`, `ln`, `sin` and `cos` (IEEE additions,
//! multiplications and divisions in a fixed order, never the platform's libm, whose last bits
//! differ between systems), then rounded to f32. Every backend reads this one table (a device
//! backend uploads it), so the angles cannot differ between a worker and its validator.

/// `(cos, sin)` of every position's angle for every pair of a head (see the module
/// documentation); [`Backend::rope`](crate::Backend::rope) reads it.
#[derive(Debug, Clone)]
pub struct RopeTable {
    /// Pairs per head (`head_dim / 2`).
    pairs: usize,
    /// Positions covered.
    positions: usize,
    /// `[pos][pair]` → `(cos, sin)`.
    values: Vec<(f32, f32)>,
}

impl RopeTable {
    /// The table for `positions` positions of a `head_dim`-wide head with frequency `base`.
    pub fn new(head_dim: usize, positions: usize, base: f64) -> RopeTable {
        let pairs = head_dim / 2;
        let ln_base = ln(base);
        let inv_freq: Vec<f64> = (0..pairs)
            .map(|i| exp(-((2 * i) as f64 / head_dim as f64) * ln_base))
            .collect();
        let mut values = Vec::with_capacity(positions * pairs);
        for pos in 0..positions {
            for &f in &inv_freq {
                let (s, c) = sin_cos(pos as f64 * f);
                values.push((c as f32, s as f32));
            }
        }
        RopeTable {
            pairs,
            positions,
            values,
        }
    }

    /// The `(cos, sin)` of every pair at `pos`.
    ///
    /// # Panics
    ///
    /// If `pos` is past the table (callers bound positions by the model's context).
    pub fn at(&self, pos: usize) -> &[(f32, f32)] {
        assert!(pos < self.positions, "position {pos} past the rope table");
        &self.values[pos * self.pairs..(pos + 1) * self.pairs]
    }

    pub fn pairs(&self) -> usize {
        self.pairs
    }

    pub fn positions(&self) -> usize {
        self.positions
    }
}

/// `e^x` for |x| < 700: `x = n·ln2 + r` with |r| ≤ ln2/2, then a degree-22 Taylor sum of `r`
/// (Horner, from the smallest term) times `2^n`.
pub(crate) fn exp(x: f64) -> f64 {
    // ln 2 in two parts (fdlibm's split): n·LN2_HI is exact for |n| < 2^11.
    const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
    const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
    let n = (x * std::f64::consts::LOG2_E).round();
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.0;
    for k in (1..=22).rev() {
        p = 1.0 + p * r / k as f64;
    }
    p * f64::from_bits(((n as i64 + 1023) as u64) << 52)
}

/// `ln x` for normal positive x: `x = m·2^e` with `m` in [√½, √2), `ln m = 2·atanh(s)` with
/// `s = (m−1)/(m+1)`, |s| < 0.172, summed to `s^45`.
pub(crate) fn ln(x: f64) -> f64 {
    let bits = x.to_bits();
    let mut e = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | (1023u64 << 52));
    if m > std::f64::consts::SQRT_2 {
        m /= 2.0;
        e += 1;
    }
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut sum = 0.0;
    for k in (0..=22).rev() {
        sum = sum * s2 + 1.0 / (2 * k + 1) as f64;
    }
    e as f64 * std::f64::consts::LN_2 + 2.0 * s * sum
}

/// `(sin x, cos x)` for 0 ≤ x < 2^20: `x = k·π/2 + r` (π/2 in three parts of 33 bits, so
/// each `k·part` is exact), |r| ≤ π/4, Taylor sums of `r` to degree 25, then the quadrant.
pub(crate) fn sin_cos(x: f64) -> (f64, f64) {
    // π/2 in three parts of 33 bits (fdlibm's split).
    const PIO2_1: f64 = f64::from_bits(0x3ff9_21fb_5440_0000);
    const PIO2_2: f64 = f64::from_bits(0x3dd0_b461_1a60_0000);
    const PIO2_3: f64 = f64::from_bits(0x3ba3_198a_2e00_0000);
    let k = (x * std::f64::consts::FRAC_2_PI).round();
    let r = ((x - k * PIO2_1) - k * PIO2_2) - k * PIO2_3;
    let r2 = r * r;
    // sin r = r·(1 − r²/(2·3)·(1 − r²/(4·5)·(…))), cos r = 1 − r²/(1·2)·(1 − r²/(3·4)·(…)).
    let mut s = 1.0;
    let mut c = 1.0;
    for k in (1..=12).rev() {
        let k = k as f64;
        s = 1.0 - s * r2 / ((2.0 * k) * (2.0 * k + 1.0));
        c = 1.0 - c * r2 / ((2.0 * k - 1.0) * (2.0 * k));
    }
    let s = r * s;
    match (k as i64).rem_euclid(4) {
        0 => (s, c),
        1 => (c, -s),
        2 => (-s, -c),
        _ => (-c, s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * b.abs().max(1.0)
    }

    #[test]
    fn own_functions_agree_with_the_platform_closely() {
        for i in 0..2000 {
            let x = -40.0 + i as f64 * 0.04;
            assert!(close(exp(x), x.exp(), 4e-16), "exp({x})");
        }
        for x in [1e-300, 1e-10, 0.5, 0.7, 1.0, 1.5, 2.0, 10.0, 1e5, 1e300] {
            assert!(close(ln(x), x.ln(), 4e-16), "ln({x}) {} {}", ln(x), x.ln());
        }
        for i in 0..100_000 {
            let x = i as f64 * 0.0823;
            let (s, c) = sin_cos(x);
            assert!((s - x.sin()).abs() < 2e-15, "sin({x}) {s} {}", x.sin());
            assert!((c - x.cos()).abs() < 2e-15, "cos({x})");
        }
    }

    #[test]
    fn table_matches_the_definition() {
        let t = RopeTable::new(64, 8192, 100_000.0);
        assert_eq!((t.pairs(), t.positions()), (32, 8192));
        assert_eq!(t.at(0)[5], (1.0, 0.0));
        for pos in [1usize, 17, 1000, 8191] {
            for (i, &(c, s)) in t.at(pos).iter().enumerate() {
                let angle = pos as f64 * 100_000f64.powf(-((2 * i) as f64) / 64.0);
                assert!(
                    (f64::from(c) - angle.cos()).abs() < 1e-7,
                    "cos at {pos}, {i}"
                );
                assert!(
                    (f64::from(s) - angle.sin()).abs() < 1e-7,
                    "sin at {pos}, {i}"
                );
            }
        }
    }

    #[test]
    fn table_bits_are_pinned() {
        // A change to the math above changes these (and every output that uses RoPE).
        let t = RopeTable::new(64, 4096, 100_000.0);
        let mut h = 0u64;
        for &(c, s) in &t.values {
            h = h.rotate_left(5) ^ u64::from(c.to_bits());
            h = h.rotate_left(5) ^ u64::from(s.to_bits());
        }
        assert_eq!(h, PINNED);
    }
    const PINNED: u64 = 8_299_900_151_040_969_145;
}
