"""Shared fixtures for the BrainDiffSegLib unit tests.

Puts `<repo>/BrainDiffSeg` on sys.path so that `import BrainDiffSegLib` works without installing anything, limits torch
to one thread (the tests are tiny; threads only add contention), and provides writers for small synthetic NIfTI cases.
Real data (`BRAINDIFFSEG_DATA`, default `<repo>/../shared/data`) is optional: tests that need it skip without it.
"""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
LIB_PARENT = REPO / "BrainDiffSeg"
if str(LIB_PARENT) not in sys.path:
    sys.path.insert(0, str(LIB_PARENT))

import torch  # noqa: E402

torch.set_num_threads(1)

# File-name suffixes per layout, by role (t1, t1ce, t2, flair, seg).
LAYOUTS = {
    "brats2021": {"t1": "_t1", "t1ce": "_t1ce", "t2": "_t2", "flair": "_flair", "seg": "_seg"},
    "brats2023": {"t1": "-t1n", "t1ce": "-t1c", "t2": "-t2w", "flair": "-t2f", "seg": "-seg"},
    "lgg": {"t1": "_pre", "t1ce": "_post", "flair": "_flair", "seg": "_seg"},
}
DEFAULT_AFFINE = np.array([[1.0, 0, 0, -12.0], [0, 1.0, 0, -10.0], [0, 0, 2.0, -12.0], [0, 0, 0, 1]])


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    import nibabel as nib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(data), DEFAULT_AFFINE if affine is None else affine)
    img.set_data_dtype(np.asarray(data).dtype)
    nib.save(img, str(path))
    return path


def synthetic_head(shape=(24, 20, 12), seed=0, scale=1000.0, tumour=True):
    """A bright ellipsoid 'head' on a zero background with a labelled 'tumour' blob: (images by role, label)."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r2 = sum((g / 0.8) ** 2 for g in grids)
    head = r2 < 1.0
    images = {}
    for i, role in enumerate(("t1", "t1ce", "t2", "flair")):
        img = np.where(head, scale * (1 + 0.2 * i) + 50 * rng.standard_normal(shape), 0.0)
        images[role] = np.clip(img, 0, None).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    if tumour:
        t2 = (grids[0] - 0.2) ** 2 + (grids[1] + 0.1) ** 2 + grids[2] ** 2
        label[t2 < 0.25] = 2
        label[t2 < 0.10] = 1
        label[t2 < 0.04] = 4
        for role in images:
            images[role][label > 0] *= 1.5
    return images, label


def write_case(folder: Path, layout: str = "brats2021", roles=("t1", "t1ce", "t2", "flair"), seg: bool = True,
               shape=(24, 20, 12), affine: np.ndarray | None = None, seed: int = 0, name: str | None = None):
    """Write a synthetic case folder; returns (folder, images by role as written, label)."""
    folder = Path(folder)
    name = name or folder.name
    images, label = synthetic_head(shape, seed)
    suffixes = LAYOUTS[layout]
    for role in roles:
        write_nifti(folder / f"{name}{suffixes[role]}.nii.gz", images[role], affine)
    if seg:
        write_nifti(folder / f"{name}{suffixes['seg']}.nii.gz", label, affine)
    return folder, {r: images[r] for r in roles}, label


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = Path(os.environ.get("BRAINDIFFSEG_DATA", REPO.parent / "shared" / "data"))
    if not root.is_dir():
        pytest.skip(f"real data not available at {root} (set BRAINDIFFSEG_DATA)")
    return root


@pytest.fixture
def tiny_config():
    from BrainDiffSegLib.model import BackboneConfig

    return BackboneConfig(sample_size=32, block_out_channels=(8, 16), attention_levels=(1,), norm_num_groups=4,
                          attention_head_dim=8)


@pytest.fixture
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def nifti_writer():
    """write_nifti(path, data, affine=None) -> path."""
    return write_nifti


@pytest.fixture
def case_writer():
    """write_case(folder, layout='brats2021', roles=(...), seg=True, shape=..., affine=None, seed=0, name=None)."""
    return write_case


@pytest.fixture
def head():
    """synthetic_head(shape, seed, scale, tumour) -> (images by role, label)."""
    return synthetic_head


@pytest.fixture
def default_affine() -> np.ndarray:
    """The affine `case_writer` / `nifti_writer` use when none is given (a copy)."""
    return DEFAULT_AFFINE.copy()
