"""The benchmark protocol: which axial slices are annotated, the simulated annotation, and the Dice scores."""
from __future__ import annotations

import numpy as np
import pytest

from BrainDiffSegLib.errors import InputError
from BrainDiffSegLib.protocol import dice, protocol_slices, region_dice, simulate_annotation


def _expected_slices(lo: int, hi: int, k: int) -> list[int]:
    """The protocol formula, written out independently: z_i = round(lo + (hi - lo)(i + 1)/(k + 1)), i = 0..k-1."""
    out = []
    for i in range(k):
        z = round(lo + (hi - lo) * (i + 1) / (k + 1))
        if z not in out:
            out.append(z)
    return sorted(out)


def _label_with_extent(lo: int, hi: int, nz: int = 40, value: int = 2) -> np.ndarray:
    label = np.zeros((6, 5, nz), np.uint8)
    label[2:4, 1:3, lo:hi + 1] = value
    return label


@pytest.mark.parametrize("lo,hi,k", [
    (10, 30, 1), (10, 30, 3), (10, 30, 5), (3, 20, 3), (0, 39, 4), (5, 6, 3), (7, 26, 2), (11, 14, 3),
    (2, 33, 7), (12, 12, 1), (12, 12, 3)])
def test_protocol_slices_follow_the_formula(lo, hi, k):
    label = _label_with_extent(lo, hi)
    zs = protocol_slices(label, k)
    assert zs == _expected_slices(lo, hi, k)
    assert all(lo <= z <= hi for z in zs)
    assert all(label[..., z].any() for z in zs)  # every annotated slice contains tumour


def test_protocol_slices_known_values():
    # explicit numbers so that the test does not only repeat the formula
    assert protocol_slices(_label_with_extent(10, 30), 1) == [20]
    assert protocol_slices(_label_with_extent(10, 30), 3) == [15, 20, 25]
    assert protocol_slices(_label_with_extent(0, 39), 4) == [8, 16, 23, 31]  # 7.8, 15.6, 23.4, 31.2
    assert protocol_slices(_label_with_extent(12, 12), 1) == [12]
    assert protocol_slices(_label_with_extent(12, 12), 3) == [12]  # a one-slice tumour: the slice once


def test_protocol_slices_uses_the_tumour_extent_not_the_volume():
    """lo/hi come from the label's tumour, whatever the label value and even with gaps inside the tumour."""
    label = np.zeros((6, 5, 50), np.int16)
    label[1, 1, 5] = 4
    label[3, 3, 45] = 1
    assert protocol_slices(label, 1) == [25]
    assert protocol_slices(label, 3) == _expected_slices(5, 45, 3) == [15, 25, 35]


def test_protocol_slices_axial_axis_is_last():
    label = np.zeros((30, 30, 30), np.uint8)
    label[0:30, 5, 10:21] = 1  # extends over all x, only z 10..20
    assert protocol_slices(label, 1) == [15]


@pytest.mark.parametrize("k", [0, -1])
def test_protocol_slices_rejects_k_below_one(k):
    with pytest.raises(InputError, match="k must be at least 1"):
        protocol_slices(_label_with_extent(10, 30), k)


def test_protocol_slices_rejects_label_without_tumour():
    with pytest.raises(InputError, match="no tumour"):
        protocol_slices(np.zeros((6, 5, 10), np.uint8), 3)
    with pytest.raises(InputError):
        simulate_annotation(np.zeros((6, 5, 10), np.uint8), 1)


def test_simulate_annotation_keeps_only_the_protocol_slices():
    rng = np.random.default_rng(0)
    label = np.zeros((12, 10, 30), np.uint8)
    label[2:10, 2:8, 6:25] = rng.choice([0, 1, 2, 4], size=(8, 6, 19))
    label[2, 2, 6] = label[2, 2, 24] = 2  # fix the tumour extent: lo 6, hi 24
    ann, zs = simulate_annotation(label, 3)
    assert zs == protocol_slices(label, 3) == _expected_slices(6, 24, 3)
    assert ann.shape == label.shape and ann.dtype == label.dtype
    for z in range(label.shape[-1]):
        if z in zs:
            np.testing.assert_array_equal(ann[..., z], label[..., z])  # all labels, background included
        else:
            assert not ann[..., z].any()
    # the input is not modified
    assert label[2, 2, 24] == 2


