"""Smoke tests of the benchmark suite of issue 3 at tiny settings: HD95 and its empty-region rule, the unet-patient
propagation method, `benchmark fewshot` (synthetic data root with the project's split layout, tiny backbone),
`benchmark speed` (both modes, each in its subprocess) and `BrainDiffSeg/SlicerScripts/benchmark.py` under plain python
(the classifier methods through the Slicer Logic must score what the engine scores)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from BrainDiffSegBench import merge, propagation, report
from BrainDiffSegLib.propagation.classifier import ClassifierOptions
from BrainDiffSegLib.errors import InputError
from BrainDiffSegLib.io import load_case
from BrainDiffSegBench.metrics import hd95, region_hd95
from BrainDiffSegLib.protocol import region_dice, simulate_annotation
from BrainDiffSegLib.propagation.propagate import PropagationOptions
from conftest import REPO, write_case, write_tumour_case

PNG = b"\x89PNG\r\n\x1a\n"
FAST = ClassifierOptions(n_models=1, max_epochs=6, hidden=(32, 16))
pytestmark = pytest.mark.filterwarnings("ignore:builtin type .* has no __module__ attribute:DeprecationWarning")


# ------------------------------------------------------------------------------------------ HD95

def test_hd95_distance_in_mm_and_empty_rules():
    a = np.zeros((12, 10, 8), bool)
    b = np.zeros_like(a)
    a[2, 5, 4] = True
    b[5, 5, 4] = True  # 3 voxels apart along the first axis
    assert hd95(a, b) == pytest.approx(3.0)
    assert hd95(a, b, spacing=(2.0, 1.0, 1.0)) == pytest.approx(6.0)
    assert hd95(a, a, spacing=(2.0, 1.0, 1.0)) == 0.0
    empty = np.zeros_like(a)
    assert hd95(empty, empty) == 0.0  # nothing to find, nothing found
    assert math.isnan(hd95(a, empty)) and math.isnan(hd95(empty, b))  # undefined


def test_region_hd95_ignores_annotated_slices():
    truth = np.zeros((16, 16, 6), np.uint8)
    truth[4:8, 4:8, 2] = 2  # tumour only on slice 2
    pred = truth.copy()
    pred[10:12, 10:12, 2] = 2  # a mistake on the annotated slice does not count
    assert region_hd95(pred, truth, [2]) == {"WT": 0.0, "TC": 0.0, "ET": 0.0}
    pred[4:8, 4:8, 3] = 2  # a false positive on a non-annotated slice where the truth is empty: undefined
    assert math.isnan(region_hd95(pred, truth, [2])["WT"])


def test_nan_stats_and_table_count_undefined():
    assert report.nan_stats([1.0, float("nan"), 3.0]) == (2.0, 1.0, 2, 1)
    mean, sd, n, n_nan = report.nan_stats([float("nan")])
    assert math.isnan(mean) and n == 0 and n_nan == 1
    recs = [{"case": f"TCGA_{i}", "k": 1, "method": "m", "seconds": 1.0, "dice": {"WT": d}, "hd95": {"WT": h}}
            for i, (d, h) in enumerate([(0.8, 2.0), (0.6, 4.0), (0.0, float("nan"))])]
    table = report.propagation_table(recs)
    assert "| WT Dice | WT HD95 (mm) | HD95 undefined |" in table
    assert "| m | 1 | 3 | 0.467 ± 0.340 | 3.0 ± 1.0 | 1 | 1.0 |" in table


# ------------------------------------------------------------------------------------------ propagation

@pytest.fixture(scope="module")
def bench_unet(tmp_path_factory):
    from BrainDiffSegBench.segnets import SegTrainOptions
    from BrainDiffSegBench.unet_patient import PatientUNetOptions

    root = tmp_path_factory.mktemp("cases")
    folder, _, _ = write_tumour_case(root / "BraTS2021_81001", seed=1)
    out = tmp_path_factory.mktemp("bench_unet")
    unet = PatientUNetOptions(train=SegTrainOptions(steps=120, batch_size=4, lr=5e-3), filters=(8, 16, 32), size=64)
    records = propagation.benchmark_propagation([folder], [3], ["raw-mlp", "unet-patient"], out,
                                              PropagationOptions(method="raw", device="cpu", classifier=FAST),
                                              overlays=0, unet_options=unet)
    return records, out


def test_the_machine_line_names_the_cpu(tmp_path):
    """Results name the CPU model (the shared machines change CPU between sessions): read from /proc/cpuinfo's
    "model name" (the first), with `platform.processor()` where there is no such file or line."""
    import platform

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Processor\n\n"
                    "processor\t: 1\nmodel name\t: Other\n")
    assert report.cpu_name(str(info)) == "Intel(R) Xeon(R) Processor"
    assert report.cpu_name(str(tmp_path / "missing")) == (platform.processor() or "")
    info.write_text("processor\t: 0\n")
    assert report.cpu_name(str(info)) == (platform.processor() or "")
    assert report.cpu_name() in report.machine()


def test_propagation_records_hd95_and_unet_patient(bench_unet):
    records, out = bench_unet
    assert [r["method"] for r in records] == ["raw-mlp", "unet-patient"]
    for r in records:
        assert set(r["dice"]) == set(r["hd95"]) == {"WT", "TC", "ET"}
        assert all(0.0 <= v <= 1.0 for v in r["dice"].values())
        assert all(math.isnan(v) or v >= 0.0 for v in r["hd95"].values())
        assert r["spacing"] == [1.0, 1.0, 2.0]
    raw, unet = records
    assert raw["dice"]["WT"] > 0.8 and raw["hd95"]["WT"] < 10.0
    assert unet["dice"]["WT"] > 0.5, unet  # 120 steps on 3 slices: the tumour is found
    saved = json.loads((out / "results.json").read_text())
    assert saved["records"][1]["hd95"] == pytest.approx(unet["hd95"], nan_ok=True)
    table = (out / "table.md").read_text()
    assert "WT HD95 (mm) | TC HD95 (mm) | ET HD95 (mm) | HD95 undefined" in table
    assert (out / "dice_vs_k.png").read_bytes()[:8] == PNG


def test_unknown_methods_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="unknown propagation method"):
        propagation.benchmark_propagation([], [1], ["unet"], tmp_path)
    from BrainDiffSegBench.fewshot import FewShotOptions

    with pytest.raises(InputError, match="unknown few-shot method"):
        FewShotOptions(methods=("nnunet",)).check()
    with pytest.raises(InputError, match="at least 1"):
        FewShotOptions(ns=(0,)).check()


def test_noise_predictor_head_starts_at_zero_and_encoder_is_frozen(tiny_checkpoint):
    from BrainDiffSegLib.model import load_backbone
    from BrainDiffSegBench.segnets import NoisePredictorSegmenter, SegTrainOptions, train_segnet

    unet, cfg = load_backbone(tiny_checkpoint)
    net = NoisePredictorSegmenter(unet, cfg, n_classes=3, t=50)
    x = torch.randn(2, 8, 32, 32)
    assert torch.count_nonzero(net(x)) == 0  # zero-initialised head
    frozen = {k: v.clone() for k, v in unet.down_blocks.state_dict().items()}
    images = torch.rand(4, 4, 32, 32) * 2 - 1
    labels = (images[:, 3] > 0.5).long() + (images[:, 1] > 0.8).long()
    train_segnet(net, images, torch.ones(4, 4, dtype=torch.bool), labels, 3, SegTrainOptions(steps=3, loss="ce"))
    assert all(torch.equal(frozen[k], v) for k, v in unet.down_blocks.state_dict().items())
    assert torch.count_nonzero(unet.conv_out.weight) > 0  # the head was trained


def test_train_segnet_stops_on_a_flat_validation_and_keeps_the_best_weights():
    """Early stopping: a validation score that peaks at the second evaluation stops training `patience`
    evaluations later (not before `min_steps`) and restores the weights of that evaluation."""
    from BrainDiffSegBench.segnets import SegTrainOptions, build_unet2d, train_segnet

    torch.manual_seed(0)
    images = torch.rand(4, 4, 32, 32) * 2 - 1
    labels = (images[:, 3] > 0.5).long()
    net = build_unet2d(8, 2, filters=(8, 8, 16))
    scores = iter([0.2, 0.5, 0.4, 0.45, 0.3, 0.9, 0.9])
    seen = {}

    def validate(n):
        assert not n.training
        seen[len(seen)] = {k: v.clone() for k, v in n.state_dict().items()}
        return next(scores)

    opt = SegTrainOptions(steps=40, batch_size=2, val_every=3, patience=3, min_steps=9, augment=False, crop=16)
    hist = train_segnet(net, images, torch.ones(4, 4, dtype=torch.bool), labels, 2, opt, validate=validate)
    assert hist["stopped"] == "plateau" and hist["steps"] == 15  # evaluations at 3, 6 (best), 9, 12, 15
    assert [p[0] for p in hist["curve"]] == [3, 6, 9, 12, 15] and hist["best_step"] == 6
    assert hist["best_score"] == 0.5 and all(p[1] > 0 for p in hist["curve"])
    assert all(torch.equal(v, seen[1][k]) for k, v in net.state_dict().items())
    # no plateau within the budget: an evaluation at the last step, stopped by the budget
    scores = iter([0.1, 0.2, 0.3])
    hist = train_segnet(build_unet2d(8, 2, filters=(8, 8, 16)), images, torch.ones(4, 4, dtype=torch.bool), labels, 2,
                        SegTrainOptions(steps=7, batch_size=2, val_every=3, patience=2),
                        validate=lambda n: next(scores))
    assert hist["stopped"] == "budget" and [p[0] for p in hist["curve"]] == [3, 6, 7] and hist["best_step"] == 7
    with pytest.raises(InputError, match="multiple of 8"):
        train_segnet(net, images, torch.ones(4, 4, dtype=torch.bool), labels, 2, SegTrainOptions(crop=12))


def test_patch_crops_and_sliding_window_inference(tiny_checkpoint):
    """Patches of the slice (foreground-centred or uniform, always inside), and patch-trained nets predicted with
    sliding windows: the TransUNet-style net built for 16-px patches runs on 32-px slices either way, the noise
    predictor takes its fixed noise's corner for a patch."""
    from BrainDiffSegLib.model import load_backbone
    from BrainDiffSegBench.segnets import NoisePredictorSegmenter, TransUNet2D, _crop, predict_segnet

    x = torch.arange(2 * 32 * 32, dtype=torch.float32).reshape(2, 32, 32)
    y = torch.zeros(1, 32, 32)
    y[0, 30, 1] = 1
    gen = torch.Generator().manual_seed(0)
    centred = 0
    for _ in range(40):
        cx, cy = _crop(x, y, 16, gen)
        assert cx.shape == (2, 16, 16) and cy.shape == (1, 16, 16)
        i, j = divmod(int(cx[0, 0, 0]), 32)
        assert torch.equal(cx, x[:, i:i + 16, j:j + 16]) and torch.equal(cy, y[:, i:i + 16, j:j + 16])
        centred += bool(cy.sum())
    assert 10 <= centred < 40  # about half centred on the one labelled pixel (clipped to the slice)
    images = torch.rand(3, 4, 32, 32) * 2 - 1
    present = torch.ones(3, 4, dtype=torch.bool)
    torch.manual_seed(0)
    trans = TransUNet2D(8, 3, filters=(8, 16), size=16)
    p = predict_segnet(trans, images, present, roi=16)
    assert p.shape == (3, 3, 32, 32) and torch.allclose(p.sum(1), torch.ones(3, 32, 32), atol=1e-5)
    assert predict_segnet(trans, images, present).shape == (3, 3, 32, 32)  # position embedding resized
    unet, cfg = load_backbone(tiny_checkpoint)
    net = NoisePredictorSegmenter(unet, cfg, n_classes=3, t=50)
    torch.nn.init.normal_(unet.conv_out.weight)
    assert net(torch.randn(2, 8, 16, 16)).shape == (2, 3, 16, 16)
    assert predict_segnet(net, images, present, roi=16).shape == (3, 3, 32, 32)


