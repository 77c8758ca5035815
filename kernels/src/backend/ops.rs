//! Encoder ops in exact mode: the scalar definitions every backend must reproduce bit for bit.
//!
//! Each function fixes the order and rounding of every floating-point operation; the docs of the
//! matching [`Backend`](super::Backend) methods repeat it. Padding never enters a sum: masked
//! positions are skipped, not zeroed, so a sequence gives the same bits alone or inside a padded
//! batch (batch invariance).

use crate::error::Error;
use crate::math;

/// Checks that `len` values form whole rows of `cols` (a caller bug otherwise, hence a panic);
/// `false` for no values at all, which every row op leaves alone.
pub(crate) fn has_rows(op: &str, len: usize, cols: usize) -> bool {
    if len == 0 {
        return false;
    }
    assert!(
        cols > 0 && len.is_multiple_of(cols),
        "{op}: {len} values do not form rows of {cols}"
    );
    true
}

/// Checks the slice lengths of a GEMM against `m`, `k`, `n` (a caller bug otherwise, hence a
/// panic), with the same messages on every backend.
pub(crate) fn check_gemm_shapes(
    a: &[f32],
    b: &[f32],
    bias: Option<&[f32]>,
    m: usize,
    k: usize,
    n: usize,
) {
    assert_eq!(
        a.len(),
        m * k,
        "gemm_bias: a has {} values, expected m·k = {m}·{k}",
        a.len()
    );
    assert_eq!(
        b.len(),
        k * n,
        "gemm_bias: b has {} values, expected k·n = {k}·{n}",
        b.len()
    );
    if let Some(bias) = bias {
        assert_eq!(
            bias.len(),
            n,
            "gemm_bias: bias has {} values, expected n = {n}",
            bias.len()
        );
    }
}

/// Checks the slice lengths of a GEMM on packed weights (a caller bug otherwise, hence a
/// panic), with the same messages on every backend.
pub(crate) fn check_packed_shapes(
    a: &[f32],
    w: &super::PackedMatrix,
    bias: Option<&[f32]>,
    m: usize,
) {
    let (k, n) = (w.k(), w.n());
    assert_eq!(
        a.len(),
        m * k,
        "gemm_packed: a has {} values, expected m·k = {m}·{k}",
        a.len()
    );
    if let Some(bias) = bias {
        assert_eq!(
            bias.len(),
            n,
            "gemm_packed: bias has {} values, expected n = {n}",
            bias.len()
        );
    }
}

/// See [`Backend::layernorm_rows`](super::Backend::layernorm_rows).
pub(crate) fn layernorm_rows(x: &mut [f32], cols: usize, gamma: &[f32], beta: &[f32], eps: f32) {
    if !layernorm_shapes(x.len(), cols, gamma, beta) {
        return;
    }
    for row in x.chunks_exact_mut(cols) {
        layernorm_row(row, gamma, beta, eps);
    }
}

/// Checks `layernorm_rows`' shapes (a caller bug otherwise, hence a panic); `false` for no
/// values.
pub(crate) fn layernorm_shapes(len: usize, cols: usize, gamma: &[f32], beta: &[f32]) -> bool {
    assert!(
        gamma.len() == cols && beta.len() == cols,
        "layernorm: gamma/beta are not {cols} long"
    );
    has_rows("layernorm", len, cols)
}

/// One row of [`layernorm_rows`]: mean by a left-to-right sum, variance by fused
/// multiply-adds in order, then `(d·inv)·gamma + beta` fused.
#[inline(always)]
pub(crate) fn layernorm_row(row: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let n = row.len() as f32;
    let mut sum = 0.0f32;
    for &v in row.iter() {
        sum += v;
    }
    let mean = sum / n;
    let mut acc = 0.0f32;
    for &v in row.iter() {
        let d = v - mean;
        acc = d.mul_add(d, acc);
    }
    let inv = 1.0 / (acc / n + eps).sqrt();
    for (j, v) in row.iter_mut().enumerate() {
        let d = *v - mean;
        *v = (d * inv).mul_add(gamma[j], beta[j]);
    }
}

