use super::*;
use crate::CpuBackend;
use crate::llama::seeded_llama_gguf;

fn request(json: serde_json::Value) -> Result<GenerateRequest, Error> {
    GenerateRequest::parse(json.to_string().as_bytes())
}

fn user(text: &str) -> serde_json::Value {
    serde_json::json!([{"role": "user", "content": text}])
}

#[test]
fn requests_are_checked() {
    let ok = request(serde_json::json!({"messages": user("hi")})).unwrap();
    assert_eq!(
        (ok.max_tokens, ok.temperature, ok.top_p, ok.top_k),
        (256, 0.0, 1.0, 0)
    );
    let cases = [
        (serde_json::json!({"messages": []}), "0 messages"),
        (
            serde_json::json!({"messages": user("hi"), "max_tokens": 0}),
            "max_tokens is 0",
        ),
        (
            serde_json::json!({"messages": user("hi"), "max_tokens": 5000}),
            "max_tokens is 5000",
        ),
        (
            serde_json::json!({"messages": user("hi"), "temperature": 3.0}),
            "temperature 3",
        ),
        (
            serde_json::json!({"messages": user("hi"), "top_p": 0.0}),
            "top_p 0",
        ),
        (
            serde_json::json!({"messages": user("hi"), "stop": ["a", "b", "c", "d", "e"]}),
            "5 stop strings",
        ),
        (
            serde_json::json!({"messages": user("hi"), "stop": [""]}),
            "stop string \"\"",
        ),
        (
            serde_json::json!({"messages": [{"role": "tool", "content": "x"}]}),
            "role is \"tool\"",
        ),
        (
            serde_json::json!({"messages": user("hi"), "extra": 1}),
            "unknown field",
        ),
        (
            serde_json::json!({"messages": user(&"x".repeat(MAX_PROMPT_BYTES + 1))}),
            "bytes of text",
        ),
        (serde_json::json!({"messages": "hi"}), "expected"),
    ];
    for (json, want) in cases {
        let err = request(json.clone()).unwrap_err().to_string();
        assert!(err.contains(want), "{json}: {err}");
    }
    assert!(GenerateRequest::parse(b"\xff\x00garbage").is_err());
}

fn tiny() -> Llama {
    Llama::from_gguf(&seeded_llama_gguf(3, 2)).unwrap()
}

#[test]
fn generation_streams_what_it_returns_and_repeats() {
    let model = tiny();
    let backend = CpuBackend::new();
    let req = request(serde_json::json!({
        "messages": user("the cat"), "max_tokens": 20, "temperature": 0.9, "seed": 5,
        "logprobs": true
    }))
    .unwrap();
    let mut streamed = String::new();
    let mut tokens = Vec::new();
    let c = generate(&model, &backend, &req, &mut |s| {
        streamed.push_str(s.text);
        tokens.push(s.token);
        assert!(s.logprob.is_some_and(|l| l <= 0.0));
        true
    })
    .unwrap();
    assert_eq!(c.tokens, tokens);
    assert_eq!(streamed, c.text);
    assert_eq!(c.prompt_tokens, model.chat_prompt(&req.chat()).unwrap());
    let again = generate(&model, &backend, &req, &mut |_| true).unwrap();
    assert_eq!(again, c);
    assert_eq!(again.hash(), c.hash());
    if c.finish == FinishReason::Length {
        assert_eq!(c.tokens.len(), 20);
    } else {
        assert_eq!(*c.tokens.last().unwrap(), model.eos());
    }
}

#[test]
fn cancelling_keeps_the_tokens_so_far() {
    let model = tiny();
    let backend = CpuBackend::new();
    let req = request(serde_json::json!({"messages": user("the"), "max_tokens": 30, "temperature": 1.0, "seed": 9})).unwrap();
    let full = generate(&model, &backend, &req, &mut |_| true).unwrap();
    if full.tokens.len() < 4 {
        return;
    }
    let c = generate(&model, &backend, &req, &mut |s| {
        assert!(s.logprob.is_none(), "not asked for");
        s.index < 2
    })
    .unwrap();
    assert_eq!(c.finish, FinishReason::Cancelled);
    assert_eq!(c.tokens, full.tokens[..3]);
    assert_ne!(c.hash(), full.hash());
}

#[test]
fn long_prompts_are_refused_before_decoding() {
    let model = tiny();
    let backend = CpuBackend::new();
    // The tiny model's context is 256 tokens.
    let req = request(serde_json::json!({"messages": user(&"x ".repeat(200)), "max_tokens": 100}))
        .unwrap();
    let err = generate(&model, &backend, &req, &mut |_| panic!("decoded")).unwrap_err();
    assert!(err.to_string().contains("context is 256 tokens"), "{err}");
}

