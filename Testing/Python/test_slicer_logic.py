"""The 3D Slicer layer (`BrainDiffSeg/BrainDiffSeg.py`, `BrainDiffSegSlicer`) under the `slicer-core` wheel: real
MRML nodes, no Qt, and no global scene (each test's scene and module logics are passed to the Logic).

The Logic is exercised on a crop of the real case BraTS2021_00006 loaded through `loadCase` (volumes and labels read
by Slicer's archetype storage node), with a segmentation painted on the 3 protocol slices from the ground truth.
Also: the module description, the packaging files (catalog JSON, icon), the parameter node, the shared scenarios
of `slicer_scenarios.py` (also the module's self-test) and the rule that the engine never imports Slicer, Qt or VTK.

Longer than 400 lines: the tests share module-scoped fixtures (the real case loaded once, one propagation reused by
several tests), which splitting the file would load again.
"""
from __future__ import annotations

import json
import re
import time
import subprocess
import sys

from dataclasses import replace

import numpy as np
import pytest

from BrainDiffSegLib.propagation.classifier import ClassifierOptions
from BrainDiffSegLib.errors import CancelledError, InputError, OutputExistsError
from BrainDiffSegLib.propagation.propagate import PropagationOptions
from BrainDiffSegLib.protocol import protocol_slices, region_dice
from BrainDiffSegLib.resources import default_checkpoint
from conftest import REPO, slicer_scene_context

CASE = "brats2021/BraTS2021_00006"
CROP = (60, 100, 100)  # K, J, I (slicer.util.arrayFromVolume order): 100 x 100 voxels in-plane, 60 axial slices
FAST = ClassifierOptions(n_models=2, max_epochs=6, hidden=(32, 16), batch_size=1024)
RAW = PropagationOptions(method="raw", device="cpu", classifier=FAST)
# painted segments, deliberately not in label order and with user-style names: mapped to BraTS 2, 1, 4 by name
PAINTED = (("edema", 2, (0.2, 0.2, 0.9)), ("NCR", 1, (0.9, 0.5, 0.1)), ("enhancing tumor", 4, (0.8, 0.2, 0.8)))
MODULE_FILE = REPO / "BrainDiffSeg" / "BrainDiffSeg.py"
LIB = REPO / "BrainDiffSeg" / "BrainDiffSegLib"
SLICER_PACKAGE = REPO / "BrainDiffSeg" / "BrainDiffSegSlicer"


@pytest.fixture(scope="module")
def M():
    """The module file, imported under slicer-core."""
    pytest.importorskip("slicer")
    import BrainDiffSeg

    return BrainDiffSeg


