//! The model hub: models by id over the mesh (`/proofmesh/model/1`).
//!
//! A node serves the files of every model it holds: a model's manifest, then each file in
//! chunks of at most [`MODEL_CHUNK_BYTES`], and announces itself in Kademlia as a provider of
//! each model id. A node that should hold a model it lacks finds its providers in Kademlia,
//! takes the manifest from one whose bytes hash to the id, then each file from a provider in
//! turn, checking the file's keccak against the manifest. A provider whose manifest or file
//! does not hash to what it should is penalised and the file is taken from the next one. The
//! model is written to the model directory, loaded (which checks the id once more), added to
//! the node's models, announced as provided, and only then served: the hub tells its listeners
//! ([`ServeModel`]) so the inference actor advertises it and the gateway routes to it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use kernels::{Manifest, ManifestFile, Model, ModelId};
use libp2p::PeerId;

use crate::metrics::METRICS;
use crate::models::Models;
use crate::network::{
    FindProviders, InboundModel, Network, PenalisePeer, ProvideModel, SendModelRequest,
};
use crate::protocol::{MODEL_CHUNK_BYTES, ModelReply, ModelRequest};

/// How long a fetch waits for Kademlia to name a provider other than this node.
pub const PROVIDER_WAIT: Duration = Duration::from_secs(30);
/// A progress line is logged every this many bytes of a file.
const LOG_EVERY_BYTES: usize = 32 << 20;
/// Chunks read from disk for peers at once; more requests wait (the per-peer request budget
/// and the request timeout bound how many wait).
const CONCURRENT_READS: usize = 4;

/// The models this node's inference serves, shared with the HTTP API: a model fetched from
/// peers joins it once the inference actor serves it.
#[derive(Clone, Default)]
pub struct Served(Arc<std::sync::RwLock<Vec<ModelId>>>);

impl Served {
    pub fn new(models: Vec<ModelId>) -> Self {
        Served(Arc::new(std::sync::RwLock::new(models)))
    }

    pub fn list(&self) -> Vec<ModelId> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn contains(&self, id: &ModelId) -> bool {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id)
    }

    pub fn set(&self, models: Vec<ModelId>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = models;
    }
}

/// A model this node now holds and serves (fetched from peers): the inference actor starts
/// running its jobs and the gateway routing them here.
#[derive(Message, Clone, Copy)]
#[rtype(result = "()")]
pub struct ServeModel(pub ModelId);

/// Fetch a model by id from the peers that provide it, unless this node holds it already.
/// `name` names its directory (the registry's name; the id when there is none).
#[derive(Message)]
#[rtype(result = "Result<Fetched, HubError>")]
pub struct FetchModel {
    pub id: ModelId,
    pub name: Option<String>,
}

/// What a fetch did.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    pub id: ModelId,
    /// The node held the model already: nothing was fetched.
    pub already: bool,
    /// Verified bytes received (files only).
    pub bytes: u64,
    pub seconds: f64,
    /// Providers Kademlia named.
    pub providers: usize,
    /// Manifests or files refused because they did not hash to what they should.
    pub rejected: u32,
    /// Where the files are now.
    pub path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("no peer provides model {0} (Kademlia named none within {PROVIDER_WAIT:?})")]
    NoProviders(ModelId),
    #[error("model {id}: {reason}")]
    Failed { id: ModelId, reason: String },
    #[error("model {0} is being fetched already")]
    InProgress(ModelId),
}

/// Listeners told when a model starts being served, and the hub's settings.
pub struct HubConfig {
    /// Where fetched models are written (the node's model directory).
    pub dir: PathBuf,
    /// This node's peer id (Kademlia names it among the providers of its own models).
    pub me: PeerId,
    /// Testnet fault injection: every chunk served has a byte flipped.
    pub corrupt: bool,
}

pub struct Hub {
    models: Models,
    network: Addr<Network>,
    config: HubConfig,
    /// Manifest bytes of the models served, computed once at start (it hashes every file)
    /// and kept from each fetch: a request never makes this node read a model whole.
    manifests: HashMap<ModelId, Arc<Vec<u8>>>,
    /// Disk reads for peers in progress at most.
    reads: Arc<tokio::sync::Semaphore>,
    fetching: HashSet<ModelId>,
    listeners: Vec<Recipient<ServeModel>>,
}

