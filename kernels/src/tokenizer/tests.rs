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

/// Milliseconds each fuzz loop below runs (`PROOFMESH_FUZZ_MS`, as for the network decoders).
fn fuzz_budget() -> std::time::Duration {
    std::time::Duration::from_millis(
        std::env::var("PROOFMESH_FUZZ_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000),
    )
}

/// One to four hostile edits of `text`: characters the normaliser and pre-tokeniser treat
/// specially (combining marks, CJK, control and zero-width characters, punctuation, special
/// token literals, a long word), splices of another text, deletions.
fn mutate_text(text: &str, other: &str, rng: &mut crate::rng::SplitMix64) -> String {
    const PIECES: &[&str] = &[
        "\u{301}",
        "\u{0}",
        "\u{200d}",
        "\u{feff}",
        "\u{3000}",
        "中文",
        "\u{1f600}",
        "é",
        "ﬁ",
        "İ",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "##",
        "!",
        "\t\n",
        "\u{202e}",
        "Ⅻ",
        "ǅ",
    ];
    let mut chars: Vec<char> = text.chars().collect();
    for _ in 0..=(rng.next_u64() % 4) {
        let at = (rng.next_u64() as usize) % (chars.len() + 1);
        match rng.next_u64() % 5 {
            0 => {
                let p = PIECES[(rng.next_u64() as usize) % PIECES.len()];
                chars.splice(at..at, p.chars());
            }
            1 => {
                let run = "x".repeat(1 + (rng.next_u64() as usize) % 300);
                chars.splice(at..at, run.chars());
            }
            2 => {
                let end = (at + (rng.next_u64() as usize) % 8).min(chars.len());
                chars.drain(at..end);
            }
            3 => {
                let tail: Vec<char> = other.chars().collect();
                let from = (rng.next_u64() as usize) % (tail.len() + 1);
                chars.truncate(at);
                chars.extend_from_slice(&tail[from..]);
            }
            _ => {
                // Any scalar value.
                if let Some(c) = char::from_u32((rng.next_u64() % 0x11_0000) as u32) {
                    chars.insert(at, c);
                }
            }
        }
    }
    chars.into_iter().collect()
}

/// Job inputs are text from anyone: mutated versions of the tricky fixture texts, fed to the real
/// MiniLM tokenizer, always give `[CLS] … [SEP]` within the length limit and ids inside the
/// vocabulary; and mutated bytes of its tokenizer.json load or fail cleanly, never panic.
#[test]
fn mutated_inputs_and_tokenizer_files_never_panic() {
    let dir = crate::testing::minilm_dir();
    let bytes = std::fs::read(dir.join("tokenizer.json")).unwrap();
    let t = Tokenizer::from_json(&bytes).unwrap();
    let fixtures: Fixtures = serde_json::from_str(include_str!("fixtures.json")).unwrap();
    let texts: Vec<&str> = fixtures.cases.iter().map(|c| c.text.as_str()).collect();
    let seed = fuzz_seed();
    println!("tokenizer fuzz seed {seed} (PROOFMESH_FUZZ_SEED)");
    let mut rng = crate::rng::SplitMix64::new(seed);
    let (cls, sep) = (t.encode("", 8)[0], t.encode("", 8)[1]);
    let budget = fuzz_budget();
    let started = std::time::Instant::now();
    let mut inputs = 0u64;
    while started.elapsed() < budget {
        let a = texts[(rng.next_u64() as usize) % texts.len()];
        let b = texts[(rng.next_u64() as usize) % texts.len()];
        let text = mutate_text(a, b, &mut rng);
        let max_len = [2usize, 3, 16, 256][(rng.next_u64() % 4) as usize];
        let ids = t.encode(&text, max_len);
        assert!(ids.len() >= 2 && ids.len() <= max_len, "{text:?}: {ids:?}");
        assert_eq!((ids[0], ids[ids.len() - 1]), (cls, sep), "{text:?}");
        assert!(
            ids.iter().all(|&id| (id as usize) < t.vocab_size()),
            "{text:?}: {ids:?}"
        );
        inputs += 1;
    }
    // The file: a few whole-file mutations (each parse reads ~700 KB).
    let file_started = std::time::Instant::now();
    let mut files = 0u64;
    while file_started.elapsed() < budget / 2 || files < 4 {
        let mut b = bytes.clone();
        for _ in 0..=(rng.next_u64() % 3) {
            let at = (rng.next_u64() as usize) % b.len();
            match rng.next_u64() % 3 {
                0 => b[at] ^= 1 << (rng.next_u64() % 8),
                1 => b.truncate(at),
                _ => b[at] = [b'"', b'{', b'}', b'\\', b'0', 0xff][(rng.next_u64() % 6) as usize],
            }
        }
        if let Ok(t) = Tokenizer::from_json(&b) {
            let ids = t.encode("hello world", 16);
            assert!(ids.len() <= 16);
        }
        files += 1;
    }
    println!("{inputs} texts, {files} tokenizer files");
    assert!(inputs > 100, "the fuzz loop barely ran");
}

/// `PROOFMESH_FUZZ_SEED`, or the clock.
fn fuzz_seed() -> u64 {
    std::env::var("PROOFMESH_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}
