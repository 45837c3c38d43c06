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

    fn name(&self) -> String;
    fn alloc(&self, rows: usize, width: usize) -> Result<Self::Buf>;
    /// `out[l] = E[t_l]`, and for RCPS models `[E[t] | flipC(E[comp t])]` (§1.5.3).
    fn embed(&self, tokens: &[u8], out: &mut Self::Buf) -> Result<()>;
    /// Exchange the two D-wide halves of the first `len` rows (fused add-norm RCPS, §1.5.4).
    fn swap_halves(&self, buf: &mut Self::Buf, len: usize) -> Result<()>;
    /// `dst = RMSNorm(src)` per D-wide half; an RCPS second half uses the channel-flipped weight.
    fn rms_norm(&self, src: &Self::Buf, dst: &mut Self::Buf, len: usize, norm: Norm) -> Result<()>;
    /// `acc += Mamba_dir(input)` through `view`, over the first `len` rows.
    fn mixer(
        &self,
        layer: usize,
        dir: Dir,
        input: &Self::Buf,
        acc: &mut Self::Buf,
        len: usize,
        view: View,
    ) -> Result<()>;
    /// `acc += BiMamba(input)`: the forward mixer walks as `view` says, the reverse one the
    /// opposite way. Backends may compute the tied, position-wise in/out projections once for
    /// both directions; this default runs the two directions one after the other.
    fn bimamba(&self, layer: usize, input: &Self::Buf, acc: &mut Self::Buf, len: usize, view: View) -> Result<()> {
        self.mixer(layer, Dir::Fwd, input, acc, len, view)?;
        self.mixer(layer, Dir::Rev, input, acc, len, View { backward: !view.backward, ..view })
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
}
