"""CPU checks of the v2 corpus (train/corpus.py build): shard encoding round trip and agreement with the
source files, no validation genome (and no eval region) in any training shard, by name and by a 32-mer
spot check, and eval masks identical across context lengths.

    python3 train/test_corpus.py          (after `python3 train/corpus.py build`; ~4-6 min on 2 cores)
"""
import glob
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import corpus as C  # noqa: E402
import data as D  # noqa: E402

RESULTS = []


def check(name, cond, detail=""):
    RESULTS.append(bool(cond))
    print(f"{'ok  ' if cond else 'FAIL'} {name} {detail}", flush=True)


def main():
    man = json.load(open(C.MANIFEST))
    shards = sorted(glob.glob(os.path.join(C.OUTD, "train-*.npz")))
    check("shards exist", len(shards) > 0, f"({len(shards)})")
    src_by_id = {s["id"]: s for s in C.SOURCES}
    val_src = {s["id"] for s in C.SOURCES if s["split"] == "excluded"}
    rng = np.random.default_rng(0)
    # ---- 1. encoding round trip, sizes, agreement with sources
    loaded = []
    sample = []
    for path in shards:
        z = np.load(path)
        codes = D.unpack(z["packed"], int(z["n"]), z["n_runs"])
        p2, r2 = D.pack(codes)
        check(f"{os.path.basename(path)} 2-bit round trip", np.array_equal(p2, z["packed"]) and np.array_equal(r2, z["n_runs"]),
              f"{len(codes):,} bases, {os.path.getsize(path) / 2**20:.2f} MiB")
        check(f"{os.path.basename(path)} <= 12 MiB", os.path.getsize(path) <= 12 * 2**20)
        segs = z["segs"]
        check(f"{os.path.basename(path)} pieces tile the shard", segs[0, 0] == 0 and segs[-1, 1] == len(codes)
              and np.array_equal(segs[1:, 0], segs[:-1, 1]))
        names = [str(x) for x in z["src_names"]]
        srcs = {names[i] for i in np.unique(z["seg_src"])}
        check(f"{os.path.basename(path)} no validation source", not (srcs & val_src), f"({len(srcs)} sources)")
        direct = np.flatnonzero(z["seg_seq"] >= 0)
        for j in rng.choice(direct, min(2, len(direct)), replace=False):
            sample.append((int(z["seg_seq"][j]), int(z["seg_start"][j]), codes[segs[j, 0]:segs[j, 1]]))
        loaded.append((codes, z))
    # source agreement (seqs index into the full list; SILVA entries are summarized in the manifest, so
    # map indices through the source order)
    by_file = {}
    ok = True
    for si, a, c in sample:
        e = seqs_full_index(man, si)
        if e is None:
            continue
        f = os.path.join(C.CDATA, e["file"])
        if f not in by_file:
            by_file[f] = {n: s for n, _, s in C.read_records(f, src_by_id[e["source"]]["fmt"])}
        ref = D.to_codes(by_file[f][e["name"]][a:a + len(c)])
        ok &= np.array_equal(ref, c)
    check("sampled pieces equal their source records", ok, f"({len(sample)} pieces)")
    # ---- 2. by name: no excluded / eval-only sequence has a training piece
    used = set()
    for codes, z in loaded:
        used |= set(int(x) for x in z["seg_seq"] if x >= 0)
    bad = [i for i in used if (e := seqs_full_index(man, i)) is not None and not e["split"].startswith("train")]
    check("no excluded-validation or eval-only sequence in a shard (by index/name)", not bad, str(bad[:5]))
    # tails: training pieces of a record with a held-out tail end before the tail
    over = 0
    for codes, z in loaded:
        for k in np.flatnonzero(z["seg_seq"] >= 0):
            e = seqs_full_index(man, int(z["seg_seq"][k]))
            if e is not None and "eval" in e:
                lo = e["eval"][0]
                over += int(z["seg_start"][k] + (z["segs"][k, 1] - z["segs"][k, 0]) > lo)
    check("no training piece overlaps a held-out tail", over == 0, f"({over})")
    # ---- 3. by 32-mers: sampled k-mers of validation genomes and eval regions are absent from the shards
    probes = {}
    for s_ in C.SOURCES:  # validation sources: every record of every file
        if s_["split"] == "excluded":
            for f in C.source_files(s_):
                for _, _, seq in C.read_records(f, s_["fmt"]):
                    probes.setdefault("val:" + s_["id"], []).append(C.kmers(D.to_codes(seq)))
    for r in man["eval"]["regions"]:  # eval regions (held-out tails and whole genomes)
        s_ = src_by_id[r["source"]]
        for f in C.source_files(s_):
            for name, _, seq in C.read_records(f, s_["fmt"]):
                if name == r["record"]:
                    probes.setdefault("eval:" + r["source"], []).append(C.kmers(D.to_codes(seq[r["start"]:r["end"]])))
    pk = {}
    for k, v in probes.items():
        v = np.unique(np.concatenate(v))
        pk[k] = rng.choice(v, min(5000, len(v)), replace=False) if len(v) else v
    # control: k-mers from the shards themselves must be found
    ctrl = np.unique(np.concatenate([C.kmers(loaded[0][0][i:i + 2000]) for i in range(0, 2_000_000, 200_000)]))
    pk["control:shard-000"] = rng.choice(ctrl, 2000, replace=False)
    allp = np.unique(np.concatenate(list(pk.values())))
    found = np.zeros(len(allp), bool)
    for codes, _ in loaded:
        for a in range(0, len(codes), 4_000_000):
            v = C.kmers(codes[a:a + 4_000_000 + C.KMER - 1])
            i = np.searchsorted(allp, v)
            i[i == len(allp)] = 0
            found[i[allp[i] == v]] = True
    for k, v in sorted(pk.items()):
        frac = found[np.searchsorted(allp, v)].mean() if len(v) else 0.0
        if k.startswith("control"):
            check(f"32-mer spot check works ({k} found)", frac > 0.99, f"{frac:.4f}")
        elif k.removeprefix("val:") in C.KMER_FILTER_SKIP:
            print(f"info 32-mers of {k} found in training shards: {frac:.4%} of {len(v)} (16S reference set: "
                  f"shares conserved k-mers with SILVA; kept out of the corpus, not used as a filter)")
        elif k.startswith("val:"):  # build masks every training base covered by a validation 32-mer
            check(f"32-mers of {k} absent from training shards", frac == 0.0, f"found {frac:.4%} of {len(v)}")
        else:  # eval regions share repeats with the rest of their genome; a leaked region would be ~100 %
            check(f"32-mers of {k} mostly absent from training shards (< 10 %; repeats are shared within a genome)",
                  frac < 0.10, f"found {frac:.4%} of {len(v)}")
    # ---- 4. eval masks identical across context lengths
    ev = {int(os.path.basename(f)[5:-4]): C.load_eval(f) for f in glob.glob(os.path.join(C.OUTD, "eval-*.npz"))}
    base_c, base_m, base_meta = ev[1024]
    blk = int(base_meta["block"])
    check("eval-1024 block = whole window", base_c.shape[1] == blk)
    for L, (c, m, meta) in sorted(ev.items()):
        a = L // 2 - blk // 2
        same = (np.array_equal(c[:, a:a + blk], base_c) and np.array_equal(m[:, a:a + blk], base_m)
                and m.sum() == base_m.sum() and np.array_equal(meta["site_center"], base_meta["site_center"])
                and np.array_equal(meta["site_src"], base_meta["site_src"]))
        nested = True
        for L2, (c2, _, _) in ev.items():
            if L2 > L:
                b = L2 // 2 - L // 2
                nested &= np.array_equal(c2[:, b:b + L], c)
        check(f"eval-{L}: same sites, same scored block and mask as eval-1024; nested in longer windows",
              same and nested, f"({len(c)} sites, {int(m.sum())} masked)")
    check("eval masks only on A/C/G/T", all(((c == 255) & m).sum() == 0 for c, m, _ in ev.values()))
    n_ok, n_fail = sum(RESULTS), len(RESULTS) - sum(RESULTS)
    print(f"{n_ok} passed, {n_fail} failed")
    sys.exit(1 if n_fail else 0)


_BYIDX = None


def seqs_full_index(man, i):
    """Manifest entry of build's sequence index i (None for SILVA records, which the manifest summarizes)."""
    global _BYIDX
    if _BYIDX is None:
        _BYIDX = {e["index"]: e for e in man["sequences"]}
    return _BYIDX.get(i)


if __name__ == "__main__":
    main()
