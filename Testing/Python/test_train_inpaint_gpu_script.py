"""The GPU training run of the inpainting DDPM (issue 11) on the CPU: `pack-crops` on two real LGG cases (the crops of
`build_crops` within the uint8 step), clear errors for a missing, corrupt or mismatched pack, `train-inpaint --crops`
without nibabel (2D by the CLI, pseudo-3D from a 2D model by the engine), and scripts/train_inpaint_gpu.sh end to end
(what comes back in $OUT), plus its syntax."""
from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from BrainDiffSegCLI import main
from BrainDiffSegLib.errors import InputError
from BrainDiffSegLib.inpainting.model import InpaintConfig
from BrainDiffSegLib.training.inpaint import build_crops, load_packed_crops, packed_crop_info

CROP = 32  # small crops keep the CPU runs short; the bundled architecture takes them (it is fully convolutional)


@pytest.fixture(scope="module")
def cases(data_root) -> list[str]:
    from inpaint_support import lgg_t1_cases

    return [str(c) for c in lgg_t1_cases(data_root, 2)]


@pytest.fixture(scope="module")
def packed(cases, tmp_path_factory) -> tuple[Path, Path]:
    """(pack, build_crops cache folder): one context-normalised mask per case."""
    root = tmp_path_factory.mktemp("crops")
    out, cache = root / "crops.npz", root / "cache"
    assert main(["pack-crops", "--data", *cases, "--out", str(out), "--masks-per-case", "1", "--crop", str(CROP),
                 "--context-norm", "--cache", str(cache)]) == 0
    return out, cache


@pytest.fixture
def single_process(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)


def test_packed_crops_match_build_crops(cases, packed):
    pack, cache = packed
    cfg = InpaintConfig(crop=CROP, context_norm=True)
    clean, masks, block, records = build_crops(cases, cfg, 1, 0, cache)  # the cached crops the pack was made of
    got, got_masks, got_block, got_records, info = load_packed_crops(pack)
    assert got.dtype == np.float16 and got.shape == clean.shape == (len(clean), CROP, CROP)
    assert got_masks.dtype == bool and got_masks.shape == masks.shape
    np.testing.assert_array_equal(got_masks, masks)
    np.testing.assert_array_equal(got_block, block)
    assert got_records == records and len(records) == 2
    err = np.abs(got.astype(np.float32) - clean.astype(np.float32))
    assert err.max() <= 1 / 255 + 1e-3  # half a step of 2/255, plus float16 rounding
    assert clean.std() > 0.05 and err.mean() < 0.6 / 255  # real tissue; uniform rounding: a quarter step on average
    assert info == {"crop": CROP, "max_in_plane": cfg.max_in_plane, "context_norm": True, "masks_per_case": 1,
                    "mask_seed": 0, "data": cases}
    assert packed_crop_info(pack) == info
    assert pack.stat().st_size < 0.5 * (clean.nbytes + masks.nbytes)  # 0.12 at scale; 14 crops carry the headers


def test_bad_packs_are_input_errors(packed, tmp_path, cases):
    with pytest.raises(InputError, match="no such crop pack"):
        load_packed_crops(tmp_path / "missing.npz")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(packed[0].read_bytes()[:5000])
    with pytest.raises(InputError, match="not a readable crop pack"):
        load_packed_crops(truncated)
    foreign = tmp_path / "slices.npz"
    np.savez(foreign, images=np.zeros((1, 4, 8, 8), np.uint8))
    with pytest.raises(InputError, match="crop pack format"):
        load_packed_crops(foreign)
    # crops cut for another geometry: exit status 2 with a message, before any training
    assert main(["train-inpaint", "--crops", str(packed[0]), "--crop", "64", "--out", str(tmp_path / "run"),
                 "--steps", "1", "--device", "cpu"]) == 2
    assert main(["train-inpaint", "--crops", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "run"),
                 "--device", "cpu"]) == 2


def test_train_inpaint_from_pack_without_nibabel(packed, tmp_path, single_process, monkeypatch):
    monkeypatch.setitem(sys.modules, "nibabel", None)  # any import of nibabel now fails
    out = tmp_path / "run"
    assert main(["train-inpaint", "--crops", str(packed[0]), "--out", str(out), "--steps", "2", "--batch-size", "4",
                 "--channels", "8,16", "--device", "cpu", "--save-every", "2"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["crop"] == CROP and cfg["context_norm"] is True  # the pack's geometry
    training = cfg["training"]
    assert training["steps"] == 2 and training["packed_crops"] == str(packed[0])
    assert training["masks"] == 2 and training["cases"] == 2 and training["masks_per_case"] == 1
    assert len(json.loads((out / "masks.json").read_text())) == 2
    loss = [float(line.split(",")[1]) for line in (out / "loss.csv").read_text().splitlines()[1:]]
    assert loss and all(math.isfinite(v) and v > 0 for v in loss)
    assert (out / "model.safetensors").stat().st_size > 1e4


def test_pseudo3d_from_pack(packed, tmp_path, single_process):
    from inpaint_support import TINY_INPAINT, tiny_inpaint_model

    from BrainDiffSegLib.inpainting.model import load_inpaint_model
    from BrainDiffSegLib.training.inpaint import InpaintTrainOptions, train_inpaint

    two_d = tiny_inpaint_model(tmp_path / "2d", context_norm=True)
    cfg = replace(InpaintConfig(**TINY_INPAINT), crop=CROP, context_norm=True, pseudo3d=True, depth=3)
    out = train_inpaint(InpaintTrainOptions(data=[], crops=str(packed[0]), out=str(tmp_path / "p3d"), steps=1,
                                            batch_size=6, warmup=1, save_every=1, log_every=1, device="cpu",
                                            config=cfg, init_from=str(two_d)))
    net, got = load_inpaint_model(out)
    assert got.pseudo3d and got.training["packed_crops"] == str(packed[0])
    assert any(".zconv." in k for k in net.state_dict())


def test_train_inpaint_gpu_script_on_cpu(packed, tmp_path, repo_root, single_process):
    out, run = tmp_path / "out", tmp_path / "run"
    env = {**os.environ, "DEVICE": "cpu", "STEPS": "2", "BATCH": "4", "CROPS": str(packed[0]), "RUN": str(run),
           "OUT": str(out), "SKIP_INSTALL": "1", "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(["bash", str(repo_root / "scripts/train_inpaint_gpu.sh")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    names = {p.name for p in out.iterdir()}
    assert names == {"model.safetensors", "config.json", "masks.json", "loss.csv", "loss_curve.png", "train.log",
                     "speed.txt"}
    assert len(names) <= 8 and all(p.stat().st_size <= 16 * 2**20 for p in out.iterdir())  # what may come back
    weights = (out / "model.safetensors").read_bytes()
    assert weights == (run / "model.safetensors").read_bytes()
    log = (out / "train.log").read_text()
    assert f"{hashlib.sha256(weights).hexdigest()}  model.safetensors" in log
    assert "saved checkpoint at step 2" in log
    speed = (out / "speed.txt").read_text()
    assert "steps/s" in speed and "images/s" in speed
    training = json.loads((out / "config.json").read_text())["training"]
    assert training["init_from"] == "Resources/Models/inpaint" and training["precision"] == "bf16"


@pytest.mark.parametrize("script", ["train_inpaint_gpu.sh", "gpu_prepare.sh"])
def test_scripts_parse(repo_root, script):
    subprocess.run(["bash", "-n", str(repo_root / "scripts" / script)], check=True)
