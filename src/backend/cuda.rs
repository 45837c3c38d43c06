//! The CUDA backend: the same operations as `cpu.rs`, on one GPU, in f32.
//!
//! Projections go through cuBLAS sgemm reading and writing the streams in place: a view's
//! column block is a leading-dimension offset, a backward walk only changes which storage
//! row a time step lives in (the conv and scan kernels index rows from the end), and a
//! channel flip is absorbed into column-reversed `in_proj` / row-reversed `out_proj` copies
//! of the weights. So no flipped or gathered copy of a stream is ever made, and `out_proj`
//! accumulates straight into the residual (beta = 1). The wide intermediates exist per
//! chunk only; the scan runs in parallel over time segments (see kernels/scan.cu).
//!
//! One stream per backend; everything is ordered on it, so cudarc's per-buffer event
//! tracking is switched off.

mod module;

use std::sync::{Arc, Mutex};

use anyhow::{anyhow, ensure, Context, Result};
use cudarc::cublas::{sys::cublasOperation_t, CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{
    sys::CUdevice_attribute, CudaContext, CudaSlice, CudaStream, CudaView, CudaViewMut, LaunchConfig,
    PushKernelArg,
};

use super::{Backend, Dir, Norm, View};
use crate::model::{weights::Mamba, Model};
use module::{guarded, Kernels};

/// Positions per chunk. The per-chunk intermediates take about (4.5·d_inner + dt_rank +
/// 2·d_state)·4 B per row (~300 MB at 32768 rows for d_model 256); on an H100, 32768 ran
/// ~9% faster than 16384 and ~20% faster than 8192, 65536 another ~7% (BENCHMARKS-cuda.md).
pub const DEFAULT_CHUNK: usize = 32768;
/// Shortest scan segment: below this the sequential combine over segments starts to cost.
const MIN_SEGMENT: usize = 32;
/// Shared memory a scan block may use for its segment's B and C rows (the default limit).
const SCAN_SMEM: usize = 48 << 10;
/// Time steps per conv thread (RUN in kernels/conv.cu).
const CONV_RUN: usize = 8;
/// Warps per scan_combine block (COMBINE_GROUPS in kernels/scan.cu).
const COMBINE_GROUPS: u32 = 32;

/// Number of CUDA devices, or why none can be used.
pub fn available() -> Result<usize> {
    module::check_libraries()?;
    let n = guarded("CUDA device count", || Ok(CudaContext::device_count()?))?;
    ensure!(n > 0, "the CUDA driver is present but reports no GPU");
    Ok(n as usize)
}

/// `[rows, width]` row-major f32 in device memory.
pub struct CudaBuf {
    data: CudaSlice<f32>,
    rows: usize,
    width: usize,
}

impl CudaBuf {
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn width(&self) -> usize {
        self.width
    }
}

/// One mixer's weights on the device.
struct DevMamba {
    in_proj: CudaSlice<f32>,
    out_proj: CudaSlice<f32>,
    /// For views with flipped channels (RCPS second half): `in_proj` with its columns
    /// reversed and `out_proj` with its rows reversed.
    flipped: Option<(CudaSlice<f32>, CudaSlice<f32>)>,
    conv_w: CudaSlice<f32>,
    conv_b: CudaSlice<f32>,
    x_proj: CudaSlice<f32>,
    dt_w: CudaSlice<f32>,
    dt_b: CudaSlice<f32>,
    /// A·log2(e), so the scan's exp(Δ·A) is one exp2f.
    a2: CudaSlice<f32>,
    d: CudaSlice<f32>,
}

/// Per-chunk intermediates, sized for `rows` positions and reused across chunks and calls.
struct Scratch {
    rows: usize,
    xz: CudaSlice<f32>,
    /// Conv output, overwritten by the scan's gated output.
    xc: CudaSlice<f32>,
    dbc: CudaSlice<f32>,
    delta: CudaSlice<f32>,
    /// Scan segment end states, turned into start states: [segments][d_inner][d_state].
    h: CudaSlice<f32>,
    /// Σ Δ per [segment][d_inner].
    dsum: CudaSlice<f32>,
    conv_in: CudaSlice<f32>,
    conv_out: CudaSlice<f32>,
    ssm: CudaSlice<f32>,
}

pub struct Cuda {
    model: Arc<Model>,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    k: Kernels,
    chunk: usize,
    sms: usize,
    label: String,
    embedding: CudaSlice<f32>,
    complement: CudaSlice<i32>,
    norms: Vec<CudaSlice<f32>>,
    norm_f: CudaSlice<f32>,
    mixers: Vec<(DevMamba, Option<DevMamba>)>,
    scratch: Mutex<Option<Scratch>>,
}

fn grid(items: usize, threads: u32) -> LaunchConfig {
    // kernels loop over their items, so the grid can be capped
    let blocks = items.div_ceil(threads as usize).clamp(1, 1 << 20) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
}

fn i32_of(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| anyhow!("{what} = {v} does not fit the kernels' 32-bit sizes"))
}

