//! Scalar functions with a fixed operation sequence: our own `exp`, `erf` and `gelu`.
//!
//! Every function here uses only IEEE-754 operations that are correctly rounded on every
//! platform (`+`, `-`, `*`, `/`, `mul_add`, comparisons and bit manipulation), never a libm
//! call, so the same input gives the same bits on any CPU and on a GPU that replays the same
//! sequence (`__fmaf_rn`, `__fmul_rn`, `__fadd_rn`). The polynomial coefficients are part of
//! the exact-mode contract: changing one changes every output hash.
//!
//! Accuracy against `f64` references, measured by `exhaustive_accuracy` (every f32 for `exp`,
//! every 61st f32 for the others) and asserted by the fast tests: `exp` within 1 ulp for normal
//! results (worst 0.94), `erf` within 1e-7 absolute (worst 6.2e-8), `gelu` within
//! 1.5e-7·max(1, |x|) absolute (worst 1.1e-7).

/// `log2(e)`, rounded to f32.
pub(crate) const LOG2E: f32 = std::f32::consts::LOG2_E;
/// High part of `ln 2` with 8 trailing zero bits, so `n * LN2_HI` is exact for |n| < 2^8.
pub(crate) const LN2_HI: f32 = 0.693_145_75;
/// `ln 2 - LN2_HI`, rounded to f32.
pub(crate) const LN2_LO: f32 = 1.428_606_8e-6;
/// 1.5 · 2^23: adding and subtracting it rounds an f32 of magnitude < 2^22 to the nearest integer.
pub(crate) const ROUND_MAGIC: f32 = 12_582_912.0;
/// Above this, `exp` overflows to +inf.
pub(crate) const EXP_HI: f32 = 89.0;
/// Below this, `exp` is 0 (the smallest subnormal is about e^-103.3).
pub(crate) const EXP_LO: f32 = -104.0;

/// Taylor coefficients 1/k! for k = 7 down to 2, rounded to f32 (Horner order). On the reduced
/// range |r| <= ln(2)/2 the truncation error of the degree-7 polynomial is below 6e-9 relative.
pub(crate) const EXP_POLY: [f32; 6] = [
    1.984_127e-4,
    1.388_888_9e-3,
    8.333_334e-3,
    4.166_666_8e-2,
    1.666_666_7e-1,
    0.5,
];

/// `e^x` in f32: `x = n·ln2 + r`, `e^x = 2^n · p(r)`.
///
/// Special values: NaN gives NaN, +inf gives +inf, -inf gives 0.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    if x > EXP_HI {
        return f32::INFINITY;
    }
    let x = if x < EXP_LO { EXP_LO } else { x };
    // n = round(x / ln2); |x·log2e| < 2^8, so the magic-number rounding is exact.
    let n = (x * LOG2E + ROUND_MAGIC) - ROUND_MAGIC;
    let r = (-n).mul_add(LN2_HI, x);
    let r = (-n).mul_add(LN2_LO, r);
    let mut p = EXP_POLY[0];
    for &c in &EXP_POLY[1..] {
        p = p.mul_add(r, c);
    }
    p = p.mul_add(r, 1.0);
    p = p.mul_add(r, 1.0);
    // 2^n in two factors keeps each one a normal number for n in [-150, 129]; the first
    // multiplication is exact, so the result is rounded once.
    let n = n as i32;
    let n1 = n >> 1;
    let n2 = n - n1;
    p * pow2(n1) * pow2(n2)
}

/// 2^n for n in [-126, 127], built from the exponent bits.
#[inline(always)]
fn pow2(n: i32) -> f32 {
    f32::from_bits(((n + 127) as u32) << 23)
}

