#!/usr/bin/env bash
# ncu sections (speed of light, occupancy, warp states, pipes, memory) of one launch each of the
# scan and conv kernels in bf16 mode; with no argument also the whole GPU test suite.
# usage: scripts/ncu-detail.sh [kernels]    (OUT: where the reports go; G: the carried folder)
G=${G:-.carry/gpu}
mkdir -p /work && [ -e /work/main ] || ln -sfn "$PWD" /work/main
for k in scan_ends scan_output conv_silu; do
  DNA_MAMBA_PROFILE_PRECISION=bf16 ncu --clock-control none -k $k -c 1 --section SpeedOfLight --section Occupancy --section WarpStateStats --section ComputeWorkloadAnalysis --section SchedulerStats --section LaunchStats --section MemoryWorkloadAnalysis \
    --metrics $(printf "smsp__average_warps_issue_stalled_%s_per_issue_active.ratio," long_scoreboard short_scoreboard mio_throttle math_pipe_throttle wait not_selected lg_throttle barrier dispatch_stall no_instruction)sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active,sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active \
    $G/cuda-tests --ignored --nocapture profile_one_layer 2>&1 | grep -vE "^\s*$|----" | grep -E "stalled|pipe_|Stall|Duration|Throughput|SM Frequency|Occupancy|Stall|Issue|Eligible|Active Warps|Pipe|Registers|Block Limit|Warp Cycles|Executed Ipc|Memory|L1|L2|DRAM|One or More|No Eligible|Busy" | head -60 > $OUT/ncu-$k.txt
done
[ "$1" = kernels ] && exit 0
$G/cuda-tests --test-threads 4 --nocapture > $OUT/tests.log 2>&1; echo "tests rc=$?"
grep -E "test result|FAILED|panicked" $OUT/tests.log
