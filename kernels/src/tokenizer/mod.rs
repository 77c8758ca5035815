//! BERT WordPiece tokenization, giving exactly the ids of a model's `tokenizer.json`.
//!
//! The pipeline is the one the reference `tokenizers` library runs for a `BertNormalizer` +
//! `BertPreTokenizer` + `WordPiece` + `TemplateProcessing` tokenizer, in its order:
//!
//! 1. Added tokens (`[CLS]`, `[SEP]`, `[MASK]`, …) written literally in the text are cut out
//!    first, leftmost-longest, and map to their ids untouched.
//! 2. Each remaining piece is normalised: control/format characters removed and whitespace made
//!    a space (`clean_text`), CJK ideographs surrounded by spaces, accents stripped (NFD, then
//!    nonspacing marks dropped), lowercased — each step only if the file enables it.
//! 3. Split on whitespace (dropped) and punctuation (each its own word).
//! 4. Each word → the longest vocabulary prefix, then `##`-continuations; a word that cannot be
//!    covered, or is over `max_input_chars_per_word` characters, is one `[UNK]`.
//! 5. Truncated to `max_len − 2` tokens, then `[CLS] … [SEP]`.
//!
//! The character classes come from [`tables`], probed from the reference library on every code
//! point, so our Unicode version cannot change an id.

mod tables;

use std::collections::HashMap;

use serde::Deserialize;
use unicode_normalization::UnicodeNormalization;

use crate::Error;

/// The parts of `tokenizer.json` we read; everything else in the file is ignored.
#[derive(Deserialize)]
struct TokenizerJson {
    #[serde(default)]
    added_tokens: Vec<AddedTokenJson>,
    normalizer: Option<NormalizerJson>,
    pre_tokenizer: Option<TypeOnly>,
    post_processor: Option<PostProcessorJson>,
    model: WordPieceJson,
}

#[derive(Deserialize)]
struct AddedTokenJson {
    id: u32,
    content: String,
    #[serde(default)]
    normalized: bool,
}

#[derive(Deserialize)]
struct NormalizerJson {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default = "yes")]
    clean_text: bool,
    #[serde(default = "yes")]
    handle_chinese_chars: bool,
    #[serde(default)]
    strip_accents: Option<bool>,
    #[serde(default = "yes")]
    lowercase: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
struct TypeOnly {
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct PostProcessorJson {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    single: Vec<TemplatePiece>,
    /// BertProcessing: `["[SEP]", 102]`.
    #[serde(default)]
    sep: Option<(String, u32)>,
    /// BertProcessing: `["[CLS]", 101]`.
    #[serde(default)]
    cls: Option<(String, u32)>,
    #[serde(default)]
    special_tokens: HashMap<String, SpecialTokenJson>,
}

#[derive(Deserialize)]
enum TemplatePiece {
    SpecialToken { id: String },
    Sequence { id: String },
}

#[derive(Deserialize)]
struct SpecialTokenJson {
    ids: Vec<u32>,
}

#[derive(Deserialize)]
struct WordPieceJson {
    #[serde(rename = "type")]
    kind: String,
    unk_token: String,
    #[serde(default = "hashes")]
    continuing_subword_prefix: String,
    #[serde(default = "hundred")]
    max_input_chars_per_word: usize,
    vocab: HashMap<String, u32>,
}

fn hashes() -> String {
    "##".into()
}

fn hundred() -> usize {
    100
}

/// A loaded WordPiece tokenizer. Immutable; share it across threads.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    vocab: HashMap<String, u32>,
    vocab_size: usize,
    unk: u32,
    prefix: String,
    max_word_chars: usize,
    clean_text: bool,
    cjk: bool,
    strip_accents: bool,
    lowercase: bool,
    cls: u32,
    sep: u32,
    /// Literal added tokens, longest first (ties: lowest id), for leftmost-longest matching.
    added: Vec<(String, u32)>,
}

fn bad(reason: impl Into<String>) -> Error {
    Error::BadTokenizer {
        reason: reason.into(),
    }
}

