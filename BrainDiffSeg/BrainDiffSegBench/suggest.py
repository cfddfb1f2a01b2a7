"""`braindiffseg benchmark suggest`: does "paint this slice next" (`BrainDiffSegLib.propagation.suggest`) beat even spacing?

Simulated users on cases with ground truth; each round the user paints one more axial slice from the ground truth
and propagates again. Two Dice scores per region (`protocol.region_dice`): `dice`, the protocol's, on the slices
without labels (a different set of slices for each user), and `dice_all`, over the whole volume with the painted
slices as painted (the segmentation the user ends up with; the same volume for every user). Users:
- `even`: the protocol's evenly spaced slices for k = 1, 2, 3, 5 (each k from scratch);
- one user per suggestion strategy: the k = 1 protocol slice, then each round the strategy's best slice of the last
  result (`suggest.rank_slices`) added, up to `max_slices` slices;
- `correction`: the k = 1 protocol slice, then each round the non-annotated slice with ground-truth tumour that has
  the most wrongly labelled voxels repainted from the ground truth (an oracle: an upper reference for a user who sees
  the errors).
A suggested slice without ground-truth tumour cannot be painted in the complete-slice mode (the engine takes only
slices with a label as annotated): the round is spent, the annotation is unchanged, and the slice is not suggested
again to that user. In the seeds mode (`--annotation-mode seeds`, issue 23) the user answers such a slice "no tumour
here": every painted slice is given as seeds - its tumour classes from the ground truth and Background over the
rest of its head - so a tumour-free slice is Background alone, an annotation like any other.

One `VolumeCache` per case serves all its propagations (backbone activations once per case), and identical slice
sets are propagated once (the engine is deterministic for a given annotation and seed). Paired differences vs even
spacing per number of slices come with a seeded bootstrap 95 % interval over the cases.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from BrainDiffSegLib.propagation.annotation import complete_slices_as_seeds
from BrainDiffSegLib.propagation.cache import VolumeCache
from BrainDiffSegLib.io import load_case
from BrainDiffSegLib.options import PropagationOptions
from BrainDiffSegLib.propagation.propagate import propagate
from BrainDiffSegLib.protocol import protocol_slices, region_dice
from BrainDiffSegLib.propagation.suggest import STRATEGIES, rank_slices

from .report import dataset_of, machine, nan_stats, round_nan

log = logging.getLogger(__name__)
EVEN_K = (1, 2, 3, 5)
REPORT_N = (1, 2, 3, 5)


def worst_slice(labels: np.ndarray, truth: np.ndarray, exclude: set[int]) -> int | None:
    """The slice with ground-truth tumour, not in `exclude`, with the most voxels labelled differently."""
    Z = truth.shape[-1]
    has = truth.reshape(-1, Z).any(axis=0)
    wrong = (labels != truth).reshape(-1, Z).sum(axis=0)
    cands = [z for z in range(Z) if has[z] and z not in exclude]
    return max(cands, key=lambda z: (int(wrong[z]), -z)) if cands else None


class CaseRunner:
    """Propagations of one case through one cache, memoised by the set of labelled slices."""

    def __init__(self, case, options: PropagationOptions, strategies: list[str], depth: int):
        self.case, self.options, self.strategies, self.depth = case, options, strategies, depth
        self.cache = VolumeCache()
        self.memo: dict[tuple, dict] = {}
        self.runs = 0
        self.head = None  # the head mask, for the seeds mode

    def run(self, zs) -> dict:
        seeds = self.options.annotation_mode == "seeds"
        key = tuple(sorted({int(z) for z in zs if seeds or self.case.label[..., z].any()}))
        if key not in self.memo:
            ann = np.zeros_like(self.case.label)
            ann[..., list(key)] = self.case.label[..., list(key)]
            if seeds:  # complete slices as seeds: Background over the rest of the head ("no tumour here")
                if self.head is None:
                    from BrainDiffSegLib.preprocess import foreground_mask

                    self.head = foreground_mask(self.case.images)
                ann = complete_slices_as_seeds(self.case.label, key, self.head, self.options.background_label)
            t = time.perf_counter()
            res = propagate(self.case.images, ann, self.options, features=self.cache)
            seconds = time.perf_counter() - t
            self.runs += 1
            self.memo[key] = {
                "labelled": list(key), "seconds": round(seconds, 2),
                "dice": {r: round(v, 4) for r, v in region_dice(res.labels, self.case.label, key).items()},
                "ranked": {s: [z for z, _ in rank_slices(res, self.depth, s)] for s in self.strategies},
                "labels": res.labels}
            log.info("  %s slices %s: WT %.3f (%.1f s)", self.case.name, list(key), self.memo[key]["dice"]["WT"],
                     seconds)
        return self.memo[key]

    def paint(self, painted: list[int]) -> tuple[dict, dict]:
        """(memo entry, round record) of the painted slices; `dice_all`: Dice over the whole volume with the painted
        slices as painted (ground truth, also where a painted slice has no tumour)."""
        r = self.run(painted)
        pred = r["labels"].copy()
        pred[..., list(painted)] = self.case.label[..., list(painted)]
        dice_all = {g: round(v, 4) for g, v in region_dice(pred, self.case.label).items()}
        return r, {"n": len(painted), "painted": [int(z) for z in painted], "labelled": r["labelled"],
                   "dice": r["dice"], "dice_all": dice_all}

    def user(self, strategy: str, max_slices: int) -> list[dict]:
        """Rounds of one simulated user from the k = 1 protocol slice: [{"n", "painted", "labelled", "dice",
        "dice_all"}, ...]."""
        painted = protocol_slices(self.case.label, 1)
        rounds = []
        while True:
            r, row = self.paint(painted)
            rounds.append(row)
            if len(painted) >= max_slices:
                return rounds
            if strategy == "correction":
                z = worst_slice(r["labels"], self.case.label, set(painted))
            else:
                z = next((z for z in r["ranked"][strategy] if z not in painted), None)
            if z is None:
                log.warning("%s %s: nothing left to suggest after %d slices", self.case.name, strategy,
                            len(painted))
                return rounds
            painted = painted + [int(z)]


def run_case(case_dir: Path, options: PropagationOptions, strategies: list[str], max_slices: int = 5) -> dict:
    case = load_case(case_dir)
    if case.label is None:
        raise ValueError(f"{case_dir}: the benchmark needs the ground truth")
    t0 = time.perf_counter()
    runner = CaseRunner(case, options, list(strategies), depth=max_slices + 1)
    users = {"even": []}
    for k in EVEN_K:
        _, row = runner.paint(protocol_slices(case.label, k))
        users["even"].append(dict(row, n=k))
    for s in list(strategies) + ["correction"]:
        users[s] = runner.user(s, max_slices)
    for r in runner.memo.values():
        r["labels"] = None
    rec = {"case": case.name, "dataset": dataset_of(case.name), "users": users, "propagations": runner.runs,
           "seconds": round(time.perf_counter() - t0, 1),
           "seconds_per_propagation": [r["seconds"] for r in runner.memo.values()]}
    log.info("%s: %d propagations in %.0f s", case.name, runner.runs, rec["seconds"])
    return rec


METRICS = {"dice_all": "Dice over the whole volume (painted slices as painted)",
           "dice": "Dice on the slices without labels (the protocol's)"}


def dice_at(rec: dict, user: str, n: int, region: str, metric: str = "dice") -> float:
    """Dice of `user` after n slices; `user` ("even", of=u): the even user of u's run."""
    rounds = rec.get("even_of", {}).get(user[1], rec["users"]["even"]) if isinstance(user, tuple) else \
        rec["users"].get(user, [])
    for r in rounds:
        if r["n"] == n:
            return r[metric].get(region, float("nan"))
    return float("nan")


