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
    /// (residual, normalized): the final norm runs in place on the residual stream, so the
    /// normalized one is read only by the layers' mixers (and may be stored smaller).
    streams: Option<(B::Buf, B::Buf)>,
    capacity: usize,
    len: usize,
    /// Per-layer conv + scan state carried between segments of a streamed causal record.
    carry: Vec<B::Buf>,
    /// What a run leaves to read: empty, the final normalized hidden states; else the
    /// residual stream after each of these blocks (ascending, `set_layers`), side by side.
    taps: Vec<usize>,
    /// Copies of the residual stream at every tap but the last (which is read from `r`).
    tap_bufs: Vec<B::Buf>,
}

/// Column sums of one run's output in flight (`Engine::sum_rows_start`), one part per
/// output buffer (layer).
pub struct PendingSums<B: Backend> {
    parts: Vec<B::Sums>,
    ranges: usize,
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
        Engine { backend, cfg, streams: None, capacity: 0, len: 0, carry: Vec::new(), taps: Vec::new(), tap_bufs: Vec::new() }
    }

    /// Which hidden states later runs leave to read. Layer `i` (0..=n_layer) is the residual
    /// stream after block `i`, before any norm: 0 is the embedding output, `i` is the sum the
    /// next block's norm reads (the public code's `output_hidden_states[i]` plus the residual
    /// it is added to). For RCPS models its halves are in the order the final norm would read
    /// them if block `i` were the last. `None` (the default) is the final normalized output.
    pub fn set_layer(&mut self, layer: Option<usize>) -> Result<()> {
        self.set_layers(layer.as_slice())
    }

    /// Several layers from one pass: each row read is the rows of these layers (in this
    /// order, which must ascend) side by side, `row_width()` wide. Every layer but the last
    /// costs one more stream of the context's length. Empty: the final normalized output.
    pub fn set_layers(&mut self, layers: &[usize]) -> Result<()> {
        for &l in layers {
            anyhow::ensure!(l <= self.cfg.n_layer, "layer {l}: the model has layers 0 (embeddings) to {}", self.cfg.n_layer);
        }
        anyhow::ensure!(layers.windows(2).all(|w| w[0] < w[1]), "layers must be given in ascending order, each once");
        self.taps = layers.to_vec();
        self.tap_bufs.clear();
        self.len = 0;
        Ok(())
    }

    /// How many layers a row holds (1 without taps).
    pub fn layers(&self) -> usize {
        self.taps.len().max(1)
    }

    /// Width of the rows `read_rows` and `sum_rows` give: the hidden width per layer.
    pub fn row_width(&self) -> usize {
        self.cfg.hidden_width() * self.layers()
    }

    /// The last block to run: the last tap, else all of them.
    fn blocks(&self) -> usize {
        self.taps.last().copied().unwrap_or(self.cfg.n_layer)
    }

    /// The buffers a run leaves its outputs in, one per layer of a row.
    fn outputs(&self) -> Result<Vec<&B::Buf>> {
        let (r, _) = self.streams.as_ref().ok_or_else(|| anyhow::anyhow!("no context has been run"))?;
        if self.taps.is_empty() {
            // the final norm ran in place on the residual stream
            return Ok(vec![r]);
        }
        Ok(self.tap_bufs.iter().chain(std::iter::once(r)).collect())
    }

    /// After block `done` (0: the embeddings) of a run: keep the residual stream if a tap
    /// other than the last wants it.
    fn keep_tap(&mut self, done: usize, len: usize) -> Result<()> {
        let last = self.taps.len().saturating_sub(1);
        if let Some(k) = self.taps[..last].iter().position(|&t| t == done) {
            let (r, _) = self.streams.as_ref().expect("allocated");
            self.backend.copy_rows(r, &mut self.tap_bufs[k], len)?;
        }
        Ok(())
    }

    /// One buffer per tap but the last, as long as the streams.
    fn ensure_tap_bufs(&mut self, len: usize) -> Result<()> {
        let want = self.taps.len().saturating_sub(1);
        if self.tap_bufs.len() != want || self.capacity < len {
            self.tap_bufs.clear();
            let width = self.cfg.hidden_width();
            let rows = self.capacity.max(len);
            for _ in 0..want {
                self.tap_bufs.push(self.backend.alloc(rows, width)?);
            }
        }
        Ok(())
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    fn ensure_streams(&mut self, len: usize) -> Result<()> {
        let width = self.cfg.hidden_width();
        // the tap copies are sized with the streams (before `capacity` grows)
        self.ensure_tap_bufs(len)?;
        if self.capacity < len {
            // Drop the old pair first so peak memory is one pair, not two.
            self.streams = None;
            self.streams = Some((self.backend.alloc(len, width)?, self.backend.alloc_normalized(len, width)?));
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
        self.backend.embed(tokens, &mut self.streams.as_mut().expect("allocated above").0)?;
        self.keep_tap(0, len)?;
        let mut carry = std::mem::take(&mut self.carry);
        for (layer, state) in carry.iter_mut().enumerate().take(self.blocks()) {
            let (r, n) = self.streams.as_mut().expect("allocated above");
            self.backend.rms_norm(r, n, len, Norm::Layer(layer))?;
            self.backend.mixer_carry(layer, n, r, len, state)?;
            self.keep_tap(layer + 1, len)?;
        }
        self.carry = carry;
        if self.taps.is_empty() {
            let (r, _) = self.streams.as_mut().expect("allocated above");
            self.backend.rms_norm_in_place(r, len, Norm::Final)?;
        }
        self.len = len;
        Ok(())
    }

    /// Compute the final normalized hidden states of `tokens` (one context, no padding).
    /// Read them with `read_rows`.
    pub fn run(&mut self, tokens: &[u8]) -> Result<()> {
        self.forward(tokens, None)
    }

    /// Whether `run_packed` works on this backend.
    pub fn supports_packing(&self) -> bool {
        self.backend.supports_packing()
    }

    /// Bases a batch of packed short records should hold on this backend.
    pub fn pack_bases(&self) -> usize {
        self.backend.pack_bases()
    }

    /// Several records in one context: `tokens` is their concatenation and `starts` the first
    /// row of each (0 first, ascending). Every record's rows come out as if it had been run
    /// alone (the conv and scan state restart at each boundary in both walk directions;
    /// norms and projections are per row). Needs `supports_packing`.
    pub fn run_packed(&mut self, tokens: &[u8], starts: &[usize]) -> Result<()> {
        let len = tokens.len();
        anyhow::ensure!(self.backend.supports_packing(), "{}: cannot pack records into one context", self.backend.name());
        anyhow::ensure!(len > 0, "empty context");
        crate::backend::check_record_starts(starts, len)?;
        let records = self.backend.records(starts, len)?;
        self.forward(tokens, Some(&records))
    }

    /// Column sums (f64) of row ranges of the last run's output, `row_width()` each.
    pub fn sum_rows(&self, ranges: &[(usize, usize)], out: &mut [f64]) -> Result<()> {
        let sums = self.sum_rows_start(ranges)?;
        self.sum_rows_finish(sums, out)
    }

    /// `sum_rows`, queued: the sums are taken before the next run overwrites the output, and
    /// `sum_rows_finish` waits for them (so the host can work while the backend computes).
    pub fn sum_rows_start(&self, ranges: &[(usize, usize)]) -> Result<PendingSums<B>> {
        anyhow::ensure!(ranges.iter().all(|&(a, b)| a <= b && b <= self.len), "sum past the end of the context");
        let hw = self.cfg.hidden_width();
        let parts = self.outputs()?.into_iter().map(|buf| self.backend.sum_rows_start(buf, hw, ranges)).collect::<Result<_>>()?;
        Ok(PendingSums { parts, ranges: ranges.len() })
    }

    /// The sums of `sum_rows_start`; with several layers, each range's layers side by side.
    pub fn sum_rows_finish(&self, sums: PendingSums<B>, out: &mut [f64]) -> Result<()> {
        let hw = self.cfg.hidden_width();
        let PendingSums { mut parts, ranges } = sums;
        anyhow::ensure!(out.len() == ranges * hw * parts.len(), "sum_rows: output of the wrong size");
        if parts.len() == 1 {
            return self.backend.sum_rows_finish(parts.pop().expect("one part"), out);
        }
        let n = parts.len();
        let mut part = vec![0.0; ranges * hw];
        for (k, p) in parts.into_iter().enumerate() {
            self.backend.sum_rows_finish(p, &mut part)?;
            for (dst, src) in out.chunks_mut(hw * n).zip(part.chunks(hw)) {
                dst[k * hw..(k + 1) * hw].copy_from_slice(src);
            }
        }
        Ok(())
    }

    /// The forward pass over one context; `records`: the packed records' boundaries.
    fn forward(&mut self, tokens: &[u8], records: Option<&B::Records>) -> Result<()> {
        let len = tokens.len();
        anyhow::ensure!(len > 0, "empty context");
        self.ensure_streams(len)?;
        let swap = self.cfg.rcps && self.cfg.fused_add_norm;
        let views = views(&self.cfg);
        self.backend.embed(tokens, &mut self.streams.as_mut().expect("allocated above").0)?;
        self.keep_tap(0, len)?;
        for layer in 0..self.blocks() {
            let (r, n) = self.streams.as_mut().expect("allocated above");
            let b = &self.backend;
            if swap {
                b.swap_halves(r, len)?;
            }
            b.rms_norm(r, n, len, Norm::Layer(layer))?;
            for &view in &views {
                if self.cfg.bidirectional {
                    // M(u) = Mamba_fwd(u) + flipL(Mamba_rev(flipL(u)))
                    b.bimamba(layer, n, r, len, view, records)?;
                } else {
                    b.mixer(layer, Dir::Fwd, n, r, len, view, records)?;
                }
            }
            self.keep_tap(layer + 1, len)?;
        }
        if self.taps.is_empty() {
            let (r, _) = self.streams.as_mut().expect("allocated above");
            self.backend.rms_norm_in_place(r, len, Norm::Final)?;
        }
        self.len = len;
        Ok(())
    }

    /// Copy rows `start..` of the last run's output (`dst.len()` must be a multiple of
    /// `row_width()`): with several layers, each row is the layers' rows side by side.
    pub fn read_rows(&self, start: usize, dst: &mut [f32]) -> Result<()> {
        let bufs = self.outputs()?;
        let rows = dst.len() / self.row_width();
        anyhow::ensure!(start + rows <= self.len, "read past the end of the context");
        if let [buf] = bufs.as_slice() {
            return self.backend.read_rows(buf, start, dst);
        }
        let hw = self.cfg.hidden_width();
        let mut part = vec![0.0; rows * hw];
        for (k, buf) in bufs.iter().enumerate() {
            self.backend.read_rows(buf, start, &mut part)?;
            for (d, p) in dst.chunks_mut(hw * bufs.len()).zip(part.chunks(hw)) {
                d[k * hw..(k + 1) * hw].copy_from_slice(p);
            }
        }
        Ok(())
    }
}