/// See [`Backend::embedding_gather`](super::Backend::embedding_gather).
pub(crate) fn embedding_gather(table: &[f32], dim: usize, ids: &[u32]) -> Result<Vec<f32>, Error> {
    let vocab = table.len().checked_div(dim).unwrap_or(0);
    let mut out = Vec::with_capacity(ids.len() * dim);
    for &id in ids {
        let i = id as usize;
        if i >= vocab {
            return Err(Error::BadInput {
                reason: format!("token id {id} outside the vocabulary of {vocab}"),
            });
        }
        out.extend_from_slice(&table[i * dim..(i + 1) * dim]);
    }
    Ok(out)
}

/// See [`Backend::add_inplace`](super::Backend::add_inplace).
pub(crate) fn add_inplace(x: &mut [f32], y: &[f32]) {
    assert_eq!(x.len(), y.len(), "add: lengths differ");
    for (a, b) in x.iter_mut().zip(y) {
        *a += *b;
    }
}

/// See [`Backend::attention`](super::Backend::attention).
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: &[u8],
    batch: usize,
    seq: usize,
    heads: usize,
    head_dim: usize,
    scale: f32,
) -> Vec<f32> {
    let hidden = heads * head_dim;
    let len = batch * seq * hidden;
    check_attention_shapes(q.len(), k.len(), v.len(), mask, batch, seq, hidden);
    let mut out = vec![0.0f32; len];
    let mut scores = Vec::with_capacity(seq);
    let mut keys = Vec::with_capacity(seq);
    for b in 0..batch {
        let m = &mask[b * seq..(b + 1) * seq];
        keys.clear();
        keys.extend((0..seq).filter(|j| m[*j] != 0));
        if keys.is_empty() {
            continue;
        }
        let row = |t: usize, h: usize| (b * seq + t) * hidden + h * head_dim;
        for h in 0..heads {
            for i in (0..seq).filter(|i| m[*i] != 0) {
                let qi = &q[row(i, h)..row(i, h) + head_dim];
                scores.clear();
                for &j in &keys {
                    let kj = &k[row(j, h)..row(j, h) + head_dim];
                    let mut acc = 0.0f32;
                    for d in 0..head_dim {
                        acc = qi[d].mul_add(kj[d], acc);
                    }
                    scores.push(acc * scale);
                }
                math::softmax_row(&mut scores);
                let o = row(i, h);
                for d in 0..head_dim {
                    let mut acc = 0.0f32;
                    for (p, &j) in scores.iter().zip(&keys) {
                        acc = p.mul_add(v[row(j, h) + d], acc);
                    }
                    out[o + d] = acc;
                }
            }
        }
    }
    out
}

/// Checks attention's shapes (a caller bug otherwise, hence a panic): `q`, `k`, `v` of
/// `batch · seq · hidden` values each, a `batch · seq` mask.
pub(crate) fn check_attention_shapes(
    q: usize,
    k: usize,
    v: usize,
    mask: &[u8],
    batch: usize,
    seq: usize,
    hidden: usize,
) {
    let len = batch * seq * hidden;
    assert!(
        q == len && k == len && v == len,
        "attention: q/k/v are not {len} long"
    );
    check_mask(mask, batch, seq);
}

/// Checks that attention's mask is `batch × seq` (a caller bug otherwise, hence a panic).
fn check_mask(mask: &[u8], batch: usize, seq: usize) {
    assert_eq!(
        mask.len(),
        batch * seq,
        "attention: mask is not batch × seq"
    );
}

/// Checks [`Backend::attention_qkv`](super::Backend::attention_qkv)'s shapes (a caller bug
/// otherwise, hence a panic).
pub(crate) fn check_qkv_shapes(qkv: usize, mask: &[u8], batch: usize, seq: usize, hidden: usize) {
    assert_eq!(
        qkv,
        batch * seq * 3 * hidden,
        "attention_qkv: qkv is not batch × seq × 3·hidden"
    );
    check_mask(mask, batch, seq);
}

/// Checks [`Backend::attention_ragged`](super::Backend::attention_ragged)'s shapes (a caller
/// bug otherwise, hence a panic); returns the rows, `Σ lens`.
pub(crate) fn check_ragged_shapes(qkv: usize, lens: &[usize], hidden: usize) -> usize {
    let rows: usize = lens.iter().sum();
    assert_eq!(
        qkv,
        rows * 3 * hidden,
        "attention_ragged: qkv is not Σ lens × 3·hidden"
    );
    rows
}

