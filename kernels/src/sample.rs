//! Choosing the next token from logits, reproducibly: greedy argmax, or seeded sampling with
//! temperature, top-k and top-p whose random draw is a pure function of the request's seed and
//! the token's position, so a validator re-executing a job draws the same numbers whatever
//! else its machine decoded in the same batch.
//!
//! These run on the host over a logits row every backend returns there; a device version would
//! save one 192 KB copy per token and is not worth a second implementation to keep equal.

use crate::math;

/// How to choose tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// 0 = greedy (argmax); otherwise logits are divided by it. 0 to 2.
    pub temperature: f32,
    /// Nucleus: keep the most likely tokens until their probability reaches this. (0, 1].
    pub top_p: f32,
    /// Keep only the `top_k` most likely tokens; 0 = all.
    pub top_k: u32,
    /// Keys the random draws.
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
        }
    }
}

/// Largest temperature accepted (OpenAI's limit).
pub const MAX_TEMPERATURE: f32 = 2.0;

impl Sampling {
    /// Why these parameters are refused, if they are.
    pub fn check(&self) -> Result<(), String> {
        if !(0.0..=MAX_TEMPERATURE).contains(&self.temperature) {
            return Err(format!(
                "temperature {} is outside 0 to {MAX_TEMPERATURE}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!(
                "top_p {} is outside (0, 1] (above 0, at most 1)",
                self.top_p
            ));
        }
        Ok(())
    }

    /// The token at `position` (its index in the whole sequence) from `logits`: greedy when
    /// the temperature is 0, else:
    ///
    /// 1. `s_i = logit_i / temperature` (one rounding);
    /// 2. tokens ordered by `s` descending, ties by id ascending; the first `top_k` kept;
    /// 3. `p_i = exp(s_i − s_max) / Σ` with this crate's `exp`, the sum left to right in that
    ///    order from `0.0`;
    /// 4. the shortest prefix whose running sum (left to right) reaches `top_p` kept (at
    ///    least one token);
    /// 5. `u` = the top 24 bits of SplitMix64's output for counter `seed ⊕ position·φ`, as
    ///    `k / 2^24`; the chosen token is the first whose running sum of kept `p` exceeds
    ///    `u · Σ kept p` (the last one if rounding leaves none).
    pub fn choose(&self, logits: &[f32], position: u64) -> u32 {
        if self.temperature == 0.0 || logits.len() < 2 {
            return argmax(logits);
        }
        // Each token as one integer key whose ascending order is the ranking: the score's bits
        // mapped to an unsigned order equal to `f32::total_cmp`'s, inverted (descending), then
        // the id (ascending on ties). Integer keys sort several times faster than pairs
        // compared by closure (a whole vocabulary per sampled token).
        let mut order: Vec<u64> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (u64::from(!total_order_bits(l / self.temperature)) << 32) | i as u64)
            .collect();
        let k = self.top_k as usize;
        if k > 0 && k < order.len() {
            order.select_nth_unstable(k - 1);
            order.truncate(k);
        }
        order.sort_unstable();
        let score = |key: u64| from_total_order_bits(!((key >> 32) as u32));
        let id = |key: u64| key as u32;
        let max = score(order[0]);
        let scores: Vec<f32> = order.iter().map(|&key| score(key) - max).collect();
        let mut probs = exp_all(&scores);
        let mut sum = 0.0f32;
        for &p in &probs {
            sum += p;
        }
        for p in &mut probs {
            *p /= sum;
        }
        let mut kept = probs.len();
        if self.top_p < 1.0 {
            let mut run = 0.0f32;
            for (i, &p) in probs.iter().enumerate() {
                run += p;
                if run >= self.top_p {
                    kept = i + 1;
                    break;
                }
            }
        }
        let mut total = 0.0f32;
        for &p in &probs[..kept] {
            total += p;
        }
        let target = uniform(self.seed, position) * total;
        let mut run = 0.0f32;
        for (i, &p) in probs[..kept].iter().enumerate() {
            run += p;
            if run > target {
                return id(order[i]);
            }
        }
        id(order[kept - 1])
    }
}

/// `x`'s bits mapped so that unsigned order is [`f32::total_cmp`]'s order.
fn total_order_bits(x: f32) -> u32 {
    let b = x.to_bits();
    if b >> 31 == 1 { !b } else { b | 1 << 31 }
}

/// The inverse of [`total_order_bits`].
fn from_total_order_bits(k: u32) -> f32 {
    f32::from_bits(if k >> 31 == 1 { k & !(1 << 31) } else { !k })
}

