"""Mamba-1 selective scan for training: a Triton kernel pair (forward / backward) and a plain
PyTorch reference (sequential over length) used on the CPU and in tests.

Both compute, for x, dt_raw, z [Bt, L, di], B, C [Bt, L, N], A [di, N] (already negative), D, bias [di]:

    delta_t = softplus(dt_raw_t + bias)                    (threshold 20, as mamba_ssm)
    h_t     = exp(delta_t * A) * h_{t-1} + (delta_t * x_t) B_t      (h_{-1} = 0)
    y_t     = (h_t . C_t + D * x_t) * silu(z_t)

i.e. selective_scan_fn(x, dt, A, B, C, D, z, delta_bias, delta_softplus=True) of mamba_ssm
(spec section 2.2), all arithmetic in fp32.

The Triton kernels run one program per (sequence, block of BLOCK_C channels) and loop over the
length with the [BLOCK_C, N] state in registers. The backward kernel first re-runs the forward
recurrence and writes every state to a scratch buffer [Bt, L, di, N] (fp32), then walks the
sequence backwards accumulating the state adjoint. Cross-channel sums (grad of B and C) are written
per channel block and summed in PyTorch.
"""

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
    HAVE_TRITON = True
except Exception:  # pragma: no cover - CPU machines without triton
    HAVE_TRITON = False


def softplus20(v):
    return F.softplus(v, beta=1.0, threshold=20.0)


def scan_ref(x, dt, z, B, C, A, D, bias):
    """Sequential reference in the dtype of the inputs (use fp32/fp64)."""
    Bt, L, di = x.shape
    delta = softplus20(dt + bias)
    h = x.new_zeros(Bt, di, A.shape[1])
    ys = []
    for t in range(L):
        h = torch.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * x[:, t])[:, :, None] * B[:, t, None, :]
        ys.append((h * C[:, t, None, :]).sum(-1))
    y = torch.stack(ys, 1) + D * x
    return y * F.silu(z)