/// See [`Backend::mean_pool`](super::Backend::mean_pool).
#[inline(always)]
pub(crate) fn mean_pool(x: &[f32], mask: &[u8], batch: usize, seq: usize, cols: usize) -> Vec<f32> {
    assert_eq!(
        x.len(),
        batch * seq * cols,
        "mean_pool: x is not batch × seq × cols"
    );
    assert_eq!(
        mask.len(),
        batch * seq,
        "mean_pool: mask is not batch × seq"
    );
    let mut out = vec![0.0f32; batch * cols];
    for b in 0..batch {
        let m = &mask[b * seq..(b + 1) * seq];
        let count = m.iter().filter(|v| **v != 0).count().max(1) as f32;
        let o = &mut out[b * cols..(b + 1) * cols];
        for t in (0..seq).filter(|t| m[*t] != 0) {
            let row = &x[(b * seq + t) * cols..(b * seq + t + 1) * cols];
            for (acc, v) in o.iter_mut().zip(row) {
                *acc += *v;
            }
        }
        for acc in o.iter_mut() {
            *acc /= count;
        }
    }
    out
}

/// See [`Backend::l2_normalize_rows`](super::Backend::l2_normalize_rows).
pub(crate) fn l2_normalize_rows(x: &mut [f32], cols: usize) {
    if !has_rows("l2_normalize", x.len(), cols) {
        return;
    }
    for row in x.chunks_exact_mut(cols) {
        l2_normalize_row(row);
    }
}

/// One row of [`l2_normalize_rows`].
#[inline(always)]
pub(crate) fn l2_normalize_row(row: &mut [f32]) {
    let mut acc = 0.0f32;
    for &v in row.iter() {
        acc = v.mul_add(v, acc);
    }
    let n = acc.sqrt().max(1e-12);
    for v in row.iter_mut() {
        *v /= n;
    }
}

/// See [`Backend::rmsnorm_rows`](super::Backend::rmsnorm_rows).
pub(crate) fn rmsnorm_rows(x: &mut [f32], cols: usize, gamma: &[f32], eps: f32) {
    if !has_rows("rmsnorm_rows", x.len(), cols) {
        return;
    }
    assert_eq!(gamma.len(), cols, "rmsnorm_rows: gamma is not {cols} long");
    for row in x.chunks_exact_mut(cols) {
        rmsnorm_row(row, gamma, eps);
    }
}

/// One row of [`rmsnorm_rows`].
#[inline(always)]
pub(crate) fn rmsnorm_row(row: &mut [f32], gamma: &[f32], eps: f32) {
    let mut ss = 0.0f32;
    for &v in row.iter() {
        ss = v.mul_add(v, ss);
    }
    let inv = 1.0 / (ss / row.len() as f32 + eps).sqrt();
    for (v, &g) in row.iter_mut().zip(gamma) {
        *v = (*v * inv) * g;
    }
}

/// See [`Backend::rope`](super::Backend::rope).
#[inline(always)]
pub(crate) fn rope(
    x: &mut [f32],
    width: usize,
    heads: usize,
    head_dim: usize,
    positions: &[usize],
    table: &crate::RopeTable,
) {
    check_rope_shapes(x.len(), width, heads, head_dim, positions, table);
    for (row, &pos) in x.chunks_exact_mut(width).zip(positions) {
        rope_row(&mut row[..heads * head_dim], head_dim, table.at(pos));
    }
}

/// Rotates every head of `row` by `angles` (one `(cos, sin)` per pair).
#[inline(always)]
pub(crate) fn rope_row(row: &mut [f32], head_dim: usize, angles: &[(f32, f32)]) {
    for head in row.chunks_exact_mut(head_dim) {
        for (pair, &(c, s)) in head.chunks_exact_mut(2).zip(angles) {
            let (x0, x1) = (pair[0], pair[1]);
            pair[0] = x0 * c - x1 * s;
            pair[1] = x0 * s + x1 * c;
        }
    }
}