@pytest.fixture(scope="module")
def crop(data_root, M):
    """BraTS2021_00006 loaded by `loadCase`, then cropped to CROP around the tumour: KJI arrays per role, the
    ground truth and the crop's IJK-to-RAS matrix (the full volume's, moved to the crop's first voxel)."""
    import slicer

    case_dir = data_root / CASE
    if not case_dir.is_dir():
        pytest.skip(f"{case_dir} not available")
    with slicer_scene_context() as headless:
        scene = headless.scene
        nodes = headless.logic().loadCase(case_dir, loadGroundTruth=True)
        assert set(nodes) == {"t1", "t1ce", "t2", "flair", "seg"}
        assert all(n.IsA("vtkMRMLScalarVolumeNode") for n in nodes.values())
        assert nodes["seg"].IsA("vtkMRMLLabelMapVolumeNode") and not nodes["t1"].IsA("vtkMRMLLabelMapVolumeNode")
        assert nodes["flair"].GetName() == "BraTS2021_00006_flair"
        full = {role: slicer.util.arrayFromVolume(n).copy() for role, n in nodes.items()}
        ijk_to_ras = M.BrainDiffSegLogic.ijkToRasArray(nodes["flair"])
        axis = M.BrainDiffSegLogic.axialAxis(nodes["flair"])
        n_nodes = scene.GetNumberOfNodes()
    tumour = np.argwhere(full["seg"] > 0)
    centre = (tumour.min(0) + tumour.max(0)) // 2
    start = np.clip(centre - np.array(CROP) // 2, 0, np.array(full["seg"].shape) - CROP)
    window = tuple(slice(s, s + n) for s, n in zip(start, CROP))
    shift = np.eye(4)
    shift[:3, 3] = start[::-1]  # IJK offset of the crop's first voxel
    arrays = {role: np.ascontiguousarray(a[window]) for role, a in full.items()}
    return {"arrays": arrays, "ijk_to_ras": ijk_to_ras @ shift, "full": full, "full_ijk_to_ras": ijk_to_ras,
            "axis": axis, "case_dir": case_dir, "loaded_nodes": n_nodes}


def add_volume(scene, kji, ijk_to_ras, name, class_name="vtkMRMLScalarVolumeNode"):
    """A volume node in `scene` from a KJI array (slicer.util.addVolumeFromArray would use the global scene)."""
    from BrainDiffSegSlicer.arrays import addVolumeFromArray

    return addVolumeFromArray(scene, kji, ijk_to_ras, name, class_name)


def add_volumes(scene, crop, roles=("t1", "t1ce", "t2", "flair")):
    return {r: add_volume(scene, crop["arrays"][r].astype(np.float32), crop["ijk_to_ras"], f"crop {r}")
            for r in roles}


def paint(scene, reference, label_kji, segments=PAINTED, name="Painted"):
    """A segmentation with one segment per (name, value, colour), painted where label_kji == value."""
    from BrainDiffSegSlicer.arrays import setSegmentFromArray

    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    for seg_name, value, colour in segments:
        sid = node.GetSegmentation().AddEmptySegment("", seg_name, colour)
        mask = (label_kji == value).astype(np.uint8)
        if mask.any():
            setSegmentFromArray(node, sid, mask, reference)
    return node


def painted_truth(crop, M, k=3):
    """Ground truth of the crop (KJI) kept on the k protocol slices only, and those slices."""
    gt = crop["arrays"]["seg"]
    zs = protocol_slices(M.BrainDiffSegLogic.toEngineArray(gt, crop["axis"]), k)
    ann = np.zeros_like(gt)
    ann[zs] = gt[zs]  # the axial axis is K here: the first axis of the KJI array
    return ann, zs


def snapshot(node):
    """Everything a user sees of a segmentation: ids, names, colours, label values, voxels per segment, MTimes."""
    import slicer

    seg = node.GetSegmentation()
    state = {"mtime": (node.GetMTime(), seg.GetMTime()), "segments": []}
    for sid in seg.GetSegmentIDs():
        s = seg.GetSegment(sid)
        voxels = slicer.util.arrayFromSegmentInternalBinaryLabelmap(node, sid).copy()
        state["segments"].append((sid, s.GetName(), tuple(s.GetColor()), s.GetLabelValue(), voxels))
    return state


def assert_same_snapshot(a, b):
    assert a["mtime"] == b["mtime"]
    assert [s[:4] for s in a["segments"]] == [s[:4] for s in b["segments"]]
    for x, y in zip(a["segments"], b["segments"]):
        np.testing.assert_array_equal(x[4], y[4])


def scene_ids(scene):
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


@pytest.fixture(scope="module")
def raw_run(crop, M):
    """One propagation with the raw features through the Logic, uncertainty volume requested."""
    with slicer_scene_context() as headless:
        scene = headless.scene
        volumes = add_volumes(scene, crop)
        ann, zs = painted_truth(crop, M)
        painted = paint(scene, volumes["flair"], ann)
        before = snapshot(painted)
        n_before = scene.GetNumberOfNodes()
        stages = []
        logic = headless.logic()
        out = logic.propagate(volumes, painted, RAW, progress=lambda s, f: stages.append((s, f)),
                              createUncertainty=True)
        yield {"scene": scene, "headless": headless, "logic": logic, "volumes": volumes, "painted": painted, "before": before,
               "n_before": n_before, "out": out, "zs": zs, "ann": ann, "stages": stages}


# ------------------------------------------------------------------------------------------ module and packaging

def test_module_imports_under_slicer_core(M):
    import types

    assert M.SLICER_APPLICATION is False  # the stand-in base classes are in use
    assert issubclass(M.BrainDiffSegLogic, M.ScriptedLoadableModuleLogic)
    assert M.ScriptedLoadableModule is not object and M.ScriptedLoadableModuleLogic is not object
    parent = types.SimpleNamespace(path=str(MODULE_FILE))
    module = M.BrainDiffSeg(parent)
    assert parent.title == "BrainDiffSeg" and parent.categories == ["Segmentation"]
    assert parent.contributors and "propagat" in parent.helpText
    assert "Alshenoudy" in parent.acknowledgementText and "AIAI 2023" in parent.acknowledgementText
    assert "Baranchuk" in parent.acknowledgementText and "ICLR 2022" in parent.acknowledgementText
    assert module.iconPath() == REPO / "Resources" / "Icons" / "BrainDiffSeg.png"
    assert M.BrainDiffSegLogic().moduleName == "BrainDiffSeg"
    from BrainDiffSegSlicer.install import missingPackages

    assert missingPackages() == []


def test_module_file_loads_without_the_engine_dependencies(tmp_path):
    """Slicer loads the module before torch & co. are installed: importing it must not import them."""
    pytest.importorskip("slicer")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import BrainDiffSeg; "
            "heavy = [m for m in ('torch', 'diffusers', 'nibabel', 'skimage', 'scipy') if m in sys.modules]; "
            "assert not heavy, heavy; print('ok')")
    run = subprocess.run([sys.executable, "-c", code, str(MODULE_FILE.parent)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-2000:]


def test_engine_never_imports_slicer_qt_or_vtk():
    pattern = re.compile(r"^\s*(import|from)\s+(slicer|qt|ctk|vtk\w*|mrml\w*|PythonQt|PySide\w*|PyQt\w*)\b",
                         re.MULTILINE)
    offenders = {p.name: pattern.findall(p.read_text()) for p in LIB.glob("*.py")}
    assert len(offenders) >= 10 and not any(offenders.values()), offenders
    code = ("import importlib, pkgutil, sys; sys.path.insert(0, sys.argv[1]); import BrainDiffSegLib as L; "
            "[importlib.import_module('BrainDiffSegLib.' + m.name) for m in pkgutil.iter_modules(L.__path__)]; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('slicer', 'qt', 'ctk', 'vtk', 'vtkmodules')]; "
            "assert not bad, bad; print('ok')")
    run = subprocess.run([sys.executable, "-c", code, str(LIB.parent)], capture_output=True, text=True, timeout=180)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-2000:]


def test_extension_catalog_entry_and_icon():
    entry = json.loads((REPO / "BrainDiffSeg.json").read_text())
    assert entry["$schema"].startswith("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/"
                                       "slicer-extension-catalog-entry-schema-v1.0.")
    allowed = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
               "dicom_support_rule", "build_subdirectory", "enabled", "tier"}
    assert {"$schema", "category", "scm_url"} <= set(entry) <= allowed
    s4ext = dict(line.split(" ", 1) for line in (REPO / "BrainDiffSeg.s4ext").read_text().splitlines()
                 if line and not line.startswith("#"))
    assert entry["scm_url"] == s4ext["scmurl"] and entry["category"] == s4ext["category"] == "Segmentation"
    assert entry["scm_revision"] == s4ext["scmrevision"] and entry["build_subdirectory"] == "."
    assert isinstance(entry["build_dependencies"], list) and entry["tier"] in (1, 3, 5)
    # torch comes through the PyTorch extension (PyTorchUtils), declared the same way in all three places
    assert entry["build_dependencies"] == s4ext["depends"].split() == ["PyTorch"]
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in (REPO / "CMakeLists.txt").read_text()
    from PIL import Image

    icon = Image.open(REPO / "Resources" / "Icons" / "BrainDiffSeg.png")
    assert icon.size == (128, 128)
    pixels = np.asarray(icon.convert("RGBA"))
    assert len(np.unique(pixels.reshape(-1, 4), axis=0)) > 20  # drawn, not blank


def test_segment_name_rule(M):
    from BrainDiffSegSlicer.segments import labelValuesForSegments as rule

    assert rule(["Necrotic core", "Edema", "Enhancing tumour"]) == ([1, 2, 4], True)
    assert rule(["ET", "ED", "NCR"]) == ([4, 2, 1], True)
    assert rule(["non-enhancing tumour", "peritumoral oedema"]) == ([1, 2], True)
    assert rule(["seg_ET", "Segment_1"]) == ([1, 2], False)  # not all recognised: 1..N in order
    assert rule(["edema", "ED"]) == ([1, 2], False)  # two segments in one class
    assert rule(["Tumor"]) == ([1], False)
    term = "Segmentation category and type - 3D Slicer General Anatomy list~SCT^49755003^Morphologically Altered " \
           "Structure~SCT^6574001^Necrosis~^^~Anatomic codes~^^~^^"
    assert rule(["Segment_1"], [term]) == ([1], True)


