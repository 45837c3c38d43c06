// Selective scan for one chunk of a Mamba mixer, parallel over time segments.
//
//   h_t = exp(Δ_t·A)·h_{t-1} + Δ_t·B_t·x_t,   y_t = C_t·h_t + D·x_t,   o_t = y_t·SiLU(z_t)
//   with Δ_t = softplus(δ_t + b_dt) (model-format.md §2.2)
//
// The recurrence is linear in h, so a chunk of t steps is cut into segments that run in
// parallel (one thread per (segment, channel), the D_STATE states in registers):
//   scan_ends     each segment from h = 0: its end state and Σ Δ (the segment's decay is
//                 exp(A·ΣΔ)). Reads x and δ (8 B per (step, channel)) and B (shared by all
//                 channels: staged once per block in shared memory); writes Δ over δ (4 B)
//                 so the softplus is computed once.
//   scan_combine  per (channel, state), the segments in order: each end state becomes the
//                 true start state, and the chunk's final state is left in `state` for the
//                 next chunk. Two-level: a block's warps take groups of segments.
//   scan_output   each segment again from its true start state, fusing the output y, the
//                 D skip and the SiLU(z) gate. Reads x, Δ, z (12 B per (step, channel)),
//                 B and C (shared memory), and writes o over x (4 B).
// The exponentials are computed twice rather than storing every h (16× the bytes of x).
// A single-segment chunk skips the first two kernels: scan_output then starts from `state`,
// applies the softplus itself, and writes its end state back.
//
// Time step j of the chunk lives in storage row j, or t-1-j for a backward walk. The next
// step's x, δ, z are loaded before the current step is computed, to hide their latency.
// A2 is A·log2(e), so exp(Δ·A) is one ex2.approx.ftz (relative error ~2^-22; flushing
// decays below 2^-126 to zero changes nothing at f32 precision). D_STATE is set when the
// module is compiled.
//
// Packed contexts: rec[row] is the record of each row of the whole context (the chunk's
// storage row i is row row0 + i). A step whose predecessor in walk order belongs to another
// record starts from h = 0 (its flag is staged with B and C), a segment holding such a
// step passes no state through (its Σ Δ is stored as -1: decay 0), so no state crosses a
// record boundary in either walk direction.
// bf16 mode: scan_output writes the gated output as bf16 to y_h (what out_proj reads)
// instead of over x.
// Shared projections (both directions of a bidirectional layer through one in_proj and one
// out_proj): acc_mode 1 stores the first direction's gated output in y_acc (f32) and writes
// nothing else; acc_mode 2 adds y_acc to the second direction's output and writes the sum
// where acc_mode 0 would write (bf16 to y_h, else f32 to y_acc instead of over x).

#ifndef D_STATE
#define D_STATE 16
#endif
// d_inner and dt_rank, set when the module is compiled like D_STATE: the step stride of every
// [rows][d_inner] buffer is then an immediate, so an unrolled run of steps addresses its rows
// with constant offsets from one pointer instead of 64-bit arithmetic per step.
#ifndef D_INNER
#define D_INNER 512
#endif
#ifndef DT_RANK
#define DT_RANK 16
#endif
// Steps per unrolled run of scan_ends / scan_output: the next run's inputs are loaded while
// the current one is computed (latency hidden by ILP, so fewer warps are needed).
#define RUN 4

// The dynamic shared memory of every scan kernel (B, C and flags of a segment: see each kernel).
extern __shared__ float4 smem4[];
// dt_proj fused into scan_ends: δ_r and the channel's dt_proj row in registers, read as float4
// (the host runs cuBLAS otherwise; the same condition is in src/backend/cuda.rs).
#define FUSE_DT (DT_RANK <= 16 && DT_RANK % 4 == 0 && D_STATE % 4 == 0)

// softplus(v) = max(v, 0) + log1p(u), u = e^-|v| in (0, 1], without branches or calls:
// u with the range reduction of expf (exact to ~1 ulp before the ex2.approx of a small
// argument), and log1p(u) = 2·atanh(s), s = u / (2 + u) in [0, 1/3], by its odd series to s^13
// (truncation < s^14/15 < 1.4e-8 relative; no cancellation, so ~2 ulp over the whole range).
// ~22 instructions and 2 MUFU, against ~45 and a local-memory call for log1pf(expf(v)).
__device__ __forceinline__ float exp2_ftz(float v);
__device__ __forceinline__ float rcp_approx(float v)
{
    float r;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(v));
    return r;
}
__device__ __forceinline__ float softplus(float v)
{
    const float a = -fabsf(v);
    const float j = rintf(a * 1.44269504f);
    const float f = fmaf(a, 1.44269504f, -j) + a * 1.92596303e-8f; // a·log2(e) - j, to ~1 ulp
    const float e = exp2_ftz(f);                                     // 2^f, f in [-0.5, 0.5]
    // 2^j through the exponent field; below 2^-126 the term is under 1e-38: flushed
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
// __expf is within a few ulp here; __fdividef returns 0 once 1 + e^-v exceeds 2^126 (v < -87),
// where SiLU is below 1e-36 anyway.
__device__ __forceinline__ float silu(float v) { return __fdividef(v, 1.0f + __expf(-v)); }

__device__ __forceinline__ float exp2_ftz(float v)
{
    float r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(v));
    return r;
}

