#!/usr/bin/env python3
"""Paired comparison of heads scored on the same held-out rows: accuracy and AUROC of each, and
a paired bootstrap of the AUROC and accuracy differences against the first one.

Usage: compare.py [--block N] [--boot B] NAME=PRED.csv NAME=PRED.csv ...

PRED.csv: `train --predictions` (id,label,predicted,p_<label>...) or `classify` CSV
(id,length,<task>... with p_ columns: give `NAME=FILE:TASK` to pick one head's columns and
`--truth FILE.fa` for the labels from `label=` header fields). Rows must be the same records
in the same order (checked on the labels, and on the ids where both files have real ids).
AUROC is the mean one-vs-rest rank-sum AUROC over the labels, as `train` prints it.
--block N resamples runs of N consecutive rows instead of single rows (for positions, whose
neighbours are not independent). 95 % intervals are percentile intervals.
"""
import argparse
import csv
import random
import sys

import numpy as np


def auroc1(s, pos):
    """Rank-sum AUROC, ties counted half (average ranks)."""
    n1 = int(pos.sum())
    n0 = len(pos) - n1
    if n1 == 0 or n0 == 0:
        return None
    _, inv, cnt = np.unique(s, return_inverse=True, return_counts=True)
    avg = np.cumsum(cnt) - (cnt - 1) / 2  # average 1-based rank of each distinct value
    return (avg[inv][pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)


def auroc_fast(p, y):
    out = []
    for k in range(p.shape[1]):
        a = auroc1(p[:, k], y == k)
        if a is not None:
            out.append(a)
    return float(np.mean(out))


def load(spec, truth):
    name, path = spec.split("=", 1)
    task = None
    if ":" in path and not path.endswith(".csv"):
        path, task = path.rsplit(":", 1)
    rows = list(csv.DictReader(open(path)))
    cols = [c for c in rows[0] if c.startswith("p_")]
    if task is not None:
        cols = [c for c in rows[0] if c.startswith(f"{task}_p_") or c.startswith(f"p_{task}_")] or cols
    labels = [c.split("p_", 1)[1] for c in cols]
    if "label" in rows[0] and task is None:
        y = [r["label"] for r in rows]
    else:
        y = [truth[r["id"]] for r in rows]
    ids = [r["id"] if "id" in r else f"{r['chrom']}:{r['pos']}" for r in rows]
    p = np.array([[float(r[c]) for c in cols] for r in rows])
    return name, ids, y, labels, p


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--block", type=int, default=1)
    ap.add_argument("--boot", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--truth", help="FASTA with label= header fields (for classify CSVs)")
    ap.add_argument("preds", nargs="+")
    a = ap.parse_args()
    truth = {}
    if a.truth:
        for line in open(a.truth):
            if line.startswith(">"):
                f = line[1:].split()
                truth[f[0]] = next(x[6:] for x in f[1:] if x.startswith("label="))
    runs = [load(s, truth) for s in a.preds]
    name0, ids0, y0, lab0, _ = runs[0]
    for name, ids, y, lab, _ in runs[1:]:
        if y != y0:
            sys.exit(f"{name}: labels differ from {name0}'s rows")
        if lab != lab0:
            sys.exit(f"{name}: label columns {lab} differ from {lab0}")
        if not ids[0].startswith("row") and not ids0[0].startswith("row") and ids != ids0:  # load-features rows are row<i>
            sys.exit(f"{name}: ids differ from {name0}'s")
    idx = {l: i for i, l in enumerate(lab0)}
    y = np.array([idx[v] for v in y0])
    n = len(y)
    stats = []
    for name, _, _, _, p in runs:
        acc = (p.argmax(1) == y).astype(float)
        stats.append((name, p, acc))
    base = {name: (auroc_fast(p, y), acc.mean()) for name, p, acc in stats}
    rng = random.Random(a.seed)
    nb = (n + a.block - 1) // a.block
    diffs = {name: [] for name, _, _ in stats[1:]}
    for _ in range(a.boot):
        blocks = [rng.randrange(nb) for _ in range(nb)]
        sel = np.concatenate([np.arange(b * a.block, min(n, (b + 1) * a.block)) for b in blocks])
        yy = y[sel]
        r0 = auroc_fast(stats[0][1][sel], yy), stats[0][2][sel].mean()
        for name, p, acc in stats[1:]:
            diffs[name].append((auroc_fast(p[sel], yy) - r0[0], acc[sel].mean() - r0[1]))
    print(f"n = {n} held-out rows; paired bootstrap ({a.boot} resamples of {'rows' if a.block == 1 else f'blocks of {a.block} rows'}) against {name0}")
    print("| features | AUROC | accuracy | AUROC - " + name0 + " (95 % CI) | accuracy - " + name0 + " (95 % CI) |")
    print("|---|---|---|---|---|")
    for name, _, _ in stats:
        au, ac = base[name]
        if name == name0:
            print(f"| {name} | {au:.4f} | {ac:.4f} | | |")
            continue
        d = np.array(diffs[name])
        lo, hi = np.percentile(d, [2.5, 97.5], axis=0)
        print(f"| {name} | {au:.4f} | {ac:.4f} | {au - base[name0][0]:+.4f} ({lo[0]:+.4f} to {hi[0]:+.4f}) "
              f"| {ac - base[name0][1]:+.4f} ({lo[1]:+.4f} to {hi[1]:+.4f}) |")


if __name__ == "__main__":
    main()