impl Tokenizer {
    /// Parses a `tokenizer.json`. Only the BERT configuration is supported (WordPiece model,
    /// BertNormalizer or none, BertPreTokenizer, a `[CLS] $A [SEP]` template or BertProcessing);
    /// anything else is an error naming the part, never a silently different tokenization.
    pub fn from_json(bytes: &[u8]) -> Result<Tokenizer, Error> {
        let json: TokenizerJson =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not a tokenizer.json: {e}")))?;
        let model = json.model;
        if model.kind != "WordPiece" {
            return Err(bad(format!(
                "model type {:?} is not supported; only WordPiece",
                model.kind
            )));
        }
        let vocab_size = model.vocab.len();
        if let Some((token, id)) = model
            .vocab
            .iter()
            .find(|(_, id)| **id as usize >= vocab_size)
        {
            return Err(bad(format!(
                "vocab id {id} of {token:?} is outside 0..{vocab_size}: ids must be dense"
            )));
        }
        let unk = *model.vocab.get(&model.unk_token).ok_or_else(|| {
            bad(format!(
                "unk_token {:?} is not in the vocab",
                model.unk_token
            ))
        })?;
        let (clean_text, cjk, strip_accents, lowercase) = match json.normalizer {
            None => (false, false, false, false),
            Some(n) if n.kind == "BertNormalizer" => (
                n.clean_text,
                n.handle_chinese_chars,
                n.strip_accents.unwrap_or(n.lowercase),
                n.lowercase,
            ),
            Some(n) => {
                return Err(bad(format!(
                    "normalizer {:?} is not supported; only BertNormalizer",
                    n.kind
                )));
            }
        };
        match json.pre_tokenizer {
            Some(p) if p.kind == "BertPreTokenizer" => {}
            Some(p) => {
                return Err(bad(format!(
                    "pre_tokenizer {:?} is not supported; only BertPreTokenizer",
                    p.kind
                )));
            }
            None => return Err(bad("pre_tokenizer is missing; expected BertPreTokenizer")),
        }
        let (cls, sep) = match json.post_processor {
            Some(p) => special_ids(&p, vocab_size)?,
            None => return Err(bad("post_processor is missing; expected [CLS] $A [SEP]")),
        };
        let mut added = Vec::new();
        for t in json.added_tokens {
            if t.normalized {
                return Err(bad(format!(
                    "added token {:?} is normalized; only literal added tokens are supported",
                    t.content
                )));
            }
            if t.content.is_empty() || t.id as usize >= vocab_size {
                return Err(bad(format!(
                    "added token {:?} (id {}) is empty or outside the vocab",
                    t.content, t.id
                )));
            }
            added.push((t.content, t.id));
        }
        added.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        Ok(Tokenizer {
            vocab: model.vocab,
            vocab_size,
            unk,
            prefix: model.continuing_subword_prefix,
            max_word_chars: model.max_input_chars_per_word,
            clean_text,
            cjk,
            strip_accents,
            lowercase,
            cls,
            sep,
            added,
        })
    }

    /// Number of ids; every id this tokenizer emits is below it.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// `[CLS] tokens… [SEP]`, the tokens cut to `max_len − 2` (so at most `max_len` ids;
    /// `max_len` below 2 is treated as 2).
    pub fn encode(&self, text: &str, max_len: usize) -> Vec<u32> {
        let budget = max_len.max(2) - 2;
        let mut ids = vec![self.cls];
        for piece in self.split_added(text) {
            if ids.len() > budget {
                break;
            }
            match piece {
                Piece::Added(id) => ids.push(id),
                Piece::Text(text) => {
                    let normalized = self.normalize(text);
                    for word in pre_tokenize(&normalized) {
                        if ids.len() > budget {
                            break;
                        }
                        self.word_piece(word, &mut ids);
                    }
                }
            }
        }
        ids.truncate(budget + 1);
        ids.push(self.sep);
        ids
    }

    /// Cuts out literal added tokens, leftmost first, longest at a position.
    fn split_added<'a>(&self, text: &'a str) -> Vec<Piece<'a>> {
        let mut pieces = Vec::new();
        let mut start = 0;
        let mut pos = 0;
        while pos < text.len() {
            let rest = &text[pos..];
            if let Some((token, id)) = self
                .added
                .iter()
                .find(|(t, _)| rest.starts_with(t.as_str()))
            {
                if start < pos {
                    pieces.push(Piece::Text(&text[start..pos]));
                }
                pieces.push(Piece::Added(*id));
                pos += token.len();
                start = pos;
            } else {
                pos += rest.chars().next().map_or(1, char::len_utf8);
            }
        }
        if start < text.len() {
            pieces.push(Piece::Text(&text[start..]));
        }
        pieces
    }

    fn normalize(&self, text: &str) -> String {
        let mut s = String::with_capacity(text.len());
        for c in text.chars() {
            if self.clean_text {
                if in_ranges(tables::REMOVED, c) {
                    continue;
                }
                if in_ranges(tables::CLEAN_SPACE, c) {
                    s.push(' ');
                    continue;
                }
            }
            if self.cjk && in_ranges(tables::CJK, c) {
                s.push(' ');
                s.push(c);
                s.push(' ');
            } else {
                s.push(c);
            }
        }
        if self.strip_accents {
            s = s
                .nfd()
                .filter(|&c| !in_ranges(tables::NONSPACING_MARK, c))
                .collect();
        }
        if self.lowercase {
            let mut lower = String::with_capacity(s.len());
            for c in s.chars() {
                match tables::LOWERCASE.binary_search_by_key(&(c as u32), |&(k, _)| k) {
                    Ok(i) => lower.push_str(tables::LOWERCASE[i].1),
                    Err(_) => lower.push(c),
                }
            }
            s = lower;
        }
        s
    }

    /// Appends the ids of one word: greedy longest match, `[UNK]` for the whole word if any
    /// part cannot be matched or the word is too long.
    fn word_piece(&self, word: &str, ids: &mut Vec<u32>) {
        if word.chars().count() > self.max_word_chars {
            ids.push(self.unk);
            return;
        }
        let first = ids.len();
        let mut start = 0;
        let mut candidate = String::with_capacity(word.len() + self.prefix.len());
        while start < word.len() {
            let mut end = word.len();
            let mut found = None;
            while start < end {
                candidate.clear();
                if start > 0 {
                    candidate.push_str(&self.prefix);
                }
                candidate.push_str(&word[start..end]);
                if let Some(&id) = self.vocab.get(&candidate) {
                    found = Some(id);
                    break;
                }
                end -= word[start..end]
                    .chars()
                    .next_back()
                    .map_or(1, char::len_utf8);
            }
            match found {
                Some(id) => ids.push(id),
                None => {
                    ids.truncate(first);
                    ids.push(self.unk);
                    return;
                }
            }
            start = end;
        }
    }
}