impl Cuda {
    pub fn new(model: Arc<Model>, ordinal: usize) -> Result<Self> {
        Self::with_chunk(model, ordinal, DEFAULT_CHUNK)
    }

    pub fn with_chunk(model: Arc<Model>, ordinal: usize, chunk: usize) -> Result<Self> {
        module::check_libraries()?;
        guarded("CUDA initialisation", || Self::init(model, ordinal, chunk.max(1)))
    }

    fn init(model: Arc<Model>, ordinal: usize, chunk: usize) -> Result<Self> {
        let count = CudaContext::device_count().context("CUDA driver")?;
        ensure!((ordinal as i64) < count as i64, "CUDA device {ordinal} requested but {count} found");
        let ctx = CudaContext::new(ordinal).with_context(|| format!("creating a context on CUDA device {ordinal}"))?;
        // SAFETY: every buffer of this backend is used on its one stream only.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream()?;
        let blas = CudaBlas::new(stream.clone()).context("cuBLAS")?;
        let cfg = &model.config;
        let k = Kernels::load(&ctx, cfg.d_state, cfg.d_conv)?;
        let sms = ctx.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?.max(1) as usize;
        let (major, minor) = ctx.compute_capability()?;
        let label = format!("cuda:{ordinal} ({}, sm_{major}{minor}, f32)", ctx.name()?);

        let w = &model.weights;
        let up = |v: &[f32]| stream.clone_htod(v).context("uploading weights");
        let dev_mamba = |m: &Mamba| -> Result<DevMamba> {
            let (d, di) = (cfg.d_model, cfg.d_inner());
            let flipped = if cfg.rcps {
                let in_flip: Vec<f32> = m.in_proj.chunks(d).flat_map(|row| row.iter().rev().copied()).collect();
                let out_flip: Vec<f32> = m.out_proj.chunks(di).rev().flatten().copied().collect();
                Some((up(&in_flip)?, up(&out_flip)?))
            } else {
                None
            };
            let a2: Vec<f32> = m.a.iter().map(|a| a * std::f32::consts::LOG2_E).collect();
            Ok(DevMamba {
                in_proj: up(&m.in_proj)?,
                out_proj: up(&m.out_proj)?,
                flipped,
                conv_w: up(&m.conv_w)?,
                conv_b: up(&m.conv_b)?,
                x_proj: up(&m.x_proj)?,
                dt_w: up(&m.dt_w)?,
                dt_b: up(&m.dt_b)?,
                a2: up(&a2)?,
                d: up(&m.d)?,
            })
        };
        let mut mixers = Vec::with_capacity(cfg.n_layer);
        let mut norms = Vec::with_capacity(cfg.n_layer);
        for l in &w.layers {
            mixers.push((dev_mamba(&l.fwd)?, l.rev.as_ref().map(dev_mamba).transpose()?));
            norms.push(up(&l.norm)?);
        }
        let complement: Vec<i32> = w.complement.iter().map(|&c| c as i32).collect();
        let complement = stream.clone_htod(&complement)?;
        let embedding = up(&w.embedding)?;
        let norm_f = up(&w.norm_f)?;
        stream.synchronize()?;
        Ok(Cuda {
            model,
            ctx,
            stream,
            blas,
            k,
            chunk,
            sms,
            label,
            embedding,
            complement,
            norms,
            norm_f,
            mixers,
            scratch: Mutex::new(None),
        })
    }

    /// Wait for all queued work (for timing).
    pub fn synchronize(&self) -> Result<()> {
        Ok(self.stream.synchronize()?)
    }

    /// (free, total) device memory in bytes.
    pub fn mem_get_info(&self) -> Result<(usize, usize)> {
        Ok(self.ctx.mem_get_info()?)
    }

