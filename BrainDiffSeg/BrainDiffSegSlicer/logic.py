"""BrainDiffSegLogic: the only place where MRML nodes become arrays for the engine and arrays become MRML nodes.

The scene and the Volumes / Segmentations module logics are passed in (`BrainDiffSegLogic(scene, volumesLogic,
segmentationsLogic)`); by default, inside the Slicer application, the application's (`slicer.mrmlScene`,
`slicer.modules.volumes.logic()`, ...), elsewhere logics of the Logic's own attached to the given scene (or to a
fresh vtkMRMLScene). No method uses the global `slicer.mrmlScene`, `slicer.modules`, `slicer.app` nor
`slicer.util.load*` / `save*`: files are read and written with storage nodes and the Volumes logic, so the Logic
runs the same in Slicer, in `Slicer --no-main-window`, under slicer-core and in the web annotator.

Where the engine runs (`engine`, module `engine`): the Logic reads the scene into arrays and writes results back;
the computation is the engine's (`BrainDiffSegLib.jobs`), on `self.engine`: in this process by default (scripts,
whose blocking calls need no event loop), a private local engine service (`useLocalService`: Slicer's own Python
in a process of its own) or a remote server (`useRemoteServer`). Background jobs (`startPropagation`,
`startInpainting`) go through the one job controller `self.jobs` (`BrainDiffSegService.controller`), which the
panel polls from one timer; in the Slicer application they never run in Slicer's process (its idle loop holds the
GIL). Slicer's process never imports torch and no process-global setting of it changes.

Axes: `slicer.util.arrayFromVolume` gives arrays in KJI order; the engine wants the IJK array with its axial
(inferior-superior) axis moved last, which is what it gets from NIfTI files. The axial axis is the IJK axis whose
direction in the IJK-to-RAS matrix is closest to superior-inferior; oblique volumes are refused. Segment names ->
label values: see `segments`. The annotation is complete axial slices or seeds (strokes in any view; the options'
`annotation_mode`): in seeds mode the Background segment's voxels get the options' `background_label` and every
unpainted voxel is unknown; `annotationModeFor` resolves the panel's choice (Automatic: seeds once Background is
painted).

Interactive use: the engine keeps each volume's normalised images, backbone and the features of the slices computed
so far (`BrainDiffSegLib.propagation.cache.VolumeCache`; an engine service receives the images only once): a re-run on the same
volume only computes what changed (`clearCache()` on scene close or another case). The Logic runs one job at a
time, takes corrections painted into the result it updates as annotated slices and never changes locked segments
(module `corrections`), and suggests the slice to paint next (`nextSliceToPaint`, `BrainDiffSegLib.propagation.suggest`).

Healthy-tissue inpainting (`inpaint`, `startInpainting` / `finishInpainting`) goes through module `inpainting`: a T1
volume and segments in, a new volume out; it shares the one-job-at-a-time rule with propagation.

Length: the Logic's public API (propagate in the foreground or background, where the engine runs, the cache,
suggestions, results, inpainting, load and save) in one class; the array conversions and input checks it delegates to live in `arrays`,
corrections and locks in `corrections`, inpainting in `inpainting`, file reading and writing in `files`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

import slicer
import slicer.util

from BrainDiffSegLib.constants import BACKGROUND_COLOR, BACKGROUND_LABEL, BACKGROUND_NAME
from BrainDiffSegLib.errors import InputError

from . import arrays, corrections, engine as engines, files, inpainting, parameters
from .compat import SLICER_APPLICATION, ScriptedLoadableModuleLogic
from .segments import (ANNOTATED_SLICES_ATTRIBUTE, BRATS_SEGMENTS, LABEL_VALUES_ATTRIBUTE, SOURCE_REFERENCE_ROLE,
                       UNCERTAINTY_REFERENCE_ROLE, bratsLabelOfName, isBackgroundName)

log = logging.getLogger(__name__)


@dataclass
class PropagationJob:
    """The inputs of one propagation, read from the scene: arrays for the engine plus what is needed to write the
    result back (made by `BrainDiffSegLogic.preparePropagation`)."""

    images: dict  # role -> array (the volume's own voxel type), IJK with the axial axis last
    annotation: np.ndarray  # label values, same layout
    axis: int  # IJK axis that is axial
    referenceNode: object  # the volume whose grid the result gets
    segmentationNode: object  # the painted segmentation (read only)
    brats: bool  # BraTS label values / segment names
    segmentIdOfValue: dict
    transformId: str | None
    outputNode: object = None  # an earlier result to update, or None for a new node
    createUncertainty: bool = False
    correctedSlices: list = None  # slices corrected in outputNode, annotated slices (seeds) of this run
    annotationMode: str = "slices"  # the engine's annotation_mode: complete axial slices, or seeds (strokes)
    backgroundLabel: int = BACKGROUND_LABEL  # seeds mode: the annotation value of the Background segment


class BrainDiffSegLogic(ScriptedLoadableModuleLogic):
    """MRML nodes <-> engine arrays. Blocking calls, usable from scripts, the module GUI and tests.

    `propagate(volumeNodes, segmentationNode)` -> a new segmentation node; `loadCase(caseDir)` -> volume nodes;
    `saveSegmentation(node, path)`. After `propagate`, `lastResult` holds the engine's `PropagationResult`
    (timings, annotated slices, least certain slices) and `lastUncertaintyNode` the uncertainty volume if one was
    requested. New nodes go to the scene of the input nodes (`scene` when they have none).
    """

    def __init__(self, scene=None, volumesLogic=None, segmentationsLogic=None, engine=None):
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
        self._suggested = None  # (result, slice to paint next, least certain slices): ranked once per result
        self.lastUncertaintyNode = None
        self.lastMessages = []
        self.lastCacheStats = {}  # the feature cache after the last propagation (bytes, slices, hits, misses)
        self._written = corrections.WrittenLabels()
        self.engine = engine if engine is not None else engines.inProcess()
        from BrainDiffSegService.controller import JobController

        self.jobs = JobController()  # the background job (one at a time), polled by the front end
        self._inForeground = False

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
    sliceCentreRas = staticmethod(arrays.sliceCentreRas)
    # ------------------------------------------------------------------ propagation

    def propagate(self, volumeNodes, segmentationNode, options=None, progress=None, cancelled=None,
                  createUncertainty: bool = False, outputNode=None, componentRoles=None):
        """Segment the whole volume from the painted axial slices, or the painted seeds (strokes in any view, with
        `options.annotation_mode` 'seeds'); returns a NEW segmentation node (blocking).

        volumeNodes: role ('t1', 't1ce', 't2', 'flair') -> vtkMRMLScalarVolumeNode, all on one grid (None values
        are ignored), or one multi-component volume (vtkMRMLVectorVolumeNode) whose components are the sequences
        `componentRoles` (default: t1, t1ce, t2, flair for 4 components). segmentationNode: the painted slices;
        left unchanged. options: a `BrainDiffSegLib.propagation.propagate.PropagationOptions` (default: the diffusion method
        with the bundled backbone). progress(stage, fraction) and cancelled() -> bool are passed to the engine;
        when cancelled, a `BrainDiffSegLib.errors.CancelledError` is raised and the scene is left as it was.
        With createUncertainty, an uncertainty (normalised entropy) volume is added too: `lastUncertaintyNode`,
        also referenced from the result node by the role 'BrainDiffSeg.uncertainty'. outputNode: a segmentation
        made by an earlier propagation of the same painted segmentation, to be updated in place instead of
        creating a new node (re-running after painting one more slice); any other node is refused.
        Bad input raises `BrainDiffSegLib.errors.InputError` with a message naming the nodes. If the GPU runs
        out of memory, the work is redone on the CPU (`lastMessages` says so). The engine runs where `engine`
        says (in this process by default: a script blocks here anyway).
        """
        self._refuseIfRunning()
        self._inForeground = "propagation"
        try:
            options = self._options(options)
            job = self.preparePropagation(volumeNodes, segmentationNode, outputNode=outputNode,
                                          componentRoles=componentRoles, options=options)
            response = self.engine.run(self.propagationRequest(job, options), progress, cancelled)
            return self.addPropagationResponse(job, response, createUncertainty)
        finally:
            self._inForeground = False

    def startPropagation(self, volumeNodes, segmentationNode, options=None, createUncertainty: bool = False,
                         outputNode=None, componentRoles=None):
        """`propagate` for a GUI: the nodes are read now (in the caller's thread), the engine runs elsewhere (in
        the Slicer application always outside Slicer's process: a local engine service or a remote server).
        Returns the `BrainDiffSegService.controller.Job` (also `self.jobs.job`): poll it from the GUI's event loop
        (`self.jobs.poll()`: state and progress; `cancel()`); the poll after the engine's result is in adds it to
        the scene, and `job.outcome()` (or `finishPropagation(job)`) is the result node."""
        self._refuseIfRunning()
        options = self._options(options)
        job = self.preparePropagation(volumeNodes, segmentationNode, outputNode=outputNode,
                                      componentRoles=componentRoles, options=options)
        return self.jobs.start("propagation", self._backgroundEngine(), self.propagationRequest(job, options),
                               lambda response: self.propagationResponseSteps(job, response, createUncertainty))

    @staticmethod
    def _options(options):
        from BrainDiffSegLib.options import preset

        return options if options is not None else preset("default")

    def annotationModeFor(self, segmentationNode, choice: str = parameters.AUTO) -> tuple[str, str]:
        """The annotation mode ('slices' or 'seeds', the engine's `annotation_mode`) a propagation of
        `segmentationNode` uses for the panel's choice, and why (a few words the panel shows). 'slices' / 'seeds':
        as chosen. 'auto' (the panel's default): seeds when a segment named as background ('Background', which
        `addTumourSegments` adds) has painted voxels, else complete slices: who paints strokes plus a background
        works as with Grow from seeds, who paints complete slices never paints a Background segment."""
        choice = parameters.annotationChoiceOf(choice)
        if choice != parameters.AUTO:
            return choice, "chosen"
        if segmentationNode is None:
            return "slices", "no segmentation"
        painted = arrays.backgroundSegmentIds(segmentationNode, painted=True)
        if painted:
            return "seeds", f"{segmentationNode.GetSegmentation().GetSegment(painted[0]).GetName()} is painted"
        ids = arrays.backgroundSegmentIds(segmentationNode)
        if ids:
            return "slices", f"{segmentationNode.GetSegmentation().GetSegment(ids[0]).GetName()} is not painted"
        return "slices", f"no {BACKGROUND_NAME} segment"

    @property
    def running(self) -> bool:
        """Whether a propagation or an inpainting of this Logic is running (one job at a time per Logic, in the
        foreground or the background)."""
        return bool(self._inForeground) or self.jobs.running

    def _refuseIfRunning(self):
        if self.running:
            what = self._inForeground or self.jobs.job.kind
            raise InputError(f"A{'n' if what[0] in 'aeiou' else ''} {what} is already running: wait for it to "
                             "finish or cancel it first.")

    @staticmethod
    def finishPropagation(run):
        """The result node of a finished `startPropagation` job (the same as `run.outcome()`). Re-raises the
        job's error (CancelledError, InputError, ...) with the scene unchanged."""
        if not run.done:
            raise RuntimeError("The propagation has not finished yet.")
        return run.outcome()

    # ------------------------------------------------------------------ where the engine runs (module `engine`)

    def setEngine(self, engine) -> None:
        """Run the engine's jobs on `engine` (`BrainDiffSegService.engines`); the previous one is closed (a local
        service stops). Refused while a job runs."""
        self._refuseIfRunning()
        if engine is not self.engine:
            self.stopEngine()
            self.engine = engine
            self.lastCacheStats = {}

    def useInProcess(self) -> None:
        """The engine in this process (scripts; never for the Slicer panel's background jobs)."""
        self.setEngine(engines.inProcess())

    def useLocalService(self, threads: int = 0) -> None:
        """A private engine service on this computer, started (with Slicer's Python) on the next job."""
        self.setEngine(engines.localService(threads))

    def useRemoteServer(self, url: str, token: str, cafile: str | None = None) -> None:
        """An engine server (`braindiffseg serve` on a GPU machine): its URL, token and, for a self-signed
        certificate, the CA file to trust."""
        self.setEngine(engines.remoteServer(url, token, cafile))

    def _backgroundEngine(self):
        replacement = engines.backgroundEngineFor(self.engine)
        if replacement is not None:
            self.setEngine(replacement)
        return self.engine

    def stopEngine(self) -> None:
        """Cancel a running job and close the engine (a local service stops); the next job starts a new one."""
        if self.jobs.running:  # (its result, if it arrives, is dropped: the module or Slicer is closing)
            self.jobs.cancel(discard=True)
            self.jobs.job.wait(10)
        self.engine.close()

    def preparePropagation(self, volumeNodes, segmentationNode, outputNode=None, componentRoles=None, options=None):
        """Check the inputs and read them into arrays (a `PropagationJob`) in the annotation mode of `options`
        (default: complete slices): in seeds mode the Background segment's voxels get `options.background_label`
        and every unpainted voxel is 0 (unknown); the scene is not modified."""
        options = self._options(options)
        seeds = options.annotation_mode == "seeds"
        self.lastResult = None
        self.lastUncertaintyNode = None
        self.lastMessages = []
        if segmentationNode is None or not segmentationNode.IsA("vtkMRMLSegmentationNode"):
            raise InputError("Select the segmentation with the painted slices.")
        if hasattr(volumeNodes, "IsA"):  # one multi-component volume
            reference = volumeNodes
            images = self.multiComponentArrays(reference, componentRoles, native=True)
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
        labelsKJI, segmentIdOfValue, brats = self.labelArrayFromSegmentation(
            segmentationNode, reference, options.background_label if seeds else None)
        core = brats and (1 in segmentIdOfValue or 4 in segmentIdOfValue)
        if core and "t1ce" not in (images if images is not None else volumes):  # what it costs (results section 4)
            self.lastMessages.append("Without a T1ce the tumour core and the enhancing tumour are much less accurate "
                                     "(on a BraTS case with FLAIR alone, enhancing tumour Dice 0.43-0.69 instead of "
                                     "0.93-0.95 with all four sequences); add the T1ce if there is one.")
        ids, values, _ = self.segmentLabelInfo(segmentationNode)
        segmentation = segmentationNode.GetSegmentation()
        for sid in (s for s, v in zip(ids, values) if v == 0):
            name = segmentation.GetSegment(sid).GetName()
            if not isBackgroundName(name):
                self.lastMessages.append(f"Segment '{name}' is taken as background, not as a tumour class: it is not "
                                         "propagated.")
            elif not seeds and arrays.segmentHasVoxels(segmentationNode, sid):
                self.lastMessages.append(f"Segment '{name}' is painted but the annotation is complete slices: its "
                                         "strokes are not used (choose Seeds to use them).")
        if not segmentIdOfValue:
            if seeds and np.any(labelsKJI):
                raise InputError(f"Only {BACKGROUND_NAME} is painted in '{segmentationNode.GetName()}': paint at "
                                 "least one tumour class too.")
            raise InputError(f"Segmentation '{segmentationNode.GetName()}' is empty on the grid of volume "
                             f"'{reference.GetName()}': paint the tumour on at least one "
                             f"{'slice' if seeds else 'axial slice'}.")
        if images is None:
            images = {role: arrays.engineVolumeArray(node, axis) for role, node in volumes.items()}
        annotation = np.ascontiguousarray(self.toEngineArray(labelsKJI, axis))  # sent as is: C order
        job = PropagationJob(images=images, annotation=annotation, axis=axis,
                             referenceNode=reference, segmentationNode=segmentationNode, brats=brats,
                             segmentIdOfValue=segmentIdOfValue, transformId=transformId, outputNode=outputNode,
                             annotationMode=options.annotation_mode, backgroundLabel=int(options.background_label))
        job.correctedSlices, messages = corrections.takeCorrections(job, self._written.written(outputNode))
        self.lastMessages.extend(messages)
        return job

    def propagationRequest(self, job, options=None):
        """The engine's request of a prepared job (`BrainDiffSegLib.jobs`): the options as strings (in the job's
        annotation mode), the annotation, the images (which an engine service receives only when it does not have
        them yet)."""
        from BrainDiffSegLib.options import preset, to_strings
        from BrainDiffSegLib.transfer import EngineRequest

        options = replace(options if options is not None else preset("default"),  # as the annotation was read
                          annotation_mode=job.annotationMode, background_label=job.backgroundLabel)
        return EngineRequest("propagate", {"options": to_strings(options), "return": ["labels", "entropy"]},
                             {"annotation": job.annotation}, volume=job.images)  # (disagreement: unused here)

    def addPropagationResponse(self, job, response, createUncertainty: bool = False):
        """`addPropagationResult` of an engine response; its messages (e.g. a GPU that ran out of memory) go to
        `lastMessages`, its feature-cache figures to `lastCacheStats`."""
        steps = self.propagationResponseSteps(job, response, createUncertainty)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value

    def propagationResponseSteps(self, job, response, createUncertainty: bool = False):
        """`addPropagationResponse` in steps (a generator: the job controller runs one step per tick of the panel's
        timer): the segmentation built outside the scene, the uncertainty array, the suggestions (`suggestions`),
        then the scene changes at once.
        Returns the result node."""
        from BrainDiffSegLib.results import PropagationResult

        result = PropagationResult.from_response(response)
        self.lastMessages.extend(str(m) for m in response.meta.get("messages", []))
        for warning in map(str, response.meta.get("warnings") or []):  # for the user, e.g. seeds outside the head
            if warning not in self.lastMessages:  # (once: they may be among the messages too)
                self.lastMessages.append(warning)
        self.lastCacheStats = dict(response.meta.get("cache") or {})
        prepared = self._prepareResult(job, result)
        yield "adding the result"
        prepared["entropy"] = self._uncertaintyArray(job, result) if createUncertainty else None
        yield "adding the result"
        self.suggestions(result)  # ranked now, read after the commit (the slice to paint next, the least certain)
        yield "adding the result"
        return self._commitResult(job, result, prepared)

    def featureCacheBytes(self) -> int:
        """Memory held by the engine's feature cache (the stored activations) after the last propagation, in bytes;
        0 before the first run or after `clearCache`."""
        return int(self.lastCacheStats.get("bytes", 0))

    def featureCacheStats(self) -> dict:
        """The engine's feature cache after the last propagation: bytes, slices, hits, misses, max_bytes."""
        return dict(self.lastCacheStats)

    def clearCache(self) -> None:
        """Forget the engine's feature caches (of the volumes this Logic sent) and what the Logic wrote into result
        nodes (on scene close, another case)."""
        self.engine.forget()
        self.lastCacheStats = {}
        self._written.clear()

    def nextSliceToPaint(self, result=None) -> int | None:
        """The axial slice (engine index) to paint next for `result` (default `lastResult`): `BrainDiffSegLib.
        suggest.next_slice`, never an annotated slice; None without a result or a candidate."""
        return self.suggestions(result)[0]

    def suggestions(self, result=None) -> tuple[int | None, list[tuple[int, float]]]:
        """(`nextSliceToPaint`, the 5 least certain slices with their scores) of `result` (default `lastResult`):
        as the engine ranked them (`result.suggestions`, `suggest.suggestions_of`), else ranked here
        once per result (a result from an engine that does not rank), in a step of its own before the scene changes
        (`propagationResponseSteps`)."""
        result = result if result is not None else self.lastResult
        if result is None:
            return None, []
        if self._suggested is None or self._suggested[0] is not result:
            ranked = result.suggestions
            if ranked is None:
                from BrainDiffSegLib.propagation.suggest import suggestions_of

                ranked = suggestions_of(result)
            z = ranked.get("next_slice")
            self._suggested = (result, None if z is None else int(z),
                               [(int(q), float(score)) for q, score in ranked.get("least_certain", [])])
        return self._suggested[1], list(self._suggested[2])

    def jumpToAxialSlice(self, sliceNode, volumeNode, axialIndex: int) -> tuple[float, float, float]:
        """Centre a slice view (its vtkMRMLSliceNode, e.g. the Red one) on an axial slice of a volume."""
        r, a, s = self.sliceCentreRas(volumeNode, axialIndex)
        sliceNode.JumpSliceByCentering(r, a, s)
        return r, a, s

    def addPropagationResult(self, job, result, createUncertainty: bool = False):
        """Add (or update, for `job.outputNode`) the result segmentation and the optional uncertainty volume.
        Only this step modifies the scene; on any error the nodes it created are removed again."""
        prepared = self._prepareResult(job, result)
        prepared["entropy"] = self._uncertaintyArray(job, result) if createUncertainty else None
        return self._commitResult(job, result, prepared)

    def _uncertaintyArray(self, job, result):
        return self.fromEngineArray(result.entropy.astype(np.float32), job.axis)

    def _prepareResult(self, job, result) -> dict:
        """What adding a result does outside the scene: the result segmentation built outside it (with the locked
        segments of an updated node) and the labels it holds (what the Logic wrote, for corrections)."""
        reference, axis = job.referenceNode, job.axis
        detached = slicer.vtkMRMLSegmentationNode()
        locked = []
        if job.outputNode is not None:
            locked = corrections.lockedMasks(job.outputNode, reference, axis)
            corrections.copyLockedSegments(detached, job.outputNode, locked, reference, axis)
        labels = corrections.withoutLocked(result.labels, locked)
        values = result.label_values
        if job.annotationMode == "seeds":  # background is 0 in a result (the engine's, or any seeds kept as painted)
            labels = np.where(labels == job.backgroundLabel, 0, labels)
            values = [v for v in values if v != job.backgroundLabel]
        arrays.fillResultSegmentation(detached, job, replace(result, labels=labels, label_values=values))
        valueOfName, _ = corrections.paintedValues(job.segmentationNode)
        return {"detached": detached, "written": corrections.writtenLabels(labels, locked, valueOfName,
                                                                           job.outputNode or detached)}

    def _commitResult(self, job, result, prepared: dict):
        """The scene changes of adding a prepared result, at once (`_prepareResult`)."""
        reference = job.referenceNode
        scene = self._sceneOf(job.segmentationNode, reference)
        detached, created = prepared["detached"], []
        try:
            if job.outputNode is None:
                detached.SetName(scene.GenerateUniqueName(f"{job.segmentationNode.GetName()} propagated"))
                outputNode = scene.AddNode(detached)
                created.append(outputNode)
                outputNode.CreateDefaultDisplayNodes()
                created.append(outputNode.GetDisplayNode())
                if job.transformId:
                    outputNode.SetAndObserveTransformNodeID(job.transformId)
                outputNode.SetNodeReferenceID(SOURCE_REFERENCE_ROLE, job.segmentationNode.GetID())
            else:
                outputNode = job.outputNode
                outputNode.GetSegmentation().DeepCopy(detached.GetSegmentation())
                for attribute in (ANNOTATED_SLICES_ATTRIBUTE, LABEL_VALUES_ATTRIBUTE):
                    outputNode.SetAttribute(attribute, detached.GetAttribute(attribute))
            uncertaintyNode = None
            if prepared["entropy"] is not None:
                uncertaintyNode = self.uncertaintyNodeOf(outputNode)
                if uncertaintyNode is not None:
                    slicer.util.updateVolumeFromArray(uncertaintyNode, prepared["entropy"])
                else:
                    uncertaintyNode = self._addVolume(scene, f"{outputNode.GetName()} uncertainty", prepared["entropy"],
                                                      reference, job.transformId, created, windowLevel=(0.0, 1.0))
                    outputNode.SetNodeReferenceID(UNCERTAINTY_REFERENCE_ROLE, uncertaintyNode.GetID())
        except Exception:
            self._removeNodes(scene, created)
            raise
        self._written.remember(outputNode, prepared["written"])
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

    def _addVolume(self, scene, name, kji, reference, transformId, created, windowLevel=None):
        node = arrays.addVolumeFromArray(scene, kji, self.ijkToRasArray(reference), scene.GenerateUniqueName(name),
                                         windowLevel=windowLevel)
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

    # ------------------------------------------------------------------ healthy-tissue inpainting (`inpainting`)

    def inpaint(self, volumeNode, segmentationNode, segmentIds=None, steps: int = 25, seed: int = 0, progress=None,
                cancelled=None, model=None, device: str = "cpu"):
        """Synthesise healthy tissue in a T1 volume inside segments; returns a NEW scalar volume "<input>
        inpainted" (blocking). The mask is the union of `segmentIds` (default: the visible segments) of
        `segmentationNode` (painted or propagated); steps: DDIM steps; model: checkpoint folder on the engine's
        computer (default the bundled one). Input volume and segmentation are left unchanged; cancelling
        (CancelledError) leaves the scene as it was; bad input raises InputError naming the nodes. See
        `inpainting`."""
        self._refuseIfRunning()
        self._inForeground = "inpainting"
        try:
            job = inpainting.prepareInpainting(volumeNode, segmentationNode, segmentIds, steps, seed, model, device)
            response = self.engine.run(inpainting.inpaintingRequest(job), progress, cancelled)
            return inpainting.addInpaintingResponse(self._sceneOf(volumeNode), job, response)
        finally:
            self._inForeground = False

    def startInpainting(self, volumeNode, segmentationNode, segmentIds=None, steps: int = 25, seed: int = 0,
                        model=None, device: str = "cpu"):
        """`inpaint` for a GUI, as `startPropagation`: the nodes are read now, the engine runs elsewhere; returns
        the controller's Job (poll `self.jobs`; `job.outcome()` or `finishInpainting(job)` is the new volume)."""
        self._refuseIfRunning()
        job = inpainting.prepareInpainting(volumeNode, segmentationNode, segmentIds, steps, seed, model, device)
        scene = self._sceneOf(volumeNode)
        return self.jobs.start("inpainting", self._backgroundEngine(), inpainting.inpaintingRequest(job),
                               lambda response: inpainting.addInpaintingResponse(scene, job, response))

    @staticmethod
    def finishInpainting(run):
        """The new volume of a finished `startInpainting` job (`run.outcome()`). Re-raises the job's error
        (CancelledError, InputError, ...) with the scene unchanged."""
        if not run.done:
            raise RuntimeError("The inpainting has not finished yet.")
        return run.outcome()

    # ------------------------------------------------------------------ segments and volumes from arrays

    def addTumourSegments(self, segmentationNode, background: bool = True) -> list[str]:
        """Add the BraTS class segments (Necrotic core, Edema, Enhancing tumour) that no segment stands for yet and,
        with `background`, a 'Background' segment when no segment is named as background (painted, it makes the
        annotation seeds: `annotationModeFor`); returns the ids of the added segments."""
        segmentation = segmentationNode.GetSegmentation()
        names = [segmentation.GetSegment(s).GetName() or "" for s in segmentation.GetSegmentIDs()]
        present = {bratsLabelOfName(n) for n in names if not isBackgroundName(n)}
        added = []
        for value, (name, color) in BRATS_SEGMENTS.items():
            if value not in present:
                added.append(segmentation.AddEmptySegment("", name, list(color)))
        if background and not any(isBackgroundName(n) for n in names):
            added.append(segmentation.AddEmptySegment("", BACKGROUND_NAME, list(BACKGROUND_COLOR)))
        return added

    def paintTumourSegments(self, referenceVolumeNode, labels, name: str = "Painted", backgroundLabel=None):
        """A new segmentation (in the reference volume's scene) with the BraTS class segments painted from a label
        array in the engine's layout (axial axis last; values 1, 2, 4): for scripts, benchmarks and tests that
        paint a simulated annotation. With `backgroundLabel` (seeds: 0 unknown) a Background segment is painted
        where `labels` has that value. Returns the node; segment id -> BraTS value as `bratsLabelOfName` reads."""
        axis = self.axialAxis(referenceVolumeNode)
        node = self._sceneOf(referenceVolumeNode).AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        node.CreateDefaultDisplayNodes()
        node.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode)
        self.addTumourSegments(node, background=backgroundLabel is not None)
        segmentation = node.GetSegmentation()
        for sid in segmentation.GetSegmentIDs():
            segmentName = segmentation.GetSegment(sid).GetName()
            value = backgroundLabel if isBackgroundName(segmentName) else bratsLabelOfName(segmentName)
            self.setSegmentFromArray(node, sid, self.fromEngineArray(labels == value, axis), referenceVolumeNode)
        return node

    def addVolumeFromArray(self, kji, ijkToRas, name: str = "", className: str = "vtkMRMLScalarVolumeNode"):
        """A new volume node in this Logic's scene from a KJI array and a 4x4 IJK-to-RAS matrix."""
        return arrays.addVolumeFromArray(self.scene, kji, ijkToRas, name, className)

    setSegmentFromArray = staticmethod(arrays.setSegmentFromArray)

    # ------------------------------------------------------------------ files (BrainDiffSegSlicer.files)

    def loadCase(self, caseDir, loadGroundTruth: bool = False) -> dict:
        """The sequences of a case folder as volume nodes of this Logic's scene (see `files.loadCase`)."""
        return files.loadCase(self.scene, self.volumesLogic, caseDir, loadGroundTruth)

    removeVolumeNode = staticmethod(files.removeVolumeNode)
    saveSegmentation = staticmethod(files.saveSegmentation)
    saveVolume = staticmethod(files.saveVolume)
