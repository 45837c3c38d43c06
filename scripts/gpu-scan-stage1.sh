#!/usr/bin/env bash
# GPU engine v2, stage 1 (one-pass scan): tests, sanitizer, forward-only and CLI benchmarks in
# one device call. Run from the repository root on the GPU machine with the carried folder G
# holding cuda-tests (cargo test --release --test cuda --no-run), dna-mamba, and this
# checkout's scripts. usage: scripts/gpu-scan-stage1.sh G [tests] [sanitize] [bench] [cli] [ncu]
set -o pipefail
G=$1; shift
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
# the test executable looks for its fixtures under the worktree it was built in
mkdir -p /work && ln -sfn "$PWD" /work/wt-gpu
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv | tee "$OUT/gpu.txt"
for step in "$@"; do case $step in
tests)
    "$G/cuda-tests" --test-threads 4 --nocapture 2>&1 | tee "$OUT/tests.log" \
        | grep -E "test result|FAILED|panicked|one-pass [0-9]|skipped" ;;
sanitize)
    for tool in ${SANITIZE_TOOLS:-memcheck racecheck}; do
        compute-sanitizer --tool $tool "$G/cuda-tests" --test-threads 1 one_pass_scan_small_shapes 2>&1 \
            | tee "$OUT/sanitize-$tool.log" | grep -E "ERROR SUMMARY|RACECHECK SUMMARY|test result"
    done ;;
bench)
    "$G/cuda-tests" --ignored --nocapture bench_scan_paths 2>&1 | tee "$OUT/bench.log" | grep -E "^\||device" ;;
cli)
    python3 scripts/random-model.py /tmp/m/ph > /dev/null && python3 scripts/bench-inputs.py /tmp/d
    for scan in two-pass one-pass; do for prec in f32 bf16; do
        DNA_MAMBA_SCAN=$scan DNA_MAMBA=$G/dna-mamba scripts/bench-gpu.sh "$scan-$prec-8x131k" \
            /tmp/d/r8x131k.fa -m /tmp/m/ph --strand fwd --precision $prec -o /dev/null
        DNA_MAMBA_SCAN=$scan DNA_MAMBA=$G/dna-mamba scripts/bench-gpu.sh "$scan-$prec-1m" \
            /tmp/d/r1m.fa -m /tmp/m/ph --strand fwd --precision $prec --context 1048576 -o /dev/null
    done; done 2>&1 | tee "$OUT/cli.log" ;;
ncu)
    for run in init-two-pass init-one-pass fast-two-pass fast-one-pass; do
        DNA_MAMBA_SCAN=${run#*-} DNA_MAMBA_PROFILE_DECAY=${run%%-*} DNA_MAMBA_PROFILE_PRECISION=bf16 \
            ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base \
            "$G/cuda-tests" --ignored --nocapture profile_one_layer > "/tmp/ncu-$run.csv" 2>&1
        python3 - "/tmp/ncu-$run.csv" <<'PY'
import csv, sys, collections
rows = [r for r in csv.reader(l for l in open(sys.argv[1]) if l.startswith('"'))]
h = rows[0]; k = h.index("Kernel Name"); v = h.index("Metric Value")
t = collections.defaultdict(float)
for r in rows[1:]:
    t[r[k].split("(")[0][:60]] += float(r[v].replace(",", "")) / 1e6
print(sys.argv[1].split("/")[-1], " ".join(f"{n}={ms:.3f}ms" for n, ms in sorted(t.items(), key=lambda x: -x[1])[:4]))
PY
    done ;;
esac; done
