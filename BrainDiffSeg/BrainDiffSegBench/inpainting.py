"""`braindiffseg benchmark inpainting`: healthy-tissue inpainting on healthy masks of the test split.

Per test case one healthy mask (a tumour shape of another test case, flipped / rotated, placed in the brain away
from the case's tumour: `BrainDiffSegLib.inpainting.masks`, seeded, written to masks.json); the T1 is voided inside it and
every method fills it: the DDPM(s) at one or more DDIM step counts and the baselines. Metrics: the challenge's SSIM /
PSNR / MSE inside the mask (`inpaint_metrics`), time per volume. Writes results.json, README.md (the table),
figure.png (input, mask, each method, ground truth) and masks.json.
"""
from __future__ import annotations

import json
import logging
import platform
import time
from pathlib import Path

import numpy as np
import torch

from BrainDiffSegLib.inpainting.inpaint import inpaint_volume
from BrainDiffSegLib.inpainting.masks import healthy_masks
from BrainDiffSegLib.inpainting.model import load_inpaint_model
from BrainDiffSegLib.training.inpaint import load_t1_cases

from .inpaint_metrics import BASELINES, challenge_metrics

log = logging.getLogger(__name__)
METRICS = ("ssim", "psnr", "mse")


def _methods(models: dict[str, str], steps: list[int], baselines: list[str], samples: list[int] = (1,),
             strengths: list[float] = (1.0,)) -> dict:
    methods = {}
    for name, folder in models.items():
        net_cfg = load_inpaint_model(folder)
        for n in steps:
            for s in samples:
                for st in strengths:
                    extra = (([f"{n} steps"] if len(steps) > 1 else [])
                             + ([f"mean of {s}"] if len(samples) > 1 or s > 1 else [])
                             + ([f"from the fill at {st:g}"] if st < 1.0 else []))
                    label = f"{name} ({', '.join(extra)})" if extra else name
                    methods[label] = (lambda v, m, nc=net_cfg, n=n, s=s, st=st:
                                      inpaint_volume(v, m, model=nc, steps=n, samples=s, strength=st))
    for b in baselines:
        methods[b] = BASELINES[b]
    return methods


def benchmark_inpainting(case_dirs: list[Path], out: Path, models: dict[str, str], steps: list[int] = (25,),
                         baselines: list[str] = tuple(BASELINES), seed: int = 0, samples: list[int] = (1,),
                         strengths: list[float] = (1.0,)) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cases = load_t1_cases(case_dirs)
    placed = healthy_masks(cases, seed=seed, per_case=1)
    (out / "masks.json").write_text(json.dumps([r for _, r in placed], indent=1))
    methods = _methods(models, list(steps), list(baselines), list(samples), list(strengths))
    rows, figure = [], None
    by_name = {c.name: c for c in cases}
    for mask, rec in placed:
        case = by_name[rec["case"]]
        t1 = case.images["t1"]
        voided = np.where(mask, 0, t1).astype(np.float32)
        outputs = {}
        for name, fn in methods.items():
            start = time.time()
            filled = fn(voided, mask)
            seconds = time.time() - start
            assert np.array_equal(filled[~mask], voided[~mask]), f"{name} changed voxels outside the mask"
            m = challenge_metrics(filled, t1, voided, mask)
            rows.append({"case": case.name, "method": name, "seconds": round(seconds, 2), "voxels": int(mask.sum()),
                         **{k: round(v, 5) for k, v in m.items()}})
            outputs[name] = filled
            log.info("%s %-28s SSIM %.3f PSNR %.2f MSE %.4f  %.1f s", case.name, name, m["ssim"], m["psnr"],
                     m["mse"], seconds)
        if figure is None or case.name.startswith("BraTS2021"):
            figure = (case.name, t1, voided, mask, outputs)
    summary = summarise(rows)
    result = {"cases": len(placed), "seed": seed, "models": models, "steps": list(steps), "samples": list(samples),
              "strengths": list(strengths),
              "rows": rows,
              "summary": summary, "hardware": f"{platform.processor() or platform.machine()}, "
              f"{torch.get_num_threads()} torch thread(s)"}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    (out / "README.md").write_text(markdown(result))
    if figure is not None:
        plot_figure(*figure, out / "figure.png")
    return result