__device__ __forceinline__ size_t step_row(int j, int t, int rev)
{
    return rev ? (size_t)(t - 1 - j) : (size_t)j;
}

// Copies `width` values from offset rk of the dbc rows of steps j0..j0+steps into smem,
// in step order, then (packed contexts) one reset flag per step after them: whether the
// step's predecessor in walk order lies in another record. Called by every thread of the block.
__device__ __forceinline__ void stage_rows(float* smem, const float* __restrict__ dbc, int j0, int steps,
                                           int width, int t, int nx, int rk, int rev,
                                           const int* __restrict__ rec, long long row0, long long len, int packed)
{
    for (int e = threadIdx.x; e < steps * width; e += blockDim.x) {
        const int jj = e / width;
        smem[e] = dbc[step_row(j0 + jj, t, rev) * nx + rk + (e - jj * width)];
    }
    if (packed) {
        int* flags = reinterpret_cast<int*>(smem + steps * width);
        for (int jj = threadIdx.x; jj < steps; jj += blockDim.x) {
            const long long g = row0 + (long long)step_row(j0 + jj, t, rev);
            const long long p = rev ? g + 1 : g - 1;
            flags[jj] = (p >= 0 && p < len && rec[p] != rec[g]) ? 1 : 0;
        }
    }
    __syncthreads();
}

// f32 -> bf16 bits, round to nearest even (NaN stays NaN): one cvt instruction.
__device__ __forceinline__ unsigned short to_bf16(float f)
{
    unsigned short r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(f));
    return r;
}

// Decay of a segment (or group of segments) from its Σ Δ; -1 marks one that holds a reset.
__device__ __forceinline__ float decay(float a, float dsum) { return dsum < 0.0f ? 0.0f : exp2_ftz(a * dsum); }


// Packed contexts: the Δ that gates the decays of step jj. At a record's first step it is +inf,
// so every decay exp2(+inf·a2) is exactly 0 and the state restarts from Δ·B·x (a2 < 0: the host
// stores A·log2(e) no larger than -FLT_MIN, which leaves exp2 of any finite Δ·a2 unchanged).
// A select instead of zeroing 16 registers per step. Sets `reset` at such a step.
__device__ __forceinline__ float reset_gate(int packed, const int* flags, int jj, float dl, bool& reset)
{
    if (packed && flags[jj]) {
        reset = true;
        return __int_as_float(0x7f800000);
    }
    return dl;
}

template <int N>
__device__ __forceinline__ void load_row(float (&v)[N], const float* p)
{
    if constexpr (N % 4 == 0) {
#pragma unroll
        for (int q = 0; q < N / 4; ++q) {
            const float4 f = reinterpret_cast<const float4*>(p)[q];
            v[4 * q] = f.x; v[4 * q + 1] = f.y; v[4 * q + 2] = f.z; v[4 * q + 3] = f.w;
        }
    } else {
#pragma unroll
        for (int n = 0; n < N; ++n) v[n] = p[n];
    }
}
__device__ __forceinline__ void load_state_row(float (&v)[D_STATE], const float* p) { load_row<D_STATE>(v, p); }

// v[u] = p[u·S] for the u < n steps of a run (S: the step stride in elements, a constant).
template <long long S>
__device__ __forceinline__ void load_run(float (&v)[RUN], const float* p, int n)
{
#pragma unroll
    for (int u = 0; u < RUN; ++u) v[u] = u < n ? p[u * S] : 0.0f;
}

