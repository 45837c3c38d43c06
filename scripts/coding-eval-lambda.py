#!/usr/bin/env python3
# The coding head on lambda (README, "Smoothing"): per-base AUROC of p(coding) against lambda's
# ORFs of >= 300 bp (ATG to stop, both strands), raw and after centred moving averages, and the
# run-length counts of BED files.
# usage: dna-mamba classify --format bedgraph data/lambda.fa.gz -o /tmp/lam.bedgraph --device cpu
#        dna-mamba classify --format bed data/lambda.fa.gz -o /tmp/lam0.bed --device cpu
#        dna-mamba classify --format bed --smooth 101 --min-run 60 data/lambda.fa.gz -o /tmp/lam1.bed --device cpu
#        python3 scripts/coding-eval-lambda.py /tmp/lam.bedgraph /tmp/lam0.bed /tmp/lam1.bed
import gzip, os, sys, numpy as np
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
seq = ''.join(l.strip() for l in gzip.open(os.path.join(root, 'data/lambda.fa.gz'), 'rt') if not l.startswith('>')).upper()
n = len(seq)
comp = str.maketrans('ACGT','TGCA')
rc = seq.translate(comp)[::-1]
stops = {'TAA','TAG','TGA'}
lab = np.zeros(n, bool)
def orfs(s, strand):
    for f in range(3):
        i = f
        while i + 3 <= len(s):
            if s[i:i+3] == 'ATG':
                j = i
                while j + 3 <= len(s) and s[j:j+3] not in stops: j += 3
                if j + 3 <= len(s) and j + 3 - i >= 300:
                    a, b = (i, j + 3) if strand > 0 else (len(s) - j - 3, len(s) - i)
                    lab[a:b] = True
                    i = j + 3; continue
            i += 3
orfs(seq, 1); orfs(rc, -1)
p = np.zeros(n)
for l in open(sys.argv[1]):
    if l.startswith('track'): continue
    c, a, b, v = l.split(); p[int(a):int(b)] = float(v)
def auroc(score, y):
    order = np.argsort(score, kind='mergesort'); r = np.empty(n); r[order] = np.arange(1, n+1)
    # ties: average ranks
    s = score[order]; i = 0
    while i < n:
        j = i
        while j + 1 < n and s[j+1] == s[i]: j += 1
        r[order[i:j+1]] = (i + j + 2) / 2; i = j + 1
    pos = y.sum(); return (r[y].sum() - pos*(pos+1)/2) / (pos * (n - pos))
print(f"lambda {n} bp, ORF(>=300bp) bases {lab.mean():.3f}")
for w in [1, 11, 51, 101, 201, 401]:
    h = w // 2; cs = np.concatenate([[0], np.cumsum(p)]); idx = np.arange(n)
    lo = np.maximum(idx - h, 0); hi = np.minimum(idx + h, n - 1)
    sm = (cs[hi + 1] - cs[lo]) / (hi - lo + 1)
    print(f"smooth {w}: per-base AUROC {auroc(sm, lab):.3f}")
for f in sys.argv[2:]:
    L = [int(l.split()[2]) - int(l.split()[1]) for l in open(f)]
    print(f, len(L), "runs; 1 bp:", sum(1 for x in L if x == 1), "; <50 bp:", sum(1 for x in L if x < 50), "; median", int(np.median(L)))
