#!/usr/bin/env bash
# GPU engine v2, stage 2 (scan instruction diet, dt_proj in the scan, bf16 norm output): tests,
# sanitizer, forward-only sweeps, CLI benchmarks and a per-kernel profile in one device call.
# Run from the repository root on the GPU machine with the carried folder G holding cuda-tests
# (cargo test --release --test cuda --no-default-features --features cuda --no-run: no built-in
# model in it) and dna-mamba.
# usage: scripts/gpu-stage2.sh G [tests] [tests80] [bench] [spec] [sanitize] [sweep] [cli] [scaling] [overlap] [ncu] [detail] [plantcad]
#   tests80   the GPU tests on the generic build (kernels compiled for sm_80, JIT-compiled by the driver)
#   plantcad  issue 16's zero-shot benchmark: random PlantCaduceus l20 / l32 models, the variants in
#             $G/pc (22_20-21M.fa + .fai, both.vcf: scripts/variants-bench.sh prep), bf16 and f32
set -o pipefail
G=$1; shift
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
# the test executable looks for its fixtures under the checkout it was built in
mkdir -p /work && [ -e /work/main ] || ln -sfn "$PWD" /work/main
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv | tee "$OUT/gpu.txt"
for step in "$@"; do case $step in
tests)
    # the whole log goes to the file; the summary is read from it afterwards (a pipe into head
    # would end the tests early)
    "$G/cuda-tests" --test-threads 4 --nocapture > "$OUT/tests.log" 2>&1
    grep -E "test result|FAILED|panicked" "$OUT/tests.log" ;;
tests80)
    DNA_MAMBA_CC=80 "$G/cuda-tests" --test-threads 4 --nocapture > "$OUT/tests80.log" 2>&1
    grep -E "test result|FAILED|panicked" "$OUT/tests80.log" ;;
plantcad)
    # PC_VCF (default both.vcf) in $G/pc; PC_SHAPES "name d_model n_layer precisions;..."; each
    # model first scores two records cold (kernels compiled, then cached), then the whole VCF
    V=$G/pc/${PC_VCF:-both.vcf}
    IFS=';' read -ra shapes <<< "${PC_SHAPES:-l20 384 20 bf16,f32;l32 1024 32 bf16,f32}"
    (grep '^#' "$V"; grep -v '^#' "$V" | head -2) > /tmp/two.vcf
    for shape in "${shapes[@]}"; do
        read -r name dm nl precs <<< "$shape"
        python3 scripts/random-model.py "/tmp/m/$name" --plantcad --d-model "$dm" --n-layer "$nl" > /dev/null
        echo "## plantcad $name ($dm x $nl): 2 records, cold start (kernel cache $(ls ~/.cache/dna-mamba/kernels 2>/dev/null | wc -l) files)"
        /usr/bin/time -f "wall %e s" "$G/dna-mamba" score-variants --device cuda --vcf /tmp/two.vcf --fasta "$G/pc/22_20-21M.fa" \
            -m "/tmp/m/$name" --scores plantcad --format tsv -o /dev/null 2>&1 | grep -E "dna-mamba:|wall|rror"
        for prec in ${precs//,/ }; do
            echo "## plantcad $name ($dm x $nl) $prec: $(grep -vc '^#' "$V") records of $(basename "$V")"
            nvidia-smi --query-gpu=memory.used --format=csv,noheader -lms 200 > "/tmp/smi-$name-$prec.txt" &
            smi=$!
            /usr/bin/time -f "wall %e s, peak RSS %M KB" "$G/dna-mamba" score-variants --device cuda --precision "$prec" \
                --vcf "$V" --fasta "$G/pc/22_20-21M.fa" -m "/tmp/m/$name" --scores plantcad --format tsv \
                -o "/tmp/plantcad-$name-$prec.tsv" 2>&1 | grep -E "dna-mamba:|wall|rror"
            kill $smi; echo "peak GPU memory: $(sort -n "/tmp/smi-$name-$prec.txt" | tail -1)"
        done
        [ -f "/tmp/plantcad-$name-bf16.tsv" ] && [ -f "/tmp/plantcad-$name-f32.tsv" ] && python3 - "/tmp/plantcad-$name-bf16.tsv" "/tmp/plantcad-$name-f32.tsv" <<'PY'
import sys
def col(p):
    rows = [l.rstrip("\n").split("\t") for l in open(p)]
    k = rows[0].index("plantcad")
    return [float(r[k]) for r in rows[1:] if r[k] != "NA"]
b, f = col(sys.argv[1]), col(sys.argv[2])
d = max(abs(x - y) for x, y in zip(b, f))
print(f"bf16 vs f32: {len(b)} scores, max |diff| {d:.3g}, f32 score range [{min(f):.3g}, {max(f):.3g}]")
PY
    done 2>&1 | tee -a "$OUT/plantcad.log" ;;
bench)
    # bench_forward on the Ph and PS shapes (DNA_MAMBA_BENCH_CASES picks the cases)
    for kind in ph ps; do
        DNA_MAMBA_BENCH_KIND=$kind "$G/cuda-tests" --ignored --nocapture bench_forward 2>&1 | grep -E "^\|"
    done | tee "$OUT/bench.log" ;;
