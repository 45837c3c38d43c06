#!/usr/bin/env python3
"""Apply linear heads to the rows of a `train --save-features` file, without running the
backbone again: one predictions CSV per head (train --predictions layout: id,label,predicted,
p_<label>...), rows = the file's x_train rows then its x_test rows (ids train<i>, test<i>).

Usage: apply-heads.py FEATURES.safetensors HEAD.safetensors=OUT.csv [HEAD=OUT ...]

A head whose features are narrower than the file's rows reads the columns it needs: a backbone
head the first d_model (the backbone part of --with-kmers rows), a k-mer head the last ones.
Probabilities as `classify` computes them: softmax(W (x - mu) / sd + b) (linear heads only).
Why: `classify` refuses heads that read different features in one run, so scoring the same
records with a backbone head and a --with-kmers head would cost two backbone passes.
"""
import json
import sys

import numpy as np
from safetensors import safe_open


def main(feat, specs):
    with safe_open(feat, "np") as f:
        doc = json.loads(f.metadata()["dna_mamba_features"])
        x = np.concatenate([f.get_tensor("x_train"), f.get_tensor("x_test")]).astype(np.float64)
        y = np.concatenate([f.get_tensor("y_train"), f.get_tensor("y_test")])
        ntr = f.get_tensor("y_train").shape[0]
    labels = doc["labels"]
    ids = [f"train{i}" for i in range(ntr)] + [f"test{i}" for i in range(len(y) - ntr)]
    for spec in specs:
        head, out = spec.split("=", 1)
        with safe_open(head, "np") as f:
            meta = json.loads(f.metadata()["dna_mamba_head"])
            t = {k: f.get_tensor(k).astype(np.float64) for k in f.keys()}
        if meta["kind"] != "linear":
            sys.exit(f"{head}: {meta['kind']} head; only linear ones")
        if meta["labels"] != labels:
            sys.exit(f"{head}: labels {meta['labels']} differ from the file's {labels}")
        d = meta["features"]["dim"]
        cols = slice(0, d) if meta["features"]["source"] == "backbone" else slice(x.shape[1] - d, x.shape[1])
        z = (x[:, cols] - t["mu"]) / t["sd"]
        logit = z @ t["w"].T + t["b"]
        logit -= logit.max(1, keepdims=True)
        p = np.exp(logit)
        p /= p.sum(1, keepdims=True)
        with open(out, "w") as o:
            o.write("id,label,predicted," + ",".join(f"p_{l}" for l in labels) + "\n")
            for i in range(len(y)):
                o.write(f"{ids[i]},{labels[y[i]]},{labels[int(p[i].argmax())]}," + ",".join(f"{v:.7g}" for v in p[i]) + "\n")
        print(f"{out}: {len(y)} rows ({head})", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
