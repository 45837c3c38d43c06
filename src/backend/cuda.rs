//! The CUDA backend: the same operations as `cpu.rs`, on one GPU, in f32 or, with
//! `Precision::Bf16`, with the four projections on tensor cores (bf16 operands, f32
//! accumulation and outputs; the streams, norms, conv, Δ, scan state and sums stay f32).
//!
//! Projections go through cuBLAS (sgemm; gemmEx in bf16) reading and writing the streams in
//! place: a view's column block is a leading-dimension offset, a backward walk only changes
//! which storage row a time step lives in (the conv and scan kernels index rows from the
//! end), and a channel flip is absorbed into column-reversed `in_proj` / row-reversed
//! `out_proj` copies of the weights. So no flipped or gathered copy of a stream is ever made, and `out_proj`
//! accumulates straight into the residual (beta = 1). The wide intermediates exist per
//! chunk only; the scan runs in parallel over time segments (see kernels/scan.cu: two-pass
//! by default, one-pass with `DNA_MAMBA_SCAN=one-pass`; `Scan`).
//!
//! bf16 operands are made where their producer writes anyway: a layer's RMSNorm writes its
//! output as bf16 for in_proj (into the normalized stream's own memory, which nothing else
//! reads), the conv writes a bf16 copy of its output for x_proj and the scan writes its gated
//! output only as bf16 for out_proj. dt_proj (K = dt_rank) is computed inside scan_ends from
//! the staged δ_r columns where the sizes allow (`Sizes::fuse_dt`), else by cuBLAS (f32, or
//! FAST_16BF in bf16 mode).
//!
//! Packed contexts (`Backend::records`): a per-row record id on the device makes the conv read
//! zeros across record boundaries and the scan restart from h = 0 at each record's first
//! step in walk order, so one launch sequence serves many short reads without padding.
//!
//! One stream per backend; everything is ordered on it, so cudarc's per-buffer event
//! tracking is switched off.

mod module;
mod staging;

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, ensure, Context, Result};
use cudarc::cublas::{
    result::gemm_ex,
    sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType_t},
    CudaBlas, Gemm, GemmConfig,
};
use cudarc::driver::{
    sys::CUdevice_attribute, CudaContext, CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut,
    DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};

use super::{Backend, Dir, Norm, Precision, View};
use crate::model::{weights::Mamba, Model};
use module::{guarded, Kernels, Sizes};
use staging::{Downloads, Pending, Uploads};

/// Positions per chunk. The per-chunk intermediates take about (4.5·d_inner + dt_rank +
/// 2·d_state)·4 B per row (~300 MB at 32768 rows for d_model 256); on an H100, 32768 ran
/// ~9% faster than 16384 and ~20% faster than 8192, 65536 another ~7% (BENCHMARKS.md, GPU section).
pub const DEFAULT_CHUNK: usize = 32768;

/// Cap on the full-context buffers (12·d_inner B per row, +2·(d_inner + d_model) in bf16)
/// with which the two directions of a tied bidirectional layer share in_proj and out_proj:
/// contexts up to ~174k bases at d_model 256 (~131k in bf16 too). Longer contexts run the
/// directions one by one, chunk by chunk, in the memory the 1M-base budget allows.
const SHARE_BYTES: usize = 1 << 30;

/// Positions per chunk in shared layers, and in bf16 mode, when the chunk is the default:
/// 65536 ran 6-10% faster than 32768 at 131,072 bases on an H100, and 10% faster at 1M bases
/// in bf16 on an H200 (unshared; 131072 another 5%, but over the 3 GiB budget). A chunk chosen
/// explicitly (`with_chunk`, tests) is used by both paths.
const SHARED_CHUNK: usize = 65536;
/// (segment, channel) threads per SM the scan is sized for: enough segments to fill every SM.
const SEG_THREADS: usize = 2048;
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

/// `[rows, width]` row-major f32 in device memory; or, `half`, bf16 values only (the bf16
/// mode's normalized stream, which only in_proj reads), packed into half the bytes.
pub struct CudaBuf {
    data: CudaSlice<f32>,
    rows: usize,
    width: usize,
    half: bool,
}

impl CudaBuf {
    /// Refuse a bf16-only buffer where f32 rows are read or written.
    fn full(&self, what: &str) -> Result<()> {
        ensure!(!self.half, "{what}: the buffer holds bf16 values only");
        Ok(())
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn width(&self) -> usize {
        self.width
    }
}

/// A projection weight as the GEMMs read it: f32, or bf16 bits for tensor cores.
enum Weight {
    F32(CudaSlice<f32>),
    Bf16(CudaSlice<u16>),
}

/// One mixer's weights on the device.
struct DevMamba {
    /// Shared with the layer's other direction where the checkpoint ties them.
    in_proj: Arc<Weight>,
    out_proj: Arc<Weight>,
    /// For views with flipped channels (RCPS second half): `in_proj` with its columns
    /// reversed and `out_proj` with its rows reversed.
    flipped: Option<(Arc<Weight>, Arc<Weight>)>,
    conv_w: CudaSlice<f32>,
    conv_b: CudaSlice<f32>,
    x_proj: Weight,
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
    /// bf16 mode: the conv output for x_proj, then the gated scan output for out_proj
    /// [rows][d_inner] (one element otherwise).
    xc_h: CudaSlice<u16>,
}

/// Full-context buffers of a bidirectional layer whose two directions share `in_proj` and
/// `out_proj` (tied weights): `[x | z]` once for the context, the two directions' gated
/// outputs summed in `y` (and, in bf16 mode, written as bf16 to `y_h` by the second scan).
struct Shared {
    rows: usize,
    xz: CudaSlice<f32>,
    y: CudaSlice<f32>,
    y_h: CudaSlice<u16>,
}

/// One direction's part in a shared-projection layer (see `Shared`).
struct SharedPass<'a> {
    xz: &'a CudaSlice<f32>,
    y: &'a mut CudaSlice<f32>,
    y_h: &'a mut CudaSlice<u16>,
    /// The first direction stores its output in `y`; the second adds to it.
    first: bool,
}

/// Record ids of a packed context, one per row, on the device (`Backend::records`).
pub struct Records {
    rec: CudaSlice<i32>,
    len: usize,
}

/// Which selective-scan kernels run (see kernels/scan.cu); `DNA_MAMBA_SCAN=one-pass|two-pass`.
/// Both compute the same recurrence to f32 rounding and pass the same tests; they differ in
/// speed only. The default stays the two-pass scan: on an H200 the one-pass scan was 5-10%
/// slower end to end on the 131k shape with its initialised decays and within +3% / -8% with
/// fast decays (BENCHMARKS.md, "GPU engine v2, stage 1").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scan {
    /// scan_fused, then (several segments) scan_combine and scan_fix.
    OnePass,
    /// scan_ends, scan_combine, scan_output.
    TwoPass,
}

impl Scan {
    fn from_env() -> Result<Scan> {
        match std::env::var("DNA_MAMBA_SCAN").as_deref() {
            Err(_) | Ok("") | Ok("two-pass") => Ok(Scan::TwoPass),
            Ok("one-pass") => Ok(Scan::OnePass),
            Ok(other) => anyhow::bail!("DNA_MAMBA_SCAN={other}: expected one-pass or two-pass"),
        }
    }
}

/// The scalar arguments of one chunk's scan launches.
struct ScanIo<'a> {
    t32: i32,
    di32: i32,
    nx32: i32,
    rk32: i32,
    seg32: i32,
    nseg32: i32,
    rev32: i32,
    rec: &'a CudaSlice<i32>,
    r0_64: i64,
    len64: i64,
    packed: i32,
    half32: i32,
    acc_mode: i32,
    /// scan_ends computes δ = dt_proj(δ_r) itself (no dt_proj GEMM ran).
    fuse_dt: i32,
}

