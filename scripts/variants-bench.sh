#!/usr/bin/env bash
# score-variants measurements for BENCHMARKS-variants.md (issue 9): CPU variants/s per score on
# human chr20 with random SNVs, and real (hisat2 example) vs random substitutions on chr22.
# Needs: a release build (or DNA_MAMBA=path), python3, apt-get (for the hisat2 example), and
# scripts/fetch-data.sh chr20 (.data/chr20.fa.gz with .fai and .gzi). Data stays under .data/.
# usage: scripts/variants-bench.sh [names...]   (default: all, in this order)
#   prep                   make the VCFs (chr20 random SNVs; hisat2 example -> VCF)
#   llr_sparse llr_dense   --scores llr on 2,000 SNVs over 2 Mb / over 200 kb of chr20
#   mllr emb               --scores mllr / emb on 200 SNVs over 2 Mb of chr20
#   mllr2k emb2k all2k     --scores mllr / emb / llr,mllr,emb on the 2,000 SNVs over 2 Mb
#   hisat2_llr             --scores llr on the hisat2 SNVs + matched random substitutions
#   hisat2_mllr            --scores mllr on 200 random positions of those (real + random)
#   compare                real vs random statistics of the two hisat2 runs
# Environment: DEVICE (default cpu), PRECISION (default f32), THREADS (default: all cores),
# CHR20 (default .data/chr20.fa.gz), D (VCFs and outputs, default .data/variants).
set -euo pipefail
cd "$(dirname "$0")/.."
B=${DNA_MAMBA:-target/release/dna-mamba}
DEVICE=${DEVICE:-cpu}
PRECISION=${PRECISION:-f32}
D=${D:-.data/variants}
H=.data/hisat2
P="python3 scripts/variants-prep.py"
CHR20=${CHR20:-.data/chr20.fa.gz}
CHR20_LEN=63025520
HISAT2_VERSION=2.2.1-4+b2
mkdir -p $D $H

prep() {
    [ -f $CHR20.fai ] && [ -f $CHR20.gzi ] || { echo "needs $CHR20 (+ .fai, .gzi): scripts/fetch-data.sh chr20" >&2; exit 2; }
    # chr20 (GRCh37, chrom "20"): regions in the default model's held-out tail [58,025,520, end)
    [ -f $D/chr20_sparse.vcf ] || $P random-snvs $CHR20 20 59000000 61000000 2000 20 $D/chr20_sparse.vcf
    [ -f $D/chr20_dense.vcf ] || $P random-snvs $CHR20 20 60000000 60200000 2000 21 $D/chr20_dense.vcf
    [ -f $D/chr20_200.vcf ] || $P random-snvs $CHR20 20 59000000 61000000 200 22 $D/chr20_200.vcf
    # hisat2 example: Debian package hisat2, usr/share/doc/hisat2/examples/reference/
    if [ ! -f $H/22_20-21M.fa ]; then
        mkdir -p .data/debs
        (cd .data/debs && ls hisat2_*.deb >/dev/null 2>&1 || apt-get download "hisat2=$HISAT2_VERSION")
        dpkg-deb -x .data/debs/hisat2_*.deb $H/x
        cp $H/x/usr/share/doc/hisat2/examples/reference/22_20-21M.{fa,snp} $H/
        sha256sum .data/debs/hisat2_*.deb $H/22_20-21M.fa $H/22_20-21M.snp
    fi
    [ -f $H/22_20-21M.fa.fai ] || $B faidx $H/22_20-21M.fa
    mkdir -p $H/vcf
    [ -f $H/vcf/both.vcf ] || $P hisat2 $H/22_20-21M.fa $H/22_20-21M.snp $H/vcf 200 9
}

# run NAME VCF FASTA LEN SCORES: time one score-variants run, write $D/NAME.tsv
run() {
    local name=$1 vcf=$2 fasta=$3 len=$4 scores=$5
    local n tiles=""
    n=$(grep -vc '^#' "$vcf")
    [ "$scores" = llr ] && tiles=", reference tiles of 8,192: $($P tiles "$len" 8192 "$vcf")"
    echo "## $name: $n records$tiles"
    local cmd=("$B" score-variants --device "$DEVICE" --precision "$PRECISION" ${THREADS:+--threads $THREADS} --vcf "$vcf" --fasta "$fasta" --scores "$scores" --format tsv -o "$D/$name.tsv")
    echo "dna-mamba ${cmd[*]:1}"
    /usr/bin/time -f "wall %e s, peak RSS %M KB, CPU %P" "${cmd[@]}" 2>&1 | grep -E "dna-mamba:|wall|skipped|[Ee]rror" | tail -n 5
    echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
}

for b in ${@:-prep llr_sparse llr_dense mllr emb hisat2_llr hisat2_mllr compare}; do
    case $b in
        prep) prep ;;
        llr_sparse) run $b $D/chr20_sparse.vcf $CHR20 $CHR20_LEN llr ;;
        llr_dense) run $b $D/chr20_dense.vcf $CHR20 $CHR20_LEN llr ;;
        mllr) run $b $D/chr20_200.vcf $CHR20 $CHR20_LEN mllr ;;
        emb) run $b $D/chr20_200.vcf $CHR20 $CHR20_LEN emb ;;
        mllr2k) run $b $D/chr20_sparse.vcf $CHR20 $CHR20_LEN mllr ;;
        emb2k) run $b $D/chr20_sparse.vcf $CHR20 $CHR20_LEN emb ;;
        all2k) run $b $D/chr20_sparse.vcf $CHR20 $CHR20_LEN llr,mllr,emb ;;
        hisat2_llr) run $b $H/vcf/both.vcf $H/22_20-21M.fa 1000000 llr ;;
        hisat2_mllr) run $b $H/vcf/subset.vcf $H/22_20-21M.fa 1000000 mllr ;;
        compare)
            $P compare $D/hisat2_llr.tsv $H/vcf/real.vcf llr $H/22_20-21M.fa
            $P compare $D/hisat2_mllr.tsv $H/vcf/real.vcf mllr $H/22_20-21M.fa
            $P spearman $D/hisat2_llr.tsv llr $D/hisat2_mllr.tsv mllr
            $P spearman $D/emb.tsv cos $D/emb.tsv l2
            ;;
        *) echo "unknown benchmark $b" >&2; exit 2 ;;
    esac
done
