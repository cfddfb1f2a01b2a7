"""Benchmarks: the propagation comparison under the project's protocol, and the feature-selection experiment.

Everything runs headless through the same engine calls that the Slicer Logic uses (or, with a `propagator`, through
the Logic itself: `BrainDiffSeg/Scripts/benchmark.py`). Results are written as JSON (one record per case x k x
method, Dice and HD95 per region), a Markdown table and PNG plots. HD95 follows `protocol.region_hd95`: in mm, NaN
where exactly one of prediction and ground truth is empty; NaN values are left out of the means and counted in the
table's "HD95 undefined" column.
"""
from __future__ import annotations

import json
import logging
import platform
import resource
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .classifier import ClassifierOptions
from .errors import InputError
from .features import FeatureExtractor, FeatureSpec
from .io import Case, find_cases, load_case
from .model import load_backbone
from .preprocess import ModelGrid, normalize_case, stack_roles
from .propagate import PropagationOptions, propagate
from .protocol import region_dice, region_hd95, simulate_annotation

log = logging.getLogger(__name__)
METHODS = ("diffusion-mlp", "raw-mlp", "unet-patient", "growcut", "fill-between")
# propagator(case, annotation, method, options) -> label volume: replaces the engine call of the classifier methods
Propagator = Callable[[Case, np.ndarray, str, PropagationOptions], np.ndarray]


def data_split(root: Path) -> dict[str, list[Path]]:
    """The project's fixed split of the shared cases: tune on 'tuning', report on 'test', never tune on 'test'.

    tuning: the first 5 BraTS 2018 cases and every 8th LGG patient (sorted by name); test: all others,
    BraTS2021_00006 included.
    """
    root = Path(root)
    brats18 = find_cases(root / "brats2018") if (root / "brats2018").exists() else []
    lgg = find_cases(root / "lgg128") if (root / "lgg128").exists() else []
    other = [c for c in find_cases(root) if c not in brats18 and c not in lgg]
    tuning = brats18[:5] + lgg[::8]
    test = [c for c in brats18 + lgg + other if c not in tuning]
    return {"tuning": tuning, "test": test}


def machine() -> str:
    import os

    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores{gpu}, torch {torch.__version__}"


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def run_method(case: Case, annotation: np.ndarray, method: str, options: PropagationOptions,
               propagator: Propagator | None = None, unet_options=None) -> np.ndarray:
    """One method's label volume. `propagator` (if given) runs diffusion-mlp and raw-mlp instead of the engine's
    `propagate` (the Slicer script passes one that goes through `BrainDiffSegLogic.propagate`)."""
    if method in ("diffusion-mlp", "raw-mlp") and propagator is not None:
        return propagator(case, annotation, method, options)
    if method == "diffusion-mlp":
        return propagate(case.images, annotation, replace(options, method="diffusion")).labels
    if method == "raw-mlp":
        return propagate(case.images, annotation, replace(options, method="raw")).labels
    if method == "unet-patient":
        from .segnets import propagate_unet_patient

        return propagate_unet_patient(case.images, annotation, unet_options)
    from . import baselines

    if method == "growcut":
        return baselines.growcut_brats(case.images, annotation)
    if method == "fill-between":
        return baselines.fill_between(annotation)
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def _warm_up_baselines(methods: list[str]) -> None:
    """Run the ITK baselines once on a tiny volume, untimed: ITK loads its wrapped filters lazily on first use
    (seconds), which would otherwise be counted in the first case's time."""
    if not {"growcut", "fill-between"} & set(methods):
        return
    from . import baselines

    ann = np.zeros((8, 8, 3), np.uint8)
    ann[3:5, 3:5, [0, 2]] = 2
    if "fill-between" in methods:
        baselines.fill_between(ann)
    if "growcut" in methods:
        baselines.grow_from_seeds(np.random.default_rng(0).random(ann.shape).astype(np.float32), ann)


