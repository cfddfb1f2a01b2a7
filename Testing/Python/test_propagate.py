"""Patient-level propagation: a few annotated slices -> a label volume, with the raw (intensity) features and with
the diffusion backbone; post-processing, input validation, cancellation and progress; one end-to-end test on real
BraTS data."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from BrainDiffSegLib.propagation.classifier import ClassifierOptions
from BrainDiffSegLib.errors import CancelledError, CheckpointError, InputError
from BrainDiffSegLib.propagation.features import FeatureSpec
from BrainDiffSegLib.propagation.propagate import PropagationOptions, PropagationResult, keep_connected_to_annotation, propagate
from BrainDiffSegLib.protocol import region_dice, simulate_annotation
from conftest import TUMOUR_CONTRAST, TUMOUR_SHAPE, synthetic_tumour_case

SHAPE = TUMOUR_SHAPE
CONTRAST = TUMOUR_CONTRAST
FAST = ClassifierOptions(n_models=2, max_epochs=6, hidden=(32, 16), batch_size=1024)


@pytest.fixture(scope="module")
def synth():
    images, label, head = synthetic_tumour_case()
    ann, zs = simulate_annotation(label, 3)
    return images, label, head, ann, zs


def _raw_options(**kw):
    return replace(PropagationOptions(method="raw", device="cpu", classifier=FAST), **kw)


@pytest.fixture(scope="module")
def raw_result(synth):
    images, _, _, ann, _ = synth
    stages = []
    res = propagate(images, ann, _raw_options(), progress=lambda s, f: stages.append((s, f)))
    return res, stages


@pytest.fixture(scope="module")
def diffusion_result(synth, tiny_checkpoint):
    images, _, _, ann, _ = synth
    # few training pixels on the 32 x 32 model grid (about 1,700): small batches, so that the MLPs get enough steps
    opt = PropagationOptions(method="diffusion", checkpoint=str(tiny_checkpoint), device="cpu",
                             classifier=ClassifierOptions(n_models=2, hidden=(32, 16), batch_size=128),
                             features=FeatureSpec(blocks=(1, 2), timesteps=(50, 200)), batch_size=8)
    return propagate(images, ann, opt)


# ------------------------------------------------------------------------------------------ synthetic case

def test_synthetic_annotation(synth):
    _, label, _, ann, zs = synth
    assert len(zs) == 3 and set(np.unique(ann)) == {0, 1, 2, 4}
    assert [z for z in range(SHAPE[-1]) if ann[..., z].any()] == zs


def _check_result(res: PropagationResult, synth):
    images, label, head, ann, zs = synth
    assert isinstance(res, PropagationResult)
    assert res.labels.shape == label.shape and res.labels.dtype == np.int16
    assert res.entropy.shape == res.disagreement.shape == label.shape
    assert res.annotated_slices == zs
    assert res.label_values == [0, 1, 2, 4]
    for z in zs:  # annotated slices copied exactly
        np.testing.assert_array_equal(res.labels[..., z], ann[..., z])
        assert not res.entropy[..., z].any()
    assert set(np.unique(res.labels)) <= {0, 1, 2, 4}
    assert not res.labels[~head].any()  # background outside the head
    assert np.all((res.entropy >= 0) & (res.entropy <= 1 + 1e-5))
    assert np.all((res.disagreement >= 0) & (res.disagreement <= 1 + 1e-5))
    assert set(res.timings) >= {"load", "features_annotated", "train_classifier", "predict", "total"}
    assert res.device == "cpu"


def test_raw_propagation(raw_result, synth):
    res, _ = raw_result
    _check_result(res, synth)
    _, label, _, _, zs = synth
    d = region_dice(res.labels, label, zs)
    assert d["WT"] > 0.8, d
    assert d["TC"] > 0.6, d
    # tumour was predicted on (nearly) every non-annotated slice that has tumour, not just copied
    tumour_slices = [z for z in range(SHAPE[-1]) if label[..., z].any() and z not in zs]
    assert sum(res.labels[..., z].any() for z in tumour_slices) >= len(tumour_slices) - 2


def test_diffusion_propagation(diffusion_result, synth):
    _check_result(diffusion_result, synth)
    _, label, _, _, zs = synth
    # an untrained tiny backbone (random features) plus the intensities, on a 32 x 32 grid: still finds the tumour
    assert region_dice(diffusion_result.labels, label, zs)["WT"] > 0.75


def test_hybrid_with_an_intensity_ensemble(synth, tiny_checkpoint):
    """`intensity_weight` (the hybrid): a second ensemble on the intensity columns alone, mixed into the diffusion
    ensemble's probabilities; it finds the tumour, its probabilities differ from the diffusion ensemble's alone, it
    changes nothing for the raw method, and a weight outside [0, 1) fails before any work."""
    images, label, _, ann, zs = synth
    opt = PropagationOptions(method="diffusion", checkpoint=str(tiny_checkpoint), device="cpu",
                             classifier=ClassifierOptions(n_models=2, hidden=(32, 16), batch_size=128),
                             features=FeatureSpec(blocks=(1, 2), timesteps=(50,)), batch_size=8)
    assert opt.intensity_weight == 0.5  # the product's default (docs/results section 11)
    plain = propagate(images, ann, replace(opt, intensity_weight=0.0), keep_probabilities=True)
    mixed = propagate(images, ann, opt, keep_probabilities=True)
    assert region_dice(mixed.labels, label, zs)["WT"] > 0.75
    assert np.abs(mixed.probabilities - plain.probabilities).max() > 0.05
    raw = propagate(images, ann, _raw_options(), keep_probabilities=True)
    raw_mixed = propagate(images, ann, _raw_options(intensity_weight=0.5), keep_probabilities=True)
    assert np.array_equal(raw.probabilities, raw_mixed.probabilities)
    with pytest.raises(InputError, match="intensity_weight"):
        propagate(images, ann, replace(opt, intensity_weight=1.0))


def test_least_certain_slices(raw_result, synth):
    res, _ = raw_result
    zs = synth[4]
    ranked = res.least_certain_slices(5)
    assert 1 <= len(ranked) <= 5
    assert all(z not in zs for z, _ in ranked)
    scores = [s for _, s in ranked]
    assert scores == sorted(scores, reverse=True)
    assert all(0 <= s <= 1 for s in scores)
    everything = res.least_certain_slices(SHAPE[-1])
    assert {z for z, _ in everything}.isdisjoint(zs)
    assert everything[:5] == ranked


def test_progress_increases_to_one(raw_result):
    _, stages = raw_result
    fracs = [f for _, f in stages]
    assert fracs[0] == 0.0 and fracs[-1] == 1.0
    assert all(b >= a for a, b in zip(fracs, fracs[1:])), stages
    assert len(set(fracs)) >= 4
    assert stages[-1][0] == "done"
    assert {"training classifier", "predicting"} <= {s for s, _ in stages}


def test_output_uses_the_annotation_label_values(synth):
    """Labels come from the annotation's values, whatever they are: a 0/3 annotation gives a 0/3 volume."""
    images, label, head, ann, zs = synth
    ann3 = np.where(ann > 0, 3, 0).astype(np.uint8)
    res = propagate(images, ann3, _raw_options(classifier=replace(FAST, n_models=1)))
    assert res.label_values == [0, 3]
    assert set(np.unique(res.labels)) == {0, 3}
    assert region_dice(res.labels, label > 0, zs)["WT"] > 0.8


