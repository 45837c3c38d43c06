#!/usr/bin/env bash
# One `dna-mamba embed` run on the GPU machine: the program's summary line, wall time and the
# peak GPU memory (nvidia-smi's memory.used, sampled every 100 ms; includes the CUDA context).
# usage: scripts/bench-gpu.sh NAME EMBED_ARGS...     (DNA_MAMBA=path to the binary)
name=$1; shift
B=${DNA_MAMBA:-target/release/dna-mamba}
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > /tmp/mem.$name &
mp=$!
t0=$(date +%s.%N)
"$B" embed "$@" 2> /tmp/err.$name
rc=$?
t1=$(date +%s.%N)
kill $mp; wait $mp 2>/dev/null
peak=$(sort -n /tmp/mem.$name | tail -1)
echo "BENCH $name rc=$rc wall=$(python3 -c "print(round($t1 - $t0, 3))") s peak_gpu_mem=${peak} MiB | $(grep -E 'dna-mamba:|error' /tmp/err.$name | tr '\n' ' ')"