def summarise(rows: list[dict]) -> dict:
    summary = {}
    for name in dict.fromkeys(r["method"] for r in rows):
        sel = [r for r in rows if r["method"] == name]
        summary[name] = {k: {"mean": float(np.mean([r[k] for r in sel])), "std": float(np.std([r[k] for r in sel]))}
                         for k in METRICS + ("psnr_01", "seconds")}
        summary[name]["n"] = len(sel)
    return summary


def markdown(result: dict) -> str:
    lines = ["# Healthy-tissue inpainting", "",
             f"{result['cases']} cases, one healthy mask each (seed {result['seed']}, `masks.json`); T1 voided inside "
             "the mask. Metrics as the BraTS inpainting challenge computes them: SSIM, PSNR (data range of the "
             "reference inside the mask) and MSE inside the mask, both images clipped and scaled to [0, 1] with the "
             "0.5 / 99.5 percentiles of the voided input; PSNR_01 with the fixed range [0, 1]. Mean ± standard "
             f"deviation over cases; time per volume on {result['hardware']}. Models: "
             + ", ".join(f"{k}: `{v}`" for k, v in result["models"].items()) + ".", "",
             "| method | SSIM ↑ | PSNR ↑ (dB) | MSE ↓ | PSNR_01 (dB) | s / volume | cases |",
             "|---|---|---|---|---|---|---|"]
    for name, s in result["summary"].items():
        lines.append(f"| {name} | {s['ssim']['mean']:.3f} ± {s['ssim']['std']:.3f} | {s['psnr']['mean']:.2f} ± "
                     f"{s['psnr']['std']:.2f} | {s['mse']['mean']:.4f} ± {s['mse']['std']:.4f} | "
                     f"{s['psnr_01']['mean']:.2f} | {s['seconds']['mean']:.1f} | {s['n']} |")
    ddpms = [m for m in result["summary"] if m.startswith("DDPM")]
    if ddpms and PAIRED_REFERENCE in result["summary"]:
        lines += ["", f"Paired per case against the {PAIRED_REFERENCE} fill (mean difference, bootstrap 95 % "
                  "interval over cases, cases where the method is better):", "",
                  "| method − " + PAIRED_REFERENCE + " | SSIM | PSNR (dB) | MSE |", "|---|---|---|---|"]
        for name in ddpms:
            d = paired_against(result["rows"], name, PAIRED_REFERENCE)
            lines.append(f"| {name} | " + " | ".join(
                f"{d[k][0]:+.{p}f} [{d[k][1]:+.{p}f}, {d[k][2]:+.{p}f}] {d[k][3]}/{d[k][4]}"
                for k, p in (("ssim", 4), ("psnr", 2), ("mse", 4))) + " |")
    return "\n".join(lines) + "\n"


PAIRED_REFERENCE = "distance-weighted"  # the strongest simple baseline


def paired_against(rows: list[dict], method: str, reference: str) -> dict:
    """metric -> (mean difference method - reference, bootstrap 95 % low, high, cases where the method is better
    (lower MSE, higher SSIM / PSNR), cases) over the cases both have."""
    from .stats import bootstrap_ci

    a = {r["case"]: r for r in rows if r["method"] == method}
    b = {r["case"]: r for r in rows if r["method"] == reference}
    cases = [c for c in a if c in b]
    out = {}
    for k in METRICS:
        diffs = [a[c][k] - b[c][k] for c in cases]
        mean, lo, hi = bootstrap_ci(diffs)
        better = sum((d < 0) if k == "mse" else (d > 0) for d in diffs)
        out[k] = (mean, lo, hi, better, len(diffs))
    return out


def plot_figure(name: str, t1: np.ndarray, voided: np.ndarray, mask: np.ndarray, outputs: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = int(np.argmax(mask.sum(axis=(0, 1))))
    xs, ys = np.nonzero(mask[:, :, z])
    pad = 24
    box = (slice(max(xs.min() - pad, 0), xs.max() + pad), slice(max(ys.min() - pad, 0), ys.max() + pad))
    panels = [("input (voided)", voided), ("mask", mask.astype(np.float32))] + list(outputs.items()) + \
        [("ground truth", t1)]
    vmax = float(np.percentile(t1[t1 > 0], 99.5))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.2 * len(panels), 2.6), dpi=110)
    for ax, (title, img) in zip(axes, panels):
        sl = img[:, :, z][box]
        ax.imshow(np.rot90(sl), cmap="gray", vmin=0, vmax=1 if title == "mask" else vmax)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.suptitle(f"{name}, axial slice {z}", fontsize=9)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
