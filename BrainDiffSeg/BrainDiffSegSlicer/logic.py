"""BrainDiffSegLogic: the only place where MRML nodes become arrays for the engine and arrays become MRML nodes.

The scene and the Volumes / Segmentations module logics are passed in (`BrainDiffSegLogic(scene, volumesLogic,
segmentationsLogic)`); by default, inside the Slicer application, the application's (`slicer.mrmlScene`,
`slicer.modules.volumes.logic()`, ...), elsewhere logics of the Logic's own attached to the given scene (or to a
fresh vtkMRMLScene). No method uses the global `slicer.mrmlScene`, `slicer.modules`, `slicer.app` nor
`slicer.util.load*` / `save*`: files are read and written with storage nodes and the Volumes logic, so the Logic
runs the same in Slicer, in `Slicer --no-main-window`, under slicer-core and in the web annotator. All computation
is the engine's (`BrainDiffSegLib`, imported lazily: torch may not be installed yet).

Axes: `slicer.util.arrayFromVolume` gives arrays in KJI order; the engine wants the IJK array with its axial
(inferior-superior) axis moved last, which is what it gets from NIfTI files. The axial axis is the IJK axis whose
direction in the IJK-to-RAS matrix is closest to superior-inferior; oblique volumes are refused. Segment names ->
label values: see `segments`.

Length: the Logic's public API (propagate in the foreground or background, results, load and save) in one class;
the array conversions and input checks it delegates to live in `arrays`.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import vtk

import slicer
import slicer.util

from BrainDiffSegLib.constants import ROLES
from BrainDiffSegLib.errors import BrainDiffSegError, InputError, OutputExistsError

from . import arrays
from .compat import SLICER_APPLICATION, ScriptedLoadableModuleLogic
from .segments import (ANNOTATED_SLICES_ATTRIBUTE, BRATS_SEGMENTS, LABEL_VALUES_ATTRIBUTE, SOURCE_REFERENCE_ROLE,
                       UNCERTAINTY_REFERENCE_ROLE, bratsLabelOfName)

log = logging.getLogger(__name__)


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
    requested. New nodes go to the scene of the input nodes (`scene` when they have none).
    """

    def __init__(self, scene=None, volumesLogic=None, segmentationsLogic=None):
        ScriptedLoadableModuleLogic.__init__(self)
        inApplication = SLICER_APPLICATION and hasattr(slicer, "mrmlScene")
        if scene is None:
            scene = slicer.mrmlScene if inApplication else slicer.vtkMRMLScene()
        appScene = inApplication and scene is slicer.mrmlScene
        # Attaching a logic of our own to the scene may add the subject hierarchy node.
        if volumesLogic is None:
            volumesLogic = slicer.modules.volumes.logic() if appScene else self._ownLogic(
                slicer.vtkSlicerVolumesLogic, scene)
        if segmentationsLogic is None:  # (creating it registers the segmentation representation converters)
            segmentationsLogic = slicer.modules.segmentations.logic() if appScene else self._ownLogic(
                slicer.vtkSlicerSegmentationsModuleLogic, scene)
        self.scene, self.volumesLogic, self.segmentationsLogic = scene, volumesLogic, segmentationsLogic
        self.lastResult = None
        self.lastUncertaintyNode = None
        self.lastMessages = []

    @staticmethod
    def _ownLogic(cls, scene):
        logic = cls()
        logic.SetMRMLScene(scene)
        return logic

    def getParameterNode(self):
        """The module's parameter node in this Logic's scene (a singleton, created on first use)."""
        node = self.scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = self.scene.AddNode(self.createParameterNode())
        return node

    def createParameterNode(self):
        node = self.scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.UnRegister(None)
        node.SetSingletonTag(self.moduleName)
        node.SetName(self.scene.GenerateUniqueName(self.moduleName))
        node.SetAttribute("ModuleName", self.moduleName)
        return node

    def _sceneOf(self, *nodes):
        for node in nodes:
            if node is not None and node.GetScene() is not None:
                return node.GetScene()
        return self.scene

    # ------------------------------------------------------------------ arrays and checks (module `arrays`)

    ijkToRasArray = staticmethod(arrays.ijkToRasArray)
    axialAxis = staticmethod(arrays.axialAxis)
    toEngineArray = staticmethod(arrays.toEngineArray)
    fromEngineArray = staticmethod(arrays.fromEngineArray)
    volumeArray = staticmethod(arrays.volumeArray)
    multiComponentArrays = staticmethod(arrays.multiComponentArrays)
    checkVolumes = staticmethod(arrays.checkVolumes)
    checkSameGrid = staticmethod(arrays.checkSameGrid)
    segmentLabelInfo = staticmethod(arrays.segmentLabelInfo)
    labelArrayFromSegmentation = staticmethod(arrays.labelArrayFromSegmentation)
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
            transformId = arrays.checkTransforms({"multi": reference}, segmentationNode)
        else:
            volumes = self.checkVolumes(volumeNodes)
            reference = next(iter(volumes.values()))
            axis = self.axialAxis(reference)
            self.checkSameGrid(volumes)
            transformId = arrays.checkTransforms(volumes, segmentationNode)
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
        scene = self._sceneOf(job.segmentationNode, reference)
        created = []
        try:
            if job.outputNode is None:
                name = scene.GenerateUniqueName(f"{job.segmentationNode.GetName()} propagated")
                outputNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
                created.append(outputNode)
                outputNode.CreateDefaultDisplayNodes()
                created.append(outputNode.GetDisplayNode())
                arrays.fillResultSegmentation(outputNode, job, result)
            else:
                outputNode = job.outputNode
                detached = slicer.vtkMRMLSegmentationNode()  # built outside the scene, then swapped in at once
                arrays.fillResultSegmentation(detached, job, result)
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

    def _addVolume(self, scene, name, kji, reference, transformId, created):
        node = arrays.addVolumeFromArray(scene, kji, self.ijkToRasArray(reference), scene.GenerateUniqueName(name))
        created.extend([node, node.GetDisplayNode()])
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

    # ------------------------------------------------------------------ segments and volumes from arrays

    def addTumourSegments(self, segmentationNode) -> list[str]:
        """Add the BraTS class segments (Necrotic core, Edema, Enhancing tumour) that no segment stands for yet;
        returns the ids of the added segments."""
        segmentation = segmentationNode.GetSegmentation()
        present = {bratsLabelOfName(segmentation.GetSegment(s).GetName() or "") for s in segmentation.GetSegmentIDs()}
        added = []
        for value, (name, color) in BRATS_SEGMENTS.items():
            if value not in present:
                added.append(segmentation.AddEmptySegment("", name, list(color)))
        return added

    def addVolumeFromArray(self, kji, ijkToRas, name: str = "", className: str = "vtkMRMLScalarVolumeNode"):
        """A new volume node in this Logic's scene from a KJI array and a 4x4 IJK-to-RAS matrix."""
        return arrays.addVolumeFromArray(self.scene, kji, ijkToRas, name, className)

    setSegmentFromArray = staticmethod(arrays.setSegmentFromArray)

    # ------------------------------------------------------------------ files

    def loadCase(self, caseDir, loadGroundTruth: bool = False) -> dict:
        """Load the sequences of a case folder (BraTS 2018-2021, BraTS 2023 or LGG names) as volume nodes.

        Returns role -> vtkMRMLScalarVolumeNode (and 'seg' -> vtkMRMLLabelMapVolumeNode with loadGroundTruth and
        a label file present). Uses the Volumes module logic (archetype storage nodes); on any failure the nodes
        loaded so far are removed again."""
        from BrainDiffSegLib.io import find_case_files

        files = find_case_files(caseDir)
        scene = self.scene
        volumesLogic = self.volumesLogic
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
                self.removeVolumeNode(node)
            raise
        return loaded

    @staticmethod
    def removeVolumeNode(node):
        """Remove a volume node and its display and storage nodes from its scene."""
        scene = node.GetScene()
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
            image = arrays.orientedImageFromArray(labels, reference)
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

