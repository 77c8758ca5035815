//! Text generation jobs: the request a generation job carries, the decoding loop (stop
//! strings, streaming, cancellation) and the completion it commits to.

use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::bpe::Utf8Stream;
use crate::llama::{ChatMessage, KvCache, Llama};
use crate::sample::Sampling;
use crate::{Error, keccak256};

/// Most messages in one request.
pub const MAX_MESSAGES: usize = 256;
/// Most bytes of message text in one request (the context bounds the tokens anyway).
pub const MAX_PROMPT_BYTES: usize = 256 << 10;
/// Most stop strings (OpenAI's limit).
pub const MAX_STOPS: usize = 4;
/// Longest stop string, in bytes.
pub const MAX_STOP_BYTES: usize = 64;
/// Most alternatives `top_logprobs` may ask for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: u32 = 20;
/// Most completion tokens one request may ask for.
pub const MAX_COMPLETION_TOKENS: usize = 4096;
/// Completion tokens when a request names no limit.
pub const DEFAULT_MAX_TOKENS: usize = 256;

/// Tokens a chat template may add to a request beyond its own bytes, for [`units_bound`]: the
/// text a template puts around each message is bounded by the JSON around that message in the
/// request, which leaves a default system message (SmolLM2's: 67 bytes) and the generation
/// prompt. A model whose template needs more is refused at load.
pub const TEMPLATE_ALLOWANCE: u64 = 256;

/// The most units ([`crate::Output::units`]) a job with `input` can be priced at, known before
/// it runs. For a generation request: its bytes plus [`TEMPLATE_ALLOWANCE`] plus `max_tokens`
/// (a byte-level BPE token holds at least one byte and the template's fixed text is counted
/// above); for any other input: its bytes, the units themselves.
pub fn units_bound(input: &[u8]) -> u64 {
    match serde_json::from_slice::<GenerateRequest>(input) {
        // A request asking for more than any job may generate is refused when it runs.
        Ok(req) => (input.len() as u64)
            .saturating_add(TEMPLATE_ALLOWANCE)
            .saturating_add(req.max_tokens.min(MAX_COMPLETION_TOKENS) as u64),
        Err(_) => input.len() as u64,
    }
}

/// A generation job's input, as JSON: the chat, the limits and the sampling parameters.
///
/// `{"messages": [{"role": "user", "content": "…"}], "max_tokens": 64, "temperature": 0.7,
/// "top_p": 0.9, "top_k": 0, "seed": 1, "stop": ["\n\n"]}`; every field but `messages` is
/// optional (greedy, 256 tokens, no stop strings).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    /// The chat so far.
    pub messages: Vec<MessageJson>,
    /// Most completion tokens (1 to [`MAX_COMPLETION_TOKENS`]).
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    /// 0 (greedy) to 2.
    #[serde(default)]
    pub temperature: f32,
    /// (0, 1].
    #[serde(default = "one")]
    pub top_p: f32,
    /// 0 = no limit.
    #[serde(default)]
    pub top_k: u32,
    /// Keys the sampling draws.
    #[serde(default)]
    pub seed: u64,
    /// Generation stops before the first of these appears in the text.
    #[serde(default)]
    pub stop: Vec<String>,
    /// Whether each step reports its token's log-probability ([`Step::logprob`]); reporting
    /// only, not part of the commitment.
    #[serde(default)]
    pub logprobs: bool,
    /// With `logprobs`: how many of the most likely tokens to report at each step (0 to
    /// [`MAX_TOP_LOGPROBS`]).
    #[serde(default)]
    pub top_logprobs: u32,
}

fn default_max_tokens() -> usize {
    DEFAULT_MAX_TOKENS
}

fn one() -> f32 {
    1.0
}

