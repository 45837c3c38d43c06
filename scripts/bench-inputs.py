#!/usr/bin/env python3
# usage: scripts/bench-inputs.py OUT_DIR  (r131k.fa, r8x131k.fa, r1m.fa, reads150_1m.fa, reads150_200k.fa; seed 7)
# Benchmark inputs: random ACGT records (seeded).
import random, sys, os
d = sys.argv[1]
os.makedirs(d, exist_ok=True)
rnd = random.Random(7)
def seq(n):
    return ''.join(rnd.choices('ACGT', k=n))
def write(name, recs):
    with open(os.path.join(d, name), 'w') as f:
        for i, n in enumerate(recs):
            f.write('>r%d\n%s\n' % (i, seq(n)))
write('r131k.fa', [131072])
write('r8x131k.fa', [131072] * 8)
write('r1m.fa', [1048576])
# reads: one random 1 Mb pool, 150-bp windows at random offsets (fast to make)
pool = seq(1 << 20)
def reads(name, n):
    with open(os.path.join(d, name), 'w') as f:
        for i in range(n):
            o = rnd.randrange(0, len(pool) - 150)
            f.write('>q%d\n%s\n' % (i, pool[o:o + 150]))
reads('reads150_1m.fa', 1_000_000)
reads('reads150_200k.fa', 200_000)
