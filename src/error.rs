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
    /// A PyTorch checkpoint that cannot be read (or must not be: see model::torch).
    #[error("{}: {msg}", path.display())]
    Torch { path: PathBuf, msg: String },
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
