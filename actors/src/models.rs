//! The set of models a node has on disk, loaded once and shared read-only by the actors that
//! run them (Inference executes, Verifier re-executes).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use kernels::{Model, ModelId};

/// Loaded models by id. Immutable after loading, so sharing it between actors shares no state.
#[derive(Clone, Default)]
pub struct Models(Arc<BTreeMap<ModelId, Arc<Model>>>);

impl Models {
    /// Loads every subdirectory of `dir` that holds a `config.json` or a `model.gguf`, and
    /// every `*.gguf` file in it. A missing `dir` is no models.
    pub fn load_dir(dir: &Path) -> Result<Models, kernels::Error> {
        let mut map = BTreeMap::new();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Ok(Models::default());
        };
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            let gguf_file = p.is_file() && p.extension().is_some_and(|e| e == "gguf");
            if p.join("config.json").is_file() || p.join("model.gguf").is_file() || gguf_file {
                let m = Model::load(&p)?;
                tracing::info!(model = %m.id(), name = m.name(), path = %p.display(), "model loaded");
                map.insert(m.id(), Arc::new(m));
            }
        }
        Ok(Models(Arc::new(map)))
    }

    pub fn get(&self, id: &ModelId) -> Option<Arc<Model>> {
        self.0.get(id).cloned()
    }

    pub fn ids(&self) -> Vec<ModelId> {
        self.0.keys().copied().collect()
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
