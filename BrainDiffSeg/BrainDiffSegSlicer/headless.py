"""The module without the Slicer application: a slicer-core MRML scene with its own Volumes and Segmentations
module logics (what the application provides), for scripts and tests. Nothing here changes the `slicer` module (no
global scene is set).
"""
from __future__ import annotations

import logging

import slicer

from .logic import BrainDiffSegLogic

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
