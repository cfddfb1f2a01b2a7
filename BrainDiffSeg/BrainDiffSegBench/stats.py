"""Statistics of the propagation benchmark's records: the per-case means over classifier seeds, paired per-case
differences between two methods / backbones with a seeded bootstrap 95 % interval, and the spread over classifier
seeds (`report` turns them into tables).

A record's *variant* is its method, with its backbone in brackets when it has one ("diffusion-mlp (random)").
"""
from __future__ import annotations

import math

import numpy as np

N_RESAMPLES = 10000
BOOTSTRAP_SEED = 0


def variant(record: dict) -> str:
    """'method' or 'method (backbone)'."""
    b = record.get("backbone")
    return f"{record['method']} ({b})" if b else record["method"]


def bootstrap_ci(values, n_resamples: int = N_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                 level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the mean of `values` and the percentile bootstrap interval of the mean at `level`
    (`n_resamples` resamples of the values with replacement, from a generator seeded with `seed`). NaN values are
    left out; all NaN for no value."""
    v = np.asarray([x for x in values if x is not None and x == x], dtype=float)
    if len(v) == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(n_resamples, len(v)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(v.mean()), float(lo), float(hi)


def _nanmean(values) -> float:
    ok = [v for v in values if v is not None and v == v]
    return float(np.mean(ok)) if ok else math.nan


def seed_means(records: list[dict]) -> list[dict]:
    """One record per (case, k, variant): Dice, HD95 (NaN-aware) and seconds averaged over its classifier seeds,
    `seeds` the number of seeds averaged. Order of first appearance."""
    groups: dict = {}
    for r in records:
        groups.setdefault((r["case"], r["k"], variant(r)), []).append(r)
    out = []
    for rs in groups.values():
        first = rs[0]
        rec = dict(first, seeds=len(rs), seconds=float(np.mean([r["seconds"] for r in rs])),
                   dice={g: float(np.mean([r["dice"][g] for r in rs])) for g in first["dice"]})
        if "hd95" in first:
            rec["hd95"] = {g: _nanmean([r["hd95"].get(g) for r in rs]) for g in first["hd95"]}
        out.append(rec)
    return out


def default_pairs(variants: list[str]) -> list[tuple[str, str]]:
    """The comparisons of the report, A - B: every two backbones of hybrid-mlp, then of diffusion-mlp (in their
    order), each hybrid-mlp variant minus diffusion-mlp with the same backbone, then every variant of the two minus
    raw-mlp, then each hybrid-mlp variant minus Grow from seeds (`growcut`, `growcut-<sequence>`)."""
    def of(method):
        return [v for v in variants if v.split(" (")[0] == method]

    pairs = [(a, b) for m in ("hybrid-mlp", "diffusion-mlp") for i, a in enumerate(of(m)) for b in of(m)[i + 1:]]
    pairs += [(h, "diffusion-mlp" + h[len("hybrid-mlp"):]) for h in of("hybrid-mlp")
              if "diffusion-mlp" + h[len("hybrid-mlp"):] in variants]
    pairs += [(a, "raw-mlp") for a in of("hybrid-mlp") + of("diffusion-mlp")] if "raw-mlp" in variants else []
    # Grow from seeds (issue 23: the same seeds), and on each single sequence
    growcuts = [v for v in variants if v == "growcut" or v.startswith("growcut-")]
    return pairs + [(a, g) for a in of("hybrid-mlp") for g in growcuts]


def paired_differences(records: list[dict], pairs: list[tuple[str, str]] | None = None,
                       n_resamples: int = N_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> list[dict]:
    """Per pair (A, B), k and region: the per-case Dice differences A - B (cases that have both, each case's Dice
    averaged over its seeds), their mean and bootstrap 95 % interval, and how many cases A won / lost."""
    by = {(r["case"], r["k"], variant(r)): r["dice"] for r in seed_means(records)}
    variants = list(dict.fromkeys(v for _, _, v in by))
    out = []
    for a, b in (default_pairs(variants) if pairs is None else pairs):
        for k in sorted({k for _, k, _ in by}):
            cases = [c for c, kk, v in by if kk == k and v == a and (c, k, b) in by]
            for region in ("WT", "TC", "ET"):
                d = [by[(c, k, a)][region] - by[(c, k, b)][region] for c in cases
                     if region in by[(c, k, a)] and region in by[(c, k, b)]]
                if not d:
                    continue
                mean, lo, hi = bootstrap_ci(d, n_resamples, seed)
                out.append({"a": a, "b": b, "k": k, "region": region, "n": len(d), "mean": mean, "lo": lo,
                            "hi": hi, "a_wins": sum(x > 0 for x in d), "b_wins": sum(x < 0 for x in d)})
    return out


def seed_spread(records: list[dict]) -> dict:
    """(variant, k, region) -> (mean, sd, n seeds) of the mean Dice over cases, across classifier seeds (sd with
    n - 1; only variants run with at least 2 seeds, over the cases that have every seed)."""
    per: dict = {}
    for r in records:
        per.setdefault((variant(r), r["k"]), {}).setdefault(r.get("seed"), {})[r["case"]] = r["dice"]
    out = {}
    for (v, k), by_seed in per.items():
        if len(by_seed) < 2:
            continue
        cases = set.intersection(*(set(c) for c in by_seed.values()))
        for region in ("WT", "TC", "ET"):
            means = [np.mean([d[c][region] for c in cases]) for d in by_seed.values()
                     if cases and all(region in d[c] for c in cases)]
            if len(means) >= 2:
                out[(v, k, region)] = (float(np.mean(means)), float(np.std(means, ddof=1)), len(means))
    return out