# ------------------------------------------------------------------------------------------ loading

def test_load_case_matches_the_engine_reader(crop, M):
    """Volumes read by Slicer's storage node, in the engine's axes, equal the engine's (nibabel) arrays."""
    from BrainDiffSegLib.io import load_case

    case = load_case(crop["case_dir"])
    assert crop["axis"] == case.axial_axis
    np.testing.assert_allclose(crop["full_ijk_to_ras"], case.affine, atol=1e-4)
    for role in ("t1", "t1ce", "t2", "flair"):
        np.testing.assert_array_equal(M.BrainDiffSegLogic.toEngineArray(crop["full"][role], crop["axis"]),
                                      case.images[role])
    np.testing.assert_array_equal(M.BrainDiffSegLogic.toEngineArray(crop["full"]["seg"], crop["axis"]), case.label)
    assert crop["loaded_nodes"] > 5


def test_load_case_errors(mrml_scene, M, tmp_path):
    with pytest.raises(InputError, match="No MRI sequence found"):
        M.BrainDiffSegLogic(mrml_scene).loadCase(tmp_path)
    (tmp_path / "X_flair.nii.gz").write_bytes(b"not a nifti file")
    n = mrml_scene.GetNumberOfNodes()
    with pytest.raises(InputError, match="X_flair.nii.gz"):
        M.BrainDiffSegLogic(mrml_scene).loadCase(tmp_path)
    assert mrml_scene.GetNumberOfNodes() == n


# ------------------------------------------------------------------------------------------ propagation

def test_propagation_creates_a_new_segmentation(raw_run, crop):
    import slicer

    out, scene = raw_run["out"], raw_run["scene"]
    assert out.IsA("vtkMRMLSegmentationNode") and out.GetScene() is scene
    assert out.GetName() == "Painted propagated" and out.GetID() != raw_run["painted"].GetID()
    assert scene.GetNumberOfNodes() > raw_run["n_before"]
    seg = out.GetSegmentation()
    segments = [seg.GetSegment(s) for s in seg.GetSegmentIDs()]
    assert [s.GetName() for s in segments] == ["Necrotic core", "Edema", "Enhancing tumour"]
    assert [s.GetLabelValue() for s in segments] == [1, 2, 4]
    assert len({tuple(np.round(s.GetColor(), 3)) for s in segments}) == 3
    terms = [s.GetTerminology() for s in segments]  # SNOMED CT necrosis / edema / neoplasm, region brain
    assert [t.split("~")[2].split("^")[1] for t in terms] == ["6574001", "79654002", "108369006"]
    assert all("^Brain~" in t for t in terms)
    assert out.GetDisplayNode() is not None
    assert json.loads(out.GetAttribute("BrainDiffSeg.annotatedSlices")) == {"axis": "K", "indices": raw_run["zs"]}
    assert out.GetNodeReference("BrainDiffSeg.sourceSegmentation") is raw_run["painted"]
    assert raw_run["stages"][-1] == ("done", 1.0)
    # geometry identical to the input volume
    flair = raw_run["volumes"]["flair"]
    ref = slicer.vtkOrientedImageData()
    ref.SetExtent(flair.GetImageData().GetExtent())
    ref.SetImageToWorldMatrix(_matrix(crop["ijk_to_ras"]))
    geometry = out.GetSegmentation().GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
    assert geometry == slicer.vtkSegmentationConverter.SerializeImageGeometry(ref)
    internal = out.GetBinaryLabelmapInternalRepresentation(seg.GetSegmentIDs()[0])
    assert internal.GetExtent() == flair.GetImageData().GetExtent()
    m = _matrix(np.eye(4))
    internal.GetImageToWorldMatrix(m)
    np.testing.assert_allclose(_array(m), crop["ijk_to_ras"], atol=1e-6)
    np.testing.assert_allclose(_array(m), M_ijk(flair), atol=1e-6)


def test_propagation_quality_and_annotated_slices_kept(raw_run, crop):
    logic, out = raw_run["logic"], raw_run["out"]
    labels, _, brats = logic.labelArrayFromSegmentation(out, raw_run["volumes"]["flair"])
    assert brats
    gt, zs = crop["arrays"]["seg"], raw_run["zs"]
    np.testing.assert_array_equal(labels[zs], gt[zs])  # painted slices kept exactly (axial = first KJI axis)
    np.testing.assert_array_equal(logic.toEngineArray(labels, 2), logic.lastResult.labels)
    scores = region_dice(logic.toEngineArray(labels, 2), logic.toEngineArray(gt, 2), zs)
    assert scores["WT"] > 0.85 and scores["TC"] > 0.7 and scores["ET"] > 0.6, scores


def test_painted_segmentation_is_left_unchanged(raw_run):
    assert_same_snapshot(raw_run["before"], snapshot(raw_run["painted"]))
    labels, _, _ = raw_run["logic"].labelArrayFromSegmentation(raw_run["painted"], raw_run["volumes"]["flair"])
    np.testing.assert_array_equal(labels, raw_run["ann"])


def test_uncertainty_volume(raw_run, crop):
    import slicer

    unc = raw_run["logic"].lastUncertaintyNode
    assert unc is not None and unc is raw_run["logic"].uncertaintyNodeOf(raw_run["out"])
    assert unc.GetName() == "Painted propagated uncertainty" and unc.IsA("vtkMRMLScalarVolumeNode")
    np.testing.assert_allclose(M_ijk(unc), crop["ijk_to_ras"], atol=1e-6)
    values = slicer.util.arrayFromVolume(unc)
    assert values.shape == CROP and values.min() >= 0 and values.max() <= 1 + 1e-5 and values.max() > 0.1
    assert not values[raw_run["zs"]].any()  # no uncertainty on the painted slices


