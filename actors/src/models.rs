//! The set of models a node has on disk, shared by the actors that run them (Inference
//! executes, Verifier re-executes) and the model hub (which serves their files to peers and
//! adds the models it fetches).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use kernels::{Model, ModelId};

/// A loaded model and where its files are (a directory, or a `.gguf` file).
struct Entry {
    model: Arc<Model>,
    path: PathBuf,
}

/// Loaded models by id. Models are only added (a fetched model), never changed: a model's
/// `Arc` is the same for as long as the node runs.
#[derive(Clone, Default)]
pub struct Models(Arc<RwLock<BTreeMap<ModelId, Entry>>>);

impl Models {
    /// Loads every subdirectory of `dir` that holds a `config.json` or a `model.gguf`, and
    /// every `*.gguf` file in it. A missing `dir` is no models.
    pub fn load_dir(dir: &Path) -> Result<Models, kernels::Error> {
        let models = Models::default();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Ok(models);
        };
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            // `.fetch-…` and `.name.partial`: files being written, not models yet.
            if p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                continue;
            }
            let gguf_file = p.is_file() && p.extension().is_some_and(|e| e == "gguf");
            if p.join("config.json").is_file() || p.join("model.gguf").is_file() || gguf_file {
                let m = Model::load(&p)?;
                tracing::info!(model = %m.id(), name = m.name(), path = %p.display(), "model loaded");
                models.insert(m, p);
            }
        }
        Ok(models)
    }

    /// Adds a model loaded from `path` (a second model with the same id is ignored).
    pub fn insert(&self, model: Model, path: PathBuf) {
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        map.entry(model.id()).or_insert(Entry {
            model: Arc::new(model),
            path,
        });
    }

    pub fn get(&self, id: &ModelId) -> Option<Arc<Model>> {
        let map = self.0.read().unwrap_or_else(|e| e.into_inner());
        map.get(id).map(|e| e.model.clone())
    }

    /// Where a model's files are: a directory, or a `.gguf` file.
    pub fn path(&self, id: &ModelId) -> Option<PathBuf> {
        let map = self.0.read().unwrap_or_else(|e| e.into_inner());
        map.get(id).map(|e| e.path.clone())
    }

    pub fn ids(&self) -> Vec<ModelId> {
        let map = self.0.read().unwrap_or_else(|e| e.into_inner());
        map.keys().copied().collect()
    }
}

#[cfg(test)]
#[path = "../../kernels/src/testing.rs"]
mod testing;

#[cfg(test)]
mod tests {
    use super::*;

    /// Directories with a config, directories with a `model.gguf` and bare `.gguf` files all
    /// load; the same GGUF bytes as a file or in a directory are one model (one id); other
    /// entries are skipped.
    #[test]
    fn loads_directories_and_gguf_files() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = kernels::MlpSpec {
            input_dim: 4,
            hidden_dims: vec![8],
            num_classes: 3,
        };
        kernels::write_seeded_mlp(&tmp.path().join("mlp"), "mlp", 1, &spec).unwrap();
        let gguf = super::testing::smollm2_dir().join("model.gguf");
        std::os::unix::fs::symlink(&gguf, tmp.path().join("smollm2.gguf")).unwrap();
        std::fs::create_dir(tmp.path().join("smol")).unwrap();
        std::os::unix::fs::symlink(&gguf, tmp.path().join("smol/model.gguf")).unwrap();
        std::fs::write(tmp.path().join("notes.txt"), "not a model").unwrap();
        std::fs::create_dir(tmp.path().join("empty")).unwrap();
        let models = Models::load_dir(tmp.path()).unwrap();
        assert_eq!(models.ids().len(), 2);
        let (_, id) = kernels::manifest(&gguf).unwrap();
        let llm = models.get(&id).unwrap();
        assert!(llm.generates());
        assert_eq!(llm.architecture(), "llama");
        assert_eq!(kernels::manifest(&tmp.path().join("smol")).unwrap().1, id);
    }
}
