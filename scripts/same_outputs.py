"""Do two versions of the code give the same outputs, bit for bit? Run `--save` in each tree (e.g. a `git worktree`
of the older commit, with `PYTHONPATH=<worktree>/BrainDiffSeg`), then `--compare`:

    PYTHONPATH=/tmp/old/BrainDiffSeg python scripts/same_outputs.py --save /tmp/old.npz
    python scripts/same_outputs.py --save /tmp/new.npz
    python scripts/same_outputs.py --compare /tmp/old.npz /tmp/new.npz      # exit status 1 if anything differs

Saved per case (default: BraTS2021_00006 and TCGA_CS_4942_19970222): the labels, entropy and disagreement of the
update benchmark's runs (the k = 1 slice, then the k = 3 slices one at a time, through one feature cache), the
labels and entropy of a run without a cache, the class probabilities of a run that keeps them, and the labels and
entropy of the same runs in seeds mode (the update benchmark's simulated strokes on those slices).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np


def save(cases: list[str], out: str) -> None:
    import torch

    from BrainDiffSegBench.update import painter, update_order
    from BrainDiffSegLib.io import load_case
    from BrainDiffSegLib.options import PropagationOptions
    from BrainDiffSegLib.propagation.cache import VolumeCache
    from BrainDiffSegLib.propagation.propagate import propagate

    torch.set_num_threads(2)
    arrays = {}
    for path in cases:
        case = load_case(path)
        order = update_order(case.label)

        def annotation(zs):
            ann = np.zeros_like(case.label)
            ann[..., zs] = case.label[..., zs]
            return ann

        cache = VolumeCache()
        for i in range(len(order)):
            res = propagate(case.images, annotation(sorted(order[:i + 1])), PropagationOptions(), features=cache)
            for name in ("labels", "entropy", "disagreement"):
                arrays[f"{case.name}/run{i}/{name}"] = getattr(res, name)
        res = propagate(case.images, annotation(sorted(order)), PropagationOptions())
        arrays[f"{case.name}/no_cache/labels"], arrays[f"{case.name}/no_cache/entropy"] = res.labels, res.entropy
        res = propagate(case.images, annotation(sorted(order)), PropagationOptions(), keep_probabilities=True)
        arrays[f"{case.name}/probabilities"] = res.probabilities
        seeds = PropagationOptions(annotation_mode="seeds")
        paint, cache = painter(case, seeds, order), VolumeCache()  # the update benchmark's strokes
        for i in range(len(order)):
            res = propagate(case.images, paint(sorted(order[:i + 1])), seeds, features=cache)
            for name in ("labels", "entropy"):
                arrays[f"{case.name}/seeds{i}/{name}"] = getattr(res, name)
        print(case.name, "saved", flush=True)
    np.savez_compressed(out, **arrays)


def compare(a: str, b: str) -> int:
    x, y = np.load(a), np.load(b)
    differing = [k for k in sorted(set(x.files) | set(y.files))
                 if k not in x.files or k not in y.files or not np.array_equal(x[k], y[k])]
    for k in differing:
        print("differs:", k)
    print(f"{len(x.files) - len(differing)} of {len(x.files)} arrays identical")
    return 1 if differing else 0


def main() -> int:
    from BrainDiffSegLib.resources import data_root

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--save", metavar="FILE")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"))
    p.add_argument("--data", nargs="*", default=None, help="case folders")
    a = p.parse_args()
    if a.compare:
        return compare(*a.compare)
    if not a.save:
        p.error("give --save FILE or --compare A B")
    root = data_root()
    save(a.data or [str(root / "brats2021" / "BraTS2021_00006"), str(root / "lgg128" / "TCGA_CS_4942_19970222")],
         a.save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
