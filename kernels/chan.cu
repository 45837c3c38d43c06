// Channel-major conv and one-pass selective scan for one chunk of a Mamba mixer
// (`DNA_MAMBA_SCAN=chan`; model-format.md §2.2):
//
//   h_t = exp(Δ_t·A)·h_{t-1} + Δ_t·B_t·x_t,   y_t = C_t·h_t + D·x_t,   o_t = y_t·SiLU(z_t)
//   with Δ_t = softplus(δ_t + b_dt)
//
// The chunk's intermediates are stored channel-major, [channel][step] (the GEMMs write and
// read them so by their transposition flags, at no cost), so each channel's steps are
// contiguous and a thread can own consecutive steps with vector loads. That is the layout of
// the public mamba_ssm scan, and it allows its scheme: each exponential is computed once.
//
// scan_chan: one warp per channel, lane l owning ITEMS consecutive steps of each tile of
// 32·ITEMS steps; tiles are walked in order, the state carried between them. Per state n: each
// lane computes its steps' decays a_u = 2^(Δ_u·a2_n) and inputs b_u = Δ_u·x_u·B_un and folds
// them into (P, E) (the decay product 2^(a2_n·ΣΔ) and the end state from zero); the warp scans
// (P, E) by shuffles, combines the result with the carried state and walks its steps again with
// the decays kept in registers, adding C_un·h_u to y_u. Per (step, state) one ex2 and ~6 FP
// instructions, against two ex2 in the two-pass scan of kernels/scan.cu.
// MEASURED (H200, BENCHMARKS.md "GPU engine v2, stage 3"): 3-4x SLOWER than the two-pass scan
// on the Ph 131k shape. Each state of each tile is a chain of dependent steps (ex2s, the fold,
// five shuffle rounds, the second walk) of ~1 µs, and one context gives only d_inner = 512
// such chains per launch (~4 warps per SM): latency-bound. Kept for the record only.
//
// Storage: step j of a forward walk is storage column j of the chunk, of a backward walk
// t-1-j. A chunk-local buffer holds storage column i at buffer column off + i, off = 0 forward
// and ld - t backward (ld, the row stride, a multiple of 4), so that in both directions a
// thread's ITEMS steps are whole float4s. x, Δ, B and C are chunk-local; z and the outputs may
// live in the shared full-context buffers (any alignment: read and written by scalars).
//
// Packed contexts: rec[row] is the record of each row of the whole context (storage column i
// is row row0 + i). A step whose predecessor in walk order belongs to another record gets an
// infinite Δ in its decays, so they are exactly 0 (a2 <= -FLT_MIN, see kernels/scan.cu) and no
// state crosses the boundary.
// Outputs (acc_mode as in kernels/scan.cu): 0 writes the gated output (bf16 to y_h in bf16
// mode, else f32 to y); 1 stores it in y (f32); 2 adds y to it and writes the sum (bf16 to
// y_h in bf16 mode, else f32 to y). y and y_h share the row stride ld_y.

#ifndef D_STATE
#define D_STATE 16
#endif
#ifndef D_CONV
#define D_CONV 4
#endif
#ifndef D_INNER
#define D_INNER 512
#endif
#ifndef ITEMS
#define ITEMS 8
#endif
#define TILE (32 * ITEMS)

__device__ __forceinline__ float exp2_ftz(float v)
{
    float r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(v));
    return r;
}
__device__ __forceinline__ float rcp_approx(float v)
{
    float r;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(v));
    return r;
}
// softplus as in kernels/scan.cu: branch-free, ~2 ulp
__device__ __forceinline__ float softplus(float v)
{
    const float a = -fabsf(v);
    const float j = rintf(a * 1.44269504f);
    const float f = fmaf(a, 1.44269504f, -j) + a * 1.92596303e-8f;
    const float e = exp2_ftz(f);
    const float u = j < -126.0f ? 0.0f : __int_as_float(__float_as_int(e) + ((int)j << 23));
    const float s = u * rcp_approx(2.0f + u);
    const float q = s * s;
    float p = fmaf(q, 1.0f / 13.0f, 1.0f / 11.0f);
    p = fmaf(q, p, 1.0f / 9.0f);
    p = fmaf(q, p, 1.0f / 7.0f);
    p = fmaf(q, p, 1.0f / 5.0f);
    p = fmaf(q, p, 1.0f / 3.0f);
    p = fmaf(q, p, 1.0f);
    return fmaxf(v, 0.0f) + 2.0f * s * p;
}
__device__ __forceinline__ float silu(float v) { return __fdividef(v, 1.0f + __expf(-v)); }
__device__ __forceinline__ unsigned short to_bf16(float f)
{
    unsigned short r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(f));
    return r;
}
__device__ __forceinline__ float from_bf16(unsigned short h) { return __int_as_float((int)h << 16); }

