//! The MLP classifier: config, weight layout, forward pass, and a seeded generator of models.
//!
//! Layout: `layers.{i}.weight` is `[in, out]` and `layers.{i}.bias` is `[out]`, both F32, for
//! `i = 0..=hidden_dims.len()`. Forward: every layer is GEMM + bias; GELU follows every layer but
//! the last, softmax follows the last.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, PackedMatrix};
use crate::model::{CONFIG_FILE, MAX_WEIGHTS_BYTES, WEIGHTS_FILE, manifest_of, write_file};
use crate::rng::SplitMix64;
use crate::weights::{self, Tensor, take};
use crate::{Error, ModelId};

/// Largest width of any layer (input, hidden or classes).
const MAX_DIM: usize = 1 << 16;
/// Largest number of hidden layers.
const MAX_HIDDEN_LAYERS: usize = 64;
/// Longest model name, in bytes.
const MAX_NAME_LEN: usize = 128;

/// The shape of an MLP classifier: `input_dim → hidden_dims[0] → … → num_classes`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MlpSpec {
    /// Values per input row.
    pub input_dim: usize,
    /// Widths of the hidden layers, in order (may be empty: a linear classifier).
    pub hidden_dims: Vec<usize>,
    /// Number of classes, the width of the output.
    pub num_classes: usize,
}

impl MlpSpec {
    /// Checks every width is in 1..=65536, there are at most 64 hidden layers, and the weights
    /// fit in [`MAX_WEIGHTS_BYTES`].
    fn validate(&self) -> Result<(), Error> {
        if self.hidden_dims.len() > MAX_HIDDEN_LAYERS {
            return Err(Error::BadSpec {
                reason: format!(
                    "{} hidden layers, at most {MAX_HIDDEN_LAYERS}",
                    self.hidden_dims.len()
                ),
            });
        }
        let dims = std::iter::once(("input_dim", self.input_dim))
            .chain(self.hidden_dims.iter().map(|&d| ("hidden_dims", d)))
            .chain(std::iter::once(("num_classes", self.num_classes)));
        for (what, d) in dims {
            if d == 0 || d > MAX_DIM {
                return Err(Error::BadSpec {
                    reason: format!("{what} contains {d}, must be 1..={MAX_DIM}"),
                });
            }
        }
        let params: usize = self.layer_dims().iter().map(|&(i, o)| i * o + o).sum();
        let bytes = 4 * params as u64;
        if bytes > MAX_WEIGHTS_BYTES {
            return Err(Error::BadSpec {
                reason: format!(
                    "{params} parameters need {bytes} bytes, over the {MAX_WEIGHTS_BYTES}-byte limit"
                ),
            });
        }
        Ok(())
    }

    /// `(fan_in, fan_out)` of each layer, first to last.
    fn layer_dims(&self) -> Vec<(usize, usize)> {
        let widths: Vec<usize> = std::iter::once(self.input_dim)
            .chain(self.hidden_dims.iter().copied())
            .chain(std::iter::once(self.num_classes))
            .collect();
        widths.windows(2).map(|w| (w[0], w[1])).collect()
    }
}

/// `config.json` of an MLP. Field order here is the order `write_seeded_mlp` writes.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MlpConfig {
    architecture: String,
    name: String,
    input_dim: usize,
    hidden_dims: Vec<usize>,
    num_classes: usize,
    activation: String,
}

fn validate_name(name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return Err(Error::BadConfig {
            reason: format!(
                "name {name:?} must be 1..={MAX_NAME_LEN} bytes without control characters"
            ),
        });
    }
    Ok(())
}

struct Layer {
    /// `fan_in × fan_out`, packed once at load into the GEMM's layout.
    weight: PackedMatrix,
    bias: Vec<f32>,
    fan_out: usize,
}

/// A loaded MLP.
pub(crate) struct Mlp {
    spec: MlpSpec,
    layers: Vec<Layer>,
}

