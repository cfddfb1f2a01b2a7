"""Backbones and classifier seeds as benchmark dimensions (issue 10, parts 2 and 4): the seeded random backbone,
`--backbones` resolution, the bootstrap interval on known examples, paired differences and the seed spread on
hand-made records, merging, and one real LGG case end to end through the command line (skips without the data)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from BrainDiffSegBench import report, stats
from BrainDiffSegBench.backbones import random_seed_of, resolve_backbones
from BrainDiffSegLib.errors import CheckpointError, InputError
from BrainDiffSegLib.model import load_backbone, random_backbone, read_config
from BrainDiffSegLib.resources import default_checkpoint

LGG_CASE = "lgg128/TCGA_CS_4942_19970222"


def test_random_backbone_is_seeded_and_has_the_bundled_architecture(tiny_checkpoint):
    a, cfg = random_backbone(0, like=tiny_checkpoint)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    b, _ = random_backbone(0, like=tiny_checkpoint)
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is left alone
    c, _ = random_backbone(1, like=tiny_checkpoint)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    assert cfg.arch() == read_config(tiny_checkpoint).arch() and cfg.training["random_weights_seed"] == 0
    trained, _ = load_backbone(tiny_checkpoint)
    assert set(trained.state_dict()) == set(sa)


def test_resolve_backbones(tmp_path, tiny_checkpoint):
    chosen = resolve_backbones(["bundled", "random", "random:2", str(tiny_checkpoint)], tmp_path)
    assert [b.name for b in chosen] == ["bundled", "random", "random:2", str(tiny_checkpoint)]
    assert chosen[0].checkpoint == default_checkpoint() and chosen[3].checkpoint == tiny_checkpoint
    for b in chosen[1:3]:  # random weights are real checkpoints of the bundled architecture
        unet, cfg = load_backbone(b.checkpoint, expect=read_config(default_checkpoint()))
        assert cfg.training["random_weights_seed"] == random_seed_of(b.name)
    assert resolve_backbones(None, tmp_path)[0].name == "bundled"
    assert resolve_backbones(None, tmp_path, str(tiny_checkpoint))[0].checkpoint == tiny_checkpoint
    with pytest.raises(InputError):
        resolve_backbones(["random:x"], tmp_path)
    with pytest.raises(InputError):
        resolve_backbones(["bundled", "bundled"], tmp_path)
    with pytest.raises(CheckpointError):
        resolve_backbones([str(tmp_path / "nothing")], tmp_path)


def test_bootstrap_known_examples():
    # two values +1 and -1: a resample's mean is -1, 0 or +1 with probabilities 1/4, 1/2, 1/4 -> interval [-1, 1]
    assert stats.bootstrap_ci([1.0, -1.0]) == (0.0, -1.0, 1.0)
    # a constant difference has a zero-width interval
    assert stats.bootstrap_ci([0.25] * 7) == pytest.approx((0.25, 0.25, 0.25))
    # many values: the interval is close to mean ± 1.96 sd / sqrt(n); seeded, so the same every time
    v = np.random.default_rng(5).normal(0.1, 0.2, 400)
    mean, lo, hi = stats.bootstrap_ci(v)
    half = 1.96 * v.std() / math.sqrt(len(v))
    assert mean == pytest.approx(v.mean()) and lo == pytest.approx(mean - half, abs=0.004)
    assert hi == pytest.approx(mean + half, abs=0.004)
    assert stats.bootstrap_ci(v) == (mean, lo, hi) and stats.bootstrap_ci(v, seed=1) != (mean, lo, hi)
    assert all(math.isnan(x) for x in stats.bootstrap_ci([float("nan")]))


def _records():
    """Three cases, k = 1: diffusion-mlp with two backbones and two seeds, raw-mlp with two seeds, growcut."""
    out = []
    for i, case in enumerate(["Brats18_A", "Brats18_B", "Brats18_C"]):
        for method, backbone, base in (("diffusion-mlp", "bundled", 0.8), ("diffusion-mlp", "random", 0.7),
                                       ("raw-mlp", None, 0.75), ("growcut", None, 0.5)):
            for seed in ((0, 1) if method != "growcut" else (0,)):
                d = base + 0.01 * i + 0.02 * seed
                out.append({"case": case, "k": 1, "method": method, "backbone": backbone, "seed": seed,
                            "seconds": 1.0, "dice": {"WT": d, "TC": d - 0.1, "ET": d - 0.2},
                            "hd95": {"WT": 1.0, "TC": float("nan"), "ET": 2.0}})
    return out


def test_paired_table_by_dataset_splits_brats_and_lgg_and_gives_both_means():
    """`report.paired_table_by_dataset` (the experiment scripts' one table): a row per dataset, pair, run and
    region; the LGG cases (TCGA names) apart from BraTS; each variant's mean over its seeds and cases."""
    recs = []
    for case, base in (("Brats18_A", 0.8), ("Brats18_B", 0.9), ("TCGA_X", 0.6), ("TCGA_Y", 0.7), ("TCGA_Z", 0.5)):
        for method, shift in (("new", 0.02), ("old", 0.0)):
            for seed in (0, 1):
                d = base + shift + 0.01 * seed
                dice = {"WT": d} if case.startswith("TCGA") else {"WT": d, "TC": d - 0.1, "ET": d - 0.2}
                recs.append({"case": case, "k": "axial:1", "method": method, "backbone": None, "seed": seed,
                             "seconds": 1.0, "dice": dice})
    lines = report.paired_table_by_dataset(recs, [("new", "old")], digits=3).splitlines()
    assert lines[0].startswith("| dataset | A | B | run | region | n | mean A | mean B | A - B |")
    rows = [line.split(" | ") for line in lines[2:]]
    assert [(r[0], r[4], r[5]) for r in rows] == [("| BraTS", "WT", "2"), ("| BraTS", "TC", "2"),
                                                 ("| BraTS", "ET", "2"), ("| LGG", "WT", "3")]
    assert rows[0][6:9] == ["0.875", "0.855", "+0.020"] and rows[0][-1] == "2 / 0 |"
    assert rows[3][6:9] == ["0.625", "0.605", "+0.020"] and rows[3][9] == "[+0.020, +0.020]"


def test_paired_differences_and_seed_spread():
    recs = _records()
    rows = stats.paired_differences(recs)
    pairs = [(r["a"], r["b"]) for r in rows if r["region"] == "WT"]
    assert pairs == [("diffusion-mlp (bundled)", "diffusion-mlp (random)"), ("diffusion-mlp (bundled)", "raw-mlp"),
                     ("diffusion-mlp (random)", "raw-mlp")]
    first = rows[0]
    assert (first["k"], first["region"], first["n"]) == (1, "WT", 3)
    assert first["mean"] == pytest.approx(0.1) and first["lo"] == pytest.approx(0.1)
    assert first["a_wins"] == 3 and first["b_wins"] == 0
    spread = stats.seed_spread(recs)
    mean, sd, n = spread[("diffusion-mlp (bundled)", 1, "WT")]
    assert (mean, n) == (pytest.approx(0.82), 2) and sd == pytest.approx(0.02 / math.sqrt(2))
    assert ("growcut", 1, "WT") not in spread  # one seed only
    merged = stats.seed_means(recs)
    assert len(merged) == 3 * 4 and {r["seeds"] for r in merged} == {1, 2}


def test_table_with_backbones_pairs_and_seeds(tmp_path):
    report.write_table(_records(), tmp_path / "t.md")
    text = (tmp_path / "t.md").read_text()
    assert "| method | backbone | k | n | WT Dice |" in text
    assert "| diffusion-mlp | random | 1 | 3 | 0.720 ± 0.008 |" in text  # case means over the two seeds
    assert "| growcut | – | 1 | 3 |" in text
    assert "| diffusion-mlp (bundled) | diffusion-mlp (random) | 1 | WT | 3 | +0.100 | [+0.100, +0.100] | 3 / 0 |" \
        in text
    assert "Spread over classifier seeds" in text and "| raw-mlp | 1 | 2 | 0.770 ± 0.014 |" in text


def test_merge_keeps_backbones_and_seeds_apart(tmp_path):
    from BrainDiffSegBench.merge import merge_runs

    recs = _records()
    for i, part in enumerate((recs[:10], recs[5:])):
        (tmp_path / f"r{i}").mkdir()
        (tmp_path / f"r{i}" / "results.json").write_text(json.dumps(
            {"machine": "m", "backbones": {"random": {"checkpoint": "x"}}, "records": part}))
    merged = merge_runs([tmp_path / "r0", tmp_path / "r1"], tmp_path / "out")
    assert len(merged) == len(recs)
    assert json.loads((tmp_path / "out" / "results.json").read_text())["backbones"] == {"random": {"checkpoint": "x"}}


def test_end_to_end_one_lgg_case(data_root, tmp_path, capsys):
    case = data_root / LGG_CASE
    if not case.is_dir():
        pytest.skip(f"{case} not found")
    from BrainDiffSegCLI import main

    out = tmp_path / "run"
    rc = main(["benchmark", "propagation", "--data", str(case), "--k", "1", "--methods", "diffusion-mlp", "raw-mlp",
               "--backbones", "bundled", "random", "--classifier-seeds", "0", "1", "--ensemble", "1",
               "--max-epochs", "3", "--threads", "1", "--device", "cpu", "--out", str(out)])
    assert rc == 0
    saved = json.loads((out / "results.json").read_text())
    keys = sorted((r["method"], r["backbone"] or "", r["seed"]) for r in saved["records"])
    assert keys == sorted([("diffusion-mlp", b, s) for b in ("bundled", "random") for s in (0, 1)]
                          + [("raw-mlp", "", s) for s in (0, 1)])
    assert set(saved["backbones"]) == {"bundled", "random"} and saved["seeds"] == [0, 1]
    assert "1 torch thread" in saved["machine"]
    table = (out / "table.md").read_text()
    assert "| diffusion-mlp (bundled) | diffusion-mlp (random) | 1 | WT | 1 |" in table
    assert "| diffusion-mlp (random) | raw-mlp | 1 | WT | 1 |" in table and "Spread over classifier seeds" in table
    assert (out / "overlay_TCGA_CS_4942_19970222_k1_diffusion-mlp_random.png").is_file()


def test_feature_experiment_per_backbone(tmp_path, tiny_checkpoint):
    import shutil

    from conftest import write_tumour_case

    from BrainDiffSegBench.features import select_features, spec_name
    from BrainDiffSegLib.propagation.features import FeatureSpec

    folder, _, _ = write_tumour_case(tmp_path / "BraTS2021_80001", seed=1)
    other = shutil.copytree(tiny_checkpoint, tmp_path / "other")
    specs = [FeatureSpec(blocks=(0,), timesteps=(10,), smoothing=()), FeatureSpec(blocks=(), timesteps=())]
    records = select_features([folder], str(tiny_checkpoint), tmp_path / "fs", k=2, candidates=specs, n_models=1,
                              backbones=[str(tiny_checkpoint), str(other)])
    # the diffusion candidate on each backbone (same weights: same Dice), the intensity-only one once
    assert [(r["spec"], r["backbone"]) for r in records] == [
        (spec_name(specs[0]), str(tiny_checkpoint)), (spec_name(specs[1]), None), (spec_name(specs[0]), str(other))]
    assert records[0]["dice"] == records[2]["dice"]
    table = (tmp_path / "fs" / "feature_selection.md").read_text().splitlines()
    assert table[0].startswith("| features | backbone | channels | cases |") and len(table) == 2 + 3
    assert any(ln.startswith(f"| {spec_name(specs[1])} | – | ") for ln in table)
