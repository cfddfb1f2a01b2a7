"""Training the inpainting DDPM: a tiny run on real cases resumes bit-identically; the pseudo-3D run from 2D."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from BrainDiffSegLib.training.ddpm import STATE
from BrainDiffSegLib.inpainting.model import InpaintConfig, load_inpaint_model
from BrainDiffSegLib.training.inpaint import InpaintTrainOptions, train_inpaint
from BrainDiffSegLib.model import read_config


@pytest.fixture(scope="module")
def cases(data_root):
    from inpaint_support import lgg_t1_cases

    return [str(c) for c in lgg_t1_cases(data_root, 2)]


@pytest.fixture
def single_process(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)


def _opt(cases, out, cache, **kw):
    from inpaint_support import TINY_INPAINT

    base = dict(data=cases, out=str(out), steps=4, batch_size=4, warmup=2, save_every=2, log_every=1, device="cpu",
                seed=0, ema_decay=0.9, masks_per_case=1, cache=str(cache), config=InpaintConfig(**TINY_INPAINT))
    base.update(kw)
    return InpaintTrainOptions(**base)


def test_tiny_run_resumes_exactly(tmp_path, cases, single_process):
    cache = tmp_path / "cache"
    full = train_inpaint(_opt(cases, tmp_path / "full", cache, steps=4))
    part = tmp_path / "part"
    train_inpaint(_opt(cases, part, cache, steps=2))
    assert torch.load(part / STATE, map_location="cpu", weights_only=True)["step"] == 2
    train_inpaint(_opt(cases, part, cache, steps=4))  # resumed at step 2
    a, b = load_file(str(full / "model.safetensors")), load_file(str(part / "model.safetensors"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    sa = torch.load(full / STATE, map_location="cpu", weights_only=True)
    sb = torch.load(part / STATE, map_location="cpu", weights_only=True)
    assert all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"])
    cfg = read_config(full, InpaintConfig)
    assert cfg.training["steps"] == 4 and cfg.training["masks"] == 2 and cfg.training["crops"] > 10
    records = json.loads((full / "masks.json").read_text())
    assert {r["case"] for r in records} == {c.rsplit("/", 1)[-1] for c in cases}
    rows = (full / "loss.csv").read_text().splitlines()
    assert rows[0] == "step,loss,wall_seconds" and len(rows) == 5 and all(float(r.split(",")[1]) > 0 for r in rows[1:])
    load_inpaint_model(full)


def test_pseudo3d_from_2d(tmp_path, cases, single_process):
    from dataclasses import replace

    from inpaint_support import TINY_INPAINT

    cache = tmp_path / "cache"
    two_d = train_inpaint(_opt(cases, tmp_path / "2d", cache, steps=2))
    cfg3 = replace(InpaintConfig(**TINY_INPAINT), pseudo3d=True, depth=3)
    out = train_inpaint(_opt(cases, tmp_path / "p3d", cache, steps=1, batch_size=6, config=cfg3,
                             init_from=str(two_d)))
    net, cfg = load_inpaint_model(out)
    assert cfg.pseudo3d and cfg.training["init_from"] == str(two_d)
    assert any(".zconv." in k for k in net.state_dict())
