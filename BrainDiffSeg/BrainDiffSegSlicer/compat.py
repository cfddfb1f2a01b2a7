"""Slicer's scripted-module base classes: the real ones inside the Slicer application, minimal Qt-less stand-ins
under the `slicer-core` wheel (MRML without Qt; used by the tests, the benchmark script and the web annotator).
Also `tr` / `translate` (Slicer's i18n, identity functions where it is absent)."""
from __future__ import annotations

import sys
import types
import unittest

try:  # inside the Slicer application
    from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                               ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)

    SLICER_APPLICATION = True
except ImportError:  # slicer-core: minimal stand-ins, enough for the Logic and the tests
    SLICER_APPLICATION = False

    class ScriptedLoadableModule:
        """Stand-in for `slicer.ScriptedLoadableModule.ScriptedLoadableModule` where Slicer's Qt layer is absent."""

        def __init__(self, parent=None):
            super().__init__()
            if parent is None:  # the module file of the subclass (e.g. BrainDiffSeg.py)
                parent = types.SimpleNamespace(path=getattr(sys.modules[type(self).__module__], "__file__", ""))
            self.parent = parent
            self.moduleName = self.__class__.__name__
            parent.title = ""
            parent.categories = []
            parent.dependencies = []
            parent.contributors = []
            parent.helpText = ""
            parent.acknowledgementText = ""

    class ScriptedLoadableModuleLogic:
        """Stand-in for `slicer.ScriptedLoadableModule.ScriptedLoadableModuleLogic`: the module name only (the
        parameter node is found by `BrainDiffSegLogic.getParameterNode` in the Logic's own scene)."""

        def __init__(self, parent=None):
            super().__init__()
            self.moduleName = self.__class__.__name__
            if self.moduleName.endswith("Logic"):
                self.moduleName = self.moduleName[:-5]
            self.isSingletonParameterNode = True

    class ScriptedLoadableModuleWidget:
        """Stand-in: the module's panel needs the Slicer application (Qt)."""

        def __init__(self, parent=None):
            raise RuntimeError("The BrainDiffSeg panel needs the 3D Slicer application; use BrainDiffSegLogic "
                               "headless.")

    ScriptedLoadableModuleTest = unittest.TestCase

try:
    from slicer.i18n import tr
    from slicer.i18n import translate
except ImportError:  # slicer-core / older Slicer
    def tr(text):
        return text

    def translate(context, text):
        return text

__all__ = ["SLICER_APPLICATION", "ScriptedLoadableModule", "ScriptedLoadableModuleLogic",
           "ScriptedLoadableModuleTest", "ScriptedLoadableModuleWidget", "tr", "translate"]
