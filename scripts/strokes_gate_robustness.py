"""Issue 23, a diagnosis: how often does the gate for strokes (`--gate auto` -> watershed-core) let the classifier's
false positives flood the head, with strokes on 1 axial slice? On the tuning cases (or --data), both seed
simulators (`BrainDiffSegLib.strokes`: `simulate_strokes`, the propagation benchmark's, and `axial_strokes`, the
interactive user of `benchmark update`) paint the k = 1 protocol slice; each annotation is propagated with the
default gate and with the plain watershed (`--gate watershed`, the seeds as markers). Per run: Dice, the false
positive voxels (predicted tumour where the ground truth has none) and their axial extent, and whether the default
gate fell back to the plain watershed (`propagate.SPREAD_WARNING_SHARE`). `--stroke-seeds`: several random draws of
each simulator's strokes (the classifier's seed stays 0). Records to OUT/results.json, a table to OUT/table.md:

    python scripts/strokes_gate_robustness.py --out docs/results/seeds/gate_robustness
    python scripts/strokes_gate_robustness.py --stroke-seeds 1 2 3 4 --simulators axial_strokes --gates auto \
        --out docs/results/seeds/gate_robustness_seeds
"""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from BrainDiffSegBench.report import machine
from BrainDiffSegBench.update import painter
from BrainDiffSegLib.io import load_case
from BrainDiffSegLib.options import PropagationOptions
from BrainDiffSegLib.preprocess import foreground_mask
from BrainDiffSegLib.propagation.propagate import propagate
from BrainDiffSegLib.protocol import protocol_slices, region_dice
from BrainDiffSegLib.resources import data_root
from BrainDiffSegLib.splits import data_split
from BrainDiffSegLib.strokes import simulate_strokes


def annotation(case, opt: PropagationOptions, simulator: str, seed: int) -> np.ndarray:
    if simulator == "simulate_strokes":
        return simulate_strokes(case.label, foreground_mask(case.images), 1, "axial", seed,
                                background_label=opt.background_label)[0]
    zs = protocol_slices(case.label, 1)
    return painter(case, replace(opt, seed=seed), zs)(zs)  # `benchmark update`'s user: its seed draws the strokes


class _FellBack(logging.Handler):
    def __init__(self):
        super().__init__()
        self.seen = False

    def emit(self, record):
        self.seen = self.seen or "gated by the seeds' watershed instead" in record.getMessage()


def run_case(path: Path, simulators: list[str], gates: list[str], seeds: list[int]) -> list[dict]:
    case = load_case(path)
    opt = PropagationOptions(annotation_mode="seeds")
    records = []
    engine_log = logging.getLogger("BrainDiffSegLib.propagation.propagate")
    for simulator in simulators:
        for seed in seeds:
            ann = annotation(case, opt, simulator, seed)
            for gate in gates:
                watch = _FellBack()
                engine_log.addHandler(watch)
                engine_log.setLevel(logging.INFO)
                try:
                    res = propagate(case.images, ann, replace(opt, gate=gate))
                finally:
                    engine_log.removeHandler(watch)
                fp = (res.labels > 0) & (case.label == 0)
                zs = np.nonzero(fp.any(axis=(0, 1)))[0]
                records.append({"case": case.name, "simulator": simulator, "stroke_seed": seed, "gate": gate,
                                "fell_back": watch.seen,
                                "seed_voxels": int((ann > 0).sum()),
                                "dice": {r: round(v, 4) for r, v in region_dice(res.labels, case.label, []).items()},
                                "false_positive_voxels": int(fp.sum()),
                                "false_positive_slices": int(len(zs)), "tumour_voxels": int((case.label > 0).sum())})
                print(json.dumps(records[-1]), flush=True)
    return records


def table(records: list[dict]) -> str:
    lines = ["| case | simulator | stroke seed | gate | fell back | seed voxels | WT | TC | ET | false positive voxels "
             "(slices) | tumour voxels |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        d = r["dice"]
        lines.append(f"| {r['case']} | {r['simulator']} | {r['stroke_seed']} | {r['gate']} | "
                     f"{'yes' if r['fell_back'] else ''} | {r['seed_voxels']} | {d.get('WT', float('nan')):.3f} | "
                     f"{d.get('TC', float('nan')):.3f} | {d.get('ET', float('nan')):.3f} | "
                     f"{r['false_positive_voxels']:,} ({r['false_positive_slices']}) | {r['tumour_voxels']:,} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, nargs="*", default=None, help="case folders (default: the tuning cases)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--simulators", nargs="+", default=["simulate_strokes", "axial_strokes"],
                   choices=["simulate_strokes", "axial_strokes"])
    p.add_argument("--gates", nargs="+", default=["auto", "watershed"], choices=["auto", "watershed"])
    p.add_argument("--stroke-seeds", type=int, nargs="+", default=[0])
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(a.threads)  # a script of its own: its process is ours
    cases = a.data or data_split(data_root())["tuning"]
    records = [r for c in cases for r in run_case(Path(c), a.simulators, a.gates, a.stroke_seeds)]
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "results.json").write_text(json.dumps({"machine": machine(), "records": records}, indent=1))
    text = (f"# The gate for strokes with 1 axial slice of strokes, two seed simulators ({len(cases)} cases)\n\n"
            f"`python scripts/strokes_gate_robustness.py --simulators {' '.join(a.simulators)} --gates "
            f"{' '.join(a.gates)} --stroke-seeds {' '.join(map(str, a.stroke_seeds))} --out {a.out}`; machine: "
            f"{machine()}. Dice over the whole "
            "volume (the stroked slice included).\n\n" + table(records))
    (a.out / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