    /// Row-major `c[rows, n] = beta·c + a[rows, k] · wᵀ` for a PyTorch Linear weight `w`
    /// `[n, k]`, with `a` and `c` rows `lda` / `ldc` elements apart.
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &self,
        w: &CudaSlice<f32>,
        n: usize,
        k: usize,
        a: &CudaView<'_, f32>,
        lda: usize,
        rows: usize,
        c: &mut CudaViewMut<'_, f32>,
        ldc: usize,
        beta: f32,
    ) -> Result<()> {
        debug_assert!(w.len() >= n * k);
        debug_assert!(a.len() >= (rows - 1) * lda + k && c.len() >= (rows - 1) * ldc + n);
        // cuBLAS is column-major: a row-major [rows, n] is a column-major [n, rows], so the
        // product is computed as cᵀ = w · aᵀ with w read transposed from its row-major layout.
        let cfg = GemmConfig {
            transa: cublasOperation_t::CUBLAS_OP_T,
            transb: cublasOperation_t::CUBLAS_OP_N,
            m: i32_of(n, "gemm m")?,
            n: i32_of(rows, "gemm n")?,
            k: i32_of(k, "gemm k")?,
            alpha: 1.0f32,
            lda: i32_of(k, "gemm lda")?,
            ldb: i32_of(lda, "gemm ldb")?,
            beta,
            ldc: i32_of(ldc, "gemm ldc")?,
        };
        // SAFETY: the operand extents were checked by the callers (rows within the buffers,
        // leading dimensions at least the row lengths); all three live on this stream.
        unsafe { self.blas.gemm(cfg, w, a, c) }.context("cuBLAS sgemm")?;
        Ok(())
    }

    fn scratch<'a>(&self, slot: &'a mut Option<Scratch>, rows: usize) -> Result<&'a mut Scratch> {
        let cfg = &self.model.config;
        let (di, n) = (cfg.d_inner(), cfg.d_state);
        let nx = cfg.dt_rank() + 2 * n;
        if slot.as_ref().is_none_or(|s| s.rows < rows) {
            *slot = None; // free the old set before allocating the larger one
            let z = |len: usize| self.stream.alloc_zeros::<f32>(len.max(1));
            let segs = rows.div_ceil(self.shortest_segment());
            *slot = Some(Scratch {
                rows,
                xz: z(rows * 2 * di)?,
                xc: z(rows * di)?,
                dbc: z(rows * nx)?,
                delta: z(rows * di)?,
                h: z(segs * di * n)?,
                dsum: z(segs * di)?,
                conv_in: z((cfg.d_conv - 1) * di)?,
                conv_out: z((cfg.d_conv - 1) * di)?,
                ssm: z(di * n)?,
            });
        }
        Ok(slot.as_mut().expect("allocated above"))
    }

    /// Segment length for a chunk of `t` steps: enough (segment, channel) threads to fill
    /// the GPU about twice over, no shorter than MIN_SEGMENT, and short enough for the
    /// segment's B and C rows to fit in shared memory.
    fn segment_len(&self, t: usize) -> usize {
        let cfg = &self.model.config;
        let want_segments = (self.sms * 2048).div_ceil(cfg.d_inner()).max(1);
        t.div_ceil(want_segments).max(self.shortest_segment()).min(self.longest_segment())
    }

    fn longest_segment(&self) -> usize {
        (SCAN_SMEM / (2 * self.model.config.d_state * 4)).max(1)
    }

    fn shortest_segment(&self) -> usize {
        MIN_SEGMENT.min(self.longest_segment())
    }
}

impl Backend for Cuda {
    type Buf = CudaBuf;

    fn name(&self) -> String {
        self.label.clone()
    }

    fn alloc(&self, rows: usize, width: usize) -> Result<CudaBuf> {
        let n = rows.checked_mul(width).ok_or_else(|| anyhow!("buffer size overflows"))?;
        let data = self
            .stream
            .alloc_zeros::<f32>(n.max(1))
            .with_context(|| format!("cannot allocate {} MiB on the GPU for a {rows} x {width} buffer", (n * 4) >> 20))?;
        Ok(CudaBuf { data, rows, width })
    }

