"""Speed and memory benchmark: one full volume (default BraTS2021_00006, k = 3), our propagation against the
reference approach of the original implementations (Baranchuk et al.; Alshenoudy et al.), as a mode of our extractor.

- `ours`: the engine as deployed (`propagate`): features batch by batch, only the annotated slices' features
  materialised, prediction coarse to fine (`BrainDiffSegLib.propagation.predict`). Feature
  extraction alone (every head slice, batch by batch, discarded) is timed as a separate first stage.
- `reference`: features of ALL decoder blocks at the same timestep, upsampled to the native grid for EVERY pixel of
  every processed slice and kept in memory as one float32 matrix (pixels x channels), the ensemble trained on the
  annotated slices' head pixels of it, prediction of every pixel from the matrix (no factoring).

- `growcut`: ITK's Grow from seeds (`baselines.growcut_brats`: FLAIR for the whole tumour, T1ce for the core, as
  the propagation benchmark's growcut method) given the same annotation: the tool a Slicer user would otherwise
  use, timed in the same run on the same volume. `ours` also times a first result from scratch (`first`: a fresh
  `propagate` with the product default, the backbone read from disk), and the ratio first / growcut is reported:
  absolute times drift on shared machines, the ratio much less.

With `load` > 0 the modes run beside that many CPU-bound processes (`busy_processes`), as on a clinician's
workstation that is not idle.

Each mode runs in its own subprocess, so its peak memory is its own: the process's maximum resident set size
(`resource.getrusage`), plus the peak RSS during each stage (a thread sampling /proc/self/statm every 10 ms; torch
CPU allocations are invisible to tracemalloc). The reference mode on a whole 240 x 240 x 155 volume needs
155 * 240 * 240 * C * 4 bytes for its matrix alone (C = 368 channels with 4 sequences: 13.1 GB), which does not fit
beside the other work on a 24 GB machine, so it is measured on `reference_slices` slices (the annotated ones and
the nearest others) and extrapolated linearly to every slice of the volume:
    time_full   = t_features * Z / n + t_train + t_predict * Z / n
    memory_full = peak_rss_n + (Z - n) * X * Y * C * 4 bytes
(Z slices of X x Y pixels in the volume, n measured). Both the measured subset values and the extrapolation are
reported.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from BrainDiffSegLib.propagation.sources import GivenExtractor

from .gridfeatures import ensemble_predict

log = logging.getLogger(__name__)
GB = 1024 ** 3


class RssSampler:
    """Peak resident set size (bytes) per named stage, sampled in a thread."""

    def __init__(self, interval: float = 0.01):
        self.interval, self.stage, self.peaks = interval, "start", {}
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _run(self):
        while not self._stop.is_set():
            r = self.rss()
            if r > self.peaks.get(self.stage, 0):
                self.peaks[self.stage] = r
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @contextmanager
    def measure(self, stage: str, times: dict):
        self.stage = stage
        t = time.perf_counter()
        try:
            yield
        finally:
            r = self.rss()
            self.peaks[stage] = max(self.peaks.get(stage, 0), r)
            times[stage] = time.perf_counter() - t


def _prepare(case_dir: str, k: int, device: str):
    from BrainDiffSegLib.io import load_case
    from BrainDiffSegLib.model import load_backbone
    from BrainDiffSegLib.preprocess import ModelGrid, normalize_case, stack_roles
    from BrainDiffSegLib.protocol import simulate_annotation
    from BrainDiffSegLib.resources import default_checkpoint

    case = load_case(case_dir)
    if case.label is None:
        from BrainDiffSegLib.errors import InputError

        raise InputError(f"{case_dir}: the speed benchmark simulates the annotation from the ground truth, "
                         "which is missing")
    ann, zs = simulate_annotation(case.label, k)
    norm, fg = normalize_case(case.images)
    stack, present = stack_roles(norm)
    unet, cfg = load_backbone(default_checkpoint(), device=device)
    grid = ModelGrid.from_mask(fg, cfg.sample_size)
    return case, ann, zs, fg, stack, present, unet, cfg, grid


def run_first(case_dir: str, k: int, device: str) -> dict:
    """A first result from scratch with the product default: the case read, the backbone loaded, features,
    classifier, gate, prediction (what `braindiffseg propagate` does), in seconds, and its Dice."""
    from BrainDiffSegLib.io import load_case
    from BrainDiffSegLib.propagation.propagate import PropagationOptions, propagate
    from BrainDiffSegLib.protocol import region_dice, simulate_annotation

    t = time.perf_counter()
    case = load_case(case_dir)
    ann, zs = simulate_annotation(case.label, k)
    res = propagate(case.images, ann, PropagationOptions(device=device))
    return {"seconds": round(time.perf_counter() - t, 2), "threads": torch.get_num_threads(), "timings": {k_: round(v, 2) for k_, v in res.timings.items()},
            "dice": {r: round(v, 4) for r, v in region_dice(res.labels, case.label, zs).items()}}


def timed_growcut(case, annotation: np.ndarray, zs: list[int], background_label: int | None = None) -> dict:
    """ITK Grow from seeds (`baselines.growcut_brats`, the tool a Slicer user would otherwise use) on `case` seeded
    by `annotation` (painted slices `zs`; seeds with `background_label`): seconds and Dice on the other slices
    (over the whole volume for seeds)."""
    from BrainDiffSegLib.protocol import region_dice

    from .baselines import growcut_brats

    t = time.perf_counter()
    labels = growcut_brats(case.images, annotation, background_label)
    scored = zs if background_label is None else []
    return {"seconds": round(time.perf_counter() - t, 2),
            "dice": {r: round(v, 4) for r, v in region_dice(labels, case.label, scored).items()}}


def run_growcut(case_dir: str, k: int) -> dict:
    """`timed_growcut` on the case's k protocol slices; its seconds include reading the case, as in `run_first`."""
    from BrainDiffSegLib.io import load_case
    from BrainDiffSegLib.protocol import simulate_annotation

    t = time.perf_counter()
    case = load_case(case_dir)
    ann, zs = simulate_annotation(case.label, k)
    result = timed_growcut(case, ann, zs)
    return {"mode": "growcut", "seconds": round(time.perf_counter() - t, 2), "dice": result["dice"]}


