#!/usr/bin/env python3
"""Data prep and statistics for scripts/variants-bench.sh (standard library only).

  random-snvs FASTA CHROM START END N SEED OUT.vcf
      N random SNVs (distinct positions, 0-based half-open region START..END, only where the
      reference base is A/C/G/T; ALT uniform over the other three bases), sorted, as VCF.
  hisat2 FA SNP OUTDIR SUBSET SEED
      The hisat2 example (22_20-21M.fa + 22_20-21M.snp, HISAT2 format: id, type, chrom,
      0-based position, alt). Writes OUTDIR/real.vcf, OUTDIR/random.vcf (same positions, a
      seeded random base different from REF and from every real ALT there), OUTDIR/both.vcf
      (both records per position: one llr pass per tile serves both sets) and
      OUTDIR/subset.vcf (real + random records at SUBSET randomly chosen positions, for mllr).
      Prints the coordinate check (REF from the FASTA vs ALT, 0- and 1-based).
  tiles LEN CONTEXT VCF
      How many reference tiles score-variants runs for the llr of VCF (src/tiling.rs plan()).
  compare TSV REAL.vcf [COLUMN [FASTA]]
      Real vs random distributions of a TSV column (llr or mllr), AUROC, matched pairs, and the
      same by substitution class (and CpG context when FASTA is given).
  spearman TSV1 COL1 TSV2 COL2
      Spearman correlation of two score columns over the alleles scored in both files.
"""
import gzip
import random
import statistics
import sys


def read_fasta(path, want=None):
    """{name: sequence (upper case)} of a plain or gzip/bgzf FASTA (only `want` if given)."""
    op = gzip.open if path.endswith(".gz") else open
    seqs, name, parts = {}, None, []
    with op(path, "rt") as f:
        for line in f:
            if line.startswith(">"):
                if name is not None and (want is None or name == want):
                    seqs[name] = "".join(parts).upper()
                name, parts = line[1:].split()[0], []
            elif want is None or name == want:
                parts.append(line.strip())
    if name is not None and (want is None or name == want):
        seqs[name] = "".join(parts).upper()
    return seqs


def vcf_header(chrom, length):
    return (
        "##fileformat=VCFv4.2\n"
        f"##contig=<ID={chrom},length={length}>\n"
        "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
    )


def random_snvs(fasta, chrom, start, end, n, seed, out):
    seq = read_fasta(fasta, chrom)[chrom]
    rng = random.Random(seed)
    ok = [p for p in range(start, end) if seq[p] in "ACGT"]
    pos = sorted(rng.sample(ok, n))
    with open(out, "w") as f:
        f.write(vcf_header(chrom, len(seq)))
        for i, p in enumerate(pos):
            r = seq[p]
            a = rng.choice([b for b in "ACGT" if b != r])
            f.write(f"{chrom}\t{p + 1}\trand{i}\t{r}\t{a}\t.\t.\t.\n")
    print(f"{out}: {n} SNVs in {chrom}:{start}-{end} ({end - start} bases, {len(ok)} ACGT), seed {seed}")


def read_snp(path):
    rows = []
    with open(path) as f:
        for line in f:
            t = line.rstrip("\n").split("\t")
            rows.append((t[0], t[1], t[2], int(t[3]), t[4]))
    return rows


def hisat2(fa, snp, outdir, subset, seed):
    seqs = read_fasta(fa)
    (chrom, seq), = seqs.items()
    rows = read_snp(snp)
    single = [r for r in rows if r[1] == "single"]
    print(f"{snp}: {len(rows)} records, {len(single)} single (SNV), chrom {chrom}, {len(seq)} bases")
    # coordinate check: ALT must differ from the FASTA base at every position
    for name, off in (("0-based", 0), ("1-based", -1)):
        same = sum(1 for r in single if seq[r[3] + off] == r[4])
        nonacgt = sum(1 for r in single if seq[r[3] + off] not in "ACGT")
        print(f"  read as {name}: ALT equals the FASTA base at {same} of {len(single)}; non-ACGT FASTA base at {nonacgt}")
    by_pos = {}
    for r in single:
        by_pos.setdefault(r[3], []).append(r)
    multi = sum(1 for v in by_pos.values() if len(v) > 1)
    print(f"  {len(by_pos)} distinct positions ({multi} with more than one ALT)")
    rng = random.Random(seed)
    real, rand, dropped = [], [], 0
    for p in sorted(by_pos):
        ref = seq[p]
        alts = []
        for r in by_pos[p]:
            if r[4] not in alts and r[4] != ref:
                alts.append(r[4])
        if ref not in "ACGT" or not alts:
            continue
        choices = [b for b in "ACGT" if b != ref and b not in alts]
        if not choices:  # all three other bases are real ALTs: no matched control possible
            dropped += 1
            continue
        ids = ";".join(dict.fromkeys(r[0] for r in by_pos[p]))  # VCF forbids duplicate IDs
        real.append((p, ids, ref, ",".join(alts)))
        rand.append((p, "random", ref, rng.choice(choices)))
    print(f"  {dropped} positions dropped (every other base is a real ALT, no control possible); "
          f"{len(real)} positions, {sum(len(r[3].split(',')) for r in real)} real ALT alleles")
    pick = set(rng.sample(range(len(real)), min(subset, len(real))))
    hdr = vcf_header(chrom, len(seq))

    def write(path, recs):
        with open(path, "w") as f:
            f.write(hdr)
            for p, i, r, a in recs:
                f.write(f"{chrom}\t{p + 1}\t{i}\t{r}\t{a}\t.\t.\t.\n")
        print(f"  {path}: {len(recs)} records")

    write(f"{outdir}/real.vcf", real)
    write(f"{outdir}/random.vcf", rand)
    both = [x for pair in zip(real, rand) for x in pair]
    write(f"{outdir}/both.vcf", both)
    write(f"{outdir}/subset.vcf", [x for k, pair in enumerate(zip(real, rand)) if k in pick for x in pair])


