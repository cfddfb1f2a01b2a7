"""Tables and plots of the few-shot experiment (`fewshot.py`): mean ± sd over seeds per method and N, paired
differences of the diffusion methods against the supervised nets, Dice vs N, and the validation curves of the early
stopping. Used by `fewshot.run_dataset` after every N and by `merge.merge_fewshot`."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .report import nan_stats

METHODS = ("diffusion-mlp", "noise-predictor", "unet", "transunet")  # the few-shot methods, in the order reported


def summarise_fewshot(records: list[dict]) -> dict:
    """(method, n, metric, region) -> (mean, sd, n) over seeds (NaN HD95 seeds left out)."""
    groups: dict = {}
    for r in records:
        for metric in ("dice", "hd95"):
            for reg, v in r[metric].items():
                groups.setdefault((r["method"], r["n"], metric, reg), []).append(v)
        groups.setdefault((r["method"], r["n"], "seconds", ""), []).append(r["seconds_total"])
        if "steps_run" in r:
            groups.setdefault((r["method"], r["n"], "steps", ""), []).append(r["steps_run"])
        if "best_step" in r:
            groups.setdefault((r["method"], r["n"], "best_step", ""), []).append(r["best_step"])
    return {k: nan_stats(v)[:3] for k, v in groups.items()}


def write_fewshot_table(records: list[dict], path: Path, dataset: str) -> None:
    s = summarise_fewshot(records)
    regions = [r for r in ("WT", "TC", "ET") if any(k[3] == r for k in s)]
    methods = [m for m in METHODS if any(k[0] == m for k in s)]
    seeds = sorted({r["seed"] for r in records})
    lines = [f"### {dataset}: mean ± sd over {len(seeds)} seeds {seeds}\n",
             "| method | N | " + " | ".join(f"{r} Dice" for r in regions) + " | "
             + " | ".join(f"{r} HD95 (mm)" for r in regions) + " | s/run | steps run (best) |",
             "|---|---|" + "---|" * (2 * len(regions) + 2)]
    for n in sorted({k[1] for k in s}):
        for m in methods:
            if (m, n, "seconds", "") not in s:
                continue
            cells = []
            for metric, fmt in (("dice", "{:.3f} ± {:.3f}"), ("hd95", "{:.1f} ± {:.1f}")):
                for r in regions:
                    mean, sd, cnt = s.get((m, n, metric, r), (float("nan"), 0, 0))
                    cells.append(fmt.format(mean, sd) if cnt else "–")
            steps = s.get((m, n, "steps", ""))
            best = s.get((m, n, "best_step", ""))
            stop = "–" if steps is None else f"{steps[0]:.0f}" + ("" if best is None else f" ({best[0]:.0f})")
            lines.append(f"| {m} | {n} | " + " | ".join(cells) + f" | {s[(m, n, 'seconds', '')][0]:.1f} | {stop} |")
    path.write_text("\n".join(lines) + "\n")


PAIRS = (("noise-predictor", "unet"), ("diffusion-mlp", "unet"), ("noise-predictor", "transunet"),
         ("diffusion-mlp", "transunet"), ("noise-predictor", "diffusion-mlp"))


def paired_fewshot(records: list[dict], a: str, b: str) -> dict:
    """(n, region) -> (mean, low, high, wins, pairs) of Dice(a) - Dice(b) over the (seed, evaluation case) pairs both
    methods have: same training slices, same case; bootstrap 95 % interval over those pairs (`stats.bootstrap_ci`;
    the cases are few, so the pairs are not independent across seeds: read the interval as a guide)."""
    from .stats import bootstrap_ci

    by = {(r["method"], r["n"], r["seed"]): {c["case"]: c["dice"] for c in r.get("cases", [])} for r in records}
    out = {}
    for n in sorted({r["n"] for r in records}):
        for seed in sorted({r["seed"] for r in records}):
            ca, cb = by.get((a, n, seed)), by.get((b, n, seed))
            if not ca or not cb:
                continue
            for case in ca.keys() & cb.keys():
                for reg in ca[case]:
                    out.setdefault((n, reg), []).append(ca[case][reg] - cb[case][reg])
    result = {}
    for key, diffs in out.items():
        mean, lo, hi = bootstrap_ci(diffs)
        result[key] = (mean, lo, hi, sum(d > 0 for d in diffs), len(diffs))
    return result


def write_fewshot_paired(records: list[dict], path: Path, dataset: str) -> None:
    """Markdown: paired Dice differences of the diffusion methods against the supervised nets per N and region."""
    regions = [r for r in ("WT", "TC", "ET") if any(r in rec["dice"] for rec in records)]
    methods = {r["method"] for r in records}
    lines = [f"### {dataset}: paired Dice differences A − B (mean over seed × test-case pairs, bootstrap 95 % "
             "interval, pairs where A is better)\n",
             "| A − B | N | " + " | ".join(regions) + " |", "|---|---|" + "---|" * len(regions)]
    for a, b in PAIRS:
        if a not in methods or b not in methods:
            continue
        d = paired_fewshot(records, a, b)
        for n in sorted({k[0] for k in d}):
            cells = []
            for reg in regions:
                if (n, reg) not in d:
                    cells.append("–")
                    continue
                mean, lo, hi, wins, total = d[(n, reg)]
                cells.append(f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}] {wins}/{total}")
            lines.append(f"| {a} − {b} | {n} | " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")


def plot_dice_vs_n(records: list[dict], png: Path, dataset: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summarise_fewshot(records)
    regions = [r for r in ("WT", "TC", "ET") if any(k[3] == r for k in s)]
    methods = [m for m in METHODS if any(k[0] == m for k in s)]
    fig, axes = plt.subplots(1, len(regions), figsize=(4 * len(regions), 3.3), dpi=100, squeeze=False)
    for ax, reg in zip(axes[0], regions):
        for m in methods:
            ns = sorted(k[1] for k in s if k[0] == m and k[2] == "dice" and k[3] == reg)
            ax.errorbar(ns, [s[(m, n, "dice", reg)][0] for n in ns], yerr=[s[(m, n, "dice", reg)][1] for n in ns],
                        marker="o", capsize=3, label=m)
        ax.set_xscale("log")
        ax.set_xticks(sorted({k[1] for k in s}))
        ax.set_xticklabels([str(n) for n in sorted({k[1] for k in s})])
        ax.set_title(f"{dataset} {reg}")
        ax.set_xlabel("labelled training slices N")
        ax.set_ylabel("Dice")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def plot_validation_curves(records: list[dict], png: Path, dataset: str) -> None:
    """Validation Dice vs training step of the trained networks, one panel per method, one line per N (every seed;
    a dot marks the kept, best step): how the early stopping saw each run. Nothing is written without curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in records if r.get("curve")]
    if not runs:
        return
    methods = [m for m in METHODS if any(r["method"] == m for r in runs)]
    ns = sorted({r["n"] for r in runs})
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(ns)))
    fig, axes = plt.subplots(1, len(methods), figsize=(4 * len(methods), 3.3), dpi=100, squeeze=False)
    for ax, m in zip(axes[0], methods):
        for r in (r for r in runs if r["method"] == m):
            c = colours[ns.index(r["n"])]
            steps, scores = [p[0] for p in r["curve"]], [p[2] for p in r["curve"]]
            first = r["seed"] == min(q["seed"] for q in runs if q["method"] == m and q["n"] == r["n"])
            ax.plot(steps, scores, color=c, alpha=0.8, lw=1, label=f"N={r['n']}" if first else None)
            ax.plot([r["best_step"]], [r["val_dice"]], "o", color=c, ms=3)
        ax.set_title(f"{dataset}: {m}")
        ax.set_xlabel("training step")
        ax.set_ylabel("validation Dice (mean of regions)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
