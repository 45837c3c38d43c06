#!/usr/bin/env python3
"""Data preparation for the default heads in models/heads/ (never on the user's path).

Reads the packaged genomes and label sets fetched by train/heads/fetch.sh (under $DATA,
default <repo>/.data) and writes labelled FASTA/BED files to $DATA/heads/:

  origin_train.fa, origin_test.fa   read-level chunks labelled human / bacterial / viral / fungal
                                    (label= in headers) from disjoint regions: training chunks
                                    150-4000 bp, a third with simulated long-read errors; held-out
                                    chunks clean, 150-1000 bp
  origin_unseen.fa                  chunks of a bacterial genome used nowhere else (H. pylori G27)
  pacbio_ecoli.fq                   real E. coli K-12 PacBio reads (a seeded sample)
  coding_ecoli.fa, coding_ecoli.bed E. coli K-12 as two records (ecoli_train: the part the
                                    default backbone was trained on; ecoli_test: its held-out
                                    last 500,000 bases) with GenBank CDS as BED intervals
  splice.fa                         UCI/StatLog primate splice junctions, 3,186 x 60 nt,
                                    label=donor|acceptor|neither

Usage: python3 train/heads/prep.py [origin] [coding] [splice] [pacbio]   (default: all)
Needs: Python 3.9+, and `rdata` (pip) for splice only.
"""

import gzip
import os
import random
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("DNA_MAMBA_DATA", ROOT / ".data"))
X = DATA / "x"
OUT = DATA / "heads"

# The default backbone (models/default) trained on human chr20 [0, 58,025,520) and E. coli
# [0, 4,139,675) among others (train/results/data_manifest.json); yeast and lambda it never saw.
HUMAN_SPLIT = 58_025_520
ECOLI_SPLIT = 4_139_675


def read_fasta(path):
    """[(id, sequence)] of a plain or gzipped FASTA."""
    op = gzip.open if str(path).endswith(".gz") else open
    recs, name, parts = [], None, []
    with op(path, "rt") as f:
        for line in f:
            if line.startswith(">"):
                if name is not None:
                    recs.append((name, "".join(parts).upper()))
                name, parts = line[1:].split()[0], []
            else:
                parts.append(line.strip())
    if name is not None:
        recs.append((name, "".join(parts).upper()))
    return recs


COMP = str.maketrans("ACGTN", "TGCAN")


def revcomp(s):
    return s.translate(COMP)[::-1]


def write_fasta(path, recs, width=0):
    with open(path, "w") as f:
        for name, seq in recs:
            f.write(f">{name}\n")
            if width:
                for i in range(0, len(seq), width):
                    f.write(seq[i:i + width] + "\n")
            else:
                f.write(seq + "\n")


def landed(path):
    print(f"landed: {path} ({os.path.getsize(path)} bytes)")


def ragout(species, name):
    return X / "ragout-examples/usr/share/doc/ragout/examples" / species / "references" / name


# class -> [(genome name, path, split)] where split gives (train regions, test regions) per
# record as lists of (record, start, end); "tail20" = first 80 % train, last 20 % test.
def origin_sources():
    gasic = X / "gasic-examples/usr/share/doc/gasic/examples/genomes"
    return {
        "human": [("chr20", DATA / "chr20.fa.gz", ("at", HUMAN_SPLIT))],
        "bacterial": [
            ("ecoli_k12", DATA / "ecoli.fa", ("at", ECOLI_SPLIT)),
            ("saureus_n315", ragout("S.Aureus", "N315.fasta.gz"), ("frac", 0.8)),
            ("vcholerae_o395", ragout("V.Cholerae", "O395.fasta.gz"), ("frac", 0.8)),
        ],
        "viral": [
            ("lambda", DATA / "lambda.fa.gz", ("at", 38_000)),
            ("t7", X / "bacphlip/bacphlip-0.9.6/bacphlip/data/example_data/genome_example.fasta", ("at", 30_000)),
            ("dwv", gasic / "dwv.fasta.gz", ("train",)),
            ("vdv1", gasic / "vdv1.fasta.gz", ("test",)),
            ("phix174", X / "r-bioc-dada2/usr/lib/R/site-library/dada2/extdata/phix_genome.fa", ("test",)),
        ],
        "fungal": [
            ("yeast_chrII", DATA / "yeast.fa", ("record", "chrII")),
            ("umaydis", X / "maffilter-examples/usr/share/doc/maffilter/examples/Umaydis/Umaydis.fasta.gz", ("frac", 0.8)),
        ],
    }


def regions(recs, split):
    """(train, test): lists of (seq, start, end, record)."""
    train, test = [], []
    kind = split[0]
    for name, seq in recs:
        n = len(seq)
        if kind == "at":
            cut = min(split[1], n)
            train.append((seq, 0, cut, name))
            test.append((seq, cut, n, name))
        elif kind == "frac":
            cut = int(n * split[1])
            train.append((seq, 0, cut, name))
            test.append((seq, cut, n, name))
        elif kind == "train":
            train.append((seq, 0, n, name))
        elif kind == "test":
            test.append((seq, 0, n, name))
        elif kind == "record":
            # the named record trains; the others are held out whole
            (train if name == split[1] else test).append((seq, 0, n, name))
    return train, test


