//! Binary Merkle trees compatible with OpenZeppelin's `MerkleProof`: pairs are hashed sorted
//! (`keccak(min ‖ max)`), an odd node is carried up unchanged. A proof is the list of siblings.

use alloy::primitives::{B256, keccak256};

fn hash_pair(a: &B256, b: &B256) -> B256 {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut buf = [0u8; 64];
    buf[..32].copy_from_slice(lo.as_slice());
    buf[32..].copy_from_slice(hi.as_slice());
    keccak256(buf)
}

/// Root of `leaves`; the zero hash for no leaves.
pub fn root(leaves: &[B256]) -> B256 {
    if leaves.is_empty() {
        return B256::ZERO;
    }
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        level = next_level(&level);
    }
    level[0]
}

/// The level above `level`: pairs hashed, an odd last node carried up.
fn next_level(level: &[B256]) -> Vec<B256> {
    level
        .chunks(2)
        .map(|c| {
            if c.len() == 2 {
                hash_pair(&c[0], &c[1])
            } else {
                c[0]
            }
        })
        .collect()
}

/// The sibling path of every leaf, in leaf order: one pass over the tree's levels, where calling
/// [`proof`] for each leaf would rebuild the tree per leaf.
pub fn proofs(leaves: &[B256]) -> Vec<Vec<B256>> {
    let mut paths = vec![Vec::new(); leaves.len()];
    // position[i]: leaf i's index in the current level.
    let mut position: Vec<usize> = (0..leaves.len()).collect();
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        for (path, pos) in paths.iter_mut().zip(position.iter_mut()) {
            if let Some(sibling) = level.get(*pos ^ 1) {
                path.push(*sibling);
            }
            *pos /= 2;
        }
        level = next_level(&level);
    }
    paths
}

/// Sibling path of leaf `index`, or `None` when out of range.
pub fn proof(leaves: &[B256], index: usize) -> Option<Vec<B256>> {
    if index >= leaves.len() {
        return None;
    }
    Some(proofs(leaves).swap_remove(index))
}

/// The root that `path` leads to from `leaf`.
pub fn root_from_path(path: &[B256], leaf: &B256) -> B256 {
    path.iter().fold(*leaf, |acc, s| hash_pair(&acc, s))
}

/// Checks that `leaf` is in the tree with `root`, as OpenZeppelin's `MerkleProof.verify` does.
pub fn verify(path: &[B256], root: &B256, leaf: &B256) -> bool {
    root_from_path(path, leaf) == *root
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leaves(n: usize) -> Vec<B256> {
        (0..n)
            .map(|i| keccak256((i as u64).to_be_bytes()))
            .collect()
    }

    #[test]
    fn small_trees() {
        assert_eq!(root(&[]), B256::ZERO);
        let l = leaves(1);
        assert_eq!(root(&l), l[0]);
        let l = leaves(2);
        assert_eq!(root(&l), hash_pair(&l[0], &l[1]));
        assert!(proof(&l, 2).is_none());
    }

    proptest! {
        #[test]
        fn every_leaf_proves_and_others_do_not(n in 1usize..40, pick in 0usize..40) {
            let l = leaves(n);
            let r = root(&l);
            let i = pick % n;
            let p = proof(&l, i).unwrap();
            prop_assert!(verify(&p, &r, &l[i]));
            prop_assert!(!verify(&p, &r, &keccak256(b"not a leaf")));
            if n > 1 {
                let j = (i + 1) % n;
                prop_assert!(!verify(&p, &r, &l[j]) || l[i] == l[j]);
            }
        }
    }
}
