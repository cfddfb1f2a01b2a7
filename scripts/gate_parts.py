"""The watershed gate flooded gap by gap (`refine.flood_between_slices`) against one watershed of the whole volume:
for each case, the update benchmark's order of complete slices (the k = 1 protocol slice, then the k = 3 slices one
at a time), the mask of both and the seconds of each, the gap-wise one reusing the parts of the previous run as an
update does. Every mask must be identical (exit status 1 otherwise):

    python scripts/gate_parts.py --out docs/results/speed/gate_parts.md            # the tuning cases
    python scripts/gate_parts.py --data CASE ... --out docs/results/speed/gate_parts_test.md

Both floods run on the gate's own gradient and box (`refine.gate_gradient`, `refine.gate_box` with the default
margin), one after the other in this process.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from BrainDiffSegBench.report import machine
from BrainDiffSegBench.update import update_order
from BrainDiffSegLib.io import load_case
from BrainDiffSegLib.options import PropagationOptions
from BrainDiffSegLib.propagation.refine import flood_between_slices, gate_box, gate_gradient
from BrainDiffSegLib.propagation.volume import normalize_volume
from BrainDiffSegLib.resources import data_root
from BrainDiffSegLib.splits import data_split


def compare(case_dir) -> list[dict]:
    from skimage.segmentation import watershed

    case = load_case(case_dir)
    box = gate_box(normalize_volume(case.images).foreground, PropagationOptions().gate_margin, case.label.shape)
    grad = gate_gradient({r: v[box] for r, v in case.images.items()})
    label = case.label[box]
    z0 = box[2].start
    order = [z - z0 for z in update_order(case.label)]
    rows, kept = [], {}
    for i in range(len(order)):
        zs = sorted(order[:i + 1])
        markers = np.zeros(grad.shape, np.int32)
        markers[..., zs] = np.where(label[..., zs] > 0, 2, 1)
        t = time.perf_counter()
        whole = watershed(grad, markers) == 2
        t_whole = time.perf_counter() - t
        t = time.perf_counter()
        parts = flood_between_slices(grad, label, zs, kept)
        t_parts = time.perf_counter() - t
        rows.append({"case": case.name, "slices": [int(z + z0) for z in zs], "run": "first" if i == 0 else "update",
                     "voxels": int(whole.sum()), "differing": int((whole != parts).sum()),
                     "whole_s": round(t_whole, 3), "parts_s": round(t_parts, 3)})
        print(rows[-1], flush=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", nargs="*", default=None, help="case folders (default: the tuning cases)")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    cases = a.data or [str(c) for c in data_split(data_root())["tuning"]]
    rows = [r for c in cases for r in compare(c)]
    lines = ["# The gate flooded gap by gap vs one watershed of the volume\n",
             f"`python scripts/gate_parts.py{' --data ...' if a.data else ''} --out {a.out}`; machine: {machine()}\n",
             "| case | annotated slices | run | tumour side (voxels) | voxels differing | one watershed (s) | gap by gap (s) |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['slices']} | {r['run']} | {r['voxels']} | {r['differing']} | {r['whole_s']:.2f} | "
              f"{r['parts_s']:.2f} |" for r in rows]
    for run in ("first", "update"):
        sel = [r for r in rows if r["run"] == run]
        lines.append(f"\n{run} runs ({len(sel)}): one watershed {sum(r['whole_s'] for r in sel):.2f} s in all, "
                     f"gap by gap {sum(r['parts_s'] for r in sel):.2f} s; voxels differing in all: "
                     f"{sum(r['differing'] for r in sel)}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines) + "\n")
    return 1 if any(r["differing"] for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
