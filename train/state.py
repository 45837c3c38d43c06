"""Resumable training state for default model v2 (used by train.py when --data is given).

* FlatAdamW: AdamW over one flat fp32 master buffer (the model's parameters are views into it) with the
  first and second moments kept in bf16 *during training*, so that saving them loses nothing.
* CorpusSampler: uniform random windows of length L inside the pieces of the carried corpus shards
  (train/corpus.py), MLM masking as train.py's Sampler, all randomness from one torch.Generator whose
  state is part of the saved state; per-shard token counters are the data cursor.
* save_state / load_state: the state as <= 15 MiB safetensors files + state.json.
    format "exact":   master weights fp32, m and v bf16 (bit-exact resume; 8 bytes / parameter)
    format "compact": weights bf16, m and sqrt(v) float8 e4m3 with one fp32 scale per 256 values
                      (4 bytes / parameter; resume is approximate: weights rounded once to bf16)
"""

import glob
import json
import math
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import corpus as C  # noqa: E402
import model as M  # noqa: E402

FILE_LIMIT = 15 * 2**20 - 64 * 1024  # bytes of tensor data per safetensors file (header headroom)
QBLOCK = 256
F8 = torch.float8_e4m3fn
F8_MAX = 448.0


# ------------------------------------------------------------------------------------------------
# optimizer
# ------------------------------------------------------------------------------------------------
class FlatAdamW:
    def __init__(self, model, lr, wd, betas=(0.9, 0.95), eps=1e-8):
        seen, params, names = set(), [], []
        for name, p in model.named_parameters():
            if id(p) not in seen:
                seen.add(id(p))
                params.append(p)
                names.append(name)
        no_decay = {id(p) for p in model.param_groups(wd)[1]["params"]}
        dev = params[0].device
        n = sum(p.numel() for p in params)
        self.W = torch.empty(n, dtype=torch.float32, device=dev)
        self.decay = torch.zeros(n, dtype=torch.bool, device=dev)
        self.layout = []  # (name, offset, shape)
        o = 0
        for name, p in zip(names, params):
            k = p.numel()
            self.W[o:o + k].copy_(p.detach().reshape(-1))
            p.data = self.W[o:o + k].view(p.shape)
            self.decay[o:o + k] = id(p) not in no_decay
            self.layout.append((name, o, tuple(p.shape)))
            o += k
        self.params, self.n = params, n
        self.m = torch.zeros(n, dtype=torch.bfloat16, device=dev)
        self.v = torch.zeros(n, dtype=torch.bfloat16, device=dev)
        self.lr, self.wd, self.betas, self.eps = lr, wd, betas, eps
        self.t = 0

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, lr, clip=1.0):
        g = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in self.params])
        gn = g.norm()
        g = g * torch.clamp(clip / (gn + 1e-6), max=1.0)
        self.t += 1
        b1, b2 = self.betas
        m = self.m.float().mul_(b1).add_(g, alpha=1 - b1)
        v = self.v.float().mul_(b2).addcmul_(g, g, value=1 - b2)
        self.m.copy_(m)
        self.v.copy_(v)
        # use the stored (bf16) moments, so a resumed run computes exactly the same update
        m, v = self.m.float(), self.v.float()
        bc1, bc2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        self.W.mul_(torch.where(self.decay, 1 - lr * self.wd, 1.0))
        self.W.addcdiv_(m / bc1, (v / bc2).sqrt_().add_(self.eps), value=-lr)
        return gn


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
def shard_list(spec):
    """--data: a directory (all train-*.npz in it), a glob, or a comma list of files."""
    out = []
    for part in spec.split(","):
        if os.path.isdir(part):
            out += sorted(glob.glob(os.path.join(part, "train-*.npz")))
        else:
            out += sorted(glob.glob(part))
    assert out, f"no shards in {spec}"
    return out


