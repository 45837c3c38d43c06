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
"""

import argparse
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

def tokens_from_codes(codes, n_id):
    """2-bit codes (255 = N) -> token ids (A7 C8 G9 T10, N -> n_id)."""
    t = codes.astype(np.int16) + M.A_ID
    t[codes == 255] = n_id
    return t.astype(np.uint8)


class Sampler:
    def __init__(self, dev, seq_len, max_n_frac=0.1, seed=0):
        codes, segs = data.load_train()
        self.tokens = torch.from_numpy(tokens_from_codes(codes, M.PAD)).to(dev)  # N -> [PAD] as in Caduceus
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
        tok = tokens_from_codes(codes, n_id).reshape(-1, data.EVAL_WIN)
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


def train(args):
    global LOG
    os.makedirs(args.out, exist_ok=True)
    LOG = open(os.path.join(args.out, "log.txt"), "a")
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = dev.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(args.seed)
    gpu = torch.cuda.get_device_name(0) if cuda else "cpu"
    log(f"torch {torch.__version__} on {gpu}; args {vars(args)}")
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
    ap.add_argument("cmd", choices=["train", "bench", "fixture"])
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
    args = ap.parse_args()
    {"train": train, "bench": bench, "fixture": fixture_cmd}[args.cmd](args)


if __name__ == "__main__":
    main()
