//! A loaded checkpoint: validated config plus f32 weights. The forward pass is in `forward`.

pub mod config;
pub mod default;
pub mod forward;
pub mod hub;
pub mod lm_head;
pub mod tensors;
pub mod torch;
pub mod vocab;
pub mod weights;

use std::path::{Path, PathBuf};

pub use config::Config;
pub use weights::Weights;

use crate::error::ModelError;

#[derive(Clone, Debug)]
pub struct Model {
    pub config: Config,
    pub weights: Weights,
    /// Where it came from, for messages.
    pub source: PathBuf,
}

impl Model {
    /// Load a Hugging Face style folder (config.json + weights), or a repository id found in
    /// the local Hugging Face cache (`hub`).
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let dir = &hub::resolve(dir)?;
        if !dir.is_dir() {
            return Err(ModelError::Io {
                path: dir.to_path_buf(),
                err: std::io::Error::new(std::io::ErrorKind::NotFound, "model folder not found"),
            });
        }
        let config = Config::from_dir(dir)?;
        let weights = Weights::from_dir(&config, dir)?;
        Ok(Model { config, weights, source: dir.to_path_buf() })
    }

    /// Build from in-memory files (the embedded default model).
    pub fn from_bytes(config_json: &str, safetensors: &[u8], name: &str) -> Result<Self, ModelError> {
        let config = Config::from_json(config_json)?;
        let weights = Weights::from_bytes(&config, safetensors, Path::new(name))?;
        Ok(Model { config, weights, source: PathBuf::from(name) })
    }
}