# ------------------------------------------------------------------------------------------ fewshot

def test_fewshot_paired_differences_pair_seed_and_case():
    from BrainDiffSegBench.fewshot_report import paired_fewshot

    def rec(method, seed, dice):
        return {"method": method, "n": 1, "seed": seed,
                "cases": [{"case": c, "dice": {"WT": d}} for c, d in dice.items()]}

    records = [rec("noise-predictor", 0, {"a": 0.9, "b": 0.5}), rec("unet", 0, {"a": 0.7, "b": 0.6}),
               rec("noise-predictor", 1, {"a": 0.8}), rec("unet", 1, {"a": 0.4, "b": 0.9}),
               rec("noise-predictor", 2, {"a": 0.1})]  # seed 2 has no unet: no pair
    mean, lo, hi, wins, pairs = paired_fewshot(records, "noise-predictor", "unet")[(1, "WT")]
    assert pairs == 3 and wins == 2 and mean == pytest.approx((0.2 - 0.1 + 0.4) / 3)
    assert lo <= mean <= hi


@pytest.fixture(scope="module")
def fewshot_root(tmp_path_factory):
    """A data root with the split's layout: 6 BraTS 2018-named cases (5 tuning, 1 test), 2 LGG (1 + 1)."""
    root = tmp_path_factory.mktemp("fewshot_root")
    for i in range(6):
        write_tumour_case(root / "brats2018" / f"Brats18_SYN_{i}_1", seed=10 + i)
    for i in range(2):
        write_case(root / "lgg128" / f"TCGA_SY_{i}_2000010{i}", layout="lgg", roles=("t1", "t1ce", "flair"),
                   shape=(40, 36, 12), seed=20 + i)
    return root


