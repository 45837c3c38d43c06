//! `dna-mamba info`: what a model is and what `embed` will compute with it.

use std::io::Write;

use anyhow::Result;
use clap::Args;

use super::{load_model, Common, DEFAULT_CONTEXT};

#[derive(Args, Debug)]
pub struct InfoArgs {
    #[command(flatten)]
    pub common: Common,
}

pub fn run(args: InfoArgs) -> Result<()> {
    let m = load_model(&args.common)?;
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
    Ok(())
}

