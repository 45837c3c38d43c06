#!/usr/bin/env python3
"""Instruction mix of each kernel's loops in a SASS listing, without a GPU: for every backward
branch, the instructions from its target to it (loops of 40 or more), by opcode family.
usage: nvcc -arch=sm_90 -cubin -O3 -DD_STATE=16 -DD_CONV=4 -DD_INNER=512 -DDT_RANK=16 --std=c++17 \\
           -o /tmp/scan.cubin kernels/scan.cu && cuobjdump -sass /tmp/scan.cubin > /tmp/scan.sass
       scripts/sass-loops.py /tmp/scan.sass [KERNEL-SUBSTRING]
(nvcc 13.0 from the nvidia-cuda-nvcc wheel matches the GPU machine's NVRTC.)"""
import collections
import re
import sys

FAMILIES = ["MUFU", "FFMA", "FMUL", "FADD", "LDS", "LDG", "STG", "LDL", "STL"]
text = open(sys.argv[1]).read()
only = sys.argv[2] if len(sys.argv) > 2 else ""
for part in re.split(r"\n\s+Function : ", text)[1:]:
    name = part.split("\n", 1)[0].strip()
    if only not in name:
        continue
    ins = [(int(m.group(1), 16), m.group(2)) for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+(.*?);", part)]
    index = {a: i for i, (a, _) in enumerate(ins)}
    for i, (a, t) in enumerate(ins):
        m = re.search(r"BRA.*?0x([0-9a-f]+)", t)
        if not m or int(m.group(1), 16) >= a or int(m.group(1), 16) not in index:
            continue
        body = ins[index[int(m.group(1), 16)] : i + 1]
        if len(body) < 40:
            continue
        count = collections.Counter()
        for _, x in body:
            op = x.split()[1] if x.startswith("@") else x.split()[0]
            count[op.split(".")[0]] += 1
        mix = " ".join(f"{f} {count[f]}" for f in FAMILIES if count[f])
        print(f"{name} loop {body[0][0]:#x}-{a:#x}: {len(body)} instructions; {mix}; other {len(body) - sum(count[f] for f in FAMILIES)}")
