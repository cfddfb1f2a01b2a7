"""The seeds annotation mode (issue 23) on the Slicer side, under slicer-core with real MRML nodes: 'Add tumour
segments' adds a Background segment; the annotation mode as the Logic resolves it (Automatic: seeds when Background
is painted; the explicit choices win) and as the panel shows it; the seeds-mode export (0 unknown, the background
label for Background, the tumour values; strokes on sagittal and coronal slices too); corrections painted into a
result as seeds of the next update; bad seeds refused with one sentence; the engine's warnings in the panel's status
through a real engine service; complete slices read as before; the painted segmentation never modified.

The case is the small synthetic one of `slicer_scenarios.py` (`synthetic_case`, `synthetic_strokes`); propagations
use the quick preset on the CPU.
"""
from __future__ import annotations

import time
import types
from dataclasses import replace

import numpy as np
import pytest

from BrainDiffSegLib.constants import BACKGROUND_COLOR, BACKGROUND_LABEL
from BrainDiffSegLib.errors import InputError
from BrainDiffSegLib.options import preset, to_strings
from service_support import start_service
from slicer_scenarios import synthetic_case, synthetic_strokes
from test_slicer_logic import M, assert_same_snapshot, scene_ids, snapshot  # noqa: F401 (fixtures)

QUICK = replace(preset("quick"), device="cpu")
SEEDS = replace(QUICK, annotation_mode="seeds")


@pytest.fixture
def case(headless, M):
    """The synthetic case in a fresh scene, its strokes painted into the BraTS segments plus Background."""
    logic = M.BrainDiffSegLogic(headless.scene, headless.volumesLogic, headless.segmentationsLogic)
    volumes, truth, head = synthetic_case(logic)
    strokes = synthetic_strokes(truth, head, BACKGROUND_LABEL)
    painted = logic.paintTumourSegments(volumes["flair"], strokes, backgroundLabel=BACKGROUND_LABEL)
    return types.SimpleNamespace(logic=logic, scene=headless.scene, volumes=volumes, reference=volumes["flair"],
                                 truth=truth, head=head, strokes=strokes, painted=painted)


def segment_names(node):
    segmentation = node.GetSegmentation()
    return [segmentation.GetSegment(s).GetName() for s in segmentation.GetSegmentIDs()]


def segment_id(node, name):
    segmentation = node.GetSegmentation()
    return next(s for s in segmentation.GetSegmentIDs() if segmentation.GetSegment(s).GetName() == name)


def engine_labels(case, node, backgroundLabel=None):
    labels, _, _ = case.logic.labelArrayFromSegmentation(node, case.reference, backgroundLabel)
    return case.logic.toEngineArray(labels, 2)


def set_result_labels(case, result, labels):
    """Replace the voxels of every segment of a result node (by its label-value tag) by `labels` (engine layout),
    as painting and erasing in the Segment Editor do."""
    import vtk

    segmentation = result.GetSegmentation()
    for sid in segmentation.GetSegmentIDs():
        value = vtk.reference("")
        assert segmentation.GetSegment(sid).GetTag("BrainDiffSeg.labelValue", value)
        mask = case.logic.fromEngineArray((labels == int(str(value))).astype(np.uint8), 2)
        case.logic.setSegmentFromArray(result, sid, mask, case.reference)


# ------------------------------------------------------------------------------------------ segments and the mode

def test_add_tumour_segments_adds_a_background_segment(case):
    logic, scene = case.logic, case.scene
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Empty")
    added = logic.addTumourSegments(node)
    assert segment_names(node) == ["Necrotic core", "Edema", "Enhancing tumour", "Background"] and len(added) == 4
    background = node.GetSegmentation().GetSegment(added[-1])
    assert np.allclose(background.GetColor(), BACKGROUND_COLOR)
    assert logic.addTumourSegments(node) == []
    own = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Own background")
    own.GetSegmentation().AddEmptySegment("", "BG")
    logic.addTumourSegments(own)
    assert segment_names(own) == ["BG", "Necrotic core", "Edema", "Enhancing tumour"]  # its own background kept
    plain = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Plain")
    logic.addTumourSegments(plain, background=False)
    assert "Background" not in segment_names(plain)
    # a simulated complete-slice annotation gets no Background segment (as before)
    assert segment_names(logic.paintTumourSegments(case.reference, case.truth)) == [
        "Necrotic core", "Edema", "Enhancing tumour"]