#[test]
fn stop_strings_end_the_text_before_them() {
    assert_eq!(stop_prefix_len("hello wor", &["world".into()]), 3);
    assert_eq!(stop_prefix_len("hello", &["xyz".into()]), 0);
    assert_eq!(stop_prefix_len("ab", &["b!".into(), "ab!".into()]), 2);
    assert_eq!(stop_prefix_len("é", &["éa".into()]), 2);

    let model = crate::llama::tests::smollm2();
    let backend = CpuBackend::new();
    let ask = |stop: serde_json::Value| {
        request(serde_json::json!({
            "messages": user("What is the capital of France?"), "max_tokens": 12, "stop": stop
        }))
        .unwrap()
    };
    let plain = generate(model, &backend, &ask(serde_json::json!([])), &mut |_| true).unwrap();
    assert!(
        plain.text.starts_with("The capital of France is Paris"),
        "{:?}",
        plain.text
    );
    let mut streamed = String::new();
    let c = generate(
        model,
        &backend,
        &ask(serde_json::json!(["Paris", "zzz"])),
        &mut |s| {
            streamed.push_str(s.text);
            true
        },
    )
    .unwrap();
    assert_eq!(c.text, "The capital of France is ");
    assert_eq!(streamed, c.text, "nothing of the stop string was streamed");
    assert_eq!(c.finish, FinishReason::Stop);
    assert!(c.tokens.len() < plain.tokens.len());
}

#[test]
fn the_commitment_covers_every_field() {
    let base = Completion {
        prompt_tokens: vec![1, 2, 3],
        tokens: vec![4, 5],
        text: "x".into(),
        finish: FinishReason::Stop,
        sampling: Sampling::default(),
        logprobs: None,
    };
    let h = base.hash();
    let variants = [
        Completion {
            prompt_tokens: vec![1, 2],
            ..base.clone()
        },
        Completion {
            prompt_tokens: vec![1, 2, 3, 4],
            tokens: vec![5],
            ..base.clone()
        },
        Completion {
            tokens: vec![4, 6],
            ..base.clone()
        },
        Completion {
            finish: FinishReason::Length,
            ..base.clone()
        },
        Completion {
            sampling: Sampling {
                temperature: 0.5,
                ..base.sampling
            },
            ..base.clone()
        },
        Completion {
            sampling: Sampling {
                top_p: 0.5,
                ..base.sampling
            },
            ..base.clone()
        },
        Completion {
            sampling: Sampling {
                top_k: 5,
                ..base.sampling
            },
            ..base.clone()
        },
        Completion {
            sampling: Sampling {
                seed: 1,
                ..base.sampling
            },
            ..base.clone()
        },
    ];
    for v in variants {
        assert_ne!(v.hash(), h, "{v:?}");
    }
    assert_eq!(
        Completion {
            text: "other".into(),
            ..base.clone()
        }
        .hash(),
        h
    );
}

/// Log-probabilities are reported per text token with the most likely alternatives, change
/// nothing of what is generated or committed, and are refused out of range.
#[test]
fn logprobs_report_the_chosen_and_the_most_likely_tokens() {
    let model = tiny();
    let backend = CpuBackend::new();
    let plain =
        request(serde_json::json!({"messages": user("the cat"), "max_tokens": 12})).unwrap();
    let asked = request(serde_json::json!({
        "messages": user("the cat"), "max_tokens": 12, "logprobs": true, "top_logprobs": 3
    }))
    .unwrap();
    let a = generate(&model, &backend, &plain, &mut |_| true).unwrap();
    let b = generate(&model, &backend, &asked, &mut |_| true).unwrap();
    assert_eq!(a.logprobs, None);
    assert_eq!(
        (&a.tokens, &a.text, a.hash()),
        (&b.tokens, &b.text, b.hash())
    );
    let lps = b.logprobs.as_ref().unwrap();
    let text_tokens: Vec<u32> = b
        .tokens
        .iter()
        .copied()
        .filter(|&t| !model.tokenizer().is_control(t))
        .collect();
    assert_eq!(lps.iter().map(|l| l.token).collect::<Vec<_>>(), text_tokens);
    for l in lps {
        assert!(l.logprob <= 0.0);
        assert_eq!(l.top.len(), 3);
        // Greedy: the chosen token is the most likely one, with the same log-probability.
        assert_eq!((l.top[0].0, l.top[0].2), (l.token, l.logprob));
        assert!(l.top.windows(2).all(|w| w[0].2 >= w[1].2));
        assert_eq!(l.bytes, model.tokenizer().token_bytes(l.token));
    }
    for bad in [
        serde_json::json!({"messages": user("x"), "logprobs": true, "top_logprobs": 21}),
        serde_json::json!({"messages": user("x"), "top_logprobs": 2}),
    ] {
        let err = request(bad.clone()).unwrap_err().to_string();
        assert!(err.contains("top_logprobs"), "{bad}: {err}");
    }
}