// scan_ends for one walk direction (REV: from the last row), thread = (segment s, channel c).
// fuse_dt: Δ's pre-activation δ = dt_proj(δ_r) is computed here from the staged δ_r columns
// (dbc's first DT_RANK), so dt_proj needs no GEMM; otherwise `delta` holds δ from cuBLAS.
template <int REV>
__device__ __forceinline__ void ends_walk(const float* __restrict__ x, float* __restrict__ delta,
                                          const float* bs, int width, int off_b, const int* flags,
                                          const float* __restrict__ a2, const float* __restrict__ dt_b,
                                          const float* __restrict__ dt_w, int fuse_dt,
                                          float* __restrict__ h_end, float* __restrict__ dsum,
                                          int c, int s, int j0, int steps, int t, int packed)
{
    constexpr long long S = REV ? -(long long)D_INNER : (long long)D_INNER;
    float a[D_STATE], h[D_STATE];
#pragma unroll
    for (int n = 0; n < D_STATE; ++n) {
        a[n] = a2[(size_t)c * D_STATE + n];
        h[n] = 0.0f;
    }
#if FUSE_DT
    float w[DT_RANK];
#pragma unroll
    for (int k = 0; k < DT_RANK; ++k) w[k] = fuse_dt ? dt_w[(size_t)c * DT_RANK + k] : 0.0f;
#endif
    const float bias = dt_b[c];
    const size_t r0 = step_row(j0, t, REV) * D_INNER + c;
    float* dp = delta + r0;
    const float* xp = x + r0;
    float sum = 0.0f;
    bool reset = false;
    // one step: u is the step's place in its run (a constant once unrolled), so its rows are
    // at constant offsets from the run's pointers
    auto step = [&](float raw, float xval, int jj, int u) {
        const float* row = bs + jj * width;
#if FUSE_DT
        if (fuse_dt) {
            float r[DT_RANK];
            load_row<DT_RANK>(r, row);
            float p0 = 0.0f, p1 = 0.0f;
#pragma unroll
            for (int k = 0; k < DT_RANK; ++k) {
                if (k % 2 == 0) p0 = fmaf(w[k], r[k], p0); else p1 = fmaf(w[k], r[k], p1);
            }
            raw = p0 + p1;
        }
#endif
        const float dl = softplus(raw + bias);
        dp[u * S] = dl;
        const float dx = dl * xval;
        const float dg = reset_gate(packed, flags, jj, dl, reset);
        float bm[D_STATE];
        load_state_row(bm, row + off_b);
#pragma unroll
        for (int n = 0; n < D_STATE; ++n) h[n] = exp2_ftz(dg * a[n]) * h[n] + dx * bm[n];
        sum += dl;
    };
    // software pipeline RUN steps deep: slot u holds the inputs of step j + u; right after
    // they are read, the slot is refilled with those of step j + RUN + u
    float xv[RUN], dv[RUN];
    load_run<S>(xv, xp, steps);
    load_run<S>(dv, dp, fuse_dt ? 0 : steps);
    int j = 0;
    for (; j + 2 * RUN <= steps; j += RUN) {
#pragma unroll
        for (int u = 0; u < RUN; ++u) {
            // the slot is refilled after its last use, so the load needs no register copy
            step(dv[u], xv[u], j + u, u);
            xv[u] = xp[(RUN + u) * S];
            if (!fuse_dt) dv[u] = dp[(RUN + u) * S];
        }
        dp += RUN * S;
        xp += RUN * S;
    }
    for (; j < steps; j += RUN) {
#pragma unroll
        for (int u = 0; u < RUN; ++u) {
            if (j + u >= steps) break;
            step(dv[u], xv[u], j + u, u);
            if (j + RUN + u < steps) {
                xv[u] = xp[(RUN + u) * S];
                if (!fuse_dt) dv[u] = dp[(RUN + u) * S];
            }
        }
        dp += RUN * S;
        xp += RUN * S;
    }
    float* he = h_end + ((size_t)s * D_INNER + c) * D_STATE;
#pragma unroll
    for (int n = 0; n < D_STATE; ++n) he[n] = h[n];
    dsum[(size_t)s * D_INNER + c] = reset ? -1.0f : sum;
}

