#!/usr/bin/env python3
"""Markdown table of held-out masked-base accuracy / perplexity: the trained model
(train/results/<run>_results.json, computed on the GPU) next to the k-mer baselines
(train/results/baseline.json, computed here) on the same masked positions.
Usage: python3 train/report.py [train/results/run2_results.json]"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    run = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "results", "run2_results.json")
    r = json.load(open(run))
    b = json.load(open(os.path.join(HERE, "results", "baseline.json")))
    kmax = b["kmax"]
    # one k for every set: the best on ALL (by perplexity, and by accuracy)
    def best(variant, key, sign):
        ks = [f"{variant}_k{k}" for k in range(kmax + 1)]
        return min(ks, key=lambda k: sign * b["datasets"]["ALL"][k][key])
    kp, ka = best("masked", "ppl", 1), best("masked", "acc", -1)
    op = best("oracle", "ppl", 1)
    print(f"| held-out set | masked bases | model acc | model ppl | k-mer acc ({ka}) | k-mer ppl ({kp}) "
          f"| best k-mer acc / ppl, any k | oracle-context k-mer acc / ppl ({op}) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, m in r["heldout"].items():
        d = b["datasets"][name]
        assert d[kp]["n"] == m["n"], (name, d[kp]["n"], m["n"])
        bacc = max(v["acc"] for k, v in d.items() if k.startswith("masked"))
        bppl = min(v["ppl"] for k, v in d.items() if k.startswith("masked"))
        nm = f"**{name}**" if name == "ALL" else name
        print(f"| {nm} | {m['n']:,} | **{m['acc']:.4f}** | **{m['ppl']:.4f}** | {d[ka]['acc']:.4f} | {d[kp]['ppl']:.4f} "
              f"| {bacc:.4f} / {bppl:.4f} | {d[op]['acc']:.4f} / {d[op]['ppl']:.4f} |")
    beats = all(m["acc"] > max(v["acc"] for v in b["datasets"][n].values()) and
                m["ppl"] < min(v["ppl"] for v in b["datasets"][n].values()) for n, m in r["heldout"].items())
    print(f"\nmodel beats every baseline variant (masked and oracle, any k) on every set: {beats}")


if __name__ == "__main__":
    main()