class CorpusSampler:
    def __init__(self, shards, dev, seed=0, max_n_frac=0.5):
        toks, segs, self.shard_of_piece, self.names = [], [], [], [os.path.basename(s) for s in shards]
        off = 0
        for k, path in enumerate(shards):
            codes, sg, _ = C.load_shard(path)
            toks.append(M.tokens_from_codes(codes, M.PAD))  # N -> [PAD] as in Caduceus pretraining
            segs.append(sg + off)
            self.shard_of_piece += [k] * len(sg)
            off += len(codes)
        self.tokens = torch.from_numpy(np.concatenate(toks)).to(dev)
        self.isn_cs = torch.cat([torch.zeros(1, dtype=torch.int32, device=dev),
                                 (self.tokens == M.PAD).to(torch.int32).cumsum(0).to(torch.int32)])
        s = torch.from_numpy(np.concatenate(segs)).to(dev)
        self.p_start, self.p_len = s[:, 0], s[:, 1] - s[:, 0]
        self.shard_of_piece = torch.tensor(self.shard_of_piece, device=dev)
        self.n_bases = int(off)
        self.dev = dev
        self.max_n = max_n_frac
        self.comp = torch.tensor(M.COMP, device=dev, dtype=torch.int64)
        self.gen = torch.Generator(device=dev).manual_seed(seed)
        self.drawn = torch.zeros(len(shards), dtype=torch.int64)  # tokens per shard (data cursor)
        self._L = None

    def _prep(self, L):
        if self._L != L:
            cnt = (self.p_len - L + 1).clamp(min=0)
            self.cum = cnt.cumsum(0)
            self.total = int(self.cum[-1])
            assert self.total > 0, f"no piece of length >= {L}"
            self.ar = torch.arange(L, device=self.dev)
            self._L = L

    def starts(self, B, L):
        self._prep(L)
        got, pieces = [], []
        need = B
        while need > 0:
            u = torch.randint(self.total, (2 * need + 8,), device=self.dev, generator=self.gen)
            pi = torch.searchsorted(self.cum, u, right=True)
            prev = torch.where(pi > 0, self.cum[(pi - 1).clamp(min=0)], torch.zeros_like(u))
            st = self.p_start[pi] + (u - prev)
            nn_ = self.isn_cs[st + L] - self.isn_cs[st]
            ok = nn_ <= self.max_n * L
            st, pi = st[ok][:need], pi[ok][:need]
            got.append(st)
            pieces.append(pi)
            need -= len(st)
        st, pi = torch.cat(got), torch.cat(pieces)
        self.drawn += torch.bincount(self.shard_of_piece[pi].cpu(), minlength=len(self.drawn)) * L
        return st

    def batch(self, B, L):
        st = self.starts(B, L)
        tok = self.tokens[st[:, None] + self.ar].long()
        g = self.gen
        flip = torch.rand(B, device=self.dev, generator=g) < 0.5  # reverse-complement augmentation
        tok = torch.where(flip[:, None], self.comp[tok.flip(1)], tok)
        u = torch.rand(tok.shape, device=self.dev, generator=g)
        v = torch.rand(tok.shape, device=self.dev, generator=g)
        sel = (u < 0.15) & (tok >= M.A_ID) & (tok <= M.T_ID)
        rnd = torch.randint(M.A_ID, M.T_ID + 1, tok.shape, device=self.dev, generator=g)
        inp = torch.where(sel & (v < 0.8), torch.full_like(tok, M.MASK), tok)
        inp = torch.where(sel & (v >= 0.8) & (v < 0.9), rnd, inp)
        return inp, tok, sel


def parse_context(spec):
    """"1024:0.3,4096:0.3,16384:0.2,32768:0.2" -> [(L, cumulative end fraction), ...]."""
    out, acc = [], 0.0
    for part in spec.split(","):
        L, f = part.split(":") if ":" in part else (part, 1.0)
        acc += float(f)
        out.append((int(L), acc))
    out[-1] = (out[-1][0], max(out[-1][1], 1.0))
    return out


def context_at(sched, frac):
    for L, end in sched:
        if frac < end:
            return L
    return sched[-1][0]


# ------------------------------------------------------------------------------------------------
# state files
# ------------------------------------------------------------------------------------------------
def _q8(x):
    """fp32 [n] -> (float8 e4m3 [n_pad], fp32 scales [n_pad / QBLOCK]) with per-block absmax scaling."""
    n = x.numel()
    xp = torch.nn.functional.pad(x, (0, (-n) % QBLOCK)).view(-1, QBLOCK)
    s = xp.abs().amax(1).clamp(min=1e-30) / F8_MAX
    return (xp / s[:, None]).to(F8).reshape(-1), s


def _dq8(q, s, n):
    return (q.view(-1, QBLOCK).float() * s[:, None]).reshape(-1)[:n]


def _split(name, t, limit=FILE_LIMIT):
    """A 1-D tensor -> [(name.k, chunk)] with each chunk <= limit bytes."""
    per = limit // t.element_size()
    k = math.ceil(t.numel() / per)
    return [(f"{name}.{i}", t[i * per:(i + 1) * per]) for i in range(k)]


def state_tensors(opt, fmt):
    W, m, v = opt.W.detach().cpu(), opt.m.detach().cpu(), opt.v.detach().cpu()
    if fmt == "exact":
        return _split("W_f32", W) + _split("m_bf16", m) + _split("v_bf16", v)
    qm, sm = _q8(m.float())
    qv, sv = _q8(v.float().sqrt())
    return (_split("W_bf16", W.to(torch.bfloat16)) + _split("m_f8", qm) + _split("sqrtv_f8", qv)
            + [("m_scale", sm), ("sqrtv_scale", sv)])