/// Checks RoPE's shapes (a caller bug otherwise, hence a panic).
#[inline(always)]
pub(crate) fn check_rope_shapes(
    len: usize,
    width: usize,
    heads: usize,
    head_dim: usize,
    positions: &[usize],
    table: &crate::RopeTable,
) {
    assert!(
        width > 0 && len == positions.len() * width,
        "rope: {len} values are not {} rows of {width}",
        positions.len()
    );
    assert!(
        heads * head_dim <= width && head_dim == 2 * table.pairs(),
        "rope: {heads} heads of {head_dim} in rows of {width} with a table of {} pairs",
        table.pairs()
    );
    assert!(
        positions.iter().all(|&p| p < table.positions()),
        "rope: a position is past the table"
    );
}

/// See [`Backend::swiglu`](super::Backend::swiglu).
#[inline(always)]
pub(crate) fn swiglu(gate_up: &[f32], cols: usize) -> Vec<f32> {
    if !has_rows("swiglu", gate_up.len(), 2 * cols) {
        return Vec::new();
    }
    let mut out = vec![0.0f32; gate_up.len() / 2];
    // Plain loops, not `extend` over a mapped iterator: the iterator's `fold` is a function of
    // its own that need not be inlined, and outside the kernel variant's target features
    // `exp`'s `mul_add`s become calls to a software fused multiply-add (9% of a decode step).
    for (row, dst) in gate_up
        .chunks_exact(2 * cols)
        .zip(out.chunks_exact_mut(cols))
    {
        let (gate, up) = row.split_at(cols);
        for ((d, &g), &u) in dst.iter_mut().zip(gate).zip(up) {
            *d = math::silu(g) * u;
        }
    }
    out
}

/// See [`Backend::attention_causal`](super::Backend::attention_causal).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn attention_causal(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    scale: f32,
) -> Vec<f32> {
    attention_causal_heads(q, k, v, (heads, kv_heads, head_dim), scale, 0..heads)
}

/// [`attention_causal`] of the query heads `hs` only: `[queries][hs.len()·head_dim]`, each
/// head's values the bits of the whole call's. `shape` is `(heads, kv_heads, head_dim)`.
#[inline(always)]
pub(crate) fn attention_causal_heads(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: (usize, usize, usize),
    scale: f32,
    hs: std::ops::Range<usize>,
) -> Vec<f32> {
    let (heads, kv_heads, head_dim) = shape;
    let (queries, keys) = check_causal_shapes(q.len(), k.len(), v.len(), heads, kv_heads, head_dim);
    assert!(hs.end <= heads, "attention_causal: heads {hs:?} of {heads}");
    let (width, kv_width, group) = (heads * head_dim, kv_heads * head_dim, heads / kv_heads);
    let out_width = hs.len() * head_dim;
    let mut out = vec![0.0f32; queries * out_width];
    let mut scores = Vec::with_capacity(keys);
    // The keys of one key-value head transposed, dimension-major, in blocks of 8 keys (zero
    // past the last): `kt[(j / 8)·head_dim·8 + d·8 + j % 8]`. Eight keys' scores then take one
    // vector multiply-add per dimension, each lane still one key's own chain over d in order.
    // Measured with SmolLM2 decoding 8 streams to 256 tokens: 137 tokens/s against 125–129
    // reading the keys in place, eight scalar chains at a time.
    let blocks = keys.div_ceil(8);
    let mut kt = vec![0.0f32; blocks * head_dim * 8];
    let mut transposed = None;
    for h in hs.clone() {
        let g = h / group;
        if transposed != Some(g) {
            // Every key's entries are written; the padding past the last stays zero.
            for j in 0..keys {
                let key = &k[j * kv_width + g * head_dim..][..head_dim];
                let block = &mut kt[(j / 8) * head_dim * 8..][..head_dim * 8];
                for (d, &x) in key.iter().enumerate() {
                    block[d * 8 + j % 8] = x;
                }
            }
            transposed = Some(g);
        }
        for i in 0..queries {
            let visible = keys - queries + i + 1;
            let qi = &q[i * width + h * head_dim..][..head_dim];
            scores.clear();
            for block in kt.chunks_exact(head_dim * 8).take(visible.div_ceil(8)) {
                let mut acc = [0.0f32; 8];
                for (&x, lanes) in qi.iter().zip(block.chunks_exact(8)) {
                    for t in 0..8 {
                        acc[t] = x.mul_add(lanes[t], acc[t]);
                    }
                }
                let take = (visible - scores.len()).min(8);
                scores.extend(acc[..take].iter().map(|&a| a * scale));
            }
            math::softmax_row(&mut scores);
            // Keys outer, dimensions inner: each output still accumulates its keys in order.
            let o = &mut out[i * out_width + (h - hs.start) * head_dim..][..head_dim];
            for (j, &p) in scores.iter().enumerate() {
                let vj = &v[j * kv_width + g * head_dim..][..head_dim];
                for (o, &x) in o.iter_mut().zip(vj) {
                    *o = p.mul_add(x, *o);
                }
            }
        }
    }
    out
}