/// Below this |x|, `erf(x) = x + x·Q(x²)`; at or above it, `erf(x) = 1 - exp(P(|x|))`.
pub(crate) const ERF_SPLIT: f32 = 1.0;
/// Above this |x|, `erfc(|x|) < 2^-25`, so `erf` rounds to ±1.
pub(crate) const ERF_CLAMP: f32 = 4.0;
/// Near-minimax (Chebyshev) fit of `erf(x)/x - 1` in `s = x²` on [0, 1], degree 6, Horner
/// order; fit error 1.3e-9.
pub(crate) const ERF_SMALL: [f32; 7] = [
    7.875_875e-5,
    -8.016_864_3e-4,
    5.189_087_2e-3,
    -2.685_421_1e-2,
    1.128_359_4e-1,
    -3.761_262_6e-1,
    1.283_791_7e-1,
];
/// Near-minimax (Chebyshev) fit of `ln(erfc(t))` on [1, 4], degree 10, Horner order; fit error
/// 2.2e-9.
pub(crate) const ERF_LARGE: [f32; 11] = [
    -3.834_714_2e-8,
    8.925_321_7e-7,
    -7.467_047_5e-6,
    7.447_576e-6,
    3.964_883e-4,
    -4.261_094e-3,
    2.558_693e-2,
    -1.091_537_25e-1,
    -6.324_793e-1,
    -1.129_969_1,
    2.734_751_6e-4,
];

/// The error function, with our own polynomials (see the constants above).
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    let t = x.abs();
    if t < ERF_SPLIT {
        let s = x * x;
        let mut q = ERF_SMALL[0];
        for &c in &ERF_SMALL[1..] {
            q = q.mul_add(s, c);
        }
        q.mul_add(x, x)
    } else {
        let t = if t > ERF_CLAMP { ERF_CLAMP } else { t };
        let mut p = ERF_LARGE[0];
        for &c in &ERF_LARGE[1..] {
            p = p.mul_add(t, c);
        }
        let r = 1.0 - exp(p);
        if x < 0.0 { -r } else { r }
    }
}

/// `1/√2`, rounded to f32.
pub(crate) const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;

/// GELU, erf form: `0.5·x·(1 + erf(x/√2))`, evaluated as `(0.5·x)·(1 + erf(x·(1/√2)))`.
#[inline(always)]
pub(crate) fn gelu(x: f32) -> f32 {
    let e = erf(x * FRAC_1_SQRT_2);
    (0.5 * x) * (1.0 + e)
}

