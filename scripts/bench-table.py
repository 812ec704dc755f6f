#!/usr/bin/env python3
"""Ratio tables from criterion's estimates (target/criterion/<group>/<fn>/<n_kv>/new/estimates.json):
for every group, the median time of each function and its ratio ggml / function. Used for benches/LOG.md."""
import json, pathlib, sys
root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")
rows = {}
for est in sorted(root.glob("*/*/*/new/estimates.json")):
    group, fn, param = est.parts[-5], est.parts[-4], est.parts[-3]
    ms = json.loads(est.read_text())["median"]["point_estimate"] / 1e6
    rows.setdefault((group, int(param)), {})[fn] = ms
for (group, n_kv) in sorted(rows):
    r = rows[(group, n_kv)]
    base = r.get("ggml")
    cells = []
    for fn in sorted(r):
        ratio = f" ({base / r[fn]:.2f}x)" if base and fn != "ggml" else ""
        cells.append(f"{fn} {r[fn]:.1f} ms{ratio}")
    print(f"| {group} | {n_kv} | " + " | ".join(cells) + " |")
