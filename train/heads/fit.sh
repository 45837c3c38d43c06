#!/usr/bin/env bash
# Fit the default heads on the default backbone, with the k-mer baselines on the same splits,
# and run the checks reported in the cards (models/heads/*.md).
#
# Usage: train/heads/fit.sh OUT_DIR [BIN] [MODEL]
#   BIN    the dna-mamba binary   [default: target/release/dna-mamba]
#   MODEL  the backbone folder    [default: models/default]
# Data: $DATA/heads/ from train/heads/fetch.sh (DATA=${DNA_MAMBA_DATA:-<repo>/.data}).
# Each step writes OUT_DIR/<name>.safetensors, <name>.tsv (metrics) and <name>.log (stderr).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=${1:?usage: fit.sh OUT_DIR [BIN] [MODEL]}
BIN=${2:-$ROOT/target/release/dna-mamba}
MODEL=${3:-$ROOT/models/default}
D=${DNA_MAMBA_DATA:-$ROOT/.data}/heads
DEVICE=${DEVICE:-auto}
STEPS=${STEPS:-origin origin_kmer coding coding_kmer splice splice_kmer}
# more variants: STEPS=origin_mlp, WINDOWS="1 31 101", SPLICE_POOLS="mean bins:3 bins:6"
mkdir -p "$OUT"

fit() { # name, then train arguments
  local name=$1; shift
  echo "== $name: $*" >&2
  local t0=$SECONDS
  "$BIN" train "$@" -o "$OUT/$name.safetensors" --device "$DEVICE" > "$OUT/$name.tsv" 2> "$OUT/$name.log" || { cat "$OUT/$name.log" >&2; return 1; }
  cat "$OUT/$name.tsv" >&2
  echo "   ($((SECONDS - t0)) s)" >&2
}

classify_checks() { # head name, model args...: the unseen bacterium and the real PacBio reads
  local h=$1; shift
  "$BIN" classify "$D/origin_unseen.fa" --head "$OUT/$h.safetensors" "$@" --device "$DEVICE" -o "$OUT/$h.unseen.csv" 2>> "$OUT/$h.log"
  "$BIN" classify "$D/pacbio_ecoli.fq" --head "$OUT/$h.safetensors" "$@" --device "$DEVICE" -o "$OUT/$h.pacbio.csv" 2>> "$OUT/$h.log"
}

coding_args=(--level position "$D/coding_ecoli.fa" --bed "$D/coding_ecoli.bed" --background noncoding
  --test-chroms ecoli_test --max-bases 5000000 --max-positions 100000 --task coding)

for step in $STEPS; do
  case $step in
  origin) # read level: human / bacterial / viral / fungal chunks from disjoint regions
    fit origin --level read "$D/origin_train.fa" --test "$D/origin_test.fa" -m "$MODEL" --task origin --save-features "$OUT/origin.features.safetensors"
    classify_checks origin -m "$MODEL"
    # CPU and GPU backends on the same held-out reads (the first 300)
    head -600 "$D/origin_test.fa" > "$OUT/agree.fa"
    for dev in cpu cuda; do
      "$BIN" classify "$OUT/agree.fa" --head "$OUT/origin.safetensors" -m "$MODEL" --device $dev -o "$OUT/agree.$dev.csv" 2>> "$OUT/origin.log" || true
    done
    [ -s "$OUT/agree.cuda.csv" ] && python3 "$ROOT/train/heads/report.py" --agree "$OUT/agree.cpu.csv" "$OUT/agree.cuda.csv" | tee "$OUT/agree.txt" >&2
    ;;
  origin_mlp)
    fit origin_mlp --level read "$D/origin_train.fa" --test "$D/origin_test.fa" -m "$MODEL" --task origin --kind mlp
    classify_checks origin_mlp -m "$MODEL"
    ;;
  origin_kmer)
    fit origin_kmer --level read "$D/origin_train.fa" --test "$D/origin_test.fa" --features kmer --task origin
    classify_checks origin_kmer
    ;;
  coding) # position level: E. coli K-12 CDS; held out: the last 500 kb (also held out from the backbone)
    for w in ${WINDOWS:-101}; do
      fit coding_w$w "${coding_args[@]}" -m "$MODEL" --pool window:$w
    done
    ;;
  coding_kmer)
    # 40,000 positions a side: the card's 100,000 x 2,728 k-mer features pass train's 1 GiB limit
    fit coding_kmer "${coding_args[@]/100000/40000}" --features kmer --pool window:101
    ;;
  splice) # read level: UCI splice junctions, stratified 20 % held out; bins keep coarse position
    for pool in ${SPLICE_POOLS:-bins:6 mean bins:12}; do
      fit splice_${pool/:/} "$D/splice.fa" --level read -m "$MODEL" --task splice --pool $pool
    done
    ;;
  splice_kmer)
    fit splice_kmer "$D/splice.fa" --level read --features kmer --task splice
    ;;
  *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