def benchmark_propagation(case_dirs: list[Path], ks: list[int], methods: list[str], out: Path,
                          options: PropagationOptions | None = None, overlays: int = 3,
                          propagator: Propagator | None = None, unet_options=None) -> list[dict]:
    """Every method on every case with ground truth at every k; `unet_options`: segnets.PatientUNetOptions."""
    options = options or PropagationOptions()
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise InputError(f"unknown propagation method(s) {unknown}; choose from {list(METHODS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _warm_up_baselines(methods)
    records = []
    for ci, cdir in enumerate(case_dirs):
        case = load_case(cdir)
        if case.label is None:
            log.warning("%s has no ground truth; skipped", cdir)
            continue
        for k in ks:
            annotation, zs = simulate_annotation(case.label, k)
            preds = {}
            for method in methods:
                t = time.perf_counter()
                pred = run_method(case, annotation, method, options, propagator, unet_options)
                seconds = time.perf_counter() - t
                preds[method] = pred
                rec = {"case": case.name, "k": k, "method": method, "annotated": zs, "seconds": round(seconds, 2),
                       "dice": {r: round(v, 4) for r, v in region_dice(pred, case.label, zs).items()},
                       "hd95": {r: _round(v) for r, v in region_hd95(pred, case.label, zs, case.spacing).items()},
                       "spacing": list(case.spacing)}
                records.append(rec)
                log.info("[%d/%d] %s k=%d %-14s Dice %s HD95 %s (%.1f s)", ci + 1, len(case_dirs), case.name, k,
                         method, " ".join(f"{r} {v:.3f}" for r, v in rec["dice"].items()),
                         " ".join(f"{r} {v:.1f}" for r, v in rec["hd95"].items()), seconds)
            if ci < overlays:
                from .overlay import save_overlay

                img = case.images.get("flair", next(iter(case.images.values())))
                for method, pred in preds.items():
                    save_overlay(out / f"overlay_{case.name}_k{k}_{method}.png", img, pred, case.label, zs,
                                 title=f"{case.name} k={k} {method}")
        (out / "results.json").write_text(json.dumps({"machine": machine(), "records": records}, indent=1,
                                                     allow_nan=True))
    write_table(records, out / "table.md")
    plot_dice_vs_k(records, out / "dice_vs_k.png")
    return records


def _round(v: float, digits: int = 2) -> float:
    return v if v != v else round(float(v), digits)  # NaN stays NaN (written as NaN in the JSON)


def nan_stats(values: list[float]) -> tuple[float, float, int, int]:
    """(mean, sd, n finite, n NaN) with NaN values excluded from mean and sd (NaN mean if none is finite)."""
    v = np.asarray([x for x in values if x is not None], dtype=float)
    ok = v[np.isfinite(v)]
    if len(ok) == 0:
        return float("nan"), float("nan"), 0, len(v)
    return float(ok.mean()), float(ok.std()), len(ok), int(len(v) - len(ok))


def summarise(records: list[dict]) -> dict:
    """(method, k, region) -> (mean, sd, n) of Dice, (method, k, 'HD95 ' + region) -> (mean, sd, n, n NaN) and
    (method, k, 'seconds') -> (mean, sd, n)."""
    groups: dict = {}
    for r in records:
        for reg, v in r["dice"].items():
            groups.setdefault((r["method"], r["k"], reg), []).append(v)
        for reg, v in r.get("hd95", {}).items():
            groups.setdefault((r["method"], r["k"], "HD95 " + reg), []).append(v)
        groups.setdefault((r["method"], r["k"], "seconds"), []).append(r["seconds"])
    out = {}
    for key, v in groups.items():
        if key[2].startswith("HD95"):
            out[key] = nan_stats(v)
        else:
            out[key] = (float(np.mean(v)), float(np.std(v)), len(v))
    return out


def dataset_of(case: str) -> str:
    return "LGG" if case.startswith("TCGA") else "BraTS"


def write_table(records: list[dict], path: Path) -> None:
    """Mean ± sd per method x k over all cases, then per dataset when there are several."""
    sections = [("all cases", records)]
    datasets = sorted({dataset_of(r["case"]) for r in records})
    if len(datasets) > 1:
        sections += [(d, [r for r in records if dataset_of(r["case"]) == d]) for d in datasets]
    text = []
    for title, recs in sections:
        n_cases = len({r["case"] for r in recs})
        text.append(f"### {title} ({n_cases} cases)\n\n" + _table(recs))
    path.write_text("\n".join(text))


def _table(records: list[dict]) -> str:
    s = summarise(records)
    regions = [r for r in ("WT", "TC", "ET") if any(k[2] == r for k in s)]
    hd = [r for r in regions if any(k[2] == "HD95 " + r for k in s)]
    lines = ["| method | k | n | " + " | ".join(f"{r} Dice" for r in regions)
             + "".join(f" | {r} HD95 (mm)" for r in hd) + (" | HD95 undefined" if hd else "") + " | s/case |",
             "|---|---|---|" + "---|" * (len(regions) + len(hd) + bool(hd) + 1)]
    for method, k in sorted({(m, k) for m, k, _ in s}, key=lambda x: (x[1], x[0])):
        cells = [f"{s[(method, k, r)][0]:.3f} ± {s[(method, k, r)][1]:.3f}" if (method, k, r) in s else "–"
                 for r in regions]
        for r in hd:
            st = s.get((method, k, "HD95 " + r))
            cells.append("–" if st is None or st[2] == 0 else f"{st[0]:.1f} ± {st[1]:.1f}")
        if hd:
            cells.append(str(sum(s[(method, k, "HD95 " + r)][3] for r in hd if (method, k, "HD95 " + r) in s)))
        n = s[(method, k, "seconds")][2]
        lines.append(f"| {method} | {k} | {n} | " + " | ".join(cells) + f" | {s[(method, k, 'seconds')][0]:.1f} |")
    return "\n".join(lines) + "\n"


def plot_dice_vs_k(records: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summarise(records)
    regions = [r for r in ("WT", "TC", "ET") if any(k[2] == r for k in s)]
    methods = sorted({m for m, _, _ in s})
    regions = [r for r in regions if r in ("WT", "TC", "ET")]
    fig, axes = plt.subplots(1, len(regions), figsize=(4 * len(regions), 3.2), dpi=100, squeeze=False)
    for ax, reg in zip(axes[0], regions):
        for m in methods:
            ks = sorted(k for mm, k, r in s if mm == m and r == reg)
            ax.errorbar(ks, [s[(m, k, reg)][0] for k in ks], yerr=[s[(m, k, reg)][1] for k in ks], marker="o",
                        capsize=3, label=m)
        ax.set_title(reg)
        ax.set_xlabel("annotated slices k")
        ax.set_ylabel("Dice")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


class CachedExtractor(FeatureExtractor):
    """Serves a channel subset of precomputed per-pixel features (used by the feature-selection experiment).

    `rows` (P, C) float16 holds the features of the pixels where `index` (Z, S, S) is >= 0.
    """

    rows: torch.Tensor
    index: torch.Tensor
    channels: torch.Tensor

    def diffusion_maps(self, zs):
        if not len(self.channels):
            return None
        idx = self.index[list(zs)]
        out = torch.zeros(idx.shape + (len(self.channels),))
        out[idx >= 0] = self.rows[idx[idx >= 0]][:, self.channels].float()
        return out.permute(0, 3, 1, 2)


def _cache_case(ex: FeatureExtractor, fg: np.ndarray, batch: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Diffusion features of every pixel of the model grid near the head, as (rows, index).

    "Near": the model pixels that overlap the head, dilated by one pixel, so that every model pixel that the bilinear
    resampling to the native grid reads for a head pixel is cached (an uncached neighbour would be read as 0)."""
    from scipy import ndimage

    grid, Z = ex.grid, fg.shape[-1]
    near = grid.to_model(np.moveaxis(fg, -1, 0)[:, None].astype(np.float32), fill=0.0)[:, 0] > 0.01
    near = torch.from_numpy(ndimage.binary_dilation(near.numpy(), np.ones((1, 3, 3), bool)))
    index = torch.full(near.shape, -1, dtype=torch.long)
    if ex.n_diffusion_channels == 0:  # raw candidates only: nothing to cache
        return torch.zeros((0, 0), dtype=torch.float16), index
    index[near] = torch.arange(int(near.sum()))
    rows = []
    for s in range(0, Z, batch):
        zs = list(range(s, min(s + batch, Z)))
        m = near[zs]
        if m.any():
            rows.append(ex.diffusion_maps(zs).permute(0, 2, 3, 1)[m].half())
    return torch.cat(rows), index


def _cache_plan(candidates: list[FeatureSpec], unet, cfg, stack, present, grid
                ) -> tuple[FeatureExtractor, list[list[int]]]:
    """One extractor computing the diffusion features of every candidate, and per candidate its entries.

    A FeatureExtractor draws the noise of its i-th timestep by position (from `noise_seed` and the number of
    timesteps), so the same timestep can carry different noise in different candidates: the cache holds one entry
    per distinct (timestep, noise) pair, with exactly the noise that the candidate's own extractor would use.
    """
    ts: list[int] = []
    noises: list[torch.Tensor] = []
    plan = []
    for spec in candidates:
        entries = []
        if spec.blocks:
            own = FeatureExtractor(unet, cfg, spec, stack, present, grid)._noise
            for t, n in zip(spec.timesteps, own):
                e = next((j for j, (tj, nj) in enumerate(zip(ts, noises)) if tj == t and torch.equal(nj, n)), None)
                if e is None:
                    ts.append(int(t))
                    noises.append(n)
                    e = len(ts) - 1
                entries.append(e)
        plan.append(entries)
    blocks = tuple(sorted({b for c in candidates for b in c.blocks}))
    full = FeatureExtractor(unet if ts else None, cfg, FeatureSpec(blocks=blocks, timesteps=tuple(ts),
                                                                   intensities=False), stack, present, grid)
    if ts:
        full._noise = torch.stack(noises)
    return full, plan


def cached_extractors(candidates: list[FeatureSpec], unet, cfg, stack: np.ndarray, present: np.ndarray,
                      grid: ModelGrid, fg: np.ndarray) -> list[CachedExtractor]:
    """One CachedExtractor per candidate spec, all served from one cache of the case's diffusion features; each
    gives the features that FeatureExtractor(unet, cfg, spec, stack, present, grid) gives, up to float16 rounding."""
    full, plan = _cache_plan(candidates, unet, cfg, stack, present, grid)
    rows, index = _cache_case(full, fg)
    # channel layout of FeatureExtractor.diffusion_maps: per (timestep, noise) entry, per block (in block order)
    rev = list(reversed(unet.config.block_out_channels))
    offsets, o = {}, 0
    for e in range(len(full.spec.timesteps)):
        for b in full.spec.blocks:
            offsets[(e, b)] = (o, o + rev[b])
            o += rev[b]
    out = []
    for spec, entries in zip(candidates, plan):
        ch = [c for e in entries for b in sorted(set(spec.blocks)) for c in range(*offsets[(e, b)])]
        cex = CachedExtractor(unet if spec.blocks else None, cfg, spec, stack, present, grid)
        cex.rows, cex.index, cex.channels = rows, index, torch.tensor(ch, dtype=torch.long)
        out.append(cex)
    return out


def select_features(case_dirs: list[Path], checkpoint: str, out: Path, k: int = 3,
                    candidates: list[FeatureSpec] | None = None, n_models: int = 3) -> list[dict]:
    """Dice of the propagation for candidate feature specs on tuning cases (features computed once per case)."""
    unet, cfg = load_backbone(checkpoint)
    candidates = candidates or default_candidates()
    records = []
    for ci, cdir in enumerate(case_dirs):
        case = load_case(cdir)
        annotation, zs = simulate_annotation(case.label, k)
        norm, fg = normalize_case(case.images)
        stack, present = stack_roles(norm)
        grid = ModelGrid.from_mask(fg, cfg.sample_size)
        t = time.perf_counter()
        extractors = cached_extractors(candidates, unet, cfg, stack, present, grid, fg)
        log.info("%s: cached %s features in %.1f s", case.name, tuple(extractors[0].rows.shape),
                 time.perf_counter() - t)
        for spec, cex in zip(candidates, extractors):
            # the cache and its extractors live on the CPU, so the classifier runs there too (also on a GPU machine)
            opts = PropagationOptions(method="diffusion" if spec.blocks else "raw", features=spec,
                                      classifier=ClassifierOptions(n_models=n_models), device="cpu")
            t = time.perf_counter()
            res = propagate(case.images, annotation, opts, extractor=cex)
            d = region_dice(res.labels, case.label, zs)
            rec = {"case": case.name, "spec": spec_name(spec), "channels": cex.n_channels,
                   "seconds_classifier": round(time.perf_counter() - t, 2),
                   "dice": {r: round(v, 4) for r, v in d.items()}}
            records.append(rec)
            log.info("[%d/%d] %s %-40s %s", ci + 1, len(case_dirs), case.name, rec["spec"],
                     " ".join(f"{r} {v:.3f}" for r, v in d.items()))
        del extractors
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "feature_selection.json").write_text(json.dumps(
            {"machine": machine(), "checkpoint": str(checkpoint), "k": k, "records": records}, indent=1))
        write_feature_table(records, Path(out) / "feature_selection.md")
    return records


def spec_name(spec: FeatureSpec) -> str:
    if not spec.blocks:
        return "raw" + (f" + smooth{list(spec.smoothing)}" if spec.smoothing else "")
    s = f"blocks {list(spec.blocks)} t {list(spec.timesteps)}"
    if spec.intensities:
        s += " + int"
    if spec.smoothing:
        s += " + smooth"
    return s


def default_candidates() -> list[FeatureSpec]:
    F = FeatureSpec
    sm = (1.0, 2.0, 4.0)
    return [
        F(blocks=(), timesteps=(), smoothing=sm),
        F(blocks=(1,), timesteps=(100,)),
        F(blocks=(2,), timesteps=(100,)),
        F(blocks=(1, 2), timesteps=(100,)),
        F(blocks=(0, 1, 2), timesteps=(100,)),
        F(blocks=(1, 2), timesteps=(25,)),
        F(blocks=(1, 2), timesteps=(250,)),
        F(blocks=(1, 2), timesteps=(25, 250)),
        F(blocks=(1,), timesteps=(25, 250)),
        F(blocks=(1, 2), timesteps=(100,), intensities=False),
        F(blocks=(1, 2), timesteps=(100,), smoothing=sm),
        F(blocks=(1,), timesteps=(100,), smoothing=sm),
    ]


def write_feature_table(records: list[dict], path: Path) -> None:
    by: dict = {}
    for r in records:
        by.setdefault(r["spec"], []).append(r)
    lines = ["| features | channels | cases | WT | TC | ET | mean of regions |", "|---|---|---|---|---|---|---|"]
    rows = []
    for spec, rs in by.items():
        vals = {reg: [r["dice"][reg] for r in rs if reg in r["dice"]] for reg in ("WT", "TC", "ET")}
        means = {reg: float(np.mean(v)) if v else float("nan") for reg, v in vals.items()}
        overall = float(np.mean([v for r in rs for v in r["dice"].values()]))
        rows.append((overall, f"| {spec} | {rs[0]['channels']} | {len(rs)} | "
                     + " | ".join("–" if np.isnan(means[g]) else f"{means[g]:.3f}" for g in ("WT", "TC", "ET"))
                     + f" | {overall:.3f} |"))
    lines += [row for _, row in sorted(rows, key=lambda x: -x[0])]
    path.write_text("\n".join(lines) + "\n")


def merge_runs(dirs: list[Path], out: Path) -> list[dict]:
    """Join the results.json of several propagation runs (e.g. one process per dataset) into one results.json,
    table.md and dice_vs_k.png in `out`; a (case, k, method) present in several runs is taken from the first."""
    records, seen, machines = [], set(), []
    for d in dirs:
        data = json.loads((Path(d) / "results.json").read_text())
        machines.append(data["machine"])
        for r in data["records"]:
            key = (r["case"], r["k"], r["method"])
            if key not in seen:
                seen.add(key)
                records.append(r)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"machine": machines[0], "merged_from": [str(d) for d in dirs],
                                                  "records": records}, indent=1))
    write_table(records, out / "table.md")
    plot_dice_vs_k(records, out / "dice_vs_k.png")
    return records