def test_save_segmentation(raw_run, crop, tmp_path):
    import nibabel as nib
    import slicer

    logic, out = raw_run["logic"], raw_run["out"]
    nii = logic.saveSegmentation(out, tmp_path / "out" / "labels.nii.gz")
    img = nib.load(str(nii))
    np.testing.assert_allclose(img.affine, crop["ijk_to_ras"], atol=1e-4)
    np.testing.assert_array_equal(np.asarray(img.dataobj), logic.lastResult.labels)  # axial-last IJK = NIfTI order
    with pytest.raises(OutputExistsError):
        logic.saveSegmentation(out, nii)
    seg_file = logic.saveSegmentation(out, tmp_path / "labels.seg.nrrd")
    loaded = raw_run["headless"].segmentationsLogic.LoadSegmentationFromFile(str(seg_file), False)
    assert loaded is not None
    names = [loaded.GetSegmentation().GetSegment(s).GetName() for s in loaded.GetSegmentation().GetSegmentIDs()]
    assert names == ["Necrotic core", "Edema", "Enhancing tumour"]
    again, _, _ = logic.labelArrayFromSegmentation(loaded, raw_run["volumes"]["flair"])
    np.testing.assert_array_equal(logic.toEngineArray(again, 2), logic.lastResult.labels)
    with pytest.raises(InputError, match="use .seg.nrrd or .nii.gz"):
        logic.saveSegmentation(out, tmp_path / "labels.png")


@pytest.mark.skipif(not (default_checkpoint() / "model.safetensors").is_file(), reason="no bundled backbone")
def test_propagation_with_the_default_diffusion_method(mrml_scene, crop, M):
    volumes = add_volumes(mrml_scene, crop)
    ann, zs = painted_truth(crop, M)
    painted = paint(mrml_scene, volumes["flair"], ann)
    before = snapshot(painted)
    logic = M.BrainDiffSegLogic(mrml_scene)
    out = logic.propagate(volumes, painted, PropagationOptions(device="cpu", classifier=FAST))
    assert logic.lastResult.timings and out.GetSegmentation().GetNumberOfSegments() == 3
    labels, _, _ = logic.labelArrayFromSegmentation(out, volumes["flair"])
    scores = region_dice(logic.toEngineArray(labels, 2), logic.toEngineArray(crop["arrays"]["seg"], 2), zs)
    assert scores["WT"] > 0.85, scores
    assert_same_snapshot(before, snapshot(painted))


def test_generic_segments_keep_their_names_and_values(mrml_scene, crop, M):
    """Segments that are not BraTS classes are numbered 1..N in order and keep their names in the result."""
    volumes = add_volumes(mrml_scene, crop, roles=("flair", "t1ce"))
    ann, _ = painted_truth(crop, M)
    whole = np.where(ann > 0, 7, 0)
    painted = paint(mrml_scene, volumes["flair"], whole, segments=(("Lesion", 7, (0.3, 0.6, 0.9)),), name="Mine")
    out = M.BrainDiffSegLogic(mrml_scene).propagate(volumes, painted, RAW)
    seg = out.GetSegmentation()
    assert out.GetName() == "Mine propagated"
    assert [seg.GetSegment(s).GetName() for s in seg.GetSegmentIDs()] == ["Lesion"]
    assert seg.GetSegment(seg.GetSegmentIDs()[0]).GetLabelValue() == 1
    np.testing.assert_allclose(seg.GetSegment(seg.GetSegmentIDs()[0]).GetColor(), (0.3, 0.6, 0.9))


@pytest.mark.parametrize("modules", ["logics given", "logics of its own"])
def test_cancel_leaves_the_scene_unchanged(headless, mrml_scene, crop, M, modules):
    volumes = add_volumes(mrml_scene, crop, roles=("flair", "t1ce"))
    ann, _ = painted_truth(crop, M)
    painted = paint(mrml_scene, volumes["flair"], ann)
    before, ids = snapshot(painted), scene_ids(mrml_scene)
    calls = []

    def cancelled():
        calls.append(1)
        return len(calls) > 1  # False on the first call, True afterwards

    # plain slicer-core without module logics given: the Logic makes its own, attached to the scene
    logic = headless.logic() if modules == "logics given" else M.BrainDiffSegLogic(mrml_scene)
    with pytest.raises(CancelledError):
        logic.propagate(volumes, painted, RAW, cancelled=cancelled, createUncertainty=True)
    assert len(calls) >= 2
    assert scene_ids(mrml_scene) == ids
    assert logic.lastResult is None and logic.lastUncertaintyNode is None
    assert_same_snapshot(before, snapshot(painted))


def test_surface_only_segmentation_is_read_from_a_copy(mrml_scene, M):
    """A segmentation whose only representation is a closed surface is rasterised on a copy outside the scene."""
    import slicer

    volume = add_volume(mrml_scene, np.ones((20, 40, 40), np.float32), np.diag([-1.0, -1.0, 2.0, 1.0]), "v")
    painted = np.zeros((20, 40, 40), np.uint8)
    painted[8:12, 10:25, 10:25] = 1
    node = paint(mrml_scene, volume, painted, segments=(("Edema", 1, (0, 1, 0)),), name="Surface")
    node.CreateClosedSurfaceRepresentation()
    node.GetSegmentation().SetSourceRepresentationName("Closed surface")
    node.GetSegmentation().RemoveRepresentation("Binary labelmap")
    mtimes, n_nodes = (node.GetMTime(), node.GetSegmentation().GetMTime()), mrml_scene.GetNumberOfNodes()
    labels, ids, brats = M.BrainDiffSegLogic(mrml_scene).labelArrayFromSegmentation(node, volume)
    assert brats and set(ids) == {2} and set(np.unique(labels)) == {0, 2}
    assert (labels > 0).sum() > 0.7 * painted.sum() and not labels[painted == 0].any()
    assert (node.GetMTime(), node.GetSegmentation().GetMTime()) == mtimes
    assert not node.GetSegmentation().ContainsRepresentation("Binary labelmap")
    assert mrml_scene.GetNumberOfNodes() == n_nodes


def test_the_modules_self_test_runs_headless(mrml_scene, M, data_root):
    """BrainDiffSegTest (what Slicer's self-test and `slicer_add_python_unittest` run) passes under slicer-core (its
    real-case scenario needs the shared data: skipped with the other real-data tests without it)."""
    import unittest

    result = unittest.TextTestRunner(verbosity=0).run(unittest.defaultTestLoader.loadTestsFromTestCase(
        M.BrainDiffSegTest))
    assert result.testsRun == 4 and result.wasSuccessful() and not result.skipped, result


