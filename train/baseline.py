#!/usr/bin/env python3
"""k-mer count baseline for masked-base prediction, on exactly the held-out masked positions the
model is scored on (.carry-train/eval.npz, drawn by train/data.py).

Model: p(centre | r bases left, r bases right) from counts over the training data (both strands),
add-one smoothing: (n(ctx, b) + 1) / (n(ctx) + 4). r = 0 is the base composition.
Context never crosses the 1024-base evaluation window (the model sees only its window either).
Two variants per r = 1..KMAX:
  * "masked": the context the model also has: other masked positions and N are unknown; where a
    base within r is unknown, back off to the largest symmetric radius that is fully known.
  * "oracle": the true bases of the other masked positions are visible (only N unknown) -- a
    stronger baseline than the model's own information, for reference.
Writes train/results/baseline.json.  Usage: python3 train/baseline.py
"""

import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data  # noqa: E402

KMAX = 6
WIN = data.EVAL_WIN


def count_tables(codes, segs, kmax):
    """tables[r] = int64 [4^(2r), 4] counts over both strands. codes uint8 (255 = N)."""
    valid = codes != 255
    c = np.where(valid, codes, 0).astype(np.int64)
    n = len(codes)
    # positions whose +-r neighbourhood stays inside one segment
    seg_id = np.zeros(n, np.int32)
    for i, (s, e) in enumerate(segs):
        seg_id[s:e] = i
    tables = {}
    for strand in (0, 1):
        if strand == 1:  # reverse complement of the whole concatenation (segments stay segments)
            c = (3 - c)[::-1].copy()
            valid = valid[::-1].copy()
            seg_id = seg_id[::-1].copy()
        ok = valid.copy()
        code = np.zeros(n, np.int64)
        for r in range(0, kmax + 1):
            if r > 0:
                left = np.zeros(n, np.int64)
                right = np.zeros(n, np.int64)
                left[r:] = c[:-r]
                right[:-r] = c[r:]
                okl = np.zeros(n, bool)
                okr = np.zeros(n, bool)
                okl[r:] = valid[:-r] & (seg_id[:-r] == seg_id[r:])
                okr[:-r] = valid[r:] & (seg_id[r:] == seg_id[:-r])
                ok &= okl & okr
                code = code * 16 + left * 4 + right
            idx = code[ok] * 4 + c[ok]
            t = np.bincount(idx, minlength=4 ** (2 * r + 1)).reshape(-1, 4)
            tables[r] = tables.get(r, 0) + t
    return tables


def known_runs(known):
    """For each position p: number of consecutive known positions immediately left / right of p,
    not crossing the window (windows of WIN tile the array)."""
    n = len(known)
    idx = np.arange(n)
    win_start = idx - idx % WIN
    win_end = win_start + WIN - 1
    unk = np.where(~known, idx, -1)
    last_unk_before = np.maximum.accumulate(np.concatenate([[-1], unk[:-1]]))
    left = idx - np.maximum(last_unk_before, win_start - 1) - 1
    unk_r = np.where(~known, idx, n)
    next_unk_after = np.minimum.accumulate(np.concatenate([unk_r[1:], [n]])[::-1])[::-1]
    right = np.minimum(next_unk_after, win_end + 1) - idx - 1
    return left, right


def score(codes, mask, tables, kmax, variant):
    pos = np.flatnonzero(mask)
    truth = codes[pos].astype(np.int64)
    known = codes != 255
    if variant == "masked":
        known = known & ~mask
    left, right = known_runs(known)
    rad = np.minimum(np.minimum(left[pos], right[pos]), kmax)
    c = np.where(codes == 255, 0, codes).astype(np.int64)
    logp = np.zeros(len(pos))
    pred = np.zeros(len(pos), np.int64)
    for r in range(kmax + 1):
        sel = rad == r
        if not sel.any():
            continue
        p = pos[sel]
        code = np.zeros(len(p), np.int64)
        for j in range(1, r + 1):
            code = code * 16 + c[p - j] * 4 + c[p + j]
        cnt = tables[r][code].astype(np.float64) + 1.0
        prob = cnt / cnt.sum(1, keepdims=True)
        logp[sel] = np.log(prob[np.arange(len(p)), truth[sel]])
        pred[sel] = prob.argmax(1)
    return {"n": int(len(pos)), "acc": float((pred == truth).mean()), "nll": float(-logp.mean()),
            "ppl": float(np.exp(-logp.mean())), "correct": int((pred == truth).sum()), "sum_nll": float(-logp.sum())}


def main():
    t0 = time.time()
    codes, segs = data.load_train()
    tables = count_tables(codes, segs, KMAX)
    print(f"count tables k<= {KMAX}: {time.time() - t0:.1f}s", flush=True)
    ev = data.load_eval()
    out = {"kmax": KMAX, "window": WIN, "smoothing": "add-one", "strands": "both",
           "train_bases": int(len(codes)), "datasets": {}}
    for variant in ("masked", "oracle"):
        for r in range(0, KMAX + 1):
            tot = {"n": 0, "correct": 0, "sum_nll": 0.0}
            for name, (c, m) in ev.items():
                s = score(c, m, tables, r, variant)
                out["datasets"].setdefault(name, {})[f"{variant}_k{r}"] = s
                for k in tot:
                    tot[k] += s[k]
            out["datasets"].setdefault("ALL", {})[f"{variant}_k{r}"] = {
                "n": tot["n"], "acc": tot["correct"] / tot["n"], "nll": tot["sum_nll"] / tot["n"],
                "ppl": float(np.exp(tot["sum_nll"] / tot["n"])), "correct": tot["correct"], "sum_nll": tot["sum_nll"]}
    for name, d in out["datasets"].items():
        line = " ".join(f"{k}:{v['acc']:.4f}/{v['ppl']:.4f}" for k, v in d.items() if k.startswith("masked"))
        print(f"{name:22s} {line}")
        line = " ".join(f"{k}:{v['acc']:.4f}/{v['ppl']:.4f}" for k, v in d.items() if k.startswith("oracle"))
        print(f"{'':22s} {line}")
    os.makedirs(os.path.join(data.ROOT, "train", "results"), exist_ok=True)
    with open(os.path.join(data.ROOT, "train", "results", "baseline.json"), "w") as f:
        json.dump(out, f, indent=1)
    print(f"done in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
