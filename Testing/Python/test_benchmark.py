"""Benchmarks: the project's fixed data split, the propagation benchmark on small synthetic cases (results JSON,
Markdown table, plots), and the feature-selection experiment with its cached features, which must be the features
that the deployed FeatureExtractor computes for each candidate."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from BrainDiffSegBench import features as feature_experiment
from BrainDiffSegBench import propagation, report
from BrainDiffSegLib import splits
from BrainDiffSegLib.propagation.classifier import ClassifierOptions
from BrainDiffSegLib.propagation.features import FeatureExtractor, FeatureSpec
from BrainDiffSegLib.io import load_case
from BrainDiffSegLib.model import load_backbone
from BrainDiffSegLib.preprocess import ModelGrid, normalize_case, stack_roles
from BrainDiffSegLib.propagation.propagate import PropagationOptions, propagate
from BrainDiffSegLib.protocol import protocol_slices, region_dice, simulate_annotation
from BrainDiffSegLib.propagation.sources import GivenExtractor

PNG = b"\x89PNG\r\n\x1a\n"
# ITK's SWIG wrappers warn on import under Python 3.11+
pytestmark = pytest.mark.filterwarnings("ignore:builtin type .* has no __module__ attribute:DeprecationWarning")
FAST = ClassifierOptions(n_models=1, max_epochs=6, hidden=(32, 16))


def _have_itk() -> bool:
    try:
        import itk  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """Two synthetic BraTS-named cases with ground truth and one without."""
    from conftest import write_tumour_case

    root = tmp_path_factory.mktemp("bench_cases")
    a = write_tumour_case(root / "BraTS2021_80001", seed=1)
    b = write_tumour_case(root / "BraTS2021_80002", seed=2)
    c = write_tumour_case(root / "BraTS2021_80003", seed=3, seg=False)
    return [a, b, c]


# ------------------------------------------------------------------------------------------ data split

def _fake_root(tmp_path: Path, nifti_writer) -> tuple[Path, list[str], list[str], list[str]]:
    rng = np.random.default_rng(0)
    brats18 = [f"Brats18_TCIA0{i}_{100 + 7 * i}_1" for i in range(7)]
    lgg = [f"TCGA_{c}_{4900 + 13 * i}_1996{i:04d}" for i, c in zip(range(17), ["CS", "DU", "FG", "HT"] * 5)]
    other = ["BraTS2021_00006"]
    tiny = np.zeros((2, 2, 2), np.int16)
    # written in shuffled order: the split must not depend on the order of the file system
    for sub, names in (("brats2018", brats18), ("lgg128", lgg), ("brats2021", other)):
        for name in rng.permutation(names):
            nifti_writer(tmp_path / sub / name / f"{name}_flair.nii.gz", tiny)
    (tmp_path / "lgg128" / "notes").mkdir()  # not a case: no sequence file
    (tmp_path / "lgg128" / "notes" / "README.txt").write_text("x")
    return tmp_path, sorted(brats18), sorted(lgg), other


def test_data_split(tmp_path, nifti_writer):
    root, brats18, lgg, other = _fake_root(tmp_path, nifti_writer)
    split = splits.data_split(root)
    assert set(split) == {"tuning", "test"}
    tuning = [p.name for p in split["tuning"]]
    test = [p.name for p in split["test"]]
    assert tuning == brats18[:5] + [lgg[0], lgg[8], lgg[16]]
    assert set(test) == set(brats18[5:]) | (set(lgg) - {lgg[0], lgg[8], lgg[16]}) | set(other)
    assert len(test) == 2 + 14 + 1 and len(set(test)) == len(test)
    assert set(tuning).isdisjoint(test)
    assert set(tuning) | set(test) == set(brats18) | set(lgg) | set(other)
    assert "BraTS2021_00006" in test
    assert all(p.is_dir() and p.parent.parent == root for p in split["tuning"] + split["test"])
    # the CLI's --split uses the same split
    from BrainDiffSegCLI.benchmark import propagation_cases

    assert propagation_cases([str(root)], "tuning") == split["tuning"]
    assert propagation_cases([str(root)], "test") == split["test"]
    assert len(propagation_cases([str(root)], "all")) == 25


def test_data_split_without_brats2018_or_lgg(tmp_path, nifti_writer):
    for name in ("BraTS2021_00001", "BraTS2021_00002"):
        nifti_writer(tmp_path / "brats2021" / name / f"{name}_flair.nii.gz", np.zeros((2, 2, 2), np.int16))
    split = splits.data_split(tmp_path)
    assert split["tuning"] == []
    assert [p.name for p in split["test"]] == ["BraTS2021_00001", "BraTS2021_00002"]


# ------------------------------------------------------------------------------------------ propagation benchmark

@pytest.fixture(scope="module")
def bench(cases, tmp_path_factory):
    methods = ["raw-mlp"] + (["fill-between"] if _have_itk() else [])
    out = tmp_path_factory.mktemp("bench")
    opts = PropagationOptions(method="raw", device="cpu", classifier=FAST)
    records = propagation.benchmark_propagation([c[0] for c in cases], [1, 2], methods, out, opts)
    return records, methods, out


def test_benchmark_records(bench, cases):
    records, methods, out = bench
    saved = json.loads((out / "results.json").read_text())
    strip = [[{k: v for k, v in r.items() if k != "hd95"} for r in recs] for recs in (saved["records"], records)]
    assert strip[0] == strip[1]
    for a, b in zip(saved["records"], records):  # HD95 may be NaN (fill-between from one slice finds nothing)
        assert a["hd95"] == pytest.approx(b["hd95"], nan_ok=True)
    assert "torch" in saved["machine"]
    truth = {folder.name: label for folder, _, label in cases[:2]}  # the third case has no ground truth
    keys = [(r["case"], r["k"], r["method"]) for r in records]
    assert sorted(keys) == sorted((c, k, m) for c in truth for k in (1, 2) for m in methods)
    for r in records:
        assert set(r["dice"]) == {"WT", "TC", "ET"}
        assert all(0.0 <= v <= 1.0 for v in r["dice"].values())
        assert r["annotated"] == protocol_slices(truth[r["case"]], r["k"])
        assert r["seconds"] >= 0
        if r["method"] == "raw-mlp":
            assert r["dice"]["WT"] > 0.8, r
            assert r["dice"]["TC"] > 0.5, r


def test_benchmark_fill_between_scores(bench, cases):
    if not _have_itk():
        pytest.skip("itk is not installed (the baselines extra)")
    records, _, _ = bench
    by = {(r["case"], r["k"], r["method"]): r["dice"] for r in records}
    folder, _, label = cases[0]
    name = folder.name
    # one annotated slice: nothing to interpolate between, nothing is extrapolated -> no tumour elsewhere
    assert by[(name, 1, "fill-between")]["WT"] == 0.0
    # two slices: the slices between them are filled, the tumour beyond them is missed
    assert 0.2 < by[(name, 2, "fill-between")]["WT"] < by[(name, 2, "raw-mlp")]["WT"]
    # the recorded score is the score of the method's output
    case = load_case(folder)
    ann, zs = simulate_annotation(case.label, 2)
    pred = propagation.run_method(case, ann, "fill-between", PropagationOptions())
    assert by[(name, 2, "fill-between")] == pytest.approx(region_dice(pred, label, zs), abs=1e-4)
    # ITK's one-off loading of its filters is not counted in the first case's time
    assert max(r["seconds"] for r in records if r["method"] == "fill-between") < 2.0


def test_benchmark_table_and_plots(bench, cases):
    records, methods, out = bench
    lines = (out / "table.md").read_text().splitlines()
    assert lines[0] == "### all cases (2 cases)"  # synthetic cases are all one dataset: no per-dataset sections
    assert lines[2].startswith("| method | k | n | WT Dice | TC Dice | ET Dice |")
    rows = [ln for ln in lines[4:] if ln.strip()]
    assert len(rows) == 2 * len(methods)
    for method in methods:
        for k in (1, 2):
            row = next(ln for ln in rows if ln.startswith(f"| {method} | {k} | "))
            cells = [c.strip() for c in row.strip("|").split("|")]
            assert cells[2] == "2"  # two cases with ground truth
            wt = [r["dice"]["WT"] for r in records if r["method"] == method and r["k"] == k]
            mean = float(re.match(r"([0-9.]+) ± ", cells[3]).group(1))
            assert mean == pytest.approx(np.mean(wt), abs=6e-4)
    assert (out / "dice_vs_k.png").read_bytes()[:8] == PNG
    names = {f"overlay_{f.name}_k{k}_{m}.png" for f, _, _ in cases[:2] for k in (1, 2) for m in methods}
    assert {p.name for p in out.glob("overlay_*.png")} == names
    assert all((out / n).read_bytes()[:8] == PNG for n in names)


def test_unknown_benchmark_method(cases):
    case = load_case(cases[0][0])
    ann, _ = simulate_annotation(case.label, 1)
    with pytest.raises(ValueError, match="unknown method 'unet'"):
        propagation.run_method(case, ann, "unet", PropagationOptions())


# ------------------------------------------------------------------------------------------ feature selection

SMOOTH = (1.0, 2.0, 4.0)
CANDIDATES = [FeatureSpec(blocks=(0,), timesteps=(10,), smoothing=()),
              FeatureSpec(blocks=(1,), timesteps=(10, 50), smoothing=()),
              FeatureSpec(blocks=(), timesteps=(), smoothing=SMOOTH)]


@pytest.fixture(scope="module")
def prepared(cases, tiny_checkpoint):
    unet, cfg = load_backbone(tiny_checkpoint)
    case = load_case(cases[0][0])
    norm, fg = normalize_case(case.images)
    stack, present = stack_roles(norm)
    grid = ModelGrid.from_mask(fg, cfg.sample_size)
    return unet, cfg, case, stack, present, grid, fg


def test_cached_features_are_the_deployed_features(prepared):
    """Every candidate's cached features equal (up to the cache's float16 rounding) what FeatureExtractor computes
    for that spec alone: on the model grid, and resampled to the native head pixels. The candidates share timesteps
    at different positions (the noise of a timestep is drawn by its position) and list blocks out of order."""
    unet, cfg, case, stack, present, grid, fg = prepared
    candidates = CANDIDATES + [FeatureSpec(blocks=(1,), timesteps=(50,)),
                               FeatureSpec(blocks=(2, 0), timesteps=(50, 10), intensities=False),
                               FeatureSpec(blocks=(1,), timesteps=(10,), noise_seed=3)]
    extractors = feature_experiment.cached_extractors(candidates, unet, cfg, stack, present, grid, fg)
    assert len(extractors) == len(candidates)
    zs = list(range(fg.shape[-1]))
    head = torch.from_numpy(np.moveaxis(fg, -1, 0))
    for spec, cex in zip(candidates, extractors):
        assert isinstance(cex, feature_experiment.CachedExtractor) and cex.spec == spec and cex.grid == grid
        live = FeatureExtractor(unet if spec.blocks else None, cfg, spec, stack, present, grid)
        assert cex.n_channels == live.n_channels
        a, b = cex.diffusion_maps(zs), live.diffusion_maps(zs)
        if not spec.blocks:
            assert a is None and b is None
        else:
            assert a.shape == b.shape
            cached = cex.index[zs] >= 0
            torch.testing.assert_close(a.permute(0, 2, 3, 1)[cached], b.permute(0, 2, 3, 1)[cached],
                                       rtol=2e-3, atol=2e-3, msg=lambda m: f"{spec}: {m}")
        na, nb = cex.native_features(zs, head), live.native_features(zs, head)
        assert na.dtype == nb.dtype == torch.float16 and na.shape == nb.shape == (int(head.sum()), live.n_channels)
        torch.testing.assert_close(na.float(), nb.float(), rtol=2e-3, atol=2e-3, msg=lambda m: f"{spec}: {m}")


def test_propagation_with_cached_features_matches_live_features(prepared, tiny_checkpoint):
    """The experiment's propagation (cached features) and the deployed one (features computed live) agree."""
    unet, cfg, case, stack, present, grid, fg = prepared
    spec = FeatureSpec(blocks=(1,), timesteps=(50,))
    cex = feature_experiment.cached_extractors([CANDIDATES[1], spec], unet, cfg, stack, present, grid, fg)[1]
    ann, zs = simulate_annotation(case.label, 3)
    opts = PropagationOptions(method="diffusion", checkpoint=str(tiny_checkpoint), features=spec, device="cpu",
                              classifier=FAST)
    cached = propagate(case.images, ann, opts, features=GivenExtractor(cex))
    live = propagate(case.images, ann, opts)
    agree = region_dice(cached.labels, live.labels, zs)
    assert min(agree.values()) > 0.98, agree
    assert np.abs(cached.entropy - live.entropy).max() < 0.1


