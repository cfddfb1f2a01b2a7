"""The module without the Slicer application: a slicer-core MRML scene with its own Volumes and Segmentations
module logics (what the application provides), for scripts and tests, and the benchmark's propagator that runs
through the Logic on MRML nodes. Nothing here changes the `slicer` module (no global scene is set).
"""
from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

import slicer

from .logic import BrainDiffSegLogic
from .segments import BRATS_SEGMENTS, PALETTE

log = logging.getLogger(__name__)


class HeadlessScene:
    """A fresh vtkMRMLScene with a Volumes and a Segmentations module logic attached (attaching adds the subject
    hierarchy node). Use as a context manager (the scene is cleared and the logics detached on exit) or call
    `close()`. `logic()` makes a BrainDiffSegLogic on this scene and these logics."""

    def __init__(self):
        self.scene = slicer.vtkMRMLScene()
        self.segmentationsLogic = slicer.vtkSlicerSegmentationsModuleLogic()
        self.segmentationsLogic.SetMRMLScene(self.scene)
        self.volumesLogic = slicer.vtkSlicerVolumesLogic()
        self.volumesLogic.SetMRMLScene(self.scene)

    def logic(self) -> BrainDiffSegLogic:
        return BrainDiffSegLogic(self.scene, volumesLogic=self.volumesLogic,
                                 segmentationsLogic=self.segmentationsLogic)

    def close(self) -> None:
        if self.scene is None:
            return
        self.segmentationsLogic.SetMRMLScene(None)
        self.volumesLogic.SetMRMLScene(None)
        self.scene.Clear(1)
        self.scene = None

    def __enter__(self) -> HeadlessScene:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def benchmarkPropagator(logic: BrainDiffSegLogic):
    """A `BrainDiffSegBench` propagator (`propagator(case, annotation, method, options) -> labels`): runs
    'hybrid-mlp' / 'diffusion-mlp' / 'raw-mlp' (with the options `BrainDiffSegBench.propagation.method_options` gives
    them) through `logic.propagate` on MRML nodes of `logic.scene`, as a user would: the case's volumes loaded by
    `loadCase`, the simulated annotation painted into a segmentation (BraTS segment names for BraTS labels, else
    'Tumour N'), the result read back from the new segmentation node. The nodes are removed again after each call."""

    def propagator(case, annotation, method, options):
        scene = logic.scene
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
                logic.setSegmentFromArray(segmentation, sid, logic.fromEngineArray(annotation == value, axis),
                                          reference)
            engine_method = {"hybrid-mlp": "diffusion", "diffusion-mlp": "diffusion", "raw-mlp": "raw"}[method]
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
