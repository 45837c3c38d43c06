#!/usr/bin/env python3
"""Write a random Caduceus checkpoint folder in the released layout (for benchmarks only).

usage: scripts/random-model.py OUT_DIR [--ps] [--causal] [--d-model 256] [--n-layer 16] [--seed 0]
Defaults give the public 131k shape (d_model 256, 16 layers). Weights come from the test
reference generator (tests/reference/caduceus_ref.py), so the layout is the tested one.
"""
import argparse, json, os, sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "reference"))
import caduceus_ref as R  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("--ps", action="store_true")
p.add_argument("--causal", action="store_true")
p.add_argument("--d-model", type=int, default=256)
p.add_argument("--n-layer", type=int, default=16)
p.add_argument("--seed", type=int, default=0)
a = p.parse_args()
os.makedirs(a.out, exist_ok=True)
cfg = R.make_config("random", a.d_model, a.n_layer, a.ps, not a.causal, "float32")
with open(os.path.join(a.out, "config.json"), "w") as f:
    json.dump(cfg, f, indent=2, sort_keys=True)
R.write_bytes(os.path.join(a.out, "model.safetensors"), R.st_serialize(R.to_storage(R.gen_checkpoint(cfg, a.seed), "F32")))
print(a.out)
