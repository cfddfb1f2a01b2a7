"""Intensity normalisation, foreground mask, the model grid (native <-> model resampling) and label regions."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from BrainDiffSegLib.io import ROLES
from BrainDiffSegLib.preprocess import (ModelGrid, foreground_mask, is_brats_labels, label_values, normalize,
                                        normalize_case, regions_of, stack_roles)


# ------------------------------------------------------------------------------------------------------ normalise

def test_normalize_range_background_and_outliers():
    rng = np.random.default_rng(1)
    img = np.zeros((40, 40, 8), np.float32)
    mask = np.zeros(img.shape, bool)
    mask[5:35, 5:35] = True
    img[mask] = rng.uniform(100, 1100, mask.sum())
    flat = np.flatnonzero(mask)
    img.flat[flat[:3]] = [1e7, 5e6, 2e6]  # a few hot voxels (0.04 % of the foreground)
    img.flat[flat[3]] = -1e6
    img[~mask] = 37.0  # background is not necessarily zero
    out = normalize(img, mask)
    assert out.dtype == np.float32 and out.shape == img.shape
    assert out.min() >= -1.0 and out.max() <= 1.0
    np.testing.assert_array_equal(out[~mask], -1.0)
    fg = out[mask]
    # outliers saturate instead of squashing the bulk: the uniform bulk spreads over nearly all of [-1, 1]
    assert abs(np.median(fg)) < 0.05
    assert np.percentile(fg, 5) < -0.8 and np.percentile(fg, 95) > 0.8
    assert out.flat[flat[0]] == 1.0 and out.flat[flat[3]] == -1.0
    # monotone in the input intensity
    order = np.argsort(img[mask])
    assert np.all(np.diff(fg[order]) >= 0)


def test_normalize_is_scale_and_offset_invariant():
    rng = np.random.default_rng(2)
    img = rng.gamma(2.0, 100.0, (30, 30, 4)).astype(np.float32)
    mask = img > 50
    a = normalize(img, mask)
    b = normalize(img * 7.5 + 3000, mask)
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_normalize_degenerate_inputs():
    img = np.full((10, 10, 3), 5.0, np.float32)
    mask = np.ones(img.shape, bool)
    out = normalize(img, mask)  # constant foreground: no division by zero
    assert np.all(np.isfinite(out))
    out = normalize(np.arange(300, dtype=np.float32).reshape(10, 10, 3), np.zeros(img.shape, bool))
    np.testing.assert_array_equal(out, -1.0)  # empty mask: everything is background


def test_foreground_mask_fills_holes_and_ignores_background():
    shape = (40, 40, 5)
    x, y = np.meshgrid(np.arange(40) - 19.5, np.arange(40) - 19.5, indexing="ij")
    r = np.hypot(x, y)
    ring = (r > 6) & (r < 15)
    img = np.zeros(shape, np.float32)
    img[ring] = 800.0
    img[..., 4] = 0.0  # an empty slice
    img[0, 0, :] = 20.0  # faint noise below 5 % of the robust maximum
    mask = foreground_mask({"flair": img})
    assert mask.dtype == bool and mask.shape == shape
    disk = r < 15
    for z in range(4):
        np.testing.assert_array_equal(mask[..., z], disk)  # the hole of the ring is filled
    assert not mask[..., 4].any()
    assert not mask[0, 0, :].any()


def test_foreground_mask_is_union_over_sequences():
    a = np.zeros((20, 20, 2), np.float32)
    b = np.zeros_like(a)
    a[2:8, 2:8] = 100
    b[12:18, 12:18] = 5  # different scale: the threshold is relative per sequence
    mask = foreground_mask({"t1": a, "t2": b})
    assert mask[2:8, 2:8].all() and mask[12:18, 12:18].all()
    assert mask.sum() == 2 * 2 * 36


def test_normalize_case_and_stack_roles(head):
    images, _ = head((24, 20, 12))
    sub = {"t2": images["t2"], "t1": images["t1"]}
    norm, mask = normalize_case(sub)
    assert set(norm) == {"t1", "t2"}
    assert mask.any() and not mask.all()
    for v in norm.values():
        assert v.min() == -1.0 and v.max() == 1.0
        np.testing.assert_array_equal(v[~mask], -1.0)
    stack, present = stack_roles(norm)
    assert stack.shape == (len(ROLES), 24, 20, 12)
    np.testing.assert_array_equal(present, [True, False, True, False])
    np.testing.assert_array_equal(stack[0], norm["t1"])
    np.testing.assert_array_equal(stack[2], norm["t2"])
    np.testing.assert_array_equal(stack[1], 0)
    np.testing.assert_array_equal(stack[3], 0)


# ------------------------------------------------------------------------------------------------------ model grid

def _smooth(shape):
    x, y = np.meshgrid(np.linspace(0, 1, shape[0]), np.linspace(0, 1, shape[1]), indexing="ij")
    # varies by up to ~0.1 per native pixel: a one-pixel misregistration costs ~0.09, the resampling ~0.007
    return (np.sin(6.0 * x) + np.cos(4.5 * y) + 0.5 * x * y + 2.0).astype(np.float32)


def test_model_grid_from_mask():
    mask = np.zeros((60, 50, 6), bool)
    mask[10:40, 20:30, 2] = True  # 30 x 10 in plane
    mask[15:20, 22:25, 4] = True
    g = ModelGrid.from_mask(mask, size=32, margin=4)
    assert g.size == 32 and g.native_xy == (60, 50)
    assert g.side == 30 + 2 * 4
    # the square box contains the in-plane projection of the mask with the margin
    assert g.x0 <= 10 - 4 and g.x0 + g.side >= 40 + 4
    assert g.y0 <= 20 and g.y0 + g.side >= 30
    # and is centred on it
    assert abs((g.y0 + g.side / 2) - 25) <= 1


def test_model_grid_empty_mask_uses_whole_slice():
    g = ModelGrid.from_mask(np.zeros((30, 20, 3), bool), size=16, margin=0)
    assert g.side == 30 and g.native_xy == (30, 20)


def test_model_grid_round_trip_smooth_map():
    X, Y = 70, 60
    mask = np.zeros((X, Y, 3), bool)
    mask[15:55, 12:48] = True
    g = ModelGrid.from_mask(mask, size=32)
    assert 0 <= g.x0 and g.x0 + g.side <= X and 0 <= g.y0 and g.y0 + g.side <= Y  # box inside the grid
    smooth = _smooth((X, Y))
    vols = np.stack([smooth, 2 * smooth + 1])[None]  # (N=1, C=2, X, Y)
    model = g.to_model(vols)
    assert isinstance(model, torch.Tensor) and model.shape == (1, 2, 32, 32) and model.dtype == torch.float32
    back = g.to_native(model)
    assert back.shape == (1, 2, X, Y)
    box = (slice(g.x0, g.x0 + g.side), slice(g.y0, g.y0 + g.side))
    inner = (slice(g.x0 + 2, g.x0 + g.side - 2), slice(g.y0 + 2, g.y0 + g.side - 2))
    err = (back[0, :, inner[0], inner[1]].numpy() - vols[0, :, inner[0], inner[1]])
    assert np.abs(err).max() < 0.02
    # outside the box the native map is zero
    outside = np.ones((X, Y), bool)
    outside[box] = False
    assert outside.any()
    assert torch.count_nonzero(back[..., torch.from_numpy(outside)]) == 0


def test_model_grid_box_beyond_native_grid():
    X, Y = 40, 36
    mask = np.zeros((X, Y, 4), bool)
    mask[0:30, 3:33] = True  # touches the border at x = 0: the margin goes off-grid
    g = ModelGrid.from_mask(mask, size=24, margin=4)
    assert g.x0 < 0
    smooth = _smooth((X, Y))
    model = g.to_model(smooth[None, None], fill=-1.0)
    assert model.shape == (1, 1, 24, 24)
    # the first model row lies wholly (filter support included) in the off-grid strip: it holds the fill value
    assert -g.x0 >= 2 * g.side / g.size
    np.testing.assert_allclose(model[0, 0, 0].numpy(), -1.0, atol=1e-5)
    assert model[0, 0, 12:, 2:-2].min() > -0.05  # inside the grid: the map (>= 0), no fill mixed in
    back = g.to_native(model)
    assert back.shape == (1, 1, X, Y)
    inner = (slice(2, min(X, g.x0 + g.side) - 2), slice(max(0, g.y0) + 2, min(Y, g.y0 + g.side) - 2))
    np.testing.assert_allclose(back[0, 0][inner].numpy(), smooth[inner], atol=0.03)


def test_model_grid_box_larger_than_grid_on_both_sides():
    X, Y = 20, 20
    mask = np.ones((X, Y, 2), bool)
    g = ModelGrid.from_mask(mask, size=16, margin=4)
    assert g.x0 < 0 and g.x0 + g.side > X and g.y0 < 0 and g.y0 + g.side > Y
    m = g.to_model(np.ones((2, 3, X, Y), np.float32), fill=-1.0)
    assert m.shape == (2, 3, 16, 16)
    assert m[0, 0, 0, 0] == pytest.approx(-1.0) and m[0, 0, 8, 8] == pytest.approx(1.0)
    back = g.to_native(m)
    assert back.shape == (2, 3, X, Y)
    np.testing.assert_allclose(back[..., 6:14, 6:14].numpy(), 1.0, atol=1e-5)


def test_to_native_accepts_other_channel_counts():
    g = ModelGrid(x0=5, y0=-3, side=40, size=20, native_xy=(50, 45))
    feats = torch.randn(3, 7, 20, 20)
    back = g.to_native(feats)
    assert back.shape == (3, 7, 50, 45)
    assert torch.count_nonzero(back[..., :5, :]) == 0 and torch.count_nonzero(back[..., 45:, :]) == 0
    assert torch.count_nonzero(back[..., :, 37:]) == 0
    assert torch.count_nonzero(back[..., 5:45, 0:37]) > 0


# ------------------------------------------------------------------------------------------------------ labels

def test_regions_of_brats_labels():
    label = np.array([0, 1, 2, 4, 4, 2, 0], np.int16)
    regions = regions_of(label)
    assert set(regions) == {"WT", "TC", "ET"}
    np.testing.assert_array_equal(regions["WT"], [0, 1, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(regions["TC"], [0, 1, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(regions["ET"], [0, 0, 0, 1, 1, 0, 0])
    assert all(r.dtype == bool for r in regions.values())


def test_regions_of_binary_mask():
    label = np.array([[0, 1], [1, 0]], np.uint8)
    regions = regions_of(label)
    assert set(regions) == {"WT"}
    np.testing.assert_array_equal(regions["WT"], label.astype(bool))
    # forced BraTS interpretation of a 0/1 mask: label 1 is tumour core, no enhancing tumour
    forced = regions_of(label, brats=True)
    np.testing.assert_array_equal(forced["TC"], label.astype(bool))
    assert not forced["ET"].any()
    # forced binary interpretation of BraTS labels: any label is WT
    np.testing.assert_array_equal(regions_of(np.array([0, 2, 4]), brats=False)["WT"], [False, True, True])


@pytest.mark.parametrize("values, expected", [
    ([0, 1, 2, 4], True), ([0, 2], True), ([4], True), ([0, 1, 4], True),
    ([0, 1], False), ([1], False), ([0], False), ([], False), ([0, 1, 2, 3], False), ([0, 2, 5], False),
    (np.array([0, 1, 2, 4], np.uint8), True),
])
def test_is_brats_labels(values, expected):
    assert is_brats_labels(values) is expected


def test_label_values():
    assert label_values(np.array([[4, 0], [2, 4]], np.int16)) == [0, 2, 4]
    assert all(type(v) is int for v in label_values(np.array([1, 0], np.uint8)))


@pytest.mark.parametrize("box", [(10, 6, 30), (-5, 20, 40)])  # inside the grid; sticking out of it
def test_sample_native_equals_to_native_then_mask(box):
    x0, y0, side = box
    g = ModelGrid(x0=x0, y0=y0, side=side, size=16, native_xy=(48, 52))
    gen = torch.Generator().manual_seed(0)
    maps = torch.randn((3, 5, 16, 16), generator=gen)
    mask = torch.rand((3, 48, 52), generator=gen) > 0.6
    expected = g.to_native(maps).permute(0, 2, 3, 1)[mask]
    got = g.sample_native(maps, mask)
    assert got.shape == expected.shape == (int(mask.sum()), 5)
    assert torch.allclose(got, expected, atol=1e-5)
