"""The challenge's inpainting metrics (hand-computed and package-computed examples) and the simple baselines."""
from __future__ import annotations

import numpy as np
import pytest

from BrainDiffSegBench.inpaint_metrics import (BASELINES, challenge_metrics, fill_distance_weighted, fill_mean,
                                               fill_mirror, ssim_map)


def test_metrics_hand_computed():
    # voided volume: half 0, half 100 -> percentiles 0.5 / 99.5 are 0 and 100, so v / 100 is the [0, 1] scale
    target = np.zeros((4, 10, 10), np.float32)
    target[:, 5:] = 100.0
    mask = np.zeros(target.shape, bool)
    mask[1:3, 2:4, 2:4] = True
    target[mask] = np.tile([40.0, 60.0], 4)  # scaled: 0.4 / 0.6
    voided = np.where(mask, 0, target)
    pred = target.copy()
    pred[mask] += 10.0  # 0.5 / 0.7
    m = challenge_metrics(pred, target, voided, mask)
    assert m["mse"] == pytest.approx(0.01, abs=1e-6)  # (0.1)^2 everywhere
    assert m["psnr_01"] == pytest.approx(20.0, abs=1e-4)  # 10 log10(1 / 0.01)
    # data range of the reference's mask voxels: 0.4..0.6; the prediction is clamped to it: errors 0.1 and 0
    assert m["psnr"] == pytest.approx(10 * np.log10(0.2 ** 2 / 0.005), abs=1e-4)
    same = challenge_metrics(target, target, voided, mask)
    assert same["ssim"] == pytest.approx(1.0) and same["mse"] == 0.0
    assert m["ssim"] < 1.0


def test_metrics_match_the_challenge_package():
    """Numbers computed with `inpainting.challenge_metrics_2023.generate_metrics` (inpainting 0.0.12, torchmetrics
    1.9.0, installed outside the project for this check) on this example."""
    rng = np.random.default_rng(0)
    shape = (6, 16, 12)
    target = np.zeros(shape, np.float32)
    target[1:5, 2:14, 2:10] = rng.uniform(100, 1000, (4, 12, 8)).round()
    mask = np.zeros(shape, bool)
    mask[2:4, 5:10, 4:8] = True
    voided = np.where(mask, 0, target)
    pred = np.where(mask, target + rng.normal(0, 80, shape).round(), target).astype(np.float32)
    m = challenge_metrics(pred, target, voided, mask)
    assert m["ssim"] == pytest.approx(0.9893301009287363, abs=1e-6)
    assert m["psnr"] == pytest.approx(22.15555815300597, abs=1e-4)
    assert m["psnr_01"] == pytest.approx(23.30569076538086, abs=1e-4)
    assert m["mse"] == pytest.approx(0.004671224392950535, rel=1e-5)


def test_ssim_planes_are_the_last_two_axes():
    # torchmetrics reads (1, X, Y, Z) as X channels: structure along X alone does not blur into the window
    a = np.zeros((5, 12, 12))
    a[::2] = 1.0
    assert np.allclose(ssim_map(a, a), 1.0)
    b = a.copy()
    b[1] = 0.5  # a constant change of one X plane leaves the others' SSIM untouched
    s = ssim_map(b, a)
    assert np.allclose(s[[0, 2, 3, 4]], 1.0) and s[1].mean() < 1.0


@pytest.fixture(scope="module")
def lgg_case(data_root):
    from inpaint_support import lgg_t1_cases

    from BrainDiffSegLib.inpainting.masks import healthy_masks
    from BrainDiffSegLib.training.inpaint import load_t1_cases

    cases = load_t1_cases(lgg_t1_cases(data_root, 3))
    mask, _ = healthy_masks(cases, seed=0)[0]
    return cases[0].images["t1"], mask


@pytest.mark.parametrize("name", list(BASELINES))
def test_baselines_fill_only_the_mask(lgg_case, name):
    t1, mask = lgg_case
    voided = np.where(mask, 0, t1).astype(np.float32)
    before = voided.copy()
    out = BASELINES[name](voided, mask)
    np.testing.assert_array_equal(voided, before)  # input untouched
    np.testing.assert_array_equal(out[~mask], voided[~mask])
    assert np.all(np.isfinite(out[mask])) and out[mask].min() >= 0
    assert out[mask].mean() > 0.5 * voided[voided > 0].mean()  # tissue intensities, not the void
    m = challenge_metrics(out, t1, voided, mask)
    assert 0.0 < m["ssim"] < 1.0 and 0 < m["mse"] < 0.2 and m["psnr"] > 5


def test_baseline_definitions(lgg_case):
    t1, mask = lgg_case
    voided = np.where(mask, 0, t1).astype(np.float32)
    mean = fill_mean(voided, mask)
    assert np.unique(mean[mask]).size == 1
    dw = fill_distance_weighted(voided, mask)
    assert np.unique(dw[mask]).size > 50  # varies with the neighbourhood
    # the nearest tissue decides near the border: a mask voxel next to tissue is close to its neighbours' mean
    assert challenge_metrics(dw, t1, voided, mask)["mse"] < challenge_metrics(mean, t1, voided, mask)["mse"] * 1.5
    mirror = fill_mirror(voided, mask)
    # a mirrored voxel comes from the other side: x -> centre2 - x, an exact copy of the voided image there
    xs = np.nonzero((voided > 0).any(axis=(1, 2)))[0]
    c2 = xs.min() + xs.max()
    x, y, z = np.argwhere(mask)[0]
    if 0 <= c2 - x < t1.shape[0] and not mask[c2 - x, y, z] and voided[c2 - x, y, z] > 0:
        assert mirror[x, y, z] == voided[c2 - x, y, z]