/// A BERT `tokenizer.json` (lowercasing BertNormalizer, BertPreTokenizer, `[CLS] $A [SEP]`)
/// over `vocab`, whose first `specials` entries are literal added tokens and which must begin
/// `[PAD] [UNK] [CLS] [SEP]`; for seeded models and tests.
pub(crate) fn bert_json(
    vocab: &[&str],
    specials: usize,
    max_word_chars: usize,
) -> serde_json::Value {
    let map: serde_json::Map<String, serde_json::Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i.into()))
        .collect();
    let added: Vec<serde_json::Value> = vocab[..specials]
        .iter()
        .enumerate()
        .map(|(i, t)| serde_json::json!({"id": i, "content": t, "special": true, "normalized": false}))
        .collect();
    serde_json::json!({
        "version": "1.0",
        "added_tokens": added,
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                       "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                               "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": max_word_chars, "vocab": map},
    })
}

enum Piece<'a> {
    Added(u32),
    Text(&'a str),
}

/// The `[CLS]` and `[SEP]` ids of a `[CLS] $A [SEP]` template or a BertProcessing.
fn special_ids(p: &PostProcessorJson, vocab_size: usize) -> Result<(u32, u32), Error> {
    let (cls, sep) = match p.kind.as_str() {
        "BertProcessing" => match (&p.cls, &p.sep) {
            (Some((_, cls)), Some((_, sep))) => (*cls, *sep),
            _ => return Err(bad("BertProcessing needs cls and sep")),
        },
        "TemplateProcessing" => {
            let id_of = |name: &str| -> Result<u32, Error> {
                match p.special_tokens.get(name).map(|t| t.ids.as_slice()) {
                    Some([id]) => Ok(*id),
                    _ => Err(bad(format!(
                        "special token {name:?} of the template needs exactly one id"
                    ))),
                }
            };
            match p.single.as_slice() {
                [
                    TemplatePiece::SpecialToken { id: cls },
                    TemplatePiece::Sequence { id: a },
                    TemplatePiece::SpecialToken { id: sep },
                ] if a == "A" => (id_of(cls)?, id_of(sep)?),
                _ => return Err(bad("single template must be [CLS] $A [SEP]")),
            }
        }
        other => {
            return Err(bad(format!(
                "post_processor {other:?} is not supported; only TemplateProcessing or \
                 BertProcessing"
            )));
        }
    };
    if cls as usize >= vocab_size || sep as usize >= vocab_size {
        return Err(bad("[CLS] or [SEP] id is outside the vocab"));
    }
    Ok((cls, sep))
}

/// Splits on whitespace (dropped) and punctuation (kept, one character per word).
fn pre_tokenize(s: &str) -> Vec<&str> {
    let mut words = Vec::new();
    let mut start = None;
    for (i, c) in s.char_indices() {
        if in_ranges(tables::SPLIT_SPACE, c) {
            if let Some(st) = start.take() {
                words.push(&s[st..i]);
            }
        } else if in_ranges(tables::PUNCTUATION, c) {
            if let Some(st) = start.take() {
                words.push(&s[st..i]);
            }
            words.push(&s[i..i + c.len_utf8()]);
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(st) = start {
        words.push(&s[st..]);
    }
    words
}

/// Whether `c` lies in one of `ranges` (sorted, disjoint, inclusive).
pub(crate) fn in_ranges(ranges: &[(u32, u32)], c: char) -> bool {
    let c = c as u32;
    ranges
        .binary_search_by(|&(lo, hi)| {
            if hi < c {
                std::cmp::Ordering::Less
            } else if lo > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

#[cfg(test)]
mod tests;
