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

pub struct Cpu {
    model: Arc<Model>,
    chunk: usize,
    /// A in the scan's block layout, per layer and direction: [blocks][d_state][16].
    a_blocks: Vec<[Vec<f32>; 2]>,
    isa: simd::Isa,
}

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
        Cpu { model, chunk: chunk.max(1), a_blocks, isa: simd::isa() }
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

impl Backend for Cpu {
    type Buf = CpuBuf;

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
        let d = self.model.config.d_model;
        let eps = self.model.config.norm_epsilon;
        let w = self.norm_weight(norm);
        let w_flip: Vec<f32> = w.iter().rev().copied().collect();
        ensure!(src.width == dst.width, "rms_norm: widths differ");
        dst.data[..len * dst.width]
            .par_chunks_mut(dst.width)
            .zip(src.data[..len * src.width].par_chunks(src.width))
            .for_each(|(o, x)| {
                for (h, (o, x)) in o.chunks_mut(d).zip(x.chunks(d)).enumerate() {
                    let w = if h == 1 { &w_flip[..] } else { w };
                    let ms = x.iter().map(|v| v * v).sum::<f32>() / d as f32;
                    let s = 1.0 / (ms + eps).sqrt();
                    for ((o, x), w) in o.iter_mut().zip(x).zip(w) {
                        *o = x * s * w;
                    }
                }
            });
        Ok(())
    }

    fn mixer(&self, layer: usize, dir: Dir, input: &CpuBuf, acc: &mut CpuBuf, len: usize, view: View) -> Result<()> {
        let cfg = &self.model.config;
        let l = &self.model.weights.layers[layer];
        let (m, a_blk) = match dir {
            Dir::Fwd => (&l.fwd, &self.a_blocks[layer][0]),
            Dir::Rev => (
                l.rev.as_ref().ok_or_else(|| anyhow::anyhow!("layer {layer} has no reverse mixer"))?,
                &self.a_blocks[layer][1],
            ),
        };
        let (d, di, n, k, rk) = (cfg.d_model, cfg.d_inner(), cfg.d_state, cfg.d_conv, cfg.dt_rank());
        let nx = rk + 2 * n;
        let t_max = self.chunk.min(len);
        let mut s = Scratch {
            u: vec![0.0; t_max * d],
            xz: vec![0.0; t_max * 2 * di],
            xc: vec![0.0; t_max * di],
            dbc: vec![0.0; t_max * nx],
            delta: vec![0.0; t_max * di],
            out: vec![0.0; t_max * d],
            conv_state: vec![0.0; (k - 1) * di],
            ssm_state: vec![0.0; scan::state_len(di, n)],
        };
        let (w_in, w_out) = (input.width, acc.width);
        ensure!(view.col + d <= w_in && view.col + d <= w_out, "mixer: view outside the buffer");
        let row_of = |step: usize| if view.backward { len - 1 - step } else { step };
        let mut start = 0;
        while start < len {
            let t = self.chunk.min(len - start);
            // 1. gather the chunk's input rows through the view
            for (j, u) in s.u[..t * d].chunks_mut(d).enumerate() {
                let src = &input.data[row_of(start + j) * w_in + view.col..][..d];
                if view.flip_channels {
                    u.iter_mut().zip(src.iter().rev()).for_each(|(u, x)| *u = *x);
                } else {
                    u.copy_from_slice(src);
                }
            }
            // 2. [x | z] = u · W_inᵀ
            matmul_t(&mut s.xz, &s.u, d, &m.in_proj, t, 2 * di, d);
            // 3. causal depthwise conv + SiLU, state carried from the previous chunk
            scan::conv_silu(&s.xz[..t * 2 * di], 2 * di, &mut s.xc[..t * di], &mut s.conv_state, &m.conv_w, &m.conv_b, di, k);
            // 4. [δ | B | C] = x · W_xᵀ;  Δ = softplus(δ · W_dtᵀ + b_dt)  (bias added once, here)
            matmul_t(&mut s.dbc, &s.xc, di, &m.x_proj, t, nx, di);
            matmul_t(&mut s.delta, &s.dbc, nx, &m.dt_w, t, di, rk);
            s.delta[..t * di].par_chunks_mut(di).for_each(|row| {
                for (v, b) in row.iter_mut().zip(&m.dt_b) {
                    *v = simd::softplus(*v + b);
                }
            });
            // 5. selective scan, D skip and SiLU(z) gate; y overwrites xc
            scan::selective_scan(
                self.isa,
                scan::ScanIo { x: &mut s.xc[..t * di], delta: &s.delta[..t * di], dbc: &s.dbc[..t * nx], xz: &s.xz[..t * 2 * di] },
                &mut s.ssm_state, a_blk, &m.d, di, n, rk,
            );
            // 6. out = y · W_outᵀ, scattered back through the view
            matmul_t(&mut s.out, &s.xc, di, &m.out_proj, t, d, di);
            for (j, o) in s.out[..t * d].chunks(d).enumerate() {
                let dst = &mut acc.data[row_of(start + j) * w_out + view.col..][..d];
                if view.flip_channels {
                    dst.iter_mut().zip(o.iter().rev()).for_each(|(a, v)| *a += *v);
                } else {
                    dst.iter_mut().zip(o).for_each(|(a, v)| *a += *v);
                }
            }
            start += t;
        }
        Ok(())
    }

    fn read_rows(&self, buf: &CpuBuf, start: usize, dst: &mut [f32]) -> Result<()> {
        let off = start * buf.width;
        ensure!(off + dst.len() <= buf.data.len(), "read_rows: out of range");
        dst.copy_from_slice(&buf.data[off..off + dst.len()]);
        Ok(())
    }
}
