#!/usr/bin/env python3
"""A binding-like read-level task from packaged data: D. melanogaster core promoters against
GC-matched genomic background (issue 17; card: models/heads/promoters.md).

    python3 train/heads/promoters.py      # -> $DATA/promoters/{train,test}.fa, manifest.json

$DATA is ${DNA_MAMBA_DATA:-<repo>/.data}; the two Debian 12 packages are downloaded into
$DATA/debs (apt-get download; nothing is installed). Needs apt-get, dpkg-deb, tar, python3.

- promoter: the 200 bp just upstream of a RefSeq TSS, i.e. the last 200 bp of a record of
  dm3_upstream2000.fa.gz (Bioconductor Biostrings, Debian r-bioc-biostrings 2.66.0-1; records
  are in the gene's orientation). Windows with a non-ACGT base are dropped; per chromosome the
  windows are sorted by position and one of any overlapping group is kept (alternative
  transcripts share or nearly share a TSS), so no two promoter windows overlap.
- background: 200 bp windows of dm3 chr2R (Debian augustus-doc 3.5.0+dfsg-2, the AUGUSTUS
  tutorial's chr2R.fa; soft-masking removed), on a random strand, none within 1 kb of any
  RefSeq TSS of chr2R (from the same upstream2000 file), none with a non-ACGT base, none
  overlapping another, drawn so that the GC histogram (2 % bins) equals that of the promoter
  windows of the same split.
- split (held-out chromosomes / disjoint loci):
    train: promoters on chr2L, chr3L, chrX; background from chr2R 0 - 19,146,708
    test:  promoters on chr3R;              background from chr2R's last 2,000,000 bases
  The default backbone saw chr2R 0 - 19,146,708 in its (unsupervised) training and no other
  fly sequence (train/data.py), so no held-out window was seen by the backbone.
- N_TRAIN and N_TEST windows per class (env, default 1500 and 1000: n_test = 2000), sampled
  with seed 17; both classes exactly balanced.
Also control_chr2R_promoters.fa: N_TEST promoter windows of chr2R itself (seed 18), to score
against the test background: the split's promoters come from other chromosomes than its
background, and this checks that the heads do not just tell chr2R from the rest.
Headers: `>ID label=promoter|background gc=0.xx src=chrom:start-end(strand)` (0-based, half open).
"""
import gzip
import json
import os
import random
from random import Random
import subprocess
import sys
from collections import Counter, defaultdict

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
DATA = os.environ.get("DNA_MAMBA_DATA", os.path.join(ROOT, ".data"))
OUT = os.path.join(DATA, "promoters")
W = 200
N_TRAIN = int(os.environ.get("N_TRAIN", 1500))
N_TEST = int(os.environ.get("N_TEST", 1000))
SEED = 17
TSS_MARGIN = 1000
CHR2R_TAIL = 2_000_000
TRAIN_CHROMS = ("chr2L", "chr3L", "chrX")
TEST_CHROMS = ("chr3R",)
PKGS = {
    "r-bioc-biostrings": ("2.66.0-1", "./usr/lib/R/site-library/Biostrings/extdata/dm3_upstream2000.fa.gz"),
    "augustus-doc": ("3.5.0+dfsg-2", "./usr/share/doc/augustus/tutorial/data/chr2R.fa"),
}
COMP = str.maketrans("ACGT", "TGCA")


