"""The Slicer versions the module runs on, checked when Slicer loads it, before anything else of ours is imported.

BrainDiffSeg needs 3D Slicer 5.10 or later (Python 3.12; the engine and its tests run on Python >= 3.10; Slicer 5.8
ships Python 3.9, on which the module's code is not tested and would fail). On an older Slicer the module still
loads, as a panel that says so in one sentence. This file uses Python 3.9's syntax and the standard library only.
"""
from __future__ import annotations

MINIMUM_SLICER = (5, 10)


def runningSlicerVersion():
    """(major, minor) of the running Slicer application, or None outside it (slicer-core, plain Python)."""
    try:
        import slicer

        app = slicer.app
    except (ImportError, AttributeError):
        return None
    try:
        return int(app.majorVersion), int(app.minorVersion)
    except (AttributeError, TypeError, ValueError):
        return None


def unsupportedReason(version) -> str | None:
    """One sentence when `version` ((major, minor) or None) is too old, else None."""
    if version is None or tuple(version) >= MINIMUM_SLICER:
        return None
    return ("BrainDiffSeg needs 3D Slicer {}.{} or later; this is Slicer {}.{}. Install a newer Slicer from "
            "https://download.slicer.org.".format(MINIMUM_SLICER[0], MINIMUM_SLICER[1], version[0], version[1]))


def unsupportedModuleClasses(reason: str):
    """(module, widget) classes of a module that only shows `reason` (Slicer's own base classes)."""
    from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleWidget

    class UnsupportedModule(ScriptedLoadableModule):
        def __init__(self, parent):
            ScriptedLoadableModule.__init__(self, parent)
            self.parent.title = "BrainDiffSeg"
            self.parent.categories = ["Segmentation"]
            self.parent.contributors = ["BrainDiffSeg developers"]
            self.parent.helpText = reason

    class UnsupportedWidget(ScriptedLoadableModuleWidget):
        def setup(self):
            import qt

            ScriptedLoadableModuleWidget.setup(self)
            label = qt.QLabel(reason)
            label.wordWrap = True
            self.layout.addWidget(label)
            self.layout.addStretch(1)

    return UnsupportedModule, UnsupportedWidget
