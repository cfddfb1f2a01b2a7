"""Experiment of issue 10 §3: refine the ensemble's class probabilities in 3D, from cached probabilities.

Phase `cache` (slow, once per case): for each case and k, the default propagation (diffusion-mlp, no refinement) with
`keep_probabilities=True`, the same with the intensity-only classifier (raw-mlp), and the growcut baseline; written
as one .npz per (case, k) under the cache folder.
Phase `evaluate` (seconds per variant): every refinement variant from the cached probabilities, Dice per region on
the non-annotated slices, paired per-case differences; JSON + Markdown.

    python -m BrainDiffSegBench.refine_experiment cache --split tuning --k 1 3 --cache /tmp/refine_exp
    python -m BrainDiffSegBench.refine_experiment evaluate --cache /tmp/refine_exp --out docs/results/refine
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from BrainDiffSegLib.propagation.cache import VolumeCache
from BrainDiffSegLib.io import load_case
from BrainDiffSegLib.options import PropagationOptions
from BrainDiffSegLib.propagation.propagate import propagate
from BrainDiffSegLib.protocol import simulate_annotation

from BrainDiffSegLib.splits import data_split

log = logging.getLogger(__name__)


def cache_case(cdir: Path, ks: list[int], folder: Path, options: PropagationOptions,
               reuse: Path | None = None) -> None:
    """`reuse`: a cache of another backbone, whose raw-mlp and growcut results (independent of the backbone) are
    copied instead of computed again."""
    from . import baselines

    case = load_case(cdir)
    vc = VolumeCache()
    for k in ks:
        path = folder / f"{case.name}_k{k}.npz"
        if path.exists():
            log.info("%s exists", path)
            continue
        annotation, zs = simulate_annotation(case.label, k)
        t = time.perf_counter()
        res = propagate(case.images, annotation, options, features=vc, keep_probabilities=True)
        t_mlp = time.perf_counter() - t
        old = reuse / path.name if reuse is not None else None
        if old is not None and old.is_file():
            with np.load(old) as d:
                raw_probs, raw_labels, gc, t_gc = d["raw_probs"], d["raw_labels"], d["growcut"], d["seconds_growcut"]
        else:
            raw = propagate(case.images, annotation, replace(options, method="raw"), features=vc,
                            keep_probabilities=True)
            raw_probs, raw_labels = raw.probabilities.astype(np.float16), raw.labels
            t = time.perf_counter()
            gc = baselines.growcut_brats(case.images, annotation).astype(np.int16)
            t_gc = time.perf_counter() - t
        np.savez(path, probs=res.probabilities.astype(np.float16), labels=res.labels, raw_probs=raw_probs,
                 raw_labels=raw_labels, growcut=gc, annotated=np.array(zs), values=np.array(res.label_values),
                 seconds_mlp=t_mlp, seconds_growcut=t_gc, case_dir=str(cdir))
        log.info("%s k=%d: mlp %.1f s, growcut %.1f s", case.name, k, t_mlp, t_gc)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m BrainDiffSegBench.refine_experiment")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cache")
    c.add_argument("--split", choices=("tuning", "test"))
    c.add_argument("--data", nargs="*", default=[])
    c.add_argument("--k", type=int, nargs="+", default=[1, 3])
    c.add_argument("--cache", type=Path, default=Path("/tmp/refine_exp"))
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("--checkpoint", default=None, help="backbone folder (default: the bundled one)")
    c.add_argument("--reuse", type=Path, default=None, help="a cache of another backbone: its raw-mlp and growcut "
                   "results are copied")
    e = sub.add_parser("evaluate")
    e.add_argument("--cache", type=Path, default=Path("/tmp/refine_exp"))
    e.add_argument("--cases", nargs="*", default=None, help="case names (default: every cached case)")
    e.add_argument("--variants", nargs="*", default=None)
    e.add_argument("--out", type=Path, default=None)
    e.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(a.threads)
    if a.cmd == "cache":
        a.cache.mkdir(parents=True, exist_ok=True)
        dirs = [Path(d) for d in a.data]
        if a.split:
            dirs += data_split(Path(os.environ.get("BRAINDIFFSEG_DATA", "/work/shared/data")))[a.split]
        for d in dirs:
            # the diffusion ensemble alone, before refinement (the variants mix in raw-mlp's and refine)
            opts = replace(PropagationOptions(), gate="none", intensity_weight=0.0, checkpoint=a.checkpoint)
            cache_case(d, a.k, a.cache, opts, a.reuse)
    else:
        from .refine_variants import evaluate

        evaluate(a.cache, a.cases, a.variants, a.out)


if __name__ == "__main__":
    main()
