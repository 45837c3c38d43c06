//! The CPU backend: the project's reference path. f32 throughout, rayon for parallelism,
//! `gemm` for the projections, and a selective scan vectorised over 16-channel blocks.

mod scan;
pub mod simd;

use std::sync::Arc;

use anyhow::{ensure, Result};
use gemm::Parallelism;
use rayon::prelude::*;

use super::{Backend, Dir, Norm, View};
use crate::model::{weights::Mamba, Model};

/// Positions processed per chunk: the wide intermediates (in_proj output, scan inputs) live
/// only for one chunk, so memory beyond the two streams is O(chunk), not O(context).
pub const DEFAULT_CHUNK: usize = 1024;

/// 1 GiB: shares projections up to ~170k positions for d_model 256 (3·512 floats a position).
pub const DEFAULT_SHARE_BYTES: usize = 1 << 30;

/// Bases per packed batch on the CPU: ~55 reads of 150 bp, which removes most of the cost of
/// one context per read, and a few seconds of the default model on two cores, so that
/// `classify -` on a slow pipe still streams its rows.
const CPU_PACK_BASES: usize = 8192;

pub struct Cpu {
    model: Arc<Model>,
    chunk: usize,
    /// Largest full-length buffer pair (in_proj output + gated y, 3·d_inner floats a position)
    /// spent to compute the tied projections once for both directions; longer contexts run
    /// the two directions separately, costing ~1.8x the projection work but no memory.
    share_bytes: usize,
    /// A in the scan's block layout, per layer and direction: [blocks][d_state][16].
    a_blocks: Vec<[Vec<f32>; 2]>,
    isa: simd::Isa,
}

/// The records of a packed context: their first rows and the context's length. Each mixer
/// call runs record by record, the state restarting at each, exactly as if every record were
/// its own context.
pub struct CpuRecords(Vec<usize>);

/// `[rows, width]` row-major in host memory.
pub struct CpuBuf {
    pub data: Vec<f32>,
    pub width: usize,
}

impl Cpu {
    pub fn new(model: Arc<Model>) -> Self {
        Self::with_chunk(model, DEFAULT_CHUNK)
    }

    pub fn with_chunk(model: Arc<Model>, chunk: usize) -> Self {
        let cfg = &model.config;
        let blocks = |m: &Mamba| scan::a_blocks(&m.a, cfg.d_inner(), cfg.d_state);
        let a_blocks = model
            .weights
            .layers
            .iter()
            .map(|l| [blocks(&l.fwd), l.rev.as_ref().map(blocks).unwrap_or_default()])
            .collect();
        Cpu { model, chunk: chunk.max(1), share_bytes: DEFAULT_SHARE_BYTES, a_blocks, isa: simd::isa() }
    }

    /// Memory the shared-projection path may take (0 disables it).
    pub fn with_share_bytes(mut self, bytes: usize) -> Self {
        self.share_bytes = bytes;
        self
    }

    fn norm_weight(&self, norm: Norm) -> &[f32] {
        match norm {
            Norm::Layer(i) => &self.model.weights.layers[i].norm,
            Norm::Final => &self.model.weights.norm_f,
        }
    }
}

/// Row-major `dst[m, n] = lhs[m, k] · rhsᵀ` where `rhs` is `[n, k]` (a PyTorch Linear weight)
/// and `lhs` rows are `lhs_stride` apart.
fn matmul_t(dst: &mut [f32], lhs: &[f32], lhs_stride: usize, rhs: &[f32], m: usize, n: usize, k: usize) {
    assert!(dst.len() >= m * n && rhs.len() >= n * k && (m == 0 || lhs.len() >= (m - 1) * lhs_stride + k));
    let threads = rayon::current_num_threads();
    let par = if m * n * k < 1 << 16 || threads == 1 { Parallelism::None } else { Parallelism::Rayon(threads) };
    // SAFETY: bounds asserted above; dst does not alias lhs or rhs (distinct borrows).
    unsafe {
        gemm::gemm(
            m, n, k,
            dst.as_mut_ptr(), 1, n as isize, false,
            lhs.as_ptr(), 1, lhs_stride as isize,
            rhs.as_ptr(), k as isize, 1,
            0.0, 1.0, false, false, false, par,
        );
    }
}

/// Per-chunk scratch; sized for one chunk, reused across chunks.
struct Scratch {
    u: Vec<f32>,
    xz: Vec<f32>,
    xc: Vec<f32>,
    dbc: Vec<f32>,
    delta: Vec<f32>,
    out: Vec<f32>,
    conv_state: Vec<f32>,
    ssm_state: Vec<f32>,
}

