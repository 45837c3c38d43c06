"""Caduceus-Ph (rcps=false) masked-LM in PyTorch, written for training without mamba_ssm, and its
export to / import from the released Hugging Face file layout (config.json + model.safetensors).

Math (spec /work/shared/reference/model-format.md sections 1.5.1, 1.5.2, 2.2):
  h_0 = E[x]; r = none
  per layer: a = h + r (a = h for the first); r = a; h = BiMamba(RMSNorm(a))
  out = RMSNorm_f(h + r);  logits = out @ E^T (LM head tied to the embedding)
  BiMamba(u) = Mamba_fwd(u) + flipL(Mamba_rev(flipL(u))), in_proj/out_proj shared by both directions.
Residual stream and norms in fp32; linear layers may run under bf16 autocast; the selective scan
(train/scan.py) always runs in fp32. Parameter names are the released ones, so export is a rename-free
filter: tied tensors (mamba_rev.in_proj / out_proj, the LM head) are not written, as in released files.
"""

import json
import math
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from scan import selective_scan

VOCAB = 16
PAD, MASK = 4, 3
A_ID, C_ID, G_ID, T_ID, N_ID = 7, 8, 9, 10, 11


def tokens_from_codes(codes, n_id):
    """2-bit codes (255 = N) -> token ids (A7 C8 G9 T10, N -> n_id)."""
    t = codes.astype(np.int16) + A_ID
    t[codes == 255] = n_id
    return t.astype(np.uint8)
# token id -> complement id (spec 1.3)
COMP = [0, 1, 2, 3, 4, 5, 6, 10, 9, 8, 7, 11, 12, 13, 14, 15]
D_STATE, D_CONV, EXPAND = 16, 4, 2
EPS = 1e-5


def acc(t):
    """Accumulation dtype: fp32, or fp64 when the model runs in fp64 (tests)."""
    return t if t.dtype == torch.float64 else t.float()


def rmsnorm(v, w):
    v = acc(v)
    return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + EPS) * acc(w)


class Mamba(nn.Module):
    """Mamba-1 mixer minus the shared projections (those live in BiMamba and are passed in)."""

    def __init__(self, d_model, in_proj, out_proj):
        super().__init__()
        di = EXPAND * d_model
        r = math.ceil(d_model / 16)
        self.d_inner, self.dt_rank = di, r
        self.in_proj = in_proj
        self.out_proj = out_proj
        self.conv1d = nn.Conv1d(di, di, D_CONV, groups=di, padding=D_CONV - 1, bias=True)  # weight [di,1,K]
        self.x_proj = nn.Linear(di, r + 2 * D_STATE, bias=False)
        self.dt_proj = nn.Linear(r, di, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, D_STATE + 1, dtype=torch.float32)).repeat(di, 1))
        self.D = nn.Parameter(torch.ones(di))

    def init_dt(self, gen, dt_min=1e-3, dt_max=0.1, dt_floor=1e-4):
        # mamba_simple.Mamba.__init__ ("random" dt init, dt_scale 1)
        std = self.dt_rank ** -0.5
        with torch.no_grad():
            self.dt_proj.weight.uniform_(-std, std, generator=gen)
            dt = torch.exp(torch.rand(self.d_inner, generator=gen) * (math.log(dt_max) - math.log(dt_min))
                           + math.log(dt_min)).clamp(min=dt_floor)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def branch(self, x, z, scan_impl):
        """x, z: [B, L, di] (x pre-conv). Returns the gated scan output [B, L, di] in fp32."""
        L = x.shape[1]
        K = D_CONV
        w = acc(self.conv1d.weight[:, 0, :])  # [di, K]
        xf = acc(x)
        xp = F.pad(xf, (0, 0, K - 1, 0))  # left zero padding along L
        xc = acc(self.conv1d.bias) + sum(w[:, k] * xp[:, k:k + L] for k in range(K))
        xc = F.silu(xc)
        dbc = self.x_proj(xc)
        r, N = self.dt_rank, D_STATE
        dlo = acc(dbc[..., :r])
        Bm = acc(dbc[..., r:r + N])
        Cm = acc(dbc[..., r + N:])
        dt = dlo @ acc(self.dt_proj.weight).t()  # bias added inside the scan (delta_bias)
        A = -torch.exp(acc(self.A_log))
        return selective_scan(xc, dt, acc(z), Bm, Cm, A, acc(self.D), acc(self.dt_proj.bias), impl=scan_impl)


