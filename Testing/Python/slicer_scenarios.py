"""The Slicer module's end-to-end scenarios as plain functions of a `BrainDiffSegLogic` (its scene is used), shared
by pytest (`test_slicer_logic.py`) and the module's self-test (`BrainDiffSeg.BrainDiffSegTest`, inside Slicer or
under slicer-core). Failures raise AssertionError; missing engine packages or data raise `unittest.SkipTest`
(a skip for both unittest and pytest). numpy only at import; the engine is imported inside the functions.
"""
from __future__ import annotations

import unittest
from pathlib import Path

import numpy as np


def _quick_cpu():
    from dataclasses import replace

    from BrainDiffSegLib.options import preset

    return replace(preset("quick"), device="cpu")  # raw features, 2 small MLPs


def _require_engine():
    from BrainDiffSegSlicer.install import missingPackages

    missing = missingPackages()
    if missing:
        raise unittest.SkipTest(f"BrainDiffSeg's engine needs {', '.join(missing)}")


def synthetic_case(logic):
    """A small synthetic case in the logic's scene: T1ce and FLAIR volumes (an ellipsoid head in a 48 x 48 x 20 grid,
    IJK with the axial axis last) with an edema (2) around an enhancing core (4). Returns (volumes by role, the
    truth as an engine array, the head mask)."""
    shape = (48, 48, 20)  # IJK, axial last
    x, y, z = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    head = ((x - 24) / 20) ** 2 + ((y - 24) / 18) ** 2 + ((z - 10) / 30) ** 2 < 1
    r = np.sqrt(((x - 28) / 8) ** 2 + ((y - 22) / 8) ** 2 + ((z - 10) / 5.5) ** 2)
    truth = np.zeros(shape, np.int16)
    truth[(r < 1) & head] = 2
    truth[(r < 0.45) & head] = 4
    rng = np.random.default_rng(0)
    ijkToRas = np.array([[-1.0, 0, 0, 20], [0, -1.0, 0, 30], [0, 0, 2.0, -15], [0, 0, 0, 1]])
    volumes = {}
    for role, (edema, enhancing) in {"t1ce": (0.9, 2.0), "flair": (2.0, 1.5)}.items():
        img = np.where(head, 1000.0, 0.0) + 40.0 * rng.standard_normal(shape)
        img[truth == 2] *= edema
        img[truth == 4] *= enhancing
        img[~head] = 0
        volumes[role] = logic.addVolumeFromArray(logic.fromEngineArray(img.astype(np.float32), 2), ijkToRas,
                                                 f"synthetic {role}")
    return volumes, truth, head


def propagate_synthetic(logic) -> None:
    """Propagation of a small synthetic case (two sequences, edema + enhancing painted on 2 slices) through
    `logic.propagate` with the quick 'raw' features: a new segmentation with the BraTS names, Dice > 0.8."""
    _require_engine()
    from BrainDiffSegLib.protocol import dice, simulate_annotation

    scene = logic.scene
    volumes, truth, _ = synthetic_case(logic)
    shape = truth.shape
    ann, zs = simulate_annotation(truth, 2)
    segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Painted")
    segmentationNode.CreateDefaultDisplayNodes()
    segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumes["flair"])
    for value, name in ((2, "Edema"), (4, "Enhancing tumour")):
        sid = segmentationNode.GetSegmentation().AddEmptySegment("", name)
        logic.setSegmentFromArray(segmentationNode, sid, logic.fromEngineArray(ann == value, 2), volumes["flair"])
    before = scene.GetNumberOfNodes()

    out = logic.propagate(volumes, segmentationNode, _quick_cpu())
    assert out.GetName() == "Painted propagated", out.GetName()
    assert out.GetScene() is scene and scene.GetNumberOfNodes() > before
    names = [out.GetSegmentation().GetSegment(s).GetName() for s in out.GetSegmentation().GetSegmentIDs()]
    assert names == ["Edema", "Enhancing tumour"], names
    labels, _, _ = logic.labelArrayFromSegmentation(out, volumes["flair"])
    pred = logic.toEngineArray(labels, 2)
    keep = np.ones(shape[-1], bool)
    keep[zs] = False
    score = dice(pred[..., keep] > 0, truth[..., keep] > 0)
    assert score > 0.8, score


def synthetic_strokes(truth, head, background_label: int):
    """Strokes a user would paint on `synthetic_case` (engine layout, 0 unknown, `background_label` background):
    lines 3 voxels wide of the truth's classes on one sagittal slice (I = 28) and one coronal slice (J = 24) through
    the tumour, one axial line through it, and a Background-only line on two axial slices without tumour ('no
    tumour here'); inside the head only."""
    strokes = np.zeros(truth.shape, np.int16)
    lines = [(28, slice(None), slice(9, 12)), (28, slice(19, 22), slice(None)),  # sagittal slice I = 28
             (slice(None), 24, slice(8, 11)), (slice(29, 32), 24, slice(None)),  # coronal slice J = 24
             (slice(None), slice(21, 24), 10),  # axial slice K = 10
             (slice(None), slice(20, 23), 2), (slice(None), slice(20, 23), 18)]  # no tumour there
    for line in lines:
        strokes[line] = np.where(truth[line] > 0, truth[line], background_label)
    strokes[~head] = 0
    return strokes