def test_select_features(cases, tiny_checkpoint, prepared, tmp_path):
    unet, cfg, case, stack, present, grid, _ = prepared
    records = feature_experiment.select_features([cases[0][0]], str(tiny_checkpoint), tmp_path / "fs", k=3,
                                        candidates=CANDIDATES, n_models=1)
    saved = json.loads((tmp_path / "fs" / "feature_selection.json").read_text())
    assert saved["records"] == records and saved["k"] == 3 and saved["checkpoint"] == str(tiny_checkpoint)
    assert len(records) == 3
    assert [r["spec"] for r in records] == [feature_experiment.spec_name(s) for s in CANDIDATES]
    assert len({r["spec"] for r in records}) == 3
    for spec, r in zip(CANDIDATES, records):
        live = FeatureExtractor(unet if spec.blocks else None, cfg, spec, stack, present, grid)
        assert r["channels"] == live.n_channels, (r, live.n_channels)
        assert r["case"] == case.name
        assert set(r["dice"]) == {"WT", "TC", "ET"} and all(0 <= v <= 1 for v in r["dice"].values())
        assert r["dice"]["WT"] > 0.7, r  # every candidate includes the intensities: the tumour is found
    assert [r["channels"] for r in records] == [16 + 4, 2 * 16 + 4, 4 * (1 + 3)]
    table = (tmp_path / "fs" / "feature_selection.md").read_text().splitlines()
    assert table[0].startswith("| features | channels | cases |")
    body = table[2:]
    assert len(body) == 3
    for r in records:
        assert any(ln.startswith(f"| {r['spec']} | {r['channels']} | 1 |") for ln in body), (r, body)
    overall = [float(ln.strip("|").split("|")[-1]) for ln in body]
    assert overall == sorted(overall, reverse=True)  # best first


def test_table_has_a_section_per_dataset(tmp_path):
    recs = [{"case": "Brats18_X", "k": 1, "method": "raw-mlp", "seconds": 1.0, "dice": {"WT": 0.8, "TC": 0.7, "ET": 0.6}},
            {"case": "Brats18_Y", "k": 1, "method": "raw-mlp", "seconds": 3.0, "dice": {"WT": 0.6, "TC": 0.5, "ET": 0.4}},
            {"case": "TCGA_CS_1", "k": 1, "method": "raw-mlp", "seconds": 2.0, "dice": {"WT": 0.9}}]
    report.write_table(recs, tmp_path / "t.md")
    text = (tmp_path / "t.md").read_text()
    assert "### all cases (3 cases)" in text and "### BraTS (2 cases)" in text and "### LGG (1 cases)" in text
    brats = text.split("### BraTS")[1].split("###")[0]
    assert "| raw-mlp | 1 | 2 | 0.700 ± 0.100 | 0.600 ± 0.100 | 0.500 ± 0.100 | 2.0 |" in brats
    lgg = text.split("### LGG")[1]
    assert "| raw-mlp | 1 | 1 | 0.900 ± 0.000 | 2.0 |" in lgg