def test_the_modules_self_test_skips_without_the_source_tree(M, tmp_path, monkeypatch):
    """In an installed extension (no Testing/ beside the module) the self-test skips, saying why."""
    import unittest

    import BrainDiffSegSlicer.module

    monkeypatch.setattr(BrainDiffSegSlicer.module, "TESTING_DIR", tmp_path / "Testing" / "Python")
    result = unittest.TextTestRunner(verbosity=0).run(unittest.defaultTestLoader.loadTestsFromTestCase(
        M.BrainDiffSegTest))
    assert result.testsRun == 4 and result.wasSuccessful() and len(result.skipped) == 4, result
    assert all("installed extension" in reason for _, reason in result.skipped)


def test_scenario_synthetic_propagation(headless):
    """The synthetic scenario shared with the module's self-test (`slicer_scenarios.py`)."""
    import slicer_scenarios

    slicer_scenarios.propagate_synthetic(headless.logic())


def test_scenario_seeds_propagation(headless):
    """The seeds scenario shared with the module's self-test: strokes in three views plus Background."""
    import slicer_scenarios

    slicer_scenarios.propagate_seeds_synthetic(headless.logic())


def test_scenario_real_case_in_background(headless, data_root):
    """The real-case scenario shared with the module's self-test: background run, update in place, cancel."""
    import slicer_scenarios

    slicer_scenarios.real_case_in_background(headless.logic(), data_root / CASE)


def test_scenario_inpaint_in_background(headless, data_root):
    """The inpainting scenario shared with the module's self-test: background run on a real T1, cancel."""
    import slicer_scenarios

    slicer_scenarios.inpaint_in_background(headless.logic(), data_root / CASE)


def test_two_scenes_at_once_and_no_global_scene(crop, M):
    """Two Logics on two independent scenes: each loads and propagates into its own scene; the global
    `slicer.mrmlScene` (absent under slicer-core) is neither created nor used, `slicer.modules` neither."""
    import slicer

    had = {name: getattr(slicer, name, None) for name in ("mrmlScene", "modules")}
    count = had["mrmlScene"].GetNumberOfNodes() if had["mrmlScene"] is not None else None
    with slicer_scene_context() as a, slicer_scene_context() as b:
        logic_a, logic_b = a.logic(), M.BrainDiffSegLogic(b.scene)  # given logics / logics of its own
        assert logic_b.scene is b.scene and logic_b.volumesLogic.GetMRMLScene() is b.scene
        n_b = b.scene.GetNumberOfNodes()
        nodes = logic_a.loadCase(crop["case_dir"])
        assert all(n.GetScene() is a.scene for n in nodes.values()) and b.scene.GetNumberOfNodes() == n_b
        node_a = logic_a.getParameterNode()
        assert node_a.GetScene() is a.scene and logic_b.getParameterNode() is not node_a
        results = []
        for headless, logic in ((a, logic_a), (b, logic_b)):
            volumes = add_volumes(headless.scene, crop, roles=("flair",))
            painted = paint(headless.scene, volumes["flair"], painted_truth(crop, M)[0])
            results.append(logic.propagate(volumes, painted, RAW))
        assert results[0].GetScene() is a.scene and results[1].GetScene() is b.scene
        assert a.scene.GetNodeByID(results[1].GetID()) is not results[1]
        np.testing.assert_array_equal(logic_a.labelArrayFromSegmentation(results[0], nodes["flair"])[0].shape,
                                      nodes["flair"].GetImageData().GetDimensions()[::-1])
    assert {name: getattr(slicer, name, None) for name in ("mrmlScene", "modules")} == had
    if count is not None:
        assert had["mrmlScene"].GetNumberOfNodes() == count


def test_slicer_layer_structure():
    """The module file is a thin entry point; the Slicer layer never imports the command line, the benchmarks nor
    the web annotator, and reads the global scene / module logics only in the Logic's constructor defaults."""
    module_text = MODULE_FILE.read_text()
    assert len(module_text.splitlines()) <= 150
    pattern = re.compile(r"^\s*(import|from)\s+(BrainDiffSegCLI|BrainDiffSegBench|BrainDiffSegWeb)\b", re.MULTILINE)
    files = [MODULE_FILE, *SLICER_PACKAGE.glob("*.py")]
    assert len(files) >= 9 and not [p.name for p in files if pattern.search(p.read_text())]
    for path in SLICER_PACKAGE.glob("*.py"):
        text = path.read_text()
        if path.name in ("widget.py", "install.py", "module.py", "version.py"):
            continue  # inside the Slicer application only: the panel, installing, the self-test, the version check
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith(("#", "`")))
        uses = re.findall(r"slicer\.(mrmlScene|modules|app)\b", code.split('"""', 2)[-1])
        if path.name == "logic.py":
            assert sorted(set(uses)) == ["modules", "mrmlScene"], uses  # the constructor's defaults
            init = text[text.index("def __init__"):text.index("def _ownLogic")]
            assert len(re.findall(r"slicer\.(mrmlScene|modules)\b", text.split('"""', 2)[-1])) == \
                len(re.findall(r"slicer\.(mrmlScene|modules)\b", init)), "a method uses the global scene"
        else:
            assert not uses, (path.name, uses)


# ------------------------------------------------------------------------------------------ what the panel uses