// Dynamic shared memory: seg_len · (width + 1) floats, width = D_STATE (B of the segment's
// steps) or, with fuse_dt, DT_RANK + D_STATE ([δ_r | B]); then the reset flags.
// At most 128 threads a block (the host launches that).
extern "C" __global__ void __launch_bounds__(128, 6) scan_ends(const float* __restrict__ x,
                                     float* __restrict__ delta,
                                     const float* __restrict__ dbc,
                                     const float* __restrict__ a2,
                                     const float* __restrict__ dt_b,
                                     float* __restrict__ h_end,
                                     float* __restrict__ dsum,
                                     int t, int di, int nx, int rk, int seg_len, int rev,
                                     const int* __restrict__ rec, long long row0, long long len, int packed,
                                     const float* __restrict__ dt_w, int fuse_dt)
{
    float* bs = reinterpret_cast<float*>(smem4);
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    const int s = blockIdx.y;
    const int j0 = s * seg_len;
    const int steps = min(seg_len, t - j0);
    // [δ_r | B] are adjacent in dbc's rows: one staging copy serves both
    const int width = fuse_dt ? rk + D_STATE : D_STATE;
    stage_rows(bs, dbc, j0, steps, width, t, nx, fuse_dt ? 0 : rk, rev, rec, row0, len, packed);
    const int* flags = reinterpret_cast<const int*>(bs + steps * width);
    if (c >= D_INNER) return;
    const int off_b = fuse_dt ? rk : 0;
    if (rev) ends_walk<1>(x, delta, bs, width, off_b, flags, a2, dt_b, dt_w, fuse_dt, h_end, dsum, c, s, j0, steps, t, packed);
    else ends_walk<0>(x, delta, bs, width, off_b, flags, a2, dt_b, dt_w, fuse_dt, h_end, dsum, c, s, j0, steps, t, packed);
}

#define COMBINE_GROUPS 32

// Block (32, COMBINE_GROUPS): lane = state cell (coalesced), warp g = a group of consecutive
// segments. Each thread folds its group from zero (S = Σ ΣΔ, H = end state), the groups'
// folds meet in shared memory, and each thread walks its group again from its true carry-in.
// carry_in 0: the chunk's first segment already started from the carried state (scan_fused),
// so the fold starts from zero.
extern "C" __global__ void scan_combine(float* __restrict__ h_end,
                                        const float* __restrict__ dsum,
                                        const float* __restrict__ a2,
                                        float* __restrict__ state,
                                        int nseg, int di, int carry_in)
{
    __shared__ float fold_s[COMBINE_GROUPS][32], fold_h[COMBINE_GROUPS][32];
    const int lane = threadIdx.x, g = threadIdx.y;
    const size_t cells = (size_t)di * D_STATE;
    const size_t i = blockIdx.x * (size_t)32 + lane;
    const bool live = i < cells;
    const size_t c = live ? i / D_STATE : 0;
    const float a = live ? a2[i] : 0.0f;
    // read before the barrier: the last group overwrites it after
    float h = live && carry_in ? state[i] : 0.0f;
    const int per = (nseg + COMBINE_GROUPS - 1) / COMBINE_GROUPS;
    const int s0 = min(nseg, g * per), s1 = min(nseg, s0 + per);
    float S = 0.0f, H = 0.0f;
    if (live) {
        for (int s = s0; s < s1; ++s) {
            const float ds = dsum[(size_t)s * di + c];
            H = decay(a, ds) * H + h_end[(size_t)s * cells + i];
            S = (ds < 0.0f || S < 0.0f) ? -1.0f : S + ds;
        }
    }
    fold_s[g][lane] = S;
    fold_h[g][lane] = H;
    __syncthreads();
    if (!live) return;
    for (int q = 0; q < g; ++q) h = decay(a, fold_s[q][lane]) * h + fold_h[q][lane];
    for (int s = s0; s < s1; ++s) {
        const float end = h_end[(size_t)s * cells + i];
        h_end[(size_t)s * cells + i] = h;
        h = decay(a, dsum[(size_t)s * di + c]) * h + end;
    }
    if (g == COMBINE_GROUPS - 1) state[i] = h;
}

