//! GPT-2 byte-level BPE tokenization from a GGUF file's vocabulary and merges, giving exactly
//! the ids of the reference `tokenizers` library built from the same vocabulary and merges.
//!
//! The pipeline, in the reference's order (pre-tokenizer `smollm`):
//!
//! 1. Every numeric character is cut out as a piece of its own (the digits pre-tokenizer with
//!    `individual_digits`).
//! 2. Each piece is split by the GPT-2 pattern
//!    `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`, written out
//!    here as a scanner (no regex engine; the look-ahead is one comparison).
//! 3. Each piece's UTF-8 bytes become the byte-level alphabet's characters (printable bytes
//!    stand for themselves, the others for code points from U+0100 on), which start as one
//!    symbol each.
//! 4. The adjacent pair with the lowest merge rank is merged, leftmost first on ties, until no
//!    pair has a merge.
//!
//! Text is never parsed for special tokens: `<|im_start|>` typed by a user is ordinary text, and
//! only the chat template places the real control tokens (no prompt injection through them).
//! The character classes come from [`tables`], probed from the reference library on every code
//! point, so our Unicode version cannot change an id.

mod tables;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use crate::Error;
use crate::gguf::{Gguf, Value};
use crate::tokenizer::in_ranges;

fn bad(reason: impl Into<String>) -> Error {
    Error::BadTokenizer {
        reason: reason.into(),
    }
}

/// GGUF token types (`tokenizer.ggml.token_type`).
const TOKEN_CONTROL: i32 = 3;

/// The byte-level alphabet: byte `b` is written as this character.
pub(crate) fn byte_char(b: u8) -> char {
    // Printable Latin-1 bytes stand for themselves; the other 68 bytes take U+0100, U+0101, …
    // in byte order (GPT-2's `bytes_to_unicode`).
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(b) {
        return char::from(b);
    }
    let rank = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(0x100 + rank).unwrap_or('\u{100}')
}

/// A loaded byte-level BPE tokenizer. Immutable; share it across threads.
#[derive(Debug, Clone)]
pub struct BpeTokenizer {
    /// The token of each byte's alphabet character; `None` where the vocabulary lacks it
    /// (SmolLM2's lacks 21, such as 0x04 and 0xff): such bytes are dropped, as the reference
    /// drops a character it has no token for when there is no unknown token.
    byte_ids: [Option<u32>; 256],
    /// `(left, right) → (rank, merged)`.
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Each token's bytes, for decoding (control tokens: their text).
    bytes: Vec<Vec<u8>>,
    /// Whether each token is a control token (`<|im_start|>`, …).
    control: Vec<bool>,
}