/// The buffers one chunk's scan reads and writes. `y_h` / `y_acc`: the shared layer's
/// full-context outputs from the chunk's first row (None: the scratch `xc_h` / none).
struct ScanBufs<'a, 'b> {
    x: &'a mut CudaSlice<f32>,
    delta: &'a mut CudaSlice<f32>,
    dbc: &'a CudaSlice<f32>,
    xz: &'a CudaView<'b, f32>,
    h: &'a mut CudaSlice<f32>,
    dsum: &'a mut CudaSlice<f32>,
    ssm: &'a mut CudaSlice<f32>,
    xc_h: &'a mut CudaSlice<u16>,
    y_h: Option<&'a mut CudaViewMut<'b, u16>>,
    y_acc: Option<&'a mut CudaViewMut<'b, f32>>,
}

/// Launch shapes: `seg(row_floats, rows)` for `rows` segments with `row_floats` floats of
/// shared memory per step, `cells` for scan_combine.
struct ScanGrids<F: Fn(usize, usize) -> LaunchConfig> {
    seg: F,
    cells: LaunchConfig,
    nseg: usize,
}

pub struct Cuda {
    model: Arc<Model>,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    k: Kernels,
    chunk: usize,
    /// Chunk of shared layers (see SHARED_CHUNK).
    shared_chunk: usize,
    precision: Precision,
    scan: Scan,
    /// scan_ends computes dt_proj itself (two-pass chunks of several segments).
    fuse_dt: bool,
    /// (segment, channel) threads per SM the scan's segments are sized for.
    seg_threads: usize,
    /// The two-pass scan's output pass runs kernels specialised at compile time for its
    /// flags (`scan_output_ready*`: ~25% fewer instructions per step in SASS, no spills);
    /// `DNA_MAMBA_SCAN_SPEC=0` runs the generic one, for comparison. (scan_ends specialised
    /// alike lost only ~7% of its instructions and spilled in its loop: not kept.)
    spec_output: bool,
    /// Uploads and sums through page-locked memory, asynchronously, so that callers overlap
    /// their host work with the GPU (`queues`): 1,000,000 150-bp reads 66.0 -> 54.2 s on an
    /// H200, CSVs byte-identical. `DNA_MAMBA_OVERLAP=0` (or `with_overlap(false)`) gives
    /// pageable copies, each sum_rows_start synchronized, for comparison.
    overlap: bool,
    /// cuBLAS refused FAST_16BF for dt_proj once: it runs in f32 from then on.
    no_fast_bf16: AtomicBool,
    sms: usize,
    label: String,
    embedding: CudaSlice<f32>,
    complement: CudaSlice<i32>,
    norms: Vec<CudaSlice<f32>>,
    norm_f: CudaSlice<f32>,
    mixers: Vec<(DevMamba, Option<DevMamba>)>,
    scratch: Mutex<Option<Scratch>>,
    shared: Mutex<Option<Shared>>,
    /// Page-locked buffers the sums come back through, reused (see `overlap`) ...
    sums_down: Downloads<f64>,
    /// ... and those tokens, packed record ids and sum ranges go up through, so that
    /// queuing a batch never waits for the one before it.
    up_tokens: Uploads<u8>,
    up_records: Uploads<i32>,
    up_ranges: Uploads<i64>,
    /// Largest `Shared` set to allocate; longer contexts run the directions one by one.
    share_bytes: usize,
    /// Stands in for the record ids when the context is one record.
    no_records: CudaSlice<i32>,
    /// Stands in for the shared output when a direction runs alone.
    no_acc: CudaSlice<f32>,
}

