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


def propagate_synthetic(logic) -> None:
    """Propagation of a small synthetic case (two sequences, edema + enhancing painted on 2 slices) through
    `logic.propagate` with the quick 'raw' features: a new segmentation with the BraTS names, Dice > 0.8."""
    _require_engine()
    from BrainDiffSegLib.protocol import dice, simulate_annotation

    scene = logic.scene
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


def real_case_in_background(logic, case_dir=None) -> None:
    """The module's scenario on real data: BraTS2021_00006 (default; cropped around the tumour for speed), the
    tumour painted on 3 axial slices from the ground truth, propagation in the background as the panel runs it
    (WT Dice > 0.8, painted segmentation unchanged); re-running updates the same result node; a run cancelled
    midway leaves the scene as it was. Skipped when the data ($BRAINDIFFSEG_DATA) is not available."""
    _require_engine()
    import slicer.util

    from BrainDiffSegLib.errors import CancelledError
    from BrainDiffSegLib.protocol import region_dice, simulate_annotation
    from BrainDiffSegLib.resources import data_root
    from BrainDiffSegSlicer.segments import bratsLabelOfName

    caseDir = Path(case_dir) if case_dir else data_root() / "brats2021" / "BraTS2021_00006"
    if not caseDir.is_dir():
        raise unittest.SkipTest(f"{caseDir} is not available (set BRAINDIFFSEG_DATA)")
    scene = logic.scene
    loaded = logic.loadCase(caseDir, loadGroundTruth=True)
    assert all(node.GetScene() is scene for node in loaded.values())
    truthKJI = slicer.util.arrayFromVolume(loaded["seg"])
    k, j, i = [int(np.median(a)) for a in np.nonzero(truthKJI)]
    box = tuple(slice(max(c - h, 0), max(c - h, 0) + 2 * h) for c, h in zip((k, j, i), (30, 50, 50)))
    ijkToRas = logic.ijkToRasArray(loaded["flair"])
    ijkToRas[:3, 3] = ijkToRas[:3, :3] @ np.array([box[2].start, box[1].start, box[0].start]) + ijkToRas[:3, 3]
    volumes = {role: logic.addVolumeFromArray(slicer.util.arrayFromVolume(node)[box].astype(np.float32), ijkToRas,
                                              f"crop {role}")
               for role, node in loaded.items() if role != "seg"}
    truth = logic.toEngineArray(truthKJI[box], 2)
    for node in loaded.values():
        logic.removeVolumeNode(node)
    annotation, zs = simulate_annotation(truth, 3)
    painted = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Painted")
    painted.CreateDefaultDisplayNodes()
    painted.SetReferenceImageGeometryParameterFromVolumeNode(volumes["flair"])
    logic.addTumourSegments(painted)
    segmentation = painted.GetSegmentation()
    for sid in segmentation.GetSegmentIDs():
        value = bratsLabelOfName(segmentation.GetSegment(sid).GetName())
        logic.setSegmentFromArray(painted, sid, logic.fromEngineArray(annotation == value, 2), volumes["flair"])
    paintedBefore, _, _ = logic.labelArrayFromSegmentation(painted, volumes["flair"])
    fast = _quick_cpu()

    run = logic.startPropagation(volumes, painted, fast, createUncertainty=True)
    assert run.task.wait(300), "the background propagation did not finish within 5 minutes"
    out = logic.finishPropagation(run)
    assert run.task.poll() or run.task.stage != "waiting"
    labels, _, _ = logic.labelArrayFromSegmentation(out, volumes["flair"])
    assert np.allclose(logic.ijkToRasArray(logic.lastUncertaintyNode), ijkToRas)
    scores = region_dice(logic.toEngineArray(labels, 2), truth, zs)
    assert scores["WT"] > 0.8, scores
    paintedAfter, _, _ = logic.labelArrayFromSegmentation(painted, volumes["flair"])
    assert np.array_equal(paintedBefore, paintedAfter), "the painted segmentation was modified"

    # re-running updates the same result node; a cancelled run leaves the scene as it was
    nodesBefore = scene.GetNumberOfNodes()
    again = logic.propagate(volumes, painted, fast, createUncertainty=True, outputNode=out)
    assert again is out
    assert scene.GetNumberOfNodes() == nodesBefore
    run = logic.startPropagation(volumes, painted, fast, createUncertainty=True)
    run.task.cancel()
    assert run.task.wait(60), "cancel did not stop the propagation within 60 s"
    try:
        logic.finishPropagation(run)
    except CancelledError:
        pass
    else:
        raise AssertionError("finishPropagation of a cancelled run did not raise CancelledError")
    assert scene.GetNumberOfNodes() == nodesBefore
