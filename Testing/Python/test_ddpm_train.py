"""Backbone training: a tiny CPU run, resuming, the time limit, sequence hiding, and 2-process DDP (gloo, CPU)."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from BrainDiffSegLib.training import ddpm as ddpm_train
from BrainDiffSegLib.training.ddpm import STATE, TrainOptions, _hide_sequences, train_ddpm
from BrainDiffSegLib.errors import CheckpointError
from BrainDiffSegLib.model import load_backbone, read_config

CASE_SHAPE = (40, 40, 10)


@pytest.fixture
def dataset(tmp_path_factory, case_writer):
    """Two small BraTS-named case folders (one with all four sequences, one with T1ce + FLAIR only)."""
    root = tmp_path_factory.mktemp("data")
    case_writer(root / "Case_A", roles=("t1", "t1ce", "t2", "flair"), shape=CASE_SHAPE, seed=1)
    case_writer(root / "Case_B", roles=("t1ce", "flair"), shape=CASE_SHAPE, seed=2)
    return root


@pytest.fixture
def single_process(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)


def _options(dataset, out, cfg, **kw):
    base = dict(data=[str(dataset)], out=str(out), steps=4, batch_size=2, warmup=2, save_every=3, log_every=1,
                device="cpu", seed=0, config=cfg, ema_decay=0.9)
    base.update(kw)
    return TrainOptions(**base)


def _loss_rows(out: Path) -> list[dict]:
    with open(out / "loss.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_tiny_training_run_and_resume(tmp_path, dataset, tiny_config, single_process):
    out = tmp_path / "run"
    assert train_ddpm(_options(dataset, out, tiny_config, steps=4)) == out
    for name in ("loss.csv", "model.safetensors", "config.json", STATE, "loss_curve.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((out / "cache").glob("slices-*.npz"))
    rows = _loss_rows(out)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert all(float(r["loss"]) > 0 for r in rows)
    cfg = read_config(out)
    assert cfg.arch() == tiny_config.arch()
    assert cfg.training["steps"] == 4 and cfg.training["world_size"] == 1 and cfg.training["cases"] == 2
    assert cfg.training["slices"] > 10 and cfg.training["batch_size"] == 2
    state = torch.load(out / STATE, map_location="cpu", weights_only=True)
    assert state["step"] == 4
    model, _ = load_backbone(out, expect=tiny_config)  # the exported EMA weights are a valid backbone
    ema_weights = load_file(str(out / "model.safetensors"))
    assert set(ema_weights) == set(state["model"])
    first_wall = cfg.training["wall_seconds"]

    # resume the same folder with a larger step budget: continues at step 4, does not start over
    train_ddpm(_options(dataset, out, tiny_config, steps=6))
    rows = _loss_rows(out)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]  # one header, appended rows
    assert (out / "loss.csv").read_text().count("step,loss") == 1
    cfg = read_config(out)
    assert cfg.training["steps"] == 6
    assert cfg.training["wall_seconds"] >= first_wall
    assert torch.load(out / STATE, map_location="cpu", weights_only=True)["step"] == 6
    resumed = load_file(str(out / "model.safetensors"))
    assert any(not torch.equal(resumed[k], ema_weights[k]) for k in resumed)  # it trained further

    # nothing left to do: the run is already at its step budget
    before = (out / "loss.csv").read_text()
    train_ddpm(_options(dataset, out, tiny_config, steps=6))
    assert (out / "loss.csv").read_text() == before

    # resuming with another architecture is refused
    from dataclasses import replace
    with pytest.raises(CheckpointError, match="different architecture"):
        train_ddpm(_options(dataset, out, replace(tiny_config, block_out_channels=(8, 8)), steps=8))


def test_seed_makes_runs_reproducible(tmp_path, dataset, tiny_config, single_process):
    torch.manual_seed(123)  # whatever state the global generator is in must not matter
    train_ddpm(_options(dataset, tmp_path / "a", tiny_config, steps=2, save_every=2))
    torch.manual_seed(456)
    train_ddpm(_options(dataset, tmp_path / "b", tiny_config, steps=2, save_every=2))
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_time_limit_stops_and_saves(tmp_path, dataset, tiny_config, single_process):
    out = tmp_path / "run"
    train_ddpm(_options(dataset, out, tiny_config, steps=1000, save_every=1000, max_minutes=1e-6))
    assert read_config(out).training["steps"] == 1
    assert torch.load(out / STATE, map_location="cpu", weights_only=True)["step"] == 1
    assert (out / "loss_curve.png").is_file()


def test_no_cases(tmp_path, tiny_config, single_process):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="No case folders"):
        train_ddpm(_options(tmp_path / "empty", tmp_path / "run", tiny_config))


# ------------------------------------------------------------------------------------------------ sequence hiding

def test_hide_sequences_keeps_one_and_never_adds():
    g = torch.Generator().manual_seed(0)
    patterns = torch.tensor([[1, 1, 1, 1], [0, 1, 0, 1], [0, 0, 0, 1], [1, 0, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    present = patterns.repeat(100, 1)
    original = present.clone()
    hidden_any = False
    for _ in range(5):
        keep = _hide_sequences(present, 0.7, g)
        assert keep.shape == present.shape and keep.dtype == torch.bool
        assert not torch.any(keep & ~present)  # an absent sequence is never marked present
        assert torch.all(keep.sum(1) >= 1)  # at least one sequence stays
        single = present.sum(1) == 1
        assert torch.equal(keep[single], present[single])  # a lone sequence is never hidden
        hidden_any |= bool(torch.any(present & ~keep))
        # hidden subsets vary: several different patterns are produced from the full presence row
        full = keep[0::5]
        assert len({tuple(r.tolist()) for r in full}) > 4
    assert hidden_any
    assert torch.equal(present, original)  # input not modified


def test_hide_sequences_probability_bounds():
    g = torch.Generator().manual_seed(1)
    present = torch.ones(200, 4, dtype=torch.bool)
    assert torch.equal(_hide_sequences(present, 0.0, g), present)
    keep = _hide_sequences(present, 1.0, g)
    assert torch.all(keep.sum(1) >= 1)
    assert (keep.sum(1) < 4).float().mean() > 0.8  # with p=1 nearly every sample loses something
    # and every role is sometimes the one kept
    assert torch.all(keep.any(0))


# ------------------------------------------------------------------------------------------------ training slices

def test_slice_set_and_cache(tmp_path, dataset):
    from BrainDiffSegLib.io import find_cases
    from BrainDiffSegLib.training.slices import build_slice_set

    cases = find_cases(dataset)
    images, present = build_slice_set(cases, size=32, cache_dir=tmp_path / "cache")
    assert images.dtype == np.float16 and images.ndim == 4 and images.shape[1:] == (4, 32, 32)
    assert present.shape == (len(images), 4) and present.dtype == bool
    n_a = int(present[:, 0].sum())  # Case_A has all four sequences, Case_B only T1ce + FLAIR
    assert 0 < n_a < len(images)
    np.testing.assert_array_equal(present[n_a:], [[False, True, False, True]] * (len(images) - n_a))
    assert np.all(images[n_a:, [0, 2]] == 0)  # absent sequences are zero
    assert images.min() >= -1 and images.max() <= 1 and images[:, 3].max() > 0.9
    files = list((tmp_path / "cache").iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"
    again_images, again_present = build_slice_set(cases, size=32, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(again_images, images)
    np.testing.assert_array_equal(again_present, present)
    other, _ = build_slice_set(cases, size=16, cache_dir=tmp_path / "cache")  # another size, another cache entry
    assert other.shape[-2:] == (16, 16) and len(list((tmp_path / "cache").iterdir())) == 2


def test_interrupted_cache_write_leaves_no_corrupt_cache(tmp_path, dataset, monkeypatch):
    from BrainDiffSegLib.training import slices
    from BrainDiffSegLib.io import find_cases

    cases = find_cases(dataset)
    real_savez = np.savez

    def disk_full(file, **arrays):
        real_savez(file, **arrays)
        if hasattr(file, "truncate"):
            file.truncate(100)
        else:
            Path(file).write_bytes(Path(file).read_bytes()[:100])
        raise OSError("No space left on device")

    monkeypatch.setattr(slices.np, "savez", disk_full)
    with pytest.raises(OSError, match="No space left"):
        slices.build_slice_set(cases, size=32, cache_dir=tmp_path / "cache")
    monkeypatch.setattr(slices.np, "savez", real_savez)
    assert list((tmp_path / "cache").iterdir()) == []  # neither a truncated cache nor a temporary file
    images, _ = slices.build_slice_set(cases, size=32, cache_dir=tmp_path / "cache")
    assert len(images) > 0


# ---------------------------------------------------------------------------------------------------------- DDP

DDP_SCRIPT = textwrap.dedent("""
    import hashlib, json, os, sys, time
    from pathlib import Path
    sys.path.insert(0, {lib!r})
    import torch
    torch.set_num_threads(1)
    from BrainDiffSegLib.training import ddpm as ddpm_train
    from BrainDiffSegLib.model import BackboneConfig

    rank = int(os.environ["RANK"])
    report = Path({report!r})
    mode = sys.argv[1]

    def checksum(model):
        h = hashlib.sha256()
        for name, p in sorted(model.state_dict().items()):
            h.update(name.encode())
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    built = []
    _build = ddpm_train.build_unet
    def build(cfg):
        m = _build(cfg)
        built.append(m)
        (report / f"init_{{rank}}.txt").write_text(checksum(m))
        return m
    ddpm_train.build_unet = build

    max_minutes = 0.0
    if mode == "skewed_clock":
        # rank 1's clock jumps an hour ahead after training starts: it alone would reach the time limit
        import time as _time
        class Clock:
            calls = 0
            def time(self):
                self.calls += 1
                return _time.time() + (3600.0 if rank == 1 and self.calls > 1 else 0.0)
        ddpm_train.time = Clock()
        max_minutes = 30.0

    cfg = BackboneConfig(sample_size=32, block_out_channels=(8, 16), attention_levels=(1,), norm_num_groups=4,
                         attention_head_dim=8)
    opt = ddpm_train.TrainOptions(data=[{data!r}], out={out!r}, steps=4, batch_size=4, warmup=1, save_every=2,
                                  log_every=1, device="cpu", config=cfg, max_minutes=max_minutes)
    ddpm_train.train_ddpm(opt)
    (report / f"final_{{rank}}.txt").write_text(checksum(built[0]))