// scan_output for one walk direction, thread = (segment s, channel c); see scan_output.
template <int REV>
__device__ __forceinline__ void output_walk(float* __restrict__ x, const float* __restrict__ delta,
                                            const float* bcs, const int* flags,
                                            const float* __restrict__ xz, const float* __restrict__ a2,
                                            const float* __restrict__ dt_b, const float* __restrict__ d_skip,
                                            float* __restrict__ h_start, int delta_ready, int write_back,
                                            unsigned short* __restrict__ y_h, int half,
                                            float* __restrict__ y_acc, int acc_mode,
                                            int c, int s, int j0, int steps, int t, int packed)
{
    constexpr long long S = REV ? -(long long)D_INNER : (long long)D_INNER;
    float a[D_STATE], h[D_STATE];
    float* hs = h_start + ((size_t)s * D_INNER + c) * D_STATE;
#pragma unroll
    for (int n = 0; n < D_STATE; ++n) {
        a[n] = a2[(size_t)c * D_STATE + n];
        h[n] = hs[n];
    }
    const float bias = dt_b[c];
    const float dsk = d_skip[c];
    const size_t r0 = step_row(j0, t, REV);
    const float* dp = delta + r0 * D_INNER + c;
    float* xp = x + r0 * D_INNER + c;
    unsigned short* yp = y_h + (half ? r0 * D_INNER + c : 0);
    float* ap = y_acc + (acc_mode ? r0 * D_INNER + c : 0);
    const float* zp = xz + r0 * 2 * D_INNER + D_INNER + c;
    const bool read_acc = acc_mode == 2;
    auto step = [&](float dval, float xval, float zval, float prev, int jj, int u) {
        const float dl = delta_ready ? dval : softplus(dval + bias);
        const float dx = dl * xval;
        bool reset = false;
        const float dg = reset_gate(packed, flags, jj, dl, reset);
        float bm[D_STATE], cm[D_STATE];
        load_state_row(bm, bcs + jj * 2 * D_STATE);
        load_state_row(cm, bcs + jj * 2 * D_STATE + D_STATE);
        // two partial sums halve the dependent chain of the C·h reduction
        float y0 = 0.0f, y1 = 0.0f;
#pragma unroll
        for (int n = 0; n < D_STATE; ++n) {
            h[n] = exp2_ftz(dg * a[n]) * h[n] + dx * bm[n];
            if (n % 2 == 0) y0 = fmaf(h[n], cm[n], y0); else y1 = fmaf(h[n], cm[n], y1);
        }
        float o = fmaf(dsk, xval, y0 + y1) * silu(zval);
        if (acc_mode == 1) {
            ap[u * S] = o;
        } else {
            o += prev;
            if (half) yp[u * S] = to_bf16(o);
            else if (acc_mode == 2) ap[u * S] = o;
            else xp[u * S] = o;
        }
    };
    // software pipeline RUN steps deep, as in ends_walk
    float dv[RUN], xv[RUN], zv[RUN], pv[RUN];
    load_run<S>(dv, dp, steps);
    load_run<S>(xv, xp, steps);
    load_run<2 * S>(zv, zp, steps);
    load_run<S>(pv, ap, read_acc ? steps : 0);
    auto advance = [&]() {
        dp += RUN * S;
        xp += RUN * S;
        zp += 2 * RUN * S;
        if (half) yp += RUN * S;
        if (acc_mode) ap += RUN * S;
    };
    int j = 0;
    for (; j + 2 * RUN <= steps; j += RUN) {
#pragma unroll
        for (int u = 0; u < RUN; ++u) {
            // the slot is refilled after its last use, so the loads need no register copies
            step(dv[u], xv[u], zv[u], pv[u], j + u, u);
            dv[u] = dp[(RUN + u) * S];
            xv[u] = xp[(RUN + u) * S];
            zv[u] = zp[2 * (RUN + u) * S];
            if (read_acc) pv[u] = ap[(RUN + u) * S];
        }
        advance();
    }
    for (; j < steps; j += RUN) {
#pragma unroll
        for (int u = 0; u < RUN; ++u) {
            if (j + u >= steps) break;
            step(dv[u], xv[u], zv[u], pv[u], j + u, u);
            if (j + RUN + u < steps) {
                dv[u] = dp[(RUN + u) * S];
                xv[u] = xp[(RUN + u) * S];
                zv[u] = zp[2 * (RUN + u) * S];
                if (read_acc) pv[u] = ap[(RUN + u) * S];
            }
        }
        advance();
    }
    if (write_back) {
#pragma unroll
        for (int n = 0; n < D_STATE; ++n) hs[n] = h[n];
    }
}

