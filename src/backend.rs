//! Compute backends behind one trait, so the forward pass (`model::forward`) is written once.
//!
//! The operations are the pieces of the Caduceus block at the granularity a GPU wants them:
//! the residual and normalized streams are `[rows, width]` buffers owned by the backend,
//! and one call runs one Mamba direction over the whole context, chunk by chunk, with the
//! conv and scan state carried between chunks.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;

use anyhow::Result;

/// The first rows of records packed into a context of `len` rows: 0 first, ascending, each
/// within the context (no empty record). Checked once here for the engine and every backend.
pub fn check_record_starts(starts: &[usize], len: usize) -> Result<()> {
    anyhow::ensure!(starts.first() == Some(&0), "packed records must start at row 0");
    anyhow::ensure!(
        starts.windows(2).all(|w| w[0] < w[1]) && starts.last().is_some_and(|&s| s < len),
        "packed record starts must ascend within the context (no empty records)"
    );
    Ok(())
}

/// Arithmetic of the projections (`--precision`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Precision {
    /// f32 everywhere (matches the CPU backend to ~1e-7).
    #[default]
    F32,
    /// GPU only: in_proj, x_proj, dt_proj and out_proj read bf16 operands on tensor cores and
    /// accumulate and write f32; residual, norms, conv, Δ, A, the scan state and all
    /// reductions stay f32 (~2e-3 norm-wise from f32 on 16-layer models).
    Bf16,
}

/// Which RMSNorm weight to apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Norm {
    Layer(usize),
    Final,
}

/// Which of a bidirectional layer's two Mamba mixers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Fwd,
    Rev,
}

/// How a mixer sees the streams: which D-wide column block, whether channels are reversed
/// (RCPS's flipC), and whether positions are walked from the end (reverse Mamba, RCPS's flipL).
/// Output goes back through the same mapping, so flips are never materialised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    pub col: usize,
    pub flip_channels: bool,
    pub backward: bool,
}

pub trait Backend {
    /// A row-major `[rows, width]` f32 buffer in the backend's memory.
    type Buf;
    /// The record boundaries of a packed context, as the backend keeps them (`records`).
    type Records;

    fn name(&self) -> String;
    fn alloc(&self, rows: usize, width: usize) -> Result<Self::Buf>;
    /// The normalized stream: written by the layers' norms, read only by their mixers (the
    /// final norm runs in place on the residual stream). A backend whose mixers read it at
    /// lower precision may store it smaller; this default is `alloc`.
    fn alloc_normalized(&self, rows: usize, width: usize) -> Result<Self::Buf> {
        self.alloc(rows, width)
    }
    /// `out[l] = E[t_l]`, and for RCPS models `[E[t] | flipC(E[comp t])]` (§1.5.3).
    fn embed(&self, tokens: &[u8], out: &mut Self::Buf) -> Result<()>;
    /// Exchange the two D-wide halves of the first `len` rows (fused add-norm RCPS, §1.5.4).
    fn swap_halves(&self, buf: &mut Self::Buf, len: usize) -> Result<()>;
    /// `dst = RMSNorm(src)` per D-wide half; an RCPS second half uses the channel-flipped weight.
    fn rms_norm(&self, src: &Self::Buf, dst: &mut Self::Buf, len: usize, norm: Norm) -> Result<()>;
    /// `buf = RMSNorm(buf)`, the same per-row computation in place.
    fn rms_norm_in_place(&self, buf: &mut Self::Buf, len: usize, norm: Norm) -> Result<()>;
    /// `acc += Mamba_dir(input)` through `view`, over the first `len` rows; with `records`
    /// (from `records`, for a context of `len` rows) record by record.
    #[allow(clippy::too_many_arguments)]
    fn mixer(
        &self,
        layer: usize,
        dir: Dir,
        input: &Self::Buf,
        acc: &mut Self::Buf,
        len: usize,
        view: View,
        records: Option<&Self::Records>,
    ) -> Result<()>;
    /// `acc += BiMamba(input)`: the forward mixer walks as `view` says, the reverse one the
    /// opposite way. Backends may compute the tied, position-wise in/out projections once for
    /// both directions; this default runs the two directions one after the other.
    fn bimamba(&self, layer: usize, input: &Self::Buf, acc: &mut Self::Buf, len: usize, view: View, records: Option<&Self::Records>) -> Result<()> {
        self.mixer(layer, Dir::Fwd, input, acc, len, view, records)?;
        self.mixer(layer, Dir::Rev, input, acc, len, View { backward: !view.backward, ..view }, records)
    }
    /// Like `mixer` for the forward direction in plain orientation, but the conv and scan
    /// state start from and are written back to `state` (from `alloc_state`), so a causal
    /// model can run a record segment by segment as one exact context.
    fn mixer_carry(&self, _layer: usize, _input: &Self::Buf, _acc: &mut Self::Buf, _len: usize, _state: &mut Self::Buf) -> Result<()> {
        anyhow::bail!("{}: streaming causal contexts are not implemented on this backend", self.name())
    }
    /// A zeroed carry state for `mixer_carry`.
    fn alloc_state(&self) -> Result<Self::Buf> {
        anyhow::bail!("{}: streaming causal contexts are not implemented on this backend", self.name())
    }
    /// Copy rows `start..start + dst.len() / width` to host memory.
    fn read_rows(&self, buf: &Self::Buf, start: usize, dst: &mut [f32]) -> Result<()>;
    /// Copy the first `len` rows of `src` into `dst` (same width), on the backend.
    fn copy_rows(&self, src: &Self::Buf, dst: &mut Self::Buf, len: usize) -> Result<()>;
    /// Whether `records` works: several records packed into one context.
    fn supports_packing(&self) -> bool {
        false
    }
    /// Bases a batch of short records should hold when they are packed: enough to fill a GPU
    /// (this default), or, on the CPU, enough to spread the per-context overhead while rows
    /// keep streaming out of a slow input.
    fn pack_bases(&self) -> usize {
        crate::embed::PACK_BASES
    }
    /// The record boundaries of one packed context of `len` rows, for its mixer calls:
    /// `starts` are the first rows of the records (0 first, ascending). The conv and scan
    /// state then restart at every record boundary in both walk directions, so each record's
    /// rows equal those of a run over that record alone.
    fn records(&self, starts: &[usize], len: usize) -> Result<Self::Records>;
    /// Whether calls queue work that completes later (a GPU stream) rather than doing it, so
    /// that a caller gains by doing its own work between `sum_rows_start` and `_finish`.
    fn queues(&self) -> bool {
        false
    }
    /// Column sums in flight (`sum_rows_start`), for `sum_rows_finish`.
    type Sums;
    /// Column sums, in f64, of row ranges of a `width`-wide buffer, queued behind the work
    /// before them (work queued after them may overwrite `buf`); the CPU computes them here.
    fn sum_rows_start(&self, buf: &Self::Buf, width: usize, ranges: &[(usize, usize)]) -> Result<Self::Sums>;
    /// Wait for sums from `sum_rows_start`: `out[i * width..][..width]` is the sum of rows
    /// `ranges[i].0..ranges[i].1`.
    fn sum_rows_finish(&self, sums: Self::Sums, out: &mut [f64]) -> Result<()>;
    /// `sum_rows_start`, then `sum_rows_finish`.
    fn sum_rows(&self, buf: &Self::Buf, width: usize, ranges: &[(usize, usize)], out: &mut [f64]) -> Result<()> {
        let sums = self.sum_rows_start(buf, width, ranges)?;
        self.sum_rows_finish(sums, out)
    }
}
