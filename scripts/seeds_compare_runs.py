"""One method in two committed `benchmark propagation` runs (issue 23), paired per case with bootstrap intervals
(`BrainDiffSegBench.stats.paired_differences`): strokes on one sagittal plus one coronal slice against strokes on
two axial slices, or the default gate for strokes against the plain watershed gate's run:

    python scripts/seeds_compare_runs.py docs/results/seeds/mixed docs/results/seeds/axial --k 2
    python scripts/seeds_compare_runs.py docs/results/seeds/axial docs/results/seeds/axial_watershed --k 1 2 3
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


from BrainDiffSegBench.report import paired_table_by_dataset


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", type=Path, help="a run folder (results.json): the first orientation")
    p.add_argument("b", type=Path, help="a run folder: the orientation it is compared with")
    p.add_argument("--k", type=int, nargs="+", default=[2])
    p.add_argument("--method", default="hybrid-mlp")
    a = p.parse_args()
    runs = {}
    for folder in (a.a, a.b):
        recs = [r for r in json.loads((folder / "results.json").read_text())["records"]
                if r["method"] == a.method and r["k"] in a.k]
        runs[folder.name] = [dict(r, method=folder.name, backbone=None) for r in recs]
    print(paired_table_by_dataset([r for rs in runs.values() for r in rs], [(a.a.name, a.b.name)], digits=3, run="k"),
          end="")


if __name__ == "__main__":
    main()