def test_automatic_mode_and_the_explicit_choices(case):
    """Automatic: complete slices while no Background segment is painted, seeds once one is; an explicit choice
    wins either way; reading the mode never modifies the segmentation."""
    logic, painted = case.logic, case.painted
    before = snapshot(painted)
    assert logic.annotationModeFor(painted) == ("seeds", "Background is painted")
    assert logic.annotationModeFor(painted, "slices") == ("slices", "chosen")
    assert logic.annotationModeFor(painted, "Complete slices") == ("slices", "chosen")  # a stored label
    assert_same_snapshot(before, snapshot(painted))

    background = segment_id(painted, "Background")
    logic.setSegmentFromArray(painted, background, np.zeros(case.strokes.shape[::-1], np.uint8), case.reference)
    assert logic.annotationModeFor(painted) == ("slices", "Background is not painted")
    assert logic.annotationModeFor(painted, "seeds") == ("seeds", "chosen")
    painted.GetSegmentation().RemoveSegment(background)
    assert logic.annotationModeFor(painted) == ("slices", "no Background segment")
    assert logic.annotationModeFor(painted, "auto") == ("slices", "no Background segment")
    assert logic.annotationModeFor(None) == ("slices", "no segmentation")
    with pytest.raises(InputError, match=r"^AnnotationMode: 'strokes' is unknown; use one of auto, slices, seeds\.$"):
        logic.annotationModeFor(painted, "strokes")


def test_the_panel_shows_the_mode_and_stores_the_choice(case):
    """The parameter AnnotationMode holds the choice (default Automatic); the panel says which mode the next
    Propagate uses and why; the options follow the choice ('auto' leaves the mode to the Logic)."""
    from BrainDiffSegSlicer import parameters
    from BrainDiffSegSlicer.panel import PanelModel

    logic = case.logic
    model = PanelModel(logic)
    node = logic.getParameterNode()
    parameters.setDefaultParameters(node)
    assert node.GetParameter("AnnotationMode") == "auto" and parameters.annotationChoice(node) == "auto"
    assert parameters.annotationChoices() == [("auto", "Automatic"), ("slices", "Complete slices"),
                                              ("seeds", "Seeds (strokes)")]
    assert parameters.optionsFromParameters(node).annotation_mode == "slices"  # the option's default: see above
    node.SetNodeReferenceID("Input_flair", case.reference.GetID())
    node.SetNodeReferenceID("Segmentation", case.painted.GetID())
    view = model.view(node)
    assert view.annotationText == "Propagate uses seeds (strokes): Background is painted."
    assert view.propagateToolTip == "Segment the whole volume from the painted strokes."
    node.SetParameter("AnnotationMode", "slices")
    view = model.view(node)
    assert view.annotationText == "Propagate uses complete slices: chosen."
    assert view.propagateToolTip == "Segment every axial slice from the painted ones."
    assert parameters.optionsFromParameters(node).annotation_mode == "slices"
    node.SetParameter("AnnotationMode", "seeds")
    assert parameters.optionsFromParameters(node).annotation_mode == "seeds"
    node.SetParameter("AnnotationMode", "sideways")
    assert model.view(node).annotationText.startswith("AnnotationMode: 'sideways' is unknown")
    with pytest.raises(InputError, match="AnnotationMode"):
        model.startPropagation(node)
    node.SetNodeReferenceID("Segmentation", None)
    node.SetParameter("AnnotationMode", "auto")
    assert model.view(node).annotationText == ""  # nothing to say before a segmentation is chosen
    parameters.setDefaultParameters(node, overwrite=True)
    assert node.GetParameter("AnnotationMode") == "auto"


# ------------------------------------------------------------------------------------------ export

