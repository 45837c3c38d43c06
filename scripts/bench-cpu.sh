#!/usr/bin/env bash
# CPU benchmarks for BENCHMARKS.md: bases/s (from the summary line) and peak RSS (GNU time).
# Needs: release build, scripts/fetch-data.sh ecoli chr20, scripts/random-model.py models in .data/models.
# usage: scripts/bench-cpu.sh [names...]   (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
B=${DNA_MAMBA:-target/release/dna-mamba}
D=.data
mkdir -p $D/bench
[ -d $D/models/ph131k ] || python3 scripts/random-model.py $D/models/ph131k
[ -d $D/models/ps131k ] || python3 scripts/random-model.py $D/models/ps131k --ps
# one layer of the 131k shape: same stream memory as 16 layers (streams are per context, not per layer)
[ -d $D/models/ph_d256_l1 ] || python3 scripts/random-model.py $D/models/ph_d256_l1 --n-layer 1
[ -d $D/models/ps_d256_l1 ] || python3 scripts/random-model.py $D/models/ps_d256_l1 --ps --n-layer 1
[ -d $D/models/ph_small ] || python3 scripts/random-model.py $D/models/ph_small --d-model 32 --n-layer 2
for n in 131072 1048576; do
    [ -f $D/bench/random_$n.fa ] || python3 -c "import random,sys; random.seed($n); n=$n; sys.stdout.write('>r%d\n' % n + ''.join(random.choice('ACGT') for _ in range(n)) + '\n')" > $D/bench/random_$n.fa
done
run() {
    local name=$1; shift
    echo "## $name: dna-mamba $*"
    /usr/bin/time -f "peak RSS %M KB, wall %e s" $B "$@" -o /dev/null 2>&1 | grep -E "dna-mamba:|peak RSS"
}
all="ph131k_fwd ps131k_fwd ph1m_fwd ph1m_both ps1m_fwd ecoli_small chr20_small"
for b in ${@:-$all}; do
    case $b in
        ph131k_fwd) run $b embed $D/bench/random_131072.fa -m $D/models/ph131k --strand fwd ;;
        ps131k_fwd) run $b embed $D/bench/random_131072.fa -m $D/models/ps131k --strand fwd ;;
        ph1m_fwd) run $b embed $D/bench/random_1048576.fa -m $D/models/ph131k --strand fwd --context 1048576 ;;
        ph1m_both) run $b embed $D/bench/random_1048576.fa -m $D/models/ph131k --strand both --context 1048576 ;;
        ps1m_fwd) run $b embed $D/bench/random_1048576.fa -m $D/models/ps131k --strand fwd --context 1048576 ;;
        ps1m_both) run $b embed $D/bench/random_1048576.fa -m $D/models/ps131k --strand both --context 1048576 ;;
        ph1m_both_l1) run $b embed $D/bench/random_1048576.fa -m $D/models/ph_d256_l1 --strand both --context 1048576 ;;
        ps1m_fwd_l1) run $b embed $D/bench/random_1048576.fa -m $D/models/ps_d256_l1 --strand fwd --context 1048576 ;;
        ps1m_both_l1) run $b embed $D/bench/random_1048576.fa -m $D/models/ps_d256_l1 --strand both --context 1048576 ;;
        ph1m_fwd_l1) run $b embed $D/bench/random_1048576.fa -m $D/models/ph_d256_l1 --strand fwd --context 1048576 ;;
        ecoli_ph131k) run $b embed $D/ecoli.fa -m $D/models/ph131k --strand fwd --window 1000 ;;
        ecoli_small) run $b embed $D/ecoli.fa -m $D/models/ph_small --strand fwd --window 1000 ;;
        chr20_small) run $b embed $D/chr20.fa.gz -m $D/models/ph_small --strand fwd --window 1000 ;;
        *) echo "unknown benchmark $b" >&2; exit 2 ;;
    esac
done