def mutate(seq, rate, rng):
    """Long-read-like errors at `rate` per base: 60 % insertions, 25 % deletions, 15 %
    substitutions (PacBio RS II raw reads are insertion-dominated)."""
    out = []
    for b in seq:
        r = rng.random()
        if r < rate * 0.6:
            out.append(rng.choice("ACGT"))
            out.append(b)
        elif r < rate * 0.85:
            continue
        elif r < rate:
            out.append(rng.choice([c for c in "ACGT" if c != b]))
        else:
            out.append(b)
    return "".join(out)


def sample_chunks(rng, pools, n, label, tag, lengths=(150, 1000), noisy=0.0):
    """n chunks from the regions of each genome in turn (equal share per genome), uniform within
    a genome's regions by length; either strand; at most 1 % non-ACGT. Lengths are uniform in
    `lengths`, or log-uniform when lengths[1] > 1000; a `noisy` fraction of chunks gets
    long-read-like errors at a rate uniform in [0, 15 %]."""
    import math

    out = []
    genomes = [g for g in pools if sum(e - s for _, s, e, _ in g[1]) >= 1000]
    for i in range(n):
        gname, regs = genomes[i % len(genomes)]
        for _ in range(1000):
            lo, hi = lengths
            if hi > 1000:
                length = int(math.exp(rng.uniform(math.log(lo), math.log(hi))))
            else:
                length = rng.randint(lo, hi)
            length = min(length, max(e - s for _, s, e, _ in regs))
            usable = [(seq, s, e, r) for seq, s, e, r in regs if e - s >= length]
            weights = [e - s - length + 1 for _, s, e, _ in usable]
            seq, s, e, rec = rng.choices(usable, weights)[0]
            start = rng.randrange(s, e - length + 1)
            chunk = seq[start:start + length]
            if sum(chunk.count(b) for b in "ACGT") >= 0.99 * length:
                break
        else:
            raise SystemExit(f"{gname}: no chunk without N found")
        strand = "+"
        if rng.random() < 0.5:
            chunk, strand = revcomp(chunk), "-"
        note = ""
        if noisy and rng.random() < noisy:
            rate = rng.uniform(0.0, 0.15)
            chunk = mutate(chunk, rate, rng)
            note = f" errors={rate:.3f}"
        out.append((f"{tag}_{label}_{i} label={label} src={gname}:{rec}:{start}-{start + length}{strand}{note}", chunk))
    return out


def origin(n_train=2000, n_test=500, seed=7):
    rng = random.Random(seed)
    train, test = [], []
    for label, genomes in origin_sources().items():
        tr_pool, te_pool = [], []
        for gname, path, split in genomes:
            recs = read_fasta(path)
            if gname == "umaydis":
                recs = [r for r in recs if len(r[1]) >= 100_000]
            tr, te = regions(recs, split)
            if tr:
                tr_pool.append((gname, tr))
            if te:
                te_pool.append((gname, te))
        # training chunks: 150-4000 bp (log-uniform), a third with long-read-like errors, so the
        # head also fits long and noisy reads; held-out chunks: clean, 150-1000 bp
        train += sample_chunks(rng, tr_pool, n_train, label, "tr", lengths=(150, 4000), noisy=1 / 3)
        test += sample_chunks(rng, te_pool, n_test, label, "te")
    OUT.mkdir(parents=True, exist_ok=True)
    write_fasta(OUT / "origin_train.fa", train)
    write_fasta(OUT / "origin_test.fa", test)
    landed(OUT / "origin_train.fa")
    landed(OUT / "origin_test.fa")
    # a bacterium used nowhere else
    hp = read_fasta(ragout("H.Pylori", "G27.fasta.gz"))
    unseen = sample_chunks(random.Random(seed + 1), [("hpylori_g27", [(s, 0, len(s), n) for n, s in hp])], 300, "bacterial", "un")
    write_fasta(OUT / "origin_unseen.fa", unseen)
    landed(OUT / "origin_unseen.fa")


def parse_location(loc):
    """Ranges (0-based half-open) of a GenBank location: join/order/complement, <, >."""
    loc = loc.replace("complement(", "").replace("join(", "").replace("order(", "").replace(")", "")
    out = []
    for part in loc.split(","):
        part = part.replace("<", "").replace(">", "").strip()
        if ".." in part:
            a, b = part.split("..")
            out.append((int(a) - 1, int(b)))
        elif part.isdigit():
            out.append((int(part) - 1, int(part)))
    return out