class BiMamba(nn.Module):
    def __init__(self, d_model):
        super().__init__()
        di = EXPAND * d_model
        in_proj = nn.Linear(d_model, 2 * di, bias=False)
        out_proj = nn.Linear(di, d_model, bias=False)
        self.mamba_fwd = Mamba(d_model, in_proj, out_proj)
        self.mamba_rev = Mamba(d_model, in_proj, out_proj)  # bidirectional_weight_tie

    def forward(self, u, scan_impl):
        xz = self.mamba_fwd.in_proj(u)  # shared projection, computed once (exact by linearity)
        di = self.mamba_fwd.d_inner
        x, z = xz[..., :di], xz[..., di:]
        y = self.mamba_fwd.branch(x, z, scan_impl)
        yr = self.mamba_rev.branch(x.flip(1), z.flip(1), scan_impl)
        y = y + yr.flip(1)
        return self.mamba_fwd.out_proj(y)


class Layer(nn.Module):
    def __init__(self, d_model):
        super().__init__()
        self.norm = nn.Module()
        self.norm.weight = nn.Parameter(torch.ones(d_model))
        self.mixer = BiMamba(d_model)


class CaduceusPh(nn.Module):
    def __init__(self, d_model, n_layer, seed=0):
        super().__init__()
        self.d_model, self.n_layer = d_model, n_layer
        self.embeddings = nn.Module()
        self.embeddings.word_embeddings = nn.Embedding(VOCAB, d_model)
        self.layers = nn.ModuleList([Layer(d_model) for _ in range(n_layer)])
        self.norm_f = nn.Module()
        self.norm_f.weight = nn.Parameter(torch.ones(d_model))
        self._init(seed)

    def _init(self, seed):
        """Caduceus / mamba_ssm init: embedding N(0, 0.02); Linear kaiming-uniform (torch default);
        out_proj rescaled by 1/sqrt(n_layer) (rescale_prenorm_residual, n_residuals_per_layer 1);
        dt_proj random dt in [1e-3, 0.1]; A_log = log(1..N); D = 1."""
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.embeddings.word_embeddings.weight.normal_(0, 0.02, generator=gen)
            for lyr in self.layers:
                m = lyr.mixer
                for lin in (m.mamba_fwd.in_proj, m.mamba_fwd.x_proj, m.mamba_rev.x_proj, m.mamba_fwd.out_proj):
                    bound = 1 / math.sqrt(lin.weight.shape[1])  # kaiming_uniform(a=sqrt(5))
                    lin.weight.uniform_(-bound, bound, generator=gen)
                m.mamba_fwd.out_proj.weight /= math.sqrt(self.n_layer)
                for mb in (m.mamba_fwd, m.mamba_rev):
                    k = mb.conv1d.weight.shape[-1]
                    bound = 1 / math.sqrt(k)
                    mb.conv1d.weight.uniform_(-bound, bound, generator=gen)
                    mb.conv1d.bias.uniform_(-bound, bound, generator=gen)
                    mb.init_dt(gen)

    @property
    def embedding(self):
        return self.embeddings.word_embeddings.weight

    def forward(self, ids, scan_impl="auto"):
        """ids [B, L] int64 -> last_hidden_state [B, L, D] fp32."""
        h = acc(F.embedding(ids, self.embedding))
        r = None
        for lyr in self.layers:
            a = h if r is None else h + r
            r = a
            h = acc(lyr.mixer(rmsnorm(a, lyr.norm.weight), scan_impl))
        return rmsnorm(h + r, self.norm_f.weight)

    def logits(self, hidden):
        return hidden @ acc(self.embedding).t()

    def param_groups(self, weight_decay):
        """AdamW groups: no decay for A_log, D, biases, norm weights, embedding (as mamba_ssm/Caduceus
        _no_weight_decay for A_log / D; norms and biases conventionally)."""
        decay, no_decay = [], []
        seen = set()
        for name, p in self.named_parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            if p.ndim < 2 or name.endswith("A_log") or "embeddings" in name or "conv1d" in name:
                no_decay.append(p)
            else:
                decay.append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ------------------------------------------------------------------------------------------------