/// [`math::exp`] of each value. Its fused multiply-adds are correctly rounded whether the CPU
/// does them or a software routine does, so the bits are the same either way; on x86-64 with
/// FMA the loop is compiled to use the instruction (the software routine made sampling over a
/// whole vocabulary cost as much as a decode step).
fn exp_all(x: &[f32]) -> Vec<f32> {
    #[inline(always)]
    fn each(x: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0f32; x.len()];
        for (o, &v) in out.iter_mut().zip(x) {
            *o = math::exp(v);
        }
        out
    }
    #[cfg(target_arch = "x86_64")]
    {
        /// # Safety
        ///
        /// The CPU must support FMA.
        #[target_feature(enable = "fma")]
        unsafe fn with_fma(x: &[f32]) -> Vec<f32> {
            each(x)
        }
        if std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has FMA (checked just above).
            return unsafe { with_fma(x) };
        }
    }
    each(x)
}

/// The index of the largest logit, the first one on ties (NaN never wins).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] || logits[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

/// A uniform draw in [0, 1) on a grid of 2^-24, from SplitMix64's mixing of
/// `seed ⊕ position·φ` (a counter-based generator: no state between tokens).
pub(crate) fn uniform(seed: u64, position: u64) -> f32 {
    let mut rng = crate::rng::SplitMix64::new(seed ^ position.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    (rng.next_u64() >> 40) as f32 * (1.0 / 16_777_216.0)
}

/// `ln p(token)` under the softmax of `logits` (temperature 1), in f64 with this crate's own
/// `exp` and `ln`, for reporting (`logprobs`): `(l − max) − ln Σ exp(l_j − max)`.
pub fn logprob(logits: &[f32], token: u32) -> f32 {
    LogSoftmax::new(logits).of(logits, token)
}

/// The normaliser of `logits`' log-softmax, computed once for many [`LogSoftmax::of`].
#[derive(Debug, Clone, Copy)]
pub struct LogSoftmax {
    max: f32,
    ln_sum: f64,
}

impl LogSoftmax {
    pub fn new(logits: &[f32]) -> LogSoftmax {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f64;
        for &l in logits {
            sum += crate::rope::exp(f64::from(l - max));
        }
        LogSoftmax {
            max,
            ln_sum: crate::rope::ln(sum),
        }
    }

    /// `ln p(token)`, as [`logprob`].
    pub fn of(&self, logits: &[f32], token: u32) -> f32 {
        let l = logits
            .get(token as usize)
            .copied()
            .unwrap_or(f32::NEG_INFINITY);
        (f64::from(l - self.max) - self.ln_sum) as f32
    }
}

/// The `k` most likely tokens of `logits`, most likely first, ties by id ascending.
pub fn top_tokens(logits: &[f32], k: usize) -> Vec<u32> {
    let mut best: Vec<u32> = Vec::with_capacity(k + 1);
    let before = |a: u32, b: u32| {
        let (la, lb) = (logits[a as usize], logits[b as usize]);
        la > lb || (la == lb && a < b)
    };
    for id in 0..logits.len() as u32 {
        if best.len() == k && best.last().is_none_or(|&last| !before(id, last)) {
            continue;
        }
        let at = best.partition_point(|&b| before(b, id));
        best.insert(at, id);
        best.truncate(k);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.0, 3.0, -1.0, 0.5]
    }

    /// [`Sampling::choose`] as its documentation states it: pairs ranked by a comparison,
    /// probabilities from `math::exp` one by one.
    fn choose_by_definition(s: &Sampling, logits: &[f32], position: u64) -> u32 {
        let mut order: Vec<(f32, u32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (l / s.temperature, i as u32))
            .collect();
        order.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let k = s.top_k as usize;
        if k > 0 {
            order.truncate(k);
        }
        let max = order[0].0;
        let mut probs: Vec<f32> = order.iter().map(|&(v, _)| math::exp(v - max)).collect();
        let sum = probs.iter().fold(0.0f32, |a, &p| a + p);
        probs.iter_mut().for_each(|p| *p /= sum);
        let mut kept = probs.len();
        let mut run = 0.0f32;
        for (i, &p) in probs.iter().enumerate() {
            run += p;
            if s.top_p < 1.0 && run >= s.top_p {
                kept = i + 1;
                break;
            }
        }
        let total = probs[..kept].iter().fold(0.0f32, |a, &p| a + p);
        let target = uniform(s.seed, position) * total;
        let mut run = 0.0f32;
        for (i, &p) in probs[..kept].iter().enumerate() {
            run += p;
            if run > target {
                return order[i].1;
            }
        }
        order[kept - 1].1
    }

    /// The integer ranking keys order scores as `total_cmp` does (signed zeros, subnormals,
    /// infinities) and give every score back; a whole vocabulary with many tied logits draws
    /// the tokens the definition draws, for several temperatures, top-k and top-p.
    #[test]
    fn ranking_keys_give_the_definitions_draws() {
        let specials = [
            f32::NEG_INFINITY,
            -f32::MAX,
            -1.0,
            -1e-45,
            -0.0,
            0.0,
            1e-45,
            1.0,
            f32::MAX,
            f32::INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7fc0_1234),
        ];
        for a in specials {
            assert_eq!(
                from_total_order_bits(total_order_bits(a)).to_bits(),
                a.to_bits()
            );
            for b in specials {
                assert_eq!(
                    total_order_bits(a).cmp(&total_order_bits(b)),
                    a.total_cmp(&b),
                    "{a} {b}"
                );
            }
        }
        let mut rng = crate::rng::SplitMix64::new(5);
        // Logits on a coarse grid: many exact ties, broken by id.
        let logits: Vec<f32> = (0..49_152)
            .map(|_| ((rng.next_u64() % 4001) as f32 - 2000.0) / 100.0)
            .collect();
        for (temperature, top_k, top_p) in
            [(1.0, 0, 1.0), (0.7, 40, 0.9), (1.3, 0, 0.95), (2.0, 5, 1.0)]
        {
            for position in 0..20 {
                let s = Sampling {
                    temperature,
                    top_p,
                    top_k,
                    seed: 11 + position,
                };
                assert_eq!(
                    s.choose(&logits, position),
                    choose_by_definition(&s, &logits, position),
                    "t={temperature} k={top_k} p={top_p} at {position}"
                );
            }
        }
    }

    #[test]
    fn greedy_takes_the_first_largest() {
        assert_eq!(argmax(&logits()), 1);
        assert_eq!(Sampling::default().choose(&logits(), 7), 1);
        assert_eq!(argmax(&[f32::NAN, 1.0, 0.0]), 1);
        assert_eq!(argmax(&[]), 0);
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        for seed in 0..50 {
            let s = Sampling {
                temperature: 1.0,
                top_k: 1,
                seed,
                ..Sampling::default()
            };
            assert_eq!(s.choose(&logits(), seed), 1);
            let s = Sampling {
                temperature: 1.0,
                top_p: 1e-6,
                seed,
                ..Sampling::default()
            };
            assert_eq!(s.choose(&logits(), seed), 1, "ties go to the lower id");
        }
    }

    #[test]
    fn draws_follow_the_distribution_and_repeat() {
        let s = Sampling {
            temperature: 1.0,
            seed: 42,
            ..Sampling::default()
        };
        let mut counts = [0usize; 6];
        for pos in 0..20_000 {
            counts[s.choose(&logits(), pos) as usize] += 1;
        }
        let z: f64 = logits().iter().map(|&l| f64::from(l).exp()).sum();
        for (i, &c) in counts.iter().enumerate() {
            let p = f64::from(logits()[i]).exp() / z;
            let seen = c as f64 / 20_000.0;
            assert!((seen - p).abs() < 0.015, "token {i}: {seen} vs {p}");
        }
        // The same seed and position give the same token; positions and seeds differ.
        let again: Vec<u32> = (0..100).map(|p| s.choose(&logits(), p)).collect();
        let first: Vec<u32> = (0..100).map(|p| s.choose(&logits(), p)).collect();
        assert_eq!(again, first);
        let other = Sampling { seed: 43, ..s };
        assert_ne!(
            first,
            (0..100)
                .map(|p| other.choose(&logits(), p))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn top_k_and_top_p_restrict_the_support() {
        let k2 = Sampling {
            temperature: 1.5,
            top_k: 2,
            seed: 1,
            ..Sampling::default()
        };
        let p = Sampling {
            temperature: 1.0,
            top_p: 0.7,
            seed: 1,
            ..Sampling::default()
        };
        for pos in 0..2000 {
            assert!([1, 3].contains(&k2.choose(&logits(), pos)));
            // 3.0, 3.0 hold 0.66 of the mass; 2.0 brings it past 0.7.
            assert!([1, 2, 3].contains(&p.choose(&logits(), pos)));
        }
    }

    #[test]
    fn parameters_are_checked() {
        let ok = Sampling::default();
        assert!(ok.check().is_ok());
        for bad in [
            Sampling {
                temperature: -0.1,
                ..ok
            },
            Sampling {
                temperature: 2.5,
                ..ok
            },
            Sampling {
                temperature: f32::NAN,
                ..ok
            },
            Sampling { top_p: 0.0, ..ok },
            Sampling { top_p: 1.5, ..ok },
            Sampling {
                top_p: f32::NAN,
                ..ok
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn top_tokens_are_ordered_by_logit_then_id() {
        let l = logits();
        assert_eq!(top_tokens(&l, 3), [1, 3, 2]);
        assert_eq!(top_tokens(&l, 0), Vec::<u32>::new());
        assert_eq!(top_tokens(&l, 10), [1, 3, 2, 0, 5, 4]);
        let norm = LogSoftmax::new(&l);
        for t in 0..6 {
            assert_eq!(norm.of(&l, t), logprob(&l, t));
        }
    }

    #[test]
    fn logprobs_are_log_softmax() {
        let l = logits();
        let z: f64 = l.iter().map(|&v| f64::from(v).exp()).sum();
        for t in 0..6u32 {
            let want = (f64::from(l[t as usize]).exp() / z).ln();
            assert!((f64::from(logprob(&l, t)) - want).abs() < 1e-6);
        }
    }
}
