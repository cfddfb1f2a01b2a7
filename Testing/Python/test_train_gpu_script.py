"""The GPU training run of issue 10 §1 on the CPU: `pack-slices` on two real LGG cases, `train-ddpm --slices` without
nibabel, and scripts/train_gpu.sh end to end (what comes back in $OUT), plus the syntax of both scripts."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from BrainDiffSegCLI import main

LGG_CASES = ("TCGA_CS_4941_19960909", "TCGA_CS_4942_19970222")


@pytest.fixture(scope="module")
def lgg_cases(data_root) -> list[Path]:
    cases = [data_root / "lgg128" / c for c in LGG_CASES]
    if not all(c.is_dir() for c in cases):
        pytest.skip(f"LGG cases {LGG_CASES} not below {data_root / 'lgg128'}")
    return cases


@pytest.fixture(scope="module")
def packed(lgg_cases, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("packed") / "slices.npz"
    assert main(["pack-slices", "--data", *map(str, lgg_cases), "--out", str(out), "--every", "2"]) == 0
    return out


@pytest.fixture
def single_process(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)


def test_packed_slices_match_the_slice_set(lgg_cases, packed):
    from BrainDiffSegLib.training.slices import build_slice_set, load_packed_slices

    images, present = build_slice_set(lgg_cases, 128)
    got, got_present, info = load_packed_slices(packed)
    assert info == {"cases": 2, "every": 2, "offset": 0, "data": [str(c) for c in lgg_cases]}
    assert got.dtype == np.float16 and got.shape == (len(images[::2]), 4, 128, 128)
    np.testing.assert_array_equal(got_present, present[::2])
    assert np.abs(got.astype(np.float32) - images[::2].astype(np.float32)).max() <= 1 / 255 + 1e-3  # uint8 steps
    assert np.all(got[:, 2] == 0) and not got_present[:, 2].any()  # LGG: no T2, exactly zero
    assert packed.stat().st_size < 0.3 * images[::2].nbytes


def test_train_ddpm_from_packed_slices_without_nibabel(packed, tmp_path, repo_root, single_process, monkeypatch):
    monkeypatch.setitem(sys.modules, "nibabel", None)  # any import of nibabel now fails
    out = tmp_path / "run"
    assert main(["train-ddpm", "--slices", str(packed), "--out", str(out), "--steps", "2", "--batch-size", "2",
                 "--crop", "32", "--device", "cpu", "--init-from", str(repo_root / "Resources/Models/backbone")]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["training"]["steps"] == 2 and cfg["training"]["packed_slices"] == str(packed)
    bundled = json.loads((repo_root / "Resources/Models/backbone/config.json").read_text())["training"]
    assert cfg["training"]["cases"] == 2 and cfg["training"]["init_training"] == bundled  # provenance carried on
    loss = [float(line.split(",")[1]) for line in (out / "loss.csv").read_text().splitlines()[1:]]
    assert loss and all(math.isfinite(v) and v > 0 for v in loss)
    assert (out / "model.safetensors").stat().st_size > 1e6


def test_train_gpu_script_on_cpu(packed, tmp_path, repo_root, single_process):
    out, run = tmp_path / "out", tmp_path / "run"
    env = {**os.environ, "DEVICE": "cpu", "STEPS": "2", "BATCH": "2", "CROP": "32", "PRECISION": "fp32",
           "SLICES": str(packed), "RUN": str(run), "OUT": str(out), "SKIP_INSTALL": "1", "PYTHON": sys.executable,
           "OMP_NUM_THREADS": "1"}
    res = subprocess.run(["bash", str(repo_root / "scripts/train_gpu.sh")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    names = {p.name for p in out.iterdir()}
    assert names == {"model.safetensors.part0", "model.safetensors.part1", "config.json", "loss.csv",
                     "loss_curve.png", "train.log", "speed.txt"}
    assert all(p.stat().st_size <= 16 * 2**20 for p in out.iterdir())  # what the device may send back
    joined = b"".join((out / f"model.safetensors.part{i}").read_bytes() for i in (0, 1))
    assert joined == (run / "model.safetensors").read_bytes()
    assert "steps/s" in (out / "speed.txt").read_text() and "images/s" in (out / "speed.txt").read_text()
    assert "saved checkpoint at step 2" in (out / "train.log").read_text()


@pytest.mark.parametrize("script", ["train_gpu.sh", "gpu_prepare.sh"])
def test_scripts_parse(repo_root, script):
    subprocess.run(["bash", "-n", str(repo_root / "scripts" / script)], check=True)
