"""The interactive loop of the Slicer layer under slicer-core, on the real crop of `test_slicer_logic.py`: the Logic's
feature cache (hit on a re-run, cleared by `clearCache`, an update equal to a from-scratch run), one propagation at a
time, cancel during an update, corrections painted into the result, locked segments, undo across an update (with
Slicer's own `vtkSegmentationHistory`, what the Segment Editor's undo uses) and the suggested slice.
"""
from __future__ import annotations

import time

import json
from dataclasses import replace

import numpy as np
import pytest

from BrainDiffSegLib.errors import CancelledError, InputError
from test_slicer_logic import (RAW, M, add_volumes, assert_same_snapshot, crop, paint,  # noqa: F401 (fixtures)
                               painted_truth, snapshot)

VALUE_OF_NAME = {"edema": 2, "NCR": 1, "enhancing tumor": 4}


def diffusion_quick():
    from BrainDiffSegLib.options import preset

    return replace(preset("quick"), method="diffusion", device="cpu")


def labels_of(logic, node, reference):
    return logic.labelArrayFromSegmentation(node, reference)[0].copy()


def add_painted_slice(logic, painted, reference, gt, z):
    """Paint the ground truth of axial slice z (KJI: the first axis) into the painted segments, as a user would."""
    current = logic.labelArrayFromSegmentation(painted, reference)[0]
    for sid in painted.GetSegmentation().GetSegmentIDs():
        value = VALUE_OF_NAME[painted.GetSegmentation().GetSegment(sid).GetName()]
        mask = current == value
        mask[z] = gt[z] == value
        logic.setSegmentFromArray(painted, sid, mask.astype(np.uint8), reference)


def result_value(node, sid):
    import vtk

    value = vtk.reference("")
    assert node.GetSegmentation().GetSegment(sid).GetTag("BrainDiffSeg.labelValue", value)
    return int(str(value))


def paint_into_result(logic, result, reference, z, labels_z):
    """Replace axial slice z of a result segmentation by labels_z (values 1 / 2 / 4), segment by segment."""
    current = logic.labelArrayFromSegmentation(result, reference)[0]
    for sid in result.GetSegmentation().GetSegmentIDs():
        value = result_value(result, sid)
        mask = current == value
        mask[z] = labels_z == value
        logic.setSegmentFromArray(result, sid, mask.astype(np.uint8), reference)


def annotated(node):
    return json.loads(node.GetAttribute("BrainDiffSeg.annotatedSlices"))["indices"]


