use super::*;

/// A tiny BERT tokenizer with the given vocab (ids in order; the first four are specials).
fn tiny(vocab: &[&str]) -> Tokenizer {
    let json = bert_json(vocab, 4, 12);
    Tokenizer::from_json(json.to_string().as_bytes()).unwrap()
}

const VOCAB: &[&str] = &[
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "un", "##believ", "##able", "a", "##b", "ab", "!", "cafe",
    "中",
];

#[test]
fn greedy_longest_match_with_continuations() {
    let t = tiny(VOCAB);
    assert_eq!(t.encode("unbelievable", 256), [2, 4, 5, 6, 3]);
    // "ab" is preferred to "a" + "##b" (longest first).
    assert_eq!(t.encode("ab", 256), [2, 9, 3]);
    assert_eq!(t.encode("abb", 256), [2, 9, 8, 3]);
}

#[test]
fn a_word_that_cannot_be_covered_is_one_unk() {
    let t = tiny(VOCAB);
    // "un" matches but "##x" does not: the whole word becomes [UNK], not "un" + [UNK].
    assert_eq!(t.encode("unx ab", 256), [2, 1, 9, 3]);
    // Over max_input_chars_per_word (12) characters; 12 is still fine.
    assert_eq!(t.encode("abbbbbbbbbbbb", 256), [2, 1, 3]);
    assert_eq!(
        t.encode("abbbbbbbbbbb", 256),
        [2, 9, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 3]
    );
}

#[test]
fn normalization_and_splitting() {
    let t = tiny(VOCAB);
    // Lowercased, accent stripped, punctuation isolated, whitespace of any kind dropped.
    assert_eq!(t.encode("CAFÉ!\u{3000}Ab", 256), [2, 11, 10, 9, 3]);
    // CJK ideographs are words of their own, even inside a word.
    assert_eq!(t.encode("ab中ab", 256), [2, 9, 12, 9, 3]);
    // A zero-width space is removed (format character), so the two halves join.
    assert_eq!(t.encode("a\u{200b}b", 256), [2, 9, 3]);
    assert_eq!(t.encode("", 256), [2, 3]);
}

#[test]
fn literal_special_tokens_are_kept_and_others_normalised() {
    let t = tiny(VOCAB);
    assert_eq!(t.encode("ab[SEP]ab", 256), [2, 9, 3, 9, 3]);
    // Lowercase "[sep]" is text: "[", "sep" (unknown), "]" — brackets are not in the vocab.
    assert_eq!(t.encode("[sep]", 256), [2, 1, 1, 1, 3]);
}

#[test]
fn truncation_keeps_cls_and_sep() {
    let t = tiny(VOCAB);
    let ids = t.encode(&"ab ".repeat(20), 8);
    assert_eq!(ids, [2, 9, 9, 9, 9, 9, 9, 3]);
    assert_eq!(t.encode("ab ab", 0), [2, 3]);
    assert_eq!(t.encode("unbelievable", 4), [2, 4, 5, 3]);
}

#[test]
fn unsupported_or_broken_files_are_errors() {
    let good = serde_json::json!({
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 1], "cls": ["[CLS]", 0]},
        "model": {"type": "WordPiece", "unk_token": "[UNK]",
                  "vocab": {"[CLS]": 0, "[SEP]": 1, "[UNK]": 2}},
    });
    assert!(Tokenizer::from_json(good.to_string().as_bytes()).is_ok());
    type Mutation = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Mutation)> = vec![
        (
            "model type",
            Box::new(|j| j["model"]["type"] = "BPE".into()),
        ),
        (
            "unk_token",
            Box::new(|j| j["model"]["unk_token"] = "<unk>".into()),
        ),
        ("dense", Box::new(|j| j["model"]["vocab"]["x"] = 7.into())),
        (
            "normalizer",
            Box::new(|j| j["normalizer"] = serde_json::json!({"type": "NFKC"})),
        ),
        (
            "pre_tokenizer",
            Box::new(|j| j["pre_tokenizer"] = serde_json::Value::Null),
        ),
        (
            "BertProcessing",
            Box::new(|j| j["post_processor"]["cls"] = serde_json::Value::Null),
        ),
        (
            "outside the vocab",
            Box::new(|j| j["post_processor"]["sep"] = serde_json::json!(["x", 9])),
        ),
        (
            "added token",
            Box::new(|j| {
                j["added_tokens"] =
                    serde_json::json!([{"id": 0, "content": "x", "normalized": true}])
            }),
        ),
    ];
    for (want, mutate) in cases {
        let mut j = good.clone();
        mutate(&mut j);
        let err = Tokenizer::from_json(j.to_string().as_bytes()).unwrap_err();
        assert!(err.to_string().contains(want), "{want}: {err}");
    }
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    let mut rng = crate::rng::SplitMix64::new(7);
    for len in [0usize, 1, 7, 100, 5000] {
        let bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        assert!(Tokenizer::from_json(&bytes).is_err());
    }
    let real = r#"{"model": {"type": "WordPiece", "unk_token": "[UNK]", "vocab": {"[UNK]": 0}}}"#;
    for cut in 0..real.len() {
        assert!(Tokenizer::from_json(&real.as_bytes()[..cut]).is_err());
    }
}

#[derive(Deserialize)]
struct Fixtures {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
}

/// Every tricky text gives exactly the reference library's ids for the real MiniLM
/// tokenizer.json (fixtures from `scripts/gen-tokenizer-tables fixtures`).
#[test]
fn minilm_ids_equal_the_reference_tokenizer() {
    let dir = crate::testing::minilm_dir();
    let bytes = std::fs::read(dir.join("tokenizer.json")).unwrap();
    let t = Tokenizer::from_json(&bytes).unwrap();
    assert_eq!(t.vocab_size(), 30522);
    let fixtures: Fixtures = serde_json::from_str(include_str!("fixtures.json")).unwrap();
    assert!(fixtures.cases.len() >= 20);
    for case in &fixtures.cases {
        assert_eq!(t.encode(&case.text, 256), case.ids, "text {:?}", case.text);
    }
}
