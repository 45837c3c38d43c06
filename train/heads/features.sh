#!/usr/bin/env bash
# Backbone features vs k-mer frequencies vs both (`train --with-kmers`) on the same splits, for
# the built-in heads' tasks and the promoter task (issue 17; results in models/heads/*.md).
#
# Usage: train/heads/features.sh OUT_DIR [BIN] [MODEL]
#   BIN    the dna-mamba binary   [default: target/release/dna-mamba]
#   MODEL  the backbone folder    [default: models/default]
# Data: $DATA/heads/ from train/heads/fetch.sh, $DATA/promoters/ from train/heads/promoters.py
# (DATA=${DNA_MAMBA_DATA:-<repo>/.data}).
#
# The backbone runs once per task: `train --with-kmers --save-features`; its feature rows are
# the backbone row followed by the k-mer row (checked bit-identical to the default features'
# and to --features kmer's), so train/heads/split-features.py cuts them apart and the backbone
# head is fitted with --load-features. The k-mer head is fitted from the records directly
# (`--features kmer`), and again from the cut-out k-mer part as a check (*_kmer_cut; tasks in
# CUT_CHECK [origin promoters]: at 100,000 positions the extra k-mer fit takes long on 2 cores).
#
# The card splits are too large for a 2-core CPU (~270 bases/s through the backbone here, both
# strands, on a shared CPU: 10.5 Mb for origin, 4.6 Mb for coding), so by default they are reduced, the same
# way for all three feature sets:
#   origin:  ORIGIN_N records per label drawn from origin_train.fa (seed 7) and from
#            origin_test.fa (seed 8) [125: 500 + 500]; plus the k-mer baseline on the full
#            card split, and on the full training split with the reduced held-out one
#   coding:  --max-bases CODING_MAX_BASES [700000] with --test-fraction CODING_TEST_FRACTION
#            [0.3]: 24 training stretches of 20 kb, 10 held-out ones from the last 500 kb;
#            --max-positions CODING_MAX_POSITIONS [40000] (the card: 100000, but `train` now
#            refuses more than 1 GiB of features, and --with-kmers rows are 2,984 wide)
#   promoters: the whole split (train/heads/promoters.py)
# ORIGIN_N=0, CODING_MAX_BASES=5000000 CODING_TEST_FRACTION=0.2 give the card splits (but see
# CODING_MAX_POSITIONS).
# Each step writes OUT_DIR/<task>_<features>.{tsv,log,safetensors,pred.csv}; times go to
# OUT_DIR/times.tsv. Paired bootstrap of the differences: train/heads/compare.py on the pred.csv.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=${1:?usage: features.sh OUT_DIR [BIN] [MODEL]}
BIN=${2:-$ROOT/target/release/dna-mamba}
MODEL=${3:-$ROOT/models/default}
DATA=${DNA_MAMBA_DATA:-$ROOT/.data}
D=$DATA/heads
DEVICE=${DEVICE:-cpu}
STEPS=${STEPS:-origin coding promoters}
CUT_CHECK=${CUT_CHECK:-origin promoters}
ORIGIN_N=${ORIGIN_N:-125}
CODING_MAX_BASES=${CODING_MAX_BASES:-700000}
CODING_TEST_FRACTION=${CODING_TEST_FRACTION:-0.3}
CODING_MAX_POSITIONS=${CODING_MAX_POSITIONS:-40000}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
[ -s "$OUT/times.tsv" ] || printf 'step\twall_s\n' > "$OUT/times.tsv"

fit() { # name, then train arguments
  local name=$1; shift
  echo "== $name: train $*" >&2
  local t0=$SECONDS
  "$BIN" train "$@" -o "$OUT/$name.safetensors" --predictions "$OUT/$name.pred.csv" > "$OUT/$name.tsv" 2> "$OUT/$name.log" || { cat "$OUT/$name.log" >&2; return 1; }
  printf '%s\t%s\n' "$name" $((SECONDS - t0)) >> "$OUT/times.tsv"
  grep '^test' "$OUT/$name.tsv" >&2
  tail -1 "$OUT/$name.log" >&2
  echo "   ($((SECONDS - t0)) s)" >&2
}

three() { # task, level, then the data arguments shared by all three
  local task=$1 level=$2; shift 2
  fit "${task}_both" --level "$level" "$@" -m "$MODEL" --device "$DEVICE" --with-kmers --task "$task" \
    --save-features "$OUT/$task.both.features.safetensors"
  python3 "$ROOT/train/heads/split-features.py" "$OUT/$task.both.features.safetensors" \
    "$OUT/$task.backbone.features.safetensors" "$OUT/$task.kmer.features.safetensors"
  fit "${task}_backbone" --level "$level" --load-features "$OUT/$task.backbone.features.safetensors" --task "$task"
  fit "${task}_kmer" --level "$level" "$@" --features kmer --device "$DEVICE" --task "$task"
  if [[ " $CUT_CHECK " == *" $task "* ]]; then
    fit "${task}_kmer_cut" --level "$level" --load-features "$OUT/$task.kmer.features.safetensors" --task "$task"
    cmp <(grep '^test' "$OUT/${task}_kmer.tsv") <(grep '^test' "$OUT/${task}_kmer_cut.tsv") >&2 \
      || echo "warning: $task: --features kmer and the k-mer part of --with-kmers score differently" >&2
  fi
  [ -n "${KEEP_FEATURES:-}" ] || rm -f "$OUT/$task".*.features.safetensors  # large (coding: ~1 GB)
}

for step in $STEPS; do
  case $step in
  origin)
    if [ "$ORIGIN_N" -gt 0 ]; then
      python3 "$ROOT/train/heads/subsample.py" "$D/origin_train.fa" "$OUT/origin_train.fa" "$ORIGIN_N" 7
      python3 "$ROOT/train/heads/subsample.py" "$D/origin_test.fa" "$OUT/origin_test.fa" "$ORIGIN_N" 8
      # the k-mer baseline on the full card split, to show what the reduction costs it
      fit origin_kmer_full --level read "$D/origin_train.fa" --test "$D/origin_test.fa" --features kmer --task origin
      fit origin_kmer_fulltrain --level read "$D/origin_train.fa" --test "$OUT/origin_test.fa" --features kmer --task origin
      three origin read "$OUT/origin_train.fa" --test "$OUT/origin_test.fa"
    else
      three origin read "$D/origin_train.fa" --test "$D/origin_test.fa"
    fi
    ;;
  coding) # window 101 for all three (the card's head; the default for kmer and --with-kmers)
    three coding position "$D/coding_ecoli.fa" --bed "$D/coding_ecoli.bed" --background noncoding \
      --test-chroms ecoli_test --max-bases "$CODING_MAX_BASES" --test-fraction "$CODING_TEST_FRACTION" \
      --max-positions "$CODING_MAX_POSITIONS" --pool window:101
    ;;
  promoters)
    P=$DATA/promoters
    [ -s "$P/train.fa" ] || python3 "$ROOT/train/heads/promoters.py"
    three promoters read "$P/train.fa" --test "$P/test.fa"
    ;;
  *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