def test_background_propagation_and_prompt_cancel(mrml_scene, crop, M):
    """startPropagation reads the nodes, runs the engine in a thread (progress reported), finishPropagation adds
    the result; a run cancelled right after it started stops within seconds and leaves the scene as it was."""
    volumes = add_volumes(mrml_scene, crop, roles=("flair", "t1ce"))
    ann, zs = painted_truth(crop, M)
    painted = paint(mrml_scene, volumes["flair"], ann)
    before, ids = snapshot(painted), scene_ids(mrml_scene)
    logic = M.BrainDiffSegLogic(mrml_scene)
    run = logic.startPropagation(volumes, painted, RAW, createUncertainty=True)
    assert run is logic.jobs.job and logic.running
    assert scene_ids(mrml_scene) == ids  # nothing is added while the engine runs
    states = []
    while not run.done:
        state = logic.jobs.poll()
        states.append(state)
        if state.status == "running" and state.stage != "adding the result":
            assert scene_ids(mrml_scene) == ids
        time.sleep(0.02)
    assert {s.stage for s in states} >= {"predicting", "adding the result"}, {s.stage for s in states}
    assert all(0.0 <= s.fraction <= 1.0 for s in states)
    assert run.state.status == "done" and run.state.fraction == 1.0
    out = logic.finishPropagation(run)
    assert out is run.outcome()
    labels, _, _ = logic.labelArrayFromSegmentation(out, volumes["flair"])
    gt = logic.toEngineArray(crop["arrays"]["seg"], 2)
    assert region_dice(logic.toEngineArray(labels, 2), gt, zs)["WT"] > 0.8
    assert_same_snapshot(before, snapshot(painted))

    ids = scene_ids(mrml_scene)
    run = logic.startPropagation(volumes, painted, RAW, createUncertainty=True)
    with pytest.raises(RuntimeError, match="not finished"):
        logic.finishPropagation(run)
    run.cancel()
    assert run.wait(30), "cancel did not stop the engine promptly"
    assert run.state.status == "cancelled" and run.state.message == "Propagation cancelled."
    with pytest.raises(CancelledError):
        logic.finishPropagation(run)
    assert scene_ids(mrml_scene) == ids
    assert_same_snapshot(before, snapshot(painted))


def test_rerun_updates_the_previous_result_in_place(mrml_scene, crop, M):
    """Painting one more slice and propagating again updates the earlier result node (and its uncertainty volume)
    instead of adding new nodes; the painted segmentation and unrelated segmentations are never targets."""
    import slicer

    volumes = add_volumes(mrml_scene, crop, roles=("flair", "t1ce"))
    gt = crop["arrays"]["seg"]
    ann2, zs2 = painted_truth(crop, M, k=2)
    painted = paint(mrml_scene, volumes["flair"], ann2)
    logic = M.BrainDiffSegLogic(mrml_scene)
    first = logic.propagate(volumes, painted, RAW, createUncertainty=True)
    unc = logic.uncertaintyNodeOf(first)
    assert logic.previousResultOf(painted) is first
    first_labels = logic.labelArrayFromSegmentation(first, volumes["flair"])[0].copy()

    ann3, zs3 = painted_truth(crop, M, k=3)
    extra = sorted(set(zs3) - set(zs2))[0]
    for sid in painted.GetSegmentation().GetSegmentIDs():  # paint one more slice, as a user would
        value = {"edema": 2, "NCR": 1, "enhancing tumor": 4}[painted.GetSegmentation().GetSegment(sid).GetName()]
        mask = logic.labelArrayFromSegmentation(painted, volumes["flair"])[0] == value  # the segments are disjoint
        mask[extra] = gt[extra] == value
        logic.setSegmentFromArray(painted, sid, mask.astype(np.uint8), volumes["flair"])
    before, ids = snapshot(painted), scene_ids(mrml_scene)
    again = logic.propagate(volumes, painted, RAW, createUncertainty=True,
                            outputNode=logic.previousResultOf(painted))
    assert again is first and logic.uncertaintyNodeOf(again) is unc and logic.lastUncertaintyNode is unc
    assert scene_ids(mrml_scene) == ids
    labels = logic.labelArrayFromSegmentation(again, volumes["flair"])[0]
    assert not np.array_equal(labels, first_labels)
    np.testing.assert_array_equal(labels[extra], gt[extra])  # the newly painted slice is kept exactly
    assert json.loads(again.GetAttribute("BrainDiffSeg.annotatedSlices"))["indices"] == sorted({*zs2, extra})
    assert_same_snapshot(before, snapshot(painted))

    other = paint(mrml_scene, volumes["flair"], ann2, name="Other")
    with pytest.raises(InputError, match="cannot receive the result"):
        logic.propagate(volumes, painted, RAW, outputNode=painted)
    with pytest.raises(InputError, match="'Other' is not a result propagated from 'Painted'"):
        logic.propagate(volumes, painted, RAW, outputNode=other)
    assert_same_snapshot(before, snapshot(painted))


def test_multi_component_volume(mrml_scene, crop, M):
    """One 4-component volume (components t1, t1ce, t2, flair) gives the same result as four scalar volumes; with
    fewer components the roles must be named."""
    import slicer

    stacked = np.stack([crop["arrays"][r].astype(np.float32) for r in ("t1", "t1ce", "t2", "flair")], axis=-1)
    vector = add_volume(mrml_scene, stacked, crop["ijk_to_ras"], "multi", "vtkMRMLVectorVolumeNode")
    volumes = add_volumes(mrml_scene, crop)
    ann, _ = painted_truth(crop, M)
    painted = paint(mrml_scene, volumes["flair"], ann)
    logic = M.BrainDiffSegLogic(mrml_scene)
    a = logic.labelArrayFromSegmentation(logic.propagate(vector, painted, RAW), volumes["flair"])[0]
    b = logic.labelArrayFromSegmentation(logic.propagate(volumes, painted, RAW), volumes["flair"])[0]
    np.testing.assert_array_equal(a, b)
    two = add_volume(mrml_scene, stacked[..., [3, 1]].copy(), crop["ijk_to_ras"], "two",
                                         "vtkMRMLVectorVolumeNode")
    with pytest.raises(InputError, match="has 2 components: say which sequence"):
        logic.propagate(two, painted, RAW)
    with pytest.raises(InputError, match="2 components but 3 sequence names"):
        logic.propagate(two, painted, RAW, componentRoles=["flair", "t1ce", "t2"])
    with pytest.raises(InputError, match="distinct sequence roles"):
        logic.propagate(two, painted, RAW, componentRoles=["flair", "flair"])
    out = logic.propagate(two, painted, RAW, componentRoles=["flair", "t1ce"])
    assert out.GetSegmentation().GetNumberOfSegments() == 3


