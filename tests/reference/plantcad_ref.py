#!/usr/bin/env python3
"""Float64 reference fixtures for PlantCaduceus-layout checkpoints (issue 16).

Written from the issue text and /work/shared/reference/model-format.md (1.3, 1.5, 1.6, 1.7),
reusing the block math of caduceus_ref.py (independent of the Rust sources). It writes
tests/fixtures/plantcad/:

- config.json as PlantCaduceus publishes it (architectures ["Caduceus"], vocab_size 8, rcps,
  residual_in_fp32 true, the a/c/g/t complement map), tokenizer.json (WordLevel, Lowercase,
  [PAD]=0 [MASK]=1 [UNK]=2 a=3 c=4 g=5 t=6), tokenizer_config.json, special_tokens_map.json;
- model.safetensors: the base-class layout (keys start `backbone.`, no LM head, tied reverse
  projections absent); `tests/reference/torch_save.py` turns it into pytorch_model.bin files;
- inputs.fa (upper and lower case, N, an IUPAC code) and expected.safetensors: per input the
  final hidden states, the residual stream after every block (`layer{i}`: 0 = embeddings), the
  masked-LM log-probabilities over a,c,g,t, and the PlantCaduceus zero-shot scores of
  variants.tsv (window of 512 around the 0-based position p: p-255 .. p+256, N outside the
  sequence, the variant base replaced by [MASK], forward strand only, log(p_alt / p_ref) from
  the softmax over the a/c/g/t logits at the masked position).

Usage (repository root): python3 tests/reference/plantcad_ref.py   (numpy + safetensors)
"""

import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import caduceus_ref as R  # noqa: E402  (the shared block math: mamba, bimamba, rmsnorm, flips)

OUT = os.path.join(R.FIX, "plantcad")
V = 8  # 7 tokens padded to a multiple of 8
PAD, MASK, UNK = 0, 1, 2
ACGT = np.array([3, 4, 5, 6], dtype=np.int64)
COMP = np.array([0, 1, 2, 6, 5, 4, 3, 7], dtype=np.int64)
D_MODEL, N_LAYER, SEED = 32, 3, 2001
WINDOW, CENTER = 512, 255


def tokenize(seq):
    """Lowercase normalizer, then the WordLevel vocabulary; anything else is [UNK]."""
    table = {"a": 3, "c": 4, "g": 5, "t": 6}
    return np.array([table.get(ch.lower(), UNK) for ch in seq], dtype=np.int64)


def gen():
    rng = np.random.default_rng(SEED)
    D = D_MODEL
    t = {"backbone.embeddings.word_embeddings.embedding.weight": rng.normal(0, 1, (V, D)),
         "backbone.embeddings.word_embeddings.complement_map": COMP.copy()}
    for i in range(N_LAYER):
        t[f"backbone.layers.{i}.norm.weight"] = 1 + rng.normal(0, 0.1, (D,))
        pre = f"backbone.layers.{i}.mixer.submodule."
        for k, v in R.gen_mamba_params(rng, D, True).items():
            t[pre + "mamba_fwd." + k] = v
        for k, v in R.gen_mamba_params(rng, D, False).items():
            t[pre + "mamba_rev." + k] = v
    t["backbone.norm_f.weight"] = 1 + rng.normal(0, 0.1, (D,))
    return t


def load(t):
    layers = []
    for i in range(N_LAYER):
        pre = f"backbone.layers.{i}.mixer.submodule."
        lp = {"norm": t[f"backbone.layers.{i}.norm.weight"], "fwd": {}, "rev": {}}
        for k, n in R.MAMBA_KEYS.items():
            lp["fwd"][k] = t[pre + "mamba_fwd." + n]
            lp["rev"][k] = lp["fwd"][k] if k in R.TIED else t[pre + "mamba_rev." + n]
        layers.append(lp)
    return {"E": t["backbone.embeddings.word_embeddings.embedding.weight"], "layers": layers,
            "norm_f": t["backbone.norm_f.weight"], "comp": t["backbone.embeddings.word_embeddings.complement_map"]}


