"""Where the time of a first run and of the updates goes (issue 25: profile first): BraTS2021_00006 (or --case), the
k = 1 protocol slice, then the k = 3 slices one at a time through one `VolumeCache` (as `benchmark update`), the
stage timings and Dice of each run, `cProfile` of the last update, and a run without a cache:

    python scripts/profile_update.py --threads 2 > docs/results/speed/profile_after.txt
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

import numpy as np
import torch

from BrainDiffSegBench.update import update_order
from BrainDiffSegLib.io import load_case
from BrainDiffSegLib.options import PropagationOptions
from BrainDiffSegLib.propagation.cache import VolumeCache
from BrainDiffSegLib.propagation.propagate import propagate
from BrainDiffSegLib.protocol import region_dice
from BrainDiffSegLib.resources import data_root


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", default=None)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--top", type=int, default=40)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    case = load_case(a.case or data_root() / "brats2021" / "BraTS2021_00006")
    order = update_order(case.label)  # the order of `benchmark update`

    def annotation(zs):
        ann = np.zeros_like(case.label)
        ann[..., zs] = case.label[..., zs]
        return ann

    def show(name, zs, seconds, res):
        print(name, zs, f"{seconds:.2f} s", {k: round(v, 2) for k, v in res.timings.items()},
              {k: round(v, 4) for k, v in region_dice(res.labels, case.label, zs).items()}, flush=True)

    opt, cache, prof = PropagationOptions(), VolumeCache(), cProfile.Profile()
    print(f"{case.name}, {torch.get_num_threads()} torch thread(s)")
    for i in range(len(order)):
        zs = sorted(order[:i + 1])
        last = i == len(order) - 1
        t = time.perf_counter()
        if last:
            prof.enable()
        res = propagate(case.images, annotation(zs), opt, features=cache)
        if last:
            prof.disable()
        show("first" if i == 0 else "update", zs, time.perf_counter() - t, res)
    t = time.perf_counter()
    res = propagate(case.images, annotation(sorted(order)), opt)
    show("without a cache", sorted(order), time.perf_counter() - t, res)
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(a.top)
    print("\ncProfile of the last update, cumulative time:\n" + out.getvalue())


if __name__ == "__main__":
    main()
