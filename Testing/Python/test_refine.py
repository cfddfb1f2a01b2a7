"""3D refinement of the class probabilities (`BrainDiffSegLib.propagation.refine`) and its use in `propagate`."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from BrainDiffSegLib.propagation.classifier import ClassifierOptions
from BrainDiffSegLib.errors import InputError
from BrainDiffSegLib.propagation.propagate import PropagationOptions, propagate
from BrainDiffSegLib.protocol import region_dice, simulate_annotation
from BrainDiffSegLib.propagation.refine import check_refine, decide, refine_labels, smooth_probabilities
from conftest import synthetic_tumour_case

VALUES = [0, 1, 2, 4]
PLAIN = replace(PropagationOptions(), gate="none")  # no refinement at all


def _probs(*rows):
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), 1, 1, 4)


def test_regions_decision_follows_the_nesting():
    p = _probs([0.4, 0.2, 0.25, 0.15],  # argmax: background; P(tumour) 0.6 -> tumour, core 0.35 >= 0.25, p1 > p4
               [0.45, 0.05, 0.3, 0.2],  # argmax background; core 0.25 < 0.3 -> edema
               [0.3, 0.1, 0.2, 0.4],  # enhancing by both
               [0.6, 0.0, 0.2, 0.2])  # background by both
    assert np.asarray(VALUES)[decide(p, VALUES, "argmax")][:, 0, 0].tolist() == [0, 0, 4, 0]
    assert np.asarray(VALUES)[decide(p, VALUES, "regions")][:, 0, 0].tolist() == [1, 2, 4, 0]
    # not BraTS labels: plain argmax whatever the setting
    two = np.asarray([[0.45, 0.55], [0.6, 0.4]], np.float32).reshape(2, 1, 1, 2)
    assert decide(two, [0, 1], "regions")[:, 0, 0].tolist() == [1, 0]


def test_smoothing_removes_isolated_voxels_and_keeps_annotation_and_head():
    shape = (20, 20, 10)
    probs = np.zeros(shape + (4,), np.float32)
    probs[..., 0] = 1.0
    probs[5:15, 5:15, 2:8] = [0.1, 0.0, 0.9, 0.0]  # a block of edema
    probs[2, 2, 5] = [0.2, 0.0, 0.8, 0.0]  # an isolated speck
    annotation = np.zeros(shape, np.int16)
    annotation[6:14, 6:14, 4] = 2
    annotation[9:11, 9:11, 4] = 1  # necrotic in the annotated slice: must stay exactly
    fg = np.ones(shape, bool)
    fg[:, :1] = False
    opt = replace(PLAIN, smooth_xy=1.0, smooth_z=1.0)
    plain = refine_labels(probs, annotation, [4], VALUES, fg, PLAIN)
    smooth = refine_labels(probs, annotation, [4], VALUES, fg, opt)
    assert plain[2, 2, 5] == 2 and smooth[2, 2, 5] == 0
    assert smooth[10, 10, 5] == 2 and (smooth[7:13, 7:13, 3:7] > 0).all()
    np.testing.assert_array_equal(smooth[..., 4], annotation[..., 4])
    np.testing.assert_array_equal(plain[..., 4], annotation[..., 4])
    assert not smooth[:, :1].any()
    # the input probabilities are not modified
    assert probs[2, 2, 5, 2] == pytest.approx(0.8)
    np.testing.assert_allclose(smooth_probabilities(probs, 1.0, 1.0).sum(-1), 1.0, atol=1e-5)


def test_bad_settings_are_refused():
    assert not check_refine(PLAIN)
    assert check_refine(PropagationOptions())  # the default: the watershed gate
    assert check_refine(replace(PLAIN, smooth_z=1.0))
    assert check_refine(replace(PLAIN, decision="regions"))
    with pytest.raises(InputError, match="decision"):
        check_refine(replace(PropagationOptions(), decision="vote"))
    with pytest.raises(InputError, match=">= 0"):
        check_refine(replace(PropagationOptions(), smooth_xy=-1.0))
    with pytest.raises(InputError, match="do not match"):
        refine_labels(np.zeros((4, 4, 4, 3), np.float32), np.zeros((4, 4, 4), np.int16), [0], VALUES,
                      np.ones((4, 4, 4), bool), PLAIN)


@pytest.fixture(scope="module")
def synth():
    images, label, _ = synthetic_tumour_case()
    ann, zs = simulate_annotation(label, 1)
    return images, label, ann, zs


def test_propagate_with_refinement(synth):
    images, label, ann, zs = synth
    base = replace(PLAIN, method="raw", device="cpu",
                              classifier=ClassifierOptions(n_models=2, max_epochs=6, hidden=(32, 16), batch_size=1024))
    plain = propagate(images, ann, base, keep_probabilities=True)
    p = plain.probabilities
    assert p.shape == label.shape + (len(plain.label_values),)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-4)
    np.testing.assert_array_equal(p[..., zs, :].argmax(-1), np.searchsorted(plain.label_values, ann[..., zs]))
    opt = replace(base, smooth_xy=1.0, smooth_z=2.0, decision="regions")
    refined = propagate(images, ann, opt)
    assert refined.probabilities is None and "refine" in refined.timings
    np.testing.assert_array_equal(refined.labels[..., zs], ann[..., zs])
    assert not np.array_equal(refined.labels, plain.labels)
    # the refinement of the kept probabilities is what propagate returns (then the same post-processing)
    from BrainDiffSegLib.propagation.propagate import keep_connected_to_annotation
    from BrainDiffSegLib.propagation.volume import normalize_volume

    fg = normalize_volume(images).foreground
    again = keep_connected_to_annotation(refine_labels(p, ann, zs, plain.label_values, fg, opt), ann)
    np.testing.assert_array_equal(again, refined.labels)
    d_plain, d_ref = region_dice(plain.labels, label, zs), region_dice(refined.labels, label, zs)
    assert d_ref["WT"] > 0.5 and d_plain["WT"] > 0.5
    with pytest.raises(InputError, match="decision"):
        propagate(images, ann, replace(base, decision="vote"))


def test_watershed_gate_removes_false_positives_outside_the_grown_tumour(synth):
    """Predicted tumour in normal tissue, touching the real tumour (so that the 3D connectivity post-processing would
    keep it), is removed by the gate; the real tumour is kept."""
    images, label, ann, zs = synth
    fg = images["flair"] > 0
    probs = np.zeros(label.shape + (4,), np.float32)
    probs[..., 0] = 1.0
    probs[label > 0] = np.eye(4, dtype=np.float32)[np.searchsorted(VALUES, label[label > 0])]
    t = np.argwhere(label > 0)
    (x0, y0, _), (x1, y1, _) = t.min(0), t.max(0)
    slab = np.zeros(label.shape, bool)
    slab[x1 + 1:x1 + 6, y0:y1 + 1, :] = True  # normal tissue next to the tumour, on every slice
    slab &= fg & (label == 0)
    slab[..., zs] = False  # the annotated slices keep the annotation anyway
    assert slab.sum() > 100
    probs[slab] = [0.1, 0.0, 0.9, 0.0]
    plain = refine_labels(probs, ann, zs, VALUES, fg, PLAIN)
    gated = refine_labels(probs, ann, zs, VALUES, fg, replace(PLAIN, gate="watershed", gate_margin=0.0), images)
    # the default margin of 2 voxels: a superset of the margin-0 gate, the slab still mostly removed (it is 5 deep)
    wide = refine_labels(probs, ann, zs, VALUES, fg, PropagationOptions(), images)
    assert not ((gated > 0) & (wide == 0)).any() and (wide[slab] == 0).mean() > 0.5
    # from the classifier's labels instead of the probabilities: the same result
    np.testing.assert_array_equal(refine_labels(None, ann, zs, VALUES, fg, PropagationOptions(), images,
                                                labels=plain), wide)
    assert (plain[slab] == 2).all()
    assert (gated[slab] == 0).mean() > 0.9
    assert region_dice(gated, label, zs)["WT"] > 0.9 > region_dice(plain, label, zs)["WT"]
    np.testing.assert_array_equal(gated[..., zs], ann[..., zs])
    with pytest.raises(InputError, match="needs one of the sequences"):
        refine_labels(probs, ann, zs, VALUES, fg, PropagationOptions(), {})
    with pytest.raises(InputError, match="gate"):
        check_refine(replace(PLAIN, gate="growcut"))


def test_refinement_experiment_end_to_end(tmp_path):
    """`refine_experiment` on a synthetic case folder: the cache phase (raw features, fast classifier, raw-mlp,
    growcut; reused from another cache) and every default variant of the evaluate phase, with its report."""
    pytest.importorskip("itk")
    from BrainDiffSegBench.refine_experiment import cache_case
    from BrainDiffSegBench.refine_variants import default_variants, evaluate
    from conftest import write_tumour_case

    folder, _, label = write_tumour_case(tmp_path / "Synth_001")
    opt = replace(PLAIN, method="raw", device="cpu",
                  classifier=ClassifierOptions(n_models=2, max_epochs=6, hidden=(32, 16), batch_size=1024))
    cache = tmp_path / "cache"
    cache.mkdir()
    cache_case(folder, [1], cache, opt)
    cached = np.load(cache / "Synth_001_k1.npz")
    assert cached["probs"].shape == label.shape + (4,) and cached["growcut"].shape == label.shape
    records = evaluate(cache, None, None, tmp_path / "out")
    assert [r["method"] for r in records] == default_variants()
    for r in records:
        assert set(r["dice"]) == {"WT", "TC", "ET"} and all(0.0 <= v <= 1.0 for v in r["dice"].values()), r
    by = {r["method"]: r["dice"] for r in records}
    assert by["gate-m2"]["WT"] > 0.5 and by["none"]["WT"] > 0.5
    text = (tmp_path / "out" / "README.md").read_text()
    assert all(f"| {v} |" in text for v in default_variants())
    # the hybrid variants read the cached raw-mlp probabilities
    assert by["raw-gate"]["WT"] > 0.5 and by["mix-0.5"]["WT"] > 0.5
    # a cache of another backbone reuses raw-mlp's and growcut's results instead of computing them again
    again = tmp_path / "cache2"
    again.mkdir()
    cache_case(folder, [1], again, opt, reuse=cache)
    second = np.load(again / "Synth_001_k1.npz")
    for key in ("raw_probs", "raw_labels", "growcut", "seconds_growcut"):
        np.testing.assert_array_equal(second[key], cached[key])


def test_margin_in_the_mask_box_equals_the_distance_transform_of_the_whole_volume():
    """`within_margin` computes the distance transform in the mask's box only: the same voxels as on the whole
    volume, for masks touching the border, several blobs, fractional margins and no mask at all."""
    from scipy import ndimage

    from BrainDiffSegLib.propagation.refine import within_margin

    rng = np.random.default_rng(3)
    for margin in (0.5, 1.0, 2.0, 2.7, 4.0):
        mask = rng.random((30, 26, 20)) > 0.995
        mask[0, 5, 3] = mask[29, 25, 19] = True  # on the border
        np.testing.assert_array_equal(within_margin(mask, margin), ndimage.distance_transform_edt(~mask) <= margin)
    assert not within_margin(np.zeros((5, 5, 5), bool), 2.0).any()


def test_subsampled_watershed_gate_stays_close_to_the_full_one(synth):
    """`gate_scale` 2 floods every other voxel in plane: the gate covers nearly the same voxels as the full-resolution
    one, and a tumour marker smaller than a cell still seeds the tumour side."""
    from BrainDiffSegLib.propagation.refine import watershed_gate, watershed_tumour

    images, label, ann, zs = synth
    full = watershed_gate(images, ann, zs, 2.0)
    half = watershed_gate(images, ann, zs, 2.0, scale=2)
    assert full.shape == half.shape and full.sum() > 0
    assert (full & half).sum() / (full | half).sum() > 0.85  # intersection over union
    one = np.zeros_like(ann)
    z = zs[0]
    x, y = np.argwhere(label[..., z] > 0)[0]
    one[..., z] = 0
    one[x, y, z] = 1  # a single painted tumour voxel; the rest of the slice background
    assert watershed_tumour(images, one, [z], scale=2)[x, y, z]


def test_the_gate_computes_box_and_gradient_once_per_volume_and_gives_the_same_mask(synth):
    """`watershed_gate`'s `cache` (the volume's `gate_cache`): the head's box, the flooded gradient and its parts are kept, a
    second gate with other markers reuses them (no new entries, the gradient not recomputed) and every mask equals
    the one computed without a cache."""
    from BrainDiffSegLib.propagation import refine
    from BrainDiffSegLib.preprocess import foreground_mask

    images, label, ann, zs = synth
    head = foreground_mask(images)
    cache = {}
    first = refine.watershed_gate(images, ann, zs, 2.0, head, cache=cache)
    np.testing.assert_array_equal(first, refine.watershed_gate(images, ann, zs, 2.0, head))
    assert first.any() and sorted(k[0] for k in cache) == ["box", "gradient", "parts"]
    kept = dict(cache)
    other = np.where(np.arange(ann.shape[2]) == zs[0], 0, ann)  # the first slice painted without tumour
    fewer = zs[:1]
    calls = []
    original = refine.gate_gradient
    refine.gate_gradient = lambda region: calls.append(1) or original(region)
    try:
        again = refine.watershed_gate(images, other, fewer, 2.0, head, cache=cache)
    finally:
        refine.gate_gradient = original
    assert not calls and cache.keys() == kept.keys() and all(cache[k] is kept[k] for k in kept)
    np.testing.assert_array_equal(again, refine.watershed_gate(images, other, fewer, 2.0, head))
    assert not again.any()  # other markers (no tumour), another gate from the same cache


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_flooding_gap_by_gap_equals_one_watershed_of_the_volume(seed):
    """`flood_between_slices` gives the voxels of scikit-image's watershed of the whole volume with the complete
    slices as markers - on a coarsely quantised gradient (many ties off the marked slices: the order of the flood
    matters), for marked slices inside, at the ends and next to each other, added one at a time through the kept
    parts as an update adds them (a changed slice's markers flood its parts again). The marked slices' own values
    do not tie: scikit-image gives every marker the same age, so among markers of equal value its heap's layout
    decides, and that layout differs between a part and the whole volume (on such ties both are watersheds of the
    markers; the gradient of an MR head has none inside the head: identical masks on the tuning and test cases,
    `scripts/gate_parts.py`)."""
    from skimage.segmentation import watershed

    from BrainDiffSegLib.propagation.refine import flood_between_slices

    rng = np.random.default_rng(seed)
    grad = np.round(ndimage.gaussian_filter(rng.random((23, 19, 30)), 1.0) * 8)
    order = [int(rng.integers(5, 25)), 0, 29, int(rng.integers(1, 28)), 14, 15]
    grad[..., order] += rng.random(grad[..., order].shape) * 1e-3  # the markers' values distinct
    annotation = np.zeros(grad.shape, np.int16)
    blob = ndimage.gaussian_filter(rng.random(grad.shape), 3.0)
    annotation[blob > np.quantile(blob, 0.7)] = 2
    kept = {}
    marked = []
    for z in order:
        marked = sorted(set(marked) | {z})
        markers = np.zeros(grad.shape, np.int32)
        markers[..., marked] = np.where(annotation[..., marked] > 0, 2, 1)
        expected = watershed(grad, markers) == 2
        np.testing.assert_array_equal(flood_between_slices(grad, annotation, marked, kept), expected)
        np.testing.assert_array_equal(flood_between_slices(grad, annotation, marked), expected)
        assert len(kept) == len(set([0, 29] + marked)) - 1
    changed = annotation.copy()
    changed[..., 14] = 0  # slice 14 repainted without tumour: its two parts flood again
    markers = np.zeros(grad.shape, np.int32)
    markers[..., marked] = np.where(changed[..., marked] > 0, 2, 1)
    np.testing.assert_array_equal(flood_between_slices(grad, changed, marked, kept), watershed(grad, markers) == 2)
    assert not flood_between_slices(grad, annotation, [], kept).any()  # no marker: nothing floods


# ------------------------------------------------------------------------------------------ the gate for strokes

def test_classifier_core_keeps_the_confident_tumour_connected_to_the_seeds():
    """`classifier_core`: confident tumour labels, eroded by a voxel (a 1-voxel bridge to a false positive is cut),
    in components holding a tumour seed; a low-probability or unconnected region and the seeds themselves are out."""
    from BrainDiffSegLib.propagation.refine import classifier_core

    shape = (40, 20, 10)
    labels = np.zeros(shape, np.int16)
    tumour = np.zeros(shape, np.float32)
    seeded = np.zeros(shape, np.int16)
    labels[2:12, 4:14, 2:8], tumour[2:12, 4:14, 2:8] = 2, 0.95  # the tumour, seeded
    seeded[6, 8, 4] = 2
    labels[12:20, 9, 5], tumour[12:20, 9, 5] = 2, 0.95  # a 1-voxel bridge to
    labels[20:28, 4:14, 2:8], tumour[20:28, 4:14, 2:8] = 2, 0.95  # a confident false positive
    labels[30:38, 4:14, 2:8], tumour[30:38, 4:14, 2:8] = 2, 0.6  # an unsure one next to nothing
    core = classifier_core(labels, tumour, seeded)
    assert core[3:11, 5:13, 3:7].sum() == core[3:11, 5:13, 3:7].size - 1  # the tumour eroded, less its seed
    assert not core[6, 8, 4] and not core[12:, ...].any()
    # the same false positive joined by a thick bridge is part of the core (the watershed then decides)
    labels[12:20, 7:11, 3:7], tumour[12:20, 7:11, 3:7] = 2, 0.95
    assert classifier_core(labels, tumour, seeded)[22:26, 6:12, 3:7].all()
    assert not classifier_core(labels, np.minimum(tumour, 0.8), seeded)[:, :, :].any()  # nothing confident


def test_core_gate_keeps_the_tumour_the_strokes_background_floods():
    """Strokes on one slice: the Background loop around its small tumour lies inside the larger tumour of the slices
    above; in a tumour with an inner edge (core in edema) the background side of the plain watershed floods the
    edema there. With the classifier's confident tumour as more tumour markers (`core_gate`, the default for
    strokes) the edema stays; a far false positive of the classifier stays out in both."""
    from BrainDiffSegLib.propagation.refine import core_gate, watershed_gate

    shape, z0 = (48, 48, 16), 4
    xx, yy, zz = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    r = np.hypot(xx - 24, yy - 24)
    radius = np.where(zz <= z0, 5, 14)  # the tumour widens above the painted slice
    tumour_true = (r <= radius) & (zz >= 2) & (zz <= 13)
    core_true = tumour_true & (r <= 5)
    flair = np.full(shape, 200.0, np.float32)
    flair[tumour_true] = 600.0  # edema
    flair[core_true] = 1000.0  # the core, an inner edge
    head = np.ones(shape, bool)
    head[[0, -1], :, :] = head[:, [0, -1], :] = False
    seeded = np.zeros(shape, np.int16)
    known = np.zeros(shape, bool)
    seeded[22:27, 24, z0] = 1  # a tumour stroke
    loop = (np.abs(r - 9) < 0.6) & (zz == z0)  # Background 4 voxels outside the painted slice's tumour
    far = (np.abs(xx - 6) < 1) & (zz == z0) & head
    known |= (seeded > 0) | loop | far
    markers = known | ~head
    labels = np.where(tumour_true, 2, 0).astype(np.int16)  # the classifier: right, plus a far false positive
    fp = (np.hypot(xx - 42, yy - 42) <= 3) & (zz >= 6) & (zz <= 10)
    labels[fp] = 2
    prob = np.where(labels > 0, 0.97, 0.02).astype(np.float32)
    plain = watershed_gate({"flair": flair}, seeded, [], 0.0, head, 1, markers)
    gate = core_gate({"flair": flair}, labels, prob, seeded, markers, 0.0, head)
    edema = tumour_true & ~core_true & (zz > z0)
    assert plain[edema].mean() < 0.5  # the plain watershed loses most of the edema above the strokes
    assert gate[edema].mean() > 0.95 and gate[tumour_true].mean() > 0.95
    assert not gate[fp].any() and not plain[fp].any()


def test_refine_labels_computes_the_core_gate_from_the_probabilities_when_not_given():
    """A direct caller of `refine_labels` with `gate="watershed-core"` and the class probabilities, no gate: the
    labels equal those gated by `core_gate` on the same labels and P(tumour); without probabilities it is refused."""
    from BrainDiffSegLib.propagation.refine import core_gate

    images, label, head = synthetic_tumour_case()
    known = np.zeros(label.shape, bool)
    z = int(np.argmax((label > 0).sum((0, 1))))
    known[..., z] = head[..., z]
    seeded = np.where(known, label, 0).astype(np.int16)
    probs = np.zeros(label.shape + (4,), np.float32)
    probs[..., 0] = 1.0
    probs[label > 0] = np.eye(4, dtype=np.float32)[np.searchsorted(VALUES, label[label > 0])] * 0.8 + 0.05
    probs[(label == 0) & head & (np.arange(label.shape[0])[:, None, None] < 3)] = [0.05, 0.0, 0.95, 0.0]  # far FP
    opt = replace(PLAIN, gate="watershed-core", gate_margin=1.0)
    out = refine_labels(probs, seeded, [z], VALUES, head, opt, images, known=known | ~head)
    labels = np.asarray(VALUES, np.int16)[probs.argmax(-1)]
    labels[~head] = 0
    gate = core_gate(images, labels, 1.0 - probs[..., 0], seeded, known | ~head, 1.0, head)
    expected = np.where(gate, labels, 0)
    expected[known] = seeded[known]
    np.testing.assert_array_equal(out, expected)
    assert out[label > 0].astype(bool).mean() > 0.9
    with pytest.raises(InputError, match="probabilities"):
        refine_labels(None, seeded, [z], VALUES, head, opt, images, labels=labels, known=known | ~head)


def _spheres(shape=(48, 48, 24), core_radius=8.0, tumour_radius=14.0):
    """A T1ce with a bright core sphere in a tumour sphere (edema, darker), and the true labels (core 4, edema 2)."""
    xx, yy, zz = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    r = np.sqrt((xx - 24) ** 2 + (yy - 24) ** 2 + ((zz - 12) * 1.5) ** 2)
    truth = np.where(r <= tumour_radius, 2, 0).astype(np.int16)
    truth[r <= core_radius] = 4
    t1ce = np.where(truth == 4, 1200.0, np.where(truth == 2, 500.0, 400.0)).astype(np.float32)
    return r, truth, {"t1ce": t1ce}


def test_core_boundary_moves_a_spilled_or_shrunk_core_to_the_t1ce_edge():
    """`core_boundary`: a core predicted 2 voxels too wide (spilled into the edema) or 2 voxels too narrow is
    redrawn on the T1ce edge within the band; the whole tumour and every known voxel keep their labels; gained
    core takes the class of `core_choice`; band 0, no T1ce or no edema: unchanged."""
    from BrainDiffSegLib.propagation.refine import core_boundary

    r, truth, images = _spheres()
    core_true = truth == 4
    seeded = np.zeros(truth.shape, np.int16)
    known = np.zeros(truth.shape, bool)
    known[22:27, 24, 12] = True  # a core stroke
    seeded[known] = 4
    known[36, 20:29, 12], seeded[36, 20:29, 12] = True, 2  # an edema stroke
    choice = np.full(truth.shape, 4, np.int16)

    def dice(labels):
        core = labels == 4
        return 2 * (core & core_true).sum() / (core.sum() + core_true.sum())

    for radius in (10.0, 6.0):  # spilled, shrunk
        labels = np.where(truth > 0, 2, 0).astype(np.int16)
        labels[r <= radius] = 4
        labels[known] = seeded[known]
        out = core_boundary(images, labels, seeded, known, choice, 2)
        assert dice(out) > 0.93 and dice(out) > dice(labels) + 0.1, (radius, dice(labels), dice(out))
        np.testing.assert_array_equal(out > 0, labels > 0)  # the whole tumour does not move
        np.testing.assert_array_equal(out[known], labels[known])
        assert set(np.unique(out)) <= {0, 2, 4}
        np.testing.assert_array_equal(core_boundary(images, labels, seeded, known, choice, 0), labels)
        np.testing.assert_array_equal(core_boundary({"flair": images["t1ce"]}, labels, seeded, known, choice, 2),
                                      labels)
        no_edema = np.where(labels == 2, 0, labels)
        np.testing.assert_array_equal(core_boundary(images, no_edema, seeded, known, choice, 2), no_edema)
    # gained core takes the chosen class
    labels = np.where(truth > 0, 2, 0).astype(np.int16)
    labels[r <= 6.0] = 1
    out = core_boundary(images, labels, seeded, known, np.full(truth.shape, 1, np.int16), 2)
    gained = (labels == 2) & (out != 2)
    assert set(np.unique(out[gained])) == {1}
    assert (gained & (r > 6.5) & (r <= 8.0)).sum() > 0.7 * ((r > 6.5) & (r <= 8.0)).sum()
    assert not (gained & (r > 9.0)).any()


def test_propagate_redraws_the_core_border_when_asked():
    """In `propagate`, `core_band` N (off by default) gives `core_boundary` applied to the run without it (the same
    classifier, its more probable core class: what `scripts/core_band_variants.py` evaluates), with strokes as with
    complete slices; LGG-like 0/1 labels are untouched."""
    from BrainDiffSegLib.constants import BACKGROUND_LABEL
    from BrainDiffSegLib.propagation.refine import core_boundary, core_choice
    from BrainDiffSegLib.strokes import simulate_strokes

    images, label, head = synthetic_tumour_case()
    opt = replace(PropagationOptions(method="raw"), classifier=replace(ClassifierOptions(), n_models=2, max_epochs=4))
    assert opt.core_band == 0
    strokes, _ = simulate_strokes(label, head, 1, "axial")
    slices, _ = simulate_annotation(label, 2)
    for mode, ann in (("seeds", strokes), ("slices", slices)):
        run = replace(opt, annotation_mode=mode)
        banded = propagate(images, ann, replace(run, core_band=2))
        off = propagate(images, ann, run, keep_probabilities=True)
        choice = core_choice(off.probabilities, off.label_values)
        p1, p4 = (off.probabilities[..., off.label_values.index(v)] for v in (1, 4))
        np.testing.assert_array_equal(choice, np.where(p1 >= p4, 1, 4))
        if mode == "seeds":
            known, seeded = ann > 0, np.where(ann == BACKGROUND_LABEL, 0, ann).astype(off.labels.dtype)
        else:
            known = np.zeros(ann.shape, bool)
            known[..., off.annotated_slices] = True
            seeded = ann.astype(off.labels.dtype)
        expected = core_boundary(images, off.labels, seeded, known, choice, 2)
        np.testing.assert_array_equal(banded.labels, expected)
        if mode == "seeds":
            assert not np.array_equal(expected, off.labels)  # it did something here
    mask = (label > 0).astype(np.uint8)
    ann01, _ = simulate_strokes(mask, head, 1, "axial")
    seeds = replace(opt, annotation_mode="seeds")
    np.testing.assert_array_equal(propagate(images, ann01, replace(seeds, core_band=3)).labels,
                                  propagate(images, ann01, seeds).labels)
