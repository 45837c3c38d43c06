"""CPU checks of the v2 training path (train.py train --data ...): state files are written, a resumed run
continues exactly (exact format) or closely (compact format), the context curriculum switches lengths,
the eval per context length runs, and the state files of the real 256 x 16 shape fit the limits.
Tiny model (d_model 32, 2 layers) on tiny synthetic shards in the corpus format; sequential reference scan.

    python3 train/test_train_v2.py        (~1-2 min on 2 cores)
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import data as D  # noqa: E402

TRAIN = os.path.join(HERE, "train.py")


def make_corpus(d, seed=0):
    rng = np.random.default_rng(seed)
    for k in range(2):
        lens = rng.integers(300, 700, 12)
        codes = rng.integers(0, 4, int(lens.sum())).astype(np.uint8)
        codes[50:60] = 255
        ends = np.cumsum(lens)
        packed, runs = D.pack(codes)
        np.savez(os.path.join(d, f"train-{k:03d}.npz"), packed=packed, n=np.int64(len(codes)), n_runs=runs,
                 segs=np.stack([ends - lens, ends], 1), seg_src=np.zeros(12, np.int16),
                 seg_seq=np.arange(12, dtype=np.int32), seg_start=np.zeros(12, np.int64), src_names=np.array(["x"]))
    W, S = 256, 3
    win = rng.integers(0, 4, (S, W)).astype(np.uint8)
    blk = (rng.random((S, 64)) < 0.15)
    for L in (64, 256):
        a = W // 2 - L // 2
        c = win[:, a:a + L].reshape(-1)
        m = np.zeros((S, L), bool)
        m[:, L // 2 - 32:L // 2 + 32] = blk
        packed, runs = D.pack(c)
        np.savez(os.path.join(d, f"eval-{L}.npz"), packed=packed, n=np.int64(len(c)), n_runs=runs,
                 mask=np.packbits(m.reshape(-1)), L=np.int64(L), block=np.int64(64),
                 site_src=np.array(["x"] * S), site_record=np.array(["r"] * S), site_center=np.arange(S))


def run(d, out, *extra):
    cmd = [sys.executable, TRAIN, "train", "--data", d, "--out", out, "--d-model", "32", "--n-layer", "2",
           "--context", "64:0.5,128:0.5", "--tokens-per-step", "512", "--total-tokens", "4096", "--warmup", "2",
           "--lr", "3e-3", "--log-every", "1", "--eval-lens", "64,128,256", "--budget", "1e9", "--hard-stop", "1e9",
           *extra]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.load(open(os.path.join(out, "results.json")))


def main():
    ok = True
    with tempfile.TemporaryDirectory() as d:
        make_corpus(d)
        full = run(d, os.path.join(d, "full"), "--max-steps", "8", "--state-format", "exact")
        la = [h["loss"] for h in full["history"]]
        Ls = [h["L"] for h in full["history"]]
        assert Ls == [64] * 4 + [128] * 4, Ls  # curriculum: 4096 tokens, half at 64, half at 128; 512/step
        for fmt in ("exact", "compact"):
            a = os.path.join(d, f"a-{fmt}")
            run(d, a, "--max-steps", "4", "--state-format", fmt, "--state-every", "0")  # + a save every step
            st = json.load(open(os.path.join(a, "state.json")))
            assert st["step"] == 4 and st["tokens"] == 2048, (st["step"], st["tokens"])
            files = [f for f in os.listdir(a) if f.startswith("state")]
            b = os.path.join(d, f"b-{fmt}")
            res = run(d, b, "--max-steps", "8", "--resume-state", a, "--state-format", fmt)
            lb = [h["loss"] for h in res["history"]]
            diff = max(abs(x - y) for x, y in zip(lb, la[4:]))
            print(f"{fmt}: state files {sorted(files)}; resumed losses {[round(x, 6) for x in lb]} vs "
                  f"uninterrupted {[round(x, 6) for x in la[4:]]}: max |diff| {diff:.2e}")
            tol = 1e-6 if fmt == "exact" else 2e-2
            if not (len(lb) == 4 and diff <= tol):
                ok = False
                print(f"FAIL {fmt} resume")
            st2 = json.load(open(os.path.join(b, "state.json")))
            assert st2["step"] == 8 and len(st2["runs"]) == 2
            assert sum(st2["shard_tokens"].values()) == 8 * 512, st2["shard_tokens"]
        ev = full["eval_by_context"]
        assert set(ev) == {"64", "128", "256"} and len({v["n"] for v in ev.values()}) == 1, ev
        print("eval per context:", {k: (v["n"], round(v["acc"], 3)) for k, v in ev.items()})
        # export from a state, then load it as a released model
        subprocess.run([sys.executable, TRAIN, "export", "--resume-state", os.path.join(d, "full"), "--out",
                        os.path.join(d, "exp"), "--export-dtype", "fp32"], check=True, capture_output=True)
        import model as M
        m = M.load_released(os.path.join(d, "exp"))
        assert m.d_model == 32 and m.n_layer == 2
    # real shape: sizes of the state files
    import state as ST
    sz = ST.state_sizes(256, 16)
    lim = 15 * 2**20
    for fmt in ("exact", "compact"):
        b = sz[fmt]["bytes"]
        print(f"256x16 {fmt}: {sz[fmt]['files']} files, " + ", ".join(f"{x / 2**20:.2f} MiB" for x in b)
              + f"; total {sz[fmt]['total'] / 2**20:.2f} MiB")
        if max(b) + 64 * 1024 > lim or sz[fmt]["files"] > 5:
            ok = False
            print(f"FAIL {fmt} sizes")
    print(f"256x16: {sz['params']:,} parameters; export bf16 {sz['export_bf16_bytes'] / 2**20:.2f} MiB, "
          f"fp32 {sz['export_fp32_bytes'] / 2**20:.2f} MiB")
    if sz["export_bf16_bytes"] > 16 * 2**20:
        ok = False
    print("2 passed, 0 failed" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