def test_fewshot_smoke(fewshot_root, tiny_checkpoint, tmp_path):
    from BrainDiffSegBench.fewshot import FewShotOptions, run_dataset

    # BraTS: 16-px patches and early stopping on the held-out tuning case; LGG (1 tuning case): fixed steps
    opt = FewShotOptions(ns=(1, 3), seeds=(0, 1), steps=4, batch_size=2, n_mlps=1, brats_slices=(8, 15),
                         eval_every=2, checkpoint=str(tiny_checkpoint), timestep=10, crop=16, val_cases=1,
                         val_every=2, patience=1, min_steps=0)
    lgg_opt = FewShotOptions(**{**opt.__dict__, "val_cases": 0, "crop": 0})
    out = tmp_path / "fs"
    brats = run_dataset(fewshot_root, "BraTS", opt, out)
    lgg = run_dataset(fewshot_root, "LGG", lgg_opt, out)
    with pytest.raises(InputError, match="too few to hold out"):
        run_dataset(fewshot_root, "LGG", opt, tmp_path / "bad")
    for records, regions, name in ((brats, {"WT", "TC", "ET"}, "brats"), (lgg, {"WT"}, "lgg")):
        assert len(records) == 2 * 2 * 4  # seeds x N x methods
        assert {r["method"] for r in records} == {"diffusion-mlp", "noise-predictor", "unet", "transunet"}
        for r in records:
            assert set(r["dice"]) == set(r["hd95"]) == regions
            assert all(0.0 <= v <= 1.0 for v in r["dice"].values())
            assert all(math.isnan(v) or v >= 0 for v in r["hd95"].values())
            assert len(r["train_slices"]) == r["n"] and r["seconds_total"] > 0
        saved = json.loads((out / f"fewshot_{name}.json").read_text())
        assert saved["records"] == json.loads(json.dumps(records))
        assert saved["train_cases"] and saved["eval_cases"]
        assert set(saved["train_cases"]).isdisjoint(saved["eval_cases"])  # the split is respected
        assert (out / f"fewshot_{name}.png").read_bytes()[:8] == PNG
        table = (out / f"fewshot_{name}.md").read_text()
        assert "mean ± sd over 2 seeds [0, 1]" in table and "| transunet | 3 |" in table
    # BraTS: validation curves of the trained nets (every 2 steps and the end), the best step kept, the plot
    for r in brats:
        if r["method"] == "diffusion-mlp":
            assert 0.0 <= r["val_dice"] <= 1.0 and "curve" not in r
            continue
        steps = [p[0] for p in r["curve"]]
        assert steps == list(range(2, r["steps_run"] + 1, 2)) and r["steps_run"] <= 4
        assert r["stopped"] in ("plateau", "budget") and r["best_step"] in steps
        assert r["val_dice"] == max(p[2] for p in r["curve"] if p[0] <= r["best_step"])
    assert (out / "fewshot_brats_curves.png").read_bytes()[:8] == PNG
    assert "| noise-predictor − unet | 3 |" in (out / "fewshot_brats_paired.md").read_text()
    assert not (out / "fewshot_lgg_curves.png").exists()  # no validation cases, no curves
    assert all("curve" not in r and r.get("steps_run", 4) == 4 for r in lgg)
    # BraTS pool = 4 tuning cases, the 5th validates, evaluation = the test case; nested training sets over N
    saved = json.loads((out / "fewshot_brats.json").read_text())
    assert len(saved["train_cases"]) == 4 and saved["val_cases"] == ["Brats18_SYN_4_1"]
    assert saved["eval_cases"] == ["Brats18_SYN_5_1"]
    s0 = {r["n"]: r["train_slices"] for r in brats if r["seed"] == 0 and r["method"] == "unet"}
    assert s0[3][:1] == s0[1]
    # runs with other seeds join into one table
    from BrainDiffSegBench.merge import merge_fewshot

    run_dataset(fewshot_root, "LGG", FewShotOptions(**{**lgg_opt.__dict__, "seeds": (2,), "ns": (1,)}),
                tmp_path / "s2")
    merged = merge_fewshot([out / "fewshot_lgg.json", tmp_path / "s2" / "fewshot_lgg.json"], tmp_path / "m")
    assert sorted({r["seed"] for r in merged}) == [0, 1, 2] and len(merged) == len(lgg) + 4
    assert "mean ± sd over 3 seeds [0, 1, 2]" in (tmp_path / "m" / "fewshot_lgg.md").read_text()


