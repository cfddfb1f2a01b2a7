"""Healthy-tissue inpainting through the Slicer Logic (`BrainDiffSegLogic.inpaint` / `startInpainting` /
`finishInpainting`, module `BrainDiffSegSlicer.inpainting`) under slicer-core: real MRML nodes, no Qt.

On the real crop of BraTS2021_00006 of `test_slicer_logic.py` (its T1, with the ground truth painted into three
segments) and the bundled inpainting model with 2 DDIM steps (seconds on one CPU thread): the result is a new volume
on the input's grid and transform, equal to the input outside the chosen segments and different inside; the input
volume and the segmentation are unchanged; a cancelled background run adds nothing; one job at a time per Logic;
bad input is an InputError naming the nodes.
"""
from __future__ import annotations

import numpy as np
import pytest

from BrainDiffSegLib.errors import CancelledError, InputError
from conftest import slicer_scene_context
from test_slicer_logic import (CROP, M, add_volume, assert_same_snapshot, crop, paint,  # noqa: F401 (fixtures)
                               scene_ids, snapshot)

STEPS = 2  # DDIM steps: enough to replace the voxels, a few seconds on a CPU thread
CORE = ("NCR", "enhancing tumor")  # the segments inpainted in the main run (edema is left as it is)


def segment_id(node, name):
    segmentation = node.GetSegmentation()
    return next(sid for sid in segmentation.GetSegmentIDs() if segmentation.GetSegment(sid).GetName() == name)


def t1_and_painted(scene, crop, transform=None):
    """The crop's T1 (int16, as loaded) and the ground truth painted as segments edema / NCR / enhancing tumor."""
    t1 = add_volume(scene, crop["arrays"]["t1"], crop["ijk_to_ras"], "crop t1")
    painted = paint(scene, t1, crop["arrays"]["seg"], name="Tumour")
    if transform is not None:
        for node in (t1, painted):
            node.SetAndObserveTransformNodeID(transform.GetID())
            node.GetTransformNodeID()  # MRML resolves the new reference lazily, bumping the MTime once: not a change
    return t1, painted


@pytest.fixture(scope="module")
def run(crop, M):
    """One blocking inpainting of the tumour core (NCR + enhancing) of the crop's T1, both under a transform."""
    import slicer
    import vtk

    with slicer_scene_context() as headless:
        scene = headless.scene
        transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "Shift")
        shift = vtk.vtkMatrix4x4()
        shift.SetElement(0, 3, 7.0)
        transform.SetMatrixTransformToParent(shift)
        t1, painted = t1_and_painted(scene, crop, transform)
        before = {"t1": slicer.util.arrayFromVolume(t1).copy(), "t1 mtime": t1.GetImageData().GetMTime(),
                  "painted": snapshot(painted), "ids": scene_ids(scene)}
        stages = []
        logic = headless.logic()
        ids = [segment_id(painted, name) for name in CORE]
        out = logic.inpaint(t1, painted, segmentIds=ids, steps=STEPS, progress=lambda s, f: stages.append((s, f)))
        yield {"scene": scene, "logic": logic, "t1": t1, "painted": painted, "out": out, "before": before,
               "stages": stages, "transform": transform}


def test_the_result_is_a_new_volume_on_the_inputs_grid(run):
    import slicer

    out, t1, scene = run["out"], run["t1"], run["scene"]
    assert out is not t1 and out.IsA("vtkMRMLScalarVolumeNode") and not out.IsA("vtkMRMLLabelMapVolumeNode")
    assert out.GetScene() is scene and out.GetName() == "crop t1 inpainted"
    assert scene_ids(scene) == run["before"]["ids"] + [out.GetID(), out.GetDisplayNode().GetID()]
    assert out.GetImageData().GetDimensions() == t1.GetImageData().GetDimensions()
    np.testing.assert_array_equal(M_ijk(out), M_ijk(t1))
    assert out.GetTransformNodeID() == run["transform"].GetID()
    assert out.GetNodeReference("BrainDiffSeg.inpaintedFrom") is t1
    assert out.GetNodeReference("BrainDiffSeg.inpaintingMask") is run["painted"]
    assert out.GetAttribute("BrainDiffSeg.InpaintedSegments") == ",".join(CORE)
    assert slicer.util.arrayFromVolume(out).dtype == np.float32
    stages = [s for s, _ in run["stages"]]
    assert stages[0] == "loading" and "sampling" in stages and stages[-1] == "done"
    assert all(0.0 <= f <= 1.0 for _, f in run["stages"])
    # a second run gets a new, unique name: earlier results are never replaced
    again = run["logic"].inpaint(t1, run["painted"], segmentIds=[segment_id(run["painted"], "NCR")], steps=1)
    assert again is not out and again.GetName() == "crop t1 inpainted_1"
    scene.RemoveNode(again)


