//! Model directories: loading, content addressing, running, and the output format.

use std::fmt;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::id::hex32;
use crate::mlp::Mlp;
use crate::{Error, ModelId, keccak256};

/// The model's configuration file in a model directory.
pub(crate) const CONFIG_FILE: &str = "config.json";
/// The model's weights file in a model directory.
pub(crate) const WEIGHTS_FILE: &str = "model.safetensors";
/// Largest `config.json` accepted.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Largest `model.safetensors` accepted.
pub const MAX_WEIGHTS_BYTES: u64 = 1 << 30;
/// Most input rows one [`Model::run`] call accepts.
pub const MAX_ROWS: usize = 256;

/// The result of running a model: a row-major tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// Dimensions, outermost first (`[rows, num_classes]` for a classifier).
    pub shape: Vec<usize>,
    /// Values, row-major; `shape.iter().product()` of them.
    pub data: Vec<f32>,
}

impl Output {
    /// The commitment an executor signs and a validator recomputes:
    /// `keccak256(ndim as u32 LE ‖ each dim as u64 LE ‖ each value as f32 LE)`.
    pub fn hash(&self) -> [u8; 32] {
        use tiny_keccak::{Hasher, Keccak};
        let mut h = Keccak::v256();
        h.update(&(self.shape.len() as u32).to_le_bytes());
        for &d in &self.shape {
            h.update(&(d as u64).to_le_bytes());
        }
        // Hash in blocks rather than one call per value.
        let mut buf = Vec::with_capacity(4 * 1024);
        for chunk in self.data.chunks(1024) {
            buf.clear();
            for v in chunk {
                buf.extend_from_slice(&v.to_le_bytes());
            }
            h.update(&buf);
        }
        let mut out = [0u8; 32];
        h.finalize(&mut out);
        out
    }

    /// `{"shape": [..], "data": [..]}`, and for a 2-D output also `"argmax": [..]`, the index of
    /// the largest value in each row (the predicted class; the first one on ties). Each value is
    /// written as the shortest decimal that reads back as the same f32.
    pub fn to_json(&self) -> serde_json::Value {
        let data: Vec<serde_json::Value> = self.data.iter().map(|&v| f32_json(v)).collect();
        let mut obj = serde_json::Map::new();
        obj.insert("shape".into(), self.shape.clone().into());
        obj.insert("data".into(), data.into());
        if let [_, cols] = self.shape[..]
            && cols > 0
        {
            let argmax: Vec<usize> = self.data.chunks(cols).map(argmax).collect();
            obj.insert("argmax".into(), argmax.into());
        }
        serde_json::Value::Object(obj)
    }
}

fn f32_json(v: f32) -> serde_json::Value {
    // `Display` for f32 is the shortest decimal that round-trips; going through it keeps
    // 0.1f32 as 0.1 rather than 0.10000000149011612.
    v.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(serde_json::Value::Null, serde_json::Value::Number)
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// The network inside a model, by architecture.
enum Network {
    Mlp(Mlp),
}

/// A loaded, validated model, immutable and shareable across threads.
pub struct Model {
    id: ModelId,
    name: String,
    net: Network,
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let arch = match self.net {
            Network::Mlp(_) => "mlp",
        };
        f.debug_struct("Model")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("architecture", &arch)
            .finish()
    }
}

/// The architecture named in a config, read before the architecture's own config type.
#[derive(Deserialize)]
struct ConfigHead {
    architecture: String,
}

/// The input format of [`Model::run`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputJson<T> {
    inputs: Vec<Vec<T>>,
}

impl Model {
    /// Loads `dir/config.json` and `dir/model.safetensors`, checking the config, every tensor's
    /// name, dtype (F32), shape and finiteness, and the file size limits. The id is computed from
    /// the very bytes that were parsed. Bad files give an error, never a panic.
    pub fn load(dir: &Path) -> Result<Model, Error> {
        let config = read_file(&dir.join(CONFIG_FILE), MAX_CONFIG_BYTES)?;
        let weights = read_file(&dir.join(WEIGHTS_FILE), MAX_WEIGHTS_BYTES)?;
        let (_, id) = manifest_of(&config, &weights);
        let model = Model::from_bytes(id, &config, &weights)?;
        tracing::debug!(model = %id, name = %model.name, path = %dir.display(), "model loaded");
        Ok(model)
    }

    fn from_bytes(id: ModelId, config: &[u8], weights: &[u8]) -> Result<Model, Error> {
        let head: ConfigHead = serde_json::from_slice(config).map_err(|e| Error::BadConfig {
            reason: e.to_string(),
        })?;
        match head.architecture.as_str() {
            "mlp" => {
                let (mlp, name) = Mlp::from_bytes(config, weights)?;
                Ok(Model {
                    id,
                    name,
                    net: Network::Mlp(mlp),
                })
            }
            _ => Err(Error::UnsupportedArchitecture {
                architecture: head.architecture,
            }),
        }
    }

    /// keccak256 of the model's manifest (see [`manifest`]).
    pub fn id(&self) -> ModelId {
        self.id
    }

