#!/usr/bin/env python3
"""Train the default dna-mamba model (Caduceus-Ph, masked LM) on the GPU machine, then evaluate it on
the held-out data, export it in the released layout and write the Rust parity fixture.

    python3 train/train.py train --out $OUT [--resume models/default] [--budget 450]
    python3 train/train.py bench --out $OUT          # scan check + step timings for a few sizes
    python3 train/train.py fixture --model models/default --out DIR   # parity logits only (CPU ok)

Inputs come from .carry-train/ (train/data.py prepare). Everything the run produces goes to --out:
model.safetensors + config.json (released Caduceus-Ph layout), expected.safetensors (parity fixture),
results.json (settings, steps, tokens, wall time, loss curve, held-out metrics), log.txt.
The training length is set by wall time (--budget seconds of optimizer steps); the learning-rate
schedule (linear warm-up, cosine to 10 %) runs on the fraction of that budget used.

Default model v2 (train/corpus.py shards; see train/README.md "Default model v2"):
    python3 train/train.py train --data SHARDS --out $OUT [--resume-state DIR] --budget 480 --hard-stop 540
    python3 train/train.py eval --resume-state DIR | --model DIR  [--eval-data DIR] [--eval-lens ...]
    python3 train/train.py export --resume-state DIR --out models/default    # released layout, bf16
    python3 train/train.py shards --data .carry-train/corpus --resume-state DIR   # which shard to carry next
    python3 train/train.py sizes --d-model 256 --n-layer 16                       # state / export sizes
    python3 train/train.py bench2 --out $OUT --d-model 256 --n-layer 16           # GPU step timings per L
With --data, the learning rate and the context curriculum run on the token count of the whole multi-run
training (--total-tokens), and the full state (weights, bf16 Adam moments, counters, RNG, per-shard
token counts) is written to --out every --state-every seconds and at the end (train/state.py).
"""

import argparse
import glob
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import data  # noqa: E402
import model as M  # noqa: E402

T0 = time.time()
LOG = None


def log(*a):
    s = " ".join(str(x) for x in a)
    print(f"[{time.time() - T0:7.1f}s] {s}", flush=True)
    if LOG:
        LOG.write(s + "\n")
        LOG.flush()


# ------------------------------------------------------------------------------------------------
# data on the GPU
# ------------------------------------------------------------------------------------------------

class Sampler:
    def __init__(self, dev, seq_len, max_n_frac=0.1, seed=0):
        codes, segs = data.load_train()
        self.tokens = torch.from_numpy(M.tokens_from_codes(codes, M.PAD)).to(dev)  # N -> [PAD] as in Caduceus
        isn = (self.tokens == M.PAD).to(torch.int32)
        cs = torch.cat([torch.zeros(1, dtype=torch.int64, device=dev), isn.cumsum(0)])
        starts = []
        for s, e in segs.tolist():
            st = torch.arange(s, e - seq_len + 1, device=dev)
            nn_ = cs[st + seq_len] - cs[st]
            starts.append(st[nn_ <= max_n_frac * seq_len])
        self.starts = torch.cat(starts)
        self.L = seq_len
        self.dev = dev
        self.ar = torch.arange(seq_len, device=dev)
        self.comp = torch.tensor(M.COMP, device=dev, dtype=torch.int64)
        self.gen = torch.Generator(device=dev).manual_seed(seed)
        self.n_bases = int(len(codes))

    def batch(self, B):
        i = torch.randint(len(self.starts), (B,), device=self.dev, generator=self.gen)
        tok = self.tokens[self.starts[i][:, None] + self.ar].long()
        flip = torch.rand(B, device=self.dev, generator=self.gen) < 0.5  # reverse-complement augmentation
        tok = torch.where(flip[:, None], self.comp[tok.flip(1)], tok)
        # MLM: 15 % of A/C/G/T positions; 80 % -> [MASK], 10 % -> random base, 10 % unchanged
        u = torch.rand(tok.shape, device=self.dev, generator=self.gen)
        v = torch.rand(tok.shape, device=self.dev, generator=self.gen)
        sel = (u < 0.15) & (tok >= M.A_ID) & (tok <= M.T_ID)
        rnd = torch.randint(M.A_ID, M.T_ID + 1, tok.shape, device=self.dev, generator=self.gen)
        inp = torch.where(sel & (v < 0.8), torch.full_like(tok, M.MASK), tok)
        inp = torch.where(sel & (v >= 0.8) & (v < 0.9), rnd, inp)
        return inp, tok, sel


