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
    /// Per-layer conv + scan state carried between segments of a streamed causal record.
    carry: Vec<B::Buf>,
    /// What a run leaves to read: `None` the final normalized hidden states, `Some(i)` the
    /// residual stream after block i (`layer`).
    tap: Option<usize>,
}

/// The views a layer's mixer runs through: the first half as is and, for RCPS, the second
/// half as flipLC(M(flipLC(n2))), where each flip becomes a walk direction or channel order.
fn views(cfg: &Config) -> Vec<View> {
    let mut v = vec![View { col: 0, flip_channels: false, backward: false }];
    if cfg.rcps {
        v.push(View { col: cfg.d_model, flip_channels: true, backward: true });
    }
    v
}

impl<B: Backend> Engine<B> {
    pub fn new(backend: B, cfg: Config) -> Self {
        Engine { backend, cfg, streams: None, capacity: 0, len: 0, carry: Vec::new(), tap: None }
    }

    /// Which hidden states later runs leave to read. Layer `i` (0..=n_layer) is the residual
    /// stream after block `i`, before any norm: 0 is the embedding output, `i` is the sum the
    /// next block's norm reads (the public code's `output_hidden_states[i]` plus the residual
    /// it is added to). For RCPS models its halves are in the order the final norm would read
    /// them if block `i` were the last. `None` (the default) is the final normalized output.
    pub fn set_layer(&mut self, layer: Option<usize>) -> Result<()> {
        if let Some(l) = layer {
            anyhow::ensure!(l <= self.cfg.n_layer, "layer {l}: the model has layers 0 (embeddings) to {}", self.cfg.n_layer);
        }
        self.tap = layer;
        Ok(())
    }

    /// The stream a run leaves its output in: the residual for a tapped layer.
    fn output(&self) -> Result<&B::Buf> {
        let (r, n) = self.streams.as_ref().ok_or_else(|| anyhow::anyhow!("no context has been run"))?;
        Ok(if self.tap.is_some() { r } else { n })
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    fn ensure_streams(&mut self, len: usize) -> Result<()> {
        let width = self.cfg.hidden_width();
        if self.capacity < len {
            // Drop the old pair first so peak memory is one pair, not two.
            self.streams = None;
            self.streams = Some((self.backend.alloc(len, width)?, self.backend.alloc(len, width)?));
            self.capacity = len;
        }
        Ok(())
    }

    /// Whether records can be streamed as one exact context (`run_segment`): a causal stack
    /// without RCPS, whose every layer only looks back.
    pub fn can_stream(&self) -> bool {
        !self.cfg.bidirectional && !self.cfg.rcps
    }

    /// Causal models: compute the next `tokens` of a record as the continuation of the
    /// segments before it (`first` starts a new record). Memory is one segment, not the record.
    pub fn run_segment(&mut self, tokens: &[u8], first: bool) -> Result<()> {
        anyhow::ensure!(self.can_stream(), "only causal models without RCPS can be streamed");
        let len = tokens.len();
        anyhow::ensure!(len > 0, "empty context");
        self.ensure_streams(len)?;
        if first || self.carry.len() != self.cfg.n_layer {
            self.carry = (0..self.cfg.n_layer).map(|_| self.backend.alloc_state()).collect::<Result<_>>()?;
        }
        let (r, n) = self.streams.as_mut().expect("allocated above");
        let b = &self.backend;
        b.embed(tokens, r)?;
        let blocks = self.tap.unwrap_or(self.cfg.n_layer);
        for (layer, state) in self.carry.iter_mut().enumerate().take(blocks) {
            b.rms_norm(r, n, len, Norm::Layer(layer))?;
            b.mixer_carry(layer, n, r, len, state)?;
        }
        if self.tap.is_none() {
            b.rms_norm(r, n, len, Norm::Final)?;
        }
        self.len = len;
        Ok(())
    }

    /// Compute the final normalized hidden states of `tokens` (one context, no padding).
    /// Read them with `read_rows`.
    pub fn run(&mut self, tokens: &[u8]) -> Result<()> {
        self.forward(tokens)
    }

    /// Whether `run_packed` works on this backend.
    pub fn supports_packing(&self) -> bool {
        self.backend.supports_packing()
    }

    /// Several records in one context: `tokens` is their concatenation and `starts` the first
    /// row of each (0 first, ascending). Every record's rows come out as if it had been run
    /// alone (the conv and scan state restart at each boundary in both walk directions;
    /// norms and projections are per row). Needs `supports_packing`.
    pub fn run_packed(&mut self, tokens: &[u8], starts: &[usize]) -> Result<()> {
        let len = tokens.len();
        anyhow::ensure!(self.backend.supports_packing(), "{}: cannot pack records into one context", self.backend.name());
        anyhow::ensure!(len > 0, "empty context");
        anyhow::ensure!(starts.first() == Some(&0), "packed records must start at row 0");
        anyhow::ensure!(
            starts.windows(2).all(|w| w[0] < w[1]) && starts.last().is_some_and(|&s| s < len),
            "packed record starts must ascend within the context (no empty records)"
        );
        self.backend.set_records(Some(starts), len)?;
        let result = self.forward(tokens);
        let cleared = self.backend.set_records(None, 0);
        result.and(cleared)
    }

    /// Column sums (f64) of row ranges of the last run's output, `width` = hidden width each.
    pub fn sum_rows(&self, ranges: &[(usize, usize)], out: &mut [f64]) -> Result<()> {
        let out_buf = self.output()?;
        anyhow::ensure!(ranges.iter().all(|&(a, b)| a <= b && b <= self.len), "sum past the end of the context");
        self.backend.sum_rows(out_buf, self.cfg.hidden_width(), ranges, out)
    }

    fn forward(&mut self, tokens: &[u8]) -> Result<()> {
        let len = tokens.len();
        anyhow::ensure!(len > 0, "empty context");
        self.ensure_streams(len)?;
        let (r, n) = self.streams.as_mut().expect("allocated above");
        let b = &self.backend;
        let swap = self.cfg.rcps && self.cfg.fused_add_norm;
        let views = views(&self.cfg);
        b.embed(tokens, r)?;
        for layer in 0..self.tap.unwrap_or(self.cfg.n_layer) {
            if swap {
                b.swap_halves(r, len)?;
            }
            b.rms_norm(r, n, len, Norm::Layer(layer))?;
            for &view in &views {
                if self.cfg.bidirectional {
                    // M(u) = Mamba_fwd(u) + flipL(Mamba_rev(flipL(u)))
                    b.bimamba(layer, n, r, len, view)?;
                } else {
                    b.mixer(layer, Dir::Fwd, n, r, len, view)?;
                }
            }
        }
        if self.tap.is_none() {
            b.rms_norm(r, n, len, Norm::Final)?;
        }
        self.len = len;
        Ok(())
    }

    /// Copy rows `start..` of the last run's output (`dst.len()` must be a multiple of the width).
    pub fn read_rows(&self, start: usize, dst: &mut [f32]) -> Result<()> {
        let out_buf = self.output()?;
        let rows = dst.len() / self.cfg.hidden_width();
        anyhow::ensure!(start + rows <= self.len, "read past the end of the context");
        self.backend.read_rows(out_buf, start, dst)
    }
}