/// (segment, channel) threads per SM that segment lengths aim for; `DNA_MAMBA_SEG_THREADS`
/// overrides it for measurements (bench sweeps).
fn seg_threads() -> Result<usize> {
    match std::env::var("DNA_MAMBA_SEG_THREADS") {
        Err(_) => Ok(SEG_THREADS),
        Ok(v) => v.parse().ok().filter(|&n: &usize| n > 0).ok_or_else(|| anyhow!("DNA_MAMBA_SEG_THREADS={v}: expected a positive integer")),
    }
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
        Self::with_options(model, ordinal, chunk, Precision::F32)
    }

    pub fn with_options(model: Arc<Model>, ordinal: usize, chunk: usize, precision: Precision) -> Result<Self> {
        module::check_libraries()?;
        guarded("CUDA initialisation", || Self::init(model, ordinal, chunk.max(1), precision))
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Selects the scan kernels (tests compare both; the default is `DNA_MAMBA_SCAN` or one-pass).
    /// Asynchronous sums (see `overlap`), whatever DNA_MAMBA_OVERLAP says.
    pub fn with_overlap(mut self, overlap: bool) -> Self {
        self.overlap = overlap;
        self
    }

    /// The specialised output kernels (see `spec_output`), whatever DNA_MAMBA_SCAN_SPEC says.
    pub fn with_spec(mut self, spec: bool) -> Self {
        self.spec_output = spec;
        self
    }

    pub fn with_scan(mut self, scan: Scan) -> Self {
        self.scan = scan;
        self
    }

    pub fn scan(&self) -> Scan {
        self.scan
    }

    fn init(model: Arc<Model>, ordinal: usize, chunk: usize, precision: Precision) -> Result<Self> {
        let count = CudaContext::device_count().context("CUDA driver")?;
        ensure!((ordinal as i64) < count as i64, "CUDA device {ordinal} requested but {count} found");
        let ctx = CudaContext::new(ordinal).with_context(|| format!("creating a context on CUDA device {ordinal}"))?;
        // SAFETY: every buffer of this backend is used on its one stream only.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream()?;
        let blas = CudaBlas::new(stream.clone()).context("cuBLAS")?;
        let cfg = &model.config;
        let sizes = Sizes { d_state: cfg.d_state, d_conv: cfg.d_conv, d_inner: cfg.d_inner(), dt_rank: cfg.dt_rank() };
        let k = Kernels::load(&ctx, sizes)?;
        let sms = ctx.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?.max(1) as usize;
        let (major, minor) = ctx.compute_capability()?;
        let prec = match precision {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        };
        let label = format!("cuda:{ordinal} ({}, sm_{major}{minor}, {prec})", ctx.name()?);

        let w = &model.weights;
        let up = |v: &[f32]| stream.clone_htod(v).context("uploading weights");
        let proj = |v: &[f32]| -> Result<Weight> {
            Ok(match precision {
                Precision::F32 => Weight::F32(up(v)?),
                Precision::Bf16 => {
                    let bits: Vec<u16> = v.iter().map(|&x| half::bf16::from_f32(x).to_bits()).collect();
                    Weight::Bf16(stream.clone_htod(&bits).context("uploading weights")?)
                }
            })
        };
        // `tied`: the forward mixer of a layer whose reverse one is `m` with the same in/out
        // projections (Caduceus ties them): uploaded once
        let dev_mamba = |m: &Mamba, tied: Option<&DevMamba>| -> Result<DevMamba> {
            let (d, di) = (cfg.d_model, cfg.d_inner());
            let (in_proj, out_proj, flipped) = match tied {
                Some(f) => (f.in_proj.clone(), f.out_proj.clone(), f.flipped.clone()),
                None => {
                    let flipped = if cfg.rcps {
                        let in_flip: Vec<f32> = m.in_proj.chunks(d).flat_map(|row| row.iter().rev().copied()).collect();
                        let out_flip: Vec<f32> = m.out_proj.chunks(di).rev().flatten().copied().collect();
                        Some((Arc::new(proj(&in_flip)?), Arc::new(proj(&out_flip)?)))
                    } else {
                        None
                    };
                    (Arc::new(proj(&m.in_proj)?), Arc::new(proj(&m.out_proj)?), flipped)
                }
            };
            // no larger than -FLT_MIN, so that an infinite Δ (a packed record's first step, see
            // reset_gate in kernels/scan.cu) gives decay 0 even where A is 0; exp2 of a finite
            // Δ times -FLT_MIN is exactly 1, as for A = 0
            let a2: Vec<f32> = m.a.iter().map(|a| (a * std::f32::consts::LOG2_E).min(-f32::MIN_POSITIVE)).collect();
            Ok(DevMamba {
                in_proj,
                out_proj,
                flipped,
                conv_w: up(&m.conv_w)?,
                conv_b: up(&m.conv_b)?,
                x_proj: proj(&m.x_proj)?,
                dt_w: up(&m.dt_w)?,
                dt_b: up(&m.dt_b)?,
                a2: up(&a2)?,
                d: up(&m.d)?,
            })
        };
        let mut mixers = Vec::with_capacity(cfg.n_layer);
        let mut norms = Vec::with_capacity(cfg.n_layer);
        for l in &w.layers {
            let fwd = dev_mamba(&l.fwd, None)?;
            let rev = match &l.rev {
                Some(r) => {
                    let tied = Arc::ptr_eq(&l.fwd.in_proj, &r.in_proj) && Arc::ptr_eq(&l.fwd.out_proj, &r.out_proj);
                    Some(dev_mamba(r, tied.then_some(&fwd))?)
                }
                None => None,
            };
            mixers.push((fwd, rev));
            norms.push(up(&l.norm)?);
        }
        let complement: Vec<i32> = w.complement.iter().map(|&c| c as i32).collect();
        let complement = stream.clone_htod(&complement)?;
        let embedding = up(&w.embedding)?;
        let norm_f = up(&w.norm_f)?;
        let no_records = stream.alloc_zeros::<i32>(1)?;
        let no_acc = stream.alloc_zeros::<f32>(1)?;
        stream.synchronize()?;
        Ok(Cuda {
            model,
            ctx,
            stream,
            blas,
            k,
            shared_chunk: if chunk == DEFAULT_CHUNK { SHARED_CHUNK } else { chunk },
            // bf16: the normalized stream's half-size buffer leaves room for the longer chunk
            // within the 1M-base budget (2.34 -> 2.59 M bases/s at 1M on an H200)
            chunk: if chunk == DEFAULT_CHUNK && precision == Precision::Bf16 { SHARED_CHUNK } else { chunk },
            precision,
            scan: Scan::from_env()?,
            fuse_dt: sizes.fuse_dt(),
            seg_threads: seg_threads()?,
            spec_output: std::env::var("DNA_MAMBA_SCAN_SPEC").map_or(true, |v| v != "0"),
            overlap: std::env::var("DNA_MAMBA_OVERLAP").map_or(true, |v| v != "0"),
            no_fast_bf16: AtomicBool::new(false),
            sms,
            label,
            embedding,
            complement,
            norms,
            norm_f,
            mixers,
            scratch: Mutex::new(None),
            shared: Mutex::new(None),
            sums_down: Downloads::new(),
            up_tokens: Uploads::new(),
            up_records: Uploads::new(),
            up_ranges: Uploads::new(),
            share_bytes: SHARE_BYTES,
            no_records,
            no_acc,
        })
    }

    /// Cap on the full-context buffers that let the two directions of a tied bidirectional
    /// layer share `in_proj` and `out_proj` (0: never share; both ways compute the same).
    pub fn with_share_bytes(mut self, bytes: usize) -> Self {
        self.share_bytes = bytes;
        self
    }

    /// Bytes per row of the `Shared` buffers.
    fn shared_row_bytes(&self) -> usize {
        let cfg = &self.model.config;
        let half = self.precision == Precision::Bf16;
        12 * cfg.d_inner() + if half { 2 * cfg.d_inner() } else { 0 }
    }

    fn shared_scratch<'a>(&self, slot: &'a mut Option<Shared>, rows: usize) -> Result<&'a mut Shared> {
        let cfg = &self.model.config;
        let di = cfg.d_inner();
        let half = self.precision == Precision::Bf16;
        if slot.as_ref().is_none_or(|s| s.rows < rows) {
            *slot = None;
            let zh = |len: usize| self.stream.alloc_zeros::<u16>(if half { len.max(1) } else { 1 });
            *slot = Some(Shared {
                rows,
                xz: self.stream.alloc_zeros::<f32>(rows * 2 * di)?,
                y: self.stream.alloc_zeros::<f32>(rows * di)?,
                y_h: zh(rows * di)?,
            });
        }
        Ok(slot.as_mut().expect("allocated above"))
    }

    /// `dst = RMSNorm(src)` over `len` rows of `width` (src and dst may be the same memory);
    /// `half`: bf16 output packed from dst's start.
    ///
    /// # Safety
    /// Both pointers must hold `len` rows of `width` (bf16 ones for dst when `half`).
    unsafe fn rms_norm_ptrs(&self, src: u64, dst: u64, len: usize, width: usize, norm: Norm, half: bool) -> Result<()> {
        let cfg = &self.model.config;
        let d = cfg.d_model;
        ensure!(width.is_multiple_of(d), "rms_norm: width {width} is not a multiple of d_model");
        let w = match norm {
            Norm::Layer(i) => self.norms.get(i).ok_or_else(|| anyhow!("no layer {i}"))?,
            Norm::Final => &self.norm_f,
        };
        let halves = i32_of(width / d, "halves")?;
        let di = i32_of(d, "d_model")?;
        let (eps, half) = (cfg.norm_epsilon, half as i32);
        let mut b = self.stream.launch_builder(&self.k.rms_norm);
        b.arg(&src).arg(&dst).arg(w).arg(&len).arg(&di).arg(&halves).arg(&eps).arg(&half);
        // SAFETY: the caller's rows; one warp per (row, half) reads the d-element weight
        unsafe { b.launch(grid(len * halves as usize * 32, 256)) }?;
        Ok(())
    }

    /// `src` on the device: through page-locked memory when overlapping (a pageable copy may
    /// wait for the stream to drain).
    fn upload<T: DeviceRepr + ValidAsZeroBits + Copy>(&self, ring: &Uploads<T>, src: &[T]) -> Result<CudaSlice<T>> {
        if self.overlap {
            ring.upload(&self.ctx, &self.stream, src)
        } else {
            Ok(self.stream.clone_htod(src)?)
        }
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

    /// `linear` on tensor cores: `w` and `a` are bf16 bits, `c` is f32, the products are
    /// accumulated in f32 (cublasGemmEx, CUBLAS_COMPUTE_32F).
    #[allow(clippy::too_many_arguments)]
    fn linear_bf16(
        &self,
        w: &CudaSlice<u16>,
        n: usize,
        k: usize,
        a: &impl DevicePtr<u16>,
        lda: usize,
        rows: usize,
        c: &mut impl DevicePtrMut<f32>,
        ldc: usize,
        beta: f32,
    ) -> Result<()> {
        debug_assert!(w.len() >= n * k);
        debug_assert!(a.len() >= (rows - 1) * lda + k && c.len() >= (rows - 1) * ldc + n);
        let (wp, _w) = w.device_ptr(&self.stream);
        let (ap, _a) = a.device_ptr(&self.stream);
        let (cp, _c) = c.device_ptr_mut(&self.stream);
        // SAFETY: as for `linear`; the pointers stay valid while the guards live.
        unsafe {
            self.gemm_ex(
                cudaDataType_t::CUDA_R_16BF,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                (wp, n, k),
                (ap, lda, rows),
                (cp, ldc),
                beta,
            )
        }
        .context("cuBLAS bf16 GEMM")
    }

    /// `[x | z] = u · W_inᵀ` in bf16 mode for `rows` rows from row `r0`, where `u` is the
    /// view's column block of `input` as `rms_norm` left it there: bf16, packed in the first
    /// half of each row's bytes (`[rows][width]` bf16 at the buffer's start).
    fn in_proj_bf16(&self, w: &CudaSlice<u16>, input: &CudaBuf, r0: usize, col: usize, rows: usize, xz: &mut CudaSlice<f32>) -> Result<()> {
        let cfg = &self.model.config;
        let (d, di) = (cfg.d_model, cfg.d_inner());
        // bf16 values: two to each f32 of the buffer
        ensure!((r0 + rows) * input.width <= 2 * input.data.len() && col + d <= input.width, "in_proj: rows out of range");
        let (base, _g) = input.data.device_ptr(&self.stream);
        let a = base + ((r0 * input.width + col) * 2) as u64;
        let (cp, _c) = xz.device_ptr_mut(&self.stream);
        // SAFETY: rows rows of width bf16 values from row r0 lie in the first half of the
        // f32 buffer (checked); xz holds rows >= `rows` of 2·di (the callers' scratch).
        unsafe {
            self.gemm_ex(
                cudaDataType_t::CUDA_R_16BF,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                (self.weight_ptr(w), 2 * di, d),
                (a, input.width, rows),
                (cp, 2 * di),
                0.0,
            )
        }
        .context("cuBLAS bf16 GEMM (in_proj)")
    }

    fn weight_ptr(&self, w: &CudaSlice<u16>) -> u64 {
        // event tracking is off, so the guard only holds the pointer
        w.device_ptr(&self.stream).0
    }

    /// `linear` for f32 operands that cuBLAS rounds to bf16 on the fly (FAST_16BF compute
    /// type, f32 accumulation): dt_proj, whose input is a column block of x_proj's output.
    /// Falls back to f32 for good if cuBLAS refuses.
    #[allow(clippy::too_many_arguments)]
    fn linear_fast_bf16(
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
        if !self.no_fast_bf16.load(Ordering::Relaxed) {
            let r = {
                let (wp, _w) = w.device_ptr(&self.stream);
                let (ap, _a) = a.device_ptr(&self.stream);
                let (cp, _c) = c.device_ptr_mut(&self.stream);
                // SAFETY: as for `linear`.
                unsafe {
                    self.gemm_ex(
                        cudaDataType_t::CUDA_R_32F,
                        cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_16BF,
                        (wp, n, k),
                        (ap, lda, rows),
                        (cp, ldc),
                        beta,
                    )
                }
            };
            if r.is_ok() {
                return Ok(());
            }
            self.no_fast_bf16.store(true, Ordering::Relaxed);
        }
        self.linear(w, n, k, a, lda, rows, c, ldc, beta)
    }

    /// Row-major `c[rows, n] = beta·c + a[rows, k] · wᵀ` through cublasGemmEx, with `w` and
    /// `a` of type `ab`, `c` f32 (see `linear` for the transposition).
    ///
    /// SAFETY: the pointers must address device memory of the sizes the shapes imply.
    unsafe fn gemm_ex(
        &self,
        ab: cudaDataType_t,
        compute: cublasComputeType_t,
        (w, n, k): (u64, usize, usize),
        (a, lda, rows): (u64, usize, usize),
        (c, ldc): (u64, usize),
        beta: f32,
    ) -> Result<()> {
        let alpha = 1.0f32;
        // SAFETY: the caller's contract; alpha and beta outlive the (enqueueing) call.
        unsafe {
            gemm_ex(
                *self.blas.handle(),
                cublasOperation_t::CUBLAS_OP_T,
                cublasOperation_t::CUBLAS_OP_N,
                i32_of(n, "gemm m")?,
                i32_of(rows, "gemm n")?,
                i32_of(k, "gemm k")?,
                (&alpha) as *const f32 as *const c_void,
                w as *const c_void,
                ab,
                i32_of(k, "gemm lda")?,
                a as *const c_void,
                ab,
                i32_of(lda, "gemm ldb")?,
                (&beta) as *const f32 as *const c_void,
                c as *mut c_void,
                cudaDataType_t::CUDA_R_32F,
                i32_of(ldc, "gemm ldc")?,
                compute,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }?;
        Ok(())
    }

    fn scratch<'a>(&self, slot: &'a mut Option<Scratch>, rows: usize) -> Result<&'a mut Scratch> {
        let cfg = &self.model.config;
        let (di, n) = (cfg.d_inner(), cfg.d_state);
        let nx = cfg.dt_rank() + 2 * n;
        let half = self.precision == Precision::Bf16;
        if slot.as_ref().is_none_or(|s| s.rows < rows) {
            *slot = None; // free the old set before allocating the larger one
            let z = |len: usize| self.stream.alloc_zeros::<f32>(len.max(1));
            let zh = |len: usize| self.stream.alloc_zeros::<u16>(if half { len.max(1) } else { 1 });
            let segs = self.max_segments(rows);
            let set = (|| -> Result<Scratch> {
                Ok(Scratch {
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
                    xc_h: zh(rows * di)?,
                })
            })();
            let mib = (rows * (4 * di + nx) * 4 + if half { rows * di * 2 } else { 0 }) >> 20;
            *slot = Some(set.with_context(|| format!("GPU memory: the mixer's buffers for chunks of {rows} rows (~{mib} MiB) could not be allocated"))?);
        }
        Ok(slot.as_mut().expect("allocated above"))
    }

    /// Segment length for a chunk of `t` steps: enough (segment, channel) threads to fill
    /// the GPU about twice over, no shorter than MIN_SEGMENT, and short enough for the
    /// segment's B and C rows to fit in shared memory. The same for both scans.
    /// (One-pass segments sized for 512 threads per SM, for less to correct, made scan_fused
    /// 1.7x slower on an H200: the scan needs the occupancy.)
    fn segment_len(&self, t: usize) -> usize {
        let cfg = &self.model.config;
        let want_segments = (self.sms * self.seg_threads).div_ceil(cfg.d_inner()).max(1);
        t.div_ceil(want_segments).max(self.shortest_segment()).min(self.longest_segment())
    }

    /// The most segments a chunk of at most `rows` steps is cut into: segment_len aims at
    /// `want` segments, and only a segment clamped to the longest makes more (monotone in t).
    fn max_segments(&self, rows: usize) -> usize {
        let want = (self.sms * self.seg_threads).div_ceil(self.model.config.d_inner()).max(1);
        want.max(rows.div_ceil(self.segment_len(rows.max(1))))
    }

    /// Longest segment whose B and C rows and reset flags fit the scan's shared memory.
    fn longest_segment(&self) -> usize {
        let cfg = &self.model.config;
        // scan_output stages [B | C], scan_ends B or, fusing dt_proj, [δ_r | B]
        let row = (2 * cfg.d_state).max(if self.fuse_dt { cfg.dt_rank() + cfg.d_state } else { 0 });
        (SCAN_SMEM / ((row + 1) * 4)).max(1)
    }

    fn shortest_segment(&self) -> usize {
        MIN_SEGMENT.min(self.longest_segment())
    }

    /// The one-pass scan of one chunk: scan_fused; with several segments also scan_combine
    /// (from zero: segment 0 started from the carried state) and scan_fix.
    fn scan_one_pass<F: Fn(usize, usize) -> LaunchConfig>(&self, m: &DevMamba, bufs: ScanBufs<'_, '_>, io: &ScanIo<'_>, g: &ScanGrids<F>) -> Result<()> {
        let n = self.model.config.d_state;
        let ScanBufs { x, delta, dbc, xz, h, dsum, ssm, xc_h, mut y_h, mut y_acc } = bufs;
        let mut b = self.stream.launch_builder(&self.k.scan_fused);
        b.arg(&mut *x).arg(&mut *delta).arg(dbc).arg(xz).arg(&m.a2).arg(&m.dt_b).arg(&m.d);
        b.arg(&mut *ssm).arg(&mut *h).arg(&mut *dsum);
        b.arg(&io.t32).arg(&io.di32).arg(&io.nx32).arg(&io.rk32).arg(&io.seg32).arg(&io.nseg32).arg(&io.rev32);
        b.arg(io.rec).arg(&io.r0_64).arg(&io.len64).arg(&io.packed);
        match y_h.as_mut() {
            Some(v) => b.arg(&mut **v),
            None => b.arg(&mut *xc_h),
        };
        b.arg(&io.half32);
        match y_acc.as_mut() {
            Some(v) => b.arg(&mut **v),
            None => b.arg(&self.no_acc),
        };
        b.arg(&io.acc_mode);
        // SAFETY: nseg·seg covers the t rows of the t-row intermediates (x, delta, dbc, xz,
        // and the shared outputs from the chunk's row on); h and dsum hold >= nseg segments
        // (checked); the carried state is di·n; shared memory holds seg rows of
        // B and C and seg flags; in bf16 mode the output goes to xc_h (t rows of di, no longer
        // read by x_proj, which ran before on this stream) or the shared y_h; acc_mode 0 never
        // touches no_acc.
        unsafe { b.launch((g.seg)(2 * n, g.nseg)) }?;
        if g.nseg == 1 {
            return Ok(());
        }
        let carry_in = 0i32;
        let mut b = self.stream.launch_builder(&self.k.scan_combine);
        b.arg(&mut *h).arg(&*dsum).arg(&m.a2).arg(&mut *ssm).arg(&io.nseg32).arg(&io.di32).arg(&carry_in);
        // SAFETY: 32 state cells per block (the kernel masks cells >= di·n), walking the nseg
        // segments of h and dsum written above.
        unsafe { b.launch(g.cells) }?;
        let mut b = self.stream.launch_builder(&self.k.scan_fix);
        b.arg(&mut *x).arg(&*delta).arg(dbc).arg(xz).arg(&m.a2).arg(&*h);
        b.arg(&io.t32).arg(&io.di32).arg(&io.nx32).arg(&io.rk32).arg(&io.seg32).arg(&io.rev32);
        b.arg(io.rec).arg(&io.r0_64).arg(&io.len64).arg(&io.packed);
        match y_h.as_mut() {
            Some(v) => b.arg(&mut **v),
            None => b.arg(&mut *xc_h),
        };
        b.arg(&io.half32);
        match y_acc.as_mut() {
            Some(v) => b.arg(&mut **v),
            None => b.arg(&self.no_acc),
        };
        b.arg(&io.acc_mode);
        // SAFETY: as for scan_fused, over segments 1..nseg, with seg rows of C and seg flags
        // in shared memory; h holds the start states scan_combine wrote.
        unsafe { b.launch((g.seg)(n, g.nseg - 1)) }?;
        Ok(())
    }

    /// The previous two-pass scan of one chunk (`Scan::TwoPass`).
    fn scan_two_pass<F: Fn(usize, usize) -> LaunchConfig>(&self, m: &DevMamba, bufs: ScanBufs<'_, '_>, io: &ScanIo<'_>, g: &ScanGrids<F>) -> Result<()> {
        let n = self.model.config.d_state;
        let ScanBufs { x, delta, dbc, xz, h, dsum, ssm, xc_h, mut y_h, mut y_acc } = bufs;
        let single = g.nseg == 1;
        if !single {
            let mut b = self.stream.launch_builder(&self.k.scan_ends);
            b.arg(&*x).arg(&mut *delta).arg(dbc).arg(&m.a2).arg(&m.dt_b).arg(&mut *h).arg(&mut *dsum);
            b.arg(&io.t32).arg(&io.di32).arg(&io.nx32).arg(&io.rk32).arg(&io.seg32).arg(&io.rev32);
            b.arg(io.rec).arg(&io.r0_64).arg(&io.len64).arg(&io.packed).arg(&m.dt_w).arg(&io.fuse_dt);
            // SAFETY: nseg·seg covers t rows of the t-row intermediates; h and dsum hold
            // >= nseg segments (checked in run_mixer); shared memory holds seg rows
            // of B (with fuse_dt: of [δ_r | B]) and seg flags; dt_w is di·dt_rank.
            let width = if io.fuse_dt != 0 { self.model.config.dt_rank() + n } else { n };
            unsafe { b.launch((g.seg)(width, g.nseg)) }?;
            let carry_in = 1i32;
            let mut b = self.stream.launch_builder(&self.k.scan_combine);
            b.arg(&mut *h).arg(&*dsum).arg(&m.a2).arg(&mut *ssm).arg(&io.nseg32).arg(&io.di32).arg(&carry_in);
            // SAFETY: 32 state cells per block (the kernel masks cells >= di·n), walking
            // the nseg segments of h and dsum written above.
            unsafe { b.launch(g.cells) }?;
        }
        let (delta_ready, write_back) = (!single as i32, single as i32);
        let output = match (single || !self.spec_output, io.packed != 0) {
            (true, _) => &self.k.scan_output,
            (false, false) => &self.k.scan_output_ready,
            (false, true) => &self.k.scan_output_ready_packed,
        };
        let mut b = self.stream.launch_builder(output);
        b.arg(&mut *x).arg(&*delta).arg(dbc).arg(xz).arg(&m.a2).arg(&m.dt_b).arg(&m.d);
        if single {
            b.arg(&mut *ssm);
        } else {
            b.arg(&mut *h);
        }
        b.arg(&io.t32).arg(&io.di32).arg(&io.nx32).arg(&io.rk32).arg(&io.seg32).arg(&io.rev32).arg(&delta_ready).arg(&write_back);
        b.arg(io.rec).arg(&io.r0_64).arg(&io.len64).arg(&io.packed);
        match y_h.as_mut() {
            Some(v) => b.arg(&mut **v),
            None => b.arg(&mut *xc_h),
        };
        b.arg(&io.half32);
        match y_acc.as_mut() {
            Some(v) => b.arg(&mut **v),
            None => b.arg(&self.no_acc),
        };
        b.arg(&io.acc_mode);
        // SAFETY: as for scan_ends, with seg rows of B and C in shared memory; with one
        // segment the start state is the di·n carried state; in bf16 mode the output goes
        // to xc_h (t rows of di, no longer read by x_proj, which ran before on this stream)
        // or, shared, to the full-context y_h; the shared y holds the len rows of di from
        // row r0 on (acc_mode 0 never touches no_acc).
        unsafe { b.launch((g.seg)(2 * n, g.nseg)) }?;
        Ok(())
    }

    fn dev_mamba(&self, layer: usize, dir: Dir) -> Result<&DevMamba> {
        let (fwd, rev) = self.mixers.get(layer).ok_or_else(|| anyhow!("no layer {layer}"))?;
        match dir {
            Dir::Fwd => Ok(fwd),
            Dir::Rev => rev.as_ref().ok_or_else(|| anyhow!("layer {layer} has no reverse mixer")),
        }
    }

    /// `acc += Mamba(input)` through `view` over the first `len` rows, chunk by chunk. The
    /// conv and scan state start at zero, or from `carry` (`[conv | ssm]`, written back).
    #[allow(clippy::too_many_arguments)]
    /// With `shared`, `[x | z]` is read from the full-context buffer (in_proj already ran)
    /// and the gated output goes to the shared sum instead of through `out_proj`.
    fn run_mixer(
        &self,
        m: &DevMamba,
        input: &CudaBuf,
        acc: &mut CudaBuf,
        len: usize,
        view: View,
        carry: Option<&mut CudaBuf>,
        mut shared: Option<SharedPass<'_>>,
        records: Option<&Records>,
    ) -> Result<()> {
        let cfg = &self.model.config;
        let (d, di, n, rk) = (cfg.d_model, cfg.d_inner(), cfg.d_state, cfg.dt_rank());
        let nx = rk + 2 * n;
        let (w_in, w_out) = (input.width, acc.width);
        ensure!(view.col + d <= w_in && view.col + d <= w_out, "mixer: view outside the buffer");
        ensure!(len <= input.rows && len <= acc.rows, "mixer: rows out of range");
        acc.full("mixer")?;
        if len == 0 {
            return Ok(());
        }
        let (in_proj, out_proj) = match (&m.flipped, view.flip_channels) {
            (_, false) => (&*m.in_proj, &*m.out_proj),
            (Some((i, o)), true) => (&**i, &**o),
            (None, true) => anyhow::bail!("channel-flipped view on a model without RCPS"),
        };
        let (di32, nx32, rk32) = (i32_of(di, "d_inner")?, i32_of(nx, "x_proj rows")?, i32_of(rk, "dt_rank")?);
        let rev32 = view.backward as i32;
        let half = self.precision == Precision::Bf16;
        let half32 = half as i32;

        let (rec, packed) = match records {
            Some(r) => {
                ensure!(r.len == len, "mixer: {len} rows but the packed records cover {}", r.len);
                (&r.rec, 1i32)
            }
            None => (&self.no_records, 0i32),
        };
        let len64 = len as i64;

        let mut guard = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        // shared layers run contexts within SHARE_BYTES, which leave room for longer chunks
        let chunk = if shared.is_some() { self.shared_chunk } else { self.chunk };
        let s = self.scratch(&mut guard, chunk.min(len))?;
        let conv_len = (cfg.d_conv - 1) * di;
        let carry = match carry {
            Some(state) => {
                ensure!(state.data.len() >= conv_len + di * n, "mixer: carry state of the wrong size");
                self.stream.memcpy_dtod(&state.data.slice(..conv_len), &mut s.conv_in)?;
                self.stream.memcpy_dtod(&state.data.slice(conv_len..conv_len + di * n), &mut s.ssm)?;
                Some(state)
            }
            None => {
                self.stream.memset_zeros(&mut s.conv_in)?;
                self.stream.memset_zeros(&mut s.ssm)?;
                None
            }
        };

        let mut start = 0;
        while start < len {
            let t = chunk.min(len - start);
            let t32 = i32_of(t, "chunk")?;
            // the chunk's time steps start..start+t occupy rows r0..r0+t, in reverse when backward
            let r0 = if view.backward { len - start - t } else { start };
            let r0_64 = r0 as i64;

            // [x | z] = u · W_inᵀ, straight from the stream's column block (bf16: the block as
            // rms_norm wrote it in bf16)
            match in_proj {
                _ if shared.is_some() => {}
                Weight::F32(w) => {
                    input.full("in_proj (f32)")?;
                    let u = input.data.slice(r0 * w_in + view.col..);
                    self.linear(w, 2 * di, d, &u, w_in, t, &mut s.xz.slice_mut(..), 2 * di, 0.0)?
                }
                Weight::Bf16(w) => self.in_proj_bf16(w, input, r0, view.col, t, &mut s.xz)?,
            }

            let xz = match &shared {
                Some(p) => p.xz.slice(r0 * 2 * di..),
                None => s.xz.slice(..),
            };
            ensure!((t.div_ceil(CONV_RUN) + cfg.d_conv) * di < 1 << 31, "conv: chunk of {t} rows too large for the kernel's 32-bit indices");
            let mut b = self.stream.launch_builder(&self.k.conv_silu);
            b.arg(&xz).arg(&mut s.xc).arg(&mut s.xc_h).arg(&s.conv_in).arg(&mut s.conv_out);
            b.arg(&m.conv_w).arg(&m.conv_b).arg(&t32).arg(&di32).arg(&rev32);
            b.arg(rec).arg(&r0_64).arg(&len64).arg(&packed).arg(&half32);
            // SAFETY: xz holds t rows of 2·di, xc (and xc_h in bf16 mode) t rows of di (scratch
            // rows >= t); the conv states are (d_conv-1)·di; weights are di·d_conv and di
            // (D_CONV = d_conv); packed record ids cover the len rows (checked above).
            unsafe { b.launch(grid((t.div_ceil(CONV_RUN) + cfg.d_conv - 1) * di, 256)) }?;
            std::mem::swap(&mut s.conv_in, &mut s.conv_out);

            // [δ | B | C] = x · W_xᵀ;  δ · W_dtᵀ (the bias and softplus are applied in the scan,
            // and so is dt_proj itself where scan_ends runs and can: `fuse_dt`)
            match &m.x_proj {
                Weight::F32(w) => self.linear(w, nx, di, &s.xc.slice(..), di, t, &mut s.dbc.slice_mut(..), nx, 0.0)?,
                Weight::Bf16(w) => self.linear_bf16(w, nx, di, &s.xc_h, di, t, &mut s.dbc, nx, 0.0)?,
            }
            let seg = self.segment_len(t);
            let nseg = t.div_ceil(seg);
            ensure!(nseg <= 65535, "scan: too many segments");
            ensure!(nseg * di * n <= s.h.len() && nseg * di <= s.dsum.len(), "scan: {nseg} segments exceed the scratch");
            let fuse_dt = self.fuse_dt && self.scan == Scan::TwoPass && nseg > 1;
            if !fuse_dt {
                if half {
                    self.linear_fast_bf16(&m.dt_w, di, rk, &s.dbc.slice(..), nx, t, &mut s.delta.slice_mut(..), di, 0.0)?;
                } else {
                    self.linear(&m.dt_w, di, rk, &s.dbc.slice(..), nx, t, &mut s.delta.slice_mut(..), di, 0.0)?;
                }
            }
            let (seg32, nseg32) = (seg as i32, nseg as i32);
            let threads = di.next_multiple_of(32).min(128) as u32;
            let acc_mode: i32 = match &shared {
                None => 0,
                Some(p) if p.first => 1,
                Some(_) => 2,
            };
            let (mut y_acc, mut y_h) = match shared.as_mut() {
                Some(p) => (Some(p.y.slice_mut(r0 * di..)), (half && !p.first).then(|| p.y_h.slice_mut(r0 * di..))),
                None => (None, None),
            };
            let io = ScanIo { t32, di32, nx32, rk32, seg32, nseg32, rev32, rec, r0_64, len64, packed, half32, acc_mode, fuse_dt: fuse_dt as i32 };
            let bufs = ScanBufs {
                x: &mut s.xc,
                delta: &mut s.delta,
                dbc: &s.dbc,
                xz: &xz,
                h: &mut s.h,
                dsum: &mut s.dsum,
                ssm: &mut s.ssm,
                xc_h: &mut s.xc_h,
                y_h: y_h.as_mut(),
                y_acc: y_acc.as_mut(),
            };
            let grids = ScanGrids {
                seg: |row_floats: usize, rows: usize| LaunchConfig {
                    grid_dim: (di.div_ceil(threads as usize) as u32, rows as u32, 1),
                    block_dim: (threads, 1, 1),
                    // the rows plus one reset flag per step
                    shared_mem_bytes: (seg * (row_floats + 1) * 4) as u32,
                },
                cells: LaunchConfig {
                    grid_dim: ((di * n).div_ceil(32) as u32, 1, 1),
                    block_dim: (32, COMBINE_GROUPS, 1),
                    shared_mem_bytes: 0,
                },
                nseg,
            };
            match self.scan {
                Scan::OnePass => self.scan_one_pass(m, bufs, &io, &grids)?,
                Scan::TwoPass => self.scan_two_pass(m, bufs, &io, &grids)?,
            }
            drop((y_acc, y_h));

            // acc += y · W_outᵀ, accumulated in place into the residual's column block
            if shared.is_none() {
                let mut o = acc.data.slice_mut(r0 * w_out + view.col..);
                match out_proj {
                    Weight::F32(w) => self.linear(w, d, di, &s.xc.slice(..), di, t, &mut o, w_out, 1.0)?,
                    Weight::Bf16(w) => self.linear_bf16(w, d, di, &s.xc_h, di, t, &mut o, w_out, 1.0)?,
                }
            }
            start += t;
        }
        if let Some(state) = carry {
            self.stream.memcpy_dtod(&s.conv_in, &mut state.data.slice_mut(..conv_len))?;
            self.stream.memcpy_dtod(&s.ssm, &mut state.data.slice_mut(conv_len..conv_len + di * n))?;
        }
        Ok(())
    }
}