def forward(m, ids):
    """PS with fused add-norm (the half swap, model-format.md 1.5.4). Returns the final output
    and the residual stream after each block (`a`: the sum the next norm reads), layer 0 being
    the embedding output."""
    D = D_MODEL
    E = m["E"]
    ids_rc = m["comp"][ids[::-1]]
    h = np.concatenate([E[ids], R.flipLC(E[ids_rc])], axis=1)
    layers = [h]
    r = None
    for lp in m["layers"]:
        a = h if r is None else h + r
        if r is not None:
            layers.append(a)
        a1, a2 = a[:, :D], a[:, D:]
        r = np.concatenate([a2, a1], axis=1)
        n1 = R.rmsnorm(a2, lp["norm"])
        n2 = R.flipLC(R.rmsnorm(R.flipLC(a1), lp["norm"]))
        h = np.concatenate([R.bimamba(n1, lp, True), R.flipLC(R.bimamba(R.flipLC(n2), lp, True))], axis=1)
    a = h + r
    layers.append(a)
    a1, a2 = a[:, :D], a[:, D:]
    out = np.concatenate([R.rmsnorm(a1, m["norm_f"]), R.flipLC(R.rmsnorm(R.flipLC(a2), m["norm_f"]))], axis=1)
    return out, layers


def logits_of(m, out):
    """PS LM head with the tied embedding (the base class has no head of its own)."""
    o1, o2 = out[:, :D_MODEL], out[:, D_MODEL:]
    return o1 @ m["E"].T + R.flipC(o2) @ m["E"][m["comp"]].T


def lp_acgt(logits):
    s = logits[:, ACGT]
    mx = np.max(s, axis=1, keepdims=True)
    return s - mx - np.log(np.sum(np.exp(s - mx), axis=1, keepdims=True))


def zero_shot(m, seq, pos0, ref, alt):
    ids = np.full(WINDOW, tokenize("N")[0], dtype=np.int64)
    for j in range(WINDOW):
        p = pos0 - CENTER + j
        if 0 <= p < len(seq):
            ids[j] = tokenize(seq[p])[0]
    ids[CENTER] = MASK
    out, _ = forward(m, ids)
    lp = lp_acgt(logits_of(m, out))[CENTER]
    col = {"A": 0, "C": 1, "G": 2, "T": 3}
    return lp[col[alt]] - lp[col[ref]]


def config():
    return {
        "_name_or_path": "dna-mamba-test-fixture-plantcad",
        "architectures": ["Caduceus"],
        "auto_map": {"AutoConfig": "configuration_caduceus.CaduceusConfig", "AutoModel": "modeling_caduceus.Caduceus",
                     "AutoModelForMaskedLM": "modeling_caduceus.CaduceusForMaskedLM"},
        "bidirectional": True, "bidirectional_strategy": "add", "bidirectional_weight_tie": True,
        "complement_map": {str(k): int(COMP[k]) for k in range(V)},
        "d_model": D_MODEL, "fused_add_norm": True,
        "initializer_cfg": {"initializer_range": 0.02, "n_residuals_per_layer": 1, "rescale_prenorm_residual": True},
        "model_type": "caduceus", "n_layer": N_LAYER, "norm_epsilon": 1e-05, "pad_token_id": -100,
        "pad_vocab_size_multiple": 8, "rcps": True, "residual_in_fp32": True, "rms_norm": True,
        "ssm_cfg": {"bias": False, "conv_bias": True, "d_conv": R.D_CONV, "d_state": R.D_STATE, "dt_init": "random",
                    "dt_init_floor": 0.0001, "dt_max": 0.1, "dt_min": 0.001, "dt_rank": "auto", "dt_scale": 1.0,
                    "expand": R.EXPAND, "use_fast_path": True},
        "torch_dtype": "float32", "transformers_version": "4.38.1", "vocab_size": V,
    }