    /// The `name` from `config.json`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs the model on `input`, JSON `{"inputs": [[f32; input_dim], ...]}` with 1 to
    /// [`MAX_ROWS`] rows, and returns class probabilities of shape `[rows, num_classes]`.
    ///
    /// Deterministic: the same model, input and backend contract give the same bits on any
    /// machine, and each row's output does not depend on the other rows in the call.
    pub fn run(&self, backend: &dyn Backend, input: &[u8]) -> Result<Output, Error> {
        match &self.net {
            Network::Mlp(mlp) => {
                let dims = mlp.spec().input_dim;
                let (rows, x) = parse_input(input, dims)?;
                let data = mlp.forward(backend, rows, x)?;
                Ok(Output {
                    shape: vec![rows, mlp.spec().num_classes],
                    data,
                })
            }
        }
    }

    /// A valid input for this model (2 rows), the same bytes every time, for demos and smoke
    /// tests.
    pub fn example_input(&self) -> Vec<u8> {
        let dims = match &self.net {
            Network::Mlp(mlp) => mlp.spec().input_dim,
        };
        // Multiples of 1/8 in [-1, 1]: short decimals that are exact in f32.
        let inputs = (0..2)
            .map(|r| {
                (0..dims)
                    .map(|c| ((c * 7 + r * 3) % 17) as f32 / 8.0 - 1.0)
                    .collect()
            })
            .collect();
        serde_json::to_vec(&InputJson::<f32> { inputs }).unwrap_or_default()
    }
}

/// Parses and checks `{"inputs": [[..], ..]}`: returns the row count and the row-major values.
fn parse_input(input: &[u8], dims: usize) -> Result<(usize, Vec<f32>), Error> {
    let parsed: InputJson<f64> = serde_json::from_slice(input).map_err(|e| Error::BadInput {
        reason: e.to_string(),
    })?;
    let rows = parsed.inputs.len();
    if rows == 0 || rows > MAX_ROWS {
        return Err(Error::RowCount {
            rows,
            max: MAX_ROWS,
        });
    }
    let mut x = Vec::with_capacity(rows * dims);
    for (row, values) in parsed.inputs.iter().enumerate() {
        if values.len() != dims {
            return Err(Error::InputDims {
                row,
                expected: dims,
                actual: values.len(),
            });
        }
        for (col, &value) in values.iter().enumerate() {
            let v = value as f32;
            if !v.is_finite() {
                return Err(Error::NonFiniteInput { row, col, value });
            }
            x.push(v);
        }
    }
    Ok((rows, x))
}

/// Reads a whole file of at most `limit` bytes.
fn read_file(path: &Path, limit: u64) -> Result<Vec<u8>, Error> {
    let file = std::fs::File::open(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => Error::MissingFile {
            path: path.to_path_buf(),
        },
        _ => Error::Io {
            path: path.to_path_buf(),
            source,
        },
    })?;
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let size = file.metadata().map_err(io)?.len();
    if size > limit {
        return Err(Error::FileTooLarge {
            path: path.to_path_buf(),
            size,
            limit,
        });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    // `take` guards against a file that grows between the size check and the read.
    file.take(limit + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(Error::FileTooLarge {
            path: path.to_path_buf(),
            size: bytes.len() as u64,
            limit,
        });
    }
    Ok(bytes)
}

pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    std::fs::write(path, bytes).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[derive(Serialize)]
struct ManifestJson<'a> {
    files: Vec<ManifestEntry<'a>>,
}

#[derive(Serialize)]
struct ManifestEntry<'a> {
    name: &'a str,
    keccak: String,
}

/// The manifest of a model's files, given their contents, and its id.
pub(crate) fn manifest_of(config: &[u8], weights: &[u8]) -> (Vec<u8>, ModelId) {
    // Sorted by name; CONFIG_FILE < WEIGHTS_FILE.
    let files = vec![
        ManifestEntry {
            name: CONFIG_FILE,
            keccak: hex32(&keccak256(config)),
        },
        ManifestEntry {
            name: WEIGHTS_FILE,
            keccak: hex32(&keccak256(weights)),
        },
    ];
    // Serialising a struct of strings cannot fail; an empty manifest would still hash.
    let bytes = serde_json::to_vec(&ManifestJson { files }).unwrap_or_default();
    let id = ModelId(keccak256(&bytes));
    (bytes, id)
}

/// The canonical manifest of the model in `dir` and the [`ModelId`] it defines.
///
/// The manifest is compact JSON listing each model file (`config.json`, `model.safetensors`)
/// with the keccak256 of its bytes, sorted by name:
/// `{"files":[{"name":"config.json","keccak":"0x…"},{"name":"model.safetensors","keccak":"0x…"}]}`;
/// the id is keccak256 of those bytes. Only the files are read, not validated: an id can be
/// computed for a model this build cannot run.
pub fn manifest(dir: &Path) -> Result<(Vec<u8>, ModelId), Error> {
    let config = read_file(&dir.join(CONFIG_FILE), MAX_CONFIG_BYTES)?;
    let weights = read_file(&dir.join(WEIGHTS_FILE), MAX_WEIGHTS_BYTES)?;
    Ok(manifest_of(&config, &weights))
}

#[cfg(test)]
mod tests;
