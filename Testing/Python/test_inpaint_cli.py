"""`braindiffseg inpaint`, `train-inpaint` and `benchmark inpainting` end to end on real cases, tiny step counts."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from BrainDiffSegCLI import main
from BrainDiffSegLib.inpainting.model import InpaintConfig
from BrainDiffSegLib.model import read_config


@pytest.fixture(scope="module")
def setup(data_root, tmp_path_factory):
    from inpaint_support import lgg_t1_cases, tiny_inpaint_model

    from BrainDiffSegLib.inpainting.masks import healthy_masks
    from BrainDiffSegLib.training.inpaint import load_t1_cases

    dirs = lgg_t1_cases(data_root, 2)
    cases = load_t1_cases(dirs)
    mask, _ = healthy_masks(cases, seed=0)[0]
    tmp = tmp_path_factory.mktemp("cli")
    t1_path = cases[0].paths["t1"]
    ref = nib.load(str(t1_path))
    mask_path = tmp / "mask.nii.gz"
    nib.save(nib.Nifti1Image(cases[0].native(mask.astype(np.uint8)), ref.affine), str(mask_path))
    return {"dirs": dirs, "case": cases[0], "mask": mask, "mask_path": mask_path, "tmp": tmp,
            "model": tiny_inpaint_model(tmp / "model")}


def test_inpaint_command(setup):
    out = setup["tmp"] / "out.nii.gz"
    assert main(["inpaint", "--case", str(setup["dirs"][0]), "--mask", str(setup["mask_path"]), "--out", str(out),
                 "--steps", "2", "--model", str(setup["model"])]) == 0
    img = nib.load(str(out))
    src = nib.load(str(setup["case"].paths["t1"]))
    assert img.shape == src.shape and np.allclose(img.affine, src.affine)
    data, orig = np.asarray(img.dataobj), np.asarray(src.dataobj).astype(np.float32)
    m = setup["case"].native(setup["mask"])
    np.testing.assert_array_equal(data[~m], orig[~m])
    assert not np.array_equal(data[m], orig[m])
    # an existing output is not overwritten; --t1 works as well
    assert main(["inpaint", "--t1", str(setup["case"].paths["t1"]), "--mask", str(setup["mask_path"]), "--out",
                 str(out), "--steps", "1", "--model", str(setup["model"])]) == 2


def test_inpaint_command_bad_masks(setup, caplog):
    tmp, t1 = setup["tmp"], setup["case"].paths["t1"]
    ref = nib.load(str(t1))
    cases = {
        "other_grid": (np.zeros((64, 64, 10), np.uint8), ref.affine, "grid of the images"),
        "shifted": (np.asarray(nib.load(str(setup["mask_path"])).dataobj), ref.affine @ np.diag([1, 1, 1, 1.0]) +
                    np.array([[0, 0, 0, 5.0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]), "voxel-to-world"),
        "empty": (np.zeros(ref.shape, np.uint8), ref.affine, "mask is empty"),
    }
    for name, (data, affine, message) in cases.items():
        path = tmp / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(data, affine), str(path))
        caplog.clear()
        assert main(["inpaint", "--t1", str(t1), "--mask", str(path), "--out", str(tmp / f"{name}_out.nii.gz"),
                     "--model", str(setup["model"]), "--steps", "1"]) == 2, name
        assert message in caplog.text, (name, caplog.text)
        assert not (tmp / f"{name}_out.nii.gz").exists()


def test_train_and_benchmark_commands(setup):
    tmp = setup["tmp"]
    dirs = [str(d) for d in setup["dirs"]]
    run = tmp / "train"
    args = ["train-inpaint", "--data", *dirs, "--out", str(run), "--steps", "2", "--batch-size", "2",
            "--masks-per-case", "1", "--crop", "32", "--device", "cpu"]
    assert main(args + ["--channels", "8,12"]) == 2  # not a multiple of the 8 GroupNorm groups
    assert main(args + ["--channels", "8,16"]) == 0
    assert read_config(run, InpaintConfig).training["steps"] == 2
    assert main(args + ["--channels", "8,16", "--steps", "3"]) == 0  # resumed
    assert read_config(run, InpaintConfig).training["steps"] == 3
    ctx = tmp / "train_ctx"  # context normalisation, initialised from the plain run
    assert main(args[:5] + [str(ctx)] + args[6:] + ["--channels", "8,16", "--context-norm", "--init-from",
                                                     str(run)]) == 0
    cfg = read_config(ctx, InpaintConfig)
    assert cfg.context_norm and cfg.training["steps"] == 2 and cfg.training["init_from"] == str(run)
    out = tmp / "ctx_out.nii.gz"
    assert main(["inpaint", "--case", str(setup["dirs"][0]), "--mask", str(setup["mask_path"]), "--out", str(out),
                 "--steps", "2", "--model", str(ctx)]) == 0
    m = setup["case"].native(setup["mask"])
    data = np.asarray(nib.load(str(out)).dataobj)
    np.testing.assert_array_equal(data[~m], np.asarray(nib.load(str(setup["case"].paths["t1"])).dataobj)[~m])
    bench = tmp / "bench"
    assert main(["benchmark", "inpainting", "--data", *dirs, "--model", str(setup["model"]), "--steps", "2",
                 "--out", str(bench)]) == 0
    result = json.loads((bench / "results.json").read_text())
    methods = {r["method"] for r in result["rows"]}
    assert methods == {"DDPM 2D (from the fill at 0.15)", "mean", "distance-weighted", "mirror"}  # the default
    assert len(result["rows"]) == 4 * 2 and all(0 < r["ssim"] <= 1 and r["mse"] >= 0 for r in result["rows"])
    assert (bench / "figure.png").read_bytes()[:4] == b"\x89PNG"
    report = (bench / "README.md").read_text()
    assert "| DDPM 2D (from the fill at 0.15) |" in report
    from BrainDiffSegBench.inpainting import paired_against

    paired = paired_against(result["rows"], "DDPM 2D (from the fill at 0.15)", "distance-weighted")
    by = {(r["method"], r["case"]): r for r in result["rows"]}
    cases = sorted({r["case"] for r in result["rows"]})
    want = np.mean([by[("DDPM 2D (from the fill at 0.15)", c)]["ssim"] - by[("distance-weighted", c)]["ssim"]
                    for c in cases])
    assert paired["ssim"][0] == pytest.approx(want) and paired["mse"][4] == 2
    assert "| method − distance-weighted | SSIM | PSNR (dB) | MSE |" in report
    assert len(json.loads((bench / "masks.json").read_text())) == 2
    sweep = tmp / "sweep"
    assert main(["benchmark", "inpainting", "--data", *dirs, "--model", str(setup["model"]), "--steps", "1", "2",
                 "--samples", "1", "2", "--strengths", "1", "--baselines", "mean", "--out", str(sweep)]) == 0
    result = json.loads((sweep / "results.json").read_text())
    assert list(result["summary"]) == ["DDPM 2D (1 steps, mean of 1)", "DDPM 2D (1 steps, mean of 2)",
                                       "DDPM 2D (2 steps, mean of 1)", "DDPM 2D (2 steps, mean of 2)", "mean"]
    assert result["samples"] == [1, 2] and result["strengths"] == [1.0]
    strengths = tmp / "strengths"
    assert main(["benchmark", "inpainting", "--data", *dirs, "--model", str(setup["model"]), "--steps", "4",
                 "--strengths", "0.5", "1", "--baselines", "--out", str(strengths)]) == 0
    assert list(json.loads((strengths / "results.json").read_text())["summary"]) == [
        "DDPM 2D (from the fill at 0.5)", "DDPM 2D"]
    assert main(["benchmark", "inpainting", "--data", *dirs, "--model", str(setup["model"]), "--baselines", "median",
                 "--out", str(tmp / "bad")]) == 2