def test_dice_edge_cases():
    empty = np.zeros((4, 4), bool)
    full = np.ones((4, 4), bool)
    assert dice(empty, empty) == 1.0
    assert dice(empty, full) == 0.0
    assert dice(full, empty) == 0.0
    assert dice(full, full) == 1.0
    a = np.zeros(10, bool)
    b = np.zeros(10, bool)
    a[:4] = True
    b[2:8] = True
    assert dice(a, b) == pytest.approx(2 * 2 / (4 + 6))


def _brats_truth():
    truth = np.zeros((8, 8, 5), np.uint8)
    truth[1:7, 1:7, :] = 2  # edema: 36 voxels per slice
    truth[2:6, 2:6, :] = 1  # core: 16
    truth[3:5, 3:5, :] = 4  # enhancing: 4
    return truth


def test_region_dice_brats_regions():
    truth = _brats_truth()
    perfect = region_dice(truth, truth)
    assert set(perfect) == {"WT", "TC", "ET"}
    assert all(v == 1.0 for v in perfect.values())

    # predict the whole core as enhancing: WT and TC still perfect, ET = 2*4/(16+4)
    pred = truth.copy()
    pred[pred == 1] = 4
    d = region_dice(pred, truth)
    assert d["WT"] == 1.0 and d["TC"] == 1.0
    assert d["ET"] == pytest.approx(2 * 4 / (16 + 4))

    # predict the edema as necrosis: WT perfect, TC = 2*16/(36+16), ET perfect
    pred = truth.copy()
    pred[pred == 2] = 1
    d = region_dice(pred, truth)
    assert d["WT"] == 1.0 and d["ET"] == 1.0
    assert d["TC"] == pytest.approx(2 * 16 / (36 + 16))

    # label 2 does not count as tumour core; an empty prediction scores 0 everywhere
    d = region_dice(np.zeros_like(truth), truth)
    assert d == {"WT": 0.0, "TC": 0.0, "ET": 0.0}


def test_region_dice_excludes_annotated_slices():
    truth = _brats_truth()
    pred = truth.copy()
    pred[..., 2] = 0  # slice 2 predicted completely wrong...
    pred[0, 0, 2] = 4
    wrong = region_dice(pred, truth)
    assert wrong["WT"] < 0.9 and wrong["ET"] < 0.9
    # ...but slice 2 is an annotated slice: it does not count
    assert region_dice(pred, truth, annotated=[2]) == {"WT": 1.0, "TC": 1.0, "ET": 1.0}
    # excluding another slice does not hide the error
    assert region_dice(pred, truth, annotated=[0, 4])["WT"] < 1.0
    # the score over the kept slices equals the 3D Dice over just those slices
    pred[..., 3] = 0
    d = region_dice(pred, truth, annotated=[2])
    keep = [0, 1, 3, 4]
    wt_expected = dice(pred[..., keep] > 0, truth[..., keep] > 0)
    assert d["WT"] == pytest.approx(wt_expected) == pytest.approx(2 * 108 / (108 + 144))


def test_region_dice_binary_mask_gives_only_wt():
    truth = np.zeros((6, 6, 4), np.uint8)
    truth[1:5, 1:5, :] = 1
    pred = truth.copy()
    pred[1:3, 1:5, :] = 0  # half missed
    d = region_dice(pred, truth)
    assert list(d) == ["WT"]
    assert d["WT"] == pytest.approx(2 * 32 / (32 + 64))
    # forcing the BraTS regions on the same labels gives all three
    assert set(region_dice(pred, truth, brats=True)) == {"WT", "TC", "ET"}