# ------------------------------------------------------------------------------------------ speed

def test_speed_smoke(tmp_path):
    from BrainDiffSegLib.resources import default_checkpoint
    from BrainDiffSegBench.speed import benchmark_speed

    if not (Path(default_checkpoint()) / "model.safetensors").is_file():
        pytest.skip("the bundled backbone is missing")
    folder, _, _ = write_tumour_case(tmp_path / "BraTS2021_82001", seed=3, shape=(64, 64, 24))
    res = benchmark_speed(str(folder), tmp_path / "speed", k=3, devices=["cpu", "cuda"], reference_slices=4)
    assert len(res["runs"]) == 1 + torch.cuda.is_available()
    run = res["runs"][0]
    ours, ref, full = run["ours"], run["reference"], run["reference_full"]
    assert all(v > 0 for v in ours["seconds"].values()) and all(v > 0 for v in ref["seconds"].values())
    assert ours["max_rss_gb"] > 0 and ref["max_rss_gb"] > 0
    assert ref["slices"] == 4 and ref["slices_in_volume"] == 24 and ref["channels"] > ours["channels"]
    # the reference keeps every pixel's float32 features: its matrix grows with the volume, while ours holds the
    # annotated slices' features and one batch of maps whatever the number of slices. On this tiny volume ours'
    # batch buffer is the larger; on a BraTS volume (240 x 240 x 155) the reference needs far more.
    assert full["feature_matrix_gb"] == pytest.approx(24 * 64 * 64 * ref["channels"] * 4 / 1024 ** 3, abs=0.01)
    assert 155 * 240 * 240 * ref["channels"] * 4 / 1024 ** 3 > 20 * ours["feature_memory_gb"] > 0
    assert full["peak_memory_gb"] >= ref["max_rss_gb"] and full["seconds"] > 0
    assert run["ratio_time"] > 0 and run["ratio_memory"] > 0
    assert ours["dice"]["WT"] > 0.5
    # a first result from scratch and ITK Grow from seeds on the same annotation, timed in the same run
    first, growcut = ours["first"], run["growcut"]
    assert first["seconds"] > 0 and first["dice"]["WT"] > 0.5 and "gate" in first["timings"]
    assert growcut["seconds"] > 0 and growcut["dice"]["WT"] > 0.3
    assert run["ratio_first_to_growcut"] == pytest.approx(first["seconds"] / growcut["seconds"], abs=0.01)
    if not torch.cuda.is_available():
        assert any("cuda: skipped" in n for n in res["notes"])
    text = (tmp_path / "speed" / "speed.md").read_text()
    assert "reference, extrapolated to the volume" in text and "Ratios reference / ours" in text
    assert "Ratio ours / Grow from seeds" in text and "no other load" in text


