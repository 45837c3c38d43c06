// Causal depthwise conv + SiLU for one chunk of a Mamba mixer (model-format.md §2.2).
//
// Fuses the conv taps, the bias and the SiLU: reads x (the first d_inner columns of the
// in_proj output) and writes xc, 4·d_inner B each per row (+ 2·d_inner B for the bf16 copy
// that x_proj reads in bf16 mode). One thread covers RUN consecutive steps of one channel
// from a window of RUN + D_CONV - 1 inputs held in registers, so each input is loaded ~1.4
// times instead of D_CONV times; neighbouring threads take neighbouring channels, so loads
// and stores are coalesced.
//
// Rows are stored in ascending stream order; for a backward walk, time step j lives in
// storage row t-1-j, so a reverse Mamba needs no flipped copy. The D_CONV-1 inputs before
// the chunk come from state_in (the previous chunk's last inputs in time order, zeros at
// the start); the same launch writes the next state to state_out (a second buffer: the
// first may still be read by other threads). D_CONV is set when the module is compiled.
//
// Packed contexts (several records in one context): rec[row] is the record of each row of
// the whole context (row r0 + i is the chunk's storage row i); a tap reads 0 where its input
// belongs to another record, so no record sees its neighbour, in either walk direction.

#ifndef D_CONV
#define D_CONV 4
#endif
#define RUN 8
#ifndef D_INNER
#define D_INNER 512
#endif

// __expf/__fdividef as in kernels/scan.cu (within a few ulp; 0 below v = -87)
__device__ __forceinline__ float silu(float v) { return __fdividef(v, 1.0f + __expf(-v)); }

// f32 -> bf16 bits, round to nearest even (NaN stays NaN): one cvt instruction.
__device__ __forceinline__ unsigned short to_bf16(float f)
{
    unsigned short r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(f));
    return r;
}

// Storage row of time step `src` relative to the chunk (may be outside 0..t).
__device__ __forceinline__ long long local_row(long long src, int t, int rev)
{
    return rev ? (long long)t - 1 - src : src;
}

// Input x at time step `src` (may be negative: then from the carried state).
__device__ __forceinline__ float conv_input(const float* __restrict__ xz, const float* __restrict__ state_in,
                                            long long src, int t, int di, int c, int rev)
{
    if (src < 0) return state_in[(size_t)(D_CONV - 1 + src) * di + c];
    return xz[(size_t)local_row(src, t, rev) * 2 * (size_t)di + c];
}

// One thread's RUN steps of channel c from step j0, walking as REV says. `rows` of the chunk's
// xz hold t steps; state_in the D_CONV-1 inputs before step 0.
template <int REV, int PACKED>
__device__ __forceinline__ void conv_run(const float* __restrict__ xz, float* __restrict__ xc,
                                         unsigned short* __restrict__ xc_h,
                                         const float* __restrict__ state_in,
                                         const float* __restrict__ w, const float* __restrict__ b,
                                         int t, int c, int j0, int half,
                                         const int* __restrict__ rec, long long r0, long long len)
{
    float win[RUN + D_CONV - 1];
    int wrec[RUN + D_CONV - 1];
#pragma unroll
    for (int m = 0; m < RUN + D_CONV - 1; ++m) {
        const int src = j0 - (D_CONV - 1) + m;
        const long long row = REV ? (long long)t - 1 - src : src;
        if (src < 0) win[m] = state_in[(size_t)(D_CONV - 1 + src) * D_INNER + c];
        else if (src < t) win[m] = xz[(size_t)row * 2 * D_INNER + c];
        else win[m] = 0.0f;
        if (PACKED) {
            const long long g = r0 + row;
            wrec[m] = (src < t && g >= 0 && g < len) ? rec[g] : -1;
        }
    }
    float wc[D_CONV];
#pragma unroll
    for (int tap = 0; tap < D_CONV; ++tap) wc[tap] = w[(size_t)c * D_CONV + tap];
    const float bias = b[c];
#pragma unroll
    for (int m = 0; m < RUN; ++m) {
        const int j = j0 + m;
        if (j < t) {
            float acc = bias;
#pragma unroll
            for (int tap = 0; tap < D_CONV; ++tap) {
                const float v = (!PACKED || wrec[m + tap] == wrec[m + D_CONV - 1]) ? win[m + tap] : 0.0f;
                acc = fmaf(wc[tap], v, acc);
            }
            const size_t r = REV ? (size_t)(t - 1 - j) : (size_t)j;
            const float o = silu(acc);
            xc[r * D_INNER + c] = o;
            if (half) xc_h[r * D_INNER + c] = to_bf16(o);
        }
    }
}

// Index math is 32-bit with D_INNER a compile-time constant (the host keeps the chunk's
// (t / RUN + D_CONV) · d_inner below 2^31); row offsets are 64-bit.
extern "C" __global__ void conv_silu(const float* __restrict__ xz,
                                     float* __restrict__ xc,
                                     unsigned short* __restrict__ xc_h,
                                     const float* __restrict__ state_in,
                                     float* __restrict__ state_out,
                                     const float* __restrict__ w,
                                     const float* __restrict__ b,
                                     int t, int di, int rev,
                                     const int* __restrict__ rec, long long r0, long long len,
                                     int packed, int half)
{
    const unsigned runs = ((unsigned)t + RUN - 1) / RUN;
    const unsigned outputs = runs * D_INNER;
    const unsigned total = outputs + (D_CONV - 1) * D_INNER;
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        if (i < outputs) {
            const int q = (int)(i / D_INNER);
            const int c = (int)(i - (unsigned)q * D_INNER);
            const int j0 = q * RUN;
            if (packed) {
                if (rev) conv_run<1, 1>(xz, xc, xc_h, state_in, w, b, t, c, j0, half, rec, r0, len);
                else conv_run<0, 1>(xz, xc, xc_h, state_in, w, b, t, c, j0, half, rec, r0, len);
            } else {
                if (rev) conv_run<1, 0>(xz, xc, xc_h, state_in, w, b, t, c, j0, half, rec, r0, len);
                else conv_run<0, 0>(xz, xc, xc_h, state_in, w, b, t, c, j0, half, rec, r0, len);
            }
        } else {
            // next state: the last D_CONV-1 inputs in time order
            const unsigned e = i - outputs;
            const int h = (int)(e / D_INNER);
            const int c = (int)(e - (unsigned)h * D_INNER);
            state_out[e] = conv_input(xz, state_in, (long long)t - (D_CONV - 1) + h, t, D_INNER, c, rev);
        }
    }
}