impl BpeTokenizer {
    /// Reads `tokenizer.ggml.{model, pre, tokens, token_type, merges}` from a GGUF file.
    pub(crate) fn from_gguf(g: &Gguf<'_>) -> Result<BpeTokenizer, Error> {
        let meta = |e: Error| bad(e.to_string());
        let model = g.str("tokenizer.ggml.model").map_err(meta)?;
        if model != "gpt2" {
            return Err(bad(format!(
                "tokenizer model {model:?}; this build runs byte-level BPE (\"gpt2\")"
            )));
        }
        let pre = g.str("tokenizer.ggml.pre").map_err(meta)?;
        if pre != "smollm" {
            return Err(bad(format!(
                "pre-tokenizer {pre:?}; this build runs \"smollm\" (digits one by one, then GPT-2)"
            )));
        }
        let tokens = strings(g.array("tokenizer.ggml.tokens").map_err(meta)?, "tokens")?;
        let merge_lines = strings(g.array("tokenizer.ggml.merges").map_err(meta)?, "merges")?;
        let control = match g.metadata.get("tokenizer.ggml.token_type") {
            None => vec![false; tokens.len()],
            Some(Value::Array(types)) if types.len() == tokens.len() => types
                .iter()
                .map(|t| matches!(t, Value::I32(TOKEN_CONTROL)))
                .collect(),
            Some(_) => {
                return Err(bad(
                    "tokenizer.ggml.token_type is not one i32 per token".to_string()
                ));
            }
        };
        if tokens.len() > u32::MAX as usize / 2 {
            return Err(bad("too many tokens"));
        }
        let mut vocab: HashMap<&str, u32> = HashMap::with_capacity(tokens.len());
        for (id, t) in tokens.iter().enumerate() {
            // The first occurrence wins, as in the reference's vocabulary map built in order.
            vocab.entry(t.as_str()).or_insert(id as u32);
        }
        let mut byte_ids = [None; 256];
        for (b, slot) in byte_ids.iter_mut().enumerate() {
            *slot = vocab.get(byte_char(b as u8).to_string().as_str()).copied();
        }
        if byte_ids.iter().all(Option::is_none) {
            return Err(bad(
                "the vocabulary holds none of the byte-level characters",
            ));
        }
        let mut merges = HashMap::with_capacity(merge_lines.len());
        for (rank, line) in merge_lines.iter().enumerate() {
            let (a, b) = line
                .split_once(' ')
                .ok_or_else(|| bad(format!("merge {rank} ({line:?}) is not two tokens")))?;
            let id = |s: &str| {
                vocab.get(s).copied().ok_or_else(|| {
                    bad(format!(
                        "merge {rank} ({line:?}) uses {s:?}, which is not in the vocabulary"
                    ))
                })
            };
            let merged = id(&format!("{a}{b}"))?;
            // A repeated pair keeps its first (lowest) rank.
            merges
                .entry((id(a)?, id(b)?))
                .or_insert((rank as u32, merged));
        }
        let mut unmap = HashMap::with_capacity(256);
        for b in 0..=255u8 {
            unmap.insert(byte_char(b), b);
        }
        let bytes = tokens
            .iter()
            .zip(&control)
            .map(|(t, &is_control)| {
                if is_control {
                    return t.as_bytes().to_vec();
                }
                let mut out = Vec::with_capacity(t.len());
                for c in t.chars() {
                    match unmap.get(&c) {
                        Some(&b) => out.push(b),
                        // Not a byte-level character: its own UTF-8.
                        None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                    }
                }
                out
            })
            .collect();
        Ok(BpeTokenizer {
            byte_ids,
            merges,
            bytes,
            control,
        })
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.bytes.len()
    }

    /// The ids of `text` (no special tokens added or recognised).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 1);
        for piece in pre_tokenize(text) {
            self.merge_piece(piece.as_bytes(), &mut ids);
        }
        ids
    }

    /// Appends the BPE of one pre-tokenized piece to `out`.
    fn merge_piece(&self, piece: &[u8], out: &mut Vec<u32>) {
        #[derive(Clone, Copy)]
        struct Symbol {
            id: u32,
            prev: usize,
            next: usize,
        }
        const NONE: usize = usize::MAX;
        let ids: Vec<u32> = piece
            .iter()
            .filter_map(|&b| self.byte_ids[b as usize])
            .collect();
        let n = ids.len();
        let mut symbols: Vec<Symbol> = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| Symbol {
                id,
                prev: if i == 0 { NONE } else { i - 1 },
                next: if i + 1 == n { NONE } else { i + 1 },
            })
            .collect();
        // (rank, left position, left id, right id): stale entries are skipped when popped.
        let mut heap = BinaryHeap::new();
        let pair = |symbols: &[Symbol], left: usize| -> Option<Reverse<(u32, usize, u32, u32)>> {
            let right = symbols[left].next;
            if right == NONE {
                return None;
            }
            let (a, b) = (symbols[left].id, symbols[right].id);
            self.merges
                .get(&(a, b))
                .map(|&(rank, _)| Reverse((rank, left, a, b)))
        };
        for i in 0..n {
            heap.extend(pair(&symbols, i));
        }
        let mut alive = vec![true; n];
        while let Some(Reverse((_, left, a, b))) = heap.pop() {
            let right = symbols[left].next;
            if !alive[left] || right == NONE || symbols[left].id != a || symbols[right].id != b {
                continue;
            }
            let Some(&(_, merged)) = self.merges.get(&(a, b)) else {
                continue;
            };
            symbols[left].id = merged;
            alive[right] = false;
            let after = symbols[right].next;
            symbols[left].next = after;
            if after != NONE {
                symbols[after].prev = left;
            }
            let before = symbols[left].prev;
            if before != NONE {
                heap.extend(pair(&symbols, before));
            }
            heap.extend(pair(&symbols, left));
        }
        let mut i = if n == 0 { NONE } else { 0 };
        while i != NONE {
            out.push(symbols[i].id);
            i = symbols[i].next;
        }
    }

    /// The bytes of `ids` (control tokens as their text; an id outside the vocabulary adds
    /// nothing). Not always UTF-8: a character may span tokens; see [`Utf8Stream`].
    pub fn decode_bytes(&self, ids: &[u32]) -> Vec<u8> {
        let mut out = Vec::new();
        for &id in ids {
            if let Some(b) = self.bytes.get(id as usize) {
                out.extend_from_slice(b);
            }
        }
        out
    }

    /// The bytes of one token (empty outside the vocabulary).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.bytes.get(id as usize).map_or(&[], Vec::as_slice)
    }

    /// Whether `id` is a control token (`<|im_start|>`, `<|im_end|>`, `<|endoftext|>`, …).
    pub fn is_control(&self, id: u32) -> bool {
        self.control.get(id as usize).copied().unwrap_or(false)
    }
}

