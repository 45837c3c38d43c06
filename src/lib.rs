//! dna-mamba: Caduceus / Mamba DNA language models for shell pipelines.

pub mod backend;
pub mod cli;
pub mod embed;
pub mod error;
pub mod heads;
pub mod io;
pub mod model;
pub mod parallel;
pub mod progress;
pub mod sinks;
pub mod tiling;
pub mod tokenizer;
pub mod variants;