if HAVE_TRITON:

    @triton.jit
    def _softplus(v):
        # log1p(exp(v)) with Kahan's log1p trick (accurate for tiny exp(v)); identity above 20
        e = tl.exp(tl.minimum(v, 20.0))
        w = 1.0 + e
        lp = tl.where(w == 1.0, e, tl.log(w) * e / (w - 1.0))
        return tl.where(v > 20.0, v, lp)

    @triton.jit
    def _scan_fwd_kernel(x_ptr, dt_ptr, z_ptr, B_ptr, C_ptr, A_ptr, D_ptr, bias_ptr, y_ptr, h0_ptr, hT_ptr, S_ptr,
                         L: tl.constexpr, DI, N: tl.constexpr, BLOCK_C: tl.constexpr,
                         STORE_Y: tl.constexpr, CHUNKED: tl.constexpr):
        pid_b = tl.program_id(0).to(tl.int64)
        pid_c = tl.program_id(1)
        c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        cm = c < DI
        n = tl.arange(0, N)
        cn = c[:, None] * N + n[None, :]
        A = tl.load(A_ptr + c[:, None] * N + n[None, :], mask=cm[:, None], other=0.0)
        Dv = tl.load(D_ptr + c, mask=cm, other=0.0)
        bias = tl.load(bias_ptr + c, mask=cm, other=0.0)
        if CHUNKED:  # this program's sequence is one chunk of a longer one: start from its incoming state
            h = tl.load(h0_ptr + pid_b * DI * N + cn, mask=cm[:, None], other=0.0)
        else:
            h = tl.zeros((BLOCK_C, N), dtype=tl.float32)
        S = tl.zeros((BLOCK_C,), dtype=tl.float32)
        xo = pid_b * L * DI
        bo = pid_b * L * N
        for t in range(L):
            off = xo + t * DI + c
            x = tl.load(x_ptr + off, mask=cm, other=0.0)
            v = tl.load(dt_ptr + off, mask=cm, other=0.0) + bias
            z = tl.load(z_ptr + off, mask=cm, other=0.0)
            Bt = tl.load(B_ptr + bo + t * N + n)
            Ct = tl.load(C_ptr + bo + t * N + n)
            dl = _softplus(v)
            h = tl.exp(dl[:, None] * A) * h + (dl * x)[:, None] * Bt[None, :]
            if STORE_Y:
                y = tl.sum(h * Ct[None, :], axis=1) + Dv * x
                y = y * (z * tl.sigmoid(z))
                tl.store(y_ptr + off, y, mask=cm)
            if CHUNKED:
                S += dl
        if CHUNKED:  # final state and sum of delta (decay over the chunk = exp(A * S))
            tl.store(hT_ptr + pid_b * DI * N + cn, h, mask=cm[:, None])
            tl.store(S_ptr + pid_b * DI + c, S, mask=cm)

    @triton.jit
    def _scan_bwd_kernel(x_ptr, dt_ptr, z_ptr, B_ptr, C_ptr, A_ptr, D_ptr, bias_ptr, go_ptr, hb_ptr,
                         gx_ptr, gdt_ptr, gz_ptr, gA_ptr, gD_ptr, gB_ptr, gC_ptr, h0_ptr, gh0_ptr, ghT_ptr,
                         L: tl.constexpr, DI, NCB, N: tl.constexpr, BLOCK_C: tl.constexpr,
                         CHUNKED: tl.constexpr):
        pid_b = tl.program_id(0).to(tl.int64)
        pid_c = tl.program_id(1)
        c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        cm = c < DI
        n = tl.arange(0, N)
        cn = c[:, None] * N + n[None, :]
        A = tl.load(A_ptr + cn, mask=cm[:, None], other=0.0)
        Dv = tl.load(D_ptr + c, mask=cm, other=0.0)
        bias = tl.load(bias_ptr + c, mask=cm, other=0.0)
        xo = pid_b * L * DI
        bo = pid_b * L * N
        ho = pid_b * L * DI * N
        # pass 1: states
        if CHUNKED:
            h0 = tl.load(h0_ptr + pid_b * DI * N + cn, mask=cm[:, None], other=0.0)
        else:
            h0 = tl.zeros((BLOCK_C, N), dtype=tl.float32)
        h = h0
        for t in range(L):
            off = xo + t * DI + c
            x = tl.load(x_ptr + off, mask=cm, other=0.0)
            v = tl.load(dt_ptr + off, mask=cm, other=0.0) + bias
            Bt = tl.load(B_ptr + bo + t * N + n)
            dl = _softplus(v)
            h = tl.exp(dl[:, None] * A) * h + (dl * x)[:, None] * Bt[None, :]
            tl.store(hb_ptr + ho + t * DI * N + cn, h, mask=cm[:, None])
        # pass 2: adjoints, right to left (a chunk starts from the adjoint flowing in from its right)
        if CHUNKED:
            gh = tl.load(gh0_ptr + pid_b * DI * N + cn, mask=cm[:, None], other=0.0)
        else:
            gh = tl.zeros((BLOCK_C, N), dtype=tl.float32)
        gA = tl.zeros((BLOCK_C, N), dtype=tl.float32)
        gD = tl.zeros((BLOCK_C,), dtype=tl.float32)
        h_t = h
        po = (pid_b * NCB + pid_c) * L * N
        for i in range(L):
            t = L - 1 - i
            off = xo + t * DI + c
            x = tl.load(x_ptr + off, mask=cm, other=0.0)
            v = tl.load(dt_ptr + off, mask=cm, other=0.0) + bias
            z = tl.load(z_ptr + off, mask=cm, other=0.0)
            go = tl.load(go_ptr + off, mask=cm, other=0.0)
            Bt = tl.load(B_ptr + bo + t * N + n)
            Ct = tl.load(C_ptr + bo + t * N + n)
            # state before step t: the stored one, or the initial state at t = 0 (index clamped so the
            # load mask needs no scalar term, which Triton's interpreter rejects)
            h_prev = tl.load(hb_ptr + ho + tl.maximum(t - 1, 0) * DI * N + cn, mask=cm[:, None], other=0.0)
            h_prev = tl.where(t > 0, h_prev, h0)
            dl = _softplus(v)
            dsp = tl.where(v > 20.0, 1.0, tl.sigmoid(v))
            ypre = tl.sum(h_t * Ct[None, :], axis=1) + Dv * x
            sz = tl.sigmoid(z)
            gy = go * z * sz
            gz = go * ypre * sz * (1.0 + z * (1.0 - sz))
            gD += gy * x
            gh += gy[:, None] * Ct[None, :]
            gC_t = tl.sum(gy[:, None] * h_t, axis=0)
            a = tl.exp(dl[:, None] * A)
            gdl = tl.sum(gh * (h_prev * a * A + x[:, None] * Bt[None, :]), axis=1)
            gx = tl.sum(gh * Bt[None, :], axis=1) * dl + gy * Dv
            gB_t = tl.sum(gh * (dl * x)[:, None], axis=0)
            gA += gh * h_prev * a * dl[:, None]
            tl.store(gx_ptr + off, gx, mask=cm)
            tl.store(gdt_ptr + off, gdl * dsp, mask=cm)
            tl.store(gz_ptr + off, gz, mask=cm)
            tl.store(gB_ptr + po + t * N + n, gB_t)
            tl.store(gC_ptr + po + t * N + n, gC_t)
            gh = gh * a
            h_t = h_prev
        tl.store(gA_ptr + pid_b * DI * N + cn, gA, mask=cm[:, None])
        tl.store(gD_ptr + pid_b * DI + c, gD, mask=cm)
        if CHUNKED:  # adjoint of the chunk's initial state
            tl.store(ghT_ptr + pid_b * DI * N + cn, gh, mask=cm[:, None])