impl Hub {
    pub fn new(models: Models, network: Addr<Network>, config: HubConfig) -> Self {
        if config.corrupt {
            tracing::warn!("FAULT INJECTION: this node serves model files with a flipped byte");
        }
        Hub {
            models,
            network,
            config,
            manifests: HashMap::new(),
            reads: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_READS)),
            fetching: HashSet::new(),
            listeners: Vec::new(),
        }
    }

    /// Tells `r` of every model fetched from now on.
    pub fn with_listener(mut self, r: Recipient<ServeModel>) -> Self {
        self.listeners.push(r);
        self
    }
}

impl Actor for Hub {
    type Context = Context<Self>;

    /// Computes the manifest of every model held here (off the actor's thread), then
    /// announces each: a model is provided once its manifest can be served.
    fn started(&mut self, ctx: &mut Self::Context) {
        let models = self.models.clone();
        let work = tokio::task::spawn_blocking(move || {
            models
                .ids()
                .into_iter()
                .filter_map(|id| {
                    let path = models.path(&id)?;
                    match kernels::manifest(&path) {
                        Ok((bytes, computed)) if computed == id => Some((id, bytes)),
                        Ok(_) => {
                            tracing::warn!(model = %id, path = %path.display(), "model files changed on disk: not served to peers");
                            None
                        }
                        Err(e) => {
                            tracing::warn!(model = %id, error = %e, "model files unreadable: not served to peers");
                            None
                        }
                    }
                })
                .collect::<Vec<_>>()
        });
        ctx.spawn(work.into_actor(self).map(|done, act, _| {
            for (id, bytes) in done.unwrap_or_default() {
                act.manifests.insert(id, Arc::new(bytes));
                act.network.do_send(ProvideModel(id));
            }
        }));
    }
}

impl Handler<InboundModel> for Hub {
    type Result = ResponseActFuture<Self, ModelReply>;

    fn handle(&mut self, msg: InboundModel, _: &mut Self::Context) -> Self::Result {
        let (models, corrupt) = (self.models.clone(), self.config.corrupt);
        match msg.request {
            ModelRequest::Manifest(id) => Box::pin(fut::ready(match self.manifests.get(&id) {
                Some(m) => ModelReply::Manifest(m.to_vec()),
                None => not_held(&id),
            })),
            ModelRequest::Chunk {
                model,
                file,
                offset,
            } => {
                let (Some(path), true) = (models.path(&model), self.manifests.contains_key(&model))
                else {
                    return Box::pin(fut::ready(not_held(&model)));
                };
                let reads = self.reads.clone();
                let work = async move {
                    let _permit = reads.acquire_owned().await.map_err(|e| e.to_string())?;
                    tokio::task::spawn_blocking(move || read_chunk(&path, &file, offset))
                        .await
                        .map_err(|e| e.to_string())?
                };
                Box::pin(work.into_actor(self).map(move |r, _, _| match r {
                    Ok((size, mut data)) => {
                        if corrupt && let Some(b) = data.first_mut() {
                            *b ^= 0x5a;
                        }
                        METRICS.model_served_bytes.inc_by(data.len() as u64);
                        ModelReply::Chunk { size, data }
                    }
                    Err(e) => ModelReply::NotFound(e),
                }))
            }
        }
    }
}

fn not_held(id: &ModelId) -> ModelReply {
    ModelReply::NotFound(format!("this node does not hold model {id}"))
}