def tokenizer_files():
    specials = [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
                 "normalized": False, "special": True} for i, c in enumerate(["[PAD]", "[MASK]", "[UNK]"])]
    tok = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": specials,
           "normalizer": {"type": "Lowercase"}, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None,
           "decoder": None,
           "model": {"type": "WordLevel", "vocab": {"[PAD]": 0, "[MASK]": 1, "[UNK]": 2, "a": 3, "c": 4, "g": 5, "t": 6},
                     "unk_token": "[UNK]"}}
    # model_max_length as Hugging Face writes it when unset: the default context must apply
    tok_cfg = {"added_tokens_decoder": {str(s["id"]): {k: v for k, v in s.items() if k != "id"} for s in specials},
               "clean_up_tokenization_spaces": True, "mask_token": "[MASK]",
               "model_max_length": 1000000000000000019884624838656, "pad_token": "[PAD]",
               "tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]"}
    special_map = {"mask_token": "[MASK]", "pad_token": "[PAD]", "unk_token": "[UNK]"}
    return tok, tok_cfg, special_map


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(SEED + 1)
    bases = np.array(list("ACGT"))
    chrom = "".join(rng.choice(bases, 700))
    recs = [("one", "a"), ("mixed", "ACGTacgtNnRacgTTGa" * 2), ("chr1", chrom)]
    with open(os.path.join(OUT, "inputs.fa"), "w") as f:
        for rid, seq in recs:
            f.write(f">{rid}\n{seq}\n")
    assert list(tokenize("ACgtNR")) == [3, 4, 5, 6, 2, 2]

    t = gen()
    m = load(t)
    stored = {k: ("I64", v) if v.dtype == np.int64 else ("F32", v.astype(np.float32)) for k, v in t.items()
              if not (".mamba_rev.in_proj" in k or ".mamba_rev.out_proj" in k)}
    R.write_bytes(os.path.join(OUT, "model.safetensors"), R.st_serialize(stored))
    with open(os.path.join(OUT, "config.json"), "w") as f:
        json.dump(config(), f, indent=2, sort_keys=True)
    tok, tok_cfg, special_map = tokenizer_files()
    for name, doc in [("tokenizer.json", tok), ("tokenizer_config.json", tok_cfg), ("special_tokens_map.json", special_map)]:
        with open(os.path.join(OUT, name), "w") as f:
            json.dump(doc, f, indent=2)

    # the float32-rounded weights are what every implementation computes with
    m32 = load({k: (v.astype(np.float32).astype(np.float64) if v.dtype != np.int64 else v) for k, v in t.items()})
    expected = {}
    for rid, seq in recs:
        ids = tokenize(seq)
        out, layers = forward(m32, ids)
        expected[f"{rid}.hidden"] = ("F32", out.astype(np.float32))
        expected[f"{rid}.lp"] = ("F32", lp_acgt(logits_of(m32, out)).astype(np.float32))
        if len(ids) < 100:  # every block's stream of the short inputs (the files stay small)
            for i, a in enumerate(layers):
                expected[f"{rid}.layer{i}"] = ("F32", a.astype(np.float32))
        # self-check: PS outputs are RC-equivariant, logits(rc x)[l, v] = logits(x)[L-1-l, comp v]
        out_rc, _ = forward(m32, m32["comp"][ids[::-1]])
        lg, lg_rc = logits_of(m32, out), logits_of(m32, out_rc)
        err = np.max(np.abs(lg_rc[::-1][:, m32["comp"]] - lg)) if len(ids) else 0.0
        assert err < 1e-9, f"{rid}: RC equivariance off by {err}"

    # variants on chr1 (0-based positions), edges included: the window runs past both ends
    variants = [(0, "A", "G"), (1, "C", "T"), (254, "G", "A"), (255, "T", "C"), (350, "A", "C"), (444, "C", "G"),
                (698, "G", "T"), (699, "T", "A")]
    rows = []
    scores = []
    for pos0, _, alt in variants:
        ref = chrom[pos0]
        alt = alt if alt != ref else {"A": "C", "C": "G", "G": "T", "T": "A"}[ref]
        s = zero_shot(m32, chrom, pos0, ref, alt)
        rows.append((pos0, ref, alt, s))
        scores.append(s)
    expected["chr1.plantcad"] = ("F32", np.array(scores, dtype=np.float32))
    with open(os.path.join(OUT, "variants.tsv"), "w") as f:
        f.write("pos1\tref\talt\tscore\n")
        for pos0, ref, alt, s in rows:
            f.write(f"{pos0 + 1}\t{ref}\t{alt}\t{s:.9g}\n")
    R.write_bytes(os.path.join(OUT, "expected.safetensors"), R.st_serialize(expected))
    print(f"wrote {OUT}: {len(stored)} tensors, {len(expected)} expected arrays, {len(rows)} variants")


if __name__ == "__main__":
    main()
