#!/usr/bin/env python3
"""Independent float64 reference for Caduceus (Ph / PS) and plain causal Mamba-1 stacks.

Written from /work/shared/reference/model-format.md (sections 1.2-1.7, 2.2, 2.3, 5, 6) only.
It generates small random checkpoints in the released file layout, an input FASTA, and
expected outputs, and runs self-checks (RC equivariance / invariance, scan vs step, flip vs
anti-causal reverse branch, tensor/byte counts).

Usage (from the repository root):  python3 tests/reference/caduceus_ref.py
Deterministic: fixed seeds; re-running reproduces byte-identical files.
Only numpy and the `safetensors` python package are needed.
"""

import json
import math
import os
import struct
import sys

import numpy as np
import safetensors.numpy as stnp

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
FIX = os.path.join(ROOT, "tests", "fixtures")

V = 16
D_STATE = 16
D_CONV = 4
EXPAND = 2
EPS = 1e-5
# token id -> complement id (spec §1.3); UNK 6 and N 11 map to themselves.
COMP = np.array([0, 1, 2, 3, 4, 5, 6, 10, 9, 8, 7, 11, 12, 13, 14, 15], dtype=np.int64)
ACGT = np.array([7, 8, 9, 10], dtype=np.int64)

CHECKS = []


def check(name, value, tol):
    ok = bool(value <= tol)
    CHECKS.append((name, value, tol, ok))
    print(f"  [{'PASS' if ok else 'FAIL'}] {name}: {value:.3e} (tol {tol:.0e})")
    assert ok, name


def check_true(name, cond, detail=""):
    CHECKS.append((name, 0.0 if cond else 1.0, 0.0, bool(cond)))
    print(f"  [{'PASS' if cond else 'FAIL'}] {name} {detail}")
    assert cond, name


def maxabs(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b))) if a.size else 0.0


# --------------------------------------------------------------------------------------------
# Tokenizer / FASTA
# --------------------------------------------------------------------------------------------

def tokenize(seq):
    table = {"A": 7, "C": 8, "G": 9, "T": 10, "N": 11}
    return np.array([table.get(ch, 6) for ch in seq.upper()], dtype=np.int64)


def rc_tokens(ids, comp=COMP):
    return comp[ids[::-1]]


def make_inputs():
    rng = np.random.default_rng(20240601)
    mixed = "ACGTacgtNGATTACAgattNcaRCCGGTTAAnGCAT"
    assert len(mixed) == 37 and mixed.upper().count("N") >= 2 and mixed.upper().count("R") == 1
    bases = rng.choice(list("ACGT"), size=300)
    bases[140:145] = "N"
    long_seq = "".join(bases)
    assert len(long_seq) == 300 and "NNNNN" in long_seq
    recs = [("one", "A"), ("five", "ACGTN"), ("mixed", mixed), ("long", long_seq)]
    lines = []
    for rid, seq in recs:
        lines.append(f">{rid}")
        for i in range(0, len(seq), 60):
            lines.append(seq[i:i + 60])
    text = "\n".join(lines) + "\n"
    return recs, text


# --------------------------------------------------------------------------------------------
# safetensors writer / reader (own implementation so BF16 can be written without torch)
# --------------------------------------------------------------------------------------------

DTYPE_SIZE = {"I64": 8, "F32": 4, "BF16": 2}
# safetensors sorts by dtype descending (enum order ... BF16 < F32 < I64), then by name.
DTYPE_RANK = {"BF16": 8, "F32": 11, "I64": 13}