def plan(length, context, overlap):
    """Port of src/tiling.rs plan(): (start, end, keep_start, keep_end) per tile."""
    context = max(context, 4)
    if length <= context:
        return [(0, length, 0, length)]
    c = context if (length - context) % 2 == 0 else context - 1
    ov = min(overlap, max(c - 2, 0))
    step = max(c - ov, 1)
    n = max(-(-(length - ov) // step), 2)
    if n % 2 == 0:
        n += 1
    m = (n - 1) // 2
    span = length - c
    starts = [0] * n
    for i in range(m + 1):
        starts[i] = (2 * i * span + (n - 1)) // (2 * (n - 1))
        starts[n - 1 - i] = span - starts[i]
    cuts = [0] * (n - 1)
    for i in range(m):
        cuts[i] = (starts[i + 1] + starts[i] + c) // 2
        cuts[n - 2 - i] = length - cuts[i]
    return [(starts[i], starts[i] + c, 0 if i == 0 else cuts[i - 1], length if i == n - 1 else cuts[i]) for i in range(n)]


def read_vcf_pos(path):
    with open(path) as f:
        return [int(l.split("\t")[1]) - 1 for l in f if not l.startswith("#")]


def tiles(length, context, vcf):
    t = plan(length, context, context // 4)
    pos = read_vcf_pos(vcf)
    used, cur = 0, None
    for p in pos:  # score-variants keeps one tile cached, so count changes of tile in input order
        k = next(i for i, x in enumerate(t) if x[2] <= p < x[3]) if cur is None or not (t[cur][2] <= p < t[cur][3]) else cur
        if k != cur:
            used += 1
            cur = k
    print(used)


def auroc(pos_scores, neg_scores):
    """P(score of a positive > score of a negative), ties counted 1/2 (Mann-Whitney U)."""
    allv = sorted([(v, 1) for v in pos_scores] + [(v, 0) for v in neg_scores])
    rank_sum, i = 0.0, 0
    while i < len(allv):
        j = i
        while j < len(allv) and allv[j][0] == allv[i][0]:
            j += 1
        r = (i + j + 1) / 2  # mean 1-based rank of the tie group
        rank_sum += r * sum(1 for k in range(i, j) if allv[k][1] == 1)
        i = j
    n1, n0 = len(pos_scores), len(neg_scores)
    return (rank_sum - n1 * (n1 + 1) / 2) / (n1 * n0)


TRANSITIONS = {("A", "G"), ("G", "A"), ("C", "T"), ("T", "C")}


def boot_auroc(pos, neg, n=200, seed=1):
    """Seeded bootstrap 95% interval of auroc(pos, neg), resampling each set."""
    rng = random.Random(seed)
    b = sorted(auroc([rng.choice(pos) for _ in pos], [rng.choice(neg) for _ in neg]) for _ in range(n))
    return b[int(0.025 * n)], b[int(0.975 * n) - 1]


def compare(tsv, real_vcf, column="llr", fasta=None):
    """Real vs random substitutions: distributions, AUROC, matched pairs, and strata by
    substitution class (transition / transversion) and CpG context, because the random control
    is mostly transversions while real SNVs are mostly transitions."""
    real_keys = set()
    with open(real_vcf) as f:
        for l in f:
            if not l.startswith("#"):
                t = l.split("\t")
                for a in t[4].split(","):
                    real_keys.add((int(t[1]), a))
    seq = next(iter(read_fasta(fasta).values())) if fasta else None
    rows, status = [], {}  # (pos, ref, alt, is_real, value)
    with open(tsv) as f:
        head = f.readline().rstrip("\n").split("\t")
        col = head.index(column)
        for l in f:
            t = l.rstrip("\n").split("\t")
            status[t[4]] = status.get(t[4], 0) + 1
            if t[4] == "scored":
                rows.append((int(t[1]), t[2].upper(), t[3].upper(), (int(t[1]), t[3]) in real_keys, float(t[col])))
    print(f"{tsv} [{column}]: status {status}")

    def cpg(pos1, ref):
        p = pos1 - 1
        return (ref == "C" and seq[p + 1:p + 2] == "G") or (ref == "G" and seq[p - 1:p] == "C")

    def desc(name, v):
        if len(v) < 2:
            print(f"  {name:22} n={len(v)}")
            return
        q = statistics.quantiles(v, n=4)
        print(f"  {name:22} n={len(v):5d}  mean {statistics.fmean(v):+.4f}  median {statistics.median(v):+.4f}"
              f"  IQR [{q[0]:+.4f}, {q[2]:+.4f}]  frac<0 {sum(x < 0 for x in v) / len(v):.3f}")

    def block(label, keep):
        real = [r[4] for r in rows if r[3] and keep(r)]
        rand = [r[4] for r in rows if not r[3] and keep(r)]
        print(f" {label}")
        desc("real", real)
        desc("random", rand)
        if real and rand:
            # AUROC of -score, random = positive class: the probability that a random substitution
            # scores as more disruptive (lower) than a real variant; 0.5 = no separation
            a = auroc([-x for x in rand], [-x for x in real])
            lo, hi = boot_auroc([-x for x in rand], [-x for x in real])
            print(f"  AUROC(-{column}, random vs real) = {a:.4f}  (bootstrap 95% [{lo:.4f}, {hi:.4f}])")

    ts = lambda r: (r[1], r[2]) in TRANSITIONS
    block("all alleles", lambda r: True)
    # the substitution class alone, as a score (transversion = 1, transition = 0)
    real_c = [0.0 if ts(r) else 1.0 for r in rows if r[3]]
    rand_c = [0.0 if ts(r) else 1.0 for r in rows if not r[3]]
    print(f"  transitions: real {1 - statistics.fmean(real_c):.3f}, random {1 - statistics.fmean(rand_c):.3f};"
          f" AUROC of 'is transversion' alone (no model) = {auroc(rand_c, real_c):.4f}")
    block("transitions only", ts)
    block("transversions only", lambda r: not ts(r))
    if seq:
        block("CpG sites (ref C of CG or G of CG)", lambda r: cpg(r[0], r[1]))
        block("non-CpG transitions", lambda r: ts(r) and not cpg(r[0], r[1]))
    # matched pairs: at each position the real ALT (mean over its ALTs) against the random one
    by_real, by_rand = {}, {}
    for r in rows:
        (by_real if r[3] else by_rand).setdefault(r[0], []).append(r[4])
    pairs = [(statistics.fmean(by_real[p]), statistics.fmean(by_rand[p])) for p in by_real if p in by_rand]
    if pairs:
        hi = sum(1 for a, b in pairs if a > b)
        d = [a - b for a, b in pairs]
        print(f" matched positions {len(pairs)}: real > random at {hi} ({hi / len(pairs):.3f});"
              f" mean(real - random) {statistics.fmean(d):+.4f}, median {statistics.median(d):+.4f}")


def spearman(tsv1, col1, tsv2, col2):
    """Spearman correlation of two TSV columns over the (pos, alt) rows scored in both."""
    def load(path, column):
        with open(path) as f:
            head = f.readline().rstrip("\n").split("\t")
            c = head.index(column)
            return {(t[0], t[1], t[3]): float(t[c]) for t in (l.rstrip("\n").split("\t") for l in f) if t[4] == "scored"}
    a, b = load(tsv1, col1), load(tsv2, col2)
    keys = sorted(set(a) & set(b))

    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j < len(order) and v[order[j]] == v[order[i]]:
                j += 1
            for k in range(i, j):
                r[order[k]] = (i + j - 1) / 2
            i = j
        return r
    ra, rb = ranks([a[k] for k in keys]), ranks([b[k] for k in keys])
    print(f"Spearman({col1} of {tsv1}, {col2} of {tsv2}) over {len(keys)} alleles = {statistics.correlation(ra, rb):.4f}")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "random-snvs":
        random_snvs(args[0], args[1], int(args[2]), int(args[3]), int(args[4]), int(args[5]), args[6])
    elif cmd == "hisat2":
        hisat2(args[0], args[1], args[2], int(args[3]), int(args[4]))
    elif cmd == "tiles":
        tiles(int(args[0]), int(args[1]), args[2])
    elif cmd == "spearman":
        spearman(*args)
    elif cmd == "compare":
        compare(*args)
    else:
        sys.exit(__doc__)