// h_start: [nseg][di][D_STATE] start states, or the carried state when the chunk is one
// segment (then `write_back` stores the end state there). `delta_ready`: scan_ends has
// already turned δ into Δ.
// Dynamic shared memory: seg_len · (2·D_STATE + 1) floats (B and C of the segment's steps,
// flags). At most 128 threads a block.
// MODE 0 reads every flag at run time; MODE 1 and 2 are the output pass after scan_ends
// (Δ ready, nothing written back), unpacked (1) or packed (2): with the flags compile-time
// constants the unused softplus, which the compiler otherwise computes and discards, and the
// reset checks of unpacked runs leave the loop (~150 -> ~113 instructions per step in SASS).
template <int MODE>
__device__ __forceinline__ void scan_output_body(float* __restrict__ x,
                                       const float* __restrict__ delta,
                                       const float* __restrict__ dbc,
                                       const float* __restrict__ xz,
                                       const float* __restrict__ a2,
                                       const float* __restrict__ dt_b,
                                       const float* __restrict__ d_skip,
                                       float* __restrict__ h_start,
                                       int t, int di, int nx, int rk, int seg_len, int rev,
                                       int delta_ready, int write_back,
                                       const int* __restrict__ rec, long long row0, long long len, int packed,
                                       unsigned short* __restrict__ y_h, int half,
                                       float* __restrict__ y_acc, int acc_mode)
{
    if (MODE != 0) {
        delta_ready = 1;
        write_back = 0;
        packed = MODE == 2;
    }
    float* bcs = reinterpret_cast<float*>(smem4);
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    const int s = blockIdx.y;
    const int j0 = s * seg_len;
    const int steps = min(seg_len, t - j0);
    stage_rows(bcs, dbc, j0, steps, 2 * D_STATE, t, nx, rk, rev, rec, row0, len, packed);
    const int* flags = reinterpret_cast<const int*>(bcs + steps * 2 * D_STATE);
    if (c >= D_INNER) return;
    if (rev) output_walk<1>(x, delta, bcs, flags, xz, a2, dt_b, d_skip, h_start, delta_ready, write_back, y_h, half, y_acc, acc_mode, c, s, j0, steps, t, packed);
    else output_walk<0>(x, delta, bcs, flags, xz, a2, dt_b, d_skip, h_start, delta_ready, write_back, y_h, half, y_acc, acc_mode, c, s, j0, steps, t, packed);
}

// 80 registers for 6 blocks per SM (8 bytes spilled): 3% faster end to end on an H200 than 96
// registers for 5 blocks without spills (BENCHMARKS.md, stage 2). One signature for the three
// variants (the host picks the kernel, the arguments stay the same).
#define SCAN_OUTPUT_KERNEL(NAME, MODE)                                                           \
    extern "C" __global__ void __launch_bounds__(128, 6) NAME(float* __restrict__ x,            \
        const float* __restrict__ delta, const float* __restrict__ dbc,                           \
        const float* __restrict__ xz, const float* __restrict__ a2,                               \
        const float* __restrict__ dt_b, const float* __restrict__ d_skip,                         \
        float* __restrict__ h_start, int t, int di, int nx, int rk, int seg_len, int rev,         \
        int delta_ready, int write_back, const int* __restrict__ rec, long long row0,             \
        long long len, int packed, unsigned short* __restrict__ y_h, int half,                    \
        float* __restrict__ y_acc, int acc_mode)                                                  \
    {                                                                                             \
        scan_output_body<MODE>(x, delta, dbc, xz, a2, dt_b, d_skip, h_start, t, di, nx, rk,       \
                               seg_len, rev, delta_ready, write_back, rec, row0, len, packed,     \
                               y_h, half, y_acc, acc_mode);                                       \
    }
SCAN_OUTPUT_KERNEL(scan_output, 0)
SCAN_OUTPUT_KERNEL(scan_output_ready, 1)
SCAN_OUTPUT_KERNEL(scan_output_ready_packed, 2)

// ---------------------------------------------------------------------------------------------
// One-pass scan (DNA_MAMBA_SCAN=one-pass; the default stays the three kernels above, which
// were faster on an H200: BENCHMARKS.md, "GPU engine v2, stage 1").
//
//   scan_fused  each segment once: Δ = softplus(δ + b_dt), every exp(Δ·A) computed once, the
//               state in registers, the output y, the D skip and the SiLU(z) gate in the
//               epilogue. Segment 0 starts from the carried state, so its outputs are final;
//               the others start from h = 0 and write a provisional f32 output, their local
//               end state and Σ Δ (and Δ over δ, which the correction reads).
//   scan_combine (carry_in 0) the segments' true start states and the chunk's final state.
//   scan_fix    per later segment, the start state's part of the output: with S_t = Σ Δ up to
//               step t, h_t = h_local_t + exp(A·S_t)·h_0, so y_t gains Σ_n C_tn·2^(a2_n·S_t)·h0_n
//               (times the gate). It stops once every state's factor 2^(a2_n·S_t) is below
//               2^-27 (S_t·min|a2| >= 27: S only grows), where what is left of h0 is under an
//               eighth of one f32 rounding of h0 itself, or at the first packed-record reset.
//               It never multiplies the decays step by step, so it is as exact as the
//               sequential recurrence. bf16 mode: scan_fused writes the bf16 output and a
//               provisional f32 copy, and scan_fix rewrites the bf16 of the steps it corrects.
// A chunk of one segment is scan_fused alone. When decays are fast (Δ·|A| large) the
// correction covers a few steps per segment and the chunk is one pass over its inputs; with
// slow decays (the initialisation's Δ of 1e-3 .. 1e-1 and A = -1 .. -16) it covers whole
// segments: the same 16 exponentials per step as the old output pass, so the exponentials are
// computed twice there too. It needs no B and no state update, but a warp corrects until its
// slowest channel is done.
//
// Provisional outputs of segments >= 1 (f32) go where the final f32 output goes (over x, or
// y_acc in the shared modes); in bf16 mode with acc_mode 0 or 2 they go over x as well as to
// y_h (final wherever scan_fix stops before them).