def test_feature_cache_is_hit_on_a_rerun_and_cleared(mrml_scene, crop, M, monkeypatch):
    """Second propagation of the same volume: no new backbone pass; from scratch (`warm_epochs` 0) the update
    equals a propagation with a fresh Logic exactly; clearCache forgets the features."""
    from BrainDiffSegLib.propagation.features import FeatureExtractor

    calls = []
    real = FeatureExtractor._activations
    monkeypatch.setattr(FeatureExtractor, "_activations", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    volumes = add_volumes(mrml_scene, crop, roles=("flair", "t1ce"))
    gt = crop["arrays"]["seg"]
    ann2, zs2 = painted_truth(crop, M, k=2)
    painted = paint(mrml_scene, volumes["flair"], ann2)
    logic = M.BrainDiffSegLogic(mrml_scene)
    assert logic.featureCacheBytes() == 0
    options = diffusion_quick()
    options = replace(options, classifier=replace(options.classifier, warm_epochs=0))
    first = logic.propagate(volumes, painted, options)
    first_calls = len(calls)
    assert first_calls > 0 and logic.featureCacheBytes() > 0

    _, zs3 = painted_truth(crop, M, k=3)
    add_painted_slice(logic, painted, volumes["flair"], gt, sorted(set(zs3) - set(zs2))[0])
    again = logic.propagate(volumes, painted, options, outputNode=first)
    assert again is first
    assert len(calls) == first_calls, "the re-run ran the backbone again"
    assert logic.featureCacheStats()["hits"] >= 1
    updated = labels_of(logic, again, volumes["flair"])

    fresh = M.BrainDiffSegLogic(mrml_scene)
    scratch = fresh.propagate(volumes, painted, options)
    assert len(calls) > first_calls  # a fresh Logic has a fresh cache
    np.testing.assert_array_equal(updated, labels_of(fresh, scratch, volumes["flair"]))
    assert annotated(again) == annotated(scratch)

    logic.clearCache()
    assert logic.featureCacheBytes() == 0 and logic.featureCacheStats() == {}
    assert len(logic.engine.workspace) == 0


def test_one_run_at_a_time_and_cancel_during_an_update(mrml_scene, crop, M):
    """A second start while one runs is refused; an update cancelled while it runs leaves the previous result
    node exactly as it was."""
    volumes = add_volumes(mrml_scene, crop, roles=("flair", "t1ce"))
    ann, _ = painted_truth(crop, M)
    painted = paint(mrml_scene, volumes["flair"], ann)
    logic = M.BrainDiffSegLogic(mrml_scene)
    first = logic.propagate(volumes, painted, RAW)
    before, painted_before = snapshot(first), snapshot(painted)

    run = logic.startPropagation(volumes, painted, RAW, outputNode=first)
    with pytest.raises(InputError, match="already running"):
        logic.startPropagation(volumes, painted, RAW, outputNode=first)
    with pytest.raises(InputError, match="already running"):
        logic.propagate(volumes, painted, RAW)
    while not run.done and run.poll().stage in ("starting", "preparing"):  # the engine has started
        time.sleep(0.02)
    run.cancel()
    assert run.wait(60)
    with pytest.raises(CancelledError):
        logic.finishPropagation(run)
    assert not logic.running
    assert_same_snapshot(before, snapshot(first))
    assert_same_snapshot(painted_before, snapshot(painted))


def test_corrections_locks_undo_and_the_suggested_slice(mrml_scene, crop, M):
    """A correction painted into the result on a non-annotated slice is an annotation of the next update (kept
    exactly, listed as annotated); one on a painted slice loses to the painting; a locked ("Completed") segment is
    never changed; the painted segmentation is unchanged; the update is one undo step of Slicer's segmentation
    history; the suggested slice is never an annotated one."""
    import slicer

    from BrainDiffSegSlicer.arrays import segmentMasks

    volumes = add_volumes(mrml_scene, crop, roles=("flair", "t1ce"))
    reference = volumes["flair"]
    gt = crop["arrays"]["seg"]
    ann, zs = painted_truth(crop, M, k=2)
    painted = paint(mrml_scene, volumes["flair"], ann)
    logic = M.BrainDiffSegLogic(mrml_scene)
    result = logic.propagate(volumes, painted, RAW)
    suggested = logic.nextSliceToPaint()
    assert isinstance(suggested, int) and suggested not in annotated(result) and suggested not in zs
    # the engine ranked it; a result from an engine that does not rank is ranked by the Logic, the same way
    assert logic.lastResult.suggestions["next_slice"] == suggested
    unranked = replace(logic.lastResult, suggestions=None)
    assert logic.suggestions(unranked) == logic.suggestions()

    written = labels_of(logic, result, reference)
    tumour = np.flatnonzero(gt.reshape(gt.shape[0], -1).any(1))
    zc = next(int(z) for z in tumour[len(tumour) // 3:] if z not in zs and (written[z] != gt[z]).any()
              and set(np.unique(gt[z])) <= set(np.unique(written)))
    paint_into_result(logic, result, reference, zc, gt[zc])  # the correction: the ground truth of slice zc
    erased = labels_of(logic, result, reference)[zs[0]].copy()
    erased[erased > 0] = 0  # the user erases the tumour on a painted slice of the result: the painting wins
    paint_into_result(logic, result, reference, zs[0], erased)
    corrected = labels_of(logic, result, reference)

    segmentation = result.GetSegmentation()
    locked_id = next(s for s in segmentation.GetSegmentIDs() if result_value(result, s) == 1)  # Necrotic core
    slicer.vtkSlicerSegmentationsModuleLogic.SetSegmentStatus(segmentation.GetSegment(locked_id),
                                                              slicer.vtkSlicerSegmentationsModuleLogic.Completed)
    locked = segmentation.GetSegment(locked_id)
    locked_before = (locked.GetName(), tuple(locked.GetColor()),
                     segmentMasks(result, reference)[locked_id])
    painted_before = snapshot(painted)

    history = slicer.vtkSegmentationHistory()  # what the Segment Editor's undo keeps of the edited segmentation
    history.SetMaximumNumberOfStates(5)
    history.SetSegmentation(result.GetSegmentation())
    assert history.SaveState()  # = qMRMLSegmentEditorWidget.saveStateForUndo(), as the panel calls it
    again = logic.propagate(volumes, painted, RAW, outputNode=result)
    assert again is result
    labels = labels_of(logic, again, reference)
    np.testing.assert_array_equal(labels[zc], corrected[zc])  # the corrected slice kept exactly
    # the painted slice as painted, except the locked class: its segment (erased there) is kept as it was
    np.testing.assert_array_equal(labels[zs[0]], np.where(ann[zs[0]] == 1, 0, ann[zs[0]]))
    assert annotated(again) == sorted({*zs, zc})
    assert any(f"{zc}" in m and "corrected" in m for m in logic.lastMessages), logic.lastMessages
    locked = again.GetSegmentation().GetSegment(locked_id)
    assert locked is not None and slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentStatus(locked) == \
        slicer.vtkSlicerSegmentationsModuleLogic.Completed
    assert (locked.GetName(), tuple(locked.GetColor())) == locked_before[:2]
    np.testing.assert_array_equal(segmentMasks(again, reference)[locked_id],
                                  locked_before[2])
    assert_same_snapshot(painted_before, snapshot(painted))
    assert logic.nextSliceToPaint() not in annotated(again)

    assert history.RestorePreviousState()  # Undo: the result as it was before the update, corrections included
    np.testing.assert_array_equal(labels_of(logic, result, reference), corrected)
    assert history.RestoreNextState()  # Redo
    np.testing.assert_array_equal(labels_of(logic, result, reference), labels)

    # a Logic that did not write the result (as after a scene reload) takes no corrections
    other = M.BrainDiffSegLogic(mrml_scene)
    paint_into_result(other, result, reference, zc, np.zeros_like(gt[zc]) + (gt[zc] > 0) * 2)
    other.propagate(volumes, painted, RAW, outputNode=result)
    assert annotated(result) == sorted(zs) and not other.lastMessages


def test_jump_to_the_suggested_slice(mrml_scene, crop, M):
    """The RAS centre of an engine-axial slice (shared by the panel and the browser) and a slice node jumped
    there show that slice."""
    volumes = add_volumes(mrml_scene, crop, roles=("flair",))
    logic = M.BrainDiffSegLogic(mrml_scene)
    node = volumes["flair"]
    z = 17
    r, a, s = logic.sliceCentreRas(node, z)
    ijk = np.linalg.inv(logic.ijkToRasArray(node)) @ [r, a, s, 1.0]
    dims = node.GetImageData().GetDimensions()
    np.testing.assert_allclose(ijk[:3], [(dims[0] - 1) / 2, (dims[1] - 1) / 2, z], atol=1e-6)
    slice_node = mrml_scene.AddNewNodeByClass("vtkMRMLSliceNode")
    slice_node.SetOrientation("Axial")
    slice_node.SetDimensions(256, 256, 1)
    assert logic.jumpToAxialSlice(slice_node, node, z) == (r, a, s)
    assert slice_node.GetSliceOffset() == pytest.approx(s, abs=1e-4)
