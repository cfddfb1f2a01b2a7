"""Shared pieces of the benchmarks' reports: rounding that keeps NaN, the machine description, NaN-aware statistics,
and the propagation benchmark's summary table (Markdown) and Dice-vs-k plot (PNG).

HD95 follows `metrics.region_hd95`: in mm, NaN where exactly one of prediction and ground truth is
empty; NaN values are left out of the means and counted in the table's "HD95 undefined" column.

Records with a backbone (hybrid-mlp, diffusion-mlp) are reported per backbone (a backbone column) and records of
several classifier seeds are first averaged per case (`stats.seed_means`); the tables then add the paired per-case
differences between backbones, hybrid-mlp against diffusion-mlp, and against raw-mlp with bootstrap 95 % intervals,
and the spread over seeds.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np

from .stats import N_RESAMPLES, paired_differences, seed_means, seed_spread, variant


def round_nan(v: float, digits: int = 2) -> float:
    """`v` rounded to `digits`; NaN stays NaN (written as NaN in the JSON)."""
    return v if v != v else round(float(v), digits)


def machine() -> str:
    """One line describing this machine: CPU, cores, GPU (if torch sees one), the torch version and the number of
    torch threads (results depend on it: `BrainDiffSegLib.device`)."""
    import torch

    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (f"{platform.machine()} {cpu_name()} {os.cpu_count()} cores{gpu}, torch {torch.__version__}"
            f", {torch.get_num_threads()} torch thread(s)")


def cpu_name(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name (Linux: /proc/cpuinfo's "model name"; elsewhere `platform.processor()`), or "". The
    shared machines change CPU between sessions (an AMD EPYC, an Intel Xeon with AMX), and with it the speed and the
    last bits of bfloat16 results, so a result names it."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or ""


def nan_stats(values: list[float]) -> tuple[float, float, int, int]:
    """(mean, sd, n finite, n NaN) with NaN values excluded from mean and sd (NaN mean if none is finite)."""
    v = np.asarray([x for x in values if x is not None], dtype=float)
    ok = v[np.isfinite(v)]
    if len(ok) == 0:
        return float("nan"), float("nan"), 0, len(v)
    return float(ok.mean()), float(ok.std()), len(ok), int(len(v) - len(ok))


def dataset_of(case: str) -> str:
    """'LGG' for the TCGA-named LGG patients, else 'BraTS'."""
    return "LGG" if case.startswith("TCGA") else "BraTS"


# ------------------------------------------------------------------------------------------------ propagation

def summarise(records: list[dict]) -> dict:
    """(variant, k, region) -> (mean, sd, n) of Dice, (variant, k, 'HD95 ' + region) -> (mean, sd, n, n NaN) and
    (variant, k, 'seconds') -> (mean, sd, n), over cases (each case's values averaged over its classifier seeds);
    the variant is the method, with its backbone if it has one (`stats.variant`)."""
    groups: dict = {}
    for r in seed_means(records):
        v_ = variant(r)
        for reg, v in r["dice"].items():
            groups.setdefault((v_, r["k"], reg), []).append(v)
        for reg, v in r.get("hd95", {}).items():
            groups.setdefault((v_, r["k"], "HD95 " + reg), []).append(v)
        groups.setdefault((v_, r["k"], "seconds"), []).append(r["seconds"])
    out = {}
    for key, v in groups.items():
        if key[2].startswith("HD95"):
            out[key] = nan_stats(v)
        else:
            out[key] = (float(np.mean(v)), float(np.std(v)), len(v))
    return out


def write_table(records: list[dict], path: Path) -> None:
    """Mean ± sd per method x k over all cases, then per dataset when there are several."""
    sections = [("all cases", records)]
    datasets = sorted({dataset_of(r["case"]) for r in records})
    if len(datasets) > 1:
        sections += [(d, [r for r in records if dataset_of(r["case"]) == d]) for d in datasets]
    text = []
    for title, recs in sections:
        n_cases = len({r["case"] for r in recs})
        text.append(f"### {title} ({n_cases} cases)\n\n" + propagation_table(recs) + paired_table(recs)
                    + seed_table(recs))
    Path(path).write_text("\n".join(text))


def propagation_table(records: list[dict]) -> str:
    """One Markdown table: a row per (method, k), Dice and HD95 mean ± sd per region, undefined HD95, s/case."""
    s = summarise(records)
    regions = [r for r in ("WT", "TC", "ET") if any(k[2] == r for k in s)]
    hd = [r for r in regions if any(k[2] == "HD95 " + r for k in s)]
    backbone = {variant(r): r.get("backbone") for r in records}
    with_backbone = any(backbone.values())
    lines = ["| method | " + ("backbone | " if with_backbone else "") + "k | n | "
             + " | ".join(f"{r} Dice" for r in regions)
             + "".join(f" | {r} HD95 (mm)" for r in hd) + (" | HD95 undefined" if hd else "") + " | s/case |",
             "|---|---|---|" + "---|" * (len(regions) + len(hd) + bool(hd) + 1 + with_backbone)]
    for method, k in sorted({(m, k) for m, k, _ in s}, key=lambda x: (x[1], x[0])):
        cells = [f"{s[(method, k, r)][0]:.3f} ± {s[(method, k, r)][1]:.3f}" if (method, k, r) in s else "–"
                 for r in regions]
        for r in hd:
            st = s.get((method, k, "HD95 " + r))
            cells.append("–" if st is None or st[2] == 0 else f"{st[0]:.1f} ± {st[1]:.1f}")
        if hd:
            cells.append(str(sum(s[(method, k, "HD95 " + r)][3] for r in hd if (method, k, "HD95 " + r) in s)))
        n = s[(method, k, "seconds")][2]
        name = (f"{method.split(' (')[0]} | {backbone[method] or '–'}" if with_backbone else method)
        lines.append(f"| {name} | {k} | {n} | " + " | ".join(cells) + f" | {s[(method, k, 'seconds')][0]:.1f} |")
    return "\n".join(lines) + "\n"


def paired_table(records: list[dict]) -> str:
    """The paired per-case Dice differences (`stats.paired_differences`) as a Markdown table ('' if none)."""
    rows = paired_differences(records)
    if not rows:
        return ""
    lines = [f"\nPaired per-case Dice differences A - B (mean, bootstrap 95 % interval over cases, {N_RESAMPLES} "
             "resamples, seed 0; each case's Dice averaged over its classifier seeds; wins: cases where A / B is "
             "higher):\n", "| A | B | k | region | n | mean A - B | 95 % interval | wins A / B |",
             "|---|---|---|---|---|---|---|---|"]
    for d in rows:
        lines.append(f"| {d['a']} | {d['b']} | {d['k']} | {d['region']} | {d['n']} | {d['mean']:+.3f} | "
                     f"[{d['lo']:+.3f}, {d['hi']:+.3f}] | {d['a_wins']} / {d['b_wins']} |")
    return "\n".join(lines) + "\n"


def paired_table_by_dataset(records: list[dict], pairs: list[tuple[str, str]], digits: int = 4,
                            run: str = "run") -> str:
    """Per dataset (BraTS, LGG: `dataset_of`), the paired per-case Dice differences A - B of `pairs`
    (`stats.paired_differences`) as Markdown rows with both means; `run`: the name of the records' "k" column
    (k slices, or a run such as "axial:1"). The one table of the experiment scripts (`scripts/seeds_variants.py`,
    `seeds_gate_variants.py`, `seeds_compare_runs.py`, `warm_start_updates.py`)."""
    lines = [f"| dataset | A | B | {run} | region | n | mean A | mean B | A - B | 95 % interval | wins A / B |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for dataset in ("BraTS", "LGG"):
        recs = [r for r in records if dataset_of(r["case"]) == dataset]
        means = {}
        for r in seed_means(recs):
            for region, value in r["dice"].items():
                means.setdefault((variant(r), r["k"], region), []).append(value)
        for d in paired_differences(recs, pairs):
            ma, mb = (float(np.mean(means[(v, d["k"], d["region"])])) for v in (d["a"], d["b"]))
            lines.append(f"| {dataset} | {d['a']} | {d['b']} | {d['k']} | {d['region']} | {d['n']} | {ma:.{digits}f} | "
                         f"{mb:.{digits}f} | {d['mean']:+.{digits}f} | [{d['lo']:+.{digits}f}, {d['hi']:+.{digits}f}] "
                         f"| {d['a_wins']} / {d['b_wins']} |")
    return "\n".join(lines) + "\n"


def seed_table(records: list[dict]) -> str:
    """Mean Dice over cases per classifier seed, then mean ± sd across seeds (`stats.seed_spread`; '' if one
    seed)."""
    s = seed_spread(records)
    if not s:
        return ""
    regions = [r for r in ("WT", "TC", "ET") if any(k[2] == r for k in s)]
    lines = ["\nSpread over classifier seeds (mean Dice over cases for each seed; mean ± sd across seeds):\n",
             "| method | k | seeds | " + " | ".join(f"{r} Dice" for r in regions) + " |",
             "|---|---|---|" + "---|" * len(regions)]
    for v, k in sorted({(v, k) for v, k, _ in s}, key=lambda x: (x[1], x[0])):
        cells = [f"{s[(v, k, r)][0]:.3f} ± {s[(v, k, r)][1]:.3f}" if (v, k, r) in s else "–" for r in regions]
        n = max(s[(v, k, r)][2] for r in regions if (v, k, r) in s)
        lines.append(f"| {v} | {k} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_dice_vs_k(records: list[dict], png: Path) -> None:
    """Mean Dice ± sd against k, one panel per region, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summarise(records)
    regions = [r for r in ("WT", "TC", "ET") if any(k[2] == r for k in s)]
    methods = sorted({m for m, _, _ in s})
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