def load_eval_windows(n_id=M.N_ID):
    out = {}
    for name, (codes, mask) in data.load_eval().items():
        tok = M.tokens_from_codes(codes, n_id).reshape(-1, data.EVAL_WIN)
        out[name] = (tok, mask.reshape(-1, data.EVAL_WIN))
    return out


@torch.no_grad()
def evaluate(model, windows, dev, batch=128, limit=None, fp32=True):
    """Masked-base accuracy / perplexity over A/C/G/T (4-way softmax) at the fixed held-out masks;
    masked inputs are [MASK] (no random/keep replacement)."""
    model.eval()
    res, tot = {}, {"n": 0, "correct": 0, "sum_nll": 0.0}
    for name, (tok, mask) in windows.items():
        n = correct = 0
        snll = 0.0
        nw = len(tok) if limit is None else min(limit, len(tok))
        for i in range(0, nw, batch):
            t = torch.from_numpy(tok[i:min(i + batch, nw)]).to(dev).long()
            m = torch.from_numpy(mask[i:min(i + batch, nw)]).to(dev)
            inp = torch.where(m, torch.full_like(t, M.MASK), t)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=not fp32 and dev.type == "cuda"):
                h = model(inp)
            lg = model.logits(h[m].float())[:, M.A_ID:M.T_ID + 1].float()
            lp = lg.log_softmax(-1)
            tgt = t[m] - M.A_ID
            snll += float(-lp.gather(1, tgt[:, None]).sum())
            correct += int((lp.argmax(1) == tgt).sum())
            n += int(m.sum())
        res[name] = {"n": n, "acc": correct / max(n, 1), "nll": snll / max(n, 1),
                     "ppl": math.exp(snll / max(n, 1)), "correct": correct, "sum_nll": snll}
        tot["n"] += n
        tot["correct"] += correct
        tot["sum_nll"] += snll
    res["ALL"] = {"n": tot["n"], "acc": tot["correct"] / tot["n"], "nll": tot["sum_nll"] / tot["n"],
                  "ppl": math.exp(tot["sum_nll"] / tot["n"]), "correct": tot["correct"], "sum_nll": tot["sum_nll"]}
    model.train()
    return res


# ------------------------------------------------------------------------------------------------
# parity fixture
# ------------------------------------------------------------------------------------------------

def read_fa(path):
    recs, name, buf = [], None, []
    for line in open(path):
        line = line.strip()
        if line.startswith(">"):
            if name:
                recs.append((name, "".join(buf)))
            name, buf = line[1:].split()[0], []
        elif line:
            buf.append(line)
    if name:
        recs.append((name, "".join(buf)))
    return recs


def tokenize(seq):
    table = {"A": 7, "C": 8, "G": 9, "T": 10, "N": 11}
    return torch.tensor([table.get(ch, 6) for ch in seq.upper()], dtype=torch.int64)


@torch.no_grad()
def fixture_logits(model, dev, scan_impl="auto"):
    """fp32 raw logits [L, 16] of the fixture sequences (N fed as id 11, like the Rust tokenizer)."""
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    out = {}
    model.eval()
    for rid, seq in read_fa(os.path.join(data.FIXTURE, "inputs.fa")):
        ids = tokenize(seq)[None].to(dev)
        out[f"logits.{rid}"] = model.logits(model(ids, scan_impl=scan_impl))[0].float().cpu().numpy()
    model.train()
    torch.backends.cuda.matmul.allow_tf32 = prev
    return out


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(np.asarray(b, np.float64)))


# ------------------------------------------------------------------------------------------------
# train
# ------------------------------------------------------------------------------------------------

def lr_at(step, frac, peak, warmup):
    w = min(1.0, (step + 1) / warmup)
    return peak * w * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def export_checkpoint(model, out):
    """Export with embedding row 11 (N) := row 4 ([PAD], how N was fed in training)."""
    from safetensors.numpy import save_file
    t = M.released_tensors(model)
    emb = "caduceus.backbone.embeddings.word_embeddings.weight"
    t[emb][M.N_ID] = t[emb][M.PAD]
    save_file(t, os.path.join(out, "model.safetensors.part"), metadata={"format": "pt"})
    os.replace(os.path.join(out, "model.safetensors.part"), os.path.join(out, "model.safetensors"))
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(M.make_config(model.d_model, model.n_layer), f, indent=2, sort_keys=True)
        f.write("\n")


def start_run(args):
    """The output folder and its log, the device, the seed; returns (device, on CUDA, the device name)."""
    global LOG
    os.makedirs(args.out, exist_ok=True)
    LOG = open(os.path.join(args.out, "log.txt"), "a")
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = dev.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(args.seed)
    gpu = torch.cuda.get_device_name(0) if cuda else "cpu"
    log(f"torch {torch.__version__} on {gpu}; args {vars(args)}")
    return dev, cuda, gpu


