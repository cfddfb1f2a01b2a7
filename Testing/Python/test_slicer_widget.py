"""The module panel's Qt Designer file and what the Widget expects of it, without the Slicer application.

The `.ui` file is loaded with PySide6's `QUiLoader` on the offscreen platform (Slicer's CTK / qMRML widgets fall
back to the base classes declared in `<customwidgets>`); every `self.ui.<name>` the Widget uses must exist with a
suitable type, every Slicer widget must be declared, and the signal connections must name existing widgets. Also:
the pinned requirements installed on first use agree with pyproject.toml.
"""
from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET

import pytest

from conftest import REPO

UI_FILE = REPO / "Resources" / "UI" / "BrainDiffSeg.ui"
WIDGET_FILES = [REPO / "BrainDiffSeg" / "BrainDiffSegSlicer" / name for name in ("widget.py", "parameters.py")]
# What the Widget does with each kind of widget -> the Qt class (or declared base) it must be
EXPECTED_BASES = {"Selector": "QWidget", "Button": "QAbstractButton", "CheckBox": "QCheckBox",
                  "LineEdit": "QLineEdit", "SpinBox": "QSpinBox", "ComboBox": "QComboBox", "Label": "QLabel",
                  "ProgressBar": "QProgressBar"}
SLICER_WIDGETS = {"qMRMLWidget", "qMRMLNodeComboBox", "qMRMLSegmentEditorWidget", "qMRMLSegmentSelectorWidget",
                  "ctkCollapsibleButton", "ctkPathLineEdit"}


