#!/usr/bin/env bash
# Shell-pipeline behaviour with real tools (seqkit and bedtools from Debian, when installed):
# stdin with compression, `| head`, ids joined back, a seqkit filter feeding `embed -`.
set -uo pipefail
cd "$(dirname "$0")/.."
B=$PWD/target/release/dna-mamba
M=tests/fixtures/ph
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
pass=0 fail=0
check() { if eval "$2"; then pass=$((pass + 1)); else echo "FAILED: $1"; fail=$((fail + 1)); fi; }

# compressed input through stdin equals the file
$B embed data/reads.fq.gz -m $M -q > "$W/file.csv"
gzip -dc data/reads.fq.gz | $B embed - -m $M -q > "$W/stdin.csv"
cat data/reads.fq.gz | $B embed - -m $M -q > "$W/stdin_gz.csv"
check "plain stdin equals file" 'cmp -s "$W/file.csv" "$W/stdin.csv"'
check "gzip stdin equals file" 'cmp -s "$W/file.csv" "$W/stdin_gz.csv"'

# | head: a closed pipe is a normal exit, nothing on stderr
$B embed data/reads.fq.gz -m $M -q --pool none 2>"$W/err" | head -n 3 > /dev/null
check "broken pipe exits 0" '[ "${PIPESTATUS[0]}" -eq 0 ] && [ ! -s "$W/err" ]'

# every id comes back, in order, and joins to the input's ids
gzip -dc data/reads.fq.gz | awk 'NR % 4 == 1 { sub(/^@/, ""); print $1 }' > "$W/ids"
tail -n +2 "$W/file.csv" | cut -d, -f1 > "$W/out_ids"
check "ids join back in input order" 'cmp -s "$W/ids" "$W/out_ids"'

if command -v seqkit >/dev/null; then
    seqkit seq -m 200 data/reads.fq.gz 2>/dev/null | $B embed - -m $M -q > "$W/long.csv"
    n=$(seqkit seq -m 200 data/reads.fq.gz 2>/dev/null | seqkit stats -T | tail -1 | cut -f4)
    check "seqkit filter feeds embed -" '[ "$(($(wc -l < "$W/long.csv") - 1))" -eq "$n" ]'
else
    echo "skipping seqkit checks: seqkit not installed"
fi

if command -v bedtools >/dev/null; then
    # windows as BED (0-based half-open) are valid bedtools input and tile the sequence
    $B embed data/lambda.fa.gz -m $M -q --window 5000 | tail -n +2 | awk -F, -v OFS='\t' '{ print "lambda", $2, $3 }' > "$W/win.bed"
    covered=$(bedtools merge -i "$W/win.bed" | awk '{ s += $3 - $2 } END { print s }')
    check "bedtools reads window coordinates; they cover lambda" '[ "$covered" -eq 48502 ]'
    # classify's per-base BED6 (built-in model and coding head) is valid bedtools input,
    # and its runs tile the sequence exactly once
    gzip -dc data/lambda.fa.gz | awk 'NR == 1 { print ">lambda"; next } { printf "%s", $0 } END { print "" }' \
        | cut -c1-6000 | head -n 2 > "$W/l6k.fa"
    len=$(tail -n 1 "$W/l6k.fa" | tr -d '\n' | wc -c)
    $B classify "$W/l6k.fa" --format bed --device cpu -q > "$W/coding.bed"
    sorted=$(bedtools sort -i "$W/coding.bed" | bedtools merge -i - | awk '{ s += $3 - $2 } END { print s }')
    total=$(awk '{ s += $3 - $2 } END { print s }' "$W/coding.bed")
    check "bedtools reads classify BED; runs tile the sequence once" '[ "$sorted" -eq "$len" ] && [ "$total" -eq "$len" ]'
else
    echo "skipping bedtools checks: bedtools not installed"
fi

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
