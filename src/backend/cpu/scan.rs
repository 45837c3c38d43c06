//! Conv and selective scan for one chunk of positions (model-format.md §2.2), state carried.
//!
//! Channels are processed in blocks of `LANES`; a block's scan state `[d_state][LANES]` stays
//! in registers over the whole chunk, and the exponentials of one step are one vector op per
//! state index. Blocks are independent, so rayon splits them across threads.

use rayon::prelude::*;

use super::simd::{self, Fma, Isa};

pub const LANES: usize = 16;

/// Where chunk row `j` of the `[x | z]` rows sits in the buffer holding them: rows are
/// walked from `first` forwards or backwards, so a backward walk over precomputed rows
/// needs no reversed copy.
#[derive(Clone, Copy, Debug)]
pub struct Rows {
    pub first: usize,
    pub backward: bool,
}

impl Rows {
    pub const IN_ORDER: Rows = Rows { first: 0, backward: false };

    #[inline(always)]
    pub fn get(self, j: usize) -> usize {
        if self.backward { self.first - j } else { self.first + j }
    }
}

fn blocks(di: usize) -> usize {
    di.div_ceil(LANES)
}

pub fn state_len(di: usize, n: usize) -> usize {
    blocks(di) * n * LANES
}

/// A `[di, n]` times log2(e) (the scan's decays are powers of 2, `simd::exp2_decay`),
/// rearranged to `[blocks][n][LANES]`, zero in the padding lanes.
pub fn a_blocks(a: &[f32], di: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0.0; state_len(di, n)];
    for c in 0..di {
        for s in 0..n {
            out[(c / LANES) * n * LANES + s * LANES + c % LANES] = a[c * n + s] * std::f32::consts::LOG2_E;
        }
    }
    out
}

/// Input row at position `src` relative to the chunk start: from `xz` through `rows`, or, before
/// the chunk, from the carried `state` (K-1 rows, oldest first).
#[inline(always)]
fn conv_input<'a>(xz: &'a [f32], xz_stride: usize, rows: Rows, state: &'a [f32], hist: usize, di: usize, src: isize) -> &'a [f32] {
    if src >= 0 {
        &xz[rows.get(src as usize) * xz_stride..][..di]
    } else {
        &state[(hist as isize + src) as usize * di..][..di]
    }
}

/// What one output row of the conv reads.
struct ConvTaps<'a> {
    xz: &'a [f32],
    xz_stride: usize,
    rows: Rows,
    state: &'a [f32],
    w_t: &'a [f32],
    b: &'a [f32],
    di: usize,
    k: usize,
}

#[inline(always)]
unsafe fn conv_row<M: Fma>(c: &ConvTaps<'_>, j: usize, out: &mut [f32]) {
    let (di, hist) = (c.di, c.k - 1);
    out.copy_from_slice(&c.b[..di]);
    for tap in 0..c.k {
        // source position relative to the chunk start
        let src = j as isize - hist as isize + tap as isize;
        let row = conv_input(c.xz, c.xz_stride, c.rows, c.state, hist, di, src);
        let w = &c.w_t[tap * di..][..di];
        for ((o, x), w) in out.iter_mut().zip(row).zip(w) {
            *o = M::fma(*w, *x, *o);
        }
    }
    for v in out.iter_mut() {
        *v = simd::silu::<M>(*v);
    }
}