/// Where a walk gets each chunk's `[x | z]` rows from.
enum Xz<'a> {
    /// Gather the input through the view and project with in_proj.
    Project { input: &'a CpuBuf, view: View },
    /// Precomputed for the whole context, rows in physical order.
    Stored(&'a CpuBuf),
}

/// Where a walk puts each chunk's gated output y.
enum Y<'a> {
    /// Project with out_proj and add into the accumulator through the view.
    Project { acc: &'a mut CpuBuf, view: View },
    /// Store (or add) the rows at their physical positions, for one shared out_proj later.
    Store { y: &'a mut CpuBuf, add: bool },
}

/// Copy rows `steps` of the walk (physical row `row_of(step)`) through the view into `u`.
fn gather(input: &CpuBuf, view: View, steps: std::ops::Range<usize>, row_of: impl Fn(usize) -> usize, d: usize, u: &mut [f32]) {
    for (step, u) in steps.zip(u.chunks_mut(d)) {
        let src = &input.data[row_of(step) * input.width + view.col..][..d];
        if view.flip_channels {
            u.iter_mut().zip(src.iter().rev()).for_each(|(u, x)| *u = *x);
        } else {
            u.copy_from_slice(src);
        }
    }
}

/// `acc[row_of(step)] += out[step]` through the view.
fn scatter_add(acc: &mut CpuBuf, view: View, steps: std::ops::Range<usize>, row_of: impl Fn(usize) -> usize, d: usize, out: &[f32]) {
    let w = acc.width;
    for (step, o) in steps.zip(out.chunks(d)) {
        let dst = &mut acc.data[row_of(step) * w + view.col..][..d];
        if view.flip_channels {
            dst.iter_mut().zip(o.iter().rev()).for_each(|(a, v)| *a += *v);
        } else {
            dst.iter_mut().zip(o).for_each(|(a, v)| *a += *v);
        }
    }
}

impl Cpu {
    fn mamba(&self, layer: usize, dir: Dir) -> Result<&Mamba> {
        let l = &self.model.weights.layers[layer];
        match dir {
            Dir::Fwd => Ok(&l.fwd),
            Dir::Rev => l.rev.as_ref().ok_or_else(|| anyhow::anyhow!("layer {layer} has no reverse mixer")),
        }
    }

    fn a_blk(&self, layer: usize, dir: Dir) -> &[f32] {
        &self.a_blocks[layer][if dir == Dir::Fwd { 0 } else { 1 }]
    }

    fn check_view(&self, input: &CpuBuf, acc: &CpuBuf, view: View) -> Result<()> {
        let d = self.model.config.d_model;
        ensure!(view.col + d <= input.width && view.col + d <= acc.width, "mixer: view outside the buffer");
        Ok(())
    }

    fn scratch(&self, len: usize) -> Scratch {
        let cfg = &self.model.config;
        let (d, di, n, k) = (cfg.d_model, cfg.d_inner(), cfg.d_state, cfg.d_conv);
        let nx = cfg.dt_rank() + 2 * n;
        let t = self.chunk.min(len);
        Scratch {
            u: vec![0.0; t * d],
            xz: vec![0.0; t * 2 * di],
            xc: vec![0.0; t * di],
            dbc: vec![0.0; t * nx],
            delta: vec![0.0; t * di],
            out: vec![0.0; t * d],
            conv_state: vec![0.0; (k - 1) * di],
            ssm_state: vec![0.0; scan::state_len(di, n)],
        }
    }

    /// One Mamba direction over the `len` positions from row `base`, chunk by chunk, conv and
    /// scan state carried from zero.
    #[allow(clippy::too_many_arguments)]
    fn walk(&self, m: &Mamba, a_blk: &[f32], (base, len): (usize, usize), backward: bool, s: &mut Scratch, xz_src: Xz<'_>, y_dst: Y<'_>) {
        self.walk_from(m, a_blk, (base, len), backward, s, xz_src, y_dst, false)
    }

    /// `walk`, optionally continuing from the state already in `s` (`carry`).
    #[allow(clippy::too_many_arguments)]
    fn walk_from(&self, m: &Mamba, a_blk: &[f32], (base, len): (usize, usize), backward: bool, s: &mut Scratch, xz_src: Xz<'_>, mut y_dst: Y<'_>, carry: bool) {
        let cfg = &self.model.config;
        let (d, di, n, rk) = (cfg.d_model, cfg.d_inner(), cfg.d_state, cfg.dt_rank());
        let nx = rk + 2 * n;
        let isa = self.isa;
        if !carry {
            s.conv_state.fill(0.0);
            s.ssm_state.fill(0.0);
        }
        let row_of = |step: usize| base + if backward { len - 1 - step } else { step };
        let mut start = 0;
        while start < len {
            let t = self.chunk.min(len - start);
            let steps = start..start + t;
            // 1. [x | z] = u · W_inᵀ, or rows of the precomputed buffer read in walk order
            let (xz, rows): (&[f32], scan::Rows) = match &xz_src {
                Xz::Project { input, view } => {
                    gather(input, *view, steps.clone(), row_of, d, &mut s.u);
                    matmul_t(&mut s.xz, &s.u, d, &m.in_proj, t, 2 * di, d);
                    (&s.xz[..t * 2 * di], scan::Rows::IN_ORDER)
                }
                Xz::Stored(xz) => (&xz.data, scan::Rows { first: row_of(start), backward }),
            };
            // 2. causal depthwise conv + SiLU, state carried from the previous chunk
            scan::conv_silu(isa, xz, 2 * di, rows, &mut s.xc[..t * di], &mut s.conv_state, &m.conv_w_t, &m.conv_b, di, cfg.d_conv);
            // 3. [δ | B | C] = x · W_xᵀ;  Δ = softplus(δ · W_dtᵀ + b_dt)  (bias added once, here)
            matmul_t(&mut s.dbc, &s.xc, di, &m.x_proj, t, nx, di);
            matmul_t(&mut s.delta, &s.dbc, nx, &m.dt_w, t, di, rk);
            // SAFETY: plain slice code; the variant is chosen by the detected ISA
            s.delta[..t * di].par_chunks_mut(di).with_min_len(16).for_each(|row| unsafe { simd::softplus_bias_isa(isa, row, &m.dt_b) });
            // 4. selective scan, D skip and SiLU(z) gate; y overwrites xc
            scan::selective_scan(
                isa,
                scan::ScanIo { x: &mut s.xc[..t * di], delta: &s.delta[..t * di], dbc: &s.dbc[..t * nx], xz, xz_rows: rows },
                &mut s.ssm_state, a_blk, &m.d, di, n, rk,
            );
            // 5. out = y · W_outᵀ through the view, or keep y for a shared out_proj
            match &mut y_dst {
                Y::Project { acc, view } => {
                    matmul_t(&mut s.out, &s.xc, di, &m.out_proj, t, d, di);
                    scatter_add(acc, *view, steps, row_of, d, &s.out);
                }
                Y::Store { y, add } => {
                    for (step, src) in steps.zip(s.xc.chunks(di)) {
                        let dst = &mut y.data[row_of(step) * di..][..di];
                        if *add {
                            dst.iter_mut().zip(src).for_each(|(a, v)| *a += *v);
                        } else {
                            dst.copy_from_slice(src);
                        }
                    }
                }
            }
            start += t;
        }
    }
}

impl Cpu {
    /// The record ranges (first row, rows) of a context of `len` rows: the packed records,
    /// or the whole context.
    fn ranges(&self, len: usize, records: Option<&CpuRecords>) -> Result<Vec<(usize, usize)>> {
        match records {
            Some(CpuRecords(b)) => {
                ensure!(b.last() == Some(&len), "mixer: {len} rows but the packed records cover {}", b.last().copied().unwrap_or(0));
                Ok(b.windows(2).map(|w| (w[0], w[1] - w[0])).collect())
            }
            None => Ok(vec![(0, len)]),
        }
    }

    /// `acc += BiMamba(input)` over the `len` rows from `base` (one record).
    #[allow(clippy::too_many_arguments)]
    fn bimamba_range(&self, layer: usize, (fwd, rev): (&Mamba, &Mamba), tied: bool, input: &CpuBuf, acc: &mut CpuBuf, (base, len): (usize, usize), view: View) -> Result<()> {
        let di = self.model.config.d_inner();
        let back = View { backward: !view.backward, ..view };
        if !tied || len.saturating_mul(3 * di * 4) > self.share_bytes {
            let mut s = self.scratch(len);
            self.walk(fwd, self.a_blk(layer, Dir::Fwd), (base, len), view.backward, &mut s, Xz::Project { input, view }, Y::Project { acc, view });
            self.walk(rev, self.a_blk(layer, Dir::Rev), (base, len), back.backward, &mut s, Xz::Project { input, view: back }, Y::Project { acc, view: back });
            return Ok(());
        }
        // Shared projections: in_proj once for the record, both scans, out_proj once. The
        // shared buffers hold the record's rows; walks address them by the row's place in the
        // record (base 0) and the streams by its place in the context (`base`).
        let d = self.model.config.d_model;
        let mut xz = self.alloc(len, 2 * di)?;
        let mut y = self.alloc(len, di)?;
        let mut s = self.scratch(len);
        let mut start = 0;
        while start < len {
            let t = self.chunk.min(len - start);
            gather(input, view, start..start + t, |j| base + j, d, &mut s.u);
            matmul_t(&mut xz.data[start * 2 * di..], &s.u, d, &fwd.in_proj, t, 2 * di, d);
            start += t;
        }
        // rows of xz and y are in physical order; the walks read them forwards or backwards
        self.walk(fwd, self.a_blk(layer, Dir::Fwd), (0, len), view.backward, &mut s, Xz::Stored(&xz), Y::Store { y: &mut y, add: false });
        self.walk(rev, self.a_blk(layer, Dir::Rev), (0, len), !view.backward, &mut s, Xz::Stored(&xz), Y::Store { y: &mut y, add: true });
        drop(xz);
        let mut start = 0;
        while start < len {
            let t = self.chunk.min(len - start);
            matmul_t(&mut s.out, &y.data[start * di..], di, &fwd.out_proj, t, d, di);
            scatter_add(acc, view, start..start + t, |j| base + j, d, &s.out);
            start += t;
        }
        Ok(())
    }
}

impl Backend for Cpu {
    type Buf = CpuBuf;
    type Records = CpuRecords;
    /// Computed by `sum_rows_start`: `ranges.len() * width` sums.
    type Sums = Vec<f64>;

    fn name(&self) -> String {
        format!("cpu ({} threads, {:?})", rayon::current_num_threads(), self.isa)
    }

    fn alloc(&self, rows: usize, width: usize) -> Result<CpuBuf> {
        let n = rows.checked_mul(width).ok_or_else(|| anyhow::anyhow!("buffer size overflows"))?;
        let mut data = Vec::new();
        data.try_reserve_exact(n)
            .map_err(|_| anyhow::anyhow!("cannot allocate {} MiB for a {rows} x {width} buffer", n * 4 >> 20))?;
        data.resize(n, 0.0);
        Ok(CpuBuf { data, width })
    }

    fn embed(&self, tokens: &[u8], out: &mut CpuBuf) -> Result<()> {
        let w = &self.model.weights;
        let cfg = &self.model.config;
        let d = cfg.d_model;
        let vocab = cfg.vocab_padded();
        ensure!(out.data.len() >= tokens.len() * out.width, "embed: buffer too small");
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= vocab) {
            anyhow::bail!("token id {t} is outside the model's vocabulary of {vocab}");
        }
        out.data[..tokens.len() * out.width]
            .par_chunks_mut(out.width)
            .zip(tokens.par_iter())
            .for_each(|(row, &t)| {
                let t = t as usize;
                row[..d].copy_from_slice(&w.embedding[t * d..(t + 1) * d]);
                if cfg.rcps {
                    let c = w.complement[t];
                    let e = &w.embedding[c * d..(c + 1) * d];
                    for (o, v) in row[d..2 * d].iter_mut().zip(e.iter().rev()) {
                        *o = *v;
                    }
                }
            });
        Ok(())
    }

    fn swap_halves(&self, buf: &mut CpuBuf, len: usize) -> Result<()> {
        let d = buf.width / 2;
        buf.data[..len * buf.width].par_chunks_mut(buf.width).for_each(|row| {
            let (a, b) = row.split_at_mut(d);
            a.swap_with_slice(b);
        });
        Ok(())
    }

    fn rms_norm(&self, src: &CpuBuf, dst: &mut CpuBuf, len: usize, norm: Norm) -> Result<()> {
        ensure!(src.width == dst.width, "rms_norm: widths differ");
        dst.data[..len * dst.width].copy_from_slice(&src.data[..len * src.width]);
        self.rms_norm_in_place(dst, len, norm)
    }

    fn rms_norm_in_place(&self, buf: &mut CpuBuf, len: usize, norm: Norm) -> Result<()> {
        let d = self.model.config.d_model;
        let eps = self.model.config.norm_epsilon;
        let w = self.norm_weight(norm);
        let w_flip: Vec<f32> = w.iter().rev().copied().collect();
        let width = buf.width;
        buf.data[..len * width].par_chunks_mut(width).for_each(|row| {
            for (h, x) in row.chunks_mut(d).enumerate() {
                let w = if h == 1 { &w_flip[..] } else { w };
                let ms = x.iter().map(|v| v * v).sum::<f32>() / d as f32;
                let s = 1.0 / (ms + eps).sqrt();
                for (x, w) in x.iter_mut().zip(w) {
                    *x = *x * s * w;
                }
            }
        });
        Ok(())
    }

    fn mixer(&self, layer: usize, dir: Dir, input: &CpuBuf, acc: &mut CpuBuf, len: usize, view: View, records: Option<&CpuRecords>) -> Result<()> {
        let m = self.mamba(layer, dir)?;
        self.check_view(input, acc, view)?;
        for range in self.ranges(len, records)? {
            let mut s = self.scratch(range.1);
            self.walk(m, self.a_blk(layer, dir), range, view.backward, &mut s, Xz::Project { input, view }, Y::Project { acc, view });
        }
        Ok(())
    }

    fn supports_packing(&self) -> bool {
        true
    }

    fn pack_bases(&self) -> usize {
        CPU_PACK_BASES
    }

    fn records(&self, starts: &[usize], len: usize) -> Result<CpuRecords> {
        super::check_record_starts(starts, len)?;
        Ok(CpuRecords(starts.iter().copied().chain(std::iter::once(len)).collect()))
    }

    fn alloc_state(&self) -> Result<CpuBuf> {
        let cfg = &self.model.config;
        let di = cfg.d_inner();
        let conv = (cfg.d_conv - 1) * di;
        self.alloc(1, conv + scan::state_len(di, cfg.d_state))
    }

    fn mixer_carry(&self, layer: usize, input: &CpuBuf, acc: &mut CpuBuf, len: usize, state: &mut CpuBuf) -> Result<()> {
        let m = self.mamba(layer, Dir::Fwd)?;
        let view = View { col: 0, flip_channels: false, backward: false };
        self.check_view(input, acc, view)?;
        let mut s = self.scratch(len);
        let nc = s.conv_state.len();
        ensure!(state.data.len() == nc + s.ssm_state.len(), "mixer_carry: state of the wrong size");
        s.conv_state.copy_from_slice(&state.data[..nc]);
        s.ssm_state.copy_from_slice(&state.data[nc..]);
        self.walk_from(m, self.a_blk(layer, Dir::Fwd), (0, len), false, &mut s, Xz::Project { input, view }, Y::Project { acc, view }, true);
        state.data[..nc].copy_from_slice(&s.conv_state);
        state.data[nc..].copy_from_slice(&s.ssm_state);
        Ok(())
    }

    fn bimamba(&self, layer: usize, input: &CpuBuf, acc: &mut CpuBuf, len: usize, view: View, records: Option<&CpuRecords>) -> Result<()> {
        let (fwd, rev) = (self.mamba(layer, Dir::Fwd)?, self.mamba(layer, Dir::Rev)?);
        let tied = Arc::ptr_eq(&fwd.in_proj, &rev.in_proj) && Arc::ptr_eq(&fwd.out_proj, &rev.out_proj);
        self.check_view(input, acc, view)?;
        for range in self.ranges(len, records)? {
            self.bimamba_range(layer, (fwd, rev), tied, input, acc, range, view)?;
        }
        Ok(())
    }

    fn read_rows(&self, buf: &CpuBuf, start: usize, dst: &mut [f32]) -> Result<()> {
        let off = start * buf.width;
        ensure!(off + dst.len() <= buf.data.len(), "read_rows: out of range");
        dst.copy_from_slice(&buf.data[off..off + dst.len()]);
        Ok(())
    }

    fn sum_rows_start(&self, buf: &CpuBuf, width: usize, ranges: &[(usize, usize)]) -> Result<Vec<f64>> {
        ensure!(width == buf.width, "sum_rows: width {width} of a {}-wide buffer", buf.width);
        ensure!(ranges.iter().all(|&(a, b)| a <= b && b * width <= buf.data.len()), "sum_rows: rows out of range");
        let mut out = vec![0.0f64; ranges.len() * width];
        for (&(a, b), sum) in ranges.iter().zip(out.chunks_mut(width.max(1))) {
            for row in buf.data[a * width..b * width].chunks(width.max(1)) {
                sum.iter_mut().zip(row).for_each(|(s, v)| *s += *v as f64);
            }
        }
        Ok(out)
    }

    fn sum_rows_finish(&self, sums: Vec<f64>, out: &mut [f64]) -> Result<()> {
        ensure!(out.len() == sums.len(), "sum_rows: output of the wrong size");
        out.copy_from_slice(&sums);
        Ok(())
    }

    fn copy_rows(&self, src: &CpuBuf, dst: &mut CpuBuf, len: usize) -> Result<()> {
        let n = len * src.width;
        ensure!(src.width == dst.width && n <= src.data.len() && n <= dst.data.len(), "copy_rows: out of range");
        dst.data[..n].copy_from_slice(&src.data[..n]);
        Ok(())
    }
}
