"""'Paint this slice next': the engine's ranking (`BrainDiffSegLib.propagation.suggest`) on a real crop, and a smoke test of
`braindiffseg benchmark suggest` on a small synthetic case."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from conftest import write_tumour_case
from test_propagate import _reduced_real_case

from BrainDiffSegLib.options import preset
from BrainDiffSegLib.propagation.propagate import PropagationResult, propagate
from BrainDiffSegLib.protocol import simulate_annotation
from BrainDiffSegLib.propagation.suggest import DEFAULT_STRATEGY, STRATEGIES, next_slice, rank_slices


@pytest.fixture(scope="module")
def real_result(data_root):
    images, label = _reduced_real_case(data_root)
    ann, zs = simulate_annotation(label, 2)
    res = propagate(images, ann, replace(preset("quick"), device="cpu"))
    return res, zs, label


def test_default_strategy_is_known():
    assert DEFAULT_STRATEGY in STRATEGIES


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_ranks_valid_slices(real_result, strategy):
    res, zs, _ = real_result
    ranked = rank_slices(res, 5, strategy)
    assert 1 <= len(ranked) <= 5
    Z = res.labels.shape[-1]
    assert all(isinstance(z, int) and 0 <= z < Z for z, _ in ranked)
    assert all(z not in zs and z not in res.annotated_slices for z, _ in ranked)
    scores = [s for _, s in ranked]
    assert scores == sorted(scores, reverse=True)
    assert all(np.isfinite(scores))
    for z, _ in ranked:  # only slices with predicted tumour or uncertain pixels
        assert (res.labels[..., z] > 0).any() or (res.entropy[..., z] > 0.5).any()
    everything = rank_slices(res, Z, strategy)
    assert everything[:5] == ranked
    assert {z for z, _ in everything}.isdisjoint(res.annotated_slices)
    assert next_slice(res, strategy) == ranked[0][0]


def test_distance_stays_within_the_predicted_tumour(real_result):
    res, _, _ = real_result
    tz = np.nonzero(res.labels.reshape(-1, res.labels.shape[-1]).any(axis=0))[0]
    assert all(tz[0] <= z <= tz[-1] for z, _ in rank_slices(res, 100, "distance"))


def test_least_certain_slices_is_the_uncertainty_ranking(real_result):
    res, _, _ = real_result
    assert res.least_certain_slices(4) == rank_slices(res, 4, "uncertainty")


def test_no_suggestion_when_everything_is_annotated_or_empty(real_result):
    res, _, _ = real_result
    Z = res.labels.shape[-1]
    everything = replace(res, annotated_slices=list(range(Z)))
    empty = replace(res, labels=np.zeros_like(res.labels), entropy=np.zeros_like(res.entropy),
                    disagreement=np.zeros_like(res.disagreement))
    for strategy in STRATEGIES:
        assert next_slice(everything, strategy) is None
        assert rank_slices(everything, 5, strategy) == []
        assert next_slice(empty, strategy) is None
    with pytest.raises(ValueError, match="strategy"):
        rank_slices(res, 3, "nonsense")
    assert isinstance(res, PropagationResult)


def test_benchmark_suggest_command(tmp_path, capsys):
    from BrainDiffSegCLI import main

    case, _, label = write_tumour_case(tmp_path / "data" / "BraTS2021_90001")
    out = tmp_path / "out"
    strategies = ["uncertainty", "distance"]
    assert main(["benchmark", "suggest", "--data", str(case), "--strategies", *strategies, "--max-slices", "3",
                 "--preset", "quick", "--device", "cpu", "--out", str(out)]) == 0
    result = json.loads((out / "suggest.json").read_text())
    assert result["strategies"] == strategies and result["max_slices"] == 3
    (rec,) = result["records"]
    assert [r["n"] for r in rec["users"]["even"]] == [1, 2, 3, 5]
    for user in strategies + ["correction"]:
        rounds = rec["users"][user]
        assert [r["n"] for r in rounds] == [1, 2, 3]
        assert all(len(set(r["painted"])) == r["n"] for r in rounds)
        assert rounds[0]["painted"] == rec["users"]["even"][0]["painted"]
        for a, b in zip(rounds, rounds[1:]):  # one slice more each round, earlier slices kept
            assert b["painted"][:-1] == a["painted"]
        assert all(0 <= d <= 1 for r in rounds for d in r["dice"].values())
    assert rec["propagations"] <= 4 + 3 * 2
    summary = result["summary"]["BraTS"]
    for metric in ("dice", "dice_all"):
        assert set(summary[metric]["mean"]) == {"even", *strategies, "correction"}
        assert set(summary[metric]["vs_even"]) == {*strategies, "correction"}
    for user, rounds in rec["users"].items():  # the whole volume with the painted slices painted
        assert all(0 <= d <= 1 for r in rounds for d in r["dice_all"].values()), user
    md = (out / "suggest.md").read_text()
    assert "| uncertainty |" in md and "| correction |" in md and "bootstrap" in md
    assert (out / "suggest.png").read_bytes()[:4] == b"\x89PNG"
    assert "| even |" in capsys.readouterr().out
    # a report of earlier runs alone ('--data' without folders): the same summary
    joined = tmp_path / "joined"
    assert main(["benchmark", "suggest", "--data", "--join", str(out / "suggest.json"), "--out", str(joined)]) == 0
    again = json.loads((joined / "suggest.json").read_text())
    assert again["summary"] == result["summary"] and len(again["records"]) == 1
    assert (joined / "suggest.png").is_file()


def _scores_slice_by_slice(result, strategy):
    """The ranking's definition written slice by slice (the engine computes all slices at once)."""
    Z = result.labels.shape[-1]
    annotated = sorted({int(z) for z in result.annotated_slices})
    ann = np.array(annotated, dtype=float)
    tumour_z = np.nonzero(result.labels.reshape(-1, Z).any(axis=0))[0]
    lo, hi = (int(tumour_z[0]), int(tumour_z[-1])) if len(tumour_z) else (0, -1)
    scores = {}
    for z in range(Z):
        roi = (result.labels[..., z] > 0) | (result.entropy[..., z] > 0.5)
        if z in annotated or not roi.any():
            continue
        dist = float(np.abs(ann - z).min()) if len(ann) else float(Z)
        entropy = result.entropy[..., z].astype(np.float64)
        mean_e = float(entropy[roi].mean())
        area = int((result.labels[..., z] > 0).sum())
        if strategy == "uncertainty":
            scores[z] = mean_e
        elif strategy == "disagreement":
            scores[z] = float(result.disagreement[..., z].astype(np.float64)[roi].mean())
        elif strategy == "distance":
            if lo <= z <= hi:
                scores[z] = dist + 1e-6 * float(roi.mean())
        elif strategy == "uncertainty-distance":
            scores[z] = mean_e * dist
        elif strategy == "area-uncertainty":
            scores[z] = float(entropy[roi].sum())
        elif area:
            scores[z] = float(entropy[roi].sum()) if strategy == "tumour-uncertainty" else area * dist
    return scores


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_the_scores_are_the_slice_by_slice_definition(real_result, strategy):
    from BrainDiffSegLib.propagation.suggest import slice_scores

    res, _, _ = real_result
    if res.disagreement is None:  # the real run did not ask for it: a disagreement of the same shape
        res = replace(res, disagreement=np.random.default_rng(0).random(res.labels.shape).astype(np.float32))
    for r in (res, replace(res, annotated_slices=[]), replace(res, annotated_slices=list(range(res.labels.shape[-1])))):
        expected, got = _scores_slice_by_slice(r, strategy), slice_scores(r, strategy)
        assert got.keys() == expected.keys()
        assert np.allclose([got[z] for z in expected], list(expected.values()), rtol=1e-9, atol=1e-12)