def test_busy_processes_run_during_the_block_and_stop_after():
    from BrainDiffSegBench.speed import busy_processes

    with busy_processes(2) as procs:
        assert len(procs) == 2 and all(p.poll() is None for p in procs)
    assert all(p.poll() is not None for p in procs)


# ------------------------------------------------------------------------------------------ Slicer script

def test_slicer_benchmark_script_under_plain_python(tmp_path):
    pytest.importorskip("slicer")
    folder, _, _ = write_tumour_case(tmp_path / "cases" / "BraTS2021_83001", seed=4)
    script = REPO / "BrainDiffSeg" / "SlicerScripts" / "benchmark.py"
    args = ["propagation", "--k", "2", "--methods", "raw-mlp", "--ensemble", "1", "--device", "cpu",
            "--data", str(folder)]
    via_logic = subprocess.run([sys.executable, str(script)] + args + ["--out", str(tmp_path / "logic")],
                               capture_output=True, text=True, timeout=300)
    assert via_logic.returncode == 0, via_logic.stderr[-3000:]
    records = json.loads((tmp_path / "logic" / "results.json").read_text())["records"]
    assert [(r["method"], r["k"]) for r in records] == [("raw-mlp", 2)]
    # the Logic route (MRML nodes in, a new segmentation node out) scores what the engine scores
    case = load_case(folder)
    ann, zs = simulate_annotation(case.label, 2)
    opts = PropagationOptions(method="raw", device="cpu", classifier=ClassifierOptions(n_models=1))
    engine = region_dice(propagation.run_method(case, ann, "raw-mlp", opts), case.label, zs)
    assert records[0]["dice"] == pytest.approx(engine, abs=1e-4)
    assert all(0 <= v <= 1 for v in records[0]["dice"].values())
    bad = subprocess.run([sys.executable, str(script), "propagation", "--methods", "nope", "--data", str(folder),
                          "--out", str(tmp_path / "bad")], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "unknown propagation method" in bad.stderr


def test_merge_runs(tmp_path):
    def rec(case, method, wt):
        return {"case": case, "k": 3, "method": method, "seconds": 1.0, "dice": {"WT": wt}, "hd95": {"WT": 2.0}}
    for name, recs in (("a", [rec("Brats18_A", "m", 0.5), rec("TCGA_X", "m", 0.1)]), ("b", [rec("TCGA_X", "m", 0.9)])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps({"machine": "x", "records": recs}))
    merged = merge.merge_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "m")
    assert [(r["case"], r["dice"]["WT"]) for r in merged] == [("Brats18_A", 0.5), ("TCGA_X", 0.1)]  # first wins
    assert "### LGG (1 cases)" in (tmp_path / "m" / "table.md").read_text()
    assert (tmp_path / "m" / "dice_vs_k.png").read_bytes()[:8] == PNG