/// Up to [`MODEL_CHUNK_BYTES`] of `file` of the model at `path` from `offset`, with the
/// file's size. Only the names a manifest may list are served: a request names no other
/// path.
fn read_chunk(path: &Path, file: &str, offset: u64) -> Result<(u64, Vec<u8>), String> {
    use std::io::{Read, Seek, SeekFrom};
    let Some(&name) = kernels::MODEL_FILES.iter().find(|n| **n == file) else {
        return Err(format!("{file:?} is not a model file name"));
    };
    let full = if path.is_file() {
        // A bare `.gguf` file is the model's one file, `model.gguf`.
        if name != "model.gguf" {
            return Err(format!("this model has no {name}"));
        }
        path.to_path_buf()
    } else {
        path.join(name)
    };
    let mut f = std::fs::File::open(&full).map_err(|e| format!("{name}: {e}"))?;
    let size = f.metadata().map_err(|e| format!("{name}: {e}"))?.len();
    if offset > size {
        return Err(format!(
            "offset {offset} is past the end of {name} ({size} bytes)"
        ));
    }
    f.seek(SeekFrom::Start(offset))
        .map_err(|e| format!("{name}: {e}"))?;
    let want = (size - offset).min(MODEL_CHUNK_BYTES as u64) as usize;
    let mut data = vec![0u8; want];
    f.read_exact(&mut data)
        .map_err(|e| format!("{name}: {e}"))?;
    Ok((size, data))
}

impl Handler<FetchModel> for Hub {
    type Result = ResponseActFuture<Self, Result<Fetched, HubError>>;

    fn handle(&mut self, msg: FetchModel, _: &mut Self::Context) -> Self::Result {
        let id = msg.id;
        if let Some(path) = self.models.path(&id) {
            return Box::pin(fut::ready(Ok(Fetched {
                id,
                already: true,
                bytes: 0,
                seconds: 0.0,
                providers: 0,
                rejected: 0,
                path,
            })));
        }
        if !self.fetching.insert(id) {
            return Box::pin(fut::ready(Err(HubError::InProgress(id))));
        }
        let fetcher = Fetcher {
            network: self.network.clone(),
            me: self.config.me,
            id,
        };
        let dir = self.config.dir.join(dir_name(msg.name.as_deref(), &id));
        let scratch = self.config.dir.join(format!(".fetch-{id}"));
        let work = async move { fetcher.fetch(&scratch, &dir).await };
        Box::pin(
            work.into_actor(self)
                .map(move |r, act, _| {
                    act.fetching.remove(&id);
                    match r {
                        Ok((model, manifest_bytes, fetched)) => {
                            METRICS.model_fetches.with_label_values(&["ok"]).inc();
                            METRICS.model_fetch_seconds.observe(fetched.seconds);
                            tracing::info!(model = %id, name = model.name(), bytes = fetched.bytes, seconds = fetched.seconds, path = %fetched.path.display(), "model fetched, verified and loaded");
                            act.models.insert(model, fetched.path.clone());
                            act.manifests.insert(id, Arc::new(manifest_bytes));
                            act.network.do_send(ProvideModel(id));
                            Ok((fetched, act.listeners.clone()))
                        }
                        Err(e) => {
                            METRICS.model_fetches.with_label_values(&["failed"]).inc();
                            tracing::warn!(model = %id, error = %e, "model fetch failed");
                            Err(e)
                        }
                    }
                })
                // Answered once every listener serves it (the gateway routes jobs to it).
                .then(move |r, act, _| {
                    async move {
                        let (fetched, listeners) = r?;
                        for l in listeners {
                            let _ = l.send(ServeModel(id)).await;
                        }
                        Ok(fetched)
                    }
                    .into_actor(act)
                }),
        )
    }
}

/// A model's directory name: the registry's name when it is a plain one, else the id.
fn dir_name(name: Option<&str>, id: &ModelId) -> String {
    match name {
        Some(n)
            if !n.is_empty()
                && n.len() <= 64
                && !n.starts_with('.')
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) =>
        {
            n.to_string()
        }
        _ => id.to_string(),
    }
}

/// Why one provider's copy of a file was not taken.
enum PartError {
    /// It sent bytes that are not the file (penalised).
    Bad(String),
    /// It did not answer, or does not have it (not its fault).
    Unavailable(String),
}

/// One model's fetch.
struct Fetcher {
    network: Addr<Network>,
    me: PeerId,
    id: ModelId,
}

impl Fetcher {
    fn failed(&self, reason: impl Into<String>) -> HubError {
        HubError::Failed {
            id: self.id,
            reason: reason.into(),
        }
    }