#define FIX_LOG2_CUTOFF 27.0f



// Dynamic shared memory: seg_len · (2·D_STATE + 1) floats. At most 128 threads a block.
extern "C" __global__ void __launch_bounds__(128, 8) scan_fused(float* __restrict__ x,
                                      float* __restrict__ delta,
                                      const float* __restrict__ dbc,
                                      const float* __restrict__ xz,
                                      const float* __restrict__ a2,
                                      const float* __restrict__ dt_b,
                                      const float* __restrict__ d_skip,
                                      float* __restrict__ state,
                                      float* __restrict__ h_end,
                                      float* __restrict__ dsum,
                                      int t, int di, int nx, int rk, int seg_len, int nseg, int rev,
                                      const int* __restrict__ rec, long long row0, long long len, int packed,
                                      unsigned short* __restrict__ y_h, int half,
                                      float* __restrict__ y_acc, int acc_mode)
{
    float* bcs = reinterpret_cast<float*>(smem4);
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    const int s = blockIdx.y;
    const int j0 = s * seg_len;
    const int steps = min(seg_len, t - j0);
    stage_rows(bcs, dbc, j0, steps, 2 * D_STATE, t, nx, rk, rev, rec, row0, len, packed);
    const int* flags = reinterpret_cast<const int*>(bcs + steps * 2 * D_STATE);
    if (c >= di) return;
    const bool first = s == 0;
    // later segments keep Δ for scan_fix
    const bool keep_delta = !first;
    float a[D_STATE], h[D_STATE];
#pragma unroll
    for (int n = 0; n < D_STATE; ++n) {
        a[n] = a2[(size_t)c * D_STATE + n];
        h[n] = first ? state[(size_t)c * D_STATE + n] : 0.0f;
    }
    const float bias = dt_b[c];
    const float dsk = d_skip[c];
    const long long stride = rev ? -(long long)di : (long long)di;
    const size_t r0 = step_row(j0, t, rev);
    float* dp = delta + r0 * di + c;
    float* xp = x + r0 * di + c;
    unsigned short* yp = y_h + (half ? r0 * di + c : 0);
    float* ap = y_acc + (acc_mode ? r0 * di + c : 0);
    const float* zp = xz + r0 * 2 * (size_t)di + di + c;
    // bf16 mode: the bf16 output, and in later segments also the provisional f32 over x,
    // from which scan_fix rewrites the bf16 of the steps it corrects
    const bool out_h = half && acc_mode != 1;
    const bool prov_x = half && !first;
    float d_next = *dp, x_next = *xp, z_next = *zp;
    float a_next = acc_mode == 2 ? *ap : 0.0f;
    float sum = 0.0f;
    bool reset = false;
    for (int jj = 0; jj < steps; ++jj) {
        const float d_raw = d_next, xv = x_next, z = z_next, prev = a_next;
        if (jj + 1 < steps) {
            d_next = dp[stride];
            x_next = xp[stride];
            z_next = zp[2 * stride];
            if (acc_mode == 2) a_next = ap[stride];
        }
        if (packed && flags[jj]) {
#pragma unroll
            for (int n = 0; n < D_STATE; ++n) h[n] = 0.0f;
            reset = true;
        }
        const float dl = softplus(d_raw + bias);
        if (keep_delta) *dp = dl;
        sum += dl;
        const float dx = dl * xv;
        float bm[D_STATE], cm[D_STATE];
        load_state_row(bm, bcs + jj * 2 * D_STATE);
        load_state_row(cm, bcs + jj * 2 * D_STATE + D_STATE);
        float y0 = 0.0f, y1 = 0.0f;
#pragma unroll
        for (int n = 0; n < D_STATE; ++n) {
            h[n] = exp2_ftz(dl * a[n]) * h[n] + dx * bm[n];
            if (n % 2 == 0) y0 += h[n] * cm[n]; else y1 += h[n] * cm[n];
        }
        float o = (y0 + y1 + dsk * xv) * silu(z);
        if (acc_mode == 1) {
            *ap = o;
        } else {
            o += prev;
            if (out_h) *yp = to_bf16(o);
            if (prov_x || !half) {
                if (acc_mode == 2 && !half) *ap = o;
                else *xp = o;
            }
        }
        yp += half ? stride : 0;
        ap += acc_mode ? stride : 0;
        dp += stride;
        xp += stride;
        zp += 2 * stride;
    }
    if (nseg == 1) {
#pragma unroll
        for (int n = 0; n < D_STATE; ++n) state[(size_t)c * D_STATE + n] = h[n];
    } else {
        float* he = h_end + ((size_t)s * di + c) * D_STATE;
#pragma unroll
        for (int n = 0; n < D_STATE; ++n) he[n] = h[n];
        dsum[(size_t)s * di + c] = reset ? -1.0f : sum;
    }
}

