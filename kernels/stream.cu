// Stream kernels: the per-row operations on the two full-length streams.
//
// embed        tokens -> rows: reads 1 B per row plus the (cached) embedding rows, writes
//              4·width B per row. For RCPS models the second half is the complement's
//              embedding with channels reversed, written in the same pass.
// swap_halves  exchanges the two D-wide halves of each row in place: 8·2D B per row
//              read + written.
// rms_norm     one warp per (row, half): the sum of squares and the scaled write in one
//              pass over the row, 4·width B read + 4·width B written; an RCPS second half
//              reads the weight back to front instead of using a flipped copy. `half`: the
//              output is bf16 (what in_proj reads in bf16 mode), [len][width] packed from the
//              start of dst, 2·width B written. In place (src = dst) for the final norm.
// sum_rows     column sums (f64) of row ranges, one block column-slice per range: pooled
//              means of packed records without copying their rows to the host; reads
//              4·width B per row, writes 8·width B per range.
//
// All offsets are size_t: rows × width exceeds 2^31 at long contexts.

extern "C" __global__ void embed(const unsigned char* __restrict__ tokens,
                                 const float* __restrict__ emb,
                                 const int* __restrict__ comp,
                                 float* __restrict__ out,
                                 size_t len, int d, int rcps)
{
    const size_t width = rcps ? 2 * (size_t)d : (size_t)d;
    const size_t total = len * width;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t row = i / width;
        const size_t c = i - row * width;
        const int t = tokens[row];
        out[i] = c < (size_t)d ? emb[(size_t)t * d + c]
                               : emb[(size_t)comp[t] * d + (2 * (size_t)d - 1 - c)];
    }
}

extern "C" __global__ void swap_halves(float* __restrict__ buf, size_t len, int d)
{
    const size_t total = len * (size_t)d;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t row = i / d;
        const size_t c = i - row * d;
        float* a = buf + row * 2 * (size_t)d + c;
        const float t = a[0];
        a[0] = a[d];
        a[d] = t;
    }
}

// f32 -> bf16 bits, round to nearest even (NaN stays NaN).
__device__ __forceinline__ unsigned short to_bf16(float f)
{
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}

// src and dst may be the same memory (the final norm runs in place): a warp reads its
// (row, half) in full before writing it, and no other warp touches it.
extern "C" __global__ void rms_norm(const float* src,
                                    float* dst,
                                    const float* __restrict__ w,
                                    size_t len, int d, int halves, float eps, int half)
{
    const int lane = threadIdx.x & 31;
    const size_t warps = len * (size_t)halves;
    unsigned short* dst_h = reinterpret_cast<unsigned short*>(dst);
    for (size_t wi = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) / 32; wi < warps;
         wi += (size_t)gridDim.x * blockDim.x / 32) {
        // rows are [half 0 | half 1], so warp wi's D values start at wi·D
        const float* x = src + wi * (size_t)d;
        const bool flip = (wi % halves) == 1;
        float ss = 0.0f;
        for (int c = lane; c < d; c += 32) ss += x[c] * x[c];
        for (int m = 16; m > 0; m >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, m);
        const float s = 1.0f / sqrtf(ss / (float)d + eps);
        for (int c = lane; c < d; c += 32) {
            const float v = x[c] * s * w[flip ? d - 1 - c : c];
            if (half) dst_h[wi * (size_t)d + c] = to_bf16(v);
            else dst[wi * (size_t)d + c] = v;
        }
    }
}

// ranges: [n][2] (first row, end row). Grid (n, ceil(width / blockDim.x)).
extern "C" __global__ void sum_rows(const float* __restrict__ buf, int width,
                                    const long long* __restrict__ ranges,
                                    double* __restrict__ out)
{
    const int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= width) return;
    const long long r0 = ranges[2 * (size_t)blockIdx.x], r1 = ranges[2 * (size_t)blockIdx.x + 1];
    const float* p = buf + (size_t)r0 * width + c;
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
    long long r = r0;
    for (; r + 4 <= r1; r += 4, p += 4 * (size_t)width) {
        s0 += p[0];
        s1 += p[width];
        s2 += p[2 * (size_t)width];
        s3 += p[3 * (size_t)width];
    }
    for (; r < r1; ++r, p += width) s0 += p[0];
    out[(size_t)blockIdx.x * width + c] = (s0 + s1) + (s2 + s3);
}