def bootstrap_ci(diffs: list[float], n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, 2.5 %, 97.5 %) of the mean of paired differences, resampling cases with replacement (NaN dropped)."""
    d = np.asarray([x for x in diffs if x == x], dtype=float)
    if len(d) == 0:
        return float("nan"), float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, len(d), size=(n_boot, len(d)))
    means = d[idx].mean(axis=1)
    return float(d.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarise(records: list[dict], users: list[str]) -> dict:
    """{dataset: {"n_cases", "mean": {user: {n: {region: mean}}}, "vs_even": {user: {n: {region: [m, lo, hi]}}}}}."""
    out = {}
    for ds in sorted({r["dataset"] for r in records}):
        recs = [r for r in records if r["dataset"] == ds]
        regions = list(recs[0]["users"]["even"][0]["dice"])
        users_ds = [u for u in users if any(u in r["users"] for r in recs)]
        settings = list(dict.fromkeys(x for r in recs for x in r.get("settings", "").split("; ") if x))
        out[ds] = {"n_cases": len(recs), "regions": regions, "settings": "; ".join(settings)}
        for m in METRICS:
            out[ds][m] = {
                "mean": {u: {n: {g: round_nan(nan_stats([dice_at(r, u, n, g, m) for r in recs])[0], 4)
                                 for g in regions} for n in REPORT_N} for u in ["even"] + users_ds},
                "vs_even": {u: {n: {g: [round_nan(v, 4) for v in bootstrap_ci(
                    [dice_at(r, u, n, g, m) - dice_at(r, ("even", u), n, g, m) for r in recs])] for g in regions}
                    for n in REPORT_N[1:]} for u in users_ds},
                "cases": {u: sum(u in r["users"] for r in recs) for u in ["even"] + users_ds}}
    return out


def write_table(summary: dict, path: Path) -> None:
    lines = []
    for ds, s0 in summary.items():
        regions = s0["regions"]
        lines += [f"## {ds} ({s0['n_cases']} cases)", "", f"Settings: {s0['settings']}.", ""]
        for m, title in METRICS.items():
            s = s0[m]
            lines += [f"### {ds}: mean {title}, after n painted slices", "",
                      "| user | cases | " + " | ".join(f"{g} n={n}" for g in regions for n in REPORT_N) + " |",
                      "|---|---|" + "---|" * (len(regions) * len(REPORT_N))]
            for u in s["mean"]:
                lines.append(f"| {u} | {s['cases'][u]} | " + " | ".join(f"{s['mean'][u][n][g]:.3f}" for g in regions
                                                                         for n in REPORT_N) + " |")
            lines += ["", f"{ds}, {title}: paired difference vs even spacing, mean [bootstrap 95 % interval] over "
                      "cases", "", "| user | " + " | ".join(f"{g} n={n}" for g in regions for n in REPORT_N[1:])
                      + " |", "|---|" + "---|" * (len(regions) * (len(REPORT_N) - 1))]
            for u, d in s["vs_even"].items():
                lines.append(f"| {u} | " + " | ".join(
                    "{:+.3f} [{:+.3f}, {:+.3f}]".format(*d[n][g]) for g in regions for n in REPORT_N[1:]) + " |")
            lines.append("")
    path.write_text("\n".join(lines))


def plot(summary: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(METRICS), len(summary), figsize=(5 * len(summary), 3.4 * len(METRICS)), dpi=100,
                             squeeze=False)
    for (row, m), (col, (ds, s0)) in [(a, b) for a in enumerate(METRICS) for b in enumerate(summary.items())]:
        ax, s = axes[row][col], s0[m]
        for u, by_n in s["mean"].items():
            ns = [n for n in REPORT_N if by_n[n]["WT"] == by_n[n]["WT"]]
            style = dict(color="black", linewidth=2.5) if u == "even" else \
                dict(linestyle="--", color="grey") if u == "correction" else \
                dict(color=f"C{STRATEGIES.index(u) % 10}" if u in STRATEGIES else None)
            ax.plot(ns, [by_n[n]["WT"] for n in ns], marker="o", label=f"{u} ({s['cases'][u]})", **style)
        ax.set_title(f"{ds} ({s0['n_cases']} cases)")
        ax.set_xlabel("painted slices")
        ax.set_ylabel("WT Dice, " + ("whole volume" if m == "dice_all" else "slices without labels"))
        ax.set_xticks(list(REPORT_N))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title="user (cases)", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def merge_records(records: list[dict]) -> list[dict]:
    """One record per case: the users of several runs of a case (e.g. other strategies) joined, the first run's
    user kept where several have it; a user from a later run keeps that run's even user (`even_of`) for its paired
    differences (runs with other code or settings may differ slightly)."""
    out: dict[str, dict] = {}
    for r in records:
        if r["case"] not in out:
            out[r["case"]] = dict(r, users=dict(r["users"]))
            continue
        m = out[r["case"]]
        for u, rounds in r["users"].items():
            if u not in m["users"]:
                m["users"][u] = rounds
                if u != "even":  # paired with the even user of its own run
                    m.setdefault("even_of", {})[u] = r["users"]["even"]
        if r.get("settings") and r["settings"] not in m.get("settings", ""):
            m["settings"] = "; ".join(x for x in (m.get("settings"), r["settings"]) if x)
        m["propagations"] = m.get("propagations", 0) + r.get("propagations", 0)
        m["seconds"] = round(m.get("seconds", 0) + r.get("seconds", 0), 1)
    return list(out.values())


def benchmark_suggest(case_dirs: list[Path], out: Path, options: PropagationOptions, strategies: list[str],
                      max_slices: int = 5, settings: str = "", join: list[Path] = ()) -> dict:
    """Every simulated user on every case; `join`: suggest.json files of earlier runs (e.g. another dataset with
    other settings) whose records are reported together with this run's (a case in both is taken from this run)."""
    bad = [s for s in strategies if s not in STRATEGIES]
    if bad:
        raise ValueError(f"unknown strategy(ies) {bad}; choose from {list(STRATEGIES)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    joined = merge_records([r for j in join for r in json.loads(Path(j).read_text())["records"]])
    names = {Path(c).name for c in case_dirs}
    joined = [r for r in joined if r["case"] not in names]
    records, summary = [], {}
    users = list(strategies) + ["correction"]
    for i, c in enumerate([None] + list(case_dirs)):  # None: the joined records alone (written before any run)
        if c is not None:
            log.info("[%d/%d] %s", i, len(case_dirs), Path(c).name)
            rec = run_case(Path(c), options, strategies, max_slices)
            rec["settings"] = settings
            records.append(rec)
        if not joined + records:
            continue
        all_users = users + [u for r in joined for u in r["users"] if u not in users and u != "even"]
        summary = summarise(joined + records, list(dict.fromkeys(all_users)))
        result = {"machine": machine(), "settings": settings, "strategies": list(strategies),
                  "max_slices": max_slices, "seconds": round(time.perf_counter() - t0, 1), "summary": summary,
                  "joined": [str(j) for j in join], "records": joined + records}
        (out / "suggest.json").write_text(json.dumps(result, indent=1, allow_nan=True))
        write_table(summary, out / "suggest.md")
        plot(summary, out / "suggest.png")
    return {"summary": summary, "records": joined + records}