def fetch(pkg):
    ver, inner = PKGS[pkg]
    debs = os.path.join(DATA, "debs")
    os.makedirs(debs, exist_ok=True)
    have = [f for f in os.listdir(debs) if f.startswith(pkg + "_") and f.endswith(".deb")]
    if not have:
        dl = ["apt-get", "download", "-q"] + (["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else [])
        subprocess.run(dl + [f"{pkg}={ver}"], cwd=debs, check=True)
        have = [f for f in os.listdir(debs) if f.startswith(pkg + "_") and f.endswith(".deb")]
    deb = os.path.join(debs, have[0])
    got = subprocess.run(["dpkg-deb", "-f", deb, "Version"], capture_output=True, text=True, check=True).stdout.strip()
    data = subprocess.run(f"dpkg-deb --fsys-tarfile '{deb}' | tar -xOf - '{inner}'", shell=True, check=True,
                          capture_output=True).stdout
    if inner.endswith(".gz"):
        data = gzip.decompress(data)
    return data.decode(), got


def fasta(text):
    name, buf = None, []
    for line in text.splitlines():
        if line.startswith(">"):
            if name is not None:
                yield name, "".join(buf).upper()
            name, buf = line[1:].strip(), []
        else:
            buf.append(line.strip())
    if name is not None:
        yield name, "".join(buf).upper()


def gc(s):
    return (s.count("G") + s.count("C")) / len(s)


def acgt(s):
    return len(s) == W and all(c in "ACGT" for c in s)


def gc_bin(x):
    return min(int(x * 50), 49)  # 2 % bins


def main():
    up_text, up_ver = fetch("r-bioc-biostrings")
    chr_text, chr_ver = fetch("augustus-doc")
    chr2r = dict(fasta(chr_text))["chr2R"]
    assert len(chr2r) == 21_146_708, len(chr2r)

    # promoter windows, with 0-based genome coordinates of the window and of the TSS
    prom = defaultdict(list)  # chrom -> [(start, end, strand, seq, id)]
    tss_2r = []
    for head, seq in fasta(up_text):
        if len(seq) != 2000:  # two records cut short by a chromosome start
            continue
        name, loc = head.split()[:2]
        chrom, span = loc.split(":")
        a, b = map(int, span.split("-"))  # 1-based inclusive
        strand = "+" if name.endswith("_f") else "-"
        if strand == "+":
            start, end, tss = b - W, b, b
        else:
            start, end, tss = a - 1, a - 1 + W, a - 2
        if chrom == "chr2R":
            tss_2r.append(tss)
            # the record is the genome there (or its reverse complement): checks the coordinates
            g = chr2r[a - 1:b]
            assert (g if strand == "+" else g.translate(COMP)[::-1]) == seq, name
        prom[chrom].append((start, end, strand, seq[-W:], name))

    def promoters(chroms):
        out = []
        for c in chroms:
            last_end = -1
            for start, end, strand, s, name in sorted(prom[c]):
                if start < last_end or not acgt(s):
                    continue
                last_end = end
                out.append((f"{name}", c, start, end, strand, s))
        return out

    rng = random.Random(SEED)
    splits = {
        "train": (promoters(TRAIN_CHROMS), 0, len(chr2r) - CHR2R_TAIL, N_TRAIN),
        "test": (promoters(TEST_CHROMS), len(chr2r) - CHR2R_TAIL, len(chr2r), N_TEST),
    }
    tss_2r.sort()
    import bisect

    def near_tss(start, end):
        i = bisect.bisect_left(tss_2r, start - TSS_MARGIN)
        return i < len(tss_2r) and tss_2r[i] < end + TSS_MARGIN

    os.makedirs(OUT, exist_ok=True)
    manifest = {
        "packages": {"r-bioc-biostrings": up_ver, "augustus-doc": chr_ver},
        "window": W, "seed": SEED, "tss_margin": TSS_MARGIN, "splits": {},
    }
    for split, (pool, lo, hi, n) in splits.items():
        if len(pool) < n:
            sys.exit(f"{split}: {len(pool)} promoter windows, {n} wanted")
        chosen = rng.sample(pool, n)
        want = Counter(gc_bin(gc(p[5])) for p in chosen)
        # background candidates: a tiling of the region at a random offset (no overlaps)
        off = rng.randrange(W)
        cands = defaultdict(list)
        for s in range(lo + off, hi - W + 1, W):
            w = chr2r[s:s + W]
            if acgt(w) and not near_tss(s, s + W):
                cands[gc_bin(gc(w))].append(s)
        bg = []
        short = 0
        for b in sorted(want):
            k = want[b]
            # take from this bin, then from the nearest bins with windows left
            for d in range(50):
                for bb in ([b] if d == 0 else [b - d, b + d]):
                    if k == 0 or bb not in cands:
                        continue
                    take = rng.sample(cands[bb], min(k, len(cands[bb])))
                    cands[bb] = [x for x in cands[bb] if x not in set(take)]
                    bg += take
                    k -= len(take)
                    if d:
                        short += len(take)
                if k == 0:
                    break
        recs = []
        for name, c, start, end, strand, s in chosen:
            recs.append((f"p_{name}", "promoter", s, f"{c}:{start}-{end}({strand})"))
        for s in bg:
            w = chr2r[s:s + W]
            strand = "+" if rng.random() < 0.5 else "-"
            if strand == "-":
                w = w.translate(COMP)[::-1]
            recs.append((f"bg_chr2R_{s}", "background", w, f"chr2R:{s}-{s + W}({strand})"))
        rng.shuffle(recs)
        path = os.path.join(OUT, f"{split}.fa")
        with open(path, "w") as f:
            for rid, lab, s, src in recs:
                f.write(f">{rid} label={lab} gc={gc(s):.3f} src={src}\n{s}\n")
        gcs = {lab: [gc(s) for _, l, s, _ in recs if l == lab] for lab in ("promoter", "background")}
        info = {
            "promoter_chroms": list(TRAIN_CHROMS if split == "train" else TEST_CHROMS),
            "promoter_pool": len(pool),
            "background_region": f"chr2R:{lo}-{hi}",
            "n": {lab: len(v) for lab, v in gcs.items()},
            "mean_gc": {lab: round(sum(v) / len(v), 4) for lab, v in gcs.items()},
            "background_from_neighbour_gc_bins": short,
        }
        manifest["splits"][split] = info
        print(f"landed: {path} ({len(recs)} records) {json.dumps(info)}", file=sys.stderr)
    # control for the chromosome confound (promoters come from other chromosomes than the
    # background): chr2R's own promoter windows, to score against the test background
    ctl = Random(SEED + 1).sample(promoters(("chr2R",)), N_TEST)
    path = os.path.join(OUT, "control_chr2R_promoters.fa")
    with open(path, "w") as f:
        for name, c, start, end, strand, s in ctl:
            f.write(f">p_{name} label=promoter gc={gc(s):.3f} src={c}:{start}-{end}({strand})\n{s}\n")
    manifest["control_chr2R_promoters"] = {"n": len(ctl), "mean_gc": round(sum(gc(x[5]) for x in ctl) / len(ctl), 4),
                                           "in_backbone_training": sum(x[3] <= len(chr2r) - CHR2R_TAIL for x in ctl)}
    print(f"landed: {path} ({len(ctl)} records)", file=sys.stderr)
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)


if __name__ == "__main__":
    main()