def train(args):
    dev, cuda, gpu = start_run(args)
    if args.resume:
        model = M.load_released(args.resume).to(dev)
        log(f"resumed weights from {args.resume} (optimizer state fresh)")
        prev = json.load(open(args.state)) if args.state and os.path.exists(args.state) else {}
        log(f"previous runs: {len(prev.get('runs', []))} ({prev.get('total_steps', 0)} steps, {prev.get('total_tokens', 0):,} tokens)")
    else:
        model = M.CaduceusPh(args.d_model, args.n_layer, seed=args.seed).to(dev)
        prev = {}
    nparam = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    log(f"model d_model {model.d_model} n_layer {model.n_layer}: {nparam:,} parameters ({4 * nparam / 1e6:.2f} MB fp32)")
    sampler = Sampler(dev, args.seq_len, seed=args.seed + 17 * len(prev.get("runs", [])))
    log(f"training bases {sampler.n_bases:,}; window starts {len(sampler.starts):,}")
    windows = load_eval_windows()
    quick = {k: v for k, v in windows.items()}  # quick eval on the first windows of every set
    opt = torch.optim.AdamW(model.param_groups(args.wd), lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=cuda)
    model.train()
    hist = []
    step, tokens, t_train, t_last_ck, t_last_log = 0, 0, 0.0, time.time(), time.time()
    run_start = time.time()
    loss_acc = torch.zeros((), device=dev)
    acc_acc = torch.zeros((), device=dev)
    n_acc = 0
    while True:
        t_step = time.time()
        frac = t_train / args.budget
        if frac >= 1.0 or time.time() - T0 > args.hard_stop:
            break
        lr = lr_at(step, frac, args.lr, args.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        inp, tgt, sel = sampler.batch(args.batch)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            h = model(inp)
        lg = model.logits(h[sel].float())
        y = tgt[sel]
        loss = F.cross_entropy(lg, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            loss_acc += loss.detach()
            acc_acc += (lg.argmax(-1) == y).float().mean()
            n_acc += 1
        step += 1
        tokens += inp.numel()
        if cuda and (step <= 3 or step % args.log_every == 0):
            torch.cuda.synchronize()
        t_train += time.time() - t_step
        if step % args.log_every == 0:
            now = time.time()
            rec = {"step": step, "tokens": tokens, "train_s": round(t_train, 1), "lr": lr,
                   "loss": float(loss_acc) / n_acc, "mlm_acc": float(acc_acc) / n_acc, "grad_norm": float(gn),
                   "tok_per_s": args.log_every * inp.numel() / (now - t_last_log)}
            loss_acc.zero_()
            acc_acc.zero_()
            n_acc = 0
            t_last_log = now
            if step % (args.log_every * 10) == 0:
                q = evaluate(model, quick, dev, limit=32, fp32=False)
                rec["quick_heldout_acc"] = q["ALL"]["acc"]
                rec["quick_heldout_ppl"] = q["ALL"]["ppl"]
                t_last_log = time.time()
            hist.append(rec)
            log(json.dumps(rec))
        if time.time() - t_last_ck > args.ckpt_every:
            export_checkpoint(model, args.out)
            t_last_ck = time.time()
            log(f"checkpoint at step {step}")
    if cuda:
        torch.cuda.synchronize()
    wall_train = time.time() - run_start
    log(f"training done: {step} steps, {tokens:,} tokens, {t_train:.1f}s of steps, {wall_train:.1f}s wall")
    M.tie_n_to_pad(model)
    export_checkpoint(model, args.out)
    # held-out evaluation, fp32, TF32 off
    torch.backends.cuda.matmul.allow_tf32 = False
    t = time.time()
    ev = evaluate(model, windows, dev, fp32=True, limit=args.eval_limit)
    log(f"held-out eval ({time.time() - t:.1f}s): " + json.dumps({k: (round(v['acc'], 4), round(v['ppl'], 4)) for k, v in ev.items()}))
    # parity fixture (triton scan, fp32) and a cross-check against the sequential reference scan
    fx = fixture_logits(model, dev)
    from safetensors.numpy import save_file
    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in fx.items()}, os.path.join(args.out, "expected.safetensors"))
    fx_ref = fixture_logits(model, dev, scan_impl="ref")
    fx_check = {k: rel(fx[k], fx_ref[k]) for k in fx}
    log(f"fixture: triton vs sequential-scan rel err {fx_check}")
    runs = prev.get("runs", []) + [{
        "gpu": gpu, "torch": torch.__version__, "resumed_from": args.resume, "steps": step, "tokens": tokens,
        "train_step_seconds": round(t_train, 1), "wall_seconds": round(wall_train, 1), "batch": args.batch,
        "seq_len": args.seq_len, "peak_lr": args.lr, "warmup": args.warmup, "weight_decay": args.wd, "seed": args.seed}]
    state = {"runs": runs, "total_steps": sum(r["steps"] for r in runs), "total_tokens": sum(r["tokens"] for r in runs)}
    with open(os.path.join(args.out, "train_state.json"), "w") as f:
        json.dump(state, f, indent=1)
    res = {"model": {"d_model": model.d_model, "n_layer": model.n_layer, "params": nparam},
           "run": runs[-1], "state": state, "heldout": ev, "fixture_triton_vs_ref": fx_check, "history": hist,
           "total_script_seconds": round(time.time() - T0, 1)}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    log("all done")


