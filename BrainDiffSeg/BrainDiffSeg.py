"""BrainDiffSeg: the 3D Slicer scripted module (module description and the MRML Logic).

Paint a brain tumour on a few axial slices of a multi-sequence MRI; BrainDiffSeg segments the whole volume with
features of a denoising diffusion model and an ensemble of pixel classifiers (the engine in `BrainDiffSegLib`).

`BrainDiffSegLogic` is the only place where MRML nodes become arrays and arrays become MRML nodes; all computation
is done by the engine. The same file imports inside Slicer (real `slicer.ScriptedLoadableModule` base classes) and
under the `slicer-core` wheel, which has MRML but no Qt (minimal stand-in base classes; used by the tests).
The Logic never uses `slicer.app` nor `slicer.util.load*` / `save*`: files are read and written with storage nodes
and the Volumes module logic, so it runs the same in the Slicer application, in `Slicer --no-main-window` and
headless.

Segments -> label values (what the engine trains on)
----------------------------------------------------
Each segment of the user's segmentation is classified by its name (case-insensitive), else by its terminology:

* BraTS label 1 (necrotic / non-enhancing tumour core): names containing "necro", "non-enhancing" /
  "nonenhancing", or the words "NCR" / "NET";
* BraTS label 2 (edema): names containing "edema" / "oedema" / "peritumoral", or the word "ED";
* BraTS label 4 (enhancing tumour): names containing "enhancing" (but not "non-enhancing"), or the word "ET".

If *every* segment is recognised and no two segments fall in the same class, the segments get the BraTS values
1 / 2 / 4 and the result uses the BraTS segment names 'Necrotic core', 'Edema', 'Enhancing tumour'. Otherwise the
segments get the values 1..N in the order of the segments in the segmentation, and the result has one segment per
user segment, with the user's names (and colours, unless two segments share a colour). Where segments overlap,
the later segment in the list wins. Empty segments keep their value but produce no output segment.

Axes: `slicer.util.arrayFromVolume` gives arrays in KJI order; the engine wants the IJK array with its axial
(inferior-superior) axis moved last, which is what it gets from NIfTI files. The axial axis is the IJK axis whose
direction in the IJK-to-RAS matrix is closest to superior-inferior; oblique volumes are refused.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import unittest
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import vtk
from vtk.util import numpy_support

import slicer
import slicer.util

from BrainDiffSegLib.errors import BrainDiffSegError, CancelledError, InputError, OutputExistsError
from BrainDiffSegLib.resources import resources_dir

try:  # inside the Slicer application
    from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                               ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)

    SLICER_APPLICATION = True
except ImportError:  # slicer-core (MRML without Qt): minimal stand-ins, enough for the Logic and the tests
    SLICER_APPLICATION = False

    class ScriptedLoadableModule:
        """Stand-in for `slicer.ScriptedLoadableModule.ScriptedLoadableModule` where Slicer's Qt layer is absent."""

        def __init__(self, parent=None):
            super().__init__()
            if parent is None:
                import types

                parent = types.SimpleNamespace(path=__file__)
            self.parent = parent
            self.moduleName = self.__class__.__name__
            parent.title = ""
            parent.categories = []
            parent.dependencies = []
            parent.contributors = []
            parent.helpText = ""
            parent.acknowledgementText = ""

        def resourcePath(self, filename):
            return os.path.join(os.path.dirname(self.parent.path), "Resources", filename)

    class ScriptedLoadableModuleLogic:
        """Stand-in for `slicer.ScriptedLoadableModule.ScriptedLoadableModuleLogic` (uses only `slicer.mrmlScene`)."""

        def __init__(self, parent=None):
            super().__init__()
            self.moduleName = self.__class__.__name__
            if self.moduleName.endswith("Logic"):
                self.moduleName = self.moduleName[:-5]
            self.isSingletonParameterNode = True

        def getParameterNode(self):
            node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
            if node is None:
                node = slicer.mrmlScene.AddNode(self.createParameterNode())
            return node

        def createParameterNode(self):
            node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)
            node.SetSingletonTag(self.moduleName)
            node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
            node.SetAttribute("ModuleName", self.moduleName)
            return node

    class ScriptedLoadableModuleWidget:
        """Stand-in: the module's panel needs the Slicer application (Qt)."""

        def __init__(self, parent=None):
            raise RuntimeError("The BrainDiffSeg panel needs the 3D Slicer application; use BrainDiffSegLogic "
                               "headless.")

    ScriptedLoadableModuleTest = unittest.TestCase

try:
    from slicer.i18n import tr as _
    from slicer.i18n import translate
except ImportError:  # slicer-core / older Slicer
    def _(text):
        return text

    def translate(context, text):
        return text

log = logging.getLogger(__name__)

BINARY_LABELMAP = "Binary labelmap"
ROLES = ("t1", "t1ce", "t2", "flair")  # = BrainDiffSegLib.io.ROLES (imported lazily: io needs nibabel)
BRATS_SEGMENTS = {  # label value -> (segment name, colour)
    1: ("Necrotic core", (0.90, 0.10, 0.10)),
    2: ("Edema", (0.10, 0.80, 0.20)),
    4: ("Enhancing tumour", (1.00, 0.85, 0.00)),
}
PALETTE = [(0.90, 0.10, 0.10), (0.10, 0.80, 0.20), (1.00, 0.85, 0.00), (0.10, 0.45, 0.95), (0.85, 0.30, 0.90),
           (0.00, 0.80, 0.80), (1.00, 0.55, 0.10), (0.55, 0.35, 0.15)]
# Terminology of the BraTS result segments (Slicer's 'category and type' list; SNOMED CT codes), anatomic region brain
_TERMINOLOGY = ("Segmentation category and type - 3D Slicer General Anatomy list~SCT^49755003^Morphologically Altered "
                "Structure~SCT^{code}^{meaning}~^^~Anatomic codes - DICOM master list~SCT^12738006^Brain~^^")
BRATS_TERMINOLOGY = {
    1: _TERMINOLOGY.format(code="6574001", meaning="Necrosis"),
    2: _TERMINOLOGY.format(code="79654002", meaning="Edema"),
    4: _TERMINOLOGY.format(code="108369006", meaning="Neoplasm"),
}
UNCERTAINTY_REFERENCE_ROLE = "BrainDiffSeg.uncertainty"
SOURCE_REFERENCE_ROLE = "BrainDiffSeg.sourceSegmentation"
ANNOTATED_SLICES_ATTRIBUTE = "BrainDiffSeg.annotatedSlices"
LABEL_VALUES_ATTRIBUTE = "BrainDiffSeg.labelValues"
ENGINE_PACKAGES = ("torch", "numpy", "scipy", "nibabel", "skimage", "diffusers", "safetensors")
GRID_TOLERANCE_MM = 1e-3  # as BrainDiffSegLib.io.AFFINE_TOLERANCE_MM


#
# BrainDiffSeg
#

class BrainDiffSeg(ScriptedLoadableModule):
    """Module description shown by Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("BrainDiffSeg")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["Segmentations", "Volumes"]
        self.parent.contributors = ["BrainDiffSeg developers"]
        self.parent.helpText = _("""
