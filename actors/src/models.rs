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
    /// Loads every subdirectory of `dir` that holds a `config.json`. A missing `dir` is no models.
    pub fn load_dir(dir: &Path) -> Result<Models, kernels::Error> {
        let mut map = BTreeMap::new();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Ok(Models::default());
        };
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            if p.join("config.json").is_file() {
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
