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

__device__ __forceinline__ float silu(float v) { return v / (1.0f + expf(-v)); }

// f32 -> bf16 bits, round to nearest even (NaN stays NaN).
__device__ __forceinline__ unsigned short to_bf16(float f)
{
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
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

// Record of time step `src`: -1 outside the context (whose inputs are zeros anyway).
__device__ __forceinline__ int record_of(const int* __restrict__ rec, long long src, int t, int rev,
                                         long long r0, long long len)
{
    const long long g = r0 + local_row(src, t, rev);
    return (g >= 0 && g < len) ? rec[g] : -1;
}

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
    const size_t runs = ((size_t)t + RUN - 1) / RUN;
    const size_t outputs = runs * di;
    const size_t total = outputs + (size_t)(D_CONV - 1) * di;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        if (i < outputs) {
            const size_t q = i / di;
            const int c = (int)(i - q * di);
            const long long j0 = (long long)q * RUN;
            float win[RUN + D_CONV - 1];
            int wrec[RUN + D_CONV - 1];
#pragma unroll
            for (int m = 0; m < RUN + D_CONV - 1; ++m) {
                const long long src = j0 - (D_CONV - 1) + m;
                win[m] = src < t ? conv_input(xz, state_in, src, t, di, c, rev) : 0.0f;
                wrec[m] = (packed && src < t) ? record_of(rec, src, t, rev, r0, len) : 0;
            }
            float wc[D_CONV];
#pragma unroll
            for (int tap = 0; tap < D_CONV; ++tap) wc[tap] = w[(size_t)c * D_CONV + tap];
            const float bias = b[c];
#pragma unroll
            for (int m = 0; m < RUN; ++m) {
                const long long j = j0 + m;
                if (j < t) {
                    float acc = bias;
#pragma unroll
                    for (int tap = 0; tap < D_CONV; ++tap) {
                        const float v = wrec[m + tap] == wrec[m + D_CONV - 1] ? win[m + tap] : 0.0f;
                        acc += wc[tap] * v;
                    }
                    const size_t r = (size_t)local_row(j, t, rev);
                    const float o = silu(acc);
                    xc[r * di + c] = o;
                    if (half) xc_h[r * di + c] = to_bf16(o);
                }
            }
        } else {
            // next state: the last D_CONV-1 inputs in time order
            const size_t e = i - outputs;
            const int h = (int)(e / di);
            const int c = (int)(e - (size_t)h * di);
            state_out[e] = conv_input(xz, state_in, (long long)t - (D_CONV - 1) + h, t, di, c, rev);
        }
    }
}
