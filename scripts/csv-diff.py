#!/usr/bin/env python3
"""Compare two embedding CSVs with the same rows: identical ids and lengths, and the largest
absolute and relative differences of the numeric columns (the first two are id and length).
usage: scripts/csv-diff.py A.csv B.csv"""
import csv
import sys

a, b = (csv.reader(open(p)) for p in sys.argv[1:3])
head_a, head_b = next(a), next(b)
assert head_a == head_b, "headers differ"
rows = differing = 0
max_abs = max_rel = 0.0
for ra, rb in zip(a, b, strict=True):
    assert ra[:2] == rb[:2], f"row {rows}: {ra[:2]} vs {rb[:2]}"
    rows += 1
    va = [float(x) for x in ra[2:]]
    vb = [float(x) for x in rb[2:]]
    scale = max(abs(x) for x in va) or 1.0
    d = max(abs(x - y) for x, y in zip(va, vb))
    differing += d > 0
    max_abs = max(max_abs, d)
    max_rel = max(max_rel, d / scale)
print(f"{rows} rows, {differing} differ; max |diff| {max_abs:.3g}, max |diff| / row max {max_rel:.3g}")
