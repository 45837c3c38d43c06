//! Library errors. The binary turns them into one `error: ...` line at the edge.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A file of the model folder could not be read.
    #[error("{}: {err}", path.display())]
    Io { path: PathBuf, err: std::io::Error },
    /// config.json is malformed or asks for something we do not compute.
    #[error("{0}")]
    Config(String),
    /// Only a pickled PyTorch checkpoint was found.
    #[error(
        "{}: pickled PyTorch checkpoints are not loaded (they can run code); convert it once with \
         `python -c \"import torch; from safetensors.torch import save_file; \
         save_file(torch.load('pytorch_model.bin'), 'model.safetensors')\"`",
        path.display()
    )]
    Pickle { path: PathBuf },
    /// model.safetensors is not a valid safetensors file.
    #[error("{}: not a valid safetensors file: {msg}", path.display())]
    Safetensors { path: PathBuf, msg: String },
    #[error("missing tensor {name} (expected shape {expected:?})")]
    MissingTensor { name: String, expected: Vec<usize> },
    #[error("tensor {name} matches no known Caduceus tensor name")]
    UnknownTensor { name: String },
    #[error("tensor {name}: expected shape {expected:?}, found {found:?}")]
    Shape { name: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("tensor {name}: dtype {found} is not supported (expected {expected})")]
    Dtype { name: String, expected: &'static str, found: String },
    #[error("tensor {name}: {msg}")]
    Value { name: String, msg: String },
}
