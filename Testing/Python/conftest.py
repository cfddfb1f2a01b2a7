"""Shared fixtures for the BrainDiffSegLib unit tests.

Puts `<repo>/BrainDiffSeg` on sys.path so that `import BrainDiffSegLib` works without installing anything, limits torch
to one thread (the tests are tiny; threads only add contention), and provides writers for small synthetic NIfTI cases.
Real data (`BRAINDIFFSEG_DATA`, default `<repo>/../shared/data`) is optional: tests that need it skip without it.
"""
from __future__ import annotations

import contextlib
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


TUMOUR_SHAPE = (64, 64, 24)
# intensity of (healthy tissue, edema [2], enhancing [4], necrosis [1]) per sequence, relative to healthy tissue
TUMOUR_CONTRAST = {"t1": (1.0, 0.8, 0.9, 0.5), "t1ce": (1.0, 0.9, 2.0, 0.4), "t2": (1.0, 1.8, 1.5, 2.2),
                   "flair": (1.0, 2.0, 1.6, 1.2)}


def synthetic_tumour_case(shape=TUMOUR_SHAPE, seed=0):
    """Four sequences of an ellipsoidal 'head' on a zero background with a spherical BraTS-like tumour: edema (2)
    around an enhancing shell (4) around a necrotic core (1). Returns (images by role, label, head mask).

    The geometry is laid out for the default 64 x 64 x 24 grid."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    head = ((x - 32) / 27) ** 2 + ((y - 32) / 24) ** 2 + ((z - 12) / 40) ** 2 < 1
    r = np.sqrt(((x - 38) / 11) ** 2 + ((y - 28) / 11) ** 2 + ((z - 12) / 7.5) ** 2)
    label = np.zeros(shape, np.uint8)
    label[r < 1.0] = 2
    label[r < 0.6] = 4
    label[r < 0.35] = 1
    label[~head] = 0
    tissue = {0: 0, 2: 1, 4: 2, 1: 3}
    images = {}
    for role, c in TUMOUR_CONTRAST.items():
        img = np.zeros(shape, np.float32)
        for v, i in tissue.items():
            img[label == v] = c[i]
        img *= 1000.0 * (1 + 0.03 * np.sin(x / 5.0))  # a little smooth inhomogeneity
        img += 50.0 * rng.standard_normal(shape)
        img[~head] = 0.0
        images[role] = np.clip(img, 0, None).astype(np.float32)
    return images, label, head


def write_tumour_case(folder: Path, seed: int = 0, shape=TUMOUR_SHAPE, affine: np.ndarray | None = None,
                      name: str | None = None, seg: bool = True):
    """Write `synthetic_tumour_case` as a BraTS 2021-named case folder (`NAME_t1.nii.gz` ... `NAME_seg.nii.gz`).

    Returns (folder, images by role, label)."""
    folder = Path(folder)
    name = name or folder.name
    images, label, _ = synthetic_tumour_case(shape, seed)
    for role, img in images.items():
        write_nifti(folder / f"{name}{LAYOUTS['brats2021'][role]}.nii.gz", img, affine)
    if seg:
        write_nifti(folder / f"{name}_seg.nii.gz", label, affine)
    return folder, images, label


TINY_3_LEVELS = dict(sample_size=32, block_out_channels=(8, 16, 16), attention_levels=(2,), norm_num_groups=4,
                     attention_head_dim=8)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """An untrained 3-level backbone checkpoint on a 32 x 32 grid (decoder blocks 0, 1, 2 of 16, 16, 8 channels)."""
    from BrainDiffSegLib.model import BackboneConfig, build_unet, save_backbone

    cfg = BackboneConfig(**TINY_3_LEVELS)
    torch.manual_seed(0)
    return save_backbone(tmp_path_factory.mktemp("ckpt") / "tiny", build_unet(cfg).state_dict(), cfg)


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
def tumour_case():
    """synthetic_tumour_case(shape=(64, 64, 24), seed=0) -> (images by role, label, head mask)."""
    return synthetic_tumour_case


@pytest.fixture
def tumour_case_writer():
    """write_tumour_case(folder, seed=0, shape=..., affine=None, name=None, seg=True) -> (folder, images, label)."""
    return write_tumour_case


@pytest.fixture
def default_affine() -> np.ndarray:
    """The affine `case_writer` / `nifti_writer` use when none is given (a copy)."""
    return DEFAULT_AFFINE.copy()


# ------------------------------------------------------------------------------------------ Slicer (slicer-core)

@contextlib.contextmanager
def slicer_scene_context():
    """A fresh slicer-core MRML scene (MRML without Qt) with its own Volumes and Segmentations module logics:
    `BrainDiffSegSlicer.headless.HeadlessScene` (also used by `BrainDiffSeg/SlicerScripts/benchmark.py`), closed on exit.
    The `slicer` module is not changed (no global scene). Skips when slicer-core is missing."""
    pytest.importorskip("slicer")
    from BrainDiffSegSlicer.headless import HeadlessScene

    with HeadlessScene() as headless:
        yield headless


@pytest.fixture
def headless():
    """`slicer_scene_context()` for one test: `.scene`, `.volumesLogic`, `.segmentationsLogic`, `.logic()`."""
    with slicer_scene_context() as headless:
        yield headless


@pytest.fixture
def mrml_scene(headless):
    """The scene of the `headless` fixture."""
    return headless.scene