Few-slice brain-tumour segmentation. Load the co-registered MRI sequences of a case (any of T1, T1ce, T2, FLAIR, on
one grid), paint the tumour on a few axial slices with the Segment Editor (one segment per class: e.g. 'Necrotic
core', 'Edema', 'Enhancing tumour' for the BraTS classes, or any segments of your own), and propagate: every other
axial slice is segmented by a pixel classifier trained on the painted slices, using features of a denoising
diffusion model. The result is written to a new segmentation ('&lt;segmentation&gt; propagated'); the painted
segmentation is left unchanged. Painted slices keep their labels exactly; an optional uncertainty volume shows
where to correct.
Segments are matched to BraTS labels by name (necrotic/NCR -> 1, edema/ED -> 2, enhancing/ET -> 4); other
segments are numbered 1..N in segment order.
""")
        self.parent.acknowledgementText = _("""
Method after Alshenoudy et al., <i>Semi-supervised Brain Tumor Segmentation Using Diffusion Models</i>, AIAI 2023
(Artificial Intelligence Applications and Innovations, IFIP AICT, Springer), and Baranchuk D., Rubachev I., Voynov A.,
Khrulkov V., Babenko A., <i>Label-Efficient Semantic Segmentation with Diffusion Models</i>, ICLR 2022.
The bundled backbone was trained on BraTS (Menze et al. 2015; Bakas et al. 2017, 2018; Baid et al. 2021) and
TCGA-LGG (Buda et al. 2019) images; their terms of use apply.
""")
        icon = self.iconPath()
        if SLICER_APPLICATION and icon is not None and getattr(parent, "icon", None) is not None \
                and parent.icon.isNull():
            import qt  # only inside Slicer

            parent.icon = qt.QIcon(str(icon))  # running from the source tree: Resources/ is at the top level

    @staticmethod
    def iconPath() -> Path | None:
        """The module icon: `Resources/Icons/BrainDiffSeg.png` next to the module (built) or at the top level
        of the source tree (the engine's `resources_dir()` looks in both places)."""
        path = resources_dir() / "Icons" / "BrainDiffSeg.png"
        return path if path.is_file() else None


#
# BrainDiffSegLogic
#

def _words(text: str) -> list[str]:
    return [w for w in re.split(r"[^a-z0-9]+", text.lower()) if w]


def bratsLabelOfName(text: str) -> int | None:
    """BraTS label (1, 2, 4) a segment name or terminology string refers to, or None (see the module docstring)."""
    t = text.lower()
    words = _words(text)
    if "necro" in t or re.search(r"non[\s_-]?enhanc", t) or "ncr" in words or "net" in words:
        return 1
    if "enhanc" in t or "et" in words:
        return 4
    if "edema" in t or "oedema" in t or "peritumo" in t or "ed" in words:
        return 2
    return None


def labelValuesForSegments(names: list[str], terminologies: list[str] | None = None) -> tuple[list[int], bool]:
    """Label value of each segment (in segment order) and whether the BraTS values were used.

    BraTS values (1 necrotic core, 2 edema, 4 enhancing) when every segment is recognised by its name, or else by
    its terminology, and no two segments fall in the same class; otherwise 1..N in segment order."""
    terminologies = terminologies or [""] * len(names)
    brats = []
    for name, term in zip(names, terminologies):
        value = bratsLabelOfName(name)
        if value is None and term:
            # a terminology entry is 'context~category~type~modifier~...'; the type and modifier carry the meaning
            value = bratsLabelOfName(" ".join(term.split("~")[2:4]).replace("^", " "))
        brats.append(value)
    if names and None not in brats and len(set(brats)) == len(brats):
        return brats, True
    return list(range(1, len(names) + 1)), False


@dataclass
class PropagationJob:
    """The inputs of one propagation, read from the scene: arrays for the engine plus what is needed to write the
    result back (made by `BrainDiffSegLogic.preparePropagation`)."""

    images: dict  # role -> float32 array, IJK with the axial axis last
    annotation: np.ndarray  # label values, same layout
    axis: int  # IJK axis that is axial
    referenceNode: object  # the volume whose grid the result gets
    segmentationNode: object  # the painted segmentation (read only)
    brats: bool  # BraTS label values / segment names
    segmentIdOfValue: dict
    transformId: str | None
    outputNode: object = None  # an earlier result to update, or None for a new node
    createUncertainty: bool = False


@dataclass
class PropagationRun:
    """A propagation started in the background by `BrainDiffSegLogic.startPropagation`."""

    job: PropagationJob
    task: object  # BrainDiffSegLib.background.BackgroundTask


class BrainDiffSegLogic(ScriptedLoadableModuleLogic):
    """MRML nodes <-> engine arrays. Blocking calls, usable from scripts, the module GUI and tests.

    `propagate(volumeNodes, segmentationNode)` -> a new segmentation node; `loadCase(caseDir)` -> volume nodes;
    `saveSegmentation(node, path)`. After `propagate`, `lastResult` holds the engine's `PropagationResult`
    (timings, annotated slices, least certain slices) and `lastUncertaintyNode` the uncertainty volume if one was
    requested.
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.lastResult = None
        self.lastUncertaintyNode = None
        self.lastMessages = []
        self._ownLogics = {}

    # ------------------------------------------------------------------ environment

    @staticmethod
    def missingPackages() -> list[str]:
        """Python packages the engine needs that are not importable (to be installed before propagating)."""
        return [p for p in ENGINE_PACKAGES if importlib.util.find_spec(p) is None]

    def _moduleLogic(self, module: str, className: str, scene=None):
        """`slicer.modules.<module>.logic()` in Slicer. Headless (slicer-core without `slicer.modules`), a logic of
        our own, attached to `scene` if one is given (attaching may add the subject hierarchy node)."""
        modules = getattr(slicer, "modules", None)
        owner = getattr(modules, module, None) if modules is not None else None
        if owner is not None:
            return owner.logic()
        logic = self._ownLogics.get(module)
        if logic is None or (scene is not None and logic.GetMRMLScene() is not scene):
            logic = getattr(slicer, className)()
            if scene is not None:
                logic.SetMRMLScene(scene)
            self._ownLogics[module] = logic
        return logic

    @staticmethod
    def _scene(*nodes):
        for node in nodes:
            if node is not None and node.GetScene() is not None:
                return node.GetScene()
        return slicer.mrmlScene

    # ------------------------------------------------------------------ geometry and arrays

    @staticmethod
    def ijkToRasArray(volumeNode) -> np.ndarray:
        m = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(m)
        return np.array([[m.GetElement(i, j) for j in range(4)] for i in range(4)])

    @staticmethod
    def axialAxis(volumeNode) -> int:
        """IJK axis of the volume closest to superior-inferior (the engine's rule, as for NIfTI files);
        InputError naming the node for oblique volumes."""
        from BrainDiffSegLib.io import axial_axis_of

        return axial_axis_of(BrainDiffSegLogic.ijkToRasArray(volumeNode), f"Volume '{volumeNode.GetName()}'")

    @staticmethod
    def toEngineArray(kji: np.ndarray, axialAxis: int) -> np.ndarray:
        """A KJI array (slicer.util.arrayFromVolume) -> IJK with the axial axis last (the engine's convention)."""
        return np.moveaxis(np.transpose(kji, (2, 1, 0)), axialAxis, -1)

    @staticmethod
    def fromEngineArray(array: np.ndarray, axialAxis: int) -> np.ndarray:
        """Inverse of `toEngineArray`: an axial-last IJK array -> KJI, contiguous."""
        return np.ascontiguousarray(np.transpose(np.moveaxis(array, -1, axialAxis), (2, 1, 0)))

    @staticmethod
    def _referenceImage(volumeNode):
        """An empty vtkOrientedImageData with the geometry (extent, IJK-to-RAS) of the volume."""
        ref = slicer.vtkOrientedImageData()
        ref.SetExtent(volumeNode.GetImageData().GetExtent())
        m = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(m)
        ref.SetImageToWorldMatrix(m)
        return ref

    @staticmethod
    def _orientedImageFromArray(kji: np.ndarray, volumeNode):
        img = BrainDiffSegLogic._referenceImage(volumeNode)
        vtkType = vtk.VTK_UNSIGNED_CHAR if kji.max(initial=0) < 256 and kji.min(initial=0) >= 0 else vtk.VTK_SHORT
        img.AllocateScalars(vtkType, 1)
        scalars = numpy_support.vtk_to_numpy(img.GetPointData().GetScalars())
        scalars[:] = kji.ravel()
        return img

    def _checkVolumes(self, volumeNodes: dict) -> dict:
        """role -> node in ROLES order, None values dropped; every node a 3D scalar volume with voxels."""
        if not isinstance(volumeNodes, dict):
            raise InputError("volumeNodes must map sequence roles (t1, t1ce, t2, flair) to volume nodes.")
        unknown = sorted(set(volumeNodes) - set(ROLES))
        if unknown:
            raise InputError(f"Unknown sequence role(s) {unknown}; use {list(ROLES)}.")
        volumes = {r: volumeNodes[r] for r in ROLES if volumeNodes.get(r) is not None}
        if not volumes:
            raise InputError("No input volume selected: select at least one of T1, T1ce, T2, FLAIR.")
        for role, node in volumes.items():
            ok = (hasattr(node, "IsA") and node.IsA("vtkMRMLScalarVolumeNode")
                  and not node.IsA("vtkMRMLLabelMapVolumeNode"))
            if not ok:
                raise InputError(f"The {role} input '{getattr(node, 'GetName', lambda: node)()}' is not a scalar "
                                 "volume.")
            image = node.GetImageData()
            if image is None or image.GetNumberOfPoints() == 0:
                raise InputError(f"Volume '{node.GetName()}' ({role}) has no voxels.")
            if image.GetNumberOfScalarComponents() != 1:
                raise InputError(f"Volume '{node.GetName()}' ({role}) has {image.GetNumberOfScalarComponents()} "
                                 "components per voxel; use a grey-level (scalar) MRI volume.")
        return volumes

    @staticmethod
    def _checkSameGrid(volumes: dict) -> None:
        """All volumes share dimensions, spacing, origin and axis directions (clear InputError otherwise)."""
        (refRole, ref), *others = volumes.items()
        refMatrix = BrainDiffSegLogic.ijkToRasArray(ref)
        for role, node in others:
            what = None
            if node.GetImageData().GetDimensions() != ref.GetImageData().GetDimensions():
                what = ("dimensions", node.GetImageData().GetDimensions(), ref.GetImageData().GetDimensions())
            elif not np.allclose(node.GetSpacing(), ref.GetSpacing(), atol=GRID_TOLERANCE_MM):
                what = ("spacing", node.GetSpacing(), ref.GetSpacing())
            elif not np.allclose(node.GetOrigin(), ref.GetOrigin(), atol=GRID_TOLERANCE_MM):
                what = ("origin", node.GetOrigin(), ref.GetOrigin())
            elif not np.allclose(BrainDiffSegLogic.ijkToRasArray(node), refMatrix, atol=GRID_TOLERANCE_MM):
                what = ("axis directions", "", "")
            if what:
                name, mine, theirs = what
                detail = f" {tuple(round(float(v), 4) for v in mine)}" if len(mine) else ""
                other = f" {tuple(round(float(v), 4) for v in theirs)}" if len(theirs) else ""
                raise InputError(
                    f"Volume '{node.GetName()}' ({role}) and volume '{ref.GetName()}' ({refRole}) are not on one "
                    f"grid: different {name}{detail} vs{other}. All sequences must be co-registered on one grid "
                    "(resample them onto one of them first).")

    @staticmethod
    def _checkTransforms(volumes: dict, segmentationNode) -> str | None:
        pairs = [(n.GetName(), n.GetTransformNodeID() or "") for n in list(volumes.values()) + [segmentationNode]]
        if len({tid for _, tid in pairs}) > 1:
            where = ", ".join(f"'{n}': {t or 'no transform'}" for n, t in pairs)
            raise InputError("The input volumes and the segmentation are under different transforms: harden the "
                             "transforms (Data module, right-click > Harden transform) or put all of them under the "
                             f"same one ({where}).")
        return segmentationNode.GetTransformNodeID()

    def volumeArray(self, volumeNode, axialAxis: int) -> np.ndarray:
        """The voxels of a volume node as float32, IJK with the axial axis last (a copy)."""
        return self.toEngineArray(slicer.util.arrayFromVolume(volumeNode), axialAxis).astype(np.float32)

    # ------------------------------------------------------------------ segments <-> labels

    def segmentLabelInfo(self, segmentationNode) -> tuple[list[str], list[int], bool]:
        """Segment ids in order, their label values and whether the BraTS values are used."""
        segmentation = segmentationNode.GetSegmentation()
        ids = list(segmentation.GetSegmentIDs())
        names, terms = [], []
        for sid in ids:
            segment = segmentation.GetSegment(sid)
            names.append(segment.GetName() or sid)
            terms.append(segment.GetTerminology() if hasattr(segment, "GetTerminology") else "")
        values, brats = labelValuesForSegments(names, terms)
        return ids, values, brats

    def labelArrayFromSegmentation(self, segmentationNode, referenceVolumeNode) -> tuple[np.ndarray, dict, bool]:
        """The segments as one label array (KJI, on the reference volume's grid), label value -> segment id, and
        whether the BraTS values are used. The segmentation node is only read: conversions, if any, are made on a
        copy outside the scene."""
        ids, values, brats = self.segmentLabelInfo(segmentationNode)
        dims = referenceVolumeNode.GetImageData().GetDimensions()
        labels = np.zeros(tuple(reversed(dims)), dtype=np.int16)
        if not ids:
            return labels, {}, brats
        # Creating the Segmentations logic registers the representation converters (no scene needed).
        self._moduleLogic("segmentations", "vtkSlicerSegmentationsModuleLogic")
        reference = self._referenceImage(referenceVolumeNode)
        source = segmentationNode
        if not segmentationNode.GetSegmentation().ContainsRepresentation(BINARY_LABELMAP):
            source = slicer.vtkMRMLSegmentationNode()  # not added to the scene
            source.GetSegmentation().DeepCopy(segmentationNode.GetSegmentation())
            source.GetSegmentation().SetConversionParameter(
                slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(),
                slicer.vtkSegmentationConverter.SerializeImageGeometry(reference))
            if not source.GetSegmentation().CreateRepresentation(BINARY_LABELMAP):
                raise InputError(f"Segmentation '{segmentationNode.GetName()}' cannot be converted to a binary "
                                 "labelmap.")
        segmentIdOfValue = {}
        for sid, value in zip(ids, values):
            image = slicer.vtkOrientedImageData()
            if not source.GetBinaryLabelmapRepresentation(sid, image):
                raise InputError(f"Segment '{sid}' of '{segmentationNode.GetName()}' has no binary labelmap.")
            resampled = slicer.vtkOrientedImageData()
            slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
                image, reference, resampled, False, False)
            if resampled.GetPointData().GetScalars() is None or resampled.GetDimensions() != dims:
                continue  # nothing of this segment on the volume's grid
            mask = numpy_support.vtk_to_numpy(resampled.GetPointData().GetScalars()).reshape(labels.shape) > 0
            if mask.any():
                labels[mask] = value
                segmentIdOfValue[value] = sid
        return labels, segmentIdOfValue, brats

    # ------------------------------------------------------------------ propagation

    def propagate(self, volumeNodes, segmentationNode, options=None, progress=None, cancelled=None,
                  createUncertainty: bool = False, outputNode=None, componentRoles=None):
        """Segment the whole volume from the painted axial slices; returns a NEW segmentation node (blocking).

        volumeNodes: role ('t1', 't1ce', 't2', 'flair') -> vtkMRMLScalarVolumeNode, all on one grid (None values
        are ignored), or one multi-component volume (vtkMRMLVectorVolumeNode) whose components are the sequences
        `componentRoles` (default: t1, t1ce, t2, flair for 4 components). segmentationNode: the painted slices;
        left unchanged. options: a `BrainDiffSegLib.propagate.PropagationOptions` (default: the diffusion method
        with the bundled backbone). progress(stage, fraction) and cancelled() -> bool are passed to the engine;
        when cancelled, a `BrainDiffSegLib.errors.CancelledError` is raised and the scene is left as it was.
        With createUncertainty, an uncertainty (normalised entropy) volume is added too: `lastUncertaintyNode`,
        also referenced from the result node by the role 'BrainDiffSeg.uncertainty'. outputNode: a segmentation
        made by an earlier propagation of the same painted segmentation, to be updated in place instead of
        creating a new node (re-running after painting one more slice); any other node is refused.
        Bad input raises `BrainDiffSegLib.errors.InputError` with a message naming the nodes. If the GPU runs
        out of memory, the work is redone on the CPU (`lastMessages` says so).
        """
        job = self.preparePropagation(volumeNodes, segmentationNode, outputNode=outputNode,
                                      componentRoles=componentRoles)
        result = self.runEngine(job, options, progress=progress, cancelled=cancelled)
        return self.addPropagationResult(job, result, createUncertainty=createUncertainty)

    def startPropagation(self, volumeNodes, segmentationNode, options=None, createUncertainty: bool = False,
                         outputNode=None, componentRoles=None):
        """`propagate` split for a GUI: the nodes are read now (in the caller's thread), the engine runs in a
        background thread. Returns a `PropagationRun`; poll `run.task` (progress, `done`, `cancel()`) from the
        GUI's event loop, then call `finishPropagation(run)` in the GUI thread to add the result to the scene."""
        from BrainDiffSegLib.background import BackgroundTask

        job = self.preparePropagation(volumeNodes, segmentationNode, outputNode=outputNode,
                                      componentRoles=componentRoles)
        job.createUncertainty = createUncertainty
        task = BackgroundTask(lambda progress, cancelled: self.runEngine(job, options, progress, cancelled),
                              name="propagation")
        return PropagationRun(job, task.start())

    def finishPropagation(self, run):
        """The result node of a finished `startPropagation` run. Re-raises the run's error (CancelledError,
        InputError, ...) with the scene unchanged."""
        if not run.task.done:
            raise RuntimeError("The propagation has not finished yet.")
        result = run.task.result()
        return self.addPropagationResult(run.job, result, createUncertainty=run.job.createUncertainty)

    def preparePropagation(self, volumeNodes, segmentationNode, outputNode=None, componentRoles=None):
        """Check the inputs and read them into arrays (a `PropagationJob`); the scene is not modified."""
        self.lastResult = None
        self.lastUncertaintyNode = None
        self.lastMessages = []
        if segmentationNode is None or not segmentationNode.IsA("vtkMRMLSegmentationNode"):
            raise InputError("Select the segmentation with the painted slices.")
        if hasattr(volumeNodes, "IsA"):  # one multi-component volume
            reference = volumeNodes
            images = self.multiComponentArrays(reference, componentRoles)
            axis = self.axialAxis(reference)
            transformId = self._checkTransforms({"multi": reference}, segmentationNode)
        else:
            volumes = self._checkVolumes(volumeNodes)
            reference = next(iter(volumes.values()))
            axis = self.axialAxis(reference)
            self._checkSameGrid(volumes)
            transformId = self._checkTransforms(volumes, segmentationNode)
            images = None
        if outputNode is not None:
            self._checkOutputNode(outputNode, segmentationNode)
        if segmentationNode.GetSegmentation().GetNumberOfSegments() == 0:
            raise InputError(f"Segmentation '{segmentationNode.GetName()}' has no segments: add one segment per "
                             "tumour class and paint the tumour on a few axial slices.")
        labelsKJI, segmentIdOfValue, brats = self.labelArrayFromSegmentation(segmentationNode, reference)
        if not segmentIdOfValue:
            raise InputError(f"Segmentation '{segmentationNode.GetName()}' is empty on the grid of volume "
                             f"'{reference.GetName()}': paint the tumour on at least one axial slice.")
        if images is None:
            images = {role: self.volumeArray(node, axis) for role, node in volumes.items()}
        return PropagationJob(images=images, annotation=self.toEngineArray(labelsKJI, axis), axis=axis,
                              referenceNode=reference, segmentationNode=segmentationNode, brats=brats,
                              segmentIdOfValue=segmentIdOfValue, transformId=transformId, outputNode=outputNode)

    def runEngine(self, job, options=None, progress=None, cancelled=None):
        """The engine's propagation on the job's arrays: no MRML access, safe in a background thread.

        A GPU out-of-memory error restarts the work on the CPU, with a message in `lastMessages` and through
        `progress`."""
        import torch
        from BrainDiffSegLib.propagate import PropagationOptions
        from BrainDiffSegLib.propagate import propagate as enginePropagate

        options = options or PropagationOptions()
        try:
            return enginePropagate(job.images, job.annotation, options, progress=progress, cancelled=cancelled)
        except torch.OutOfMemoryError:
            if options.device == "cpu":
                raise
            message = ("The GPU ran out of memory; continuing on the CPU (slower). Lower the batch size in the "
                       "advanced settings to stay on the GPU.")
            log.warning(message)
            self.lastMessages.append(message)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if progress:
                progress(message, 0.0)
            return enginePropagate(job.images, job.annotation, replace(options, device="cpu"), progress=progress,
                                   cancelled=cancelled)

    def addPropagationResult(self, job, result, createUncertainty: bool = False):
        """Add (or update, for `job.outputNode`) the result segmentation and the optional uncertainty volume.
        Only this step modifies the scene; on any error the nodes it created are removed again."""
        reference, axis = job.referenceNode, job.axis
        scene = self._scene(job.segmentationNode, reference)
        created = []
        try:
            if job.outputNode is None:
                name = scene.GenerateUniqueName(f"{job.segmentationNode.GetName()} propagated")
                outputNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
                created.append(outputNode)
                outputNode.CreateDefaultDisplayNodes()
                created.append(outputNode.GetDisplayNode())
                self._fillResultSegmentation(outputNode, job, result)
            else:
                outputNode = job.outputNode
                detached = slicer.vtkMRMLSegmentationNode()  # built outside the scene, then swapped in at once
                self._fillResultSegmentation(detached, job, result)
                outputNode.GetSegmentation().DeepCopy(detached.GetSegmentation())
                for attribute in (ANNOTATED_SLICES_ATTRIBUTE, LABEL_VALUES_ATTRIBUTE):
                    outputNode.SetAttribute(attribute, detached.GetAttribute(attribute))
            uncertaintyNode = None
            if createUncertainty:
                entropyKJI = self.fromEngineArray(result.entropy.astype(np.float32), axis)
                uncertaintyNode = self.uncertaintyNodeOf(outputNode)
                if uncertaintyNode is not None:
                    slicer.util.updateVolumeFromArray(uncertaintyNode, entropyKJI)
                else:
                    uncertaintyNode = self._addVolume(scene, f"{outputNode.GetName()} uncertainty", entropyKJI,
                                                      reference, job.transformId, created)
                    outputNode.SetNodeReferenceID(UNCERTAINTY_REFERENCE_ROLE, uncertaintyNode.GetID())
        except Exception:
            self._removeNodes(scene, created)
            raise
        self.lastResult = result
        self.lastUncertaintyNode = uncertaintyNode
        return outputNode

    def _checkOutputNode(self, outputNode, segmentationNode):
        """An output node to update must be an earlier result of this painted segmentation (never the user's)."""
        if outputNode is segmentationNode:
            raise InputError(f"The painted segmentation '{segmentationNode.GetName()}' cannot receive the result: "
                             "results always go to a separate segmentation.")
        if (not outputNode.IsA("vtkMRMLSegmentationNode")
                or outputNode.GetNodeReferenceID(SOURCE_REFERENCE_ROLE) != segmentationNode.GetID()):
            raise InputError(f"'{outputNode.GetName()}' is not a result propagated from "
                             f"'{segmentationNode.GetName()}'; it is left unchanged. Leave the output empty to "
                             "create a new segmentation.")

    def previousResultOf(self, segmentationNode):
        """The newest segmentation propagated from `segmentationNode` (to update on re-running), or None."""
        if segmentationNode is None or segmentationNode.GetScene() is None:
            return None
        scene = segmentationNode.GetScene()
        found = None
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")):
            node = scene.GetNthNodeByClass(i, "vtkMRMLSegmentationNode")
            if node.GetNodeReferenceID(SOURCE_REFERENCE_ROLE) == segmentationNode.GetID():
                found = node
        return found

    def multiComponentArrays(self, vectorNode, componentRoles=None) -> dict:
        """The components of a multi-component volume as engine arrays, one per sequence role."""
        if not vectorNode.IsA("vtkMRMLScalarVolumeNode") or vectorNode.GetImageData() is None:
            raise InputError(f"'{vectorNode.GetName()}' is not a volume with voxels.")
        n = vectorNode.GetImageData().GetNumberOfScalarComponents()
        if componentRoles is None:
            if n != len(ROLES):
                raise InputError(f"Volume '{vectorNode.GetName()}' has {n} components: say which sequence each "
                                 f"component is (e.g. 'flair,t1ce'); 4 components are read as {', '.join(ROLES)}.")
            componentRoles = ROLES
        roles = [r.strip().lower() for r in componentRoles if r and r.strip()]
        if len(roles) != n:
            raise InputError(f"Volume '{vectorNode.GetName()}' has {n} components but {len(roles)} sequence "
                             f"names were given ({', '.join(roles) or 'none'}).")
        unknown = sorted(set(roles) - set(ROLES))
        if unknown or len(set(roles)) != len(roles):
            raise InputError(f"Component names {roles} must be distinct sequence roles among {list(ROLES)}.")
        kjic = slicer.util.arrayFromVolume(vectorNode)
        if kjic.ndim == 3:
            kjic = kjic[..., None]
        axis = self.axialAxis(vectorNode)
        return {role: self.toEngineArray(kjic[..., c], axis).astype(np.float32) for c, role in enumerate(roles)}

    def _fillResultSegmentation(self, node, job, result):
        """One segment per predicted label value (names, colours and label values as in the module docstring)."""
        reference, axis = job.referenceNode, job.axis
        node.SetReferenceImageGeometryParameterFromVolumeNode(reference)
        if job.transformId and node.GetScene() is not None:
            node.SetAndObserveTransformNodeID(job.transformId)
        labels = self.fromEngineArray(result.labels, axis)
        shared = self._orientedImageFromArray(labels, reference)  # one shared labelmap, segment = label value
        sourceSegmentation = job.segmentationNode.GetSegmentation()
        used = set()
        for value in [v for v in result.label_values if v != 0 and np.any(labels == v)]:
            if job.brats:
                segmentName, color = BRATS_SEGMENTS[value]
            else:
                sourceSegment = sourceSegmentation.GetSegment(job.segmentIdOfValue[value])
                segmentName, color = sourceSegment.GetName(), tuple(sourceSegment.GetColor())
                if tuple(np.round(color, 3)) in used:
                    color = next((c for c in PALETTE if tuple(np.round(c, 3)) not in used), color)
            used.add(tuple(np.round(color, 3)))
            segment = slicer.vtkSegment()
            segment.SetName(segmentName)
            segment.SetColor(*color)
            segment.AddRepresentation(BINARY_LABELMAP, shared)
            segment.SetLabelValue(int(value))
            if job.brats:
                segment.SetTerminology(BRATS_TERMINOLOGY[value])
            else:
                sourceSegment = sourceSegmentation.GetSegment(job.segmentIdOfValue[value])
                if sourceSegment.GetTerminology():
                    segment.SetTerminology(sourceSegment.GetTerminology())
            node.GetSegmentation().AddSegment(segment)
        zs = [int(z) for z in result.annotated_slices]
        node.SetAttribute(ANNOTATED_SLICES_ATTRIBUTE, json.dumps({"axis": "IJK"[axis], "indices": zs}))
        node.SetAttribute(LABEL_VALUES_ATTRIBUTE, json.dumps([int(v) for v in result.label_values]))
        if node.GetScene() is not None:
            node.SetNodeReferenceID(SOURCE_REFERENCE_ROLE, job.segmentationNode.GetID())
        return node

    def _addVolume(self, scene, name, kji, reference, transformId, created):
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
        created.append(node)
        m = vtk.vtkMatrix4x4()
        reference.GetIJKToRASMatrix(m)
        node.SetIJKToRASMatrix(m)
        slicer.util.updateVolumeFromArray(node, kji)
        node.CreateDefaultDisplayNodes()
        created.append(node.GetDisplayNode())
        if transformId:
            node.SetAndObserveTransformNodeID(transformId)
        return node

    @staticmethod
    def _removeNodes(scene, nodes):
        for node in reversed([n for n in nodes if n is not None]):
            if node.GetScene() is not None:
                scene.RemoveNode(node)

    @staticmethod
    def uncertaintyNodeOf(resultNode):
        """The uncertainty volume made with a propagated segmentation, or None."""
        return resultNode.GetNodeReference(UNCERTAINTY_REFERENCE_ROLE) if resultNode is not None else None

    # ------------------------------------------------------------------ parameters (the module's parameter node)

    @staticmethod
    def defaultParameters() -> dict:
        """Parameter name -> default value (strings, as stored in the parameter node)."""
        from BrainDiffSegLib.classifier import ClassifierOptions
        from BrainDiffSegLib.features import FeatureSpec
        from BrainDiffSegLib.propagate import PropagationOptions

        spec, classifier, options = FeatureSpec(), ClassifierOptions(), PropagationOptions()
        return {
            "Method": options.method,
            "Device": options.device,
            "Checkpoint": "",
            "Blocks": ",".join(str(b) for b in spec.blocks),
            "Timesteps": ",".join(str(t) for t in spec.timesteps),
            "Ensemble": str(classifier.n_models),
            "BatchSize": str(options.batch_size),
            "ComponentRoles": ",".join(ROLES),
            "CreateUncertainty": "true",
            "ShowUncertainty": "false",
            "UpdateResult": "true",
        }

    def setDefaultParameters(self, parameterNode, overwrite: bool = False) -> None:
        """Fill in the parameters that are not set yet (all of them with overwrite)."""
        for name, value in self.defaultParameters().items():
            if overwrite or not parameterNode.GetParameter(name):
                parameterNode.SetParameter(name, value)

    def optionsFromParameters(self, parameterNode):
        """The engine's PropagationOptions from the parameter node; InputError for values that do not parse."""
        from BrainDiffSegLib.features import FeatureSpec
        from BrainDiffSegLib.propagate import PropagationOptions
        from BrainDiffSegLib.classifier import ClassifierOptions

        p = {**self.defaultParameters(), **{n: parameterNode.GetParameter(n) for n in self.defaultParameters()
                                             if parameterNode.GetParameter(n)}}

        def integers(name, low=0):
            try:
                values = tuple(int(v) for v in re.split(r"[,\s]+", p[name].strip()) if v)
            except ValueError:
                values = ()
            if not values or min(values) < low:
                raise InputError(f"{name}: '{p[name]}' is not a list of whole numbers >= {low} (e.g. "
                                 f"'{self.defaultParameters()[name]}').")
            return values

        method = p["Method"].strip().lower()
        if method not in ("diffusion", "raw"):
            raise InputError(f"Method '{p['Method']}' is unknown; use 'diffusion' or 'raw'.")
        device = {"gpu": "cuda", "auto": "auto", "cpu": "cpu", "cuda": "cuda"}.get(p["Device"].strip().lower())
        if device is None:
            raise InputError(f"Device '{p['Device']}' is unknown; use auto, GPU or CPU.")
        checkpoint = p["Checkpoint"].strip() or None
        if checkpoint and not Path(checkpoint).is_dir():
            raise InputError(f"Backbone folder '{checkpoint}' does not exist; leave it empty for the bundled model.")
        spec = replace(FeatureSpec(), blocks=integers("Blocks"), timesteps=integers("Timesteps"))
        classifier = replace(ClassifierOptions(), n_models=integers("Ensemble", 1)[0])
        return replace(PropagationOptions(), method=method, device=device, checkpoint=checkpoint, features=spec,
                       classifier=classifier, batch_size=integers("BatchSize", 1)[0])

    @staticmethod
    def roleOfVolumeName(name: str) -> str | None:
        """The sequence role a volume's name suggests (BraTS, BraTS 2023 and LGG file names), or None."""
        words = _words(name)
        if "flair" in words or "t2f" in words:
            return "flair"
        if {"t1ce", "t1c", "t1gd", "post"} & set(words):
            return "t1ce"
        if {"t2", "t2w"} & set(words):
            return "t2"
        if {"t1", "t1n", "pre"} & set(words):
            return "t1"
        return None

    def guessInputs(self, volumeNodes) -> dict:
        """role -> node for the first volume whose name names each role (label maps excluded)."""
        found = {}
        for node in volumeNodes:
            if node is None or node.IsA("vtkMRMLLabelMapVolumeNode"):
                continue
            role = self.roleOfVolumeName(node.GetName())
            if role and role not in found:
                found[role] = node
        return found

    def addTumourSegments(self, segmentationNode) -> list[str]:
        """Add the BraTS class segments (Necrotic core, Edema, Enhancing tumour) that no segment stands for yet;
        returns the ids of the added segments."""
        segmentation = segmentationNode.GetSegmentation()
        present = {bratsLabelOfName(segmentation.GetSegment(s).GetName() or "") for s in segmentation.GetSegmentIDs()}
        self._moduleLogic("segmentations", "vtkSlicerSegmentationsModuleLogic")  # registers the converters
        added = []
        for value, (name, color) in BRATS_SEGMENTS.items():
            if value not in present:
                added.append(segmentation.AddEmptySegment("", name, list(color)))
        return added

    @staticmethod
    def requirements() -> list[str]:
        """The pinned packages of Resources/requirements.txt (torch excluded: it is installed first, separately)."""
        path = resources_dir() / "requirements.txt"
        if not path.is_file():
            raise BrainDiffSegError(f"{path} is missing: the extension is incomplete, reinstall it.")
        lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
        return [line for line in lines if line]

    # ------------------------------------------------------------------ files

    def loadCase(self, caseDir, loadGroundTruth: bool = False) -> dict:
        """Load the sequences of a case folder (BraTS 2018-2021, BraTS 2023 or LGG names) as volume nodes.

        Returns role -> vtkMRMLScalarVolumeNode (and 'seg' -> vtkMRMLLabelMapVolumeNode with loadGroundTruth and
        a label file present). Uses the Volumes module logic (archetype storage nodes); on any failure the nodes
        loaded so far are removed again."""
        from BrainDiffSegLib.io import find_case_files

        files = find_case_files(caseDir)
        scene = slicer.mrmlScene
        volumesLogic = self._moduleLogic("volumes", "vtkSlicerVolumesLogic", scene)
        wanted = [r for r in ROLES if r in files] + (["seg"] if loadGroundTruth and "seg" in files else [])
        loaded = {}
        try:
            for role in wanted:
                path = Path(files[role])
                name = re.sub(r"\.nii(\.gz)?$", "", path.name)
                node = volumesLogic.AddArchetypeVolume(str(path), name, 1 if role == "seg" else 0)
                if node is None or node.GetImageData() is None:
                    raise InputError(f"Cannot read {path} ({role}).")
                loaded[role] = node
        except Exception:
            for node in loaded.values():
                self._removeVolumeNode(scene, node)
            raise
        return loaded

    @staticmethod
    def _removeVolumeNode(scene, node):
        extra = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
        extra.append(node.GetStorageNode())
        scene.RemoveNode(node)
        for n in extra:
            if n is not None and n.GetScene() is not None:
                scene.RemoveNode(n)

    def saveSegmentation(self, segmentationNode, path, referenceVolumeNode=None, force: bool = False) -> Path:
        """Write a segmentation with a storage node, never overwriting an existing file unless `force`.

        `.seg.nrrd` / `.nrrd` (and `.nhdr`): Slicer's segmentation file, segment names and colours included.
        `.nii` / `.nii.gz`: a label volume on the grid of `referenceVolumeNode` (default: the segmentation's
        reference geometry volume) with the label values of the segment rule in the module docstring (BraTS 1/2/4
        for BraTS segments, as the engine and the command line write them).
        """
        path = Path(path)
        if path.exists() and not force:
            raise OutputExistsError(f"{path} exists; pass force=True to overwrite it.")
        path.parent.mkdir(parents=True, exist_ok=True)
        lower = path.name.lower()
        if lower.endswith((".nii", ".nii.gz")):
            reference = referenceVolumeNode or segmentationNode.GetNodeReference(
                slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole())
            if reference is None:
                raise InputError(f"Saving '{segmentationNode.GetName()}' as {path.name} needs a reference volume "
                                 "(the grid of the label volume).")
            labels, _, _ = self.labelArrayFromSegmentation(segmentationNode, reference)
            labelNode = slicer.vtkMRMLLabelMapVolumeNode()  # not added to the scene
            m = vtk.vtkMatrix4x4()
            reference.GetIJKToRASMatrix(m)
            labelNode.SetIJKToRASMatrix(m)
            image = self._orientedImageFromArray(labels, reference)
            plain = vtk.vtkImageData()
            plain.ShallowCopy(image)
            plain.SetOrigin(0, 0, 0)
            plain.SetSpacing(1, 1, 1)
            labelNode.SetAndObserveImageData(plain)
            storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
            storage.SetUseCompression(lower.endswith(".gz"))
        elif lower.endswith((".nrrd", ".nhdr")):
            labelNode = segmentationNode
            storage = segmentationNode.CreateDefaultStorageNode()
        else:
            raise InputError(f"Cannot save a segmentation as {path.name}: use .seg.nrrd or .nii.gz.")
        storage.SetFileName(str(path))
        if not storage.WriteData(labelNode):
            raise BrainDiffSegError(f"Writing {path} failed.")
        log.info("wrote %s", path)
        return path


#
# BrainDiffSegWidget (the module panel; only inside the Slicer application)
#

class BrainDiffSegWidget(ScriptedLoadableModuleWidget, slicer.util.VTKObservationMixin):
    """The panel: inputs, the embedded Segment Editor, Propagate / Cancel with progress, advanced settings.

    All computation goes through `BrainDiffSegLogic`. Propagation runs in a background thread
    (`startPropagation`); a Qt timer polls it, so the GUI never freezes. Settings live in the module's parameter
    node (saved with the scene)."""

    ROLE_SELECTORS = {"t1": "t1Selector", "t1ce": "t1ceSelector", "t2": "t2Selector", "flair": "flairSelector"}
    DEVICES = ("auto", "cuda", "cpu")  # deviceComboBox items: auto, GPU, CPU
    METHODS = ("diffusion", "raw")  # methodComboBox items
    SEGMENT_EDITOR_NODE_TAG = "BrainDiffSeg"
    POLL_MS = 100

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        slicer.util.VTKObservationMixin.__init__(self)
        self.logic = None
        self.ui = None
        self._parameterNode = None
        self._updatingGUI = False
        self._run = None
        self._timer = None

    # ------------------------------------------------------------------ set-up

    def setup(self):
        import qt

        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(str(resources_dir() / "UI" / "BrainDiffSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = BrainDiffSegLogic()

        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_MS)
        self._timer.connect("timeout()", self.onPollRun)

        for selector in [*self.ROLE_SELECTORS.values(), "multiComponentSelector", "segmentationSelector"]:
            getattr(self.ui, selector).connect("currentNodeChanged(vtkMRMLNode*)", self.updateParameterNodeFromGUI)
        for edit in ("componentRolesLineEdit", "blocksLineEdit", "timestepsLineEdit"):
            getattr(self.ui, edit).connect("editingFinished()", self.updateParameterNodeFromGUI)
        for box in ("updateResultCheckBox", "uncertaintyCheckBox"):
            getattr(self.ui, box).connect("toggled(bool)", self.updateParameterNodeFromGUI)
        for spin in ("ensembleSpinBox", "batchSizeSpinBox"):
            getattr(self.ui, spin).connect("valueChanged(int)", self.updateParameterNodeFromGUI)
        for combo in ("deviceComboBox", "methodComboBox"):
            getattr(self.ui, combo).connect("currentIndexChanged(int)", self.updateParameterNodeFromGUI)
        self.ui.checkpointPathLineEdit.connect("currentPathChanged(QString)", self.updateParameterNodeFromGUI)
        import ctk

        self.ui.checkpointPathLineEdit.filters = ctk.ctkPathLineEdit.Dirs
        self.ui.showUncertaintyCheckBox.connect("toggled(bool)", self.onShowUncertainty)
        self.ui.propagateButton.connect("clicked(bool)", self.onPropagateButton)
        self.ui.addTumourSegmentsButton.connect("clicked(bool)", self.onAddTumourSegments)
        self.ui.restoreDefaultsButton.connect("clicked(bool)", self.onRestoreDefaults)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.onNodeAdded)
        self.initializeParameterNode()

    def cleanup(self):
        self.cancelRun(wait=True)
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()
        editor = self.ui.segmentEditorWidget
        editor.installKeyboardShortcuts()
        editor.setupViewObservations()
        editor.updateWidgetFromMRML()

    def exit(self):
        editor = self.ui.segmentEditorWidget
        editor.setActiveEffect(None)
        editor.uninstallKeyboardShortcuts()
        editor.removeViewObservations()
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event):
        self.cancelRun(wait=True)
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def onNodeAdded(self, caller, event):
        """A volume loaded after entering the module fills the empty input its name suggests."""
        import qt

        qt.QTimer.singleShot(0, self.fillInputsFromNames)

    # ------------------------------------------------------------------ parameter node <-> GUI

    def initializeParameterNode(self):
        node = self.logic.getParameterNode()
        self.logic.setDefaultParameters(node)
        editorNode = slicer.mrmlScene.GetSingletonNode(self.SEGMENT_EDITOR_NODE_TAG, "vtkMRMLSegmentEditorNode")
        if editorNode is None:
            editorNode = slicer.mrmlScene.CreateNodeByClass("vtkMRMLSegmentEditorNode")
            editorNode.UnRegister(None)
            editorNode.SetSingletonTag(self.SEGMENT_EDITOR_NODE_TAG)
            editorNode = slicer.mrmlScene.AddNode(editorNode)
        self.ui.segmentEditorWidget.setMRMLSegmentEditorNode(editorNode)
        self.setParameterNode(node)
        self.fillInputsFromNames()

    def fillInputsFromNames(self):
        """Empty inputs get the loaded volumes whose names name their sequence (e.g. '..._flair')."""
        node = self._parameterNode
        if node is None or self._run is not None:
            return
        volumes = [slicer.mrmlScene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
                   for i in range(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))]
        wasModifying = node.StartModify()
        for role, volume in self.logic.guessInputs(volumes).items():
            if node.GetNodeReference(f"Input_{role}") is None:
                node.SetNodeReferenceID(f"Input_{role}", volume.GetID())
        node.EndModify(wasModifying)

    def setParameterNode(self, node):
        if self._parameterNode is not None:
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode = node
        if node is not None:
            self.addObserver(node, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self.updateGUIFromParameterNode()

    def updateGUIFromParameterNode(self, caller=None, event=None):
        node = self._parameterNode
        if node is None or self.ui is None or self._updatingGUI:
            return
        self._updatingGUI = True
        try:
            for role, selector in self.ROLE_SELECTORS.items():
                getattr(self.ui, selector).setCurrentNode(node.GetNodeReference(f"Input_{role}"))
            self.ui.multiComponentSelector.setCurrentNode(node.GetNodeReference("MultiComponent"))
            self.ui.segmentationSelector.setCurrentNode(node.GetNodeReference("Segmentation"))
            self.ui.componentRolesLineEdit.text = node.GetParameter("ComponentRoles")
            self.ui.blocksLineEdit.text = node.GetParameter("Blocks")
            self.ui.timestepsLineEdit.text = node.GetParameter("Timesteps")
            self.ui.checkpointPathLineEdit.currentPath = node.GetParameter("Checkpoint")
            self.ui.ensembleSpinBox.value = int(node.GetParameter("Ensemble") or 1)
            self.ui.batchSizeSpinBox.value = int(node.GetParameter("BatchSize") or 1)
            device = node.GetParameter("Device")
            self.ui.deviceComboBox.currentIndex = self.DEVICES.index(device) if device in self.DEVICES else 0
            method = node.GetParameter("Method")
            self.ui.methodComboBox.currentIndex = self.METHODS.index(method) if method in self.METHODS else 0
            self.ui.updateResultCheckBox.checked = node.GetParameter("UpdateResult") == "true"
            self.ui.uncertaintyCheckBox.checked = node.GetParameter("CreateUncertainty") == "true"
            self.ui.showUncertaintyCheckBox.checked = node.GetParameter("ShowUncertainty") == "true"
            self._updateSegmentEditor()
            self._updateButtons()
        finally:
            self._updatingGUI = False

    def updateParameterNodeFromGUI(self, *args):
        node = self._parameterNode
        if node is None or self._updatingGUI:
            return
        wasModifying = node.StartModify()
        for role, selector in self.ROLE_SELECTORS.items():
            node.SetNodeReferenceID(f"Input_{role}", getattr(self.ui, selector).currentNodeID)
        node.SetNodeReferenceID("MultiComponent", self.ui.multiComponentSelector.currentNodeID)
        node.SetNodeReferenceID("Segmentation", self.ui.segmentationSelector.currentNodeID)
        node.SetParameter("ComponentRoles", self.ui.componentRolesLineEdit.text)
        node.SetParameter("Blocks", self.ui.blocksLineEdit.text)
        node.SetParameter("Timesteps", self.ui.timestepsLineEdit.text)
        node.SetParameter("Checkpoint", self.ui.checkpointPathLineEdit.currentPath)
        node.SetParameter("Ensemble", str(self.ui.ensembleSpinBox.value))
        node.SetParameter("BatchSize", str(self.ui.batchSizeSpinBox.value))
        node.SetParameter("Device", self.DEVICES[max(self.ui.deviceComboBox.currentIndex, 0)])
        node.SetParameter("Method", self.METHODS[max(self.ui.methodComboBox.currentIndex, 0)])
        node.SetParameter("UpdateResult", "true" if self.ui.updateResultCheckBox.checked else "false")
        node.SetParameter("CreateUncertainty", "true" if self.ui.uncertaintyCheckBox.checked else "false")
        node.SetParameter("ShowUncertainty", "true" if self.ui.showUncertaintyCheckBox.checked else "false")
        node.EndModify(wasModifying)

    def _inputVolumes(self):
        """The volumes argument of the Logic: the multi-component volume if one is selected, else role -> node."""
        node = self._parameterNode
        multi = node.GetNodeReference("MultiComponent")
        if multi is not None:
            return multi
        return {role: node.GetNodeReference(f"Input_{role}") for role in self.ROLE_SELECTORS
                if node.GetNodeReference(f"Input_{role}") is not None}

    def _updateSegmentEditor(self):
        editor = self.ui.segmentEditorWidget
        segmentationNode = self._parameterNode.GetNodeReference("Segmentation")
        editor.setSegmentationNode(segmentationNode)
        volumes = self._inputVolumes()
        source = volumes if hasattr(volumes, "IsA") else next(
            (volumes[r] for r in ("flair", "t1ce", "t2", "t1") if r in volumes), None)
        if source is not None and editor.sourceVolumeNode() is None:
            editor.setSourceVolumeNode(source)
        self.ui.addTumourSegmentsButton.enabled = segmentationNode is not None

    def _updateButtons(self):
        running = self._run is not None
        node = self._parameterNode
        ready = node is not None and node.GetNodeReference("Segmentation") is not None and bool(self._inputVolumes())
        self.ui.propagateButton.text = _("Cancel") if running else _("Propagate")
        self.ui.propagateButton.enabled = running or ready
        self.ui.propagateButton.toolTip = (_("Stop the propagation; the scene is left as it was.") if running else
                                           _("Segment every axial slice from the painted ones.") if ready else
                                           _("Select at least one input volume and the painted segmentation."))
        for name in ("inputsCollapsibleButton", "advancedCollapsibleButton", "restoreDefaultsButton"):
            getattr(self.ui, name).enabled = not running

    # ------------------------------------------------------------------ actions

    def onRestoreDefaults(self):
        self.logic.setDefaultParameters(self._parameterNode, overwrite=True)

    def onAddTumourSegments(self):
        segmentationNode = self._parameterNode.GetNodeReference("Segmentation")
        if segmentationNode is not None:
            added = self.logic.addTumourSegments(segmentationNode)
            self.ui.statusLabel.text = (_("Added: ") + ", ".join(
                segmentationNode.GetSegmentation().GetSegment(s).GetName() for s in added)) if added else \
                _("The tumour segments exist already.")

    def onShowUncertainty(self, show):
        self.updateParameterNodeFromGUI()
        segmentationNode = self._parameterNode.GetNodeReference("Segmentation")
        result = self.logic.previousResultOf(segmentationNode)
        uncertainty = self.logic.uncertaintyNodeOf(result)
        if uncertainty is None:
            return
        if show:
            display = uncertainty.GetDisplayNode()
            if display is not None:
                display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeFileColdToHotRainbow.txt")
                display.AutoWindowLevelOff()
                display.SetWindowLevelMinMax(0.0, 1.0)
            slicer.util.setSliceViewerLayers(foreground=uncertainty, foregroundOpacity=0.4)
        else:
            slicer.util.setSliceViewerLayers(foreground=None)

    def onPropagateButton(self):
        if self._run is not None:
            self.cancelRun()
        else:
            self.startRun()

    def ensureEngineInstalled(self) -> bool:
        """Install torch and the pinned requirements after the user agrees; True when the engine can run."""
        missing = self.logic.missingPackages()
        if not missing:
            return True
        if not slicer.util.confirmOkCancelDisplay(
                _("BrainDiffSeg needs these Python packages, which are not installed: ") + ", ".join(missing)
                + _(".\n\nInstall them now? This downloads about 1-3 GB (PyTorch) and takes several minutes.")):
            return False
        with slicer.util.tryWithErrorDisplay(_("Installing the Python packages failed."), waitCursor=True):
            if "torch" in missing:
                try:
                    import PyTorchUtils  # the PyTorch extension picks the build for this computer's GPU

                    PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False)
                except ImportError:
                    slicer.util.pip_install("torch==2.13.0")
            slicer.util.pip_install(self.logic.requirements())
        missing = self.logic.missingPackages()
        if missing:
            slicer.util.errorDisplay(_("Still missing after installation: ") + ", ".join(missing))
        return not missing

    def startRun(self):
        if not self.ensureEngineInstalled():
            return
        self.updateParameterNodeFromGUI()
        node = self._parameterNode
        segmentationNode = node.GetNodeReference("Segmentation")
        try:
            options = self.logic.optionsFromParameters(node)
            outputNode = (self.logic.previousResultOf(segmentationNode)
                          if node.GetParameter("UpdateResult") == "true" else None)
            roles = [r for r in re.split(r"[,\s]+", node.GetParameter("ComponentRoles")) if r]
            self._run = self.logic.startPropagation(
                self._inputVolumes(), segmentationNode, options,
                createUncertainty=node.GetParameter("CreateUncertainty") == "true", outputNode=outputNode,
                componentRoles=roles or None)
        except BrainDiffSegError as exc:
            slicer.util.errorDisplay(str(exc), windowTitle=_("BrainDiffSeg"))
            return
        self.ui.segmentEditorWidget.setActiveEffect(None)  # no painting into the inputs while they are read
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = _("Starting...")
        self.ui.leastCertainLabel.text = ""
        self._updateButtons()
        self._timer.start()

    def cancelRun(self, wait: bool = False):
        run = self._run
        if run is None:
            return
        run.task.cancel()
        self.ui.statusLabel.text = _("Cancelling...")
        if wait:
            run.task.wait(30)
            self.onPollRun()

    def onPollRun(self):
        run = self._run
        if run is None:
            self._timer.stop()
            return
        for stage, fraction in run.task.poll():
            self.ui.statusLabel.text = stage
            self.ui.progressBar.value = int(round(1000 * fraction))
        if not run.task.done:
            return
        self._timer.stop()
        self._run = None
        try:
            outputNode = self.logic.finishPropagation(run)
        except CancelledError:
            self.ui.statusLabel.text = _("Cancelled; the scene is unchanged.")
            self.ui.progressBar.value = 0
        except BrainDiffSegError as exc:
            self.ui.statusLabel.text = str(exc)
            slicer.util.errorDisplay(str(exc), windowTitle=_("BrainDiffSeg"))
        except Exception as exc:  # unexpected: keep the GUI usable and show the traceback in the log
            log.exception("Propagation failed")
            self.ui.statusLabel.text = _("Failed: ") + str(exc)
            slicer.util.errorDisplay(_("Propagation failed: ") + str(exc), windowTitle=_("BrainDiffSeg"))
        else:
            self._showResult(outputNode)
        finally:
            self._updateButtons()

    def _showResult(self, outputNode):
        result = self.logic.lastResult
        self.ui.progressBar.value = 1000
        seconds = sum(result.timings.values()) if result.timings else 0.0
        messages = " ".join(self.logic.lastMessages)
        self.ui.statusLabel.text = (_("Done in {seconds:.1f} s on {device}: '{name}'. ").format(
            seconds=seconds, device=result.device, name=outputNode.GetName()) + messages)
        worst = result.least_certain_slices(5)
        self.ui.leastCertainLabel.text = ", ".join(f"{z} ({score:.2f})" for z, score in worst) or _("none")
        displayNode = outputNode.GetDisplayNode()
        if displayNode is not None:
            displayNode.SetVisibility(True)
            displayNode.SetOpacity2DFill(0.35)
        if self.ui.showUncertaintyCheckBox.checked:
            self.onShowUncertainty(True)


#
# Headless scene and the benchmark hook (used by Scripts/benchmark.py and by the tests; no Qt)
#

def headlessScene():
    """Context manager: a fresh MRML scene as `slicer.mrmlScene`, with `slicer.modules.segmentations/volumes.logic()`
    returning real logics on it (what the Slicer application provides), for use under the `slicer-core` wheel (MRML
    without Qt). Restores the previous `slicer.mrmlScene` / `slicer.modules` afterwards."""
    import contextlib
    import types

    @contextlib.contextmanager
    def scene_context():
        scene = slicer.vtkMRMLScene()
        segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
        segmentations.SetMRMLScene(scene)
        volumes = slicer.vtkSlicerVolumesLogic()
        volumes.SetMRMLScene(scene)
        modules = types.SimpleNamespace(segmentations=types.SimpleNamespace(logic=lambda: segmentations),
                                        volumes=types.SimpleNamespace(logic=lambda: volumes))
        missing = object()
        saved = {name: getattr(slicer, name, missing) for name in ("mrmlScene", "modules")}
        slicer.mrmlScene, slicer.modules = scene, modules
        try:
            yield scene
        finally:
            for name, value in saved.items():
                if value is missing:
                    delattr(slicer, name)
                else:
                    setattr(slicer, name, value)
            segmentations.SetMRMLScene(None)
            volumes.SetMRMLScene(None)
            scene.Clear(1)
    return scene_context()


def benchmarkPropagator(logic: BrainDiffSegLogic | None = None):
    """A `BrainDiffSegLib.benchmark` propagator: runs 'diffusion-mlp' / 'raw-mlp' through
    `BrainDiffSegLogic.propagate` on MRML nodes, as a user would: the case's volumes loaded by `loadCase`, the
    simulated annotation painted into a segmentation (BraTS segment names for BraTS labels, else 'Tumour N'), the
    result read back from the new segmentation node. The nodes are removed again after each call."""
    from dataclasses import replace

    logic = logic or BrainDiffSegLogic()

    def propagator(case, annotation, method, options):
        scene = slicer.mrmlScene
        before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
        try:
            nodes = logic.loadCase(case.reference_path().parent)
            reference = nodes.get("flair") or next(iter(nodes.values()))
            axis = logic.axialAxis(reference)
            segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{case.name} painted")
            segmentation.CreateDefaultDisplayNodes()
            segmentation.SetReferenceImageGeometryParameterFromVolumeNode(reference)
            values = [int(v) for v in np.unique(annotation) if v != 0]
            brats = set(values) <= set(BRATS_SEGMENTS)
            for i, value in enumerate(values):
                name, color = BRATS_SEGMENTS[value] if brats else (f"Tumour {i + 1}", PALETTE[i % len(PALETTE)])
                sid = segmentation.GetSegmentation().AddEmptySegment("", name, color)
                slicer.util.updateSegmentBinaryLabelmapFromArray(
                    logic.fromEngineArray((annotation == value).astype(np.uint8), axis), segmentation, sid, reference)
            engine_method = {"diffusion-mlp": "diffusion", "raw-mlp": "raw"}[method]
            out = logic.propagate(nodes, segmentation, replace(options, method=engine_method))
            labels, _, _ = logic.labelArrayFromSegmentation(out, reference)
            labels = logic.toEngineArray(labels, axis)
            if not brats:  # segments were numbered 1..N in order: back to the annotation's values
                labels = np.asarray([0] + values, dtype=np.int16)[labels]
            return labels
        finally:
            for node in [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]:
                if node is not None and node.GetID() not in before and node.GetScene() is not None:
                    scene.RemoveNode(node)
    return propagator


#
# BrainDiffSegTest (run by Slicer's self-test and by `slicer_add_python_unittest`)
#

class BrainDiffSegTest(ScriptedLoadableModuleTest):
    """Propagation of a small synthetic case through the Logic, with the fast 'raw' features."""

    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_propagate_synthetic()
        self.setUp()
        self.test_real_case_in_background()

    def test_propagate_synthetic(self):
        missing = BrainDiffSegLogic.missingPackages()
        if missing:
            self.skipTest(f"BrainDiffSeg's engine needs {', '.join(missing)}")
        from BrainDiffSegLib.classifier import ClassifierOptions
        from BrainDiffSegLib.propagate import PropagationOptions
        from BrainDiffSegLib.protocol import dice, simulate_annotation

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
            volumes[role] = slicer.util.addVolumeFromArray(
                BrainDiffSegLogic.fromEngineArray(img.astype(np.float32), 2), ijkToRas, f"synthetic {role}")
        ann, zs = simulate_annotation(truth, 2)
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Painted")
        segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumes["flair"])
        for value, name in ((2, "Edema"), (4, "Enhancing tumour")):
            sid = segmentationNode.GetSegmentation().AddEmptySegment("", name)
            slicer.util.updateSegmentBinaryLabelmapFromArray(
                BrainDiffSegLogic.fromEngineArray((ann == value).astype(np.uint8), 2), segmentationNode, sid,
                volumes["flair"])
        before = slicer.mrmlScene.GetNumberOfNodes()

        logic = BrainDiffSegLogic()
        fast = ClassifierOptions(n_models=2, max_epochs=6, hidden=(32, 16), batch_size=1024)
        out = logic.propagate(volumes, segmentationNode, PropagationOptions(method="raw", device="cpu",
                                                                          classifier=fast))
        self.assertEqual(out.GetName(), "Painted propagated")
        self.assertGreater(slicer.mrmlScene.GetNumberOfNodes(), before)
        names = [out.GetSegmentation().GetSegment(s).GetName() for s in out.GetSegmentation().GetSegmentIDs()]
        self.assertEqual(names, ["Edema", "Enhancing tumour"])
        labels, _, _ = logic.labelArrayFromSegmentation(out, volumes["flair"])
        pred = BrainDiffSegLogic.toEngineArray(labels, 2)
        keep = np.ones(shape[-1], bool)
        keep[zs] = False
        self.assertGreater(dice(pred[..., keep] > 0, truth[..., keep] > 0), 0.8)

    def test_real_case_in_background(self):
        """The module's scenario on real data: BraTS2021_00006 (cropped around the tumour for speed), the tumour
        painted on 3 axial slices from the ground truth, propagation in the background as the panel runs it;
        then a run cancelled midway. Skipped when the shared data ($BRAINDIFFSEG_DATA) is not available."""
        missing = BrainDiffSegLogic.missingPackages()
        if missing:
            self.skipTest(f"BrainDiffSeg's engine needs {', '.join(missing)}")
        from BrainDiffSegLib.classifier import ClassifierOptions
        from BrainDiffSegLib.propagate import PropagationOptions
        from BrainDiffSegLib.protocol import region_dice, simulate_annotation
        from BrainDiffSegLib.resources import data_root

        caseDir = data_root() / "brats2021" / "BraTS2021_00006"
        if not caseDir.is_dir():
            self.skipTest(f"{caseDir} is not available (set BRAINDIFFSEG_DATA)")
        logic = BrainDiffSegLogic()
        loaded = logic.loadCase(caseDir, loadGroundTruth=True)
        truthKJI = slicer.util.arrayFromVolume(loaded["seg"])
        k, j, i = [int(np.median(a)) for a in np.nonzero(truthKJI)]
        box = tuple(slice(max(c - h, 0), max(c - h, 0) + 2 * h) for c, h in zip((k, j, i), (30, 50, 50)))
        ijkToRas = BrainDiffSegLogic.ijkToRasArray(loaded["flair"])
        ijkToRas[:3, 3] = ijkToRas[:3, :3] @ np.array([box[2].start, box[1].start, box[0].start]) + ijkToRas[:3, 3]
        volumes = {role: slicer.util.addVolumeFromArray(slicer.util.arrayFromVolume(node)[box].astype(np.float32),
                                                        ijkToRas, f"crop {role}")
                   for role, node in loaded.items() if role != "seg"}
        truth = BrainDiffSegLogic.toEngineArray(truthKJI[box], 2)
        for node in loaded.values():
            BrainDiffSegLogic._removeVolumeNode(slicer.mrmlScene, node)
        annotation, zs = simulate_annotation(truth, 3)
        painted = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Painted")
        painted.CreateDefaultDisplayNodes()
        painted.SetReferenceImageGeometryParameterFromVolumeNode(volumes["flair"])
        logic.addTumourSegments(painted)
        segmentation = painted.GetSegmentation()
        for sid in segmentation.GetSegmentIDs():
            value = bratsLabelOfName(segmentation.GetSegment(sid).GetName())
            slicer.util.updateSegmentBinaryLabelmapFromArray(
                BrainDiffSegLogic.fromEngineArray((annotation == value).astype(np.uint8), 2), painted, sid,
                volumes["flair"])
        paintedBefore, _, _ = logic.labelArrayFromSegmentation(painted, volumes["flair"])
        fast = PropagationOptions(method="raw", device="cpu",
                                  classifier=ClassifierOptions(n_models=2, max_epochs=6, hidden=(32, 16),
                                                               batch_size=1024))

        run = logic.startPropagation(volumes, painted, fast, createUncertainty=True)
        self.assertTrue(run.task.wait(300), "the background propagation did not finish within 5 minutes")
        out = logic.finishPropagation(run)
        self.assertTrue(run.task.poll() or run.task.stage != "waiting")
        labels, _, _ = logic.labelArrayFromSegmentation(out, volumes["flair"])
        self.assertTrue(np.allclose(BrainDiffSegLogic.ijkToRasArray(logic.lastUncertaintyNode), ijkToRas))
        scores = region_dice(BrainDiffSegLogic.toEngineArray(labels, 2), truth, zs)
        self.assertGreater(scores["WT"], 0.8, scores)
        paintedAfter, _, _ = logic.labelArrayFromSegmentation(painted, volumes["flair"])
        self.assertTrue(np.array_equal(paintedBefore, paintedAfter), "the painted segmentation was modified")

        # re-running updates the same result node; a cancelled run leaves the scene as it was
        nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
        again = logic.propagate(volumes, painted, fast, createUncertainty=True, outputNode=out)
        self.assertIs(again, out)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore)
        run = logic.startPropagation(volumes, painted, fast, createUncertainty=True)
        run.task.cancel()
        self.assertTrue(run.task.wait(60), "cancel did not stop the propagation within 60 s")
        with self.assertRaises(CancelledError):
            logic.finishPropagation(run)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore)
