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
    /// The token ids it reads: its folder's tokenizer.json, else the Caduceus ids.
    pub vocab: vocab::Vocab,
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
        let vocab = vocab::Vocab::load(dir).map_err(ModelError::Config)?.unwrap_or_else(vocab::caduceus);
        check_vocab(&vocab, &config, &weights)?;
        Ok(Model { config, weights, vocab, source: dir.to_path_buf() })
    }

    /// Build from in-memory files (the embedded default model).
    pub fn from_bytes(config_json: &str, safetensors: &[u8], name: &str) -> Result<Self, ModelError> {
        let config = Config::from_json(config_json)?;
        let weights = Weights::from_bytes(&config, safetensors, Path::new(name))?;
        let vocab = vocab::caduceus();
        check_vocab(&vocab, &config, &weights)?;
        Ok(Model { config, weights, vocab, source: PathBuf::from(name) })
    }
}

/// The tokenizer and the model must agree: every id a row of the embedding, and the model's
/// complement map pairing the tokenizer's A with T and C with G (a tokenizer.json from another
/// model would silently scramble the reverse strand otherwise).
fn check_vocab(vocab: &vocab::Vocab, config: &Config, weights: &Weights) -> Result<(), ModelError> {
    let v = config.vocab_padded();
    if let Some((id, tok)) = vocab.tokens.iter().find(|(id, _)| *id as usize >= v) {
        return Err(ModelError::Config(format!("{}: token {tok:?} has id {id}, but the model has {v} token rows", vocab.source)));
    }
    let [a, c, g, t] = vocab.acgt.map(|i| i as usize);
    let comp = &weights.complement;
    if comp[a] != t || comp[t] != a || comp[c] != g || comp[g] != c {
        return Err(ModelError::Config(format!(
            "the model's complement map does not pair the {} ids of A/T ({a}, {t}) and C/G ({c}, {g}): tokenizer and model do not belong together",
            vocab.source
        )));
    }
    Ok(())
}
