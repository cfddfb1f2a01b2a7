"""Slicer baselines: "Fill between slices" (morphological contour interpolation) and "Grow from seeds" (FastGrowCut).

Synthetic volumes come from conftest's `head` (an ellipsoid head with a BraTS-labelled tumour, noisy); the real-data
test (BraTS2021_00006, 3 annotated slices under the benchmark protocol) checks the benchmark's reference Dice.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import sys
import time

import numpy as np
import pytest

from BrainDiffSegBench import baselines
from BrainDiffSegLib import protocol
from BrainDiffSegLib.errors import InputError



def _installed(*dists: str) -> bool:
    try:
        for d in dists:
            importlib.metadata.version(d)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_itk = pytest.mark.skipif(
    not _installed("itk", "itk-growcut", "itk-morphologicalcontourinterpolation"),
    reason="the baselines need itk, itk-growcut and itk-morphologicalcontourinterpolation (the 'baselines' extra)")
# ITK's SWIG modules emit these DeprecationWarnings when they are (lazily) loaded
pytestmark = pytest.mark.filterwarnings("ignore:builtin type .* has no __module__ attribute:DeprecationWarning")

SHAPE = (48, 48, 30)


@pytest.fixture
def synthetic(head):
    """(images by role, BraTS label, protocol annotation with 3 slices, annotated slice indices)."""
    images, label = head(SHAPE, seed=3)
    ann, zs = protocol.simulate_annotation(label, 3)
    return images, label, ann, zs


def _extent(mask2d: np.ndarray, axis: int) -> tuple[int, int]:
    idx = np.nonzero(mask2d.any(axis=1 - axis))[0]
    return int(idx[0]), int(idx[-1])


# ------------------------------------------------------------------------------------------------- fill between

@needs_itk
def test_fill_between_sphere(synthetic):
    _, label, ann, zs = synthetic
    assert set(np.unique(label[..., zs[1]])) == {0, 1, 2, 4}
    out = baselines.fill_between(ann)
    assert out.shape == ann.shape and out.dtype == ann.dtype
    np.testing.assert_array_equal(out[..., zs], ann[..., zs])
    between = [z for z in range(zs[0] + 1, zs[-1]) if z not in zs]
    d = protocol.dice(out[..., between] > 0, label[..., between] > 0)
    assert d > 0.7, d
    assert set(np.unique(out)) <= set(np.unique(ann))
    # interpolation only: nothing above the first or below the last annotated slice
    assert not out[..., :zs[0]].any() and not out[..., zs[-1] + 1:].any()


@needs_itk
def test_fill_between_interpolates_along_the_last_axis_only():
    # a rectangle whose x-extent grows linearly with z (y fixed): only an axial interpolation reproduces it
    ann = np.zeros(SHAPE, np.int16)
    ann[10:20, 10:20, 5] = 1
    ann[10:40, 10:20, 25] = 1
    out = baselines.fill_between(ann)
    for z in range(6, 25):
        x0, x1 = _extent(out[..., z] > 0, 0)
        y0, y1 = _extent(out[..., z] > 0, 1)
        expected_x1 = 19 + (39 - 19) * (z - 5) / 20
        assert x0 == 10 and abs(x1 - expected_x1) <= 1.5, (z, x0, x1)
        assert (y0, y1) == (10, 19), (z, y0, y1)
    # Fortran-ordered input (as nibabel gives) is the same volume: same result
    np.testing.assert_array_equal(baselines.fill_between(np.asfortranarray(ann)), out)

    # one annotated slice with blobs separated along x and along y: nothing to interpolate, nothing leaks
    single = np.zeros(SHAPE, np.uint8)
    single[5:10, 5:10, 12] = 1
    single[30:35, 5:10, 12] = 1  # gap along x
    single[5:10, 30:35, 12] = 2  # gap along y
    np.testing.assert_array_equal(baselines.fill_between(single), single)


# ---------------------------------------------------------------------------------------------- grow from seeds

@needs_itk
def test_grow_from_seeds_bright_sphere(synthetic):
    images, label, ann, zs = synthetic
    mask = (ann > 0).astype(np.uint8)
    out = baselines.grow_from_seeds(images["flair"], mask)
    assert out.shape == mask.shape and out.dtype == mask.dtype
    np.testing.assert_array_equal(out[..., zs], mask[..., zs])
    d = protocol.region_dice(out, (label > 0).astype(np.uint8), zs, brats=False)["WT"]
    assert d > 0.9, d
    # arbitrary label values are seeded as themselves and come back unchanged
    remapped = np.select([ann == 1, ann == 2, ann == 4], [3, 7, 9], 0).astype(np.int32)
    out2 = baselines.grow_from_seeds(images["flair"], remapped)
    assert set(np.unique(out2)) <= {0, 3, 7, 9}
    np.testing.assert_array_equal(out2[..., zs], remapped[..., zs])
    np.testing.assert_array_equal(out2 > 0, out > 0)


@needs_itk
def test_growcut_brats_label_values(synthetic):
    images, label, ann, zs = synthetic
    out = baselines.growcut_brats(images, ann)
    assert set(np.unique(out)) <= set(np.unique(ann)) and out.dtype == ann.dtype
    np.testing.assert_array_equal(out[..., zs], ann[..., zs])
    wt = protocol.region_dice(out, label, zs)["WT"]
    assert wt > 0.9, wt
    # WT comes from the FLAIR run
    flair_run = baselines.grow_from_seeds(images["flair"], ann)
    np.testing.assert_array_equal(out > 0, flair_run > 0)
    # a 0/1 mask: a single run; missing FLAIR falls back to the next sequence
    mask = (ann > 0).astype(np.uint8)
    out_mask = baselines.growcut_brats({"t1ce": images["t1ce"], "t1": images["t1"]}, mask)
    assert set(np.unique(out_mask)) <= {0, 1}
    np.testing.assert_array_equal(out_mask, baselines.grow_from_seeds(images["t1ce"], mask))


# ------------------------------------------------------------------------------------------------------- errors

def test_errors(synthetic):
    images, _, ann, _ = synthetic
    empty = np.zeros(SHAPE, np.uint8)
    with pytest.raises(InputError, match="no tumour"):
        baselines.fill_between(empty)
    with pytest.raises(InputError, match="no tumour"):
        baselines.grow_from_seeds(images["flair"], empty)
    with pytest.raises(InputError, match="no tumour"):
        baselines.growcut_brats(images, empty)
    with pytest.raises(InputError, match="shape"):
        baselines.grow_from_seeds(images["flair"], ann[:-1])
    with pytest.raises(InputError, match="shape"):
        baselines.growcut_brats(images, ann[..., :-1])
    with pytest.raises(InputError, match="roles"):
        baselines.growcut_brats({"dwi": images["flair"]}, ann)
    with pytest.raises(InputError, match="background"):
        baselines.grow_from_seeds(images["flair"], np.ones(SHAPE, np.uint8))


def test_module_imports_without_itk(monkeypatch, synthetic):
    monkeypatch.setitem(sys.modules, "itk", None)  # `import itk` now raises ImportError
    try:
        mod = importlib.reload(baselines)
        with pytest.raises(ImportError, match="baselines"):
            mod.fill_between(synthetic[2])
    finally:
        monkeypatch.undo()
        importlib.reload(baselines)


# ---------------------------------------------------------------------------------------------------- real data

@needs_itk
def test_brats2021_00006_reference_dice(data_root):
    from BrainDiffSegLib.io import load_case

    case_dir = data_root / "brats2021" / "BraTS2021_00006"
    if not case_dir.is_dir():
        pytest.skip(f"{case_dir} not available")
    case = load_case(case_dir)
    ann, zs = protocol.simulate_annotation(case.label, 3)

    t = time.perf_counter()
    grown = baselines.growcut_brats(case.images, ann)
    t_grow = time.perf_counter() - t
    t = time.perf_counter()
    filled = baselines.fill_between(ann)
    t_fill = time.perf_counter() - t
    d_grow = protocol.region_dice(grown, case.label, zs)
    d_fill = protocol.region_dice(filled, case.label, zs)
    print(f"\nBraTS2021_00006, slices {zs}: growcut {d_grow} in {t_grow:.1f} s; "
          f"fill between {d_fill} in {t_fill:.1f} s")

    reference = {"WT": 0.964, "TC": 0.944, "ET": 0.859}
    for region, ref in reference.items():
        assert abs(d_grow[region] - ref) <= 0.03, (region, d_grow[region], ref)
    assert 0.55 <= d_fill["WT"] <= 0.75, d_fill
    np.testing.assert_array_equal(grown[..., zs], ann[..., zs])
    np.testing.assert_array_equal(filled[..., zs], ann[..., zs])