// The ITEMS values of one thread's steps j0 .. j0+ITEMS-1 from a chunk-local row `row`
// (buffer column 0), in walk order; steps at or past t read 0. Whole float4s when all
// steps are in the chunk.
template <int REV>
__device__ __forceinline__ void load_items(float (&v)[ITEMS], const float* __restrict__ row, int off, int t, int j0)
{
    if (j0 + ITEMS <= t) {
        const float4* p = reinterpret_cast<const float4*>(row + off + (REV ? t - ITEMS - j0 : j0));
#pragma unroll
        for (int q = 0; q < ITEMS / 4; ++q) {
            const float4 f = p[q];
            if (REV) {
                v[ITEMS - 1 - 4 * q] = f.x; v[ITEMS - 2 - 4 * q] = f.y; v[ITEMS - 3 - 4 * q] = f.z; v[ITEMS - 4 - 4 * q] = f.w;
            } else {
                v[4 * q] = f.x; v[4 * q + 1] = f.y; v[4 * q + 2] = f.z; v[4 * q + 3] = f.w;
            }
        }
    } else {
#pragma unroll
        for (int u = 0; u < ITEMS; ++u) {
            const int j = j0 + u;
            v[u] = j < t ? row[off + (REV ? t - 1 - j : j)] : 0.0f;
        }
    }
}

