//! The default model, compiled into the binary so `dna-mamba embed x.fa` works when the binary
//! is copied anywhere. Trained by `train/` on real genomes; see models/default/README.md.

use super::Model;
use crate::error::ModelError;

pub const NAME: &str = "built-in default model (models/default: Caduceus-Ph, d_model 256, 8 layers)";

#[cfg(feature = "builtin-model")]
const CONFIG: &str = include_str!("../../models/default/config.json");
#[cfg(feature = "builtin-model")]
const WEIGHTS: &[u8] = include_bytes!("../../models/default/model.safetensors");

#[cfg(feature = "builtin-model")]
pub fn load() -> Result<Model, ModelError> {
    Model::from_bytes(CONFIG, WEIGHTS, NAME)
}

/// Builds without the `builtin-model` feature (test executables carried to a GPU machine, where
/// the binary already holds the model) have none: every command then needs `--model`.
#[cfg(not(feature = "builtin-model"))]
pub fn load() -> Result<Model, ModelError> {
    Err(ModelError::Config("this build has no built-in model (built without the builtin-model feature): pass --model DIR".into()))
}