spec)
    # the output pass's compile-time specialised kernels (the default) against the generic one
    # (DNA_MAMBA_SCAN_SPEC=0): forward alone (Ph, PS), 200,000 packed reads through embed
    python3 scripts/random-model.py /tmp/m/ph > /dev/null && python3 scripts/bench-inputs.py /tmp/d
    for v in 0 1; do
        for kind in ph ps; do
            DNA_MAMBA_SCAN_SPEC=$v DNA_MAMBA_BENCH_KIND=$kind "$G/cuda-tests" --ignored --nocapture bench_forward 2>&1 | grep -E "^\|" | sed "s/^/spec=$v /"
        done
        DNA_MAMBA_SCAN_SPEC=$v DNA_MAMBA=$G/dna-mamba scripts/bench-gpu.sh "spec$v-reads200k" /tmp/d/reads150_200k.fa -m /tmp/m/ph --strand fwd --precision bf16 -o /dev/null
    done 2>&1 | tee "$OUT/spec.log" ;;
sanitize)
    for tool in ${SANITIZE_TOOLS:-memcheck racecheck}; do
        compute-sanitizer --tool $tool "$G/cuda-tests" --test-threads 1 one_pass_scan_small_shapes 2>&1 \
            | tee "$OUT/sanitize-$tool.log" | grep -E "ERROR SUMMARY|RACECHECK SUMMARY|test result"
    done ;;
sweep)
    for st in ${SEG_SWEEP:-2048 1024 640}; do
        DNA_MAMBA_SEG_THREADS=$st "$G/cuda-tests" --ignored --nocapture bench_forward 2>&1 | grep -E "^\|"
    done | tee "$OUT/sweep.log" ;;
cli)
    python3 scripts/random-model.py /tmp/m/ph > /dev/null && python3 scripts/bench-inputs.py /tmp/d
    for prec in bf16 f32; do
        DNA_MAMBA=$G/dna-mamba scripts/bench-gpu.sh "$prec-8x131k" /tmp/d/r8x131k.fa -m /tmp/m/ph --strand fwd --precision $prec -o /dev/null
        DNA_MAMBA=$G/dna-mamba scripts/bench-gpu.sh "$prec-1m" /tmp/d/r1m.fa -m /tmp/m/ph --strand fwd --precision $prec --context 1048576 -o /dev/null
    done 2>&1 | tee "$OUT/cli.log"
    [ -n "$NO_READS" ] || DNA_MAMBA=$G/dna-mamba scripts/bench-gpu.sh bf16-reads1m /tmp/d/reads150_1m.fa -m /tmp/m/ph --strand fwd --precision bf16 -o /dev/null 2>&1 | tee -a "$OUT/cli.log" ;;
scaling)
    # the CLI's fixed and per-batch costs: 1, 2, 4, 8, 16 records of 131,072 bases (one batch
    # each), bf16; the slope is the steady per-batch time, the intercept the cold start
    python3 scripts/random-model.py /tmp/m/ph > /dev/null && python3 scripts/bench-inputs.py /tmp/d
    cat /tmp/d/r8x131k.fa /tmp/d/r8x131k.fa | awk '/^>/{print ">s" n++; next} {print}' > /tmp/d/r16x131k.fa
    for n in 1 2 4 8 16; do
        head -n $((2 * n)) /tmp/d/r16x131k.fa > /tmp/d/s$n.fa
        DNA_MAMBA=$G/dna-mamba scripts/bench-gpu.sh "bf16-${n}x131k" /tmp/d/s$n.fa -m /tmp/m/ph --strand fwd --precision ${SCALING_PRECISION:-bf16} -o /dev/null
    done 2>&1 | tee "$OUT/scaling.log" ;;
overlap)
    # embed's packed pipeline: the GPU's sums queued (DNA_MAMBA_OVERLAP=1) against copied and
    # synchronized per batch, on 200,000 and 1,000,000 150-bp reads, bf16; CSVs compared
    python3 scripts/random-model.py /tmp/m/ph > /dev/null && python3 scripts/bench-inputs.py /tmp/d
    for reads in 200k 1m; do for ov in 0 1; do
        DNA_MAMBA_OVERLAP=$ov DNA_MAMBA=$G/dna-mamba scripts/bench-gpu.sh "reads$reads-overlap$ov" /tmp/d/reads150_$reads.fa \
            -m /tmp/m/ph --strand fwd --precision bf16 -v -o /tmp/reads$reads-$ov.csv
        grep "time in" "/tmp/err.reads$reads-overlap$ov"
    done; cmp /tmp/reads$reads-0.csv /tmp/reads$reads-1.csv && echo "reads$reads: identical CSVs" || python3 scripts/csv-diff.py /tmp/reads$reads-0.csv /tmp/reads$reads-1.csv; done 2>&1 | tee "$OUT/overlap.log" ;;
ncu)
    for prec in bf16 f32; do
        DNA_MAMBA_PROFILE_PRECISION=$prec ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base \
            "$G/cuda-tests" --ignored --nocapture profile_one_layer > "/tmp/ncu-$prec.csv" 2>&1
        python3 - "/tmp/ncu-$prec.csv" <<'PY'
import csv, sys, collections
rows = [r for r in csv.reader(l for l in open(sys.argv[1]) if l.startswith('"'))]
h = rows[0]; k = h.index("Kernel Name"); v = h.index("Metric Value")
t = collections.defaultdict(float)
for r in rows[1:]:
    t[r[k].split("(")[0][:50]] += float(r[v].replace(",", "")) / 1e6
print(sys.argv[1].split("/")[-1], "total=%.3fms" % sum(t.values()))
for n, ms in sorted(t.items(), key=lambda x: -x[1]): print(f"  {ms:.3f} ms  {n}")
PY
    done 2>&1 | tee "$OUT/ncu.log" ;;
detail)
    OUT=$OUT scripts/ncu-detail.sh kernels ;;
esac; done