# ------------------------------------------------------------------------------------------------
# bench
# ------------------------------------------------------------------------------------------------

def bench(args):
    import test_scan
    dev = torch.device("cuda")
    log(f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}")
    test_scan.check(dev="cuda")
    test_scan.check(Bt=4, L=1000, DI=200, dev="cuda", seed=2)
    test_scan.check(Bt=2, L=2048, DI=512, dev="cuda", seed=3)
    # model-level: triton vs ref scan grads on GPU
    m = M.CaduceusPh(64, 2, seed=1).to(dev)
    ids = torch.randint(7, 11, (2, 300), device=dev)
    gr = {}
    for impl in ("ref", "triton"):
        m.zero_grad()
        m.logits(m(ids, scan_impl=impl)).log_softmax(-1)[..., 8].sum().backward()
        gr[impl] = {n: p.grad.detach().double().cpu().numpy() for n, p in m.named_parameters()}
    log("model grad triton vs ref worst rel", max(rel(gr["triton"][n], gr["ref"][n]) for n in gr["ref"]))
    sampler = Sampler(dev, 2048)
    out = []
    for d, nl, L, B in [(256, 4, 1024, 64), (256, 8, 1024, 64), (192, 8, 1024, 64), (256, 4, 2048, 32), (128, 8, 1024, 128)]:
        model = M.CaduceusPh(d, nl).to(dev)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
        sampler.L, sampler.ar = L, torch.arange(L, device=dev)
        torch.cuda.reset_peak_memory_stats()
        times = []
        for it in range(8):
            torch.cuda.synchronize()
            t = time.time()
            inp, tgt, sel = sampler.batch(B)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                h = model(inp)
            loss = F.cross_entropy(model.logits(h[sel].float()), tgt[sel])
            opt.zero_grad()
            loss.backward()
            opt.step()
            torch.cuda.synchronize()
            times.append(time.time() - t)
        st = float(np.median(times[3:]))
        r = {"d_model": d, "n_layer": nl, "L": L, "B": B, "step_s": st, "tok_per_s": B * L / st,
             "peak_mem_gb": torch.cuda.max_memory_allocated() / 1e9, "first_step_s": times[0]}
        log(json.dumps(r))
        out.append(r)
        del model, opt
    # forward-only fp32 speed (eval)
    model = M.CaduceusPh(256, 8).to(dev)
    windows = load_eval_windows()
    one = {"phage_lambda": windows["phage_lambda"]}
    t = time.time()
    evaluate(model, one, dev)
    torch.cuda.synchronize()
    log(f"eval fp32 lambda {len(one['phage_lambda'][0])} windows: {time.time() - t:.2f}s")
    with open(os.path.join(args.out, "bench.json"), "w") as f:
        json.dump(out, f, indent=1)


# ------------------------------------------------------------------------------------------------
# default model v2: corpus shards, context curriculum, resumable state (train/state.py)
# ------------------------------------------------------------------------------------------------

def lr_v2(step, frac, peak, warmup):
    """Linear warm-up over `warmup` global steps, cosine to 10 % over the global token fraction."""
    w = min(1.0, (step + 1) / warmup)
    return peak * w * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def eval_sets(eval_dir, lens):
    """{L: (codes [S, L], mask [S, L], meta)}; a length without its own file is cut (centred) from a
    longer one, which gives the same windows (the files are nested by construction)."""
    import corpus as C
    have = {int(os.path.basename(f)[5:-4]): f for f in glob.glob(os.path.join(eval_dir, "eval-*.npz"))}
    out, big = {}, None
    for L in lens:
        if L in have:
            out[L] = C.load_eval(have[L])
            continue
        longer = [x for x in sorted(have) if x > L]
        if not longer:
            continue
        if big is None or big[0] != longer[0]:
            big = (longer[0], C.load_eval(have[longer[0]]))
        W, (codes, mask, meta) = big
        a = W // 2 - L // 2
        out[L] = (codes[:, a:a + L], mask[:, a:a + L], meta)
    return out