def f32_to_bf16_bits(a):
    """Round float32 -> bfloat16 (round to nearest even). Returns uint16 bit patterns."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    u = a.view(np.uint32).astype(np.uint64)
    assert np.all(np.isfinite(a))
    rounding = ((u >> 16) & 1) + 0x7FFF
    return ((u + rounding) >> 16).astype(np.uint16)


def bf16_bits_to_f64(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def header_bytes(entries):
    """entries: list of (name, dtype, shape). Returns (header_json_padded, total_data_bytes, order)."""
    order = sorted(entries, key=lambda e: (-DTYPE_RANK[e[1]], e[0]))
    hdr = {"__metadata__": {"format": "pt"}}
    off = 0
    for name, dt, shape in order:
        n = DTYPE_SIZE[dt] * int(np.prod(shape, dtype=np.int64))
        hdr[name] = {"dtype": dt, "shape": [int(s) for s in shape], "data_offsets": [off, off + n]}
        off += n
    js = json.dumps(hdr, separators=(",", ":")).encode()
    js += b" " * ((8 - len(js) % 8) % 8)
    return js, off, order


def st_serialize(tensors):
    """tensors: dict name -> (dtype_str, np.ndarray raw storage: int64 / float32 / uint16 bits)."""
    entries = [(k, dt, arr.shape) for k, (dt, arr) in tensors.items()]
    js, total, order = header_bytes(entries)
    out = [struct.pack("<Q", len(js)), js]
    for name, dt, _ in order:
        arr = tensors[name][1]
        want = {"I64": "<i8", "F32": "<f4", "BF16": "<u2"}[dt]
        out.append(np.ascontiguousarray(arr).astype(want).tobytes())
    blob = b"".join(out)
    assert len(blob) == 8 + len(js) + total
    return blob


def st_parse(blob):
    n = struct.unpack("<Q", blob[:8])[0]
    hdr = json.loads(blob[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in hdr.items():
        if name == "__metadata__":
            continue
        s, e = info["data_offsets"]
        raw = blob[base + s:base + e]
        shape = info["shape"]
        if info["dtype"] == "F32":
            out[name] = ("F32", np.frombuffer(raw, "<f4").reshape(shape).astype(np.float64))
        elif info["dtype"] == "BF16":
            out[name] = ("BF16", bf16_bits_to_f64(np.frombuffer(raw, "<u2")).reshape(shape))
        elif info["dtype"] == "I64":
            out[name] = ("I64", np.frombuffer(raw, "<i8").reshape(shape).astype(np.int64))
        else:
            raise ValueError(info["dtype"])
    return hdr, out


def write_bytes(path, blob):
    with open(path, "wb") as f:
        f.write(blob)


# --------------------------------------------------------------------------------------------
# Math (float64)
# --------------------------------------------------------------------------------------------

def silu(v):
    return v / (1.0 + np.exp(-v))


def softplus(v):
    # threshold 20: pass-through above 20 (spec §2.2)
    return np.where(v > 20.0, v, np.log1p(np.exp(np.minimum(v, 20.0))))


def rmsnorm(v, w):
    return v / np.sqrt(np.mean(v * v, axis=-1, keepdims=True) + EPS) * w


def flipL(a):
    return a[::-1, ...]


def flipC(a):
    return a[..., ::-1]


def flipLC(a):
    return a[::-1, ::-1]


def mamba_pre(u, p):
    """in_proj split [x | z]. Returns x (pre-conv), z."""
    xz = u @ p["in_proj"].T
    di = p["in_proj"].shape[0] // 2
    return xz[:, :di], xz[:, di:]


def mamba_post(xc, z, p):
    """Given post-conv+SiLU x (L, di) and z, run x_proj/dt/scan/gate; scan left-to-right.
    Returns gated y (L, di) and final state."""
    L, di = xc.shape
    r = p["dt_proj_w"].shape[1]
    N = p["A_log"].shape[1]
    dbc = xc @ p["x_proj"].T
    dlo, Bm, Cm = dbc[:, :r], dbc[:, r:r + N], dbc[:, r + N:r + 2 * N]
    delta = softplus(dlo @ p["dt_proj_w"].T + p["dt_proj_b"])
    A = -np.exp(p["A_log"])
    h = np.zeros((di, N))
    y = np.zeros((L, di))
    for t in range(L):
        h = np.exp(delta[t][:, None] * A) * h + (delta[t] * xc[t])[:, None] * Bm[t][None, :]
        y[t] = h @ Cm[t] + p["D"] * xc[t]
    return y * silu(z), h


def causal_conv(x, p):
    L, di = x.shape
    K = p["conv_w"].shape[2]
    w = p["conv_w"][:, 0, :]  # [di, K]
    xp = np.concatenate([np.zeros((K - 1, di)), x], axis=0)  # left zero padding
    out = np.tile(p["conv_b"], (L, 1))
    for k in range(K):
        out = out + w[:, k] * xp[k:k + L]  # xp[t+k] = x[t-(K-1)+k]; tap K-1 is current step
    return silu(out)


def mamba(u, p):
    """Mamba-1 mixer (§2.2), causal, u (L, d_model)."""
    x, z = mamba_pre(u, p)
    y, _ = mamba_post(causal_conv(x, p), z, p)
    return y @ p["out_proj"].T


def mamba_with_state(u, p):
    """Prefill: returns out, conv_state [di, K] (last K pre-conv x, zero-left-padded), ssm_state."""
    x, z = mamba_pre(u, p)
    y, h = mamba_post(causal_conv(x, p), z, p)
    K = p["conv_w"].shape[2]
    di = x.shape[1]
    xp = np.concatenate([np.zeros((K, di)), x], axis=0)
    conv_state = xp[-K:].T.copy()
    return y @ p["out_proj"].T, conv_state, h


def mamba_step(u_t, conv_state, ssm_state, p):
    """One recurrent step (§2.3). u_t (d_model,). Returns out (d_model,), new states."""
    di = p["in_proj"].shape[0] // 2
    r = p["dt_proj_w"].shape[1]
    N = p["A_log"].shape[1]
    xz = p["in_proj"] @ u_t
    x, z = xz[:di], xz[di:]
    conv_state = np.roll(conv_state, -1, axis=1)
    conv_state[:, -1] = x
    x = silu(np.sum(conv_state * p["conv_w"][:, 0, :], axis=1) + p["conv_b"])
    dbc = p["x_proj"] @ x
    dlo, Bv, Cv = dbc[:r], dbc[r:r + N], dbc[r + N:r + 2 * N]
    delta = softplus(p["dt_proj_w"] @ dlo + p["dt_proj_b"])
    A = -np.exp(p["A_log"])
    ssm_state = ssm_state * np.exp(delta[:, None] * A) + (delta * x)[:, None] * Bv[None, :]
    y = ssm_state @ Cv + p["D"] * x
    y = y * silu(z)
    return p["out_proj"] @ y, conv_state, ssm_state


def mamba_anticausal(u, p):
    """The same Mamba run right-to-left in original coordinates (position l sees l..L-1):
    anti-causal conv (right zero padding, tap K-1 on the current step) and reverse-time scan."""
    x, z = mamba_pre(u, p)
    L, di = x.shape
    K = p["conv_w"].shape[2]
    w = p["conv_w"][:, 0, :]
    xp = np.concatenate([x, np.zeros((K - 1, di))], axis=0)
    xc = np.tile(p["conv_b"], (L, 1))
    for k in range(K):
        # tap k multiplies x[t + (K-1) - k]
        xc = xc + w[:, k] * xp[(K - 1 - k):(K - 1 - k) + L]
    xc = silu(xc)
    r = p["dt_proj_w"].shape[1]
    N = p["A_log"].shape[1]
    dbc = xc @ p["x_proj"].T
    dlo, Bm, Cm = dbc[:, :r], dbc[:, r:r + N], dbc[:, r + N:r + 2 * N]
    delta = softplus(dlo @ p["dt_proj_w"].T + p["dt_proj_b"])
    A = -np.exp(p["A_log"])
    h = np.zeros((di, N))
    y = np.zeros((L, di))
    for t in range(L - 1, -1, -1):
        h = np.exp(delta[t][:, None] * A) * h + (delta[t] * xc[t])[:, None] * Bm[t][None, :]
        y[t] = h @ Cm[t] + p["D"] * xc[t]
    return (y * silu(z)) @ p["out_proj"].T


def bimamba(u, lp, bidirectional):
    """§1.5.1 BiMamba, strategy 'add', literal flipL for the reverse branch."""
    out = mamba(u, lp["fwd"])
    if bidirectional:
        out = out + flipL(mamba(flipL(u), lp["rev"]))
    return out


# --------------------------------------------------------------------------------------------
# Model: load from parsed safetensors dict (tied tensors materialized), forward
# --------------------------------------------------------------------------------------------

MAMBA_KEYS = {
    "in_proj": "in_proj.weight", "conv_w": "conv1d.weight", "conv_b": "conv1d.bias",
    "x_proj": "x_proj.weight", "dt_proj_w": "dt_proj.weight", "dt_proj_b": "dt_proj.bias",
    "A_log": "A_log", "D": "D", "out_proj": "out_proj.weight",
}
TIED = ("in_proj", "out_proj")


def mixer_prefix(cfg, i):
    sub = "mixer.submodule." if cfg["rcps"] else "mixer."
    return f"caduceus.backbone.layers.{i}.{sub}"


def emb_name(cfg):
    if cfg["rcps"]:
        return "caduceus.backbone.embeddings.word_embeddings.embedding.weight"
    return "caduceus.backbone.embeddings.word_embeddings.weight"


def load_model(cfg, tensors):
    t = {k: v[1] for k, v in tensors.items()}
    m = {"cfg": cfg, "E": t[emb_name(cfg)], "norm_f": t["caduceus.backbone.norm_f.weight"], "layers": []}
    for i in range(cfg["n_layer"]):
        pre = mixer_prefix(cfg, i)
        lp = {"norm": t[f"caduceus.backbone.layers.{i}.norm.weight"], "fwd": {}, "rev": None}
        for k, n in MAMBA_KEYS.items():
            lp["fwd"][k] = t[pre + "mamba_fwd." + n]
        if cfg["bidirectional"]:
            lp["rev"] = {}
            for k, n in MAMBA_KEYS.items():
                if k in TIED:
                    assert pre + "mamba_rev." + n not in t, "tied tensor must be absent"
                    lp["rev"][k] = lp["fwd"][k]  # weight tie
                else:
                    lp["rev"][k] = t[pre + "mamba_rev." + n]
        m["layers"].append(lp)
    if cfg["rcps"]:
        m["emb_comp"] = t["caduceus.backbone.embeddings.word_embeddings.complement_map"]
        m["head_comp"] = t["lm_head.complement_map"]
    m["comp"] = np.array([cfg["complement_map"][str(k)] for k in range(V)], dtype=np.int64)
    return m


def forward_ph(m, ids):
    """§1.5.2 (also used for the causal model with a unidirectional mixer)."""
    bid = m["cfg"]["bidirectional"]
    h = m["E"][ids]
    r = None
    for lp in m["layers"]:
        a = h if r is None else h + r
        r = a
        h = bimamba(rmsnorm(a, lp["norm"]), lp, bid)
    a = h if r is None else h + r
    return rmsnorm(a, m["norm_f"])


def forward_ps(m, ids, fused=True):
    """§1.5.3 / §1.5.4 with literal flips. fused=False gives the non-fused (no swap) variant."""
    D = m["cfg"]["d_model"]
    E = m["E"]
    ids_rc = m["emb_comp"][ids[::-1]]  # rc(x)_l = comp(x_{L-1-l})
    h = np.concatenate([E[ids], flipLC(E[ids_rc])], axis=1)
    r = None
    for lp in m["layers"]:
        a = h if r is None else h + r
        a1, a2 = a[:, :D], a[:, D:]
        w = lp["norm"]
        if fused:
            r = np.concatenate([a2, a1], axis=1)
            n1 = rmsnorm(a2, w)
            n2 = flipLC(rmsnorm(flipLC(a1), w))
        else:
            r = a
            n1 = rmsnorm(a1, w)
            n2 = flipLC(rmsnorm(flipLC(a2), w))
        h = np.concatenate([bimamba(n1, lp, True), flipLC(bimamba(flipLC(n2), lp, True))], axis=1)
    a = h if r is None else h + r
    a1, a2 = a[:, :D], a[:, D:]
    return np.concatenate([rmsnorm(a1, m["norm_f"]), flipLC(rmsnorm(flipLC(a2), m["norm_f"]))], axis=1)


def forward(m, ids):
    return forward_ps(m, ids) if m["cfg"]["rcps"] else forward_ph(m, ids)


def logits_of(m, out):
    E = m["E"]
    if m["cfg"]["rcps"]:
        D = m["cfg"]["d_model"]
        o1, o2 = out[:, :D], out[:, D:]
        return o1 @ E.T + flipC(o2) @ E[m["head_comp"]].T
    return out @ E.T


def lp_acgt(logits):
    s = logits[:, ACGT]
    mx = np.max(s, axis=1, keepdims=True)
    return s - mx - np.log(np.sum(np.exp(s - mx), axis=1, keepdims=True))


def all_outputs(m, ids):
    """Everything in expected.safetensors for one sequence (float64)."""
    D = m["cfg"]["d_model"]
    comp = m["comp"]
    ids_rc = rc_tokens(ids, comp)
    out = forward(m, ids)
    logits = logits_of(m, out)
    out_rc = forward(m, ids_rc)
    logits_rc = logits_of(m, out_rc)
    if m["cfg"]["rcps"]:
        o1, o2 = out[:, :D], out[:, D:]
        rcv = flipC(o2)
        both = (o1 + rcv) / 2
    else:
        rcv = flipL(out_rc)
        both = (out + rcv) / 2
    lpf = lp_acgt(logits)
    lpr = lp_acgt(logits_rc)
    # the two strands' distributions averaged: log((p_fwd + p_rc) / 2), a distribution again
    # (issue 14, item 8); the rc strand in forward coordinates predicts the complementary base,
    # comp(b) = 3-b in A,C,G,T order
    lp_both = np.logaddexp(lpf, flipL(lpr)[:, ::-1]) - np.log(2.0)
    return {"hidden": out, "logits": logits, "both": both, "rc": rcv, "lp_both": lp_both, "lp_fwd": lpf,
            "_out_rc": out_rc, "_logits_rc": logits_rc}


# --------------------------------------------------------------------------------------------
# Random checkpoints
# --------------------------------------------------------------------------------------------

def gen_mamba_params(rng, D, with_inout):
    di = EXPAND * D
    r = math.ceil(D / 16)
    N, K = D_STATE, D_CONV
    p = {}
    if with_inout:
        p["in_proj.weight"] = rng.normal(0, 1 / math.sqrt(D), (2 * di, D))
    p["conv1d.weight"] = rng.normal(0, 0.3, (di, 1, K))
    p["conv1d.bias"] = rng.normal(0, 0.1, (di,))
    p["x_proj.weight"] = rng.normal(0, 1 / math.sqrt(di), (r + 2 * N, di))
    p["dt_proj.weight"] = rng.normal(0, r ** -0.5, (di, r))
    dt = np.exp(rng.uniform(math.log(0.001), math.log(0.1), (di,)))
    dt = np.maximum(dt, 1e-4)
    p["dt_proj.bias"] = dt + np.log(-np.expm1(-dt))  # inverse softplus
    p["A_log"] = np.log(np.arange(1, N + 1, dtype=np.float64))[None, :] + rng.normal(0, 0.1, (di, N))
    p["D"] = 1 + rng.normal(0, 0.1, (di,))
    if with_inout:
        p["out_proj.weight"] = rng.normal(0, 1 / math.sqrt(di), (D, di))
    return p


def gen_checkpoint(cfg, seed):
    """Returns dict name -> float64 / int64 array in the released layout (tied tensors absent)."""
    rng = np.random.default_rng(seed)
    D = cfg["d_model"]
    t = {emb_name(cfg): rng.normal(0, 1, (V, D))}
    for i in range(cfg["n_layer"]):
        t[f"caduceus.backbone.layers.{i}.norm.weight"] = 1 + rng.normal(0, 0.1, (D,))
        pre = mixer_prefix(cfg, i)
        for k, v in gen_mamba_params(rng, D, True).items():
            t[pre + "mamba_fwd." + k] = v
        if cfg["bidirectional"]:
            for k, v in gen_mamba_params(rng, D, False).items():
                t[pre + "mamba_rev." + k] = v
    t["caduceus.backbone.norm_f.weight"] = 1 + rng.normal(0, 0.1, (D,))
    if cfg["rcps"]:
        t["caduceus.backbone.embeddings.word_embeddings.complement_map"] = COMP.copy()
        t["lm_head.complement_map"] = COMP.copy()
    return t


def to_storage(t, float_dtype):
    out = {}
    for k, v in t.items():
        if v.dtype == np.int64:
            out[k] = ("I64", v)
        elif float_dtype == "F32":
            out[k] = ("F32", v.astype(np.float32))
        else:
            out[k] = ("BF16", f32_to_bf16_bits(v.astype(np.float32)))
    return out


def make_config(name, d_model, n_layer, rcps, bidirectional, torch_dtype):
    return {
        "_name_or_path": f"dna-mamba-test-fixture-{name}",
        "architectures": ["CaduceusForMaskedLM"],
        "auto_map": {
            "AutoConfig": "configuration_caduceus.CaduceusConfig",
            "AutoModel": "modeling_caduceus.Caduceus",
            "AutoModelForMaskedLM": "modeling_caduceus.CaduceusForMaskedLM",
            "AutoModelForSequenceClassification": "modeling_caduceus.CaduceusForSequenceClassification",
        },
        "bidirectional": bidirectional,
        "bidirectional_strategy": "add",
        "bidirectional_weight_tie": True,
        "complement_map": {str(k): int(COMP[k]) for k in range(V)},
        "d_model": d_model,
        "fused_add_norm": True,
        "initializer_cfg": {"initializer_range": 0.02, "n_residuals_per_layer": 1,
                            "rescale_prenorm_residual": True},
        "model_type": "caduceus",
        "n_layer": n_layer,
        "norm_epsilon": 1e-05,
        "pad_vocab_size_multiple": 8,
        "rcps": rcps,
        "residual_in_fp32": False,
        "rms_norm": True,
        "ssm_cfg": {"bias": False, "conv_bias": True, "d_conv": D_CONV, "d_state": D_STATE,
                    "dt_init": "random", "dt_init_floor": 0.0001, "dt_max": 0.1, "dt_min": 0.001,
                    "dt_rank": "auto", "dt_scale": 1.0, "expand": EXPAND, "use_fast_path": True},
        "torch_dtype": torch_dtype,
        "transformers_version": "4.38.1",
        "vocab_size": V,
    }


MODELS = [
    # name, d_model, n_layer, rcps, bidirectional, float dtype, seed
    ("ph", 24, 3, False, True, "F32", 1001),
    ("ps", 16, 3, True, True, "F32", 1002),
    ("causal", 16, 2, False, False, "F32", 1003),
    ("ph_bf16", 16, 2, False, True, "BF16", 1004),
    # d_inner 40: the CPU scan's channel blocks of 16 end in a partial block of 8
    ("ph_d20", 20, 2, False, True, "F32", 1005),
]


# --------------------------------------------------------------------------------------------
# Size formulas (§1.4)
# --------------------------------------------------------------------------------------------

def tensor_list(d_model, n_layer, rcps, bidirectional, dt="F32"):
    cfg = {"rcps": rcps}
    D, di, N, K = d_model, EXPAND * d_model, D_STATE, D_CONV
    r = math.ceil(D / 16)
    shapes = {"in_proj.weight": (2 * di, D), "conv1d.weight": (di, 1, K), "conv1d.bias": (di,),
              "x_proj.weight": (r + 2 * N, di), "dt_proj.weight": (di, r), "dt_proj.bias": (di,),
              "A_log": (di, N), "D": (di,), "out_proj.weight": (D, di)}
    e = [(emb_name(cfg), dt, (V, D))]
    for i in range(n_layer):
        e.append((f"caduceus.backbone.layers.{i}.norm.weight", dt, (D,)))
        pre = mixer_prefix(cfg, i)
        for k, s in shapes.items():
            e.append((pre + "mamba_fwd." + k, dt, s))
            if bidirectional and k not in ("in_proj.weight", "out_proj.weight"):
                e.append((pre + "mamba_rev." + k, dt, s))
    e.append(("caduceus.backbone.norm_f.weight", dt, (D,)))
    if rcps:
        e.append(("caduceus.backbone.embeddings.word_embeddings.complement_map", "I64", (V,)))
        e.append(("lm_head.complement_map", "I64", (V,)))
    return e


def param_count(d_model, n_layer, bidirectional):
    D, di, N, K = d_model, EXPAND * d_model, D_STATE, D_CONV
    r = math.ceil(D / 16)
    side = di * K + di + (r + 2 * N) * di + di * r + di + di * N + di
    per_layer = D + 3 * di * D + (2 * side if bidirectional else side)
    return V * D + n_layer * per_layer + D


def predicted_file_size(d_model, n_layer, rcps, bidirectional, dt="F32"):
    js, _, _ = header_bytes(tensor_list(d_model, n_layer, rcps, bidirectional, dt))
    data = DTYPE_SIZE[dt] * param_count(d_model, n_layer, bidirectional) + (2 * 8 * V if rcps else 0)
    return 8 + len(js) + data


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------

def main():
    os.makedirs(FIX, exist_ok=True)
    recs, fasta = make_inputs()
    with open(os.path.join(FIX, "inputs.fa"), "w") as f:
        f.write(fasta)
    inputs = [(rid, tokenize(seq)) for rid, seq in recs]
    assert list(tokenize("acgtnR*")) == [7, 8, 9, 10, 11, 6, 6]
    assert 6 in inputs[2][1] and np.sum(inputs[2][1] == 11) >= 2

    print("== spec size formula vs released file sizes (§1.1/§1.4)")
    check("PS-131k (256x16) predicted bytes vs 30,937,760",
          abs(predicted_file_size(256, 16, True, True) - 30937760), 0)
    check("Ph-1k (256x4) predicted bytes vs 7,746,792", abs(predicted_file_size(256, 4, False, True) - 7746792), 0)
    check("params 16x256 tied == 7,725,312", abs(param_count(256, 16, True) - 7725312), 0)
    check("params 4x256 tied == 1,934,592", abs(param_count(256, 4, True) - 1934592), 0)

    models = {}
    for name, d_model, n_layer, rcps, bid, fdt, seed in MODELS:
        print(f"== model {name}: d_model {d_model}, n_layer {n_layer}, rcps {rcps}, bidirectional {bid}, {fdt}")
        d = os.path.join(FIX, name)
        os.makedirs(d, exist_ok=True)
        cfg = make_config(name, d_model, n_layer, rcps, bid, "bfloat16" if fdt == "BF16" else "float32")
        with open(os.path.join(d, "config.json"), "w") as f:
            f.write(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        raw = gen_checkpoint(cfg, seed)
        store = to_storage(raw, fdt)
        blob = st_serialize(store)
        write_bytes(os.path.join(d, "model.safetensors"), blob)

        # --- checks on the file itself
        with open(os.path.join(d, "model.safetensors"), "rb") as f:
            blob2 = f.read()
        hdr, tensors = st_parse(blob2)
        ntens = len(tensors)
        if rcps:
            want_n = 2 + 17 * n_layer + 2
        elif bid:
            want_n = 1 + 17 * n_layer + 1
        else:
            want_n = 1 + 10 * n_layer + 1  # causal: emb, per layer norm + 9 mamba_fwd tensors, norm_f
        check(f"{name}: tensor count {ntens} == {want_n}", abs(ntens - want_n), 0)
        check(f"{name}: file bytes {len(blob2)} == formula {predicted_file_size(d_model, n_layer, rcps, bid, fdt)}",
              abs(len(blob2) - predicted_file_size(d_model, n_layer, rcps, bid, fdt)), 0)
        absent = [k for k in tensors if ".mamba_rev.in_proj" in k or ".mamba_rev.out_proj" in k or "lm_head.weight" in k
                  or k == "lm_head.lm_head.weight"]
        check_true(f"{name}: tied tensors absent", not absent)
        if fdt == "F32":
            ref_blob = stnp.save({k: v for k, (dt_, v) in store.items()}, metadata={"format": "pt"})
            check_true(f"{name}: own writer byte-identical to safetensors.numpy.save", ref_blob == blob2)
            loaded = stnp.load_file(os.path.join(d, "model.safetensors"))
            check(f"{name}: safetensors.numpy.load_file round trip",
                  max(maxabs(loaded[k], tensors[k][1]) for k in loaded), 0)
        else:
            check_true(f"{name}: all float tensors BF16",
                       all(v[0] == "BF16" for v in tensors.values()))
            rd = max(float(np.max(np.abs(tensors[k][1] - raw[k]) / (np.abs(raw[k]) + 1e-30))) for k in raw)
            check(f"{name}: bf16 relative rounding error of stored weights", rd, 2 ** -8)
        m = load_model(cfg, tensors)
        models[name] = m

        # --- expected outputs
        exp = {}
        per = {}
        for rid, ids in inputs:
            o = all_outputs(m, ids)
            per[rid] = o
            for k in ("hidden", "logits", "both", "rc", "lp_both", "lp_fwd"):
                exp[f"{k}.{rid}"] = np.ascontiguousarray(o[k], dtype=np.float32)
        write_bytes(os.path.join(d, "expected.safetensors"), stnp.save(exp, metadata={"format": "pt"}))

        # --- per-model self checks
        for rid, ids in inputs:
            L = len(ids)
            o = per[rid]
            W = 2 * d_model if rcps else d_model
            assert o["hidden"].shape == (L, W) and o["logits"].shape == (L, V)
            assert o["both"].shape == (L, d_model) and o["rc"].shape == (L, d_model)
            assert o["lp_both"].shape == (L, 4) and o["lp_fwd"].shape == (L, 4)
            assert all(np.all(np.isfinite(v)) for v in o.values())
            ids_rc = rc_tokens(ids, m["comp"])
            o_rc = all_outputs(m, ids_rc)
            check(f"{name}/{rid}: both RC-invariant both(rc x)[l]==both(x)[L-1-l]",
                  maxabs(o_rc["both"], flipL(o["both"])), 1e-10)
            check(f"{name}/{rid}: lp_both RC-invariant lp_both(rc x)[l,b]==lp_both(x)[L-1-l,comp b]",
                  maxabs(o_rc["lp_both"], flipL(o["lp_both"])[:, ::-1]), 1e-10)
            check(f"{name}/{rid}: lp rows normalized",
                  float(np.max(np.abs(np.log(np.sum(np.exp(o["lp_fwd"]), axis=1))))), 1e-12)
            check(f"{name}/{rid}: lp_both rows normalized",
                  float(np.max(np.abs(np.log(np.sum(np.exp(o["lp_both"]), axis=1))))), 1e-12)
            if rcps:
                check(f"{name}/{rid}: PS out(rc x) == flipLC_2D(out(x))",
                      maxabs(o["_out_rc"], flipLC(o["hidden"])), 1e-10)
                check(f"{name}/{rid}: PS logits(rc x)[l,v] == logits(x)[L-1-l,comp v]",
                      maxabs(o["_logits_rc"], flipL(o["logits"])[:, m["head_comp"]]), 1e-10)
        # non-degeneracy
        h = per["long"]["hidden"]
        lg = per["long"]["logits"]
        print(f"  info {name}/long: hidden std {h.std():.3f}, logits std {lg.std():.3f}, "
              f"lp_fwd range [{per['long']['lp_fwd'].min():.2f}, {per['long']['lp_fwd'].max():.2f}], "
              f"|both-hidden[:, :D]| max {np.max(np.abs(per['long']['both'] - h[:, :d_model])):.3f}")
        check_true(f"{name}: outputs non-degenerate (std hidden > 0.3, logits vary by position)",
                   h.std() > 0.3 and np.std(lg, axis=0).min() > 0.05)
        check_true(f"{name}: fwd and rc views differ (strand averaging non-trivial)",
                   np.max(np.abs(per["long"]["rc"] - h[:, :d_model])) > 0.1)

        # causality / bidirectionality probe: change the last token of 'long'
        ids = inputs[3][1].copy()
        ids2 = ids.copy()
        ids2[-1] = 7 if ids2[-1] != 7 else 8
        d0 = np.max(np.abs(forward(m, ids)[:-1] - forward(m, ids2)[:-1]))
        if bid:
            check_true(f"{name}: changing the last token changes earlier positions ({d0:.2e})", d0 > 1e-6)
        else:
            check(f"{name}: causal - changing the last token leaves earlier positions unchanged", d0, 0)

    # ---- PS: fused (swap) vs non-fused differ, both equivariant
    print("== PS fused vs non-fused (§1.5.4)")
    m = models["ps"]
    ids = inputs[2][1]
    a = forward_ps(m, ids, True)
    b = forward_ps(m, ids, False)
    rel = np.linalg.norm(a - b) / np.linalg.norm(a)
    check_true(f"ps: fused (half swap) differs from non-fused, rel {rel:.3f}", rel > 0.05)
    check("ps: non-fused is also RC-equivariant",
          maxabs(forward_ps(m, rc_tokens(ids, m["emb_comp"]), False), flipLC(b)), 1e-10)

    # ---- scan vs step recurrence (§2.3)
    print("== scan vs step() (§2.3)")
    rng = np.random.default_rng(7)
    for mname in ("causal", "ph"):
        p = models[mname]["layers"][0]["fwd"]
        dm = models[mname]["cfg"]["d_model"]
        u = rng.normal(0, 1, (41, dm))
        full = mamba(u, p)
        di = p["in_proj"].shape[0] // 2
        cs, ss = np.zeros((di, D_CONV)), np.zeros((di, D_STATE))
        steps = []
        for t in range(u.shape[0]):
            o, cs, ss = mamba_step(u[t], cs, ss, p)
            steps.append(o)
        check(f"{mname} layer0 mamba_fwd: step() recurrence == scan (L=41)", maxabs(np.array(steps), full), 1e-10)
        for L0 in (2, 10):
            out0, cs, ss = mamba_with_state(u[:L0], p)
            steps = [out0]
            for t in range(L0, u.shape[0]):
                o, cs, ss = mamba_step(u[t], cs, ss, p)
                steps.append(o[None])
            check(f"{mname} layer0: prefill({L0}) + step() == scan", maxabs(np.concatenate(steps), full), 1e-10)

    # ---- reverse branch via flips == anti-causal in place
    print("== reverse branch: flipL(M_rev(flipL(u))) vs anti-causal in place")
    for mname in ("ph", "ph_bf16", "ps"):
        mm = models[mname]
        dm = mm["cfg"]["d_model"]
        for li, lp in enumerate(mm["layers"]):
            for L in (1, 3, 37):
                u = rng.normal(0, 1, (L, dm))
                via_flip = bimamba(u, lp, True)
                in_place = mamba(u, lp["fwd"]) + mamba_anticausal(u, lp["rev"])
                check(f"{mname} layer{li} L={L}: BiMamba via flips == anti-causal in place",
                      maxabs(via_flip, in_place), 1e-10)
                if L > 1:
                    d_dir = maxabs(mamba_anticausal(u, lp["rev"]), mamba(u, lp["rev"]))
                    check_true(f"{mname} layer{li} L={L}: anti-causal differs from causal ({d_dir:.2e})",
                               d_dir > 1e-3)
    # ---- Fixture determinism info
    total = 0
    print("== files")
    for dp, _, fs in sorted(os.walk(FIX)):
        if os.path.relpath(dp, FIX).split(os.sep)[0] in ("default_parity", "plantcad", "torch"):
            continue  # written by train/ (the default model's parity data) and by plantcad_ref.py /
            # torch_save.py, not by this script
        for fn in sorted(fs):
            pth = os.path.join(dp, fn)
            sz = os.path.getsize(pth)
            total += sz
            print(f"  {os.path.relpath(pth, ROOT)}: {sz} bytes")
    print(f"  total {total} bytes")
    assert total < 1_000_000
    nfail = sum(1 for c in CHECKS if not c[3])
    print(f"== {len(CHECKS)} checks, {nfail} failed")
    return 0 if nfail == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