impl Mlp {
    /// Parses an MLP config (already known to say `"architecture": "mlp"`) and its weights,
    /// checking every tensor against the config. Returns the model and its name.
    pub(crate) fn from_bytes(config: &[u8], weights_bytes: &[u8]) -> Result<(Mlp, String), Error> {
        let cfg: MlpConfig = serde_json::from_slice(config).map_err(|e| Error::BadConfig {
            reason: e.to_string(),
        })?;
        validate_name(&cfg.name)?;
        if cfg.activation != "gelu" {
            return Err(Error::UnsupportedActivation {
                activation: cfg.activation,
            });
        }
        let spec = MlpSpec {
            input_dim: cfg.input_dim,
            hidden_dims: cfg.hidden_dims,
            num_classes: cfg.num_classes,
        };
        spec.validate()?;
        let mut tensors = weights::read_f32(weights_bytes)?;
        let mut layers = Vec::new();
        for (i, (fan_in, fan_out)) in spec.layer_dims().into_iter().enumerate() {
            let weight = take(
                &mut tensors,
                format!("layers.{i}.weight"),
                vec![fan_in, fan_out],
            )?;
            let bias = take(&mut tensors, format!("layers.{i}.bias"), vec![fan_out])?;
            layers.push(Layer {
                weight: PackedMatrix::new(&weight, fan_in, fan_out),
                bias,
                fan_out,
            });
        }
        if let Some(name) = tensors.into_keys().next() {
            return Err(Error::UnexpectedTensor { name });
        }
        Ok((Mlp { spec, layers }, cfg.name))
    }

    pub(crate) fn spec(&self) -> &MlpSpec {
        &self.spec
    }

    /// Class probabilities for `rows` rows of `x` (row-major, `rows × input_dim`, all finite).
    pub(crate) fn forward(
        &self,
        backend: &dyn Backend,
        rows: usize,
        mut x: Vec<f32>,
    ) -> Result<Vec<f32>, Error> {
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            let mut y = backend.gemm_packed(&x, &layer.weight, Some(&layer.bias), rows);
            // Finite in, finite out for GELU and softmax; only the GEMM can overflow.
            if y.iter().any(|v| !v.is_finite()) {
                return Err(Error::NonFiniteOutput { layer: i });
            }
            if i < last {
                backend.gelu(&mut y);
            } else {
                backend.softmax_rows(&mut y, layer.fan_out);
            }
            x = y;
        }
        Ok(x)
    }
}

/// Writes a complete MLP model directory (`config.json` and `model.safetensors`) with weights
/// drawn from a seeded generator, and returns its [`ModelId`].
///
/// Each layer's weights (row-major `[in, out]`) and then its bias take successive values of
/// SplitMix64(`seed`), each mapped to a uniform value in [-1, 1) on a 2^-23 grid and multiplied
/// by `1/√in` (computed in f64, rounded to f32). Every step is exact or correctly rounded, so the
/// same arguments give byte-identical files, hence the same id, on any machine.
pub fn write_seeded_mlp(
    dir: &Path,
    name: &str,
    seed: u64,
    spec: &MlpSpec,
) -> Result<ModelId, Error> {
    validate_name(name)?;
    spec.validate()?;
    let config = MlpConfig {
        architecture: "mlp".into(),
        name: name.into(),
        input_dim: spec.input_dim,
        hidden_dims: spec.hidden_dims.clone(),
        num_classes: spec.num_classes,
        activation: "gelu".into(),
    };
    let mut config_bytes = serde_json::to_vec_pretty(&config).map_err(|e| Error::BadConfig {
        reason: e.to_string(),
    })?;
    config_bytes.push(b'\n');

    let mut rng = SplitMix64::new(seed);
    let mut tensors = Vec::new();
    for (i, (fan_in, fan_out)) in spec.layer_dims().into_iter().enumerate() {
        let scale = (1.0 / (fan_in as f64).sqrt()) as f32;
        let weight = (0..fan_in * fan_out)
            .map(|_| rng.next_f32() * scale)
            .collect();
        let bias = (0..fan_out).map(|_| rng.next_f32() * scale).collect();
        tensors.push((
            format!("layers.{i}.weight"),
            Tensor {
                shape: vec![fan_in, fan_out],
                data: weight,
            },
        ));
        tensors.push((
            format!("layers.{i}.bias"),
            Tensor {
                shape: vec![fan_out],
                data: bias,
            },
        ));
    }
    let weights_bytes = weights::write_f32(&tensors);

    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    write_file(&dir.join(CONFIG_FILE), &config_bytes)?;
    write_file(&dir.join(WEIGHTS_FILE), &weights_bytes)?;
    let (_, id) = manifest_of(&config_bytes, &weights_bytes);
    tracing::debug!(model = %id, name, seed, path = %dir.display(), "seeded mlp written");
    Ok(id)
}