BLOCK_C = 32
NUM_WARPS = 4


def _f32c(t):
    return t.float().contiguous()


# Long sequences with few sequences per batch leave most of the GPU idle (one program per sequence x 32
# channels walks the whole length). The chunked path cuts each sequence into NC chunks, runs them as
# independent sequences from their incoming state, and links the chunks with a short sequential pass over
# chunk boundaries in PyTorch (the recurrence is linear in the state: h_end = exp(A * sum delta) h_in +
# h_end|h_in=0; the state adjoint is linear the same way). Exact, for 2x the scan work.
MIN_PROGRAMS = 512  # chunk until (sequences x chunks x channel blocks) reaches this (H100 bench: 256x4 ran
#                    as fast with 32 x 2048 = 512 programs as with 64 x 1024 = 1024); tune on the GPU
MIN_CHUNK = 256


def pick_chunk(Bt, L, DI):
    ncb = triton.cdiv(DI, BLOCK_C)
    Lc = L
    while Bt * (L // Lc) * ncb < MIN_PROGRAMS and Lc % 2 == 0 and Lc // 2 >= MIN_CHUNK:
        Lc //= 2
    return Lc


class SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dt, z, B, C, A, D, bias, chunk=None):
        x, dt, z, B, C, A, D, bias = (_f32c(t) for t in (x, dt, z, B, C, A, D, bias))
        Bt, L, DI = x.shape
        N = A.shape[1]
        Lc = pick_chunk(Bt, L, DI) if chunk is None else chunk
        assert L % Lc == 0, (L, Lc)
        NC = L // Lc
        y = torch.empty_like(x)
        grid = (Bt * NC, triton.cdiv(DI, BLOCK_C))
        h_in = S = None
        if NC == 1:
            _scan_fwd_kernel[grid](x, dt, z, B, C, A, D, bias, y, y, y, y, L=L, DI=DI, N=N, BLOCK_C=BLOCK_C,
                                   STORE_Y=True, CHUNKED=False, num_warps=NUM_WARPS)
        else:
            z0 = torch.zeros((Bt * NC, DI, N), device=x.device, dtype=torch.float32)
            hT = torch.empty_like(z0)
            S = torch.empty((Bt * NC, DI), device=x.device, dtype=torch.float32)
            _scan_fwd_kernel[grid](x, dt, z, B, C, A, D, bias, y, z0, hT, S, L=Lc, DI=DI, N=N, BLOCK_C=BLOCK_C,
                                   STORE_Y=False, CHUNKED=True, num_warps=NUM_WARPS)
            hT, S = hT.view(Bt, NC, DI, N), S.view(Bt, NC, DI)
            h_in = torch.zeros_like(hT)
            for k in range(1, NC):
                h_in[:, k] = torch.exp(A * S[:, k - 1, :, None]) * h_in[:, k - 1] + hT[:, k - 1]
            _scan_fwd_kernel[grid](x, dt, z, B, C, A, D, bias, y, h_in, hT, S.reshape(-1, DI), L=Lc, DI=DI, N=N,
                                   BLOCK_C=BLOCK_C, STORE_Y=True, CHUNKED=True, num_warps=NUM_WARPS)
        ctx.save_for_backward(x, dt, z, B, C, A, D, bias, *([h_in, S] if NC > 1 else []))
        ctx.Lc = Lc
        return y

    @staticmethod
    def backward(ctx, go):
        x, dt, z, B, C, A, D, bias = ctx.saved_tensors[:8]
        go = _f32c(go)
        Bt, L, DI = x.shape
        N = A.shape[1]
        Lc = ctx.Lc
        NC = L // Lc
        ncb = triton.cdiv(DI, BLOCK_C)
        BN = Bt * NC
        hb = torch.empty((BN, Lc, DI, N), device=x.device, dtype=torch.float32)
        gx = torch.empty_like(x)
        gdt = torch.empty_like(x)
        gz = torch.empty_like(x)
        gA = torch.empty((BN, DI, N), device=x.device, dtype=torch.float32)
        gD = torch.empty((BN, DI), device=x.device, dtype=torch.float32)
        gB = torch.empty((BN, ncb, Lc, N), device=x.device, dtype=torch.float32)
        gC = torch.empty((BN, ncb, Lc, N), device=x.device, dtype=torch.float32)
        args = (x, dt, z, B, C, A, D, bias, go, hb, gx, gdt, gz, gA, gD, gB, gC)
        if NC == 1:
            _scan_bwd_kernel[(BN, ncb)](*args, gA, gA, gA, L=L, DI=DI, NCB=ncb, N=N, BLOCK_C=BLOCK_C,
                                        CHUNKED=False, num_warps=NUM_WARPS)
        else:
            h_in, S = ctx.saved_tensors[8:]
            gh0 = torch.zeros((Bt, NC, DI, N), device=x.device, dtype=torch.float32)
            ghT = torch.empty_like(gh0)
            # pass 1: each chunk's adjoint of its initial state with no adjoint flowing in from the right
            _scan_bwd_kernel[(BN, ncb)](*args, h_in, gh0, ghT, L=Lc, DI=DI, NCB=ncb, N=N, BLOCK_C=BLOCK_C,
                                        CHUNKED=True, num_warps=NUM_WARPS)
            for k in range(NC - 2, -1, -1):  # adjoint entering chunk k from chunk k+1
                gh0[:, k] = torch.exp(A * S[:, k + 1, :, None]) * gh0[:, k + 1] + ghT[:, k + 1]
            _scan_bwd_kernel[(BN, ncb)](*args, h_in, gh0, ghT, L=Lc, DI=DI, NCB=ncb, N=N, BLOCK_C=BLOCK_C,
                                        CHUNKED=True, num_warps=NUM_WARPS)
        del hb
        gB = gB.sum(1).reshape(Bt, L, N)
        gC = gC.sum(1).reshape(Bt, L, N)
        return gx, gdt, gz, gB, gC, gA.sum(0), gD.sum(0), gdt.sum((0, 1)), None


def selective_scan(x, dt, z, B, C, A, D, bias, impl="auto"):
    """y = (scan + D x) * silu(z); see module doc. impl: 'triton', 'ref' or 'auto'."""
    if impl == "auto":
        impl = "triton" if (HAVE_TRITON and x.is_cuda) else "ref"
    if impl == "triton":
        return SelectiveScanFn.apply(x, dt, z, B, C, A, D, bias, None)
    if impl.startswith("triton-chunk"):  # tests: force a chunk length, e.g. "triton-chunk16"
        return SelectiveScanFn.apply(x, dt, z, B, C, A, D, bias, int(impl[len("triton-chunk"):]))
    f = torch.float64 if x.dtype == torch.float64 else torch.float32
    return scan_ref(x.to(f), dt.to(f), z.to(f), B.to(f), C.to(f), A.to(f), D.to(f), bias.to(f))
