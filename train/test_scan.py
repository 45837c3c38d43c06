"""Check the Triton selective scan (forward and backward) against the sequential PyTorch reference
in float64. On a CPU machine run with TRITON_INTERPRET=1 (Triton's interpreter); on a GPU it runs the
real kernels.  Usage: [TRITON_INTERPRET=1] python3 train/test_scan.py"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scan  # noqa: E402


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def check(Bt=3, L=37, DI=40, N=16, dev="cpu", seed=0, tol=1e-5, impl="triton"):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, sc=1.0: (torch.randn(*s, generator=g, dtype=torch.float64) * sc)
    x, dt, z = r(Bt, L, DI), r(Bt, L, DI) - 2.0, r(Bt, L, DI)
    dt[0, 0, :3] = torch.tensor([25.0, -30.0, 19.5], dtype=torch.float64)  # softplus branches
    B, C = r(Bt, L, N), r(Bt, L, N)
    A = -torch.exp(r(DI, N, sc=0.5) + torch.log(torch.arange(1, N + 1, dtype=torch.float64)))
    D, bias = r(DI), r(DI, sc=0.5)
    ins = [t.to(dev) for t in (x, dt, z, B, C, A, D, bias)]
    go = r(Bt, L, DI).to(dev)
    ref_in = [t.clone().requires_grad_(True) for t in ins]
    y_ref = scan.scan_ref(*ref_in)
    g_ref = torch.autograd.grad(y_ref, ref_in, go)
    tr_in = [t.float().clone().requires_grad_(True) for t in ins]
    y = scan.selective_scan(*tr_in, impl=impl)
    g_tr = torch.autograd.grad(y, tr_in, go.float())
    errs = {"y": rel(y, y_ref)}
    for name, a, b in zip(["x", "dt", "z", "B", "C", "A", "D", "bias"], g_tr, g_ref):
        errs["g" + name] = rel(a, b)
    worst = max(errs.values())
    print(f"{impl} Bt={Bt} L={L} DI={DI}: " + " ".join(f"{k}={v:.1e}" for k, v in errs.items()))
    assert worst < tol, errs
    return errs


if __name__ == "__main__":
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    check(dev=dev)
    check(Bt=2, L=5, DI=32, dev=dev, seed=1)
    # chunked path (long sequences): chunks run as independent sequences, linked over chunk boundaries
    check(Bt=2, L=48, DI=40, dev=dev, seed=4, impl="triton-chunk16")
    check(Bt=1, L=64, DI=32, dev=dev, seed=5, impl="triton-chunk8")
    assert scan.pick_chunk(2, 32768, 512) == 2048 and scan.pick_chunk(64, 1024, 512) == 1024
    if dev == "cuda":
        check(Bt=4, L=1000, DI=200, dev=dev, seed=2)
    print("scan OK")