/// Checks causal attention's shapes (a caller bug otherwise, hence a panic) and returns
/// `(queries, keys)`.
#[inline(always)]
pub(crate) fn check_causal_shapes(
    q: usize,
    k: usize,
    v: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
) -> (usize, usize) {
    assert!(
        head_dim > 0 && kv_heads > 0 && heads.is_multiple_of(kv_heads),
        "attention_causal: {heads} heads over {kv_heads} kv heads of {head_dim}"
    );
    let (width, kv_width) = (heads * head_dim, kv_heads * head_dim);
    assert!(
        q.is_multiple_of(width) && k.is_multiple_of(kv_width) && k == v,
        "attention_causal: q {q}, k {k}, v {v} values for rows of {width} and {kv_width}"
    );
    let (queries, keys) = (q / width, k / kv_width);
    assert!(
        queries <= keys,
        "attention_causal: {queries} queries but only {keys} keys"
    );
    (queries, keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::tests::uniform_vec as random;

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Largest |got − want| / max(|want|, floor).
    fn worst(got: &[f32], want: &[f64], floor: f64) -> f64 {
        got.iter()
            .zip(want)
            .map(|(g, w)| (*g as f64 - w).abs() / w.abs().max(floor))
            .fold(0.0, f64::max)
    }

    #[test]
    fn layernorm_matches_f64_within_1e_5_relative() {
        let (rows, cols) = (7, 384);
        let mut x = random(1, rows * cols);
        for (i, v) in x.iter_mut().enumerate() {
            *v = *v * 3.0 + (i % 5) as f32;
        }
        let gamma = random(2, cols);
        let beta = random(3, cols);
        let mut want = Vec::new();
        for row in x.chunks(cols) {
            let mean = row.iter().map(|v| *v as f64).sum::<f64>() / cols as f64;
            let var = row.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / cols as f64;
            let inv = 1.0 / (var + 1e-12).sqrt();
            want.extend(
                row.iter()
                    .enumerate()
                    .map(|(j, v)| (*v as f64 - mean) * inv * gamma[j] as f64 + beta[j] as f64),
            );
        }
        layernorm_rows(&mut x, cols, &gamma, &beta, 1e-12);
        // Bound: outputs are O(1); f32 sums over 384 terms lose ~1e-6 relative.
        let err = worst(&x, &want, 1.0);
        assert!(err < 1e-5, "layernorm error {err:e}");
    }

    #[test]
    fn attention_matches_f64_within_1e_5_and_ignores_padding() {
        let (heads, head_dim, seq) = (2, 8, 6);
        let hidden = heads * head_dim;
        let (q, k, v) = (
            random(4, seq * hidden),
            random(5, seq * hidden),
            random(6, seq * hidden),
        );
        let valid = 4;
        let mask: Vec<u8> = (0..seq).map(|t| u8::from(t < valid)).collect();
        let scale = 1.0 / (head_dim as f32).sqrt();
        let got = attention(&q, &k, &v, &mask, 1, seq, heads, head_dim, scale);
        let mut want = vec![0.0f64; seq * hidden];
        for h in 0..heads {
            for i in 0..valid {
                let s: Vec<f64> = (0..valid)
                    .map(|j| {
                        (0..head_dim)
                            .map(|d| {
                                q[i * hidden + h * head_dim + d] as f64
                                    * k[j * hidden + h * head_dim + d] as f64
                            })
                            .sum::<f64>()
                            * scale as f64
                    })
                    .collect();
                let max = s.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..head_dim {
                    want[i * hidden + h * head_dim + d] = (0..valid)
                        .map(|j| e[j] / z * v[j * hidden + h * head_dim + d] as f64)
                        .sum();
                }
            }
        }
        // Bound: softmax weights carry ~1 ulp from exp and the division; sums of ≤ 6 terms.
        let err = worst(&got, &want, 1.0);
        assert!(err < 1e-5, "attention error {err:e}");
        assert!(
            got[valid * hidden..].iter().all(|x| *x == 0.0),
            "padded queries must be zero"
        );
    }

    #[test]
    fn attention_is_batch_invariant_under_padding_and_position() {
        let (heads, head_dim, hidden) = (2, 4, 8);
        let len = 3;
        let (q, k, v) = (
            random(7, len * hidden),
            random(8, len * hidden),
            random(9, len * hidden),
        );
        let scale = 0.5;
        let alone = attention(&q, &k, &v, &[1; 3], 1, len, heads, head_dim, scale);
        // The same sequence in slot 1 of a batch of 3, padded to 5, among other sequences.
        let (batch, seq) = (3, 5);
        let mut bq = random(10, batch * seq * hidden);
        let mut bk = random(11, batch * seq * hidden);
        let mut bv = random(12, batch * seq * hidden);
        let slot = seq * hidden;
        bq[slot..slot + len * hidden].copy_from_slice(&q);
        bk[slot..slot + len * hidden].copy_from_slice(&k);
        bv[slot..slot + len * hidden].copy_from_slice(&v);
        let mut mask = vec![1u8; batch * seq];
        mask[seq + len..2 * seq].fill(0);
        let batched = attention(&bq, &bk, &bv, &mask, batch, seq, heads, head_dim, scale);
        assert_eq!(bits(&batched[slot..slot + len * hidden]), bits(&alone));
    }

    #[test]
    fn mean_pool_and_l2_normalize_match_f64() {
        let (batch, seq, cols) = (2, 5, 16);
        let x = random(13, batch * seq * cols);
        let mask = [1, 1, 1, 0, 0, 1, 1, 1, 1, 1];
        let mut pooled = mean_pool(&x, &mask, batch, seq, cols);
        for b in 0..batch {
            let n = mask[b * seq..(b + 1) * seq]
                .iter()
                .filter(|m| **m != 0)
                .count();
            for c in 0..cols {
                let want: f64 = (0..seq)
                    .filter(|t| mask[b * seq + t] != 0)
                    .map(|t| x[(b * seq + t) * cols + c] as f64)
                    .sum::<f64>()
                    / n as f64;
                assert!(
                    (pooled[b * cols + c] as f64 - want).abs() < 1e-6,
                    "pool {b} {c}"
                );
            }
        }
        let before = pooled.clone();
        l2_normalize_rows(&mut pooled, cols);
        for (row, orig) in pooled.chunks(cols).zip(before.chunks(cols)) {
            let norm: f64 = orig.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
            for (g, o) in row.iter().zip(orig) {
                assert!((*g as f64 - *o as f64 / norm).abs() < 1e-6);
            }
            let len: f64 = row.iter().map(|v| (*v as f64).powi(2)).sum();
            assert!((len - 1.0).abs() < 1e-6);
        }
        // A zero row stays zero instead of dividing by zero.
        let mut zero = vec![0.0f32; cols];
        l2_normalize_rows(&mut zero, cols);
        assert!(zero.iter().all(|v| *v == 0.0));
        // A fully padded sequence pools to zeros.
        assert!(
            mean_pool(&x[..seq * cols], &[0; 5], 1, seq, cols)
                .iter()
                .all(|v| *v == 0.0)
        );
    }

    #[test]
    fn embedding_gather_checks_ids() {
        let table: Vec<f32> = (0..12).map(|i| i as f32).collect();
        assert_eq!(
            embedding_gather(&table, 4, &[2, 0]).unwrap(),
            vec![8.0, 9.0, 10.0, 11.0, 0.0, 1.0, 2.0, 3.0]
        );
        let err = embedding_gather(&table, 4, &[3]).unwrap_err().to_string();
        assert!(err.contains("token id 3"), "{err}");
        assert!(embedding_gather(&table, 0, &[0]).is_err());
        let mut x = vec![1.0f32, 2.0];
        add_inplace(&mut x, &[0.5, -2.0]);
        assert_eq!(x, vec![1.5, 0.0]);
    }
}