def test_the_seeds_export_in_three_views(case, tmp_path):
    """Seeds mode: Background voxels get the background label, tumour voxels their values, every other voxel 0;
    strokes on a sagittal and a coronal slice are read as painted; the request carries the job's mode; saved as a
    label file for the command line's seeds mode. Complete slices: the same segmentation read as before
    (Background is no class), with a message."""
    import nibabel as nib

    logic, painted, strokes = case.logic, case.painted, case.strokes
    before = snapshot(painted)
    labels, segmentIdOfValue, brats = logic.labelArrayFromSegmentation(painted, case.reference, BACKGROUND_LABEL)
    assert np.array_equal(logic.toEngineArray(labels, 2), strokes)
    assert set(np.unique(strokes)) == {0, 2, 4, BACKGROUND_LABEL} and brats and set(segmentIdOfValue) == {2, 4}
    sagittal = np.flatnonzero(strokes[28].any(axis=0))  # the sagittal stroke crosses many axial slices
    assert len(sagittal) > 10 and set(np.unique(strokes[28])) == {0, 2, 4, BACKGROUND_LABEL}
    assert set(np.unique(strokes[:, 24])) == {0, 2, 4, BACKGROUND_LABEL}  # the coronal one

    job = logic.preparePropagation(case.volumes, painted, options=replace(SEEDS, background_label=7))
    assert job.annotationMode == "seeds" and job.backgroundLabel == 7
    assert np.array_equal(job.annotation, np.where(strokes == BACKGROUND_LABEL, 7, strokes))
    request = logic.propagationRequest(job, QUICK)  # the job's mode, whatever the options passed
    assert request.meta["options"]["annotation-mode"] == "seeds"
    assert request.meta["options"]["background-label"] == "7"
    assert np.array_equal(request.arrays["annotation"], job.annotation)
    saved = logic.saveSegmentation(painted, tmp_path / "seeds.nii.gz", case.reference, backgroundLabel=7)
    assert np.array_equal(np.asarray(nib.load(str(saved)).dataobj), job.annotation)

    job = logic.preparePropagation(case.volumes, painted, options=QUICK)
    assert job.annotationMode == "slices"
    assert np.array_equal(job.annotation, np.where(strokes == BACKGROUND_LABEL, 0, strokes))  # as before
    assert logic.propagationRequest(job).meta["options"]["annotation-mode"] == "slices"
    assert any("'Background' is painted but the annotation is complete slices" in m for m in logic.lastMessages)
    assert_same_snapshot(before, snapshot(painted))


def test_bad_seeds_are_refused_with_one_sentence(case):
    """Background alone, tumour without Background (the engine's sentence), a tumour value equal to the background
    label: one sentence each, nothing added to the scene."""
    logic, scene, volumes, strokes = case.logic, case.scene, case.volumes, case.strokes
    only_background = logic.paintTumourSegments(case.reference, np.where(strokes == BACKGROUND_LABEL, strokes, 0),
                                                backgroundLabel=BACKGROUND_LABEL, name="Background only")
    no_background = logic.paintTumourSegments(case.reference, np.where(strokes == BACKGROUND_LABEL, 0, strokes),
                                              backgroundLabel=BACKGROUND_LABEL, name="No background")
    many = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Many")
    for name in [f"part {i}" for i in range(9)] + ["Background"]:
        many.GetSegmentation().AddEmptySegment("", name)
    ids = scene_ids(scene)
    with pytest.raises(InputError, match=r"^Only Background is painted in 'Background only': paint at least one "
                                         r"tumour class too\.$"):
        logic.propagate(volumes, only_background, SEEDS)
    with pytest.raises(InputError, match="paint some Background"):  # the engine's sentence
        logic.propagate(volumes, no_background, SEEDS)
    with pytest.raises(InputError, match=r"^Segment 'part 8' of 'Many' has the label value 9, which stands for "
                                         r"Background in seeds mode"):
        logic.propagate(volumes, many, SEEDS)
    assert scene_ids(scene) == ids


def test_the_engines_warnings_are_kept_once(case):
    """The engine's warnings (response meta 'warnings') join the Logic's messages once; a response without them
    is read as before."""
    from BrainDiffSegLib.transfer import EngineResponse

    logic = case.logic
    job = logic.preparePropagation(case.volumes, case.painted, options=SEEDS)
    arrays = {"labels": case.truth.astype(np.int16), "entropy": np.zeros(case.truth.shape, np.float32)}
    meta = {"annotated_slices": [], "label_values": [0, 2, 4], "timings": {"total": 0.1}, "device": "cpu",
            "messages": ["A message."]}
    logic.addPropagationResponse(job, EngineResponse(dict(meta), arrays))
    assert logic.lastMessages == ["A message."]
    logic.lastMessages = []
    meta["warnings"] = ["3 seed voxels lie outside the head and were ignored.", "A message."]
    logic.addPropagationResponse(job, EngineResponse(dict(meta), arrays))
    assert logic.lastMessages == ["A message.", "3 seed voxels lie outside the head and were ignored."]


# ------------------------------------------------------------------------------------------ corrections

