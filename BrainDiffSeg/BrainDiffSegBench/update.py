"""`braindiffseg benchmark update`: the interactive loop's speed. A simulated user paints one slice (the k = 1
protocol slice), propagates, then paints one more slice (those of the k = 3 protocol, one at a time) and propagates
again, with one per-volume feature cache (`BrainDiffSegLib.cache.VolumeCache`) kept across the runs. Reported per
run: wall time, the engine's stage times, Dice on the non-annotated slices and the cache's memory; then, for the last
annotation, a run without a cache (today's first run) and a run through a fresh cache (which the update must equal
exactly)."""
from __future__ import annotations

import json
import logging
import resource
import time
from pathlib import Path

import numpy as np

from BrainDiffSegLib.cache import VolumeCache
from BrainDiffSegLib.io import load_case
from BrainDiffSegLib.options import PropagationOptions
from BrainDiffSegLib.propagate import propagate
from BrainDiffSegLib.protocol import protocol_slices, region_dice

from .report import machine

log = logging.getLogger(__name__)
GB = 1024 ** 3


def _annotation(label: np.ndarray, zs: list[int]) -> np.ndarray:
    ann = np.zeros_like(label)
    ann[..., zs] = label[..., zs]
    return ann


def _run(case, zs, options, cache) -> tuple[dict, object]:
    t = time.perf_counter()
    res = propagate(case.images, _annotation(case.label, zs), options, cache=cache)
    seconds = time.perf_counter() - t
    return {"annotated": list(zs), "seconds": round(seconds, 2),
            "timings": {k: round(v, 2) for k, v in res.timings.items()},
            "dice": {k: round(v, 4) for k, v in region_dice(res.labels, case.label, res.annotated_slices).items()}}, res


def benchmark_update(case_dir: str | Path, out: Path, options: PropagationOptions) -> dict:
    case = load_case(case_dir)
    if case.label is None:
        raise ValueError(f"{case_dir}: the benchmark needs the ground truth (*_seg.nii.gz)")
    first = protocol_slices(case.label, 1)
    order = first + [z for z in protocol_slices(case.label, 3) if z not in first]
    cache = VolumeCache()
    runs, last = [], None
    for i in range(len(order)):
        row, last = _run(case, sorted(order[:i + 1]), options, cache)
        row.update(run="first" if i == 0 else "update", cache_gb=round(cache.nbytes / GB, 3))
        runs.append(row)
        log.info("%s with %d slices: %.1f s", row["run"], i + 1, row["seconds"])
    plain, _ = _run(case, sorted(order), options, None)
    fresh_row, fresh = _run(case, sorted(order), options, VolumeCache())
    result = {"case": case.name, "machine": machine(), "options": {"method": options.method,
                                                                    "ensemble": options.classifier.n_models,
                                                                    "device": options.device},
              "runs": runs, "without_cache": plain, "fresh_cache": fresh_row,
              "update_equals_fresh_cache": bool(np.array_equal(last.labels, fresh.labels)),
              "peak_memory_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2, 2)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "update.json").write_text(json.dumps(result, indent=2))
    write_update_table(result, out / "update.md")
    return result


def write_update_table(result: dict, path: Path) -> None:
    lines = [f"# Interactive update: {result['case']}", "", f"Machine: {result['machine']}; method "
             f"{result['options']['method']}, {result['options']['ensemble']} MLPs, device {result['options']['device']}.",
             "", "| run | annotated slices | seconds | train | predict | WT | TC | ET | cache GB |",
             "|---|---|---|---|---|---|---|---|---|"]
    rows = [(r["run"], r) for r in result["runs"]] + [("without cache", result["without_cache"]),
                                                    ("fresh cache", result["fresh_cache"])]
    for name, r in rows:
        d = r["dice"]
        lines.append(f"| {name} | {','.join(map(str, r['annotated']))} | {r['seconds']:.1f} | "
                     f"{r['timings'].get('train_classifier', 0):.1f} | {r['timings'].get('predict', 0):.1f} | "
                     f"{d.get('WT', float('nan')):.3f} | {d.get('TC', float('nan')):.3f} | "
                     f"{d.get('ET', float('nan')):.3f} | {r.get('cache_gb', '')} |")
    lines += ["", f"Last update equals a from-scratch run through a fresh cache: "
              f"{'yes' if result['update_equals_fresh_cache'] else 'NO'}. Peak memory {result['peak_memory_gb']} GB."]
    path.write_text("\n".join(lines) + "\n")