def test_propagation_with_a_subset_of_sequences(synth):
    images, label, _, ann, zs = synth
    sub = {r: images[r] for r in ("t1ce", "flair")}
    res = propagate(sub, ann, _raw_options(classifier=replace(FAST, n_models=1)))
    assert res.labels.shape == label.shape
    assert region_dice(res.labels, label, zs)["WT"] > 0.8


def test_propagation_is_reproducible(synth):
    images, _, _, ann, _ = synth
    opt = _raw_options(classifier=replace(FAST, n_models=1, max_epochs=2))
    a = propagate(images, ann, opt)
    b = propagate(images, ann, opt)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.entropy, b.entropy)


# ------------------------------------------------------------------------------------------ post-processing

def test_keep_connected_to_annotation_removes_islands_not_connected_to_the_annotation():
    ann = np.zeros((20, 20, 10), np.int16)
    ann[5:9, 5:9, 4] = 2
    ann[6:8, 6:8, 4] = 1
    pred = np.zeros_like(ann)
    pred[4:10, 4:10, 2:7] = 2  # the tumour, through the annotated slice
    pred[6:8, 6:8, 3:6] = 1
    pred[15:18, 15:18, 7:9] = 4  # an island far away
    pred[0, 19, 0] = 1  # a single stray voxel
    out = keep_connected_to_annotation(pred, ann)
    assert out.dtype == pred.dtype and out.shape == pred.shape
    assert not out[15:18, 15:18, 7:9].any() and out[0, 19, 0] == 0
    expected = pred.copy()
    expected[15:18, 15:18, 7:9] = 0
    expected[0, 19, 0] = 0
    np.testing.assert_array_equal(out, expected)  # the connected tumour keeps all its labels
    # an island touching annotated tumour in another slice is kept
    ann[15:17, 15:17, 8] = 4
    out = keep_connected_to_annotation(pred, ann)
    assert (out[15:18, 15:18, 7:9] == 4).all()
    # nothing predicted: unchanged
    empty = np.zeros_like(pred)
    np.testing.assert_array_equal(keep_connected_to_annotation(empty, ann), empty)


