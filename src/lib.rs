//! dna-mamba: Caduceus / Mamba DNA language models for shell pipelines.

pub mod backend;
pub mod embed;
pub mod error;
pub mod model;
pub mod tiling;
pub mod tokenizer;
