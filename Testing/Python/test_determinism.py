"""Reproducibility (issue 10, part 4): the same propagation on the same input gives bit-identical labels, entropy and
disagreement, run twice in one process (also after another run that used the random generators) and in two
separate processes (run at the same time), with the same number of torch threads (one, as everywhere in the
tests). A small real case: the 20-slice LGG patient TCGA_CS_4942 with the diffusion features and a 2-MLP ensemble
of at most 4 epochs (seconds a run on an idle core). Skips without the shared data."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import LIB_PARENT

CASE = "lgg128/TCGA_CS_4942_19970222"
# run in a fresh interpreter: one propagation of the case, the three volumes saved to argv[2]
SCRIPT = """
import sys
sys.path.insert(0, sys.argv[3])
import numpy as np, torch
torch.set_num_threads(1)
from BrainDiffSegLib.propagation.classifier import ClassifierOptions
from BrainDiffSegLib.io import load_case
from BrainDiffSegLib.propagation.propagate import PropagationOptions, propagate
from BrainDiffSegLib.protocol import simulate_annotation
case = load_case(sys.argv[1])
annotation, _ = simulate_annotation(case.label, 2)
opt = PropagationOptions(method="diffusion", device="cpu", classifier=ClassifierOptions(n_models=2, max_epochs=4))
res = propagate(case.images, annotation, opt)
np.savez(sys.argv[2], labels=res.labels, entropy=res.entropy, disagreement=res.disagreement)
"""
FIELDS = ("labels", "entropy", "disagreement")


@pytest.fixture(scope="module")
def case_dir(data_root) -> Path:
    folder = data_root / CASE
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    return folder


def _propagate(case_dir: Path, method: str = "diffusion") -> dict[str, np.ndarray]:
    from BrainDiffSegLib.propagation.classifier import ClassifierOptions
    from BrainDiffSegLib.io import load_case
    from BrainDiffSegLib.propagation.propagate import PropagationOptions, propagate
    from BrainDiffSegLib.protocol import simulate_annotation

    case = load_case(case_dir)
    annotation, _ = simulate_annotation(case.label, 2)
    opt = PropagationOptions(method=method, device="cpu", classifier=ClassifierOptions(n_models=2, max_epochs=4))
    res = propagate(case.images, annotation, opt)
    return {f: getattr(res, f) for f in FIELDS}


def _assert_identical(a: dict, b: dict) -> None:
    for f in FIELDS:
        assert a[f].dtype == b[f].dtype and a[f].shape == b[f].shape, f
        assert a[f].tobytes() == b[f].tobytes(), f"{f} differs in {int((a[f] != b[f]).sum())} voxels"


@pytest.fixture(scope="module")
def first(case_dir):
    assert torch.get_num_threads() == 1  # conftest
    return _propagate(case_dir)


def test_same_process_twice_is_bit_identical(case_dir, first):
    assert first["labels"].any() and first["entropy"].max() > 0  # a real result, not an empty one
    torch.rand(7)  # the global generators moved on: propagate must not depend on them
    np.random.rand(3)
    _propagate(case_dir, method="raw")  # another run in between
    _assert_identical(first, _propagate(case_dir))


def test_two_processes_are_bit_identical(case_dir, first, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    files = [tmp_path / f"run{i}.npz" for i in range(2)]
    runs = [subprocess.Popen([sys.executable, "-c", SCRIPT, str(case_dir), str(f), str(LIB_PARENT)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for f in files]  # at once
    outs = []
    for run, f in zip(runs, files):
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err[-3000:]
        with np.load(f) as z:
            outs.append({name: z[name] for name in FIELDS})
    _assert_identical(outs[0], outs[1])
    _assert_identical(first, outs[0])  # and the same as in this process (same thread count)


def test_seed_everything_turns_on_deterministic_algorithms():
    from BrainDiffSegLib.device import seed_everything, set_threads

    g = seed_everything(3)
    assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
    assert torch.equal(torch.rand(4, generator=g), torch.rand(4, generator=torch.Generator().manual_seed(3)))
    assert torch.equal(torch.rand(4), (torch.manual_seed(3), torch.rand(4))[1])  # the global generator is seeded
    assert set_threads(0) == torch.get_num_threads() == 1
    assert os.environ.get("CUBLAS_WORKSPACE_CONFIG")  # set at import unless given
