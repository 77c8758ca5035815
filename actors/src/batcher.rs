//! Continuous batching of a generating model's jobs on an inference node: one decode thread
//! per model, into which concurrent jobs join (`kernels::Generator`) instead of each running
//! its own forward passes side by side. A job joins between two steps (its prompt prefilled in
//! the same forward as the others' next tokens) and leaves when it finishes. Every op is
//! row-wise or per sequence, so a job's tokens, and its output hash, are those it gets alone:
//! validators re-executing it one at a time find the same.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, TryRecvError};

use kernels::{Backend, GenerateRequest, Model, Output};
use tokio::sync::oneshot;

/// Most generations decoded together; later jobs wait for a place.
pub const MAX_BATCH: usize = 16;

type Reply = oneshot::Sender<Result<Output, String>>;

/// Where a streamed job's text goes as it is generated (complete characters, never part of a
/// stop string). A receiver that goes away (the client left) stops the job at that step: it
/// finishes `cancelled`, committing to the tokens so far (validators derive that from their
/// whole run, see `Output::cancelled_hash`), and is charged for those.
pub type TextStream = tokio::sync::mpsc::UnboundedSender<String>;

struct Job {
    input: Vec<u8>,
    reply: Reply,
    stream: Option<TextStream>,
}

/// The handle to one model's decode thread.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Job>,
}

impl Batcher {
    /// Starts the decode thread of `model` (a generating model) on `backend`. The thread ends
    /// when every handle is dropped and its batch is done.
    pub fn spawn(model: Arc<Model>, backend: Arc<dyn Backend>) -> std::io::Result<Batcher> {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("decode-{}", model.name()))
            .spawn(move || decode_loop(&model, backend.as_ref(), &rx))?;
        Ok(Batcher { tx })
    }

    /// Runs a generation job's input in the batch: the output [`Model::run`] would give, or
    /// why the input is refused.
    pub async fn run(&self, input: Vec<u8>) -> Result<Output, String> {
        self.run_streaming(input, None).await
    }

    /// [`Batcher::run`], sending the text to `stream` as it is generated.
    pub async fn run_streaming(
        &self,
        input: Vec<u8>,
        stream: Option<TextStream>,
    ) -> Result<Output, String> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Job {
                input,
                reply,
                stream,
            })
            .map_err(|_| "the decode thread has stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the decode thread dropped the job".to_string())?
    }
}

fn decode_loop(model: &Model, backend: &dyn Backend, rx: &Receiver<Job>) {
    let mut generator = match model.generator() {
        Ok(g) => g,
        Err(e) => {
            // Not a generating model: answer every job with the reason.
            while let Ok(job) = rx.recv() {
                let _ = job.reply.send(Err(e.to_string()));
            }
            return;
        }
    };
    let mut waiting: HashMap<u64, (Reply, Option<TextStream>)> = HashMap::new();
    let mut next_key = 0u64;
    let mut closed = false;
    loop {
        if generator.is_empty() {
            if closed {
                return;
            }
            match rx.recv() {
                Ok(job) => add(&mut generator, &mut waiting, &mut next_key, job),
                Err(_) => return,
            }
        }
        while generator.len() < MAX_BATCH && !closed {
            match rx.try_recv() {
                Ok(job) => add(&mut generator, &mut waiting, &mut next_key, job),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => closed = true,
            }
        }
        if generator.is_empty() {
            continue;
        }
        // A streamed job whose reader is gone (its client left) stops here: it finishes as
        // `cancelled`, committing to the tokens so far, and is charged for those.
        let streamed = |key: u64, step: &kernels::Step<'_>| match waiting.get(&key) {
            Some((_, Some(stream))) if step.text.is_empty() => !stream.is_closed(),
            Some((_, Some(stream))) => stream.send(step.text.to_string()).is_ok(),
            _ => true,
        };
        let stepped = generator.step(backend, &mut { streamed });
        match stepped {
            Ok(done) => {
                for (key, completion) in done {
                    if let Some((reply, _)) = waiting.remove(&key) {
                        let _ = reply.send(Ok(Output::completion(completion)));
                    }
                }
            }
            // The generator dropped every generation in progress: each job gets the error.
            Err(e) => {
                for (_, (reply, _)) in waiting.drain() {
                    let _ = reply.send(Err(e.to_string()));
                }
            }
        }
    }
}