/// Column sums in flight: the pieces' sums on their way to page-locked memory.
pub struct Sums {
    /// On its way to page-locked memory (`overlap`) ...
    host: Option<Pending<f64>>,
    /// ... or already copied.
    ready: Option<Vec<f64>>,
    /// The range each piece belongs to.
    owner: Vec<usize>,
    width: usize,
    ranges: usize,
}

impl Backend for Cuda {
    type Buf = CudaBuf;
    type Records = Records;
    type Sums = Sums;

    fn name(&self) -> String {
        self.label.clone()
    }

    fn alloc(&self, rows: usize, width: usize) -> Result<CudaBuf> {
        let n = rows.checked_mul(width).ok_or_else(|| anyhow!("buffer size overflows"))?;
        let data = self
            .stream
            .alloc_zeros::<f32>(n.max(1))
            .with_context(|| format!("cannot allocate {} MiB on the GPU for a {rows} x {width} buffer", (n * 4) >> 20))?;
        Ok(CudaBuf { data, rows, width, half: false })
    }

    fn alloc_normalized(&self, rows: usize, width: usize) -> Result<CudaBuf> {
        if self.precision != Precision::Bf16 {
            return self.alloc(rows, width);
        }
        // bf16 mode: the layers' norms write bf16 here and in_proj reads it so; half the memory
        // (512 MiB less at 1M bases, d_model 256)
        let n = rows.checked_mul(width).ok_or_else(|| anyhow!("buffer size overflows"))?;
        let data = self
            .stream
            .alloc_zeros::<f32>(n.div_ceil(2).max(1))
            .with_context(|| format!("cannot allocate {} MiB on the GPU for a {rows} x {width} bf16 buffer", (n * 2) >> 20))?;
        Ok(CudaBuf { data, rows, width, half: true })
    }