@torch.no_grad()
def evaluate_lengths(model, sets, dev, eval_tokens=131072, limit=None, fp32=True):
    """Masked-base accuracy (4-way over A/C/G/T) at the fixed eval masks, per context length and source.
    Masked positions are fed as [MASK]; N is fed as [PAD] (the training convention)."""
    model.eval()
    res = {}
    for L, (codes, mask, meta) in sorted(sets.items()):
        S = len(codes) if limit is None else min(limit, len(codes))
        tok = M.tokens_from_codes(codes[:S], M.PAD)
        mask = mask[:S]
        per = {}
        bs = max(1, eval_tokens // L)
        for i in range(0, S, bs):
            t = torch.from_numpy(tok[i:i + bs]).to(dev).long()
            m = torch.from_numpy(mask[i:i + bs]).to(dev)
            inp = torch.where(m, torch.full_like(t, M.MASK), t)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=not fp32 and dev.type == "cuda"):
                h = model(inp)
            lp = model.logits(h[m].float())[:, M.A_ID:M.T_ID + 1].float().log_softmax(-1)
            tgt = t[m] - M.A_ID
            ok = (lp.argmax(1) == tgt).cpu().numpy()
            nll = (-lp.gather(1, tgt[:, None])[:, 0]).cpu().numpy()
            site = np.repeat(np.arange(i, i + len(t)), m.sum(1).cpu().numpy())
            for s_ in np.unique(site):
                src = str(meta["site_src"][s_])
                d = per.setdefault(src, [0, 0, 0.0])
                sel = site == s_
                d[0] += int(sel.sum())
                d[1] += int(ok[sel].sum())
                d[2] += float(nll[sel].sum())
        n = sum(v[0] for v in per.values())
        c = sum(v[1] for v in per.values())
        snll = sum(v[2] for v in per.values())
        res[str(L)] = {"n": n, "acc": c / max(n, 1), "nll": snll / max(n, 1), "sites": S,
                       "by_source": {k: {"n": v[0], "acc": v[1] / max(v[0], 1), "nll": v[2] / max(v[0], 1)}
                                     for k, v in sorted(per.items())}}
    model.train()
    return res