    /// Providers, manifest, then each file written under `scratch` as it arrives; the model
    /// is loaded from there (its id checked once more) and only then moved to `dir`. Nothing
    /// is left behind on failure. Returns the model, its manifest's bytes and what moved.
    async fn fetch(
        &self,
        scratch: &Path,
        dir: &Path,
    ) -> Result<(Model, Vec<u8>, Fetched), HubError> {
        let started = Instant::now();
        let providers = self.providers().await?;
        tracing::info!(model = %self.id, providers = providers.len(), "fetching a model from peers");
        let mut rejected = 0u32;
        let (manifest, manifest_bytes) = self.manifest(&providers, &mut rejected).await?;
        let _ = std::fs::remove_dir_all(scratch);
        let result = self
            .files_into(scratch, dir, &providers, &manifest, &mut rejected)
            .await;
        if result.is_err() {
            let _ = std::fs::remove_dir_all(scratch);
        }
        let (model, path, bytes) = result?;
        let fetched = Fetched {
            id: self.id,
            already: false,
            bytes,
            seconds: started.elapsed().as_secs_f64(),
            providers: providers.len(),
            rejected,
            path,
        };
        Ok((model, manifest_bytes, fetched))
    }

    /// Every file of `manifest` into `scratch`, the model loaded from there, then moved to
    /// `dir` (or, when `dir` exists already — another model of the same name — next to it
    /// under the model's id).
    async fn files_into(
        &self,
        scratch: &Path,
        dir: &Path,
        providers: &[PeerId],
        manifest: &Manifest,
        rejected: &mut u32,
    ) -> Result<(Model, PathBuf, u64), HubError> {
        let mut bytes = 0u64;
        for (i, file) in manifest.files.iter().enumerate() {
            let path = scratch.join(file.name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| self.failed(format!("creating {}: {e}", parent.display())))?;
            }
            bytes += self.file(providers, i, file, &path, rejected).await?;
        }
        let load_from = scratch.to_path_buf();
        let model = tokio::task::spawn_blocking(move || Model::load(&load_from))
            .await
            .map_err(|e| self.failed(e.to_string()))?
            .map_err(|e| self.failed(format!("the fetched files do not load here: {e}")))?;
        if model.id() != self.id {
            return Err(self.failed(format!("the files loaded as model {}", model.id())));
        }
        let target = if dir.exists() {
            dir.with_file_name(self.id.to_string())
        } else {
            dir.to_path_buf()
        };
        std::fs::rename(scratch, &target)
            .map_err(|e| self.failed(format!("moving the files to {}: {e}", target.display())))?;
        // Named as it would be if loaded from where it now is (unless its config names it).
        let model = match (model.name().starts_with(".fetch-"), target.file_name()) {
            (true, Some(name)) => model.renamed(&name.to_string_lossy()),
            _ => model,
        };
        Ok((model, target, bytes))
    }

    /// The providers Kademlia names (this node left out), waiting up to [`PROVIDER_WAIT`] for
    /// one.
    async fn providers(&self) -> Result<Vec<PeerId>, HubError> {
        let deadline = Instant::now() + PROVIDER_WAIT;
        loop {
            let mut found = match self.network.send(FindProviders(self.id)).await {
                Ok(Ok(found)) => found,
                Ok(Err(e)) => return Err(self.failed(e.to_string())),
                Err(e) => return Err(self.failed(e.to_string())),
            };
            found.retain(|p| *p != self.me);
            if !found.is_empty() {
                found.sort();
                return Ok(found);
            }
            if Instant::now() >= deadline {
                return Err(HubError::NoProviders(self.id));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn ask(&self, peer: PeerId, request: ModelRequest) -> Result<ModelReply, String> {
        match self.network.send(SendModelRequest { peer, request }).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn penalise(&self, peer: PeerId, part: &str, why: &str, rejected: &mut u32) {
        *rejected += 1;
        METRICS.model_bad_parts.with_label_values(&[part]).inc();
        tracing::warn!(model = %self.id, %peer, part, reason = why, "provider sent bad model data: penalised, trying the next");
        self.network.do_send(PenalisePeer {
            peer,
            reason: "sent model data that does not hash to its manifest",
        });
    }

    /// The first manifest a provider sends whose bytes hash to the id.
    async fn manifest(
        &self,
        providers: &[PeerId],
        rejected: &mut u32,
    ) -> Result<(Manifest, Vec<u8>), HubError> {
        let mut last = String::from("no provider answered");
        for &peer in providers {
            match self.ask(peer, ModelRequest::Manifest(self.id)).await {
                Ok(ModelReply::Manifest(bytes)) => match Manifest::parse(&bytes) {
                    Ok(m) if m.id == self.id => return Ok((m, bytes)),
                    Ok(m) => {
                        last = format!("{peer} sent the manifest of {}", m.id);
                        self.penalise(peer, "manifest", &last, rejected);
                    }
                    Err(e) => {
                        last = format!("{peer}: {e}");
                        self.penalise(peer, "manifest", &last, rejected);
                    }
                },
                Ok(ModelReply::NotFound(why)) => last = format!("{peer}: {why}"),
                Ok(ModelReply::Chunk { .. }) => {
                    last = format!("{peer} answered a manifest request with a chunk");
                    self.penalise(peer, "manifest", &last, rejected);
                }
                Err(e) => last = format!("{peer}: {e}"),
            }
        }
        Err(self.failed(format!("no manifest from any provider ({last})")))
    }

    /// File `index` of the manifest from the providers in turn (starting at a different one
    /// per file, to spread the load).
    async fn file(
        &self,
        providers: &[PeerId],
        index: usize,
        file: &ManifestFile,
        path: &Path,
        rejected: &mut u32,
    ) -> Result<u64, HubError> {
        let mut last = String::new();
        for k in 0..providers.len() {
            let peer = providers[(index + k) % providers.len()];
            match self.file_from(peer, file, path).await {
                Ok(size) => return Ok(size),
                Err(PartError::Bad(why)) => {
                    self.penalise(peer, "file", &why, rejected);
                    last = format!("{peer}: {why}");
                }
                Err(PartError::Unavailable(why)) => {
                    tracing::info!(model = %self.id, %peer, file = file.name, reason = %why, "provider unavailable, trying the next");
                    last = format!("{peer}: {why}");
                }
            }
        }
        Err(self.failed(format!(
            "no provider sent {} as the manifest lists it ({last})",
            file.name
        )))
    }

    /// One file from one provider, chunk by chunk, written to `path` and hashed as it comes
    /// (a model is never held in memory whole), checked against the manifest.
    async fn file_from(
        &self,
        peer: PeerId,
        file: &ManifestFile,
        path: &Path,
    ) -> Result<u64, PartError> {
        use std::io::Write;
        let started = Instant::now();
        let mut out = std::fs::File::create(path)
            .map_err(|e| PartError::Unavailable(format!("{}: {e}", path.display())))?;
        // Hashed in the kernels crate (optimised in every build): generic hashing code
        // instantiated here would run unoptimised in a debug build, at about 1 MiB/s.
        let mut hasher = kernels::KeccakStream::new();
        let mut got = 0u64;
        let mut size: Option<u64> = None;
        let mut logged = 0u64;
        let result = loop {
            let request = ModelRequest::Chunk {
                model: self.id,
                file: file.name.to_string(),
                offset: got,
            };
            let (claimed, chunk) = match self.ask(peer, request).await {
                Ok(ModelReply::Chunk { size, data }) => (size, data),
                Ok(ModelReply::NotFound(why)) => break Err(PartError::Unavailable(why)),
                Ok(ModelReply::Manifest(_)) => {
                    break Err(PartError::Bad(
                        "answered a chunk request with a manifest".into(),
                    ));
                }
                Err(e) => break Err(PartError::Unavailable(e)),
            };
            // Checked before the bytes are kept: a size past the file's limit, a size that
            // changes, a chunk past the size, or an empty chunk before the end.
            if claimed > file.limit {
                break Err(PartError::Bad(format!(
                    "{} of {claimed} bytes is past the limit of {}",
                    file.name, file.limit
                )));
            }
            if size.is_some_and(|s| s != claimed) {
                break Err(PartError::Bad(format!("{}'s size changed", file.name)));
            }
            size = Some(claimed);
            let end = got + chunk.len() as u64;
            if chunk.len() > MODEL_CHUNK_BYTES || end > claimed {
                break Err(PartError::Bad(format!(
                    "a chunk of {} runs past the file's {claimed} bytes",
                    file.name
                )));
            }
            if chunk.is_empty() && end < claimed {
                break Err(PartError::Bad(format!("an empty chunk of {}", file.name)));
            }
            hasher.update(&chunk);
            if let Err(e) = out.write_all(&chunk) {
                break Err(PartError::Unavailable(format!("{}: {e}", path.display())));
            }
            got = end;
            if got - logged >= LOG_EVERY_BYTES as u64 {
                logged = got;
                let secs = started.elapsed().as_secs_f64().max(1e-3);
                tracing::info!(model = %self.id, %peer, file = file.name, bytes = got, of = claimed, mib_per_s = format!("{:.1}", got as f64 / secs / (1 << 20) as f64), "fetching");
            }
            if end == claimed {
                break Ok(());
            }
        };
        let checked = result.and_then(|()| {
            if hasher.finalize() == file.keccak {
                Ok(())
            } else {
                Err(PartError::Bad(format!(
                    "{} does not hash to the manifest's keccak",
                    file.name
                )))
            }
        });
        if let Err(e) = checked {
            drop(out);
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        METRICS.model_fetch_bytes.inc_by(got);
        let secs = started.elapsed().as_secs_f64().max(1e-3);
        tracing::info!(model = %self.id, %peer, file = file.name, bytes = got, seconds = format!("{secs:.2}"), mib_per_s = format!("{:.1}", got as f64 / secs / (1 << 20) as f64), "file fetched and verified");
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunks: only manifest names are served, offsets past the end are refused, the last
    /// chunk is short, and a bare `.gguf` file serves as `model.gguf` only.
    #[test]
    fn chunks_are_read_within_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("m");
        std::fs::create_dir(&dir).unwrap();
        let bytes: Vec<u8> = (0..MODEL_CHUNK_BYTES + 10).map(|i| i as u8).collect();
        std::fs::write(dir.join("model.gguf"), &bytes).unwrap();
        std::fs::write(tmp.path().join("secret"), b"no").unwrap();
        let (size, first) = read_chunk(&dir, "model.gguf", 0).unwrap();
        assert_eq!((size, first.len()), (bytes.len() as u64, MODEL_CHUNK_BYTES));
        let (_, last) = read_chunk(&dir, "model.gguf", MODEL_CHUNK_BYTES as u64).unwrap();
        assert_eq!(last, bytes[MODEL_CHUNK_BYTES..]);
        let (_, end) = read_chunk(&dir, "model.gguf", bytes.len() as u64).unwrap();
        assert!(end.is_empty());
        for (file, offset, want) in [
            ("model.gguf", bytes.len() as u64 + 1, "past the end"),
            ("../secret", 0, "not a model file name"),
            ("/etc/passwd", 0, "not a model file name"),
            ("config.json", 0, "config.json"),
        ] {
            let e = read_chunk(&dir, file, offset).unwrap_err();
            assert!(e.contains(want), "{file}: {e}");
        }
        let file = dir.join("model.gguf");
        assert_eq!(read_chunk(&file, "model.gguf", 0).unwrap().1, first);
        assert!(
            read_chunk(&file, "config.json", 0)
                .unwrap_err()
                .contains("no config.json")
        );
    }

    #[test]
    fn directory_names_are_plain() {
        let id = ModelId([7; 32]);
        assert_eq!(dir_name(Some("smollm2-135m"), &id), "smollm2-135m");
        for bad in ["", "../x", ".hidden", "a/b", "a b", &"x".repeat(65)] {
            assert_eq!(dir_name(Some(bad), &id), id.to_string(), "{bad:?}");
        }
        assert_eq!(dir_name(None, &id), id.to_string());
    }
}
