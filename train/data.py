#!/usr/bin/env python3
"""Fetch real genomes from Debian packages and prepare the training / held-out arrays.

    python3 train/data.py fetch      # scripts/fetch-data.sh chr20 ecoli yeast lambda + extra genomes
    python3 train/data.py prepare    # -> .carry-train/{train.npz,eval.npz,manifest.json},
                                     #    tests/fixtures/default_parity/inputs.fa

Every source is a pinned Debian 12 package (see SOURCES). Training and held-out data never overlap:
whole genomes (yeast chrI+chrII, phage lambda) and the tails of every training chromosome are held out.
Bases are stored 2-bit packed (A=0 C=1 G=2 T=3) with N (and any other IUPAC code) as intervals, so the
whole training set (~97 Mb) is ~24 MB and travels to the GPU machine with the working tree.
Held-out masks (15 % of A/C/G/T positions, fixed seeds) are drawn here, so the GPU evaluation and the
k-mer baseline (train/baseline.py) score exactly the same positions.
"""

import gzip
import hashlib
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
DATA = os.environ.get("DNA_MAMBA_DATA", os.path.join(ROOT, ".data"))
CARRY = os.path.join(ROOT, ".carry-train")
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "default_parity")
EVAL_WIN = 1024
MASK_P = 0.15

# name -> (debian package, version, path inside the package, file under .data)
SOURCES = {
    "human_chr20": ("vt-examples", "0.57721+ds-3", "usr/share/doc/vt/examples/ref/20.fa.gz", "chr20.fa.gz"),
    "ecoli_k12": ("cct-examples", "1:1.0.3-1",
                  "usr/share/doc/cct/examples/sample_projects/sample_project_3/comparison_genomes/NC_000913.gbk.gz",
                  "ecoli.fa"),
    "yeast_chrI_chrII": ("gbrowse-data", "2.56+dfsg-11", "var/lib/gbrowse/databases/yeast_scaffolds/chr{1,2}.fa",
                         "yeast.fa"),
    "phage_lambda": ("bowtie2-examples", "2.5.0-3", "usr/share/doc/bowtie2/examples/reference/lambda_virus.fa.gz",
                     "lambda.fa.gz"),
    "fly_chr2R": ("augustus-doc", "3.5.0+dfsg-2", "usr/share/doc/augustus/tutorial/data/chr2R.fa", "dm3_chr2R.fa.gz"),
    "worm_chrX": ("r-bioc-bsgenome", "1.66.3-1", "usr/lib/R/site-library/BSgenome/extdata/ce2chrX.fa.gz",
                  "ce2_chrX.fa.gz"),
}
EXTRA = ("fly_chr2R", "worm_chrX")  # not in scripts/fetch-data.sh: fetched here

# Splits, 0-based half-open, in each record's coordinates. "tail:X" = last X bases of the record.
TRAIN = [  # (source, record, start, end-or-None=record end minus held-out tail)
    ("human_chr20", "20", 0, 58_025_520),
    ("ecoli_k12", None, 0, -500_000),
    ("fly_chr2R", None, 0, -2_000_000),
    ("worm_chrX", None, 0, -2_000_000),
]
HELDOUT = [  # (eval name, source, record or None = all records, start, end)
    ("human_chr20_tail5M", "human_chr20", "20", 58_025_520, None),
    ("ecoli_tail500k", "ecoli_k12", None, -500_000, None),
    ("fly_chr2R_tail2M", "fly_chr2R", None, -2_000_000, None),
    ("worm_chrX_tail2M", "worm_chrX", None, -2_000_000, None),
    ("yeast_chrI_chrII", "yeast_chrI_chrII", "*", 0, None),  # whole held-out genome (2 chromosomes)
    ("phage_lambda", "phage_lambda", None, 0, None),  # whole held-out genome
]


def sh(cmd, **kw):
    print("+", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, **kw)