/// One chat message in a [`GenerateRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageJson {
    /// `"system"`, `"user"` or `"assistant"`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl GenerateRequest {
    /// Parses and checks a request (everything but the context, which needs the model).
    pub fn parse(input: &[u8]) -> Result<GenerateRequest, Error> {
        let req: GenerateRequest = serde_json::from_slice(input).map_err(|e| Error::BadInput {
            reason: format!("expected {{\"messages\": [{{\"role\": …, \"content\": …}}], …}}: {e}"),
        })?;
        req.check()?;
        Ok(req)
    }

    /// Checks the limits and parameters.
    pub fn check(&self) -> Result<(), Error> {
        let bad = |reason: String| Err(Error::BadInput { reason });
        if self.messages.is_empty() || self.messages.len() > MAX_MESSAGES {
            return bad(format!(
                "{} messages; send 1 to {MAX_MESSAGES}",
                self.messages.len()
            ));
        }
        let bytes: usize = self.messages.iter().map(|m| m.content.len()).sum();
        if bytes > MAX_PROMPT_BYTES {
            return bad(format!(
                "the messages hold {bytes} bytes of text; the limit is {MAX_PROMPT_BYTES}"
            ));
        }
        for (i, m) in self.messages.iter().enumerate() {
            if !crate::llama::ROLES.contains(&m.role.as_str()) {
                return bad(format!(
                    "messages[{i}].role is {:?}; the roles are system, user and assistant",
                    m.role
                ));
            }
        }
        if self.max_tokens == 0 || self.max_tokens > MAX_COMPLETION_TOKENS {
            return bad(format!(
                "max_tokens is {}; ask for 1 to {MAX_COMPLETION_TOKENS}",
                self.max_tokens
            ));
        }
        self.sampling().check().or_else(bad)?;
        if self.top_logprobs > MAX_TOP_LOGPROBS || (self.top_logprobs > 0 && !self.logprobs) {
            return bad(format!(
                "top_logprobs is {}; ask for 0 to {MAX_TOP_LOGPROBS}, with logprobs",
                self.top_logprobs
            ));
        }
        if self.stop.len() > MAX_STOPS {
            return bad(format!(
                "{} stop strings; the limit is {MAX_STOPS}",
                self.stop.len()
            ));
        }
        if let Some(s) = self
            .stop
            .iter()
            .find(|s| s.is_empty() || s.len() > MAX_STOP_BYTES)
        {
            return bad(format!(
                "stop string {s:?} is empty or over {MAX_STOP_BYTES} bytes"
            ));
        }
        Ok(())
    }

    /// The sampling parameters.
    pub fn sampling(&self) -> Sampling {
        Sampling {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            seed: self.seed,
        }
    }

    pub(crate) fn chat(&self) -> Vec<ChatMessage> {
        self.messages
            .iter()
            .map(|m| ChatMessage {
                role: m.role.clone(),
                content: m.content.clone(),
            })
            .collect()
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model ended its turn or a stop string appeared.
    Stop,
    /// `max_tokens` were generated.
    Length,
    /// The caller stopped it (a streaming client went away): the tokens so far are the job.
    Cancelled,
}

impl FinishReason {
    fn code(self) -> u8 {
        match self {
            FinishReason::Stop => 0,
            FinishReason::Length => 1,
            FinishReason::Cancelled => 2,
        }
    }

    /// OpenAI's name (`"stop"`, `"length"`; a cancelled generation reports `"length"`, the
    /// nearest OpenAI has, and carries `cancelled` in the proof).
    pub fn openai(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length | FinishReason::Cancelled => "length",
        }
    }
}

/// What a generation job produced and commits to.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The chat's prompt tokens.
    pub prompt_tokens: Vec<u32>,
    /// The tokens generated (the end-of-turn token included when it ended the turn).
    pub tokens: Vec<u32>,
    /// The text of `tokens`, up to (not including) a stop string or the end of turn.
    pub text: String,
    /// Why it ended.
    pub finish: FinishReason,
    /// How tokens were chosen.
    pub sampling: Sampling,
    /// With `logprobs`: one entry per text token (control tokens such as the end of turn
    /// have none). Reporting only, not part of the commitment.
    pub logprobs: Option<Vec<TokenLogprob>>,
}

/// A generated token's log-probability (temperature 1) and the most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    /// The token's bytes (a token may hold part of a character).
    pub bytes: Vec<u8>,
    pub logprob: f32,
    /// The `top_logprobs` most likely tokens at this step: (token, bytes, logprob).
    pub top: Vec<(u32, Vec<u8>, f32)>,
}