simd::isa_variants!(unsafe fn conv_row_isa(c: &ConvTaps<'_>, j: usize, out: &mut [f32]) => conv_row);

/// `xc[t, c] = SiLU(b[c] + Σ_k w[c, k] · x[t-(K-1)+k, c])` with `x` the first `di` columns of
/// `xz` (row stride `xz_stride`) and rows before the chunk taken from `state` (the previous
/// chunk's last K-1 inputs, oldest first; zeros at the sequence start). Updates `state`.
/// `w_t` is the conv weight transposed to `[k, di]` so each tap is a contiguous row.
#[allow(clippy::too_many_arguments)]
pub fn conv_silu(isa: Isa, xz: &[f32], xz_stride: usize, rows: Rows, xc: &mut [f32], state: &mut [f32], w_t: &[f32], b: &[f32], di: usize, k: usize) {
    let t = xc.len() / di;
    let hist = k - 1;
    let state_ro: &[f32] = state;
    xc.par_chunks_mut(di).with_min_len(16).enumerate().for_each(|(j, out)| {
        let taps = ConvTaps { xz, xz_stride, rows, state: state_ro, w_t, b, di, k };
        // SAFETY: plain slice code; the variant is chosen by the detected ISA
        unsafe { conv_row_isa(isa, &taps, j, out) }
    });
    // keep the last K-1 inputs (oldest first), reaching back into the old state if t < K-1
    let mut next = vec![0.0; hist * di];
    for h in 0..hist {
        let src = t as isize - hist as isize + h as isize;
        next[h * di..(h + 1) * di].copy_from_slice(conv_input(xz, xz_stride, rows, state, hist, di, src));
    }
    state.copy_from_slice(&next);
}

/// The chunk's inputs; `x` (conv output) is overwritten with the gated output y.
pub struct ScanIo<'a> {
    pub x: &'a mut [f32],
    pub delta: &'a [f32],
    /// `[t, dt_rank + 2n]`: B at `dt_rank..`, C at `dt_rank + n..`.
    pub dbc: &'a [f32],
    /// `[x | z]` rows (2di wide), chunk row j at `xz_rows.get(j)`: z is the second half.
    pub xz: &'a [f32],
    pub xz_rows: Rows,
}

/// Raw pointer to `x` shared by the block tasks, which write disjoint channel ranges.
#[derive(Clone, Copy)]
struct SharedX(*mut f32);
unsafe impl Send for SharedX {}
unsafe impl Sync for SharedX {}

pub fn selective_scan(isa: Isa, io: ScanIo<'_>, state: &mut [f32], a_blk: &[f32], d_skip: &[f32], di: usize, n: usize, rk: usize) {
    let t = io.x.len() / di;
    let x = SharedX(io.x.as_mut_ptr());
    let (delta, dbc, xz, xz_rows) = (io.delta, io.dbc, io.xz, io.xz_rows);
    state.par_chunks_mut(n * LANES).enumerate().for_each(|(blk, st)| {
        let x = x;
        let c0 = blk * LANES;
        let width = LANES.min(di - c0);
        let a = &a_blk[blk * n * LANES..][..n * LANES];
        let args = Block { x: x.0, t, di, n, rk, c0, width, delta, dbc, xz, xz_rows, d_skip, a };
        // SAFETY: each block touches only its own channels c0..c0+width of x (disjoint across
        // tasks, all < di so in bounds of the t·di buffer); ISA variants run only where detected.
        unsafe { scan_isa(isa, &args, st) }
    });
}

struct Block<'a> {
    x: *mut f32,
    t: usize,
    di: usize,
    n: usize,
    rk: usize,
    c0: usize,
    width: usize,
    delta: &'a [f32],
    dbc: &'a [f32],
    xz: &'a [f32],
    xz_rows: Rows,
    d_skip: &'a [f32],
    a: &'a [f32],
}