def propagate_seeds_synthetic(logic) -> None:
    """Seeds (strokes) on the synthetic case (`synthetic_strokes`: sagittal, coronal and axial strokes, Background
    strokes on slices without tumour), painted into the BraTS segments plus Background: the Automatic annotation
    mode picks seeds, the propagation (quick 'raw' features) keeps every painted voxel's label (Background -> no
    segment), WT Dice > 0.8 on the unpainted voxels, and the painted segmentation is left unchanged."""
    _require_engine()
    from dataclasses import replace

    from BrainDiffSegLib.constants import BACKGROUND_LABEL
    from BrainDiffSegLib.protocol import dice

    volumes, truth, head = synthetic_case(logic)
    strokes = synthetic_strokes(truth, head, BACKGROUND_LABEL)
    painted = logic.paintTumourSegments(volumes["flair"], strokes, backgroundLabel=BACKGROUND_LABEL)
    names = [painted.GetSegmentation().GetSegment(s).GetName() for s in painted.GetSegmentation().GetSegmentIDs()]
    assert names == ["Necrotic core", "Edema", "Enhancing tumour", "Background"], names
    before, _, _ = logic.labelArrayFromSegmentation(painted, volumes["flair"], BACKGROUND_LABEL)
    assert np.array_equal(logic.toEngineArray(before, 2), strokes)
    mode, reason = logic.annotationModeFor(painted)
    assert (mode, reason) == ("seeds", "Background is painted"), (mode, reason)

    out = logic.propagate(volumes, painted, replace(_quick_cpu(), annotation_mode=mode))
    names = [out.GetSegmentation().GetSegment(s).GetName() for s in out.GetSegmentation().GetSegmentIDs()]
    assert names == ["Edema", "Enhancing tumour"], names
    labels, _, _ = logic.labelArrayFromSegmentation(out, volumes["flair"])
    pred = logic.toEngineArray(labels, 2)
    seeded = strokes > 0
    assert np.array_equal(pred[seeded], np.where(strokes == BACKGROUND_LABEL, 0, strokes)[seeded])
    score = dice(pred[~seeded] > 0, truth[~seeded] > 0)
    assert score > 0.8, score
    after, _, _ = logic.labelArrayFromSegmentation(painted, volumes["flair"], BACKGROUND_LABEL)
    assert np.array_equal(before, after), "the painted segmentation was modified"


def _cancel(run, finish) -> None:
    """Cancel a background run at once: it stops within 60 s and `finish(run)` raises CancelledError."""
    from BrainDiffSegLib.errors import CancelledError

    run.cancel()
    assert run.wait(60), f"cancel did not stop the {run.kind} within 60 s"
    try:
        finish(run)
    except CancelledError:
        return
    raise AssertionError(f"{finish.__name__} of a cancelled run did not raise CancelledError")


def _cropped_case(logic, case_dir, half_size, roles=None):
    """BraTS2021_00006 (default) loaded into the logic's scene and cropped to a box of `half_size` (K, J, I) around
    the median tumour voxel: (volumes by role, the crop's ground truth as an engine array, the crop's KJI box, the
    full ground truth KJI). The full-size nodes are removed. SkipTest without the data."""
    import slicer.util

    from BrainDiffSegLib.resources import data_root

    caseDir = Path(case_dir) if case_dir else data_root() / "brats2021" / "BraTS2021_00006"
    if not caseDir.is_dir():
        raise unittest.SkipTest(f"{caseDir} is not available (set BRAINDIFFSEG_DATA)")
    loaded = logic.loadCase(caseDir, loadGroundTruth=True)
    assert all(node.GetScene() is logic.scene for node in loaded.values())
    truthKJI = slicer.util.arrayFromVolume(loaded["seg"])
    k, j, i = [int(np.median(a)) for a in np.nonzero(truthKJI)]
    box = tuple(slice(max(c - h, 0), max(c - h, 0) + 2 * h) for c, h in zip((k, j, i), half_size))
    reference = next(node for role, node in loaded.items() if role != "seg")
    ijkToRas = logic.ijkToRasArray(reference)
    ijkToRas[:3, 3] = ijkToRas[:3, :3] @ np.array([box[2].start, box[1].start, box[0].start]) + ijkToRas[:3, 3]
    volumes = {role: logic.addVolumeFromArray(slicer.util.arrayFromVolume(node)[box].astype(np.float32), ijkToRas,
                                              f"crop {role}")
               for role, node in loaded.items() if role != "seg" and (roles is None or role in roles)}
    truth = logic.toEngineArray(truthKJI[box], 2)
    for node in loaded.values():
        logic.removeVolumeNode(node)
    return volumes, truth, box, truthKJI


