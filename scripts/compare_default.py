"""Paired Dice of the product default before and after a change, on the same cases and k (issue 25: Dice on the
test split must not be lower; the paired 95 % interval of the difference must include zero or lie above it).

`before`: a committed propagation run's records (`results.json`) and the variant that was the default there;
`after`: a new run's. Writes a Markdown table (per dataset, k and region: n, mean before / after, mean difference
and its bootstrap interval, wins) and the seconds per case of each and of growcut when the new run has it:

    python scripts/compare_default.py --before docs/results/backbone_3647/test/results.json \
        --before-variant "hybrid-mlp (/work/runs/ddpm-3647)" --after /work/runs/prop_fast/results.json \
        --after-variant "hybrid-mlp (bundled)" --out docs/results/speed/test_split.md
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from BrainDiffSegBench.stats import paired_differences, seed_means, variant


def _records(path: str, name: str, label: str) -> list[dict]:
    data = json.loads(Path(path).read_text())
    recs = data["records"] if isinstance(data, dict) else data
    out = [dict(r, method=label, backbone=None) for r in recs if variant(r) == name]
    if not out:
        raise SystemExit(f"{path}: no records of {name!r}; variants there: {sorted({variant(r) for r in recs})}")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", required=True)
    p.add_argument("--before-variant", required=True)
    p.add_argument("--after", required=True)
    p.add_argument("--after-variant", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    before_records = _records(a.before, a.before_variant, "before")
    after_records = _records(a.after, a.after_variant, "after")
    before = {(r["case"], r["k"]): r for r in seed_means(before_records)}
    after = {(r["case"], r["k"]): r for r in seed_means(after_records)}
    data = json.loads(Path(a.after).read_text())
    recs = data["records"] if isinstance(data, dict) else data
    growcut = {(r["case"], r["k"]): r["seconds"] for r in recs if r["method"] == "growcut"}
    lines = [f"Before: `{a.before}` ({a.before_variant}); after: `{a.after}` ({a.after_variant}). Paired per case, "
             "bootstrap 95 % interval over cases (10000 resamples, seed 0).", "",
             "| dataset | k | region | n | before | after | after - before | 95 % interval | wins after / before |",
             "|---|---|---|---|---|---|---|---|---|"]
    keys = sorted(set(before) & set(after))
    for dataset, prefix in (("BraTS", ("Brats", "BraTS")), ("LGG", ("TCGA",))):
        subset = [r for r in before_records + after_records if r["case"].startswith(prefix)]
        for d in paired_differences(subset, [("after", "before")]):
            cases = [c for c in keys if c[1] == d["k"] and c[0].startswith(prefix)
                     and d["region"] in before[c]["dice"] and d["region"] in after[c]["dice"]]
            mean_before = np.mean([before[c]["dice"][d["region"]] for c in cases])
            mean_after = np.mean([after[c]["dice"][d["region"]] for c in cases])
            lines.append(f"| {dataset} | {d['k']} | {d['region']} | {d['n']} | {mean_before:.3f} | {mean_after:.3f} | "
                         f"{d['mean']:+.4f} | [{d['lo']:+.4f}, {d['hi']:+.4f}] | {d['a_wins']} / {d['b_wins']} |")
    lines += ["", "| k | n | seconds per case before | after | growcut (same run as after) | after / growcut |",
              "|---|---|---|---|---|---|"]
    for k in sorted({k for _, k in keys}):
        ks = [c for c in keys if c[1] == k]
        sb, sa = np.mean([before[c]["seconds"] for c in ks]), np.mean([after[c]["seconds"] for c in ks])
        g = [growcut[c] for c in ks if c in growcut]
        lines.append(f"| {k} | {len(ks)} | {sb:.1f} | {sa:.1f} | {np.mean(g):.1f} | {sa / np.mean(g):.2f}x |" if g
                     else f"| {k} | {len(ks)} | {sb:.1f} | {sa:.1f} | – | – |")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