/// SiLU, `x / (1 + exp(−x))` with this crate's `exp` (−0.0 for x below about −89, where the
/// exponential overflows).
#[inline(always)]
pub(crate) fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// In-place softmax of one row: subtract the row maximum, `exp`, sum left to right, divide.
#[inline(always)]
pub(crate) fn softmax_row(row: &mut [f32]) {
    let Some(&first) = row.first() else { return };
    let mut max = first;
    for &v in row.iter() {
        if v > max {
            max = v;
        }
    }
    let mut sum = 0.0f32;
    for v in row.iter_mut() {
        *v = exp(*v - max);
        sum += *v;
    }
    for v in row.iter_mut() {
        *v /= sum;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `erf` in f64 from the series `erf(x) = 2/√π · e^{-x²} · Σ (2x²)^n · x / (2n+1)!!`, whose
    /// terms are all positive (no cancellation); accurate to ~1e-15 for |x| <= 6.
    pub(crate) fn erf_f64(x: f64) -> f64 {
        if x == 0.0 {
            return x;
        }
        let t = x.abs().min(6.0);
        let mut term = t;
        let mut sum = t;
        let mut n = 0.0;
        while term > sum * 1e-18 {
            n += 1.0;
            term *= 2.0 * t * t / (2.0 * n + 1.0);
            sum += term;
        }
        let r = (2.0 / std::f64::consts::PI.sqrt() * (-t * t).exp() * sum).min(1.0);
        r.copysign(x)
    }

    pub(crate) fn gelu_f64(x: f64) -> f64 {
        0.5 * x * (1.0 + erf_f64(x / std::f64::consts::SQRT_2))
    }

    /// `n` points spread over [lo, hi], ends included.
    fn sweep(lo: f32, hi: f32, n: usize) -> impl Iterator<Item = f32> {
        (0..=n).map(move |i| lo + (hi - lo) * (i as f32 / n as f32))
    }

    fn ulp(x: f64) -> f64 {
        // Distance to the next f32 above |x| (for normal results).
        let a = (x.abs() as f32).max(f32::MIN_POSITIVE);
        (f32::from_bits(a.to_bits() + 1) - a) as f64
    }

    #[test]
    fn exp_matches_f64_within_1_ulp() {
        let mut worst = 0.0f64;
        for x in sweep(-87.0, 88.5, 400_000).chain(sweep(-1.0, 1.0, 100_000)) {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            let err = (got - want).abs() / ulp(want);
            worst = worst.max(err);
            assert!(
                err <= 1.0,
                "exp({x:e}) = {got:e}, want {want:e} ({err} ulp)"
            );
        }
        eprintln!("exp worst error {worst:.3} ulp");
    }

    /// Every f32 with a normal `exp` result (about 2·10^9 inputs), and erf / gelu on every 61st
    /// f32 of their ranges, against the same bounds as the sampled tests above.
    #[test]
    #[ignore = "about 4e9 evaluations, minutes even optimised; run it after changing exp, erf or gelu: cargo test --workspace --release exhaustive -- --ignored"]
    fn exhaustive_accuracy() {
        let lo = f32::MIN_POSITIVE.ln() + 0.01;
        let mut worst = 0.0f64;
        for bits in 0..=u32::MAX {
            let x = f32::from_bits(bits);
            if !(lo..=88.7).contains(&x) {
                continue;
            }
            let want = (x as f64).exp();
            worst = worst.max((exp(x) as f64 - want).abs() / ulp(want));
        }
        eprintln!("exp: worst {worst:.4} ulp");
        assert!(worst <= 1.0, "exp: {worst} ulp");
        let (mut e_worst, mut g_worst) = (0.0f64, 0.0f64);
        for bits in (0..=u32::MAX).step_by(61) {
            let x = f32::from_bits(bits);
            if x.is_nan() || x.abs() > 12.0 {
                continue;
            }
            e_worst = e_worst.max((erf(x) as f64 - erf_f64(x as f64)).abs());
            g_worst = g_worst
                .max((gelu(x) as f64 - gelu_f64(x as f64)).abs() / (x.abs() as f64).max(1.0));
        }
        eprintln!("erf: worst {e_worst:e} absolute; gelu: worst {g_worst:e} scaled");
        assert!(
            e_worst <= 1e-7 && g_worst <= 1.5e-7,
            "erf {e_worst:e}, gelu {g_worst:e}"
        );
    }

    #[test]
    fn exp_special_values() {
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-0.0), 1.0);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(89.5), f32::INFINITY);
        assert_eq!(exp(-200.0), 0.0);
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(88.7) < f32::INFINITY);
        // Subnormal results are still close: e^-100 = 3.72e-44.
        let sub = exp(-100.0) as f64;
        assert!((sub - (-100.0f64).exp()).abs() <= 2.0 * 1.5e-45, "{sub:e}");
    }

    #[test]
    fn erf_matches_f64_within_1e_7() {
        let mut worst = 0.0f64;
        for x in sweep(-6.0, 6.0, 400_000).chain(sweep(-1e-3, 1e-3, 1000)) {
            let want = erf_f64(x as f64);
            let got = erf(x) as f64;
            let err = (got - want).abs();
            worst = worst.max(err);
            assert!(err <= 1e-7, "erf({x:e}) = {got:e}, want {want:e}");
            // Relative accuracy near zero, where erf(x) ≈ 1.128·x.
            if x.abs() < 0.5 && x != 0.0 {
                assert!(
                    err <= 2.0 * ulp(want),
                    "erf({x:e}) = {got:e}, want {want:e}"
                );
            }
        }
        eprintln!("erf worst absolute error {worst:e}");
        assert_eq!(erf(0.0), 0.0);
        assert_eq!(erf(10.0), 1.0);
        assert_eq!(erf(-10.0), -1.0);
        assert_eq!(erf(f32::INFINITY), 1.0);
        assert!(erf(f32::NAN).is_nan());
    }

    #[test]
    fn gelu_matches_f64() {
        let mut worst = 0.0f64;
        for x in sweep(-12.0, 12.0, 300_000) {
            let want = gelu_f64(x as f64);
            let got = gelu(x) as f64;
            let err = (got - want).abs() / (x.abs() as f64).max(1.0);
            worst = worst.max(err);
            assert!(err <= 1.5e-7, "gelu({x:e}) = {got:e}, want {want:e}");
        }
        eprintln!("gelu worst scaled error {worst:e}");
        assert_eq!(gelu(0.0), 0.0);
        assert_eq!(gelu(100.0), 100.0);
        assert_eq!(gelu(-100.0), 0.0);
    }
}
