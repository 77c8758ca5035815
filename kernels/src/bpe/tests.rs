use super::*;
use crate::gguf::{Gguf, Value, write};

#[derive(serde::Deserialize)]
struct Fixtures {
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
}

fn smollm2() -> BpeTokenizer {
    let bytes = std::fs::read(crate::testing::smollm2_dir().join("model.gguf")).unwrap();
    BpeTokenizer::from_gguf(&Gguf::parse(&bytes).unwrap()).unwrap()
}

#[test]
fn smollm2_ids_equal_the_reference_tokenizer() {
    let tok = smollm2();
    let fixtures: Fixtures = serde_json::from_str(include_str!("fixtures.json")).unwrap();
    assert!(fixtures.cases.len() >= 30);
    for case in &fixtures.cases {
        assert_eq!(tok.encode(&case.text), case.ids, "text {:?}", case.text);
        // Byte-level BPE loses nothing but the bytes the vocabulary lacks.
        let kept: Vec<u8> = case
            .text
            .bytes()
            .filter(|&b| tok.byte_ids[b as usize].is_some())
            .collect();
        assert_eq!(
            tok.decode_bytes(&case.ids),
            kept,
            "decoding {:?}",
            case.text
        );
    }
    assert_eq!(tok.vocab_size(), 49_152);
    for (id, text) in [(0, "<|endoftext|>"), (1, "<|im_start|>"), (2, "<|im_end|>")] {
        assert!(tok.is_control(id));
        assert_eq!(tok.token_bytes(id), text.as_bytes());
    }
    assert!(!tok.is_control(19556));
    assert!(tok.token_bytes(1 << 30).is_empty());
}

#[test]
fn byte_alphabet_is_gpt2s() {
    assert_eq!(byte_char(b'a'), 'a');
    assert_eq!(byte_char(b' '), 'Ġ');
    assert_eq!(byte_char(b'\n'), 'Ċ');
    assert_eq!(byte_char(0), '\u{100}');
    assert_eq!(byte_char(0x7f), '\u{121}');
    assert_eq!(byte_char(0xad), '\u{143}');
    let all: std::collections::HashSet<char> = (0..=255u8).map(byte_char).collect();
    assert_eq!(all.len(), 256, "one character per byte");
}

#[test]
fn pre_tokenizer_pieces() {
    let cases: &[(&str, &[&str])] = &[
        ("Hello world", &["Hello", " world"]),
        ("a  b", &["a", " ", " b"]),
        ("a \tb", &["a", " ", "\t", "b"]),
        ("x   ", &["x", "   "]),
        ("it's I'M", &["it", "'s", " I", "'", "M"]),
        ("we'll they've", &["we", "'ll", " they", "'ve"]),
        ("abc123", &["abc", "1", "2", "3"]),
        ("a 1", &["a", " ", "1"]),
        ("!!'s", &["!!'", "s"]),
        (" ?!x", &[" ?!", "x"]),
        ("x²", &["x", "²"]),
        ("", &[]),
    ];
    for (text, want) in cases {
        assert_eq!(pre_tokenize(text), *want, "text {text:?}");
    }
}

#[test]
fn utf8_stream_holds_back_split_characters() {
    let text = "é😀x";
    let bytes = text.as_bytes();
    let mut s = Utf8Stream::default();
    let mut out = String::new();
    for b in bytes {
        out.push_str(&s.push(&[*b]));
    }
    out.push_str(&s.finish());
    assert_eq!(out, text);

    let mut s = Utf8Stream::default();
    assert_eq!(s.push(&[0xf0, 0x9f]), "");
    assert_eq!(s.push(&[0x98, 0x80, b'a']), "😀a");
    assert_eq!(s.push(&[0xff, b'b']), "\u{fffd}b");
    assert_eq!(s.push(&[0xe2, 0x82]), "");
    assert_eq!(s.finish(), "\u{fffd}");
    assert_eq!(s.finish(), "");
}