impl Completion {
    /// The commitment: keccak256 of `"proofmesh/completion/1"`, the prompt token count (u32
    /// LE) and ids (u32 LE each), the completion token count and ids, the finish code (u8: 0
    /// stop, 1 length, 2 cancelled), the temperature and top-p (f32 bits LE), top-k (u32 LE)
    /// and seed (u64 LE). The text is a function of the tokens and is not hashed separately.
    pub fn hash(&self) -> [u8; 32] {
        let mut b = Vec::with_capacity(64 + 4 * (self.prompt_tokens.len() + self.tokens.len()));
        b.extend_from_slice(b"proofmesh/completion/1");
        for ids in [&self.prompt_tokens, &self.tokens] {
            b.extend_from_slice(&(ids.len() as u32).to_le_bytes());
            for id in ids.iter() {
                b.extend_from_slice(&id.to_le_bytes());
            }
        }
        b.push(self.finish.code());
        let s = &self.sampling;
        b.extend_from_slice(&s.temperature.to_bits().to_le_bytes());
        b.extend_from_slice(&s.top_p.to_bits().to_le_bytes());
        b.extend_from_slice(&s.top_k.to_le_bytes());
        b.extend_from_slice(&s.seed.to_le_bytes());
        keccak256(&b)
    }
}

/// One generated token, as the loop hands it to the caller.
#[derive(Debug)]
pub struct Step<'a> {
    /// The token.
    pub token: u32,
    /// Its index among the completion's tokens.
    pub index: usize,
    /// Text now safe to show (complete characters, not a possible start of a stop string);
    /// may be empty.
    pub text: &'a str,
    /// `ln p(token)` under the model's distribution (temperature 1), when the request asked.
    pub logprob: Option<f32>,
}

/// The most bytes of `text`'s end that could begin a stop string (held back while streaming).
fn stop_prefix_len(text: &str, stops: &[String]) -> usize {
    let mut best = 0;
    for s in stops {
        for k in (1..s.len()).rev() {
            if k > best && s.is_char_boundary(k) && text.ends_with(&s[..k]) {
                best = k;
                break;
            }
        }
    }
    best
}

/// Decodes a request with `model`: prefill, then one token per step, calling `on_step` for
/// each; `on_step` returning `false` cancels (the tokens so far are the completion). The
/// prompt plus `max_tokens` must fit the context.
pub(crate) fn generate(
    model: &Llama,
    backend: &dyn Backend,
    req: &GenerateRequest,
    on_step: &mut dyn FnMut(&Step<'_>) -> bool,
) -> Result<Completion, Error> {
    let mut batch = Generator::new(model);
    batch.add(0, req)?;
    loop {
        if let Some((_, c)) = batch.step(backend, &mut |_, s| on_step(s))?.pop() {
            return Ok(c);
        }
    }
}

/// Continuous batching: any number of generations decoded together, one forward per step.
/// A generation added between steps joins at the next step (its prompt is prefilled in the
/// same forward as the others' next tokens); a finished one leaves at once. Every op is
/// row-wise or per sequence, so each generation's tokens are those it gets alone.
pub struct Generator<'m> {
    model: &'m Llama,
    active: Vec<Active>,
}

struct Active {
    key: u64,
    cache: KvCache,
    decoder: Decoder,
    /// What the next forward feeds: the prompt, then each chosen token.
    feed: Vec<u32>,
}