def pack_files(items, limit=FILE_LIMIT):
    """Greedy first-fit of named tensors into files of <= limit bytes."""
    files = []
    for name, t in sorted(items, key=lambda x: -x[1].numel() * x[1].element_size()):
        b = t.numel() * t.element_size()
        for f in files:
            if f["bytes"] + b <= limit:
                f["t"][name] = t
                f["bytes"] += b
                break
        else:
            files.append({"t": {name: t}, "bytes": b})
    return files


def save_state(out, opt, sampler, meta, fmt="exact"):
    from safetensors.torch import save_file
    os.makedirs(out, exist_ok=True)
    files = pack_files(state_tensors(opt, fmt))
    assert len(files) <= 5, len(files)
    names = []
    for i, f in enumerate(files):
        fn = f"state-{i}.safetensors"
        save_file({k: v.contiguous() for k, v in f["t"].items()}, os.path.join(out, fn + ".part"))
        os.replace(os.path.join(out, fn + ".part"), os.path.join(out, fn))
        names.append(fn)
    for f in glob.glob(os.path.join(out, "state-*.safetensors")):
        if os.path.basename(f) not in names:
            os.remove(f)
    g = sampler.gen.get_state().cpu().numpy()
    prev = meta.get("shard_tokens_prev", {})
    tok = dict(prev)
    for n_, d in zip(sampler.names, sampler.drawn.tolist()):
        tok[n_] = int(prev.get(n_, 0)) + int(d)
    st = {k: v for k, v in meta.items() if k != "shard_tokens_prev"}
    st.update(format=fmt, files=names, n_params=opt.n, adam_t=opt.t, layout=opt.layout, gen_state=g.tolist(),
              gen_device=sampler.dev.type, shard_tokens=tok)
    with open(os.path.join(out, "state.json.part"), "w") as f:
        json.dump(st, f)
    os.replace(os.path.join(out, "state.json.part"), os.path.join(out, "state.json"))
    return names


def load_state(d):
    from safetensors.torch import load_file
    st = json.load(open(os.path.join(d, "state.json")))
    t = {}
    for fn in st["files"]:
        t.update(load_file(os.path.join(d, fn)))

    def cat(prefix):
        ks = sorted([k for k in t if k.startswith(prefix + ".")], key=lambda k: int(k.rsplit(".", 1)[1]))
        return torch.cat([t[k] for k in ks])
    n = st["n_params"]
    if st["format"] == "exact":
        W, m, v = cat("W_f32"), cat("m_bf16"), cat("v_bf16")
    else:
        W = cat("W_bf16").float()
        m = _dq8(cat("m_f8"), t["m_scale"], n).to(torch.bfloat16)
        sv = _dq8(cat("sqrtv_f8"), t["sqrtv_scale"], n)
        v = (sv * sv).to(torch.bfloat16)
    return st, W[:n], m[:n], v[:n]


def apply_state(opt, sampler, st, W, m, v):
    assert W.numel() == opt.n, (W.numel(), opt.n)
    assert [tuple(x[2]) for x in st["layout"]] == [x[2] for x in opt.layout], "model shape differs"
    opt.W.copy_(W.to(opt.W.device))
    opt.m.copy_(m.to(opt.m.device))
    opt.v.copy_(v.to(opt.v.device))
    opt.t = st["adam_t"]
    if st.get("gen_device") == sampler.dev.type:
        sampler.gen.set_state(torch.tensor(st["gen_state"], dtype=torch.uint8))


def state_sizes(d_model, n_layer):
    """Bytes of the state files for a model shape, without building it on a device."""
    m = M.CaduceusPh(d_model, n_layer)
    n = len({id(p): p for p in m.parameters()})
    P = sum(p.numel() for p in {id(p): p for p in m.parameters()}.values())
    out = {"params": P, "tensors": n}
    for fmt in ("exact", "compact"):
        class O:  # shape-only stand-in for FlatAdamW
            pass
        o = O()
        o.W = torch.zeros(P)
        o.m = torch.zeros(P, dtype=torch.bfloat16)
        o.v = torch.zeros(P, dtype=torch.bfloat16)
        files = pack_files(state_tensors(o, fmt))
        out[fmt] = {"files": len(files), "bytes": [f["bytes"] for f in files], "total": sum(f["bytes"] for f in files)}
    out["export_bf16_bytes"] = 2 * sum(v.size for v in M.released_tensors(m).values())
    out["export_fp32_bytes"] = 4 * sum(v.size for v in M.released_tensors(m).values())
    return out