simd::isa_variants!(unsafe fn scan_isa(b: &Block<'_>, st: &mut [f32]) => scan_block);

/// Steps ahead that `prefetch_ahead` asks for. A block reads one cache line per row of x, Δ,
/// z and B|C, rows 2-4 KB apart: every step is on a new 4-KB page, where the hardware
/// prefetchers stop, so without this each load waited for DRAM.
const PREFETCH_STEPS: usize = 8;

#[inline(always)]
fn prefetch_ahead(b: &Block<'_>, j: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let ahead = j + PREFETCH_STEPS;
        if ahead < b.t {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let row = ahead * b.di + b.c0;
            // SAFETY: prefetches never fault; the addresses are inside the buffers anyway
            // (row ahead < t, lanes c0.. < di)
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(b.x.add(row) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(b.delta.as_ptr().add(row) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(b.xz.as_ptr().add(b.xz_rows.get(ahead) * 2 * b.di + b.di + b.c0) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(b.dbc.as_ptr().add(ahead * (b.rk + 2 * b.n) + b.rk) as *const i8);
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (b, j);
}

/// A full block is one vector load; only the last block of a `d_inner` that is not a multiple
/// of LANES copies `width` values (a run-time length made every load a memcpy call: 17% of
/// the CPU forward pass in perf).
#[inline(always)]
fn load(src: &[f32], width: usize) -> [f32; LANES] {
    if width == LANES {
        return src[..LANES].try_into().unwrap();
    }
    let mut v = [0.0; LANES];
    v[..width].copy_from_slice(&src[..width]);
    v
}

/// `load`'s counterpart: the first `width` lanes of `v` into `dst`.
#[inline(always)]
fn store(dst: &mut [f32], v: &[f32; LANES], width: usize) {
    if width == LANES {
        dst[..LANES].copy_from_slice(v);
    } else {
        dst[..width].copy_from_slice(&v[..width]);
    }
}

/// (y + D·x)·SiLU(z) over all lanes (padding lanes are zeros in and out).
#[inline(always)]
fn gated<M: Fma>(y: &[f32; LANES], dsk: &[f32; LANES], xv: &[f32; LANES], z: &[f32; LANES]) -> [f32; LANES] {
    let mut o = [0.0; LANES];
    for l in 0..LANES {
        o[l] = (y[l] + dsk[l] * xv[l]) * simd::silu::<M>(z[l]);
    }
    o
}

/// h = 2^(Δ·A·log2 e)·h + Δ·B·x;  y = h·C + D·x;  y ·= SiLU(z)   for LANES channels over the chunk.
#[inline(always)]
unsafe fn scan_block<M: Fma>(b: &Block<'_>, st: &mut [f32]) {
    // d_state 16 (every released model): a fixed-size state the compiler keeps in registers
    if b.n == 16 {
        unsafe { scan_fixed::<M, 16>(b, st) }
    } else {
        unsafe { scan_dyn::<M>(b, st) }
    }
}

#[inline(always)]
unsafe fn scan_fixed<M: Fma, const N: usize>(b: &Block<'_>, st: &mut [f32]) {
    let (w, di) = (b.width, b.di);
    let dsk = load(&b.d_skip[b.c0..], w);
    let mut h = [[0.0f32; LANES]; N];
    let mut a = [[0.0f32; LANES]; N];
    for s in 0..N {
        h[s].copy_from_slice(&st[s * LANES..][..LANES]);
        a[s].copy_from_slice(&b.a[s * LANES..][..LANES]);
    }
    for j in 0..b.t {
        prefetch_ahead(b, j);
        // SAFETY: see selective_scan; the row slice is within x and only our lanes are used.
        let xrow = unsafe { std::slice::from_raw_parts_mut(b.x.add(j * di + b.c0), w) };
        let xv = load(xrow, w);
        let dl = load(&b.delta[j * di + b.c0..], w);
        let z = load(&b.xz[b.xz_rows.get(j) * 2 * di + di + b.c0..], w);
        let bc: &[f32; 2 * 16] = b.dbc[j * (b.rk + 2 * N) + b.rk..][..2 * 16].try_into().unwrap();
        let mut dx = [0.0f32; LANES];
        for l in 0..LANES {
            dx[l] = dl[l] * xv[l];
        }
        let mut y = [0.0f32; LANES];
        for s in 0..N {
            let (bs, cs) = (bc[s], bc[N + s]);
            for l in 0..LANES {
                h[s][l] = M::fma(simd::exp2_decay::<M>(dl[l] * a[s][l]), h[s][l], dx[l] * bs);
                y[l] = M::fma(h[s][l], cs, y[l]);
            }
        }
        store(xrow, &gated::<M>(&y, &dsk, &xv, &z), w);
    }
    for s in 0..N {
        st[s * LANES..][..LANES].copy_from_slice(&h[s]);
    }
}

#[inline(always)]
unsafe fn scan_dyn<M: Fma>(b: &Block<'_>, st: &mut [f32]) {
    let (n, w, di) = (b.n, b.width, b.di);
    let dsk = load(&b.d_skip[b.c0..], w);
    for j in 0..b.t {
        // SAFETY: see selective_scan; the row slice is within x and only our lanes are used.
        let xrow = unsafe { std::slice::from_raw_parts_mut(b.x.add(j * di + b.c0), w) };
        let xv = load(xrow, w);
        let dl = load(&b.delta[j * di + b.c0..], w);
        let z = load(&b.xz[b.xz_rows.get(j) * 2 * di + di + b.c0..], w);
        let bc = &b.dbc[j * (b.rk + 2 * n) + b.rk..][..2 * n];
        let mut dx = [0.0f32; LANES];
        for l in 0..LANES {
            dx[l] = dl[l] * xv[l];
        }
        let mut y = [0.0f32; LANES];
        for s in 0..n {
            let (bs, cs) = (bc[s], bc[n + s]);
            let a: &[f32; LANES] = b.a[s * LANES..][..LANES].try_into().unwrap();
            let h: &mut [f32; LANES] = (&mut st[s * LANES..][..LANES]).try_into().unwrap();
            for l in 0..LANES {
                h[l] = M::fma(simd::exp2_decay::<M>(dl[l] * a[l]), h[l], dx[l] * bs);
                y[l] = M::fma(h[l], cs, y[l]);
            }
        }
        store(xrow, &gated::<M>(&y, &dsk, &xv, &z), w);
    }
}
