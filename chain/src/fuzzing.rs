//! Structure-aware mutation for fuzz tests of decoders: valid inputs, edited the way a hostile
//! peer would. Used by the property tests of every crate that reads outside bytes.

/// A small deterministic generator (xorshift64); seed it with a non-zero value.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// One to five hostile edits of `input` (`other`: another corpus entry, for splicing): bit
/// flips, interesting bytes, little-endian length prefixes that claim too much, truncations,
/// insertions, splices, duplicated and removed bytes.
pub fn mutate(input: &[u8], other: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..=rng.below(4) {
        let len = v.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = [0, 1, 0x7f, 0x80, 0xfe, 0xff][rng.below(6)];
            }
            // A length prefix (bincode writes u64 little-endian) that claims too much.
            2 if len >= 8 => {
                let i = rng.below(len - 7);
                let n: u64 = [u64::MAX, 1 << 32, 1 << 24, (len as u64) * 2][rng.below(4)];
                v[i..i + 8].copy_from_slice(&n.to_le_bytes());
            }
            3 if len > 0 => v.truncate(rng.below(len)),
            4 => {
                let i = rng.below(len + 1);
                let extra: Vec<u8> = (0..rng.below(16) + 1)
                    .map(|_| rng.next_u64() as u8)
                    .collect();
                v.splice(i..i, extra);
            }
            5 if len > 0 && !other.is_empty() => {
                let cut = rng.below(len);
                let from = rng.below(other.len());
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            6 if len > 1 => {
                let (a, b) = (rng.below(len), rng.below(len));
                let (a, b) = (a.min(b), a.max(b));
                let chunk = v[a..b].to_vec();
                v.splice(b..b, chunk);
            }
            _ if len > 0 => {
                let i = rng.below(len);
                v.remove(i);
            }
            _ => v.push(rng.next_u64() as u8),
        }
    }
    v
}
