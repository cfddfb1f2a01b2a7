"""Healthy masks on real cases: the placement rules, reproducibility and the written records."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from BrainDiffSegLib.errors import InputError
from BrainDiffSegLib.inpainting.masks import (MaskRules, brain_of, healthy_masks, mask_from_record, place_healthy_mask,
                                           source_shape, transform_shape)


@pytest.fixture(scope="module")
def cases(data_root):
    from inpaint_support import lgg_t1_cases

    from BrainDiffSegLib.training.inpaint import load_t1_cases

    return load_t1_cases(lgg_t1_cases(data_root, 3))


def test_masks_follow_the_rules(cases):
    rules = MaskRules()
    placed = healthy_masks(cases, seed=0, per_case=2)
    assert len(placed) == 2 * len(cases)
    by_name = {c.name: c for c in cases}
    for mask, rec in placed:
        case = by_name[rec["case"]]
        brain = brain_of(case.images["t1"])
        assert mask.shape == case.shape and mask.dtype == bool and mask.sum() == rec["voxels"] > 0
        assert rec["source"] != rec["case"] and rec["source"] in by_name  # a tumour shape of another case
        assert not np.any(mask & ~brain)  # kept inside the brain
        assert rec["inside_brain"] >= rules.min_inside
        dist = ndimage.distance_transform_edt(case.label == 0)
        assert dist[mask].min() > rules.dilate + rules.margin  # >= margin voxels beyond the dilated tumour
        assert not np.any(mask & (case.label > 0))  # never tumour inside
        # the record rebuilds the mask exactly
        np.testing.assert_array_equal(mask_from_record(rec, source_shape(by_name[rec["source"]].label), brain), mask)
    # two masks of one case differ (seed, seed + 1)
    assert not np.array_equal(placed[0][0], placed[1][0])


def test_masks_are_reproducible_and_order_independent(cases):
    a = healthy_masks(cases, seed=3)
    b = healthy_masks(cases, seed=3)
    c = healthy_masks(cases[::-1], seed=3)  # the draws of a case follow (seed, name), not the list order
    for (ma, ra), (mb, rb) in zip(a, b):
        assert ra == rb and np.array_equal(ma, mb)
    rc = {r["case"]: (m, r) for m, r in c}
    for ma, ra in a:
        assert rc[ra["case"]][1] == ra and np.array_equal(rc[ra["case"]][0], ma)
    assert [r for _, r in healthy_masks(cases, seed=4)] != [r for _, r in a]


def test_transforms_and_failure():
    shape = np.zeros((5, 3, 2), bool)
    shape[0, :, :] = True
    shape[:, 1, 0] = True
    flipped = transform_shape(shape, True, False, 0.0)
    np.testing.assert_array_equal(flipped, shape[::-1])
    rotated = transform_shape(shape, False, False, 90.0)
    assert rotated.shape[:2] == (3, 5) and rotated.sum() == shape.sum()
    # a brain too small for any source shape: a clear error
    t1 = np.zeros((20, 20, 10), np.float32)
    t1[8:12, 8:12, 4:6] = 100.0
    big = np.ones((15, 15, 8), bool)
    with pytest.raises(InputError, match="no healthy mask fits"):
        place_healthy_mask("x", t1, None, {"other": big}, rules=MaskRules(min_voxels=1, max_fraction=100.0, tries=5))