# Export / import in the released layout
# ------------------------------------------------------------------------------------------------

TIED_REV = ("in_proj.weight", "out_proj.weight")


def released_tensors(model):
    """name -> float32 numpy array, exactly the released Caduceus-Ph tensor set (1 + 17 n_layer + 1)."""
    out = {}
    for name, p in model.state_dict().items():
        if ".mamba_rev." in name and name.endswith(TIED_REV):
            continue  # tied to mamba_fwd, absent from released files
        out["caduceus.backbone." + name] = p.detach().float().cpu().numpy().copy()
    return out


def make_config(d_model, n_layer, name="dna-mamba-default"):
    """config.json as written by the released checkpoints (spec 1.2), Ph variant."""
    return {
        "_name_or_path": name,
        "architectures": ["CaduceusForMaskedLM"],
        "auto_map": {
            "AutoConfig": "configuration_caduceus.CaduceusConfig",
            "AutoModel": "modeling_caduceus.Caduceus",
            "AutoModelForMaskedLM": "modeling_caduceus.CaduceusForMaskedLM",
            "AutoModelForSequenceClassification": "modeling_caduceus.CaduceusForSequenceClassification",
        },
        "bidirectional": True,
        "bidirectional_strategy": "add",
        "bidirectional_weight_tie": True,
        "complement_map": {str(k): COMP[k] for k in range(VOCAB)},
        "d_model": d_model,
        "fused_add_norm": True,
        "initializer_cfg": {"initializer_range": 0.02, "n_residuals_per_layer": 1, "rescale_prenorm_residual": True},
        "model_type": "caduceus",
        "n_layer": n_layer,
        "norm_epsilon": 1e-05,
        "pad_vocab_size_multiple": 8,
        "rcps": False,
        "residual_in_fp32": False,
        "rms_norm": True,
        "ssm_cfg": {"bias": False, "conv_bias": True, "d_conv": D_CONV, "d_state": D_STATE, "dt_init": "random",
                    "dt_init_floor": 0.0001, "dt_max": 0.1, "dt_min": 0.001, "dt_rank": "auto", "dt_scale": 1.0,
                    "expand": EXPAND, "use_fast_path": True},
        "torch_dtype": "float32",
        "transformers_version": "4.38.1",
        "vocab_size": VOCAB,
    }


def tie_n_to_pad(model):
    """Training feeds N as [PAD]=4 (Caduceus pretraining); inference tokenizers feed N as id 11.
    Copying embedding row 4 into row 11 makes id 11 behave exactly like the trained N handling."""
    with torch.no_grad():
        model.embedding[N_ID].copy_(model.embedding[PAD])


def export(model, out_dir, name="dna-mamba-default"):
    from safetensors.numpy import save_file
    os.makedirs(out_dir, exist_ok=True)
    tensors = released_tensors(model)
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(make_config(model.d_model, model.n_layer, name), f, indent=2, sort_keys=True)
        f.write("\n")
    return tensors


def load_released(model_dir, device="cpu"):
    """Build a CaduceusPh from a released-layout directory (tied tensors re-materialized by sharing)."""
    from safetensors.numpy import load_file
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    assert not cfg["rcps"] and cfg["bidirectional"] and cfg["bidirectional_weight_tie"]
    model = CaduceusPh(cfg["d_model"], cfg["n_layer"])
    t = load_file(os.path.join(model_dir, "model.safetensors"))
    sd = {}
    for name in model.state_dict():
        key = "caduceus.backbone." + name
        if ".mamba_rev." in name and name.endswith(TIED_REV):
            key = key.replace(".mamba_rev.", ".mamba_fwd.")
        sd[name] = torch.from_numpy(np.asarray(t[key]).copy())
    model.load_state_dict(sd)
    return model.to(device)
