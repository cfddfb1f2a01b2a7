"""`braindiffseg benchmark update`: the interactive loop's speed. A simulated user paints one slice (the k = 1
protocol slice), propagates, then paints one more slice (those of the k = 3 protocol, one at a time) and propagates
again, with one per-volume feature cache (`BrainDiffSegLib.propagation.cache.VolumeCache`) kept across the runs. Reported per
run: wall time, the engine's stage times, Dice on the non-annotated slices and the cache's memory; then, for the last
annotation, a run without a cache (today's first run) and a run through a fresh cache (which an update from
scratch, `--warm-epochs 0`, equals exactly; how far a warm-started update is from it is reported). ITK's Grow from
seeds (`baselines.growcut_brats`) on the first run's and the last update's annotation is
timed in the same process, and each run's ratio to it reported (absolute times drift on shared machines); with
`load` > 0 everything runs beside that many CPU-bound processes (`speed.busy_processes`).

With `service` (`--service local` or an engine service's URL), the same first run and updates also go through an
engine service (`BrainDiffSegService`: the Slicer panel's path, the images sent once, in their file's type) and,
for comparison, through the engine in this process by the same request path (`InProcessEngine`, what the Logic runs
in scripts): per call, the wall time from the request to the response on both paths, the engine's own time on the
service, and the overhead per call (service minus in process); the service's labels must equal the in-process ones
(same options, same torch threads).

In seeds mode (`--annotation-mode seeds`, issue 23) the user paints strokes instead of whole slices: on each of the
same slices, the seed simulator's strokes (`BrainDiffSegLib.strokes`: a few strokes per class and a loop of
Background), one slice's strokes more per update; Grow from seeds gets the same seeds."""
from __future__ import annotations

import json
import logging
import resource
import time
from pathlib import Path

import numpy as np

from BrainDiffSegLib.propagation.cache import VolumeCache
from BrainDiffSegLib.io import load_case
from BrainDiffSegLib.options import PropagationOptions
from BrainDiffSegLib.propagation.propagate import propagate
from BrainDiffSegLib.protocol import protocol_slices, region_dice

from .report import machine
from .speed import busy_processes, timed_growcut

log = logging.getLogger(__name__)
GB = 1024 ** 3


def _annotation(label: np.ndarray, zs: list[int]) -> np.ndarray:
    ann = np.zeros_like(label)
    ann[..., zs] = label[..., zs]
    return ann


def update_order(label: np.ndarray) -> list[int]:
    """The axial slices a simulated user paints one at a time: the k = 1 protocol slice, then the k = 3 protocol
    slices not among it."""
    first = protocol_slices(label, 1)
    return first + [z for z in protocol_slices(label, 3) if z not in first]


def painter(case, options: PropagationOptions, planes: list[int]):
    """zs -> the annotation a user has painted on axial slices zs (of `planes`): the complete slices, or in seeds
    mode the seed simulator's strokes on them (each slice's strokes drawn once, seeded by the slice)."""
    if options.annotation_mode != "seeds":
        return lambda zs: _annotation(case.label, zs)
    from BrainDiffSegLib.preprocess import foreground_mask
    from BrainDiffSegLib.strokes import axial_strokes

    strokes = axial_strokes(case.label, foreground_mask(case.images), planes, options.seed,
                            background_label=options.background_label)

    def paint(zs):
        ann = np.zeros(case.label.shape, np.int16)
        for z in zs:
            ann[..., z] = strokes[z]
        return ann
    return paint


def _run(case, zs, options, cache, paint) -> tuple[dict, object]:
    t = time.perf_counter()
    res = propagate(case.images, paint(zs), options, features=cache)
    seconds = time.perf_counter() - t
    return {"annotated": list(zs), "seconds": round(seconds, 2),
            "timings": {k: round(v, 2) for k, v in res.timings.items()},
            "dice": {k: round(v, 4) for k, v in region_dice(res.labels, case.label, res.annotated_slices).items()}}, res


def benchmark_update(case_dir: str | Path, out: Path, options: PropagationOptions, service: str | None = None,
                     load: int = 0, growcut: bool = True, warm_up: bool = False) -> dict:
    """`growcut` False: ITK Grow from seeds is not run (no ratios; e.g. on a GPU machine without ITK, where it would
    time the CPU anyway). `warm_up`: one propagation of the first annotation through a cache of its own before the
    timed runs, so that one-time costs of the process (loading the backbone, CUDA's context and kernels) fall outside
    the first run, as in a running engine service; its seconds are reported."""
    with busy_processes(load):
        result = _benchmark_update(case_dir, options, service, growcut, warm_up)
    result["load"] = load
    out.mkdir(parents=True, exist_ok=True)
    (out / "update.json").write_text(json.dumps(result, indent=2))
    write_update_table(result, out / "update.md")
    return result


