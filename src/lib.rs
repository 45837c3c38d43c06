//! dna-mamba: Caduceus / Mamba DNA language models for shell pipelines.

pub mod backend;
pub mod batch;
pub mod cli;
pub mod embed;
pub mod error;
pub mod heads;
pub mod io;
pub mod model;
pub mod output;
pub mod parallel;
pub mod pool;
pub mod progress;
pub mod tiling;
pub mod tokenizer;
pub mod variants;
