//! `dna-mamba info`: what a model is and what `embed` will compute with it.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::{load_model_from, DEFAULT_CONTEXT};

/// Only the model: `info` computes nothing, so the run flags of the other commands (device,
/// threads, precision, ...) would do nothing here.
#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Model folder with config.json + model.safetensors [default: the built-in model].
    #[arg(short, long, value_name = "DIR")]
    pub model: Option<PathBuf>,
}

pub fn run(args: InfoArgs) -> Result<()> {
    let m = load_model_from(args.model.as_deref())?;
    let c = &m.config;
    let mut out = std::io::stdout().lock();
    writeln!(out, "model: {}", m.source.display())?;
    writeln!(out, "architecture: {}", c.describe())?;
    writeln!(out, "parameters: {}", m.weights.n_params)?;
    writeln!(out, "hidden width: {} (final hidden state as the public model returns it)", c.hidden_width())?;
    writeln!(out, "rc-equivariant (RCPS): {}; fused add-norm half swap: {}", c.rcps, c.rcps && c.fused_add_norm)?;
    writeln!(out, "lm head: {}", if m.weights.lm_head.is_some() { "stored untied" } else { "tied to the embedding" })?;
    writeln!(out, "context: {} bases per tile (default)", c.model_max_length.unwrap_or(DEFAULT_CONTEXT))?;
    let both = if c.rcps { "channel-half average (one pass)" } else { "average of forward and reverse-complement passes" };
    writeln!(out, "embed --strand both: {both}, width {}", c.d_model)?;
    let v = &m.vocab;
    let toks: Vec<String> = v.tokens.iter().map(|(i, t)| format!("{t}={i}")).collect();
    writeln!(out, "vocabulary: {} (from {})", toks.join(" "), v.source)?;
    let name = |i: Option<u8>| i.map_or("none".to_string(), |i| i.to_string());
    writeln!(out, "unknown id {}, mask id {}, pad id {}; A,C,G,T = {:?}", v.unk, name(v.mask), name(v.pad), v.acgt)?;
    Ok(())
}