def test_keep_connected_to_annotation_in_the_tumours_box_equals_the_whole_volume():
    """The islands are found in the tumour's bounding box: the same labels as labelling the whole volume, with
    islands on the volume's faces and corners and annotated tumour outside the predicted tumour."""
    from scipy import ndimage
    rng = np.random.default_rng(3)
    for trial in range(20):
        shape = tuple(int(n) for n in rng.integers(6, 24, 3))
        pred = (ndimage.uniform_filter(rng.random(shape), 3) > 0.55) * rng.choice([1, 2, 4], shape)
        pred = pred.astype(np.int16)
        ann = np.where(rng.random(shape) > 0.97, rng.choice([0, 1, 2, 4], shape), 0).astype(np.int16)
        comp, _ = ndimage.label(pred > 0, structure=ndimage.generate_binary_structure(3, 1))
        ids = np.unique(comp[(ann > 0) & (pred > 0)])
        expected = np.where(np.isin(comp, ids[ids > 0]), pred, 0)
        np.testing.assert_array_equal(keep_connected_to_annotation(pred, ann), expected, err_msg=f"trial {trial}")


def test_keep_connected_to_annotation_in_propagation(synth):
    """A bright tumour-like blob far from the annotated tumour is predicted as tumour without post-processing and
    removed with it."""
    images, label, head, ann, zs = synth
    images = {r: v.copy() for r, v in images.items()}
    x, y, z = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    blob = (((x - 18) / 4) ** 2 + ((y - 40) / 4) ** 2 + ((z - 2) / 1.6) ** 2) < 1  # below the annotated slices
    assert not (blob & (label > 0)).any() and head[blob].all() and blob.sum() > 50
    for role, c in CONTRAST.items():
        images[role][blob] = c[1] * 1000.0  # edema-like
    opt = _raw_options(classifier=replace(FAST, n_models=1), gate="none")  # the 3D gate would remove it too
    raw = propagate(images, ann, replace(opt, postprocess=False))
    assert raw.labels[blob].astype(bool).mean() > 0.5
    post = propagate(images, ann, opt)
    assert not post.labels[blob].any()
    assert region_dice(post.labels, label, zs)["WT"] >= region_dice(raw.labels, label, zs)["WT"]
    gated = propagate(images, ann, replace(opt, postprocess=False, gate="watershed"))  # the default gate alone
    assert gated.labels[blob].astype(bool).mean() < 0.2 and "refine" in gated.timings


# ------------------------------------------------------------------------------------------ bad input

def _small_case():
    images, label, _ = synthetic_tumour_case((32, 32, 12))
    return images, simulate_annotation(label, 2)[0]