/// A job's priced units never pass the bound known before it runs, whatever the messages
/// (short, escaped, multi-byte, with and without a system message: the template's default
/// one counts against the allowance), and other inputs are priced by their bytes.
#[test]
fn units_stay_within_their_bound() {
    let model = tiny();
    let backend = CpuBackend::new();
    let chats = [
        user(""),
        user("a"),
        user("\n\n\t\"\\"),
        user("héllo wörld — ✓ 12345 <|im_end|>"),
        serde_json::json!([{"role": "system", "content": ""}, {"role": "user", "content": "x"}]),
        serde_json::json!([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]),
    ];
    for messages in chats {
        for max_tokens in [1, 7] {
            let input = serde_json::json!({"messages": messages, "max_tokens": max_tokens, "temperature": 1.0, "seed": 3}).to_string();
            let req = GenerateRequest::parse(input.as_bytes()).unwrap();
            let c = generate(&model, &backend, &req, &mut |_| true).unwrap();
            let output = crate::Output::completion(c.clone());
            let units = output.units(input.len());
            assert_eq!(units, (c.prompt_tokens.len() + c.tokens.len()) as u64);
            let bound = units_bound(input.as_bytes());
            assert!(
                units <= bound && bound <= input.len() as u64 + TEMPLATE_ALLOWANCE + max_tokens,
                "{input}: {units} units, bound {bound}"
            );
        }
    }
    let texts = br#"{"texts": ["hi"]}"#;
    assert_eq!(units_bound(texts), texts.len() as u64);
    assert_eq!(units_bound(b"\xff garbage"), 9);
}

/// A generation its client left after k tokens commits to what a validator derives from the
/// whole run and the record's units; a cut that is not a proper prefix derives nothing.
#[test]
fn a_cancelled_generation_is_derived_from_the_whole_run() {
    let model = tiny();
    let backend = CpuBackend::new();
    let req = request(serde_json::json!({"messages": user("the"), "max_tokens": 30, "temperature": 1.0, "seed": 9})).unwrap();
    let full = crate::Output::completion(generate(&model, &backend, &req, &mut |_| true).unwrap());
    let n = full.completion.as_ref().unwrap().tokens.len();
    let prompt = full.completion.as_ref().unwrap().prompt_tokens.len();
    assert!(n >= 4, "{n} tokens");
    for k in [0usize, 2] {
        let cut = generate(&model, &backend, &req, &mut |s| s.index < k).unwrap();
        assert_eq!(cut.finish, FinishReason::Cancelled);
        let cut = crate::Output::completion(cut);
        let units = cut.units(0);
        assert_eq!(units, (prompt + k + 1) as u64);
        assert_eq!(full.cancelled_hash(units), Some(cut.hash()));
    }
    assert_eq!(full.cancelled_hash(full.units(0)), None);
    assert_eq!(full.cancelled_hash(prompt as u64 - 1), None);
    assert_eq!(full.cancelled_hash(u64::MAX), None);
}

/// Continuous batching: sampled and greedy generations decoded together (one joining two
/// steps late), their next tokens drawn on the pool, each give what they give alone, under
/// every kernel variant and thread count.
#[test]
fn generations_batched_together_give_what_they_give_alone() {
    let model = tiny();
    let reqs: Vec<GenerateRequest> = [
        serde_json::json!({"messages": user("the cat"), "max_tokens": 12, "temperature": 0.9, "seed": 5}),
        serde_json::json!({"messages": user("a dog"), "max_tokens": 9, "temperature": 1.3, "seed": 6, "top_k": 7}),
        serde_json::json!({"messages": user("the"), "max_tokens": 10}),
        serde_json::json!({"messages": user("in the"), "max_tokens": 12, "temperature": 0.7, "top_p": 0.8, "seed": 7}),
        serde_json::json!({"messages": user("on"), "max_tokens": 8, "temperature": 1.0, "seed": 8}),
    ]
    .into_iter()
    .map(|j| request(j).unwrap())
    .collect();
    let alone: Vec<Completion> = reqs
        .iter()
        .map(|r| generate(&model, &CpuBackend::portable(), r, &mut |_| true).unwrap())
        .collect();
    for backend in CpuBackend::every_variant() {
        let mut batch = Generator::new(&model);
        for (key, r) in reqs.iter().enumerate().take(4) {
            batch.add(key as u64, r).unwrap();
        }
        let mut done = Vec::new();
        let mut steps = 0;
        while !batch.is_empty() || steps < 3 {
            if steps == 2 {
                batch.add(4, &reqs[4]).unwrap();
            }
            done.extend(batch.step(&backend, &mut |_, _| true).unwrap());
            steps += 1;
        }
        done.sort_by_key(|(key, _)| *key);
        let got: Vec<Completion> = done.into_iter().map(|(_, c)| c).collect();
        assert_eq!(
            got,
            alone,
            "{:?} threads {}",
            backend.kernel(),
            backend.threads()
        );
    }
}