def genbank_cds(path):
    """(sequence, [(start, end)] of every CDS piece) of a one-record GenBank file."""
    op = gzip.open if str(path).endswith(".gz") else open
    ranges, seq = [], []
    in_features = in_origin = False
    cur = None
    with op(path, "rt") as f:
        for line in f:
            if line.startswith("FEATURES"):
                in_features = True
                continue
            if line.startswith("ORIGIN"):
                in_features, in_origin = False, True
                if cur:
                    ranges += parse_location(cur)
                    cur = None
                continue
            if in_origin:
                if line.startswith("//"):
                    break
                seq.append("".join(c for c in line if c.isalpha()))
                continue
            if in_features:
                key = line[5:21].strip()
                if key:  # a new feature
                    if cur:
                        ranges += parse_location(cur)
                    cur = line[21:].strip() if key == "CDS" else None
                elif cur is not None and not line[21:].lstrip().startswith("/"):
                    cur += line[21:].strip()  # a location continued on the next line
                elif cur is not None and line[21:].lstrip().startswith("/"):
                    ranges += parse_location(cur)
                    cur = None
    return "".join(seq).upper(), ranges


def coding():
    seq, cds = genbank_cds(DATA / "ecoli.gbk.gz")
    fa = dict(read_fasta(DATA / "ecoli.fa"))
    ref = next(iter(fa.values()))
    assert seq == ref, "GenBank and FASTA sequences differ"
    # sanity: most CDS pieces on + start with a start codon or end with a stop on -
    parts = {"ecoli_train": (0, ECOLI_SPLIT), "ecoli_test": (ECOLI_SPLIT, len(seq))}
    OUT.mkdir(parents=True, exist_ok=True)
    write_fasta(OUT / "coding_ecoli.fa", [(k, seq[a:b]) for k, (a, b) in parts.items()], width=80)
    n = 0
    with open(OUT / "coding_ecoli.bed", "w") as f:
        for s, e in sorted(cds):
            for k, (a, b) in parts.items():
                lo, hi = max(s, a), min(e, b)
                if lo < hi:
                    f.write(f"{k}\t{lo - a}\t{hi - a}\tcoding\n")
                    n += 1
    covered = bytearray(len(seq))
    for s, e in cds:
        covered[s:e] = b"\x01" * (e - s)
    print(f"{len(cds)} CDS pieces, {n} BED lines; {sum(covered) / len(seq):.1%} of bases coding")
    landed(OUT / "coding_ecoli.fa")
    landed(OUT / "coding_ecoli.bed")


def splice():
    import rdata

    df = rdata.read_rda(str(X / "r-cran-mlbench/usr/lib/R/site-library/mlbench/data/DNA.rda"))["DNA"]
    # 60 positions x 3 indicator columns: A=100, C=010, G=001, T=000 (data-sources.md)
    names = {"ei": "donor", "ie": "acceptor", "n": "neither"}
    recs = []
    cols = [c for c in df.columns if c != "Class"]
    assert len(cols) == 180
    for i, row in enumerate(df.itertuples(index=False)):
        bits = [int(str(v)) for v in row[:180]]
        seq = []
        for p in range(60):
            b = bits[3 * p:3 * p + 3]
            seq.append({(1, 0, 0): "A", (0, 1, 0): "C", (0, 0, 1): "G", (0, 0, 0): "T"}.get(tuple(b), "N"))
        label = names[str(row[180])]
        recs.append((f"splice_{i + 1} label={label}", "".join(seq)))
    donors = [s for n, s in recs if "donor" in n]
    acc = [s for n, s in recs if "acceptor" in n]
    print(f"check: GT at 31-32 in {sum(s[30:32] == 'GT' for s in donors)}/{len(donors)} donors; "
          f"AG at 29-30 in {sum(s[28:30] == 'AG' for s in acc)}/{len(acc)} acceptors")
    OUT.mkdir(parents=True, exist_ok=True)
    write_fasta(OUT / "splice.fa", recs)
    landed(OUT / "splice.fa")


def pacbio(n=200, seed=11):
    """A seeded sample of the PacBio E. coli K-12 reads (reservoir over the streamed tarball)."""
    tar_path = X / "wtdbg2-examples/usr/share/doc/wtdbg2-examples/selfSampleData.tar.gz"
    rng = random.Random(seed)
    keep = []
    with tarfile.open(tar_path) as t:
        member = next(m for m in t if m.name.endswith("pacbio_filtered.fastq"))
        f = t.extractfile(member)
        i = 0
        while True:
            h = f.readline()
            if not h:
                break
            s, p, q = f.readline(), f.readline(), f.readline()
            rec = (h + s + p + q).decode()
            if i < n:
                keep.append(rec)
            else:
                j = rng.randrange(i + 1)
                if j < n:
                    keep[j] = rec
            i += 1
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "pacbio_ecoli.fq", "w") as f:
        f.writelines(keep)
    print(f"sampled {n} of {i} PacBio reads")
    landed(OUT / "pacbio_ecoli.fq")


if __name__ == "__main__":
    todo = sys.argv[1:] or ["origin", "coding", "splice", "pacbio"]
    for t in todo:
        {"origin": origin, "coding": coding, "splice": splice, "pacbio": pacbio}[t]()