@contextmanager
def busy_processes(n: int):
    """`n` CPU-bound processes (a Python loop each) running while the block runs, stopped after it."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(max(0, n))]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def run_ours(case_dir: str, k: int, device: str) -> dict:
    from BrainDiffSegLib.propagation.features import FeatureExtractor, FeatureSpec
    from BrainDiffSegLib.propagation.propagate import PropagationOptions, propagate
    from BrainDiffSegLib.protocol import region_dice

    times: dict = {}
    first = run_first(case_dir, k, device)
    with RssSampler() as s:
        with s.measure("load", times):
            case, ann, zs, fg, stack, present, unet, cfg, grid = _prepare(case_dir, k, device)
        spec = FeatureSpec()
        ex = FeatureExtractor(unet, cfg, spec, stack, present, grid, torch.device(device))
        head = [z for z in range(fg.shape[-1]) if fg[..., z].any()]
        with s.measure("features", times):  # feature extraction alone: every head slice, batch by batch
            for b in range(0, len(head), ex.batch_size):
                zb = head[b:b + ex.batch_size]
                ex.diffusion_maps(zb)
                ex.intensity_maps(zb)
        with s.measure("propagate", times):  # the same extractor (and backbone) as deployed
            res = propagate(case.images, ann, PropagationOptions(device=device, features=spec), features=GivenExtractor(ex))
    # the feature tensors ours holds at most at once: the annotated slices' features (float16, head pixels) and one
    # batch of model-grid diffusion maps and native intensity maps (float32)
    n_train = int(sum((fg[..., z] | (ann[..., z] > 0)).sum() for z in zs))
    n_int = ex.n_channels - ex.n_diffusion_channels
    feature_bytes = n_train * ex.n_channels * 2 + ex.batch_size * 4 * (
        ex.n_diffusion_channels * cfg.sample_size ** 2 + n_int * fg.shape[0] * fg.shape[1])
    stages = {"features": times["features"], "train": res.timings["features_annotated"]
              + res.timings["train_classifier"], "predict": res.timings["predict"],
              "propagate_total": res.timings["total"]}
    return {"mode": "ours", "device": device, "first": first, "slices": len(head), "channels": ex.n_channels,
            "feature_memory_gb": round(feature_bytes / GB, 4),
            "seconds": {k_: round(v, 2) for k_, v in stages.items()},
            "peak_rss_gb": {k_: round(v / GB, 3) for k_, v in s.peaks.items()},
            "max_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2, 3),
            "dice": {r: round(v, 4) for r, v in region_dice(res.labels, case.label, zs).items()}}


def run_reference(case_dir: str, k: int, device: str, n_slices: int) -> dict:
    from BrainDiffSegLib.propagation.classifier import ClassifierOptions, PixelEnsemble
    from BrainDiffSegLib.propagation.features import FeatureExtractor, FeatureSpec

    times: dict = {}
    with RssSampler() as s:
        with s.measure("load", times):
            case, ann, zs, fg, stack, present, unet, cfg, grid = _prepare(case_dir, k, device)
        X, Y, Z = fg.shape
        spec = FeatureSpec(blocks=tuple(range(len(unet.up_blocks))))  # every decoder block, same timestep(s)
        ex = FeatureExtractor(unet, cfg, spec, stack, present, grid, torch.device(device))
        C = ex.n_channels
        others = sorted((z for z in range(Z) if z not in zs), key=lambda z: min(abs(z - a) for a in zs))
        sub = sorted(zs + others[:max(0, n_slices - len(zs))])
        n = len(sub)
        with s.measure("features", times):
            feats = torch.empty((n * X * Y, C), dtype=torch.float32)  # every pixel's full feature vector
            full = torch.ones((1, X, Y), dtype=torch.bool)
            for i, z in enumerate(sub):
                feats[i * X * Y:(i + 1) * X * Y] = ex.native_features([z], full).float()
        with s.measure("train", times):
            rows, ys = [], []
            values = [int(v) for v in np.unique(ann[..., zs])]
            for z in zs:
                i = sub.index(z)
                m = torch.from_numpy((fg[..., z] | (ann[..., z] > 0)).reshape(-1))
                rows.append(torch.nonzero(m).flatten() + i * X * Y)
                ys.append(torch.from_numpy(np.searchsorted(values, ann[..., z].reshape(-1)[m.numpy()])))
            rows = torch.cat(rows)
            ens = PixelEnsemble(C, len(values), ClassifierOptions(), device)
            ens.fit(feats[rows], torch.cat(ys))
        with s.measure("predict", times):
            p, _, _ = ensemble_predict(ens, feats)
            p.argmax(1)
    return {"mode": "reference", "device": device, "slices": n, "slices_in_volume": Z, "pixels_per_slice": X * Y,
            "channels": C, "feature_matrix_gb": round(n * X * Y * C * 4 / GB, 3),
            "seconds": {k_: round(v, 2) for k_, v in times.items() if k_ != "load"},
            "peak_rss_gb": {k_: round(v / GB, 3) for k_, v in s.peaks.items()},
            "max_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2, 3)}


def extrapolate(ref: dict) -> dict:
    """The reference mode on every slice of the volume, from its subset measurement (formulas in the docstring)."""
    n, Z = ref["slices"], ref["slices_in_volume"]
    t = ref["seconds"]
    seconds = t["features"] * Z / n + t["train"] + t["predict"] * Z / n
    extra = (Z - n) * ref["pixels_per_slice"] * ref["channels"] * 4 / GB
    return {"seconds": round(seconds, 1), "peak_memory_gb": round(ref["max_rss_gb"] + extra, 2),
            "feature_matrix_gb": round(Z * ref["pixels_per_slice"] * ref["channels"] * 4 / GB, 2)}


def _child(mode: str, case: str, k: int, device: str, n_slices: int, timeout: float) -> dict:
    """Run one mode in a subprocess of its own (its peak memory its own); its result."""
    env = dict(os.environ)
    lib_parent = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = lib_parent + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "BrainDiffSegBench.speed", "--child", mode, "--case", case, "--k", str(k),
           "--device", device, "--reference-slices", str(n_slices)]
    log.info("running %s mode on %s in a subprocess", mode, device)
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if run.returncode != 0:
        raise RuntimeError(f"{mode} mode failed (exit {run.returncode}): {run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def benchmark_speed(case: str, out: Path, k: int = 3, devices: list[str] | None = None,
                    reference_slices: int = 16, timeout: float = 3000,
                    modes: tuple[str, ...] = ("ours", "growcut", "reference"), load: int = 0) -> dict:
    """Time and memory of `modes` on one case (see the module docstring), beside `load` busy processes. Mode
    `first` times only ours' first result (`ours` includes it)."""
    from .report import machine

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    devices = devices or ["cpu", "cuda"]
    result = {"machine": machine(), "case": str(case), "k": k, "load": load, "runs": [], "notes": []}
    with busy_processes(load):
        growcut = _child("growcut", case, k, "cpu", reference_slices, timeout) if "growcut" in modes else None
        for device in devices:
            if device == "cuda" and not torch.cuda.is_available():
                result["notes"].append("cuda: skipped, torch sees no CUDA device on this machine")
                continue
            run = {"device": device, "growcut": growcut}
            if "ours" in modes or "first" in modes:
                mode = "ours" if "ours" in modes else "first"
                run[mode] = _child(mode, case, k, device, reference_slices, timeout)
                run["first"] = run[mode]["first"]
                first = run["first"]["seconds"]
                if growcut:
                    run["ratio_first_to_growcut"] = round(first / growcut["seconds"], 2)
                log.info("%s: first result %.1f s, growcut %s s", device, first, growcut and growcut["seconds"])
            if "reference" in modes:
                ref = _child("reference", case, k, device, reference_slices, timeout)
                full = extrapolate(ref)
                run.update(reference=ref, reference_full=full)
                if "ours" in run:
                    ours_time = run["ours"]["seconds"]["propagate_total"]
                    run.update(ratio_time=round(full["seconds"] / ours_time, 2),
                               ratio_memory=round(full["peak_memory_gb"] / run["ours"]["max_rss_gb"], 2))
                log.info("%s: reference (extrapolated) %.1f s %.2f GB", device, full["seconds"],
                         full["peak_memory_gb"])
            result["runs"].append(run)
    (out / "speed.json").write_text(json.dumps(result, indent=1))
    write_speed_table(result, out / "speed.md")
    return result