def test_slicer_benchmark_script_in_seeds_mode_paints_a_background_segment(tmp_path):
    """The Logic route with seeds (a Background segment painted from the background label, strokes on a sagittal
    and a coronal slice) scores what the engine scores with the same seeds."""
    pytest.importorskip("slicer")
    from BrainDiffSegLib.preprocess import foreground_mask
    from BrainDiffSegLib.strokes import simulate_strokes

    folder, _, _ = write_tumour_case(tmp_path / "cases" / "BraTS2021_83002", seed=5)
    script = REPO / "BrainDiffSeg" / "SlicerScripts" / "benchmark.py"
    args = ["propagation", "--k", "2", "--methods", "raw-mlp", "--ensemble", "1", "--device", "cpu",
            "--annotation", "seeds", "--orientation", "mixed", "--data", str(folder)]
    via_logic = subprocess.run([sys.executable, str(script)] + args + ["--out", str(tmp_path / "logic")],
                               capture_output=True, text=True, timeout=300)
    assert via_logic.returncode == 0, via_logic.stderr[-3000:]
    records = json.loads((tmp_path / "logic" / "results.json").read_text())["records"]
    assert [(r["method"], r["annotation"]) for r in records] == [("raw-mlp", "seeds")]
    case = load_case(folder)
    ann, _ = simulate_strokes(case.label, foreground_mask(case.images), 2, "mixed")
    opts = PropagationOptions(method="raw", device="cpu", classifier=ClassifierOptions(n_models=1),
                              annotation_mode="seeds")
    engine = region_dice(propagation.run_method(case, ann, "raw-mlp", opts), case.label, [])
    assert records[0]["dice"] == pytest.approx(engine, abs=1e-4)
    assert records[0]["dice"]["WT"] > 0.8
