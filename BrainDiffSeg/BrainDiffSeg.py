"""BrainDiffSeg: the 3D Slicer scripted module's entry point (Slicer finds the classes below by name).

Paint a brain tumour on a few axial slices of a multi-sequence MRI; BrainDiffSeg segments the whole volume with
features of a denoising diffusion model and an ensemble of pixel classifiers (the engine in `BrainDiffSegLib`, run by
an engine service: `BrainDiffSegService`). The Slicer side lives in `BrainDiffSegSlicer` (see its docstring): this
file first checks the Slicer version (`BrainDiffSegSlicer.version`: 5.10 or later; an older Slicer gets a panel
that says so), then re-exports the module description, the Logic, the Widget and the self-test from
`BrainDiffSegSlicer.module`. It imports inside Slicer and under the `slicer-core` wheel (MRML without Qt), parses
with Python 3.9, and never imports torch.
"""
from __future__ import annotations

from BrainDiffSegSlicer.version import runningSlicerVersion, unsupportedModuleClasses, unsupportedReason

UNSUPPORTED = unsupportedReason(runningSlicerVersion())  # before anything else of ours is imported

if UNSUPPORTED is None:
    from BrainDiffSegSlicer.module import (SLICER_APPLICATION, BrainDiffSeg, BrainDiffSegLogic, BrainDiffSegTest,
                                           BrainDiffSegWidget, ScriptedLoadableModule, ScriptedLoadableModuleLogic)
else:  # an older Slicer: the module loads and says what it needs
    BrainDiffSeg, BrainDiffSegWidget = unsupportedModuleClasses(UNSUPPORTED)

__all__ = ["UNSUPPORTED", "SLICER_APPLICATION", "BrainDiffSeg", "BrainDiffSegLogic", "BrainDiffSegWidget",
           "BrainDiffSegTest", "ScriptedLoadableModule", "ScriptedLoadableModuleLogic"]
