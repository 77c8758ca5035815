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
        let mut order: Vec<(f32, u32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (l / self.temperature, i as u32))
            .collect();
        let by_score = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        let k = self.top_k as usize;
        if k > 0 && k < order.len() {
            order.select_nth_unstable_by(k - 1, by_score);
            order.truncate(k);
        }
        order.sort_unstable_by(by_score);
        let max = order[0].0;
        let mut probs: Vec<f32> = order.iter().map(|&(s, _)| math::exp(s - max)).collect();
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
                return order[i].1;
            }
        }
        order[kept - 1].1
    }
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