def test_gpu_out_of_memory_falls_back_to_the_cpu(mrml_scene, crop, M, monkeypatch):
    import torch

    import BrainDiffSegLib.propagation.propagate as engine

    volumes = add_volumes(mrml_scene, crop, roles=("flair",))
    painted = paint(mrml_scene, volumes["flair"], painted_truth(crop, M)[0])
    real, devices = engine.propagate, []

    def propagate(images, annotation, options, **kw):
        devices.append(options.device)
        if options.device != "cpu":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(images, annotation, options, **kw)

    monkeypatch.setattr(engine, "propagate", propagate)
    stages = []
    logic = M.BrainDiffSegLogic(mrml_scene)
    out = logic.propagate(volumes, painted, replace(RAW, device="auto"), progress=lambda s, f: stages.append(s))
    assert devices == ["auto", "cpu"] and out.GetSegmentation().GetNumberOfSegments() > 0
    assert any("out of memory" in m for m in logic.lastMessages) and any("out of memory" in s for s in stages)
    with pytest.raises(torch.OutOfMemoryError):  # on the CPU there is nothing to fall back to
        monkeypatch.setattr(engine, "propagate", lambda *a, **k: (_ for _ in ()).throw(torch.OutOfMemoryError()))
        logic.propagate(volumes, painted, RAW)


def test_parameter_node_defaults_and_options(mrml_scene, M, tmp_path):
    from BrainDiffSegLib.propagation.features import FeatureSpec
    from BrainDiffSegSlicer import parameters

    logic = M.BrainDiffSegLogic(mrml_scene)
    node = logic.getParameterNode()
    assert node is logic.getParameterNode()  # a singleton, saved with the scene
    parameters.setDefaultParameters(node)
    options = parameters.optionsFromParameters(node)
    assert options.method == "diffusion" and options.device == "auto" and options.checkpoint is None
    assert options.features.blocks == FeatureSpec().blocks and options.features.timesteps == FeatureSpec().timesteps
    node.SetParameter("Blocks", "0, 1 2")
    node.SetParameter("Timesteps", "25,250")
    node.SetParameter("Ensemble", "3")
    node.SetParameter("Device", "CPU")
    node.SetParameter("Method", "raw")
    node.SetParameter("Checkpoint", str(tmp_path))
    parameters.setDefaultParameters(node)  # keeps what is set
    options = parameters.optionsFromParameters(node)
    assert (options.features.blocks, options.features.timesteps, options.classifier.n_models) == ((0, 1, 2),
                                                                                                  (25, 250), 3)
    assert (options.device, options.method, options.checkpoint) == ("cpu", "raw", str(tmp_path))
    for name, value, message in (("Blocks", "one", r"Blocks: 'one' is not a valid value \(e.g. '1,2'\)"),
                                 ("Ensemble", "0", "Ensemble: '0' must be at least 1"),
                                 ("Ensemble", "51", "Ensemble: '51' must be at most 50"),
                                 ("Device", "tpu", "Device: 'tpu' is unknown; use one of auto, cuda, cpu")):
        saved = node.GetParameter(name)
        node.SetParameter(name, value)
        with pytest.raises(InputError, match=message):
            parameters.optionsFromParameters(node)
        node.SetParameter(name, saved)
    parameters.setDefaultParameters(node, overwrite=True)
    assert node.GetParameter("Method") == "diffusion" and node.GetParameter("Blocks") == "1,2"


def test_parameter_node_round_trip(mrml_scene, M):
    """Every field of PropagationOptions survives the parameter node (a real vtkMRMLScriptedModuleNode, also through
    a saved and reloaded scene); a bad value gives an InputError naming the parameter."""
    import dataclasses

    from BrainDiffSegLib.options import fields, preset, to_strings
    from BrainDiffSegSlicer import parameters

    node = M.BrainDiffSegLogic(mrml_scene).getParameterNode()
    assert node.IsA("vtkMRMLScriptedModuleNode")
    names = parameters.optionParameters()
    assert len(names) == len(fields()) and {"Method", "Blocks", "Ensemble", "BatchSize", "Device"} <= set(names)
    assert set(parameters.PANEL_DEFAULTS) == {"ComponentRoles", "CreateUncertainty", "ShowUncertainty",
                                              "UpdateResult"}
    changed = preset("quick")  # every field different from the default
    changed = dataclasses.replace(
        changed, annotation_mode="seeds", background_label=5, checkpoint=str(REPO), device="cuda", precision="bf16",
        batch_size=3, postprocess=False, seed=7,
        roi_threshold=0.05, roi_margin=3, smooth_xy=0.5, smooth_z=3.5, decision="regions",
        gate="none", gate_margin=3.0, gate_scale=2, core_band=2, intensity_weight=0.25,
        features=dataclasses.replace(changed.features, blocks=(0, 2), timesteps=(25, 250), noise_seed=4,
                                     intensities=False, smoothing=(0.5, 3.0)),
        classifier=dataclasses.replace(changed.classifier, patience=5, lr=0.01, weight_decay=0.5,
                                       val_fraction=0.25, max_pixels=1000, precision="fp32", seed=9,
                                           warm_epochs=1))
    default = to_strings(preset("default"))
    assert all(v != default[k] for k, v in to_strings(changed).items()), "a field kept its default"
    parameters.setParametersFromOptions(node, changed)
    # one seed: the panel's Seed seeds the classifier too (as the command line's --seed); ClassifierSeed is ignored
    changed = dataclasses.replace(changed, classifier=dataclasses.replace(changed.classifier, seed=changed.seed))
    assert parameters.optionsFromParameters(node) == changed
    import slicer

    mrml_scene.SetSaveToXMLString(1)
    mrml_scene.Commit()
    other = slicer.vtkMRMLScene()
    other.SetLoadFromXMLString(1)
    other.SetSceneXMLString(mrml_scene.GetSceneXMLString())
    other.Import()
    reloaded = other.GetSingletonNode("BrainDiffSeg", "vtkMRMLScriptedModuleNode")
    assert reloaded is not None and parameters.optionsFromParameters(reloaded) == changed
    for name, value in (("Precision", "fp8"), ("Smoothing", "wide"), ("Postprocess", "maybe"),
                        ("ClassifierLr", "fast"), ("MaxPixels", "-3"), ("BatchSize", "0")):
        saved = node.GetParameter(name)
        node.SetParameter(name, value)
        with pytest.raises(InputError, match=rf"^{name}: '{value}'"):
            parameters.optionsFromParameters(node)
        node.SetParameter(name, saved)
    parameters.setDefaultParameters(node)  # fills in the panel's parameters, keeps the options
    assert parameters.optionsFromParameters(node) == changed
    assert parameters.componentRoles(node) == ["t1", "t1ce", "t2", "flair"] and parameters.flag(node, "UpdateResult")


