#!/usr/bin/env python3
"""Merge `magpie bench --json` and `peers.py` rows into markdown tables: per dataset, a
summary (each system's fastest one-thread configuration reaching recall@10 >= 0.95, with
its build time and index memory) and then every row. Magpie's rows come first."""
import json
import sys
from collections import defaultdict


def knob(r):
    k = r.get("knob") or {}
    s = " ".join(f"{a}={b}" for a, b in k.items()) if isinstance(k, dict) else str(k)
    if r.get("recall_target") is not None:
        s = f"recall>={r['recall_target']:.2f} -> {s}"
    s = s or "exact"
    if r.get("filter_pass_pct") is not None:
        f = r.get("filter_field") or "int"
        s = f"filter {r['filter_pass_pct']} %" + (f" ({f})" if f != "int" else "") + f" · {s}"
    return s


def main(paths):
    rows = []
    for p in paths:
        rows += json.load(open(p))
    by_ds = defaultdict(list)
    for r in rows:
        by_ds[r["dataset"]].append(r)
    order = lambda r: (r.get("filter_pass_pct") or 0, r.get("filter_field") or "",
                       0 if r["system"].startswith("magpie") else 1, r["system"], r["index"])
    for ds, rs in by_ds.items():
        r0 = rs[0]
        print(f"\n### {ds} ({r0['n']} x {r0['dim']}, {r0['metric']}, {r0['queries']} queries, k={r0['k']})\n")
        print("Fastest one-thread configuration with recall@10 >= 0.95 (per filter; Magpie's")
        print("filtered rows are its recall-target rows, as it has no filtered knob sweep):\n")
        print("| system | index | knob | recall@10 | QPS 1 thread | QPS 2 threads | p99 ms | build s | index MB |")
        print("|---|---|---|---|---|---|---|---|---|")
        best = {}
        for r in rs:
            filtered = r.get("filter_pass_pct") is not None
            if r["recall"] >= 0.95 and (filtered or r.get("recall_target") is None):
                key = (r["system"], r["index"], r.get("filter_pass_pct") or 0,
                       r.get("filter_field") or "")
                if key not in best or r["qps_1t"] > best[key]["qps_1t"]:
                    best[key] = r
        for r in sorted(best.values(), key=order):
            print(f"| {r['system']} | {r['index']} | {knob(r)} | {r['recall']:.4f} | {r['qps_1t']:.0f} | "
                  f"{r['qps_2t']:.0f} | {r['p99_ms']:.3f} | {r['build_s']:.1f} | {r['index_bytes'] / 1e6:.1f} |")
        print("\nAll rows:\n")
        print("| system | index | knob | recall@10 | QPS 1 thread | QPS 2 threads | p50 ms | p99 ms |")
        print("|---|---|---|---|---|---|---|---|")
        for r in sorted(rs, key=order):
            print(f"| {r['system']} | {r['index']} | {knob(r)} | {r['recall']:.4f} | {r['qps_1t']:.0f} | "
                  f"{r['qps_2t']:.0f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