    fn embed(&self, tokens: &[u8], out: &mut CudaBuf) -> Result<()> {
        let cfg = &self.model.config;
        let vocab = cfg.vocab_padded();
        ensure!(tokens.len() <= out.rows && out.width == cfg.hidden_width(), "embed: buffer too small");
        out.full("embed")?;
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= vocab) {
            anyhow::bail!("token id {t} is outside the model's vocabulary of {vocab}");
        }
        if tokens.is_empty() {
            return Ok(());
        }
        let tok = self.upload(&self.up_tokens, tokens)?;
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
        buf.full("swap_halves")?;
        let d = buf.width / 2;
        let di = i32_of(d, "width")?;
        let mut b = self.stream.launch_builder(&self.k.swap_halves);
        b.arg(&mut buf.data).arg(&len).arg(&di);
        // SAFETY: len rows of 2d elements are within the buffer (checked).
        unsafe { b.launch(grid(len * d, 256)) }?;
        Ok(())
    }

    fn rms_norm(&self, src: &CudaBuf, dst: &mut CudaBuf, len: usize, norm: Norm) -> Result<()> {
        ensure!(src.width == dst.width, "rms_norm: widths differ");
        ensure!(len <= src.rows && len <= dst.rows, "rms_norm: rows out of range");
        src.full("rms_norm")?;
        // bf16 mode: a layer's normalized stream is read only by in_proj, as bf16: written so
        // (packed in the first half of dst's bytes, `in_proj_bf16`), it needs no conversion pass
        let half = self.precision == Precision::Bf16 && matches!(norm, Norm::Layer(_));
        ensure!(half || !dst.half, "rms_norm: f32 output into a bf16 buffer");
        let (s, _g) = src.data.device_ptr(&self.stream);
        let (d, _h) = dst.data.device_ptr_mut(&self.stream);
        // SAFETY: len rows of the common width are within both buffers (checked)
        unsafe { self.rms_norm_ptrs(s, d, len, src.width, norm, half) }
    }

    fn rms_norm_in_place(&self, buf: &mut CudaBuf, len: usize, norm: Norm) -> Result<()> {
        ensure!(len <= buf.rows, "rms_norm: rows out of range");
        buf.full("rms_norm")?;
        let (p, _g) = buf.data.device_ptr_mut(&self.stream);
        // SAFETY: len rows within the buffer (checked); the kernel reads a (row, half) before
        // its warp writes it, so source and destination may be the same; f32 output
        unsafe { self.rms_norm_ptrs(p, p, len, buf.width, norm, false) }
    }

    fn mixer(&self, layer: usize, dir: Dir, input: &CudaBuf, acc: &mut CudaBuf, len: usize, view: View, records: Option<&Records>) -> Result<()> {
        self.run_mixer(self.dev_mamba(layer, dir)?, input, acc, len, view, None, None, records)
    }

    fn bimamba(&self, layer: usize, input: &CudaBuf, acc: &mut CudaBuf, len: usize, view: View, records: Option<&Records>) -> Result<()> {
        let l = self.model.weights.layers.get(layer).ok_or_else(|| anyhow!("no layer {layer}"))?;
        let tied = l.rev.as_ref().is_some_and(|r| Arc::ptr_eq(&l.fwd.in_proj, &r.in_proj) && Arc::ptr_eq(&l.fwd.out_proj, &r.out_proj));
        let back = View { backward: !view.backward, ..view };
        if !tied || len == 0 || len.saturating_mul(self.shared_row_bytes()) > self.share_bytes {
            // a context too long to share: free the buffers a shorter one left behind, so
            // the memory of a long context stays what the unshared path needs
            *self.shared.lock().unwrap_or_else(|e| e.into_inner()) = None;
            let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
            if scratch.as_ref().is_some_and(|s| s.rows > self.chunk) {
                *scratch = None;
            }
            drop(scratch);
            self.mixer(layer, Dir::Fwd, input, acc, len, view, records)?;
            return self.mixer(layer, Dir::Rev, input, acc, len, back, records);
        }
        let cfg = &self.model.config;
        let (d, di) = (cfg.d_model, cfg.d_inner());
        let (w_in, w_out) = (input.width, acc.width);
        ensure!(view.col + d <= w_in && view.col + d <= w_out, "mixer: view outside the buffer");
        ensure!(len <= input.rows && len <= acc.rows, "mixer: rows out of range");
        let (fwd, rev) = (self.dev_mamba(layer, Dir::Fwd)?, self.dev_mamba(layer, Dir::Rev)?);
        let (in_proj, out_proj) = match (&fwd.flipped, view.flip_channels) {
            (_, false) => (&*fwd.in_proj, &*fwd.out_proj),
            (Some((i, o)), true) => (&**i, &**o),
            (None, true) => anyhow::bail!("channel-flipped view on a model without RCPS"),
        };
        let mut guard = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        let sh = match self.shared_scratch(&mut guard, len) {
            Ok(sh) => sh,
            Err(_) => {
                // out of GPU memory for the full-context buffers: the directions one by one,
                // chunk by chunk, compute the same in the memory of the unshared path
                *guard = None;
                drop(guard);
                self.mixer(layer, Dir::Fwd, input, acc, len, view, records)?;
                return self.mixer(layer, Dir::Rev, input, acc, len, back, records);
            }
        };
        // [x | z] = u · W_inᵀ once for the whole context and both directions
        let u = input.data.slice(view.col..);
        match in_proj {
            Weight::F32(_) => input.full("in_proj (f32)")?,
            Weight::Bf16(_) => {}
        }
        match in_proj {
            Weight::F32(w) => self.linear(w, 2 * di, d, &u, w_in, len, &mut sh.xz.slice_mut(..), 2 * di, 0.0)?,
            Weight::Bf16(w) => self.in_proj_bf16(w, input, 0, view.col, len, &mut sh.xz)?,
        }
        for (m, v, first) in [(fwd, view, true), (rev, back, false)] {
            let pass = SharedPass { xz: &sh.xz, y: &mut sh.y, y_h: &mut sh.y_h, first };
            self.run_mixer(m, input, acc, len, v, None, Some(pass), records)?;
        }
        // acc += (y_fwd + y_rev) · W_outᵀ, once
        let mut o = acc.data.slice_mut(view.col..);
        match out_proj {
            Weight::F32(w) => self.linear(w, d, di, &sh.y.slice(..), di, len, &mut o, w_out, 1.0)?,
            Weight::Bf16(w) => self.linear_bf16(w, d, di, &sh.y_h, di, len, &mut o, w_out, 1.0)?,
        }
        Ok(())
    }

    fn alloc_state(&self) -> Result<CudaBuf> {
        let cfg = &self.model.config;
        let di = cfg.d_inner();
        self.alloc(1, (cfg.d_conv - 1) * di + di * cfg.d_state)
    }

    fn mixer_carry(&self, layer: usize, input: &CudaBuf, acc: &mut CudaBuf, len: usize, state: &mut CudaBuf) -> Result<()> {
        let view = View { col: 0, flip_channels: false, backward: false };
        self.run_mixer(self.dev_mamba(layer, Dir::Fwd)?, input, acc, len, view, Some(state), None, None)
    }

    fn supports_packing(&self) -> bool {
        true
    }

    fn queues(&self) -> bool {
        self.overlap
    }

    fn records(&self, starts: &[usize], len: usize) -> Result<Records> {
        super::check_record_starts(starts, len)?;
        ensure!(starts.len() <= i32::MAX as usize, "too many packed records");
        let mut rec = vec![0i32; len];
        for (k, w) in starts.iter().enumerate() {
            let end = starts.get(k + 1).copied().unwrap_or(len);
            rec[*w..end].fill(k as i32);
        }
        let rec = self.upload(&self.up_records, &rec).context("uploading packed record ids")?;
        Ok(Records { rec, len })
    }

    fn sum_rows_start(&self, buf: &CudaBuf, width: usize, ranges: &[(usize, usize)]) -> Result<Sums> {
        ensure!(width == buf.width, "sum_rows: width {width} of a {}-wide buffer", buf.width);
        buf.full("sum_rows")?;
        ensure!(ranges.iter().all(|&(a, b)| a <= b && b <= buf.rows), "sum_rows: rows out of range");
        // Long ranges are cut into pieces summed by separate blocks (one block walking a
        // million rows would take ~0.2 s); the pieces' sums are added in sum_rows_finish.
        const PIECE: usize = 1024;
        let mut pieces: Vec<i64> = Vec::new();
        let mut owner: Vec<usize> = Vec::new();
        for (i, &(a, b)) in ranges.iter().enumerate() {
            let mut r = a;
            while r < b {
                let e = (r + PIECE).min(b);
                pieces.extend([r as i64, e as i64]);
                owner.push(i);
                r = e;
            }
        }
        let mut sums = Sums { host: None, ready: None, owner, width, ranges: ranges.len() };
        if sums.owner.is_empty() || width == 0 {
            return Ok(sums);
        }
        let n = sums.owner.len() * width;
        let dev_ranges = self.upload(&self.up_ranges, &pieces)?;
        let mut dev = self.stream.alloc_zeros::<f64>(n)?;
        let w32 = i32_of(width, "width")?;
        let threads = width.next_multiple_of(32).min(256);
        let cfg = LaunchConfig {
            grid_dim: (u32::try_from(sums.owner.len()).context("too many ranges")?, width.div_ceil(threads) as u32, 1),
            block_dim: (threads as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(&self.k.sum_rows);
        b.arg(&buf.data).arg(&w32).arg(&dev_ranges).arg(&mut dev);
        // SAFETY: every piece lies within the buffer's rows (checked); one block column-slice
        // per piece writes its width sums.
        unsafe { b.launch(cfg) }?;
        if !self.overlap {
            let mut host = vec![0f64; n];
            self.stream.memcpy_dtoh(&dev, &mut host)?;
            self.stream.synchronize()?;
            sums.ready = Some(host);
            return Ok(sums);
        }
        // dev and dev_ranges are freed in stream order, after the copy
        sums.host = Some(self.sums_down.start(&self.ctx, &self.stream, &dev)?);
        Ok(sums)
    }

    fn sum_rows_finish(&self, sums: Sums, out: &mut [f64]) -> Result<()> {
        let Sums { host, ready, owner, width, ranges } = sums;
        ensure!(out.len() == ranges * width, "sum_rows: output of the wrong size");
        out.fill(0.0);
        let add = |out: &mut [f64], got: &[f64]| {
            for (&i, sum) in owner.iter().zip(got.chunks(width)) {
                out[i * width..][..width].iter_mut().zip(sum).for_each(|(o, s)| *o += s);
            }
        };
        if let Some(got) = ready {
            add(out, &got);
        }
        if let Some(p) = host {
            self.sums_down.finish(p, |got| add(out, got))?;
        }
        Ok(())
    }

    fn read_rows(&self, buf: &CudaBuf, start: usize, dst: &mut [f32]) -> Result<()> {
        let off = start * buf.width;
        ensure!(off + dst.len() <= buf.rows * buf.width, "read_rows: out of range");
        buf.full("read_rows")?;
        if dst.is_empty() {
            return Ok(());
        }
        self.stream.memcpy_dtoh(&buf.data.slice(off..off + dst.len()), dst)?;
        self.stream.synchronize()?;
        Ok(())
    }

    fn copy_rows(&self, src: &CudaBuf, dst: &mut CudaBuf, len: usize) -> Result<()> {
        let n = len * src.width;
        ensure!(src.width == dst.width && len <= src.rows && len <= dst.rows, "copy_rows: out of range");
        src.full("copy_rows")?;
        dst.full("copy_rows")?;
        if n > 0 {
            self.stream.memcpy_dtod(&src.data.slice(..n), &mut dst.data.slice_mut(..n))?;
        }
        Ok(())
    }
}