def test_inputs_guessed_from_volume_names_and_tumour_segments(mrml_scene, crop, M):
    from BrainDiffSegSlicer.segments import guessInputs, roleOfVolumeName

    logic = M.BrainDiffSegLogic(mrml_scene)
    assert [roleOfVolumeName(n) for n in ("BraTS2021_00006_flair", "BraTS-GLI-00000-000-t1c",
                                                 "TCGA_CS_4942_pre", "x_t2", "T1", "seg")] == [
        "flair", "t1ce", "t1", "t2", "t1", None]
    nodes = logic.loadCase(crop["case_dir"], loadGroundTruth=True)
    guessed = guessInputs(list(nodes.values()))
    assert guessed == {r: nodes[r] for r in ("t1", "t1ce", "t2", "flair")}  # the label map is not an input
    volumes = add_volumes(mrml_scene, crop, roles=("flair",))
    painted = paint(mrml_scene, volumes["flair"], np.zeros_like(crop["arrays"]["seg"]),
                    segments=(("edema", 2, (0, 1, 0)),))
    added = logic.addTumourSegments(painted)
    names = [painted.GetSegmentation().GetSegment(s).GetName() for s in painted.GetSegmentation().GetSegmentIDs()]
    assert names == ["edema", "Necrotic core", "Enhancing tumour", "Background"] and len(added) == 3
    assert logic.addTumourSegments(painted) == []


# ------------------------------------------------------------------------------------------ bad input

def test_volumes_on_different_grids(mrml_scene, crop, M):
    import slicer

    volumes = add_volumes(mrml_scene, crop, roles=("flair",))
    shifted = crop["ijk_to_ras"].copy()
    shifted[:3, 3] += 5.0
    volumes["t1"] = add_volume(mrml_scene, crop["arrays"]["t1"].astype(np.float32), shifted, "moved t1")
    painted = paint(mrml_scene, volumes["flair"], painted_truth(crop, M)[0])
    with pytest.raises(InputError, match=r"'crop flair' \(flair\) and volume 'moved t1' \(t1\) are not on one "
                       r"grid: different origin \(-78.0, 216.0, 47.0\) vs \(-73.0, 221.0, 52.0\)"):
        M.BrainDiffSegLogic(mrml_scene).propagate(volumes, painted, RAW)
    volumes["t1"] = add_volume(mrml_scene, crop["arrays"]["t1"][:, :50].astype(np.float32),
                                                   crop["ijk_to_ras"], "small t1")
    with pytest.raises(InputError, match=r"'small t1' \(t1\) are not on one grid: different dimensions"):
        M.BrainDiffSegLogic(mrml_scene).propagate(volumes, painted, RAW)


def test_empty_segmentation(mrml_scene, crop, M):
    volumes = add_volumes(mrml_scene, crop, roles=("flair",))
    node = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Nothing")
    with pytest.raises(InputError, match="'Nothing' has no segments"):
        M.BrainDiffSegLogic(mrml_scene).propagate(volumes, node, RAW)
    blank = paint(mrml_scene, volumes["flair"], np.zeros(CROP, np.uint8), name="Blank")
    assert blank.GetSegmentation().GetNumberOfSegments() == 3
    ids = scene_ids(mrml_scene)
    with pytest.raises(InputError, match="'Blank' is empty.*paint the tumour"):
        M.BrainDiffSegLogic(mrml_scene).propagate(volumes, blank, RAW)
    assert scene_ids(mrml_scene) == ids


def test_one_class_painted_on_the_whole_head(mrml_scene, crop, M):
    volumes = add_volumes(mrml_scene, crop, roles=("flair",))
    _, zs = painted_truth(crop, M)
    everything = np.zeros(CROP, np.uint8)
    everything[zs] = 1
    painted = paint(mrml_scene, volumes["flair"], everything, segments=(("Tumour", 1, (1, 0, 0)),))
    with pytest.raises(InputError, match="no background"):
        M.BrainDiffSegLogic(mrml_scene).propagate(volumes, painted, RAW)


def test_oblique_volume(mrml_scene, crop, M):
    import slicer

    angle = np.deg2rad(40)
    rotation = np.eye(4)
    rotation[1:3, 1:3] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]  # about L-R
    node = add_volume(mrml_scene, crop["arrays"]["flair"].astype(np.float32),
                                          rotation @ crop["ijk_to_ras"], "tilted flair")
    painted = paint(mrml_scene, node, painted_truth(crop, M)[0])
    with pytest.raises(InputError, match="Volume 'tilted flair': the volume is oblique"):
        M.BrainDiffSegLogic(mrml_scene).propagate({"flair": node}, painted, RAW)


def test_other_bad_input(mrml_scene, crop, M):
    import slicer

    volumes = add_volumes(mrml_scene, crop, roles=("flair",))
    painted = paint(mrml_scene, volumes["flair"], painted_truth(crop, M)[0])
    logic = M.BrainDiffSegLogic(mrml_scene)
    with pytest.raises(InputError, match="Unknown sequence role"):
        logic.propagate({"pd": volumes["flair"]}, painted, RAW)
    with pytest.raises(InputError, match="No input volume"):
        logic.propagate({"flair": None}, painted, RAW)
    with pytest.raises(InputError, match="segmentation"):
        logic.propagate(volumes, None, RAW)
    label = add_volume(mrml_scene, crop["arrays"]["seg"], crop["ijk_to_ras"], "labels",
                                           "vtkMRMLLabelMapVolumeNode")
    with pytest.raises(InputError, match="'labels' is not a scalar volume"):
        logic.propagate({"flair": label}, painted, RAW)
    transform = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "Moved")
    painted.SetAndObserveTransformNodeID(transform.GetID())
    with pytest.raises(InputError, match="different transforms"):
        logic.propagate(volumes, painted, RAW)


# ------------------------------------------------------------------------------------------ helpers

def _matrix(array):
    import vtk

    m = vtk.vtkMatrix4x4()
    for i in range(4):
        for j in range(4):
            m.SetElement(i, j, float(array[i][j]))
    return m


def _array(m):
    return np.array([[m.GetElement(i, j) for j in range(4)] for i in range(4)])


def M_ijk(volume_node):
    import vtk

    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    return _array(m)
