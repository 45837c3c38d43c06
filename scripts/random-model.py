#!/usr/bin/env python3
"""Write a random Caduceus checkpoint folder in the released layout (for benchmarks only).

usage: scripts/random-model.py OUT_DIR [--ps] [--causal] [--plantcad] [--d-model 256] [--n-layer 16] [--seed 0]
Defaults give the public 131k shape (d_model 256, 16 layers). Weights come from the test
reference generators (tests/reference/caduceus_ref.py; with --plantcad, plantcad_ref.py: the
PlantCaduceus layout, vocab 8, tokenizer files, `backbone.` keys, PS), so the layout is the
tested one. PlantCaduceus shapes: l20 = --d-model 384 --n-layer 20, l32 = 1024 x 32.
"""
import argparse, json, os, sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "reference"))
import caduceus_ref as R  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("--ps", action="store_true")
p.add_argument("--causal", action="store_true")
p.add_argument("--plantcad", action="store_true")
p.add_argument("--d-model", type=int, default=256)
p.add_argument("--n-layer", type=int, default=16)
p.add_argument("--seed", type=int, default=0)
a = p.parse_args()
os.makedirs(a.out, exist_ok=True)
if a.plantcad:
    import plantcad_ref as P  # noqa: E402
    P.D_MODEL, P.N_LAYER, P.SEED = a.d_model, a.n_layer, a.seed
    t = P.gen()
    stored = {k: ("I64", v) if v.dtype == R.np.int64 else ("F32", v.astype(R.np.float32)) for k, v in t.items()
              if not (".mamba_rev.in_proj" in k or ".mamba_rev.out_proj" in k)}
    R.write_bytes(os.path.join(a.out, "model.safetensors"), R.st_serialize(stored))
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(P.config(), f, indent=2, sort_keys=True)
    for name, doc in zip(["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"], P.tokenizer_files()):
        with open(os.path.join(a.out, name), "w") as f:
            json.dump(doc, f, indent=2)
    print(a.out)
    sys.exit(0)
cfg = R.make_config("random", a.d_model, a.n_layer, a.ps, not a.causal, "float32")
with open(os.path.join(a.out, "config.json"), "w") as f:
    json.dump(cfg, f, indent=2, sort_keys=True)
R.write_bytes(os.path.join(a.out, "model.safetensors"), R.st_serialize(R.to_storage(R.gen_checkpoint(cfg, a.seed), "F32")))
print(a.out)