def _benchmark_update(case_dir, options: PropagationOptions, service: str | None, with_growcut: bool = True,
                      warm_up: bool = False) -> dict:
    case = load_case(case_dir)
    if case.label is None:
        raise ValueError(f"{case_dir}: the benchmark needs the ground truth (*_seg.nii.gz)")
    order = update_order(case.label)
    first = order[:1]
    paint = painter(case, options, order)
    background = options.background_label if options.annotation_mode == "seeds" else None
    growcut = [dict(annotated=zs, **timed_growcut(case, paint(zs), zs, background))
               for zs in (sorted(first), sorted(order))] if with_growcut else []
    warm_up_seconds = None
    if warm_up:
        warm_up_seconds = _run(case, sorted(first), options, VolumeCache(), paint)[0]["seconds"]
        log.info("warm-up run: %.1f s", warm_up_seconds)
    cache = VolumeCache()
    runs, last = [], None
    for i in range(len(order)):
        row, last = _run(case, sorted(order[:i + 1]), options, cache, paint)
        row.update(run="first" if i == 0 else "update", cache_gb=round(cache.nbytes / GB, 3))
        runs.append(row)
        log.info("%s with %d slices: %.1f s", row["run"], i + 1, row["seconds"])
    plain, _ = _run(case, sorted(order), options, None, paint)
    fresh_row, fresh = _run(case, sorted(order), options, VolumeCache(), paint)
    result = {"case": case.name, "machine": machine(), "options": {"method": options.method,
                                                                    "ensemble": options.classifier.n_models,
                                                                    "device": options.device,
                                                                    "annotation_mode": options.annotation_mode},
              "runs": runs, "without_cache": plain, "fresh_cache": fresh_row,
              "update_equals_fresh_cache": bool(np.array_equal(last.labels, fresh.labels)),
              # a warm start (classifier.warm_epochs > 0) trains another ensemble than a from-scratch run: how far
              "warm_epochs": int(options.classifier.warm_epochs),
              "update_voxels_differing_from_fresh": round(float(np.mean(last.labels != fresh.labels)), 6),
              "peak_memory_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2, 2),
              "growcut": growcut, "warm_up_seconds": warm_up_seconds}
    for row in runs if growcut else []:  # growcut of the same number of slices (1 for the first run, 3 for the last)
        row["ratio_to_growcut"] = round(row["seconds"] / growcut[0 if row["run"] == "first" else 1]["seconds"], 2)
    if service:
        result["service"] = benchmark_service_path(case, order, options, service)
    return result


def _native(images: dict) -> dict:
    """The images in the type a Slicer volume loaded from the file has (int16 for BraTS): what the panel sends."""
    out = {}
    for role, a in images.items():
        ints = np.round(a)
        fits = np.array_equal(ints, a) and a.min() >= np.iinfo(np.int16).min and a.max() <= np.iinfo(np.int16).max
        out[role] = np.ascontiguousarray(ints.astype(np.int16) if fits else a)
    return out