// One warp per channel, lane l owning steps l·ITEMS .. l·ITEMS+ITEMS-1 of each TILE (32·ITEMS)
// of the walk. No shared memory and no block barrier: the state carried between tiles is
// warp-uniform (lane 31's end state, broadcast by a shuffle), so a warp never waits for
// another. The state loop is unrolled, so its 16 carries and A·log2(e) sit in registers and
// consecutive states' shuffle scans overlap; B and C of the next state, and δ, x of the next
// tile, are loaded one iteration ahead.
template <int REV>
__device__ __forceinline__ void scan_warp(const float* __restrict__ x, const float* __restrict__ delta,
                                          const float* __restrict__ dbc, const float* __restrict__ z, long long ld_z,
                                          const float* __restrict__ a2, const float* __restrict__ dt_b,
                                          const float* __restrict__ d_skip, float* __restrict__ state,
                                          int c, int t, int ld, int off, int rk,
                                          const int* __restrict__ rec, long long row0, long long len, int packed,
                                          float* __restrict__ y, unsigned short* __restrict__ y_h, long long ld_y,
                                          int half, int acc_mode)
{
    const int lane = threadIdx.x & 31;
    // a2 and the carried state of the warp's channel: warp-uniform, in shared memory so the
    // state loop need not be unrolled 16 times (which spills)
    __shared__ float an_s[4][D_STATE], carry_s[4][D_STATE];
    float* an = an_s[threadIdx.x >> 5];
    float* carry = carry_s[threadIdx.x >> 5];
    if (lane < D_STATE) {
        an[lane] = a2[(size_t)c * D_STATE + lane];
        carry[lane] = state[(size_t)c * D_STATE + lane];
    }
    __syncwarp();
    const float* xr = x + (size_t)c * ld;
    const float* dr = delta + (size_t)c * ld;
    const float* zr = z + (size_t)c * ld_z;
    const float* br = dbc + (size_t)rk * ld;
    const float* cr = dbc + (size_t)(rk + D_STATE) * ld;
    const size_t yrow = (size_t)c * ld_y;
    const float bias = dt_b[c], dsk = d_skip[c];
    float dn[ITEMS], xn[ITEMS];
    load_items<REV>(dn, dr, off, t, lane * ITEMS);
    load_items<REV>(xn, xr, off, t, lane * ITEMS);
    for (int jt = 0; jt < t; jt += TILE) {
        const int j0 = jt + lane * ITEMS;
        float dg[ITEMS], dx[ITEMS], yv[ITEMS], zv[ITEMS], pv[ITEMS];
#pragma unroll
        for (int u = 0; u < ITEMS; ++u) {
            const int j = j0 + u;
            const bool live = j < t;
            const float dl = live ? softplus(dn[u] + bias) : 0.0f;
            dx[u] = dl * xn[u];
            yv[u] = dsk * xn[u];
            dg[u] = dl;
            const long long col = REV ? t - 1 - j : j;
            zv[u] = live ? zr[col] : 0.0f;
            pv[u] = live && acc_mode == 2 ? y[yrow + col] : 0.0f;
            if (packed && live) {
                const long long g = row0 + col;
                const long long p = REV ? g + 1 : g - 1;
                if (p >= 0 && p < len && rec[p] != rec[g]) dg[u] = __int_as_float(0x7f800000);
            }
        }
        if (jt + TILE < t) {
            load_items<REV>(dn, dr, off, t, j0 + TILE);
            load_items<REV>(xn, xr, off, t, j0 + TILE);
        }
        float dsum = 0.0f;
#pragma unroll
        for (int u = 0; u < ITEMS; ++u) dsum += dg[u];
        // B and C of state n + 1 are loaded while state n is computed (two register sets)
        float bm[2][ITEMS], cm[2][ITEMS];
        load_items<REV>(bm[0], br, off, t, j0);
        load_items<REV>(cm[0], cr, off, t, j0);
        auto state_step = [&](int n, int k) {
            const float a2n = an[n];
            float a[ITEMS], b[ITEMS];
#pragma unroll
            for (int u = 0; u < ITEMS; ++u) {
                a[u] = exp2_ftz(dg[u] * a2n);
                b[u] = dx[u] * bm[k][u];
            }
            if (n + 1 < D_STATE) {
                load_items<REV>(bm[k ^ 1], br + (size_t)(n + 1) * ld, off, t, j0);
                load_items<REV>(cm[k ^ 1], cr + (size_t)(n + 1) * ld, off, t, j0);
            }
            float e = b[0];
#pragma unroll
            for (int u = 1; u < ITEMS; ++u) e = fmaf(a[u], e, b[u]);
            float p = exp2_ftz(a2n * dsum);
            // inclusive scan of (p, e) over the lanes: (p1, e1) then (p2, e2) is (p1·p2, p2·e1 + e2)
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                const float pp = __shfl_up_sync(0xffffffffu, p, o);
                const float ep = __shfl_up_sync(0xffffffffu, e, o);
                if (lane >= o) {
                    e = fmaf(p, ep, e);
                    p *= pp;
                }
            }
            const float px = __shfl_up_sync(0xffffffffu, p, 1);
            const float ex = __shfl_up_sync(0xffffffffu, e, 1);
            const float h0 = carry[n];
            float h = lane == 0 ? h0 : fmaf(px, h0, ex);
#pragma unroll
            for (int u = 0; u < ITEMS; ++u) {
                h = fmaf(a[u], h, b[u]);
                yv[u] = fmaf(cm[k][u], h, yv[u]);
            }
            // lane 31's state is the tile's end state (steps past t keep it: a = 1, b = 0);
            // every lane has read carry[n] before this shuffle returns
            const float end = __shfl_sync(0xffffffffu, h, 31);
            if (lane == 0) carry[n] = end;
            __syncwarp();
        };
#pragma unroll 1
        for (int n = 0; n < D_STATE; n += 2) {
            state_step(n, 0);
            if (n + 1 < D_STATE) state_step(n + 1, 1);
        }
#pragma unroll
        for (int u = 0; u < ITEMS; ++u) {
            const int j = j0 + u;
            if (j < t) {
                const long long col = REV ? t - 1 - j : j;
                const float o = yv[u] * silu(zv[u]) + pv[u];
                if (acc_mode != 1 && half) y_h[yrow + col] = to_bf16(o);
                else y[yrow + col] = o;
            }
        }
    }
    if (lane < D_STATE) state[(size_t)c * D_STATE + lane] = carry[lane];
}