def train_v2(args):
    import state as ST
    dev, cuda, gpu = start_run(args)
    st, prev_runs = None, []
    if args.resume_state:
        st, W, m_, v_ = ST.load_state(args.resume_state)
        d_model, n_layer = st["d_model"], st["n_layer"]
        prev_runs = st.get("runs", [])
    elif args.resume:
        d_model, n_layer = None, None
    else:
        d_model, n_layer = args.d_model, args.n_layer
    if args.resume and not args.resume_state:
        model = M.load_released(args.resume).to(dev)
        log(f"weights from {args.resume} (optimizer fresh)")
    else:
        model = M.CaduceusPh(d_model, n_layer, seed=args.seed).to(dev)
    opt = ST.FlatAdamW(model, args.lr, args.wd)
    shards = ST.shard_list(args.data)
    sampler = ST.CorpusSampler(shards, dev, seed=args.seed, max_n_frac=args.max_n_frac)
    step, tokens = 0, 0
    if st is not None:
        ST.apply_state(opt, sampler, st, W, m_, v_)
        step, tokens = st["step"], st["tokens"]
        if st.get("gen_device") != dev.type:
            sampler.gen.manual_seed(args.seed + step)
        log(f"resumed state {args.resume_state} ({st['format']}): step {step}, {tokens:,} tokens, "
            f"{len(prev_runs)} previous runs")
    log(f"model d_model {model.d_model} n_layer {model.n_layer}: {opt.n:,} parameters; "
        f"shards {sampler.names} ({sampler.n_bases:,} bases)")
    if st is not None and not args.override_schedule:  # a resumed run keeps the schedule it was started with
        for k, a in (("total_tokens", "total_tokens"), ("context", "context"), ("tokens_per_step", "tokens_per_step"),
                     ("peak_lr", "lr"), ("warmup", "warmup"), ("wd", "wd")):
            if k in st and getattr(args, a) != st[k]:
                log(f"--{a.replace('_', '-')} {getattr(args, a)} -> {st[k]} (from the state; --override-schedule to change)")
                setattr(args, a, st[k])
        opt.wd = args.wd
    sched = ST.parse_context(args.context)
    total = args.total_tokens
    eval_dir = args.eval_data or (os.path.dirname(shards[0]))
    meta0 = {"d_model": model.d_model, "n_layer": model.n_layer, "total_tokens": total, "context": args.context,
             "tokens_per_step": args.tokens_per_step, "peak_lr": args.lr, "warmup": args.warmup, "wd": args.wd,
             "shard_tokens_prev": (st or {}).get("shard_tokens", {})}

    def save(reason):
        run = {"gpu": gpu, "steps_this_run": step - step0, "tokens_this_run": tokens - tokens0,
               "train_step_seconds": round(t_train, 1), "shards": sampler.names, "reason": reason}
        names = ST.save_state(args.out, opt, sampler, dict(meta0, step=step, tokens=tokens,
                                                           runs=prev_runs + [run]), args.state_format)
        log(f"state saved ({reason}) at step {step}, {tokens:,} tokens: "
            + ", ".join(f"{n} {os.path.getsize(os.path.join(args.out, n)) / 2**20:.2f} MiB" for n in names))

    model.train()
    hist = []
    step0, tokens0 = step, tokens
    t_train, t_last_st, t_last_log = 0.0, time.time(), time.time()
    loss_acc = torch.zeros((), device=dev)
    acc_acc = torch.zeros((), device=dev)
    n_acc, tok_acc = 0, 0
    while True:
        t_step = time.time()
        frac = tokens / total
        if (t_train >= args.budget or time.time() - T0 > args.hard_stop or frac >= 1.0
                or (args.max_steps and step >= args.max_steps)):
            break
        L = ST.context_at(sched, frac)
        B = max(1, args.tokens_per_step // L)
        lr = lr_v2(step, frac, args.lr, args.warmup)
        inp, tgt, sel = sampler.batch(B, L)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            h = model(inp)
        lg = model.logits(h[sel].float())
        y = tgt[sel]
        loss = F.cross_entropy(lg, y)
        opt.zero_grad()
        loss.backward()
        gn = opt.step(lr)
        with torch.no_grad():
            loss_acc += loss.detach()
            acc_acc += (lg.argmax(-1) == y).float().mean()
        n_acc += 1
        tok_acc += inp.numel()
        step += 1
        tokens += inp.numel()
        if cuda and (step - step0 <= 3 or step % args.log_every == 0):
            torch.cuda.synchronize()
        t_train += time.time() - t_step
        if step % args.log_every == 0:
            now = time.time()
            rec = {"step": step, "tokens": tokens, "L": L, "B": B, "train_s": round(t_train, 1), "lr": lr,
                   "loss": float(loss_acc) / n_acc, "mlm_acc": float(acc_acc) / n_acc, "grad_norm": float(gn),
                   "tok_per_s": tok_acc / max(now - t_last_log, 1e-9)}
            loss_acc.zero_()
            acc_acc.zero_()
            n_acc, tok_acc, t_last_log = 0, 0, now
            hist.append(rec)
            log(json.dumps(rec))
        if time.time() - t_last_st > args.state_every:
            save("periodic")
            t_last_st = time.time()
            t_last_log = time.time()
    if cuda:
        torch.cuda.synchronize()
    log(f"training done: step {step} ({step - step0} this run), {tokens:,} tokens ({tokens - tokens0:,} this run), "
        f"{t_train:.1f}s of steps")
    save("end")
    ev = None
    lens = [int(x) for x in args.eval_lens.split(",")] if args.eval_lens else []
    if lens and glob.glob(os.path.join(eval_dir, "eval-*.npz")):
        torch.backends.cuda.matmul.allow_tf32 = False
        t = time.time()
        ev = evaluate_lengths(model, eval_sets(eval_dir, lens), dev, limit=args.eval_limit, fp32=True)
        log(f"eval ({time.time() - t:.1f}s): " + json.dumps({k: round(v["acc"], 4) for k, v in ev.items()}))
    if args.export:
        M.tie_n_to_pad(model)
        export_v2(model, args.out, args.export_dtype)
        log(f"exported model.safetensors ({args.export_dtype})")
    res = {"model": {"d_model": model.d_model, "n_layer": model.n_layer, "params": opt.n},
           "step": step, "tokens": tokens, "this_run": {"steps": step - step0, "tokens": tokens - tokens0,
                                                        "train_step_seconds": round(t_train, 1)},
           "eval_by_context": ev, "history": hist, "total_script_seconds": round(time.time() - T0, 1)}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    log("all done")
    return res


def export_v2(model, out, dtype="bf16"):
    """Released layout; bf16 keeps a 256 x 16 model under 16 MiB."""
    from safetensors.torch import save_file
    t = {k: torch.from_numpy(v) for k, v in M.released_tensors(model).items()}
    if dtype == "bf16":
        t = {k: v.to(torch.bfloat16) for k, v in t.items()}
    save_file(t, os.path.join(out, "model.safetensors.part"), metadata={"format": "pt"})
    os.replace(os.path.join(out, "model.safetensors.part"), os.path.join(out, "model.safetensors"))
    cfg = M.make_config(model.d_model, model.n_layer)
    cfg["torch_dtype"] = "bfloat16" if dtype == "bf16" else "float32"
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")


def model_from_state(d, dev):
    import state as ST
    st, W, _, _ = ST.load_state(d)
    model = M.CaduceusPh(st["d_model"], st["n_layer"]).to(dev)
    for name, o, shape in st["layout"]:
        p = dict(model.named_parameters())[name]
        with torch.no_grad():
            p.copy_(W[o:o + int(np.prod(shape))].view(shape))
    return model, st


def eval_cmd(args):
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model_from_state(args.resume_state, dev)[0] if args.resume_state else M.load_released(args.model).to(dev)
    lens = [int(x) for x in args.eval_lens.split(",")]
    ev = evaluate_lengths(model, eval_sets(args.eval_data or os.path.join(data.ROOT, ".carry-train", "corpus"), lens),
                          dev, limit=args.eval_limit)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "eval_by_context.json"), "w") as f:
        json.dump(ev, f, indent=1)
    for L, v in ev.items():
        print(f"L={L:>6}: acc {v['acc']:.4f}  nll {v['nll']:.4f}  ({v['n']} masked, {v['sites']} sites)")