def fetch():
    sh([os.path.join(ROOT, "scripts", "fetch-data.sh"), "chr20", "ecoli", "yeast", "lambda"])
    debs = os.path.join(DATA, "debs")
    os.makedirs(debs, exist_ok=True)
    for name in EXTRA:
        pkg, ver, inner, out = SOURCES[name]
        out = os.path.join(DATA, out)
        if os.path.exists(out):
            continue
        have = [f for f in os.listdir(debs) if f.startswith(pkg + "_")]
        if not have:
            dl = ["apt-get", "download", "-q"] + (["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else [])
            sh(dl + [f"{pkg}={ver}"], cwd=debs)
            have = [f for f in os.listdir(debs) if f.startswith(pkg + "_")]
        deb = os.path.join(debs, have[0])
        data = subprocess.run(f"dpkg-deb --fsys-tarfile '{deb}' | tar -xOf - './{inner}'", shell=True,
                              check=True, capture_output=True).stdout
        if not inner.endswith(".gz"):
            data = gzip.compress(data, 6, mtime=0)
        with open(out + ".part", "wb") as f:
            f.write(data)
        os.replace(out + ".part", out)
        print(f"landed: {out} ({len(data)} bytes)")


def deb_version(pkg):
    debs = os.path.join(DATA, "debs")
    f = [x for x in os.listdir(debs) if x.startswith(pkg + "_")]
    if not f:
        return None
    return subprocess.run(["dpkg-deb", "-f", os.path.join(debs, f[0]), "Version"], capture_output=True,
                          text=True).stdout.strip()


def read_fasta(path):
    op = gzip.open if path.endswith(".gz") else open
    recs, name, buf = {}, None, []
    with op(path, "rb") as f:
        for line in f:
            if line.startswith(b">"):
                if name is not None:
                    recs[name] = b"".join(buf).upper()
                name, buf = line[1:].split()[0].decode(), []
            else:
                buf.append(line.strip())
    if name is not None:
        recs[name] = b"".join(buf).upper()
    return recs


# bytes -> 2-bit code (A0 C1 G2 T3); 255 = not A/C/G/T (N or other IUPAC)
LUT = np.full(256, 255, np.uint8)
for i, ch in enumerate(b"ACGT"):
    LUT[ch] = i


def to_codes(seq_bytes):
    return LUT[np.frombuffer(seq_bytes, np.uint8)]


def pack(codes):
    """codes uint8 (0..3, 255 = N) -> (packed uint8 [ceil(n/4)], n_runs int64 [R, 2])."""
    n = len(codes)
    isn = codes == 255
    c = np.where(isn, 0, codes).astype(np.uint8)
    c = np.concatenate([c, np.zeros((-n) % 4, np.uint8)]).reshape(-1, 4)
    packed = (c[:, 0] << 6) | (c[:, 1] << 4) | (c[:, 2] << 2) | c[:, 3]
    d = np.diff(np.concatenate([[0], isn.astype(np.int8), [0]]))
    runs = np.stack([np.flatnonzero(d == 1), np.flatnonzero(d == -1)], 1).astype(np.int64)
    return packed.astype(np.uint8), runs


def unpack(packed, n, runs):
    """Inverse of pack: codes uint8 with 255 at N."""
    p = packed.astype(np.uint8)
    c = np.stack([(p >> 6) & 3, (p >> 4) & 3, (p >> 2) & 3, p & 3], 1).reshape(-1)[:n].copy()
    for s, e in runs:
        c[s:e] = 255
    return c


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def load_sources():
    genomes, info = {}, {}
    for name, (pkg, ver, inner, fname) in SOURCES.items():
        path = os.path.join(DATA, fname)
        genomes[name] = read_fasta(path)
        info[name] = {"package": pkg, "version": deb_version(pkg) or ver, "path_in_package": inner,
                      "local_file": os.path.relpath(path, ROOT), "sha256": sha256(path),
                      "records": {k: len(v) for k, v in genomes[name].items()}}
    return genomes, info


def one_record(recs, record):
    if record is None:
        assert len(recs) == 1, list(recs)
        record = next(iter(recs))
    return record, recs[record]


def resolve(lo, hi, n):
    lo = n + lo if lo < 0 else lo
    hi = n if hi is None else (n + hi if hi < 0 else hi)
    return lo, hi


def prepare():
    genomes, info = load_sources()
    os.makedirs(CARRY, exist_ok=True)
    # ---- training
    parts, segs, seg_meta, off = [], [], [], 0
    for src, rec, lo, hi in TRAIN:
        rec, seq = one_record(genomes[src], rec)
        lo, hi = resolve(lo, hi, len(seq))
        codes = to_codes(seq[lo:hi])
        parts.append(codes)
        segs.append((off, off + len(codes)))
        seg_meta.append({"source": src, "record": rec, "start": lo, "end": hi, "bases": hi - lo,
                         "N": int((codes == 255).sum())})
        off += len(codes)
    codes = np.concatenate(parts)
    packed, runs = pack(codes)
    assert np.array_equal(unpack(packed, len(codes), runs), codes)
    np.savez(os.path.join(CARRY, "train.npz"), packed=packed, n=np.int64(len(codes)), n_runs=runs,
             segs=np.array(segs, np.int64))
    # ---- held-out: windows of EVAL_WIN tiling each region (tail shorter than a window dropped)
    ev, ev_meta = {}, []
    for k, (name, src, rec, lo, hi) in enumerate(HELDOUT):
        recs = genomes[src]
        names = list(recs) if rec == "*" else [one_record(recs, rec)[0]]
        chunks, regions = [], []
        for r in names:
            seq = recs[r]
            a, b = resolve(lo, hi, len(seq))
            nwin = (b - a) // EVAL_WIN
            chunks.append(to_codes(seq[a:a + nwin * EVAL_WIN]))
            regions.append({"record": r, "start": a, "end": a + nwin * EVAL_WIN, "region_end": b})
        c = np.concatenate(chunks)
        rng = np.random.default_rng(1000 + k)
        mask = (rng.random(len(c)) < MASK_P) & (c != 255)
        p, rr = pack(c)
        ev[f"{name}.packed"], ev[f"{name}.n"], ev[f"{name}.n_runs"] = p, np.int64(len(c)), rr
        ev[f"{name}.mask"] = np.packbits(mask)
        ev_meta.append({"name": name, "source": src, "regions": regions, "windows": len(c) // EVAL_WIN,
                        "bases": len(c), "N": int((c == 255).sum()), "masked": int(mask.sum())})
    np.savez(os.path.join(CARRY, "eval.npz"), **ev)
    # ---- parity fixture inputs: held-out sequences only
    fixture_inputs(genomes)
    manifest = {"sources": info, "train_segments": seg_meta, "train_bases": int(len(codes)),
                "train_N": int((codes == 255).sum()), "eval": ev_meta, "eval_window": EVAL_WIN, "mask_p": MASK_P,
                "files": {f: sha256(os.path.join(CARRY, f)) for f in ("train.npz", "eval.npz")}}
    with open(os.path.join(CARRY, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    os.makedirs(os.path.join(ROOT, "train", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "train", "results", "data_manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    tot = sum(os.path.getsize(os.path.join(CARRY, x)) for x in os.listdir(CARRY))
    print(f"train bases {len(codes):,} (N {manifest['train_N']:,}); eval {sum(m['bases'] for m in ev_meta):,} "
          f"bases, {sum(m['masked'] for m in ev_meta):,} masked; .carry-train {tot / 1e6:.1f} MB")


def fixture_inputs(genomes):
    """3-4 held-out sequences of a few hundred to 2000 bases; one contains N."""
    chr20 = genomes["human_chr20"]["20"]
    # an N/base boundary inside the held-out chr20 tail: 1500 bases ending 1200 bases into an N run's end
    codes = to_codes(chr20[58_025_520:])
    isn = codes == 255
    d = np.flatnonzero(np.diff(isn.astype(np.int8)) == -1)  # last N of a run at d, bases from d+1
    assert len(d), "no N run in the held-out chr20 tail"
    s = 58_025_520 + int(d[0]) + 1 - 300  # 300 N then 1200 bases
    recs = [
        ("chr20_tail_with_N", chr20[s:s + 1500].decode()),
        ("lambda_10001_12000", genomes["phage_lambda"][next(iter(genomes["phage_lambda"]))][10_000:12_000].decode()),
        ("yeast_chrII_300001_300800", genomes["yeast_chrI_chrII"]["chrII"][300_000:300_800].decode()),
        ("ecoli_tail_300", genomes["ecoli_k12"][next(iter(genomes["ecoli_k12"]))][-400_000:-399_700].decode()),
    ]
    assert "N" in recs[0][1] and recs[0][1].strip("N")
    os.makedirs(FIXTURE, exist_ok=True)
    with open(os.path.join(FIXTURE, "inputs.fa"), "w") as f:
        for rid, seq in recs:
            f.write(f">{rid}\n")
            for i in range(0, len(seq), 60):
                f.write(seq[i:i + 60] + "\n")
    print(f"fixture inputs: {[(r, len(s), s.count('N')) for r, s in recs]} (chr20 window starts at {s})")


def load_train(carry=CARRY):
    z = np.load(os.path.join(carry, "train.npz"))
    return unpack(z["packed"], int(z["n"]), z["n_runs"]), z["segs"]


def load_eval(carry=CARRY):
    z = np.load(os.path.join(carry, "eval.npz"))
    out = {}
    for key in z.files:
        if key.endswith(".packed"):
            name = key[:-len(".packed")]
            n = int(z[f"{name}.n"])
            codes = unpack(z[key], n, z[f"{name}.n_runs"])
            mask = np.unpackbits(z[f"{name}.mask"])[:n].astype(bool)
            out[name] = (codes, mask)
    return out


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else "prepare"
    {"fetch": fetch, "prepare": prepare}[cmd]()