def test_equal_outside_the_chosen_segments_and_different_inside(run, crop):
    import slicer

    inpainted = slicer.util.arrayFromVolume(run["out"])
    original = crop["arrays"]["t1"].astype(np.float32)
    seg = crop["arrays"]["seg"]
    inside = np.isin(seg, (1, 4))  # NCR + enhancing: the chosen segments
    assert inside.sum() > 1000
    np.testing.assert_array_equal(inpainted[~inside], original[~inside])  # edema included: not chosen
    assert np.all(np.isfinite(inpainted))
    changed = np.abs(inpainted - original)[inside]
    assert changed.mean() > 20.0, changed.mean()  # T1 intensities here are in the hundreds
    assert np.count_nonzero(changed) > 0.9 * inside.sum()
    lo, hi = np.percentile(original[~inside], [0.5, 99.5])
    assert inpainted[inside].min() >= lo - 1 and inpainted[inside].max() <= hi + 1  # on the image's scale


def test_the_input_volume_and_the_segmentation_are_unchanged(run):
    import slicer

    t1, before = run["t1"], run["before"]
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(t1), before["t1"])
    assert t1.GetImageData().GetMTime() == before["t1 mtime"]
    assert slicer.util.arrayFromVolume(t1).dtype == before["t1"].dtype
    assert_same_snapshot(before["painted"], snapshot(run["painted"]))


def test_the_mask_defaults_to_the_visible_segments(mrml_scene, crop, M):
    """prepareInpainting only reads: the default mask is the union of the shown segments (hidden ones are kept)."""
    from BrainDiffSegSlicer.inpainting import prepareInpainting

    t1, painted = t1_and_painted(mrml_scene, crop)
    seg = M.BrainDiffSegLogic.toEngineArray(crop["arrays"]["seg"], crop["axis"])
    job = prepareInpainting(t1, painted)
    np.testing.assert_array_equal(job.mask, seg > 0)
    painted.GetDisplayNode().SetSegmentVisibility(segment_id(painted, "edema"), False)
    job = prepareInpainting(t1, painted)
    np.testing.assert_array_equal(job.mask, np.isin(seg, (1, 4)))
    assert job.segmentNames == ["NCR", "enhancing tumor"] and job.image.dtype == np.float32
    for name in CORE:
        painted.GetDisplayNode().SetSegmentVisibility(segment_id(painted, name), False)
    with pytest.raises(InputError, match="No segment of 'Tumour' is visible"):
        prepareInpainting(t1, painted)


def test_background_run_cancel_and_one_job_at_a_time(mrml_scene, crop, M):
    import slicer

    t1, painted = t1_and_painted(mrml_scene, crop)
    core = [segment_id(painted, name) for name in CORE]
    before, ids = snapshot(painted), scene_ids(mrml_scene)
    logic = M.BrainDiffSegLogic(mrml_scene)

    run = logic.startInpainting(t1, painted, core, steps=200)  # long enough to be running when refused
    with pytest.raises(InputError, match="An inpainting is already running"):
        logic.startInpainting(t1, painted, core, steps=STEPS)
    with pytest.raises(InputError, match="inpainting is already running"):
        logic.propagate({"t1": t1}, painted)
    with pytest.raises(RuntimeError, match="not finished"):
        logic.finishInpainting(run)
    run.cancel()
    assert run.wait(60), "cancel did not stop the inpainting promptly"
    with pytest.raises(CancelledError):
        logic.finishInpainting(run)
    assert scene_ids(mrml_scene) == ids and not logic.running
    assert_same_snapshot(before, snapshot(painted))

    run = logic.startInpainting(t1, painted, core, steps=STEPS)
    assert scene_ids(mrml_scene) == ids  # nothing is added while the engine runs
    assert run.wait(300)
    assert run.state.status == "done" and run.state.stage == "done"
    out = logic.finishInpainting(run)
    assert scene_ids(mrml_scene) == ids + [out.GetID(), out.GetDisplayNode().GetID()]
    inside = np.isin(crop["arrays"]["seg"], (1, 4))
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(out)[~inside],
                                  crop["arrays"]["t1"].astype(np.float32)[~inside])
    assert_same_snapshot(before, snapshot(painted))


def test_saved_as_nifti(run, tmp_path):
    import nibabel as nib
    import slicer

    path = run["logic"].saveVolume(run["out"], tmp_path / "inpainted.nii.gz")
    image = nib.load(path)
    kji = slicer.util.arrayFromVolume(run["out"])
    np.testing.assert_allclose(np.asarray(image.dataobj), np.transpose(kji, (2, 1, 0)))
    with pytest.raises(Exception, match="exists"):
        run["logic"].saveVolume(run["out"], path)


