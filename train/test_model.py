"""CPU checks of the training model against the independent float64 numpy reference
(tests/reference/caduceus_ref.py), of the export layout, and of the import round trip.
Usage: TRITON_INTERPRET=1 python3 train/test_model.py   (interpreter only needed for the triton check)"""
import os
import sys
import tempfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests", "reference"))
import caduceus_ref as ref  # noqa: E402
import model as M  # noqa: E402
import scan  # noqa: E402


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def perturbed(d_model, n_layer, seed):
    m = M.CaduceusPh(d_model, n_layer, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # move away from init symmetries (ones, log 1..N) so every tensor matters
        for name, p in m.named_parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g) * (p.abs().mean() + 0.1))
    return m


def main():
    d, nl = 40, 2
    m = perturbed(d, nl, 3)
    M.tie_n_to_pad(m)
    with tempfile.TemporaryDirectory() as tmp:
        tensors = M.export(m, tmp)
        # tensor set / count / size exactly as the released layout (spec 1.4)
        assert len(tensors) == 1 + 17 * nl + 1, len(tensors)
        assert not any(".mamba_rev.in_proj" in k or ".mamba_rev.out_proj" in k or "lm_head" in k for k in tensors)
        blob = open(os.path.join(tmp, "model.safetensors"), "rb").read()
        js, total, _ = ref.header_bytes([(k, "F32", v.shape) for k, v in tensors.items()])
        assert len(blob) == 8 + len(js) + total, (len(blob), 8 + len(js) + total)
        hdr, parsed = ref.st_parse(blob)
        import json
        cfg = json.load(open(os.path.join(tmp, "config.json")))
        rm = ref.load_model(cfg, parsed)
        # reference forward in float64 vs the torch model in float64 (sequential scan)
        rng = np.random.default_rng(0)
        seq = "".join(rng.choice(list("ACGT"), 150)) + "NNNNN" + "".join(rng.choice(list("ACGT"), 45))
        ids = ref.tokenize(seq)
        want = ref.logits_of(rm, ref.forward(rm, ids))
        m64 = M.load_released(tmp).double()
        with torch.no_grad():
            h = m64(torch.from_numpy(ids)[None], scan_impl="ref")
            got = m64.logits(h.double())[0].numpy()
        e64 = rel(got, want)
        print(f"torch fp64 (ref scan) vs numpy reference: logits rel err {e64:.2e}")
        assert e64 < 1e-10
        m32 = M.load_released(tmp)
        with torch.no_grad():
            got32 = m32.logits(m32(torch.from_numpy(ids)[None], scan_impl="ref"))[0].numpy()
        e32 = rel(got32, want)
        print(f"torch fp32 (ref scan) vs numpy reference: logits rel err {e32:.2e}")
        assert e32 < 1e-5
        if scan.HAVE_TRITON and os.environ.get("TRITON_INTERPRET") == "1":
            with torch.no_grad():
                gotT = m32.logits(m32(torch.from_numpy(ids)[None], scan_impl="triton"))[0].numpy()
            eT = rel(gotT, want)
            print(f"torch fp32 (triton scan, interpreter) vs numpy reference: logits rel err {eT:.2e}")
            assert eT < 1e-5
            # full-model gradients: triton vs ref scan
            ids2 = torch.from_numpy(np.stack([ref.tokenize(seq[:60]), ref.tokenize(seq[60:120])]))
            grads = {}
            for impl in ("ref", "triton"):
                m32.zero_grad()
                loss = m32.logits(m32(ids2, scan_impl=impl)).log_softmax(-1)[..., 7].sum()
                loss.backward()
                grads[impl] = {n: p.grad.clone() for n, p in m32.named_parameters()}
            worst = max(rel(grads["triton"][n].numpy(), grads["ref"][n].numpy()) for n in grads["ref"])
            print(f"model grads triton vs ref: worst rel err {worst:.2e}")
            assert worst < 1e-4
        # N as id 11 == N as id 4 after tie_n_to_pad
        ids4 = ids.copy()
        ids4[ids4 == 11] = 4
        with torch.no_grad():
            g4 = m32.logits(m32(torch.from_numpy(ids4)[None], scan_impl="ref"))[0].numpy()
        assert np.array_equal(np.delete(g4, [4, 11], 1), np.delete(got32, [4, 11], 1))
    print("model OK")


if __name__ == "__main__":
    main()
