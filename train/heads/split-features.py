#!/usr/bin/env python3
"""Split a `train --with-kmers --save-features` file into its two parts, so that the backbone
features alone and the k-mer frequencies alone can be fitted with `train --load-features`
without running the backbone again.

Usage: train/heads/split-features.py WITH_KMERS.safetensors BACKBONE_OUT.safetensors KMER_OUT.safetensors

A --with-kmers feature row is the backbone row followed by the canonical k-mer frequencies of
--k, pooled alike; checked bit-identical to `--save-features` of the default features and of
`--features kmer` on the same records (see models/heads/promoters.md). The metadata is copied,
with `features` rewritten for each part (backbone: no k; k-mer: source kmer, no backbone).
"""
import json
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

KEY = "dna_mamba_features"


def main(src, out_bb, out_km):
    with safe_open(src, "np") as f:
        doc = json.loads(f.metadata()[KEY])
        t = {k: f.get_tensor(k) for k in f.keys()}
    feat = doc["features"]
    if feat.get("source") != "backbone" or not feat.get("k"):
        sys.exit(f"{src}: not a --with-kmers feature file (features: {feat})")
    dim = feat["dim"]
    d_bb = doc["backbone"]["d_model"] * max(1, len(feat.get("layers", [])))
    # read level bins:N repeats the row per bin: then the split is per bin (not handled here)
    if feat["pooling"].startswith("bins"):
        sys.exit("bins pooling: not handled")
    for name, cols, f2 in (
        (out_bb, slice(0, d_bb), {**{k: v for k, v in feat.items() if k != "k"}, "dim": d_bb}),
        (out_km, slice(d_bb, dim), {**feat, "source": "kmer", "dim": dim - d_bb}),
    ):
        doc2 = dict(doc, features=f2)
        if f2["source"] == "kmer":
            doc2 = dict(doc2, backbone=None, context=None)
            f2.pop("layers", None)
        part = {k: (np.ascontiguousarray(v[:, cols]) if k.startswith("x_") else v) for k, v in t.items()}
        save_file(part, name, metadata={KEY: json.dumps(doc2)})
        print(f"{name}: {part['x_train'].shape[0]} training and {part['x_test'].shape[0]} held-out rows, dim {f2['dim']}", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
