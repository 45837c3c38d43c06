#!/usr/bin/env python3
"""Summarise a train/heads/fit.sh run: held-out metrics of every head, the label counts of the
origin heads on the unseen bacterium and the real PacBio reads, and (with two CSVs from
`classify --device cpu` and `--device cuda`) how far the backends' probabilities differ.

Usage: report.py OUT_DIR [OUT_DIR...]      # metrics tables (markdown)
       report.py --agree CPU.csv GPU.csv   # backend agreement
"""
import csv
import glob
import json
import os
import struct
import sys
from collections import Counter


def meta(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    return json.loads(json.loads(b[8:8 + n])["__metadata__"]["dna_mamba_head"])


def tables(dirs):
    print("| head | features | pooling | kind | test n | accuracy | macro F1 | MCC | AUROC | train acc |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for d in dirs:
        for tsv in sorted(glob.glob(os.path.join(d, "*.tsv"))):
            name = os.path.basename(tsv)[:-4]
            st = os.path.join(d, name + ".safetensors")
            if not os.path.exists(st):
                continue
            m = meta(st)
            rows = {r["split"]: r for r in csv.DictReader(open(tsv), delimiter="\t")}
            t, tr = rows["test"], rows["train"]
            f = m["features"]
            src = f["source"] + (f" k={','.join(map(str, f['k']))}" if f["source"] == "kmer" else "")
            kind = m["kind"] + (f" {m['hidden']}" if m.get("hidden") else "")
            print(f"| {name} | {src} | {f['pooling']} | {kind} | {t['n']} | {t['accuracy']} | {t['macro_f1']} | {t['mcc']} | {t['auroc']} | {tr['accuracy']} |")
    for d in dirs:
        for c in sorted(glob.glob(os.path.join(d, "*.unseen.csv")) + glob.glob(os.path.join(d, "*.pacbio.csv"))):
            rows = list(csv.DictReader(open(c)))
            n = len(rows)
            counts = Counter(r["label"] for r in rows)
            bases = Counter()
            for r in rows:
                bases[r["label"]] += int(r["length"])
            tot = sum(bases.values())
            txt = ", ".join(f"{k} {v} ({v / n:.1%})" for k, v in counts.most_common())
            print(f"- {os.path.basename(c)}: {n} records: {txt}; bacterial by bases {bases['bacterial'] / max(tot, 1):.1%}")


def agree(a, b):
    ra, rb = list(csv.DictReader(open(a))), list(csv.DictReader(open(b)))
    assert len(ra) == len(rb)
    cols = [k for k in ra[0] if k.startswith("p_")]
    worst, flips, close = 0.0, 0, 0
    for x, y in zip(ra, rb):
        pa = [float(x[c]) for c in cols]
        pb = [float(y[c]) for c in cols]
        worst = max(worst, max(abs(u - v) for u, v in zip(pa, pb)))
        if x["label"] != y["label"]:
            flips += 1
            top = sorted(pa, reverse=True)
            close += top[0] - top[1] <= 1e-3
    print(f"{len(ra)} records: max |p_cpu - p_gpu| = {worst:.2e}; labels differ on {flips} ({close} of them with top-two gap <= 1e-3)")


if __name__ == "__main__":
    if sys.argv[1] == "--agree":
        agree(sys.argv[2], sys.argv[3])
    else:
        tables(sys.argv[1:])