def real_case_in_background(logic, case_dir=None) -> None:
    """The module's scenario on real data: BraTS2021_00006 (default; cropped around the tumour for speed), the
    tumour painted on 3 axial slices from the ground truth, propagation in the background as the panel runs it
    (WT Dice > 0.8, painted segmentation unchanged); re-running updates the same result node; a run cancelled
    midway leaves the scene as it was. Skipped when the data ($BRAINDIFFSEG_DATA) is not available."""
    _require_engine()
    import slicer.util

    from BrainDiffSegLib.protocol import region_dice, simulate_annotation

    scene = logic.scene
    volumes, truth, box, truthKJI = _cropped_case(logic, case_dir, (30, 50, 50))
    annotation, zs = simulate_annotation(truth, 3)
    painted = logic.paintTumourSegments(volumes["flair"], annotation)
    paintedBefore, _, _ = logic.labelArrayFromSegmentation(painted, volumes["flair"])
    fast = _quick_cpu()

    run = logic.startPropagation(volumes, painted, fast, createUncertainty=True)
    assert run.wait(300), "the background propagation did not finish within 5 minutes"
    out = logic.finishPropagation(run)
    assert run.state.status == "done", run.state
    labels, _, _ = logic.labelArrayFromSegmentation(out, volumes["flair"])
    assert np.allclose(logic.ijkToRasArray(logic.lastUncertaintyNode), logic.ijkToRasArray(volumes["flair"]))
    scores = region_dice(logic.toEngineArray(labels, 2), truth, zs)
    assert scores["WT"] > 0.8, scores
    paintedAfter, _, _ = logic.labelArrayFromSegmentation(painted, volumes["flair"])
    assert np.array_equal(paintedBefore, paintedAfter), "the painted segmentation was modified"

    # re-running updates the same result node; a cancelled run leaves the scene as it was
    nodesBefore = scene.GetNumberOfNodes()
    again = logic.propagate(volumes, painted, fast, createUncertainty=True, outputNode=out)
    assert again is out
    assert scene.GetNumberOfNodes() == nodesBefore
    _cancel(logic.startPropagation(volumes, painted, fast, createUncertainty=True), logic.finishPropagation)
    assert scene.GetNumberOfNodes() == nodesBefore


def inpaint_in_background(logic, case_dir=None, steps: int = 5) -> None:
    """The 'Inpaint healthy tissue' scenario on real data: the T1 of BraTS2021_00006 (default; cropped around the
    tumour for speed), its tumour core (necrosis + enhancing, from the ground truth) painted as segments, inpainted
    in the background with the bundled model as the panel runs it: a new volume on the T1's grid, equal to the T1
    outside the core, synthesised (finite, changed, on the T1's intensity range) inside it; the T1 and the painted
    segmentation unchanged; a cancelled run leaves the scene as it was. Skipped without the data."""
    _require_engine()
    import slicer.util

    from BrainDiffSegLib.inpainting.inpaint import intensity_range
    from BrainDiffSegSlicer.segments import bratsLabelOfName

    scene = logic.scene
    volumes, truth, box, truthKJI = _cropped_case(logic, case_dir, (12, 60, 60), roles=("t1",))
    t1 = volumes["t1"]
    t1KJI = slicer.util.arrayFromVolume(t1).copy()
    painted = logic.paintTumourSegments(t1, truth, name="Tumour")
    segmentation = painted.GetSegmentation()
    core = [sid for sid in segmentation.GetSegmentIDs()
            if bratsLabelOfName(segmentation.GetSegment(sid).GetName()) in (1, 4)]
    paintedBefore, _, _ = logic.labelArrayFromSegmentation(painted, t1)
    insideKJI = np.isin(truthKJI[box], (1, 4))
    assert insideKJI.any(), "the crop holds no tumour core"
    nodesBefore = scene.GetNumberOfNodes()

    run = logic.startInpainting(t1, painted, core, steps=steps)
    assert run.wait(300), "the background inpainting did not finish within 5 minutes"
    out = logic.finishInpainting(run)
    assert out is not t1 and out.GetScene() is scene and scene.GetNumberOfNodes() > nodesBefore
    assert np.allclose(logic.ijkToRasArray(out), logic.ijkToRasArray(t1))
    result = slicer.util.arrayFromVolume(out)
    assert result.shape == t1KJI.shape
    assert np.array_equal(result[~insideKJI], t1KJI[~insideKJI]), "voxels outside the core were changed"
    inside = result[insideKJI]
    assert np.all(np.isfinite(inside)) and not np.array_equal(inside, t1KJI[insideKJI])
    lo, hi = intensity_range(np.where(insideKJI, 0, t1KJI))  # the engine's normalisation range of the voided T1
    assert lo - 1e-3 <= inside.min() and inside.max() <= hi + 1e-3, (inside.min(), inside.max(), lo, hi)
    assert np.array_equal(slicer.util.arrayFromVolume(t1), t1KJI), "the input T1 was modified"
    paintedAfter, _, _ = logic.labelArrayFromSegmentation(painted, t1)
    assert np.array_equal(paintedBefore, paintedAfter), "the painted segmentation was modified"

    nodesBefore = scene.GetNumberOfNodes()
    _cancel(logic.startInpainting(t1, painted, core, steps=200), logic.finishInpainting)
    assert scene.GetNumberOfNodes() == nodesBefore
