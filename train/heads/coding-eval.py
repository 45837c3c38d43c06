#!/usr/bin/env python3
"""The coding head on an annotated genome that no training step saw (issue 17): per-base AUROC
of p(coding) against the GenBank CDS, gene-level recall and the run lengths of BED output.

  coding-eval.py prep GBK OUT [N]    OUT.fa (one record, the GenBank sequence, or its first N
                                     bases) and OUT.cds.bed (the CDS pieces inside it)
  coding-eval.py score OUT BEDGRAPH [BED ...]
      BEDGRAPH from `dna-mamba classify --format bedgraph OUT.fa` (p_coding per base), each BED
      from `dna-mamba classify --format bed OUT.fa [--smooth W --min-run N]`

Per-base labels: a base is coding if a CDS piece covers it (either strand). A CDS piece counts
as recalled when at least half of its bases lie in runs labelled `coding`. Prints one markdown
table row per input file.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from prep import genbank_cds  # noqa: E402


def prep(gbk, out, first=None):
    seq, ranges = genbank_cds(gbk)
    if first:
        # an excerpt: CDS pieces clipped to it
        seq = seq[:first]
        ranges = [(a, min(b, first)) for a, b in ranges if a < first]
    name = os.path.basename(out)
    with open(out + ".fa", "w") as f:
        f.write(f">{name}\n")
        for i in range(0, len(seq), 80):
            f.write(seq[i:i + 80] + "\n")
    with open(out + ".cds.bed", "w") as f:
        for a, b in ranges:
            f.write(f"{name}\t{a}\t{b}\tCDS\n")
    covered = np.zeros(len(seq), bool)
    for a, b in ranges:
        covered[a:b] = True
    print(f"{name}: {len(seq)} bp, {len(ranges)} CDS pieces, {covered.mean():.1%} of bases coding")


def auroc(score, y):
    """Mann-Whitney AUROC with average ranks for ties."""
    order = np.argsort(score, kind="mergesort")
    s = score[order]
    ranks = np.empty(len(s))
    # average rank of each run of equal scores
    edges = np.flatnonzero(np.diff(s)) + 1
    starts = np.concatenate([[0], edges])
    ends = np.concatenate([edges, [len(s)]])
    for a, b in zip(starts, ends):
        ranks[order[a:b]] = (a + b + 1) / 2
    pos = y.sum()
    return (ranks[y].sum() - pos * (pos + 1) / 2) / (pos * (len(y) - pos))


def score(out, bedgraph, beds):
    name = os.path.basename(out)
    ranges = [(int(l.split()[1]), int(l.split()[2])) for l in open(out + ".cds.bed")]
    n = sum(len(l.strip()) for l in open(out + ".fa") if not l.startswith(">"))
    y = np.zeros(n, bool)
    for a, b in ranges:
        y[a:b] = True
    p = np.full(n, np.nan)
    for l in open(bedgraph):
        if l.startswith("track"):
            continue
        c, a, b, v = l.split()[:4]
        if c == name:
            p[int(a):int(b)] = float(v)
    scored = ~np.isnan(p)
    print(f"| {name} | {n:,} bp, {len(ranges)} CDS, {y.mean():.1%} coding | bedgraph {os.path.basename(bedgraph)} |"
          f" per-base AUROC {auroc(p[scored], y[scored]):.3f} ({scored.mean():.1%} of bases scored) |")
    print("| BED file | runs | 1 bp | < 50 bp | median run | coding runs | base precision | base recall | CDS recalled (>= 50 % of bases) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for bed in beds:
        lens, call = [], np.zeros(n, bool)
        coding_runs = 0
        for l in open(bed):
            if l.startswith(("track", "#")):
                continue
            f = l.split()
            if f[0] != name:
                continue
            a, b = int(f[1]), int(f[2])
            lens.append(b - a)
            if f[3] == "coding":
                call[a:b] = True
                coding_runs += 1
        lens = np.array(lens)
        tp = (call & y).sum()
        prec = tp / max(call.sum(), 1)
        rec = tp / max(y.sum(), 1)
        recalled = sum(1 for a, b in ranges if call[a:b].mean() >= 0.5)
        print(f"| {os.path.basename(bed)} | {len(lens):,} | {(lens == 1).sum():,} | {(lens < 50).sum():,} |"
              f" {int(np.median(lens)) if len(lens) else 0:,} | {coding_runs:,} | {prec:.3f} | {rec:.3f} |"
              f" {recalled}/{len(ranges)} ({recalled / len(ranges):.1%}) |")


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "prep":
        prep(sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else None)
    elif len(sys.argv) >= 4 and sys.argv[1] == "score":
        score(sys.argv[2], sys.argv[3], sys.argv[4:])
    else:
        sys.exit(__doc__)