impl<'m> Generator<'m> {
    pub(crate) fn new(model: &'m Llama) -> Generator<'m> {
        Generator {
            model,
            active: Vec::new(),
        }
    }

    /// Adds a generation under `key` (the caller's handle for it in [`Generator::step`]'s
    /// callbacks and results). Checks the request and that it fits the context.
    pub fn add(&mut self, key: u64, req: &GenerateRequest) -> Result<(), Error> {
        req.check()?;
        let prompt = self.model.chat_prompt(&req.chat())?;
        check_context(self.model, prompt.len(), req.max_tokens)?;
        self.active.push(Active {
            key,
            cache: self.model.new_cache(),
            decoder: Decoder::new(req, prompt.clone(), Vec::new()),
            feed: prompt,
        });
        Ok(())
    }

    /// Generations in progress.
    pub fn len(&self) -> usize {
        self.active.len()
    }

    /// Whether none is in progress.
    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    /// Tokens cached over all generations in progress (their memory: keys and values of every
    /// layer for each).
    pub fn cached_tokens(&self) -> usize {
        self.active.iter().map(|a| a.cache.len()).sum()
    }

    /// One forward over every generation in progress, then one token chosen for each and
    /// handed to `on_step(key, step)` (returning `false` cancels that one). Returns the
    /// generations that finished, with their keys. On an error every generation in progress is
    /// dropped (their caches are no longer consistent).
    pub fn step(
        &mut self,
        backend: &dyn Backend,
        on_step: &mut dyn FnMut(u64, &Step<'_>) -> bool,
    ) -> Result<Vec<(u64, Completion)>, Error> {
        if self.active.is_empty() {
            return Ok(Vec::new());
        }
        let vocab = self.model.spec().vocab;
        let feeds: Vec<Vec<u32>> = self
            .active
            .iter_mut()
            .map(|a| std::mem::take(&mut a.feed))
            .collect();
        let refs: Vec<&[u32]> = feeds.iter().map(Vec::as_slice).collect();
        let mut caches: Vec<&mut KvCache> = self.active.iter_mut().map(|a| &mut a.cache).collect();
        let logits = match self.model.forward(backend, &mut caches, &refs, false) {
            Ok(l) => l,
            Err(e) => {
                self.active.clear();
                return Err(e);
            }
        };
        for (a, row) in self.active.iter_mut().zip(logits.chunks_exact(vocab)) {
            a.decoder.logits.clear();
            a.decoder.logits.extend_from_slice(row);
        }
        // Each sequence's next token is a function of its own logits, position and sampling:
        // sampled ones (a whole vocabulary ranked each) are drawn on every core.
        let tokens: Vec<std::sync::atomic::AtomicU32> =
            self.active.iter().map(|_| Default::default()).collect();
        let n = self.active.len();
        let tasks = if self.active.iter().filter(|a| a.decoder.samples()).count() > 1 {
            backend.parallelism().clamp(1, n)
        } else {
            1
        };
        // Task `t` draws every `tasks`-th sequence from `t`.
        let draw = |t: usize| {
            for i in (t..n).step_by(tasks) {
                let token = self.active[i].decoder.next_token();
                tokens[i].store(token, std::sync::atomic::Ordering::Relaxed);
            }
        };
        if tasks > 1 {
            crate::pool::each(tasks, draw);
        } else {
            draw(0);
        }
        let mut done = Vec::new();
        let mut keep = Vec::with_capacity(self.active.len());
        for (mut a, token) in std::mem::take(&mut self.active).into_iter().zip(tokens) {
            let key = a.key;
            match a
                .decoder
                .step(self.model, token.into_inner(), &mut |s| on_step(key, s))
            {
                Some(token) => {
                    a.feed = vec![token];
                    keep.push(a);
                }
                None => done.push((a.key, a.decoder.into_completion())),
            }
        }
        self.active = keep;
        Ok(done)
    }
}

/// Refuses a prompt that, with `max_tokens` more, would not fit the context.
pub(crate) fn check_context(model: &Llama, prompt: usize, max_tokens: usize) -> Result<(), Error> {
    let context = model.spec().context;
    if prompt + max_tokens > context {
        return Err(Error::BadInput {
            reason: format!(
                "the model's context is {context} tokens; the prompt takes {prompt} and max_tokens asks for {max_tokens}"
            ),
        });
    }
    Ok(())
}

/// The state of one sequence being decoded, between forwards (continuous batching steps many
/// of these through one forward).
pub(crate) struct Decoder {
    sampling: Sampling,
    max_tokens: usize,
    stops: Vec<String>,
    logprobs: bool,
    top_logprobs: usize,
    reported: Vec<TokenLogprob>,
    prompt: Vec<u32>,
    tokens: Vec<u32>,
    /// The last forward's logits for this sequence.
    pub(crate) logits: Vec<f32>,
    utf8: Utf8Stream,
    text: String,
    /// Bytes of `text` handed out already.
    shown: usize,
    pub(crate) finish: Option<FinishReason>,
}

impl Decoder {
    pub(crate) fn new(req: &GenerateRequest, prompt: Vec<u32>, logits: Vec<f32>) -> Decoder {
        Decoder {
            sampling: req.sampling(),
            max_tokens: req.max_tokens,
            stops: req.stop.clone(),
            logprobs: req.logprobs,
            top_logprobs: req.top_logprobs as usize,
            reported: Vec::new(),
            prompt,
            tokens: Vec::new(),
            logits,
            utf8: Utf8Stream::default(),
            text: String::new(),
            shown: 0,
            finish: None,
        }
    }

    /// The next token from `logits`: its draw at this position (argmax when greedy).
    pub(crate) fn next_token(&self) -> u32 {
        let position = (self.prompt.len() + self.tokens.len()) as u64;
        self.sampling.choose(&self.logits, position)
    }

    /// Whether tokens are drawn (not greedy): the draw ranks the whole vocabulary.
    pub(crate) fn samples(&self) -> bool {
        self.sampling.temperature != 0.0
    }

    /// Hands out `token` ([`Decoder::next_token`] of the current `logits`); returns the token
    /// to feed back, or `None` when the sequence has finished.
    pub(crate) fn step(
        &mut self,
        model: &Llama,
        token: u32,
        on_step: &mut dyn FnMut(&Step<'_>) -> bool,
    ) -> Option<u32> {
        let norm = self
            .logprobs
            .then(|| crate::sample::LogSoftmax::new(&self.logits));
        let logprob = norm.map(|n| n.of(&self.logits, token));
        self.tokens.push(token);
        let tok = model.tokenizer();
        if let (Some(n), Some(lp)) = (norm, logprob)
            && !tok.is_control(token)
        {
            let top = crate::sample::top_tokens(&self.logits, self.top_logprobs)
                .into_iter()
                .map(|t| (t, tok.token_bytes(t).to_vec(), n.of(&self.logits, t)))
                .collect();
            self.reported.push(TokenLogprob {
                token,
                bytes: tok.token_bytes(token).to_vec(),
                logprob: lp,
                top,
            });
        }
        let mut done = None;
        if token == model.eos() {
            done = Some(FinishReason::Stop);
            self.text.push_str(&self.utf8.finish());
        } else if !tok.is_control(token) {
            let piece = self.utf8.push(tok.token_bytes(token));
            let from = self.text.len().saturating_sub(MAX_STOP_BYTES + piece.len());
            self.text.push_str(&piece);
            let found = self
                .stops
                .iter()
                .filter_map(|s| {
                    // Search from a char boundary near the end: earlier text was checked.
                    let start = (0..=from).rev().find(|&i| self.text.is_char_boundary(i))?;
                    self.text[start..].find(s.as_str()).map(|i| start + i)
                })
                .min();
            if let Some(at) = found {
                self.text.truncate(at);
                done = Some(FinishReason::Stop);
            }
        }
        if done.is_none() && self.tokens.len() >= self.max_tokens {
            self.text.push_str(&self.utf8.finish());
            done = Some(FinishReason::Length);
        }
        let safe = if done.is_some() {
            self.text.len()
        } else {
            self.text.len() - stop_prefix_len(&self.text, &self.stops)
        };
        let text = &self.text[self.shown.min(safe)..safe];
        let go_on = on_step(&Step {
            token,
            index: self.tokens.len() - 1,
            text,
            logprob,
        });
        self.shown = self.shown.max(safe);
        if done.is_none() && !go_on {
            done = Some(FinishReason::Cancelled);
        }
        self.finish = done;
        if done.is_some() { None } else { Some(token) }
    }

    pub(crate) fn into_completion(self) -> Completion {
        Completion {
            prompt_tokens: self.prompt,
            tokens: self.tokens,
            text: self.text,
            finish: self.finish.unwrap_or(FinishReason::Length),
            sampling: self.sampling,
            logprobs: self.logprobs.then_some(self.reported),
        }
    }
}

#[cfg(test)]
mod tests;