// Grid: d_inner warps (blocks of CHAN_WARPS·32 threads, a warp per channel). x, delta, dbc:
// chunk-local ([channel][ld], [channel][ld], [rk + 2·D_STATE][ld], storage column i at off + i);
// z: the chunk's storage column 0 of channel 0's z row, row stride ld_z; y / y_h likewise for
// the outputs, row stride ld_y; state: [d_inner][D_STATE], the start state, then the end state.
extern "C" __global__ void __launch_bounds__(128) scan_chan(const float* __restrict__ x,
                                                           const float* __restrict__ delta,
                                                           const float* __restrict__ dbc,
                                                           const float* __restrict__ z, long long ld_z,
                                                           const float* __restrict__ a2,
                                                           const float* __restrict__ dt_b,
                                                           const float* __restrict__ d_skip,
                                                           float* __restrict__ state,
                                                           int t, int ld, int off, int rk, int rev,
                                                           const int* __restrict__ rec, long long row0, long long len, int packed,
                                                           float* __restrict__ y, unsigned short* __restrict__ y_h, long long ld_y,
                                                           int half, int acc_mode)
{
    const int c = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (c >= D_INNER) return;
    if (rev) scan_warp<1>(x, delta, dbc, z, ld_z, a2, dt_b, d_skip, state, c, t, ld, off, rk, rec, row0, len, packed, y, y_h, ld_y, half, acc_mode);
    else scan_warp<0>(x, delta, dbc, z, ld_z, a2, dt_b, d_skip, state, c, t, ld, off, rk, rec, row0, len, packed, y, y_h, ld_y, half, acc_mode);
}

// Causal depthwise conv + SiLU, channel-major: thread = one output (channel, storage column),
// neighbouring threads take neighbouring columns, so every load and store is coalesced (a
// window's inputs are re-read from L1 by the neighbours). x: the chunk's storage column 0 of
// channel 0's x row (the in_proj output), row stride ld_x; xc / xc_h: chunk-local
// [channel][ld] from column off. state_in / state_out: [D_CONV-1][d_inner], the inputs
// before the chunk in time order (as in kernels/conv.cu). A tap reads 0 where its input
// belongs to another packed record.
extern "C" __global__ void conv_chan(const float* __restrict__ x, long long ld_x,
                                     float* __restrict__ xc, unsigned short* __restrict__ xc_h, int ld, int off,
                                     const float* __restrict__ state_in, float* __restrict__ state_out,
                                     const float* __restrict__ w, const float* __restrict__ b,
                                     int t, int rev,
                                     const int* __restrict__ rec, long long row0, long long len, int packed, int half)
{
    const long long outputs = (long long)t * D_INNER;
    const long long total = outputs + (D_CONV - 1) * D_INNER;
    for (long long q = blockIdx.x * (long long)blockDim.x + threadIdx.x; q < total; q += (long long)gridDim.x * blockDim.x) {
        if (q >= outputs) {
            // next state: the inputs of time steps t-D_CONV+1 .. t-1
            const int e = (int)(q - outputs);
            const int hh = e / D_INNER, c = e - hh * D_INNER;
            const int tau = t - (D_CONV - 1) + hh;
            state_out[e] = tau < 0 ? state_in[(size_t)(D_CONV - 1 + tau) * D_INNER + c]
                                   : x[(size_t)c * ld_x + (rev ? t - 1 - tau : tau)];
            continue;
        }
        const int c = (int)(q / t);
        const int i = (int)(q - (long long)c * t);
        const int tau = rev ? t - 1 - i : i;
        const float* xr = x + (size_t)c * ld_x;
        const int r = packed ? rec[row0 + i] : 0;
        float acc = b[c];
#pragma unroll
        for (int k = 0; k < D_CONV; ++k) {
            // tap k reads time step tau-(D_CONV-1)+k, at storage column s
            const int tk = tau - (D_CONV - 1) + k;
            const int s = rev ? i + (D_CONV - 1 - k) : i - (D_CONV - 1 - k);
            float v = tk < 0 ? state_in[(size_t)(D_CONV - 1 + tk) * D_INNER + c] : xr[s];
            if (packed) {
                const long long g = row0 + s;
                if (g < 0 || g >= len || rec[g] != r) v = 0.0f;
            }
            acc = fmaf(w[(size_t)c * D_CONV + k], v, acc);
        }
        const float o = silu(acc);
        xc[(size_t)c * ld + off + i] = o;
        if (half) xc_h[(size_t)c * ld + off + i] = to_bf16(o);
    }
}