def write_speed_table(result: dict, path: Path) -> None:
    load = f"; beside {result['load']} CPU-bound processes" if result.get("load") else "; no other load"
    lines = [f"Case {Path(result['case']).name}, k = {result['k']}; {result['machine']}{load}\n"]
    for r in result["runs"]:
        lines.append(f"### {r['device']}\n")
        o, g, f = r.get("ours"), r.get("growcut"), r.get("first")
        if f:
            lines += ["| first result from scratch | seconds | stages (s) | Dice |", "|---|---|---|---|",
                      f"| ours (product default, {f.get('threads', '?')} torch thread(s)) | **{f['seconds']}** | "
                      f"{f['timings']} | {f['dice']} |"]
            if g:
                lines += [f"| ITK Grow from seeds (FLAIR + T1ce) | **{g['seconds']}** | | {g['dice']} |", "",
                          f"Ratio ours / Grow from seeds: **{r['ratio_first_to_growcut']}x**.", ""]
        if o and "reference" in r:
            ref, full = r["reference"], r["reference_full"]
            lines += ["| | slices | channels | features (s) | training (s) | prediction (s) | total (s) | peak RSS (GB) |",
                      "|---|---|---|---|---|---|---|---|",
                      f"| ours (propagate) | {o['slices']} head | {o['channels']} | {o['seconds']['features']} "
                      f"(alone; fused into prediction) | {o['seconds']['train']} | {o['seconds']['predict']} | "
                      f"{o['seconds']['propagate_total']} | {o['max_rss_gb']} |",
                      f"| reference, measured | {ref['slices']} of {ref['slices_in_volume']} | {ref['channels']} | "
                      f"{ref['seconds']['features']} | {ref['seconds']['train']} | {ref['seconds']['predict']} | "
                      f"{round(sum(ref['seconds'].values()), 1)} | {ref['max_rss_gb']} |",
                      f"| reference, extrapolated to the volume | {ref['slices_in_volume']} | {ref['channels']} | | | | "
                      f"{full['seconds']} | {full['peak_memory_gb']} (feature matrix {full['feature_matrix_gb']}) |",
                      "", f"Ratios reference / ours: time **{r['ratio_time']}x**, peak memory **{r['ratio_memory']}x**.",
                      f"Feature tensors held at once: ours at most {o.get('feature_memory_gb', '?')} GB (annotated "
                      f"slices' features + one batch of maps), the reference {full['feature_matrix_gb']} GB (every "
                      "pixel, float32).",
                      f"Peak RSS per stage, ours: {o['peak_rss_gb']}; reference: {ref['peak_rss_gb']}.", ""]
    lines += [f"- {n}" for n in result["notes"]]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":  # the per-mode subprocess
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", choices=["ours", "first", "reference", "growcut"], required=True)
    ap.add_argument("--case", required=True)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reference-slices", type=int, default=16)
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from BrainDiffSegLib.device import adaptive_threads

    # $OMP_NUM_THREADS, else what `braindiffseg propagate` uses: torch's choice, fewer on a busy machine
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "0")) or adaptive_threads())
    if a.child == "growcut":
        r = run_growcut(a.case, a.k)
    elif a.child == "first":
        r = {"mode": "first", "first": run_first(a.case, a.k, a.device)}
    else:
        r = run_ours(a.case, a.k, a.device) if a.child == "ours" else run_reference(a.case, a.k, a.device,
                                                                                       a.reference_slices)
    print(json.dumps(r))
