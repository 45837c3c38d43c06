//! The default model, compiled into the binary so `dna-mamba embed x.fa` works when the binary
//! is copied anywhere. Trained by `train/` on real genomes; see models/default/README.md.

use super::Model;
use crate::error::ModelError;

pub const NAME: &str = "built-in default model (models/default: Caduceus-Ph, d_model 256, 8 layers)";

const CONFIG: &str = include_str!("../../models/default/config.json");
const WEIGHTS: &[u8] = include_bytes!("../../models/default/model.safetensors");

pub fn load() -> Result<Model, ModelError> {
    Model::from_bytes(CONFIG, WEIGHTS, NAME)
}