@pytest.fixture(scope="module")
def loaded():
    """The .ui loaded by QUiLoader offscreen: (top widget, {objectName: widget}, loader error string)."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    QtUiTools = pytest.importorskip("PySide6.QtUiTools")
    from PySide6.QtCore import QFile, QIODevice
    from PySide6.QtWidgets import QApplication, QWidget

    app = QApplication.instance() or QApplication([])
    f = QFile(str(UI_FILE))
    assert f.open(QIODevice.ReadOnly), UI_FILE
    loader = QtUiTools.QUiLoader()
    top = loader.load(f)
    f.close()
    assert top is not None, loader.errorString()
    widgets = {w.objectName(): w for w in top.findChildren(QWidget) if w.objectName()}
    yield top, widgets, loader.errorString()
    top.deleteLater()
    app.processEvents()


def used_ui_names() -> set[str]:
    text = "\n".join(path.read_text() for path in WIDGET_FILES)
    names = set(re.findall(r"self\.ui\.(\w+)", text))
    names |= set(re.findall(r'"(\w+(?:Selector|Button|LineEdit|CheckBox|SpinBox|ComboBox))"', text))
    return names


def test_ui_file_loads_offscreen(loaded):
    top, widgets, error = loaded
    assert error == ""
    assert top.objectName() == "BrainDiffSeg"
    assert len(widgets) > 30


def test_every_widget_the_panel_uses_exists_with_a_suitable_type(loaded):
    from PySide6 import QtWidgets

    _, widgets, _ = loaded
    used = used_ui_names()
    assert {"propagateButton", "progressBar", "statusLabel", "segmentEditorWidget", "flairSelector",
            "deviceComboBox", "checkpointPathLineEdit"} <= used
    missing = sorted(used - set(widgets))
    assert not missing, f"the Widget uses widgets the .ui does not define: {missing}"
    for name in used:
        for suffix, base in EXPECTED_BASES.items():
            # ctkPathLineEdit and ctkCollapsibleButton load as their declared base QWidget
            if name.endswith(suffix) and name != "checkpointPathLineEdit" and "Collapsible" not in name:
                assert isinstance(widgets[name], getattr(QtWidgets, base)), (name, type(widgets[name]))


def test_combo_boxes_match_the_values_the_widget_maps_them_to(loaded):
    pytest.importorskip("slicer")
    from BrainDiffSegLib.constants import ROLES
    from BrainDiffSegSlicer import parameters
    from BrainDiffSegSlicer.widget import BrainDiffSegWidget

    _, widgets, _ = loaded
    assert widgets["deviceComboBox"].count() == len(BrainDiffSegWidget.DEVICES) == 3
    assert [widgets["deviceComboBox"].itemText(i) for i in range(3)] == ["auto", "GPU", "CPU"]
    assert widgets["methodComboBox"].count() == len(BrainDiffSegWidget.METHODS)
    assert set(BrainDiffSegWidget.ROLE_SELECTORS) == set(ROLES)
    # every item the combo boxes store is a value the parameter node accepts, for the option it stands for
    fields = parameters.optionParameters()
    assert set(BrainDiffSegWidget.METHODS) == set(fields["Method"].choices)
    assert {parameters.DEVICES[d.lower()] for d in ("auto", "GPU", "CPU")} == set(BrainDiffSegWidget.DEVICES)


def test_slicer_widgets_are_declared():
    root = ET.parse(UI_FILE).getroot()
    from PySide6 import QtWidgets

    declared = {c.findtext("class"): (c.findtext("extends"), c.findtext("header"))
                for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    for cls in used:
        if hasattr(QtWidgets, cls):
            continue
        assert cls in declared, f"{cls} is used in the .ui but not declared in <customwidgets>"
        assert cls in SLICER_WIDGETS, cls
    for cls, (extends, header) in declared.items():
        assert header == f"{cls}.h"
        while extends in declared:  # a declared base of a declared class (qMRMLSegmentEditorWidget -> qMRMLWidget)
            extends = declared[extends][0]
        assert hasattr(QtWidgets, extends), (cls, extends)
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), "duplicate widget names"
    for connection in root.iter("connection"):
        assert connection.findtext("sender") == "BrainDiffSeg"
        assert connection.findtext("receiver") in names


def test_segment_editor_and_scene_connections():
    root = ET.parse(UI_FILE).getroot()
    receivers = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"}
    mrml = {w.get("name") for w in root.iter("widget") if w.get("class") in (
        "qMRMLNodeComboBox", "qMRMLSegmentEditorWidget", "qMRMLSegmentSelectorWidget")}
    assert mrml and mrml <= receivers, mrml - receivers


def test_requirements_are_pinned_like_pyproject():
    import tomllib

    from BrainDiffSegSlicer import install

    pins = {}
    for req in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]:
        name, version = req.split("==")
        pins[name.lower()] = version
    requirements = install.requirements()
    assert requirements and not any(r.startswith(("torch", "numpy")) for r in requirements)
    for req in requirements:
        name, version = req.split("==")
        assert pins[name.lower()] == version, req
    # every engine package except torch / numpy (installed separately / shipped by Slicer) is in the file
    import_names = {"scikit-image": "skimage"}
    covered = {import_names.get(r.split("==")[0], r.split("==")[0]) for r in requirements}
    assert set(install.ENGINE_PACKAGES) - {"torch", "numpy"} <= covered


def test_the_panel_needs_the_slicer_application():
    import BrainDiffSeg as M

    if M.SLICER_APPLICATION:
        pytest.skip("inside Slicer")
    with pytest.raises(RuntimeError, match="needs the 3D Slicer application"):
        M.BrainDiffSegWidget()


def test_every_parameter_the_panel_uses_is_a_module_parameter():
    """The names the Widget reads and writes in the parameter node are parameters of `parameters.py` (with
    defaults), and flags it reads are the panel's own switches."""
    pytest.importorskip("slicer")
    from BrainDiffSegSlicer import parameters

    text = WIDGET_FILES[0].read_text()
    used = set(re.findall(r'(?:GetParameter|SetParameter)\("(\w+)"', text))
    flags = set(re.findall(r'parameters\.flag\(\w+, "(\w+)"\)', text))
    assert {"Method", "Device", "Blocks", "ComponentRoles"} <= used and flags
    assert used | flags <= set(parameters.defaultParameters())
    assert flags <= set(parameters.PANEL_DEFAULTS)