def benchmark_service_path(case, order: list[int], options: PropagationOptions, service: str) -> dict:
    """The first run and the updates through an engine service and in this process (see the module docstring).
    service: 'local' (a private local service with this process's torch threads, started here and stopped after)
    or the URL of a running one (token: $BRAINDIFFSEG_TOKEN)."""
    import os

    import torch

    from BrainDiffSegLib.options import to_strings
    from BrainDiffSegLib.transfer import EngineRequest
    from BrainDiffSegService.engines import InProcessEngine, ServiceEngine

    images = _native(case.images)
    paint = painter(case, options, order)
    if service == "local":
        engine = ServiceEngine.local(threads=torch.get_num_threads())
    else:
        engine = ServiceEngine.remote(service, os.environ.get("BRAINDIFFSEG_TOKEN", ""))
    local = InProcessEngine()
    t = time.perf_counter()
    health = engine.health(timeout=300)
    start_seconds = time.perf_counter() - t
    # both engines warm (the first diffusion pass of a process pays for its kernels; this process ran it already)
    t = time.perf_counter()
    warm = EngineRequest("propagate", {"options": to_strings(options)},
                         {"annotation": np.ascontiguousarray(paint(order[:1])[::4, ::4])},
                         volume={r: a[::4, ::4] for r, a in images.items()})
    engine.run(warm)
    warmup_seconds = time.perf_counter() - t
    rows, same = [], True
    try:
        for i in range(len(order)):
            zs = sorted(order[:i + 1])
            annotation = np.ascontiguousarray(paint(zs))
            row = {"run": "first" if i == 0 else "update", "annotated": zs}
            labels = {}
            for name, eng in (("service", engine), ("in_process", local)):
                request = EngineRequest("propagate", {"options": to_strings(options),  # what the Logic asks for
                                                      "return": ["labels", "entropy"]},
                                        {"annotation": annotation}, volume=images)
                t = time.perf_counter()
                response = eng.run(request)
                row[f"{name}_seconds"] = round(time.perf_counter() - t, 3)
                row[f"{name}_engine_seconds"] = round(response.meta["timings"]["total"], 3)
                labels[name] = response.arrays["labels"]
            row["overhead_seconds"] = round(row["service_seconds"] - row["in_process_seconds"], 3)
            row["service_minus_its_engine_seconds"] = round(row["service_seconds"] - row["service_engine_seconds"], 3)
            row["dice"] = {k: round(v, 4) for k, v in region_dice(labels["service"], case.label, zs).items()}
            same = same and bool(np.array_equal(labels["service"], labels["in_process"]))
            rows.append(row)
            log.info("service path, %s with %d slices: %.1f s (in process %.1f s)", row["run"], len(zs),
                     row["service_seconds"], row["in_process_seconds"])
    finally:
        engine.close()
    return {"service": "a private local service (started here)" if service == "local" else service,
            "service_device": health.get("device"), "service_threads": health.get("threads"),
            "service_start_seconds": round(start_seconds, 2), "service_warmup_seconds": round(warmup_seconds, 2),
            "volume_mb_sent": round(
                sum(a.nbytes for a in images.values()) / 2**20, 1), "runs": rows, "labels_equal_in_process": same}


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
    warm = int(result.get("warm_epochs", 0))
    if warm:  # another ensemble by design: the difference is reported, not a failure
        same = (f"Updates warm-start the classifier (at most {warm} epochs from the previous run's members); the last "
                f"update differs from a from-scratch run through a fresh cache on "
                f"{100 * result['update_voxels_differing_from_fresh']:.3f} % of the voxels (its Dice: 'fresh cache').")
    else:
        same = ("Last update equals a from-scratch run through a fresh cache: "
                f"{'yes' if result['update_equals_fresh_cache'] else 'NO'}.")
    lines += ["", f"{same} Peak memory {result['peak_memory_gb']} GB."]
    if result.get("warm_up_seconds") is not None:
        lines += ["", f"A warm-up run (the first annotation, a cache of its own) took {result['warm_up_seconds']} s "
                  "before the timed runs: the first run above does not include the process's one-time costs."]
    if not result.get("growcut"):
        lines += ["", "ITK Grow from seeds was not run (`--no-growcut`): no ratios."]
    else:
        g1, g3 = result["growcut"]
        ratios = ", ".join(f"{r['run']} {r['ratio_to_growcut']}x" for r in result["runs"])
        lines += ["", f"ITK Grow from seeds (FLAIR + T1ce) on the same volume in the same run: {g1['seconds']} s from "
                  f"{len(g1['annotated'])} slice(s), {g3['seconds']} s from {len(g3['annotated'])} (Dice {g3['dice']}). "
                  f"Ratio ours / Grow from seeds: {ratios}. "
                  + (f"Beside {result['load']} CPU-bound processes." if result.get("load") else "No other load.")]
    service = result.get("service")
    if service:
        lines += ["", f"## Through the engine service ({service['service']}; {service['service_device']}, "
                  f"{service['service_threads']} torch thread(s); started in {service['service_start_seconds']} s, "
                  f"warmed up by one small job in {service.get('service_warmup_seconds', '?')} s)", "",
                  f"The images travel once ({service['volume_mb_sent']} MB in their file's type, compressed); an update "
                  "sends the annotation and receives labels and entropy (what the Slicer Logic asks for). Seconds "
                  "from the request to the response, the engine's own time in the service, the same request "
                  "through the engine in this process, and the difference:", "",
                  "| run | annotated slices | service | its engine | in process | overhead per call | WT | TC | ET |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in service["runs"]:
            d = r["dice"]
            lines.append(f"| {r['run']} | {','.join(map(str, r['annotated']))} | {r['service_seconds']:.2f} | "
                         f"{r['service_engine_seconds']:.2f} | {r['in_process_seconds']:.2f} | "
                         f"{r['overhead_seconds']:+.2f} | {d.get('WT', float('nan')):.3f} | "
                         f"{d.get('TC', float('nan')):.3f} | {d.get('ET', float('nan')):.3f} |")
        lines += ["", "Labels through the service equal those in process: "
                  f"{'yes' if service['labels_equal_in_process'] else 'NO'}."]
    path.write_text("\n".join(lines) + "\n")