// Grid (channel blocks, nseg - 1): block row s - 1 corrects segment s. h_start as scan_combine
// leaves it. Dynamic shared memory: seg_len · (D_STATE + 1) floats (C of the segment's steps,
// reset flags). Register cap for 6 blocks per SM (8 spills the loop-carried prefetch).
extern "C" __global__ void __launch_bounds__(128, 6) scan_fix(float* __restrict__ x,
                                    const float* __restrict__ delta,
                                    const float* __restrict__ dbc,
                                    const float* __restrict__ xz,
                                    const float* __restrict__ a2,
                                    const float* __restrict__ h_start,
                                    int t, int di, int nx, int rk, int seg_len, int rev,
                                    const int* __restrict__ rec, long long row0, long long len, int packed,
                                    unsigned short* __restrict__ y_h, int half,
                                    float* __restrict__ y_acc, int acc_mode)
{
    float* cs = reinterpret_cast<float*>(smem4);
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    const int s = blockIdx.y + 1;
    const int j0 = s * seg_len;
    const int steps = min(seg_len, t - j0);
    stage_rows(cs, dbc, j0, steps, D_STATE, t, nx, rk + D_STATE, rev, rec, row0, len, packed);
    const int* flags = reinterpret_cast<const int*>(cs + steps * D_STATE);
    if (c >= di) return;
    float a[D_STATE], h0[D_STATE];
    load_state_row(h0, h_start + ((size_t)s * di + c) * D_STATE);
    float amin = __int_as_float(0x7f800000); // +inf (NVRTC has no math.h)
    bool live = false;
#pragma unroll
    for (int n = 0; n < D_STATE; ++n) {
        a[n] = a2[(size_t)c * D_STATE + n];
        amin = fminf(amin, fabsf(a[n]));
        live |= h0[n] != 0.0f;
    }
    const long long stride = rev ? -(long long)di : (long long)di;
    const size_t r0 = step_row(j0, t, rev);
    const float* dp = delta + r0 * di + c;
    const float* zp = xz + r0 * 2 * (size_t)di + di + c;
    // where scan_fused left the provisional output
    const bool in_acc = acc_mode == 1 || (acc_mode == 2 && !half);
    float* op = in_acc ? y_acc + r0 * di + c : x + r0 * di + c;
    // bf16 mode (unless the first direction of a shared layer, which stays f32): final bf16
    const bool out_h = half && acc_mode != 1;
    unsigned short* yp = y_h + (out_h ? r0 * di + c : 0);
    float S = 0.0f;
    bool fixing = live;
    // the next step's Δ, z and output are loaded before the current step is computed: the
    // loop is otherwise one dependent global load per step
    float d_next = *dp, z_next = *zp, o_next = *op;
    for (int jj = 0; jj < steps && fixing; ++jj) {
        const float dl = d_next, z = z_next;
        float o = o_next;
        if (jj + 1 < steps) {
            d_next = dp[stride];
            z_next = zp[2 * stride];
            o_next = op[stride];
        }
        if (packed && flags[jj]) {
            fixing = false; // a record starts: h0 no longer reaches
        } else {
            S += dl;
            if (S * amin >= FIX_LOG2_CUTOFF) {
                fixing = false;
            } else {
                float cm[D_STATE];
                load_state_row(cm, cs + jj * D_STATE);
                float y0 = 0.0f, y1 = 0.0f;
#pragma unroll
                for (int n = 0; n < D_STATE; ++n) {
                    const float v = exp2_ftz(a[n] * S) * h0[n] * cm[n];
                    if (n % 2 == 0) y0 += v; else y1 += v;
                }
                o += (y0 + y1) * silu(z);
                if (!out_h) *op = o;
            }
        }
        if (!fixing) break; // from here on scan_fused's output is final
        if (out_h) *yp = to_bf16(o);
        yp += out_h ? stride : 0;
        op += stride;
        dp += stride;
        zp += 2 * stride;
    }
}
