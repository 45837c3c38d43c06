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
    def _scan_fwd_kernel(x_ptr, dt_ptr, z_ptr, B_ptr, C_ptr, A_ptr, D_ptr, bias_ptr, y_ptr,
                         L: tl.constexpr, DI, N: tl.constexpr, BLOCK_C: tl.constexpr):
        pid_b = tl.program_id(0).to(tl.int64)
        pid_c = tl.program_id(1)
        c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        cm = c < DI
        n = tl.arange(0, N)
        A = tl.load(A_ptr + c[:, None] * N + n[None, :], mask=cm[:, None], other=0.0)
        Dv = tl.load(D_ptr + c, mask=cm, other=0.0)
        bias = tl.load(bias_ptr + c, mask=cm, other=0.0)
        h = tl.zeros((BLOCK_C, N), dtype=tl.float32)
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
            y = tl.sum(h * Ct[None, :], axis=1) + Dv * x
            y = y * (z * tl.sigmoid(z))
            tl.store(y_ptr + off, y, mask=cm)

    @triton.jit
    def _scan_bwd_kernel(x_ptr, dt_ptr, z_ptr, B_ptr, C_ptr, A_ptr, D_ptr, bias_ptr, go_ptr, hb_ptr,
                         gx_ptr, gdt_ptr, gz_ptr, gA_ptr, gD_ptr, gB_ptr, gC_ptr,
                         L: tl.constexpr, DI, NCB, N: tl.constexpr, BLOCK_C: tl.constexpr):
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
        h = tl.zeros((BLOCK_C, N), dtype=tl.float32)
        for t in range(L):
            off = xo + t * DI + c
            x = tl.load(x_ptr + off, mask=cm, other=0.0)
            v = tl.load(dt_ptr + off, mask=cm, other=0.0) + bias
            Bt = tl.load(B_ptr + bo + t * N + n)
            dl = _softplus(v)
            h = tl.exp(dl[:, None] * A) * h + (dl * x)[:, None] * Bt[None, :]
            tl.store(hb_ptr + ho + t * DI * N + cn, h, mask=cm[:, None])
        # pass 2: adjoints, right to left
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
            h_prev = tl.load(hb_ptr + ho + (t - 1) * DI * N + cn, mask=cm[:, None] & (t > 0), other=0.0)
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


BLOCK_C = 32
NUM_WARPS = 4


def _f32c(t):
    return t.float().contiguous()


class SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dt, z, B, C, A, D, bias):
        x, dt, z, B, C, A, D, bias = (_f32c(t) for t in (x, dt, z, B, C, A, D, bias))
        Bt, L, DI = x.shape
        N = A.shape[1]
        y = torch.empty_like(x)
        grid = (Bt, triton.cdiv(DI, BLOCK_C))
        _scan_fwd_kernel[grid](x, dt, z, B, C, A, D, bias, y, L=L, DI=DI, N=N, BLOCK_C=BLOCK_C, num_warps=NUM_WARPS)
        ctx.save_for_backward(x, dt, z, B, C, A, D, bias)
        return y

    @staticmethod
    def backward(ctx, go):
        x, dt, z, B, C, A, D, bias = ctx.saved_tensors
        go = _f32c(go)
        Bt, L, DI = x.shape
        N = A.shape[1]
        ncb = triton.cdiv(DI, BLOCK_C)
        hb = torch.empty((Bt, L, DI, N), device=x.device, dtype=torch.float32)
        gx = torch.empty_like(x)
        gdt = torch.empty_like(x)
        gz = torch.empty_like(x)
        gA = torch.empty((Bt, DI, N), device=x.device, dtype=torch.float32)
        gD = torch.empty((Bt, DI), device=x.device, dtype=torch.float32)
        gB = torch.empty((Bt, ncb, L, N), device=x.device, dtype=torch.float32)
        gC = torch.empty((Bt, ncb, L, N), device=x.device, dtype=torch.float32)
        _scan_bwd_kernel[(Bt, ncb)](x, dt, z, B, C, A, D, bias, go, hb, gx, gdt, gz, gA, gD, gB, gC,
                                    L=L, DI=DI, NCB=ncb, N=N, BLOCK_C=BLOCK_C, num_warps=NUM_WARPS)
        del hb
        return gx, gdt, gz, gB.sum(1), gC.sum(1), gA.sum(0), gD.sum(0), gdt.sum((0, 1))


def selective_scan(x, dt, z, B, C, A, D, bias, impl="auto"):
    """y = (scan + D x) * silu(z); see module doc. impl: 'triton', 'ref' or 'auto'."""
    if impl == "auto":
        impl = "triton" if (HAVE_TRITON and x.is_cuda) else "ref"
    if impl == "triton":
        return SelectiveScanFn.apply(x, dt, z, B, C, A, D, bias)
    f = torch.float64 if x.dtype == torch.float64 else torch.float32
    return scan_ref(x.to(f), dt.to(f), z.to(f), B.to(f), C.to(f), A.to(f), D.to(f), bias.to(f))
