//! The Caduceus forward pass, written once for every backend (model-format.md §1.5).
//!
//! Memory: two full-length streams, the residual `r` and the normalized `n`. The residual add
//! of the next block is folded into the mixer (`r += M(n)` turns `r` into the next `h + r`),
//! so a layer needs no third buffer; everything wider lives per chunk inside the backend.

use anyhow::Result;

use super::Config;
use crate::backend::{Backend, Dir, Norm, View};

/// Runs contexts through one model on one backend, reusing its two stream buffers.
pub struct Engine<B: Backend> {
    backend: B,
    cfg: Config,
    streams: Option<(B::Buf, B::Buf)>,
    capacity: usize,
    len: usize,
}

/// The mixer calls of one layer: (direction, view), in the order they accumulate.
fn passes(cfg: &Config) -> Vec<(Dir, View)> {
    let d = cfg.d_model;
    let v = |col, flip_channels, backward| View { col, flip_channels, backward };
    let mut p = vec![(Dir::Fwd, v(0, false, false))];
    if cfg.bidirectional {
        // M(u) = Mamba_fwd(u) + flipL(Mamba_rev(flipL(u)))
        p.push((Dir::Rev, v(0, false, true)));
    }
    if cfg.rcps {
        // second half: flipLC(M(flipLC(n2))) — every flip becomes a walk direction / channel order
        p.push((Dir::Fwd, v(d, true, true)));
        if cfg.bidirectional {
            p.push((Dir::Rev, v(d, true, false)));
        }
    }
    p
}

impl<B: Backend> Engine<B> {
    pub fn new(backend: B, cfg: Config) -> Self {
        Engine { backend, cfg, streams: None, capacity: 0, len: 0 }
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Compute the final normalized hidden states of `tokens` (one context, no padding).
    /// Read them with `read_rows`.
    pub fn run(&mut self, tokens: &[u8]) -> Result<()> {
        let len = tokens.len();
        anyhow::ensure!(len > 0, "empty context");
        let width = self.cfg.hidden_width();
        if self.capacity < len {
            // Drop the old pair first so peak memory is one pair, not two.
            self.streams = None;
            self.streams = Some((self.backend.alloc(len, width)?, self.backend.alloc(len, width)?));
            self.capacity = len;
        }
        let (r, n) = self.streams.as_mut().expect("allocated above");
        let b = &self.backend;
        let swap = self.cfg.rcps && self.cfg.fused_add_norm;
        let passes = passes(&self.cfg);
        b.embed(tokens, r)?;
        for layer in 0..self.cfg.n_layer {
            if swap {
                b.swap_halves(r, len)?;
            }
            b.rms_norm(r, n, len, Norm::Layer(layer))?;
            for &(dir, view) in &passes {
                b.mixer(layer, dir, n, r, len, view)?;
            }
        }
        b.rms_norm(r, n, len, Norm::Final)?;
        self.len = len;
        Ok(())
    }

    /// Copy rows `start..` of the last run's output (`dst.len()` must be a multiple of the width).
    pub fn read_rows(&self, start: usize, dst: &mut [f32]) -> Result<()> {
        let (_, n) = self.streams.as_ref().ok_or_else(|| anyhow::anyhow!("no context has been run"))?;
        let rows = dst.len() / self.cfg.hidden_width();
        anyhow::ensure!(start + rows <= self.len, "read past the end of the context");
        self.backend.read_rows(n, start, dst)
    }
}