# ------------------------------------------------------------------------------------------ bad input

def test_bad_input_names_the_nodes(mrml_scene, crop, M):
    import slicer

    t1, painted = t1_and_painted(mrml_scene, crop)
    logic = M.BrainDiffSegLogic(mrml_scene)
    ids = scene_ids(mrml_scene)
    with pytest.raises(InputError, match="Select the T1 volume to inpaint"):
        logic.inpaint(None, painted, steps=STEPS)
    with pytest.raises(InputError, match="Select the segmentation .* of 'crop t1'"):
        logic.inpaint(t1, None, steps=STEPS)
    label = add_volume(mrml_scene, crop["arrays"]["seg"], crop["ijk_to_ras"], "labels", "vtkMRMLLabelMapVolumeNode")
    with pytest.raises(InputError, match="'labels' is not a scalar volume"):
        logic.inpaint(label, painted, steps=STEPS)
    nothing = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Nothing")
    with pytest.raises(InputError, match="'Nothing' has no segments"):
        logic.inpaint(t1, nothing, steps=STEPS)
    with pytest.raises(InputError, match=r"'Tumour' has no segment 'nope'; its segments are 'edema'"):
        logic.inpaint(t1, painted, segmentIds=["nope"], steps=STEPS)
    blank = paint(mrml_scene, t1, np.zeros(CROP, np.uint8), name="Blank")
    with pytest.raises(InputError, match="segments 'edema', 'NCR', 'enhancing tumor' of 'Blank' are empty on the "
                                         "grid of volume 'crop t1'"):
        logic.inpaint(t1, blank, steps=STEPS)
    with pytest.raises(InputError, match="at least 1"):
        logic.inpaint(t1, painted, steps=0)
    ids = scene_ids(mrml_scene)
    # everything but a thin rim painted: the engine refuses, the message names the nodes; nothing is added
    head = crop["arrays"]["t1"] > 0
    big = paint(mrml_scene, t1, head.astype(np.uint8), segments=(("Everything", 1, (1, 0, 0)),), name="Big")
    ids = scene_ids(mrml_scene)
    with pytest.raises(InputError, match=r"Cannot inpaint 'crop t1' inside segment 'Everything' of 'Big': the mask "
                                         r"covers \d+ % of the brain"):
        logic.inpaint(t1, big, steps=STEPS)
    run = logic.startInpainting(t1, big, steps=STEPS)
    assert run.wait(60)
    with pytest.raises(InputError, match="covers"):
        logic.finishInpainting(run)
    assert scene_ids(mrml_scene) == ids and not logic.running
    transform = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "Moved")
    painted.SetAndObserveTransformNodeID(transform.GetID())
    with pytest.raises(InputError, match="different transforms"):
        logic.inpaint(t1, painted, steps=STEPS)


def test_a_segmentation_on_another_grid(mrml_scene, crop, M):
    """A segmentation made on another volume is resampled onto the T1's grid (as for propagation): used where it
    overlaps, refused with a clear message when nothing of it falls on the T1."""
    from BrainDiffSegSlicer.inpainting import prepareInpainting

    t1 = add_volume(mrml_scene, crop["arrays"]["t1"], crop["ijk_to_ras"], "crop t1")
    far = crop["ijk_to_ras"].copy()
    far[:3, 3] += 500.0
    elsewhere = add_volume(mrml_scene, crop["arrays"]["t1"], far, "other volume")
    painted = paint(mrml_scene, elsewhere, crop["arrays"]["seg"], name="Painted elsewhere")
    with pytest.raises(InputError, match="'Painted elsewhere' are empty on the grid of volume 'crop t1' .*made on "
                                         "this volume"):
        M.BrainDiffSegLogic(mrml_scene).inpaint(t1, painted, steps=STEPS)
    near = crop["ijk_to_ras"].copy()
    near[:3, 3] += near[:3, 2] * 3  # the same grid three voxels further along K (the axial axis)
    shifted = add_volume(mrml_scene, crop["arrays"]["t1"], near, "shifted volume")
    painted = paint(mrml_scene, shifted, crop["arrays"]["seg"], name="Painted shifted")
    job = prepareInpainting(t1, painted)
    expected = np.zeros(CROP, bool)
    expected[3:] = crop["arrays"]["seg"][:-3] > 0
    np.testing.assert_array_equal(job.mask, M.BrainDiffSegLogic.toEngineArray(expected, crop["axis"]))


def M_ijk(volume_node):
    import vtk

    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(i, j) for j in range(4)] for i in range(4)])
