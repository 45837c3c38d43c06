#!/usr/bin/env python3
"""Seeded random subsample of a labelled FASTA, stratified by the `label=` header field.

Usage: subsample.py IN.fa OUT.fa N_PER_LABEL [SEED]     (seed default 7)

Records keep their order in the file. Used by train/heads/features.sh to cut the card splits
down to what the CPU can run through the backbone (taking every n-th record would not do: the
records of a label cycle through its genomes, so a stride can pick one genome only).
"""
import random
import sys


def records(path):
    head, seq = None, []
    for line in open(path):
        if line.startswith(">"):
            if head is not None:
                yield head, "".join(seq)
            head, seq = line.rstrip("\n"), []
        else:
            seq.append(line)
    if head is not None:
        yield head, "".join(seq)


def label(head):
    for f in head.split()[1:]:
        if f.startswith("label="):
            return f[6:]
    sys.exit(f"no label= field in {head}")


def main(src, dst, n, seed=7):
    recs = list(records(src))
    by = {}
    for i, (h, _) in enumerate(recs):
        by.setdefault(label(h), []).append(i)
    rng = random.Random(int(seed))
    keep = set()
    for lab in sorted(by):
        idx = by[lab]
        keep.update(rng.sample(idx, min(int(n), len(idx))))
    with open(dst, "w") as out:
        for i, (h, s) in enumerate(recs):
            if i in keep:
                out.write(h + "\n" + s)
    print(f"{dst}: {len(keep)} of {len(recs)} records ({', '.join(f'{l} {sum(i in keep for i in by[l])}' for l in sorted(by))})", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    main(*sys.argv[1:])