@pytest.mark.parametrize("problem,match", [
    ("annotation_shape", "annotation has shape"),
    ("no_tumour", "no tumour label"),
    ("no_background", "no background"),
    ("shapes", "different shapes"),
    ("nan", "NaN"),
    ("inf", "infinite"),
    ("constant", "constant"),
    ("role", "roles"),
    ("no_images", "roles"),
    ("method", "Unknown propagation method"),
])
def test_bad_input(problem, match):
    images, ann = _small_case()
    opt = _raw_options()
    if problem == "annotation_shape":
        ann = ann[:, :, :-1]
    elif problem == "no_tumour":
        ann = np.zeros_like(ann)
    elif problem == "no_background":
        zs = [z for z in range(ann.shape[-1]) if ann[..., z].any()]
        ann[..., zs] = 2
    elif problem == "shapes":
        images["t2"] = images["t2"][:, :, :-1]
    elif problem == "nan":
        images["flair"][3, 3, 3] = np.nan
    elif problem == "inf":
        images["t1"][3, 3, 3] = np.inf
    elif problem == "constant":
        images["t1ce"] = np.zeros_like(images["t1ce"])
    elif problem == "role":
        images["dwi"] = images.pop("t2")
    elif problem == "no_images":
        images = {}
    elif problem == "method":
        opt = replace(opt, method="unet")
    with pytest.raises(InputError, match=match) as info:
        propagate(images, ann, opt)
    msg = str(info.value)
    if problem == "annotation_shape":
        assert "(32, 32, 11)" in msg and "(32, 32, 12)" in msg
    if problem in ("nan", "inf", "constant"):
        assert {"nan": "'flair'", "inf": "'t1'", "constant": "'t1ce'"}[problem] in msg
    if problem == "role":
        assert "dwi" in msg
    if problem == "method":
        assert "'unet'" in msg and "raw" in msg


def test_missing_checkpoint(tmp_path):
    images, ann = _small_case()
    opt = PropagationOptions(method="diffusion", checkpoint=str(tmp_path / "nowhere"), device="cpu", classifier=FAST)
    with pytest.raises(CheckpointError, match="not found") as info:
        propagate(images, ann, opt)
    assert "nowhere" in str(info.value)


# ------------------------------------------------------------------------------------------ cancellation

def test_cancellation_after_the_first_check(synth):
    images, _, _, ann, _ = synth
    calls = []

    def cancelled():
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(CancelledError):
        propagate(images, ann, _raw_options(), cancelled=cancelled)
    assert len(calls) == 2


def test_cancellation_during_prediction(synth):
    images, _, _, ann, _ = synth
    stages = []
    n = {"calls": 0}

    def cancelled():  # False until the prediction loop is under way
        n["calls"] += 1
        return any(s == "predicting" for s, _ in stages)

    opt = _raw_options(classifier=replace(FAST, n_models=1, max_epochs=1), batch_size=4)
    with pytest.raises(CancelledError):
        propagate(images, ann, opt, progress=lambda s, f: stages.append((s, f)), cancelled=cancelled)
    assert stages[-1][0] == "predicting" and stages[-1][1] < 1.0


# ------------------------------------------------------------------------------------------ real data

def _reduced_real_case(data_root: Path):
    from BrainDiffSegLib.io import load_case

    folder = data_root / "brats2021" / "BraTS2021_00006"
    if not folder.is_dir():
        pytest.skip(f"{folder} not available")
    case = load_case(folder)
    label = case.label
    xs, ys, zs = np.nonzero(label)
    cx, cy = int(xs.mean()), int(ys.mean())
    X, Y, Z = label.shape
    x0 = int(np.clip(cx - 60, 0, X - 120))
    y0 = int(np.clip(cy - 60, 0, Y - 120))
    z0, z1 = max(0, int(zs.min()) - 8), min(Z, int(zs.max()) + 9)
    crop = (slice(x0, x0 + 120), slice(y0, y0 + 120), slice(z0, z1))
    images = {r: np.ascontiguousarray(v[crop]) for r, v in case.images.items()}
    assert len(images) == 4
    return images, np.ascontiguousarray(label[crop])


def test_real_case_raw(data_root):
    images, label = _reduced_real_case(data_root)
    ann, zs = simulate_annotation(label, 3)
    res = propagate(images, ann, PropagationOptions(method="raw", device="cpu",
                                                    classifier=ClassifierOptions(n_models=2)))
    assert res.labels.shape == label.shape
    d = region_dice(res.labels, label, zs)
    assert d["WT"] > 0.85, d
    assert d["TC"] > 0.75, d


def test_real_case_diffusion(data_root):
    from BrainDiffSegLib.resources import default_checkpoint

    ckpt = default_checkpoint()
    if not (Path(ckpt) / "model.safetensors").is_file():
        pytest.skip(f"no backbone at {ckpt} (set BRAINDIFFSEG_MODEL)")
    images, label = _reduced_real_case(data_root)
    ann, zs = simulate_annotation(label, 3)
    res = propagate(images, ann, PropagationOptions(method="diffusion", device="cpu",
                                                    classifier=ClassifierOptions(n_models=2)))
    assert res.labels.shape == label.shape
    d = region_dice(res.labels, label, zs)
    assert d["WT"] > 0.85, d