def test_corrections_in_seeds_mode_become_seeds(case):
    """Voxels of a result changed in the result node are seeds of the next seeds-mode update, on any view's
    slice, with their new value; an erased tumour voxel is a Background seed; a painted seed wins; the update keeps
    them as corrected; the painted segmentation is never modified."""
    from BrainDiffSegLib.results import PropagationResult

    logic, truth, strokes, head = case.logic, case.truth, case.strokes, case.head
    painted_before = snapshot(case.painted)
    job = logic.preparePropagation(case.volumes, case.painted, options=SEEDS)
    written = truth.astype(np.int16)  # a perfect result, as the Logic writes it
    fake = PropagationResult(written.copy(), np.zeros(truth.shape, np.float32), None, [], [0, 2, 4], {"total": 0.0},
                             "cpu")
    result = logic.addPropagationResult(job, fake)
    assert segment_names(result) == ["Edema", "Enhancing tumour"]

    corrected = written.copy()
    erased = (np.arange(truth.shape[0])[:, None, None] == 22) & (truth > 0)  # tumour erased on sagittal slice 22
    corrected[erased] = 0
    added = np.zeros(truth.shape, bool)  # edema painted on coronal slice J = 30, where there is none
    added[8:14, 30, 8:12] = True
    added &= head & (truth == 0)
    corrected[added] = 2
    relabelled = (truth == 4) & (np.arange(truth.shape[2])[None, None, :] == 12)  # enhancing -> edema on axial 12
    corrected[relabelled] = 2
    overlap = (strokes > 0) & (strokes != BACKGROUND_LABEL)  # erased where a painted seed lies: the seed wins
    corrected[overlap & (np.arange(truth.shape[0])[:, None, None] == 28)] = 0
    assert erased.any() and added.any() and relabelled.any()
    set_result_labels(case, result, corrected)
    assert np.array_equal(engine_labels(case, result), corrected)

    again = logic.preparePropagation(case.volumes, case.painted, outputNode=result, options=SEEDS)
    changed = (corrected != written) & (strokes == 0)
    expected = strokes.copy()
    expected[changed] = np.where(corrected[changed] == 0, BACKGROUND_LABEL, corrected[changed])
    assert np.array_equal(again.annotation, expected)
    assert again.correctedSlices == [int(z) for z in np.flatnonzero(changed.any(axis=(0, 1)))]
    assert any("are seeds of this run" in m and f"'{result.GetName()}'" in m for m in logic.lastMessages)

    updated = logic.propagate(case.volumes, case.painted, SEEDS, outputNode=result)
    assert updated is result and "Background" not in segment_names(result)
    labels = engine_labels(case, result)
    seeds = expected > 0
    assert np.array_equal(labels[seeds], np.where(expected == BACKGROUND_LABEL, 0, expected)[seeds])
    assert_same_snapshot(painted_before, snapshot(case.painted))


# ------------------------------------------------------------------------------------------ through the panel

@pytest.fixture(scope="module")
def service(tmp_path_factory):
    s = start_service(tmp_path_factory.mktemp("service"))
    yield s
    s.stop()


def test_a_seeds_propagation_as_the_panel_runs_it(case, service):
    """Automatic mode with Background painted: the panel says seeds before and during the run, the engine (a real
    service) gets the seeds, its warning (a Background stroke outside the head) is in the status once, the result
    has the tumour segments only and the painted segmentation is unchanged."""
    from BrainDiffSegSlicer import parameters
    from BrainDiffSegSlicer.panel import EngineSettings, PanelModel

    logic = case.logic
    strokes = case.strokes.copy()
    assert not case.head[0, 0, 10]
    strokes[0:2, 0:2, 10] = BACKGROUND_LABEL  # a stroke that slipped off the head
    painted = logic.paintTumourSegments(case.reference, strokes, backgroundLabel=BACKGROUND_LABEL, name="Strokes")
    before = snapshot(painted)
    model = PanelModel(logic)
    model.setEngineSettings(EngineSettings("remote", service.url, service.token))
    node = logic.getParameterNode()
    parameters.setDefaultParameters(node)
    for key, value in to_strings(QUICK).items():
        if key != "annotation-mode":
            node.SetParameter(parameters.parameterName(key), value)
    for role in ("flair", "t1ce"):
        node.SetNodeReferenceID(f"Input_{role}", case.volumes[role].GetID())
    node.SetNodeReferenceID("Segmentation", painted.GetID())
    assert model.view(node).annotationText == "Propagate uses seeds (strokes): Background is painted."
    try:
        model.startPropagation(node)
        assert model.view(node).annotationText == "This run uses seeds (strokes): Background is painted."
        end, deadline = None, time.monotonic() + 300
        while end is None:
            end = model.tick()
            view = model.view(node)
            assert time.monotonic() < deadline, view
            if end is None:
                time.sleep(max(view.nextPollMs, 1) / 1000)
        assert end.status == "done", end.message
        warnings = logic.lastResult.warnings
        assert warnings and all(view.status.count(w) == 1 for w in warnings), (warnings, view.status)
        assert view.annotationText == "Propagate uses seeds (strokes): Background is painted."
        assert segment_names(end.outcome) == ["Edema", "Enhancing tumour"]
        assert_same_snapshot(before, snapshot(painted))
    finally:
        logic.stopEngine()