/// A GGUF file with a tiny byte-level vocabulary: the 256 byte characters, "ab", "abc" and
/// the control token `<|x|>`.
fn tiny(model: &str, pre: &str, merges: &[&str], extra: &[&str]) -> Vec<u8> {
    let mut tokens: Vec<Value> = (0..=255u8)
        .map(|b| Value::String(byte_char(b).to_string()))
        .collect();
    for t in ["ab", "abc", "<|x|>"].iter().chain(extra) {
        tokens.push(Value::String(t.to_string()));
    }
    let mut types = vec![Value::I32(1); tokens.len()];
    types[258] = Value::I32(TOKEN_CONTROL);
    write(
        &[
            ("tokenizer.ggml.model", Value::String(model.into())),
            ("tokenizer.ggml.pre", Value::String(pre.into())),
            ("tokenizer.ggml.tokens", Value::Array(tokens)),
            ("tokenizer.ggml.token_type", Value::Array(types)),
            (
                "tokenizer.ggml.merges",
                Value::Array(
                    merges
                        .iter()
                        .map(|m| Value::String(m.to_string()))
                        .collect(),
                ),
            ),
        ],
        &[],
    )
}

fn load(bytes: &[u8]) -> Result<BpeTokenizer, Error> {
    BpeTokenizer::from_gguf(&Gguf::parse(bytes).unwrap())
}

#[test]
fn merges_apply_by_rank_then_position() {
    let tok = load(&tiny("gpt2", "smollm", &["a b", "ab c"], &[])).unwrap();
    assert_eq!(tok.encode("abc"), [257]);
    assert_eq!(tok.encode("abab"), [256, 256]);
    assert_eq!(tok.encode("cab"), [u32::from(b'c'), 256]);
    assert_eq!(
        tok.encode(" ab"),
        [tok.byte_ids[usize::from(b' ')].unwrap(), 256]
    );
    assert!(tok.is_control(258));
    assert_eq!(tok.decode_bytes(&[258, 257]), b"<|x|>abc");
}

#[test]
fn bad_tokenizer_metadata_is_an_error() {
    let msg = |bytes: Vec<u8>| load(&bytes).unwrap_err().to_string();
    assert!(msg(tiny("llama", "smollm", &[], &[])).contains("tokenizer model \"llama\""));
    assert!(msg(tiny("gpt2", "qwen2", &[], &[])).contains("pre-tokenizer \"qwen2\""));
    assert!(msg(tiny("gpt2", "smollm", &["a"], &[])).contains("not two tokens"));
    assert!(
        msg(tiny("gpt2", "smollm", &["a q"], &[]))
            .contains("\"aq\", which is not in the vocabulary")
    );
    assert!(msg(tiny("gpt2", "smollm", &["zz b"], &["zzb"])).contains("\"zz\""));
    // No tokenizer metadata at all.
    let empty = write(&[], &[]);
    assert!(
        load(&empty)
            .unwrap_err()
            .to_string()
            .contains("tokenizer.ggml.model")
    );
    // A vocabulary without every byte character.
    let short = write(
        &[
            ("tokenizer.ggml.model", Value::String("gpt2".into())),
            ("tokenizer.ggml.pre", Value::String("smollm".into())),
            (
                "tokenizer.ggml.tokens",
                Value::Array(vec![Value::String("<x>".into())]),
            ),
            ("tokenizer.ggml.merges", Value::Array(vec![])),
        ],
        &[],
    );
    assert!(
        load(&short)
            .unwrap_err()
            .to_string()
            .contains("none of the byte-level characters")
    );
    // Tokens that are not strings.
    let numbers = write(
        &[
            ("tokenizer.ggml.model", Value::String("gpt2".into())),
            ("tokenizer.ggml.pre", Value::String("smollm".into())),
            ("tokenizer.ggml.tokens", Value::Array(vec![Value::U32(1)])),
            ("tokenizer.ggml.merges", Value::Array(vec![])),
        ],
        &[],
    );
    assert!(
        load(&numbers)
            .unwrap_err()
            .to_string()
            .contains("tokens[0] is not a string")
    );
}

#[test]
fn a_long_word_merges_whole() {
    // One 200 kB word: the heap keeps BPE at n log n (a quadratic merge would take minutes).
    let tok = load(&tiny("gpt2", "smollm", &["a b", "ab c"], &[])).unwrap();
    let text = "abc".repeat(70_000);
    let ids = tok.encode(&text);
    assert_eq!(ids.len(), 70_000);
    assert!(ids.iter().all(|&id| id == 257));
}