fn strings<'v>(values: &'v [Value], what: &str) -> Result<Vec<&'v String>, Error> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) => Ok(s),
            _ => Err(bad(format!("tokenizer.ggml.{what}[{i}] is not a string"))),
        })
        .collect()
}

/// Turns token bytes into text as they come, holding back an incomplete UTF-8 sequence until
/// its last byte arrives (a character may span tokens). Invalid sequences become U+FFFD.
#[derive(Debug, Default, Clone)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Adds `bytes` and returns the text that is now complete.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let good = e.valid_up_to();
                    // Valid up to `good` by the error's own account.
                    out.push_str(std::str::from_utf8(&self.pending[..good]).unwrap_or_default());
                    match e.error_len() {
                        // An invalid sequence: replace it and go on.
                        Some(len) => {
                            out.push('\u{FFFD}');
                            self.pending.drain(..good + len);
                        }
                        // Incomplete at the end: wait for more.
                        None => {
                            self.pending.drain(..good);
                            return out;
                        }
                    }
                }
            }
        }
    }

    /// What is left at the end of the stream (an incomplete sequence becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Letter,
    Number,
    Space,
    Other,
}

fn class(c: char) -> Class {
    if c.is_ascii() {
        return match c {
            'a'..='z' | 'A'..='Z' => Class::Letter,
            '0'..='9' => Class::Number,
            _ if in_ranges(tables::SPACE, c) => Class::Space,
            _ => Class::Other,
        };
    }
    if in_ranges(tables::LETTER, c) {
        Class::Letter
    } else if in_ranges(tables::NUMBER, c) {
        Class::Number
    } else if in_ranges(tables::SPACE, c) {
        Class::Space
    } else {
        Class::Other
    }
}

/// The pieces of `text`, in order, covering it exactly.
pub(crate) fn pre_tokenize(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if in_ranges(tables::DIGIT, c) {
            if start < i {
                gpt2_split(&text[start..i], &mut pieces);
            }
            let end = i + c.len_utf8();
            pieces.push(&text[i..end]);
            start = end;
        }
    }
    if start < text.len() {
        gpt2_split(&text[start..], &mut pieces);
    }
    pieces
}

/// The GPT-2 pattern's matches in `text`, which cover it.
fn gpt2_split<'t>(text: &'t str, out: &mut Vec<&'t str>) {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let at = |i: usize| chars.get(i).map(|&(_, c)| c);
    let offset = |i: usize| chars.get(i).map_or(text.len(), |&(o, _)| o);
    // The end of the run of `cls` starting at `i`.
    let run = |mut i: usize, cls: Class| {
        while at(i).is_some_and(|c| class(c) == cls) {
            i += 1;
        }
        i
    };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i].1;
        let end = 'matched: {
            // 's|'t|'re|'ve|'m|'ll|'d
            if c == '\'' {
                let (n1, n2) = (at(i + 1), at(i + 2));
                match (n1, n2) {
                    (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l')) => {
                        break 'matched i + 3;
                    }
                    (Some('s' | 't' | 'm' | 'd'), _) => break 'matched i + 2,
                    _ => {}
                }
            }
            // ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+'
            let (first, lead) = if c == ' ' {
                (i + 1, at(i + 1))
            } else {
                (i, Some(c))
            };
            if let Some(lead) = lead {
                let cls = class(lead);
                if cls != Class::Space {
                    break 'matched run(first, cls);
                }
            }
            // '\s+(?!\S)': the whitespace run, less its last character when text follows;
            // else '\s+'.
            let end = run(i, Class::Space);
            if end < chars.len() && end - i > 1 {
                end - 1
            } else {
                end
            }
        };
        out.push(&text[offset(i)..offset(end)]);
        i = end;
    }
}

#[cfg(test)]
mod tests;
