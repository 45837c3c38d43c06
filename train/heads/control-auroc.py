#!/usr/bin/env python3
"""AUROC of control positives against the held-out negatives of a split.

Usage: control-auroc.py TEST.fa TEST_PRED.csv CONTROL.csv [POS_LABEL] [NEG_LABEL]
TEST_PRED.csv: `train --predictions` or `classify` rows of TEST.fa in its order; CONTROL.csv:
`classify` rows of the control records (all positives). Defaults: promoter, background.
For models/heads/promoters.md: chr2R's own promoters against the chr2R test background.
"""
import csv
import sys

import numpy as np


def p_col(row, lab):
    return next(c for c in row if c == f"p_{lab}" or c.endswith(f"_p_{lab}"))


def main(test_fa, test_pred, control, pos="promoter", neg="background"):
    labels = [line.split("label=")[1].split()[0] for line in open(test_fa) if line.startswith(">")]
    rows = list(csv.DictReader(open(test_pred)))
    if len(rows) != len(labels):
        sys.exit(f"{test_pred}: {len(rows)} rows, {test_fa}: {len(labels)} records")
    c = p_col(rows[0], pos)
    negs = np.array([float(r[c]) for r, l in zip(rows, labels) if l == neg])
    posv = np.array([float(r[c]) for r, l in zip(rows, labels) if l == pos])
    ctl = list(csv.DictReader(open(control)))
    cc = p_col(ctl[0], pos)
    ctlv = np.array([float(r[cc]) for r in ctl])

    def auc(p, n):
        s = np.concatenate([p, n])
        _, inv, cnt = np.unique(s, return_inverse=True, return_counts=True)
        r = (np.cumsum(cnt) - (cnt - 1) / 2)[inv]
        return (r[:len(p)].sum() - len(p) * (len(p) + 1) / 2) / (len(p) * len(n))

    print(f"test positives vs test negatives: {auc(posv, negs):.4f} (n {len(posv)} + {len(negs)})")
    print(f"control positives vs test negatives: {auc(ctlv, negs):.4f} (n {len(ctlv)} + {len(negs)})")
    print(f"mean p({pos}): test positives {posv.mean():.3f}, control {ctlv.mean():.3f}, test negatives {negs.mean():.3f}")


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5, 6):
        sys.exit(__doc__)
    main(*sys.argv[1:])