/// Adds a job to the batch, or answers it at once with why its input is refused.
fn add(
    generator: &mut kernels::Generator<'_>,
    waiting: &mut HashMap<u64, (Reply, Option<TextStream>)>,
    next_key: &mut u64,
    job: Job,
) {
    let added = GenerateRequest::parse(&job.input).and_then(|req| generator.add(*next_key, &req));
    match added {
        Ok(()) => {
            waiting.insert(*next_key, (job.reply, job.stream));
            *next_key += 1;
        }
        Err(e) => {
            let _ = job.reply.send(Err(e.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Arc<Model> {
        Arc::new(Model::from_gguf_bytes("seeded", kernels::seeded_llama_gguf(3, 2)).unwrap())
    }

    /// Jobs sent together are decoded together, and each gets exactly what it gets alone;
    /// a bad input is refused without disturbing the others.
    #[tokio::test]
    async fn concurrent_jobs_get_what_they_get_alone() {
        let model = model();
        let backend: Arc<dyn Backend> = Arc::new(kernels::CpuBackend::new());
        let batcher = Batcher::spawn(model.clone(), backend.clone()).unwrap();
        let inputs: Vec<String> = (0..6)
            .map(|i| {
                format!(
                    r#"{{"messages": [{{"role": "user", "content": "story {i}"}}],
                        "max_tokens": {}, "temperature": 0.8, "seed": {i}}}"#,
                    4 + 3 * i
                )
            })
            .collect();
        let mut jobs: Vec<_> = inputs
            .iter()
            .map(|input| {
                let b = batcher.clone();
                let bytes = input.clone().into_bytes();
                tokio::spawn(async move { b.run(bytes).await })
            })
            .collect();
        let bad = batcher.run(b"{\"messages\": []}".to_vec()).await;
        assert!(bad.unwrap_err().contains("messages"));
        for (input, job) in inputs.iter().zip(jobs.drain(..)) {
            let got = job.await.unwrap().unwrap();
            let want = model.run(backend.as_ref(), input.as_bytes()).unwrap();
            assert_eq!(got.completion, want.completion, "{input}");
            assert_eq!(got.hash(), want.hash());
        }
    }

    /// A streamed job's pieces, in order, are its text; a job whose reader went away stops
    /// at once, `cancelled`, its tokens a prefix of the whole run's (whose hash at its units
    /// a validator derives).
    #[tokio::test]
    async fn streamed_text_is_the_completion_text() {
        let model = model();
        let backend: Arc<dyn Backend> = Arc::new(kernels::CpuBackend::new());
        let batcher = Batcher::spawn(model.clone(), backend.clone()).unwrap();
        let input = br#"{"messages": [{"role": "user", "content": "a tale"}], "max_tokens": 30,
            "temperature": 0.9, "seed": 2, "stop": ["e"]}"#;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let out = batcher
            .run_streaming(input.to_vec(), Some(tx))
            .await
            .unwrap();
        let mut text = String::new();
        while let Ok(piece) = rx.try_recv() {
            assert!(!piece.is_empty());
            text.push_str(&piece);
        }
        let want = model.run(backend.as_ref(), input).unwrap();
        assert_eq!(out.completion, want.completion);
        assert_eq!(text, want.completion.as_ref().unwrap().text);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        drop(rx);
        let out = batcher
            .run_streaming(input.to_vec(), Some(tx))
            .await
            .unwrap();
        let (cut, whole) = (
            out.completion.as_ref().unwrap(),
            want.completion.as_ref().unwrap(),
        );
        assert_eq!(cut.finish, kernels::FinishReason::Cancelled);
        assert_eq!(cut.tokens[..], whole.tokens[..cut.tokens.len()]);
        assert!(cut.tokens.len() < whole.tokens.len());
        assert_eq!(want.cancelled_hash(out.units(0)), Some(out.hash()));
    }

    /// A model that does not generate answers each job with the reason.
    #[tokio::test]
    async fn a_model_that_does_not_generate_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let spec = kernels::MlpSpec {
            input_dim: 4,
            hidden_dims: vec![8],
            num_classes: 3,
        };
        kernels::write_seeded_mlp(dir.path(), "mlp", 1, &spec).unwrap();
        let mlp = Arc::new(Model::load(dir.path()).unwrap());
        let batcher = Batcher::spawn(mlp, Arc::new(kernels::CpuBackend::new())).unwrap();
        let err = batcher.run(b"{}".to_vec()).await.unwrap_err();
        assert!(err.contains("does not generate"), "{err}");
    }
}