""")


def _run_ddp(tmp_path, dataset, port, mode, timeout=90):
    report = tmp_path / "report"
    report.mkdir()
    out = tmp_path / "ddp_run"
    lib = str(Path(ddpm_train.__file__).resolve().parents[1])
    script = tmp_path / "ddp_script.py"
    script.write_text(DDP_SCRIPT.format(lib=lib, report=str(report), data=str(dataset), out=str(out)))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), str(script), mode]
    # own session, so that on a hang the launcher and both workers can be killed together
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"DDP run did not finish in {timeout} s (deadlock?)\n{stdout[-3000:]}\n{stderr[-6000:]}")
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{stdout[-3000:]}\n{stderr[-6000:]}"
    return out, report


def test_ddp_two_processes_identical_parameters(tmp_path, dataset, free_port):
    out, report = _run_ddp(tmp_path, dataset, free_port, "plain")
    for name in ("model.safetensors", "config.json", STATE, "loss.csv", "loss_curve.png"):
        assert (out / name).is_file(), name
    cfg = read_config(out)
    assert cfg.training["world_size"] == 2 and cfg.training["steps"] == 4
    assert [int(r["step"]) for r in _loss_rows(out)] == [1, 2, 3, 4]  # rank 0 logs alone
    final = [(report / f"final_{r}.txt").read_text() for r in (0, 1)]
    init = [(report / f"init_{r}.txt").read_text() for r in (0, 1)]
    assert final[0] == final[1], "the ranks' parameters diverged"
    assert final[0] != init[0], "no training happened"
    assert init[0] == init[1]  # the initial weights follow the seed, so the ranks' EMA copies start equal too
    load_backbone(out)


def test_ddp_time_limit_reached_by_one_rank_stops_all(tmp_path, dataset, free_port):
    """Ranks whose clocks disagree about the time limit must still stop at the same step (no deadlock)."""
    out, report = _run_ddp(tmp_path, dataset, free_port, "skewed_clock")
    assert read_config(out).training["steps"] == 1
    assert (report / "final_0.txt").read_text() == (report / "final_1.txt").read_text()