    fn embed(&self, tokens: &[u8], out: &mut CudaBuf) -> Result<()> {
        let cfg = &self.model.config;
        let vocab = cfg.vocab_padded();
        ensure!(tokens.len() <= out.rows && out.width == cfg.hidden_width(), "embed: buffer too small");
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= vocab) {
            anyhow::bail!("token id {t} is outside the model's vocabulary of {vocab}");
        }
        if tokens.is_empty() {
            return Ok(());
        }
        let tok = self.stream.clone_htod(tokens)?;
        let (len, d, rcps) = (tokens.len(), i32_of(cfg.d_model, "d_model")?, cfg.rcps as i32);
        let mut b = self.stream.launch_builder(&self.k.embed);
        b.arg(&tok).arg(&self.embedding).arg(&self.complement).arg(&mut out.data).arg(&len).arg(&d).arg(&rcps);
        // SAFETY: tokens are < vocab (checked), so embedding and complement reads are in
        // bounds; out holds len rows of width d·(1 + rcps) (checked).
        unsafe { b.launch(grid(len * out.width, 256)) }?;
        Ok(())
    }

    fn swap_halves(&self, buf: &mut CudaBuf, len: usize) -> Result<()> {
        ensure!(len <= buf.rows && buf.width.is_multiple_of(2), "swap_halves: bad buffer");
        let d = buf.width / 2;
        let di = i32_of(d, "width")?;
        let mut b = self.stream.launch_builder(&self.k.swap_halves);
        b.arg(&mut buf.data).arg(&len).arg(&di);
        // SAFETY: len rows of 2d elements are within the buffer (checked).
        unsafe { b.launch(grid(len * d, 256)) }?;
        Ok(())
    }

    fn rms_norm(&self, src: &CudaBuf, dst: &mut CudaBuf, len: usize, norm: Norm) -> Result<()> {
        let cfg = &self.model.config;
        let d = cfg.d_model;
        ensure!(src.width == dst.width && src.width.is_multiple_of(d), "rms_norm: widths differ");
        ensure!(len <= src.rows && len <= dst.rows, "rms_norm: rows out of range");
        let w = match norm {
            Norm::Layer(i) => self.norms.get(i).ok_or_else(|| anyhow!("no layer {i}"))?,
            Norm::Final => &self.norm_f,
        };
        let halves = i32_of(src.width / d, "halves")?;
        let di = i32_of(d, "d_model")?;
        let eps = cfg.norm_epsilon;
        let mut b = self.stream.launch_builder(&self.k.rms_norm);
        b.arg(&src.data).arg(&mut dst.data).arg(w).arg(&len).arg(&di).arg(&halves).arg(&eps);
        // SAFETY: len rows of the common width are within both buffers (checked); one warp
        // per (row, half) reads the d-element weight.
        unsafe { b.launch(grid(len * halves as usize * 32, 256)) }?;
        Ok(())
    }

    fn mixer(&self, layer: usize, dir: Dir, input: &CudaBuf, acc: &mut CudaBuf, len: usize, view: View) -> Result<()> {
        let cfg = &self.model.config;
        let (fwd, rev) = self.mixers.get(layer).ok_or_else(|| anyhow!("no layer {layer}"))?;
        let m = match dir {
            Dir::Fwd => fwd,
            Dir::Rev => rev.as_ref().ok_or_else(|| anyhow!("layer {layer} has no reverse mixer"))?,
        };
        let (d, di, n, rk) = (cfg.d_model, cfg.d_inner(), cfg.d_state, cfg.dt_rank());
        let nx = rk + 2 * n;
        let (w_in, w_out) = (input.width, acc.width);
        ensure!(view.col + d <= w_in && view.col + d <= w_out, "mixer: view outside the buffer");
        ensure!(len <= input.rows && len <= acc.rows, "mixer: rows out of range");
        if len == 0 {
            return Ok(());
        }
        let (in_proj, out_proj) = match (&m.flipped, view.flip_channels) {
            (_, false) => (&m.in_proj, &m.out_proj),
            (Some((i, o)), true) => (i, o),
            (None, true) => anyhow::bail!("channel-flipped view on a model without RCPS"),
        };
        let (di32, nx32, rk32) = (i32_of(di, "d_inner")?, i32_of(nx, "x_proj rows")?, i32_of(rk, "dt_rank")?);
        let rev32 = view.backward as i32;

        let mut guard = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let s = self.scratch(&mut guard, self.chunk.min(len))?;
        self.stream.memset_zeros(&mut s.conv_in)?;
        self.stream.memset_zeros(&mut s.ssm)?;

        let mut start = 0;
        while start < len {
            let t = self.chunk.min(len - start);
            let t32 = i32_of(t, "chunk")?;
            // the chunk's time steps start..start+t occupy rows r0..r0+t, in reverse when backward
            let r0 = if view.backward { len - start - t } else { start };

            // [x | z] = u · W_inᵀ, straight from the stream's column block
            let u = input.data.slice(r0 * w_in + view.col..);
            self.linear(in_proj, 2 * di, d, &u, w_in, t, &mut s.xz.slice_mut(..), 2 * di, 0.0)?;

            let mut b = self.stream.launch_builder(&self.k.conv_silu);
            b.arg(&s.xz).arg(&mut s.xc).arg(&s.conv_in).arg(&mut s.conv_out);
            b.arg(&m.conv_w).arg(&m.conv_b).arg(&t32).arg(&di32).arg(&rev32);
            // SAFETY: xz holds t rows of 2·di, xc t rows of di (scratch rows >= t); the conv
            // states are (d_conv-1)·di; weights are di·d_conv and di (D_CONV = d_conv).
            unsafe { b.launch(grid((t.div_ceil(CONV_RUN) + cfg.d_conv - 1) * di, 256)) }?;
            std::mem::swap(&mut s.conv_in, &mut s.conv_out);

            // [δ | B | C] = x · W_xᵀ;  δ · W_dtᵀ (the bias and softplus are applied in the scan)
            self.linear(&m.x_proj, nx, di, &s.xc.slice(..), di, t, &mut s.dbc.slice_mut(..), nx, 0.0)?;
            self.linear(&m.dt_w, di, rk, &s.dbc.slice(..), nx, t, &mut s.delta.slice_mut(..), di, 0.0)?;

            let seg = self.segment_len(t);
            let nseg = t.div_ceil(seg);
            ensure!(nseg <= 65535, "scan: too many segments");
            let (seg32, nseg32) = (seg as i32, nseg as i32);
            let threads = di.next_multiple_of(32).min(128) as u32;
            let seg_grid = |row_floats: usize| LaunchConfig {
                grid_dim: (di.div_ceil(threads as usize) as u32, nseg as u32, 1),
                block_dim: (threads, 1, 1),
                shared_mem_bytes: (seg * row_floats * 4) as u32,
            };
            let single = nseg == 1;
            if !single {
                let mut b = self.stream.launch_builder(&self.k.scan_ends);
                b.arg(&s.xc).arg(&mut s.delta).arg(&s.dbc).arg(&m.a2).arg(&m.dt_b).arg(&mut s.h).arg(&mut s.dsum);
                b.arg(&t32).arg(&di32).arg(&nx32).arg(&rk32).arg(&seg32).arg(&rev32);
                // SAFETY: nseg·seg covers t rows of the t-row intermediates; h and dsum hold
                // ceil(rows / shortest segment) >= nseg segments; shared memory holds seg rows of B.
                unsafe { b.launch(seg_grid(n)) }?;
                let mut b = self.stream.launch_builder(&self.k.scan_combine);
                b.arg(&mut s.h).arg(&s.dsum).arg(&m.a2).arg(&mut s.ssm).arg(&nseg32).arg(&di32);
                let cells = LaunchConfig {
                    grid_dim: ((di * n).div_ceil(32) as u32, 1, 1),
                    block_dim: (32, COMBINE_GROUPS, 1),
                    shared_mem_bytes: 0,
                };
                // SAFETY: 32 state cells per block (the kernel masks cells >= di·n), walking
                // the nseg segments of h and dsum written above.
                unsafe { b.launch(cells) }?;
            }
            let (delta_ready, write_back) = (!single as i32, single as i32);
            let mut b = self.stream.launch_builder(&self.k.scan_output);
            b.arg(&mut s.xc).arg(&s.delta).arg(&s.dbc).arg(&s.xz).arg(&m.a2).arg(&m.dt_b).arg(&m.d);
            if single {
                b.arg(&mut s.ssm);
            } else {
                b.arg(&mut s.h);
            }
            b.arg(&t32).arg(&di32).arg(&nx32).arg(&rk32).arg(&seg32).arg(&rev32).arg(&delta_ready).arg(&write_back);
            // SAFETY: as for scan_ends, with seg rows of B and C in shared memory; with one
            // segment the start state is the di·n carried state.
            unsafe { b.launch(seg_grid(2 * n)) }?;

            // acc += y · W_outᵀ, accumulated in place into the residual's column block
            let mut o = acc.data.slice_mut(r0 * w_out + view.col..);
            self.linear(out_proj, d, di, &s.xc.slice(..), di, t, &mut o, w_out, 1.0)?;
            start += t;
        }
        Ok(())
    }

    fn read_rows(&self, buf: &CudaBuf, start: usize, dst: &mut [f32]) -> Result<()> {
        let off = start * buf.width;
        ensure!(off + dst.len() <= buf.rows * buf.width, "read_rows: out of range");
        if dst.is_empty() {
            return Ok(());
        }
        self.stream.memcpy_dtoh(&buf.data.slice(off..off + dst.len()), dst)?;
        self.stream.synchronize()?;
        Ok(())
    }
}