def export_cmd(args):
    model, st = model_from_state(args.resume_state, torch.device("cpu"))
    M.tie_n_to_pad(model)
    os.makedirs(args.out, exist_ok=True)
    export_v2(model, args.out, args.export_dtype)
    print(f"exported step {st['step']} ({st['tokens']:,} tokens) to {args.out}")


def shards_cmd(args):
    """The shards to carry next: the ones with the fewest tokens drawn so far."""
    idx = json.load(open(os.path.join(args.data, "index.json")))
    drawn = {}
    if args.resume_state and os.path.exists(os.path.join(args.resume_state, "state.json")):
        drawn = json.load(open(os.path.join(args.resume_state, "state.json"))).get("shard_tokens", {})
    names = sorted((s["file"] for s in idx["shards"]), key=lambda n: (drawn.get(n, 0), n))
    print(" ".join(names[:args.n_shards]))


def bench2_cmd(args):
    """v2 step timings on the GPU: d_model x n_layer at each context length, tokens per step constant,
    chunked scan (default) vs one program per whole sequence; synthetic tokens, no data needed."""
    import scan
    import state as ST
    dev = torch.device("cuda")
    log(f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}")
    import test_scan
    test_scan.check(Bt=2, L=4096, DI=512, dev="cuda", seed=6, impl="triton-chunk1024", tol=1e-4)
    out = []
    model = M.CaduceusPh(args.d_model, args.n_layer).to(dev)
    opt = ST.FlatAdamW(model, 1e-3, 0.1)

    def step(B, L):
        """One masked-LM training step on random tokens."""
        tok = torch.randint(M.A_ID, M.T_ID + 1, (B, L), device=dev)
        sel = torch.rand(B, L, device=dev) < 0.15
        inp = torch.where(sel, torch.full_like(tok, M.MASK), tok)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            h = model(inp)
        loss = F.cross_entropy(model.logits(h[sel].float()), tok[sel])
        opt.zero_grad()
        loss.backward()
        opt.step(1e-4)

    for L in [int(x) for x in args.eval_lens.split(",")]:
        sweep = [int(v) for v in args.min_programs.split(",")] if args.min_programs else [scan.MIN_PROGRAMS]
        for minp in sweep + [0]:
            if minp == 0 and L > 8192 and not args.bench_unchunked_long:
                continue
            scan_min, scan.MIN_PROGRAMS = scan.MIN_PROGRAMS, minp
            B = max(1, args.tokens_per_step // L)
            torch.cuda.reset_peak_memory_stats()
            times = []
            for it in range(6):
                torch.cuda.synchronize()
                t = time.time()
                step(B, L)
                torch.cuda.synchronize()
                times.append(time.time() - t)
            scan.MIN_PROGRAMS = scan_min
            st = float(np.median(times[2:]))
            r = {"d_model": args.d_model, "n_layer": args.n_layer, "L": L, "B": B, "chunked": minp > 0,
                 "chunk": scan.pick_chunk(B, L, 2 * args.d_model) if minp else L, "step_s": st,
                 "tok_per_s": B * L / st, "peak_mem_gb": torch.cuda.max_memory_allocated() / 1e9,
                 "first_step_s": times[0]}
            log(json.dumps(r))
            out.append(r)
    with open(os.path.join(args.out, "bench2.json"), "w") as f:
        json.dump(out, f, indent=1)
    if args.profile:
        # where a step's GPU time goes, at the shortest and the longest length (chunked scan)
        from torch.profiler import ProfilerActivity, profile
        lens = [int(x) for x in args.eval_lens.split(",")]
        for L in sorted({lens[0], lens[-1]}):
            B = max(1, args.tokens_per_step // L)
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(2):
                    step(B, L)
                torch.cuda.synchronize()
            table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25)
            log(f"profile, 2 steps at L={L}, B={B}:\n{table}")
            with open(os.path.join(args.out, f"profile-{L}.txt"), "w") as f:
                f.write(table)


def sizes_cmd(args):
    import state as ST
    print(json.dumps(ST.state_sizes(args.d_model, args.n_layer), indent=1))


def fixture_cmd(args):
    """Parity logits of a released-layout model on the CPU (sequential scan) or GPU."""
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = M.load_released(args.model).to(dev)
    fx = fixture_logits(model, dev)
    from safetensors.numpy import save_file
    os.makedirs(args.out, exist_ok=True)
    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in fx.items()}, os.path.join(args.out, "expected.safetensors"))
    print({k: v.shape for k, v in fx.items()})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["train", "bench", "bench2", "fixture", "eval", "export", "shards", "sizes"])
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/train-out"))
    ap.add_argument("--model", default=os.path.join(data.ROOT, "models", "default"))
    ap.add_argument("--resume", default=None, help="released-layout model dir to start from")
    ap.add_argument("--state", default=os.path.join(HERE, "results", "train_state.json"),
                    help="train_state.json of the runs that produced --resume (steps / tokens bookkeeping)")
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--budget", type=float, default=450.0, help="seconds of optimizer steps")
    ap.add_argument("--hard-stop", type=float, default=500.0, help="stop training this long after start")
    ap.add_argument("--ckpt-every", type=float, default=120.0)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-limit", type=int, default=None, help="windows per held-out set (testing)")
    # default model v2 (train/corpus.py shards); without --data, `train` is the v1 pipeline above
    ap.add_argument("--data", default=None, help="corpus shards: a dir (train-*.npz), a glob or a comma list")
    ap.add_argument("--eval-data", default=None, help="dir with eval-LEN.npz (default: the shards' dir)")
    ap.add_argument("--eval-lens", default="1024,4096,16384,32768", help="context lengths to evaluate ('' = none)")
    ap.add_argument("--context", default="1024:0.3,4096:0.3,16384:0.2,32768:0.2",
                    help="curriculum L:fraction-of-total-tokens,...")
    ap.add_argument("--tokens-per-step", type=int, default=65536, help="batch = tokens-per-step // L")
    ap.add_argument("--total-tokens", type=float, default=1e9, help="tokens of the whole multi-run training")
    ap.add_argument("--resume-state", default=None, help="dir with state.json + state-*.safetensors")
    ap.add_argument("--state-format", choices=["exact", "compact"], default="compact")
    ap.add_argument("--state-every", type=float, default=120.0, help="seconds between state saves")
    ap.add_argument("--max-steps", type=int, default=0, help="stop at this global step (tests)")
    ap.add_argument("--export", action="store_true", help="also export the released-layout model at the end")
    ap.add_argument("--export-dtype", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--n-shards", type=int, default=1, help="shards: how many to list")
    ap.add_argument("--max-n-frac", type=float, default=0.5,
                    help="v2: skip training windows with more N than this (SILVA pieces are ~28 %% N after the "
                         "validation 32-mer masking, so v1's 0.1 would reject 80 %% of their windows)")
    ap.add_argument("--min-programs", default=None,
                    help="scan.MIN_PROGRAMS (chunk the scan until this many programs); bench2: a comma list to sweep")
    ap.add_argument("--profile", action="store_true", help="bench2: a torch.profiler table of 2 steps at the shortest and longest length")
    ap.add_argument("--bench-unchunked-long", action="store_true", help="bench2: also time L > 8192 unchunked")
    ap.add_argument("--override-schedule", action="store_true",
                    help="with --resume-state: use the command line's lr/warmup/wd/context/tokens instead of the state's")
    args = ap.parse_args()
    if args.min_programs and args.cmd != "bench2":
        import scan
        scan.MIN_PROGRAMS = int(args.min_programs)
    if args.cmd == "train" and args.data:
        return train_v2(args)
    {"train": train, "bench": bench, "fixture": fixture_cmd, "eval": eval_cmd, "export": export_cmd,
     "shards": shards_cmd, "sizes": sizes_cmd, "bench2": bench2_cmd}[args.cmd](args)


if __name__ == "__main__":
    main()
