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
WIDGET_FILES = [REPO / "BrainDiffSeg" / "BrainDiffSegSlicer" / name
                for name in ("widget.py", "parameters.py", "bindings.py")]
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
    names = set(re.findall(r"\bui\.(\w+)", text))
    names |= set(re.findall(r'"([a-z]\w+(?:Selector|Button|LineEdit|CheckBox|SpinBox|ComboBox))"', text))
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
            if name.endswith(suffix) and not name.endswith("PathLineEdit") and "Collapsible" not in name:
                assert isinstance(widgets[name], getattr(QtWidgets, base)), (name, type(widgets[name]))


def test_option_widgets_get_choices_and_bounds_from_the_option_fields(loaded):
    """The .ui holds no choices or bounds of its own: `bindings.setUp` fills the loaded widgets from the fields, and
    every bound widget round-trips every value its field allows through the parameter node's text."""
    pytest.importorskip("slicer")
    from PySide6 import QtWidgets

    from BrainDiffSegSlicer import bindings

    _, widgets, _ = loaded
    assert widgets["deviceComboBox"].count() == 0 and widgets["methodComboBox"].count() == 0  # not in the .ui
    for name, f in bindings.boundFields().items():
        widget = widgets[name]
        if name.endswith("PathLineEdit"):  # a ctkPathLineEdit: a plain QWidget without CTK
            continue
        bindings.setUp(name, widget)
        if name.endswith("ComboBox"):
            assert isinstance(widget, QtWidgets.QComboBox)
            assert [widget.itemData(i) for i in range(widget.count())] == list(f.choices)
            assert [widget.itemText(i) for i in range(widget.count())] == [f.label(c) for c in f.choices]
            for choice in f.choices:
                bindings.toWidget(name, widget, choice)
                assert bindings.fromWidget(name, widget) == choice
        elif name.endswith("SpinBox"):
            assert widget.minimum() == f.low and widget.maximum() == min(f.high or 2**31 - 1, 2**31 - 1)
            bindings.toWidget(name, widget, str(int(f.low) + 1))
            assert bindings.fromWidget(name, widget) == str(int(f.low) + 1)
        else:
            bindings.toWidget(name, widget, "1,3")
            assert bindings.fromWidget(name, widget) == "1,3"
    assert [widgets["deviceComboBox"].itemText(i) for i in range(3)] == ["auto", "GPU", "CPU"]
    assert widgets["ensembleSpinBox"].maximum() == 50 and widgets["seedSpinBox"].maximum() == 2**31 - 1
    bindings.toWidget("deviceComboBox", widgets["deviceComboBox"], "GPU")  # a stored label is understood
    assert bindings.fromWidget("deviceComboBox", widgets["deviceComboBox"]) == "cuda"
    bindings.toWidget("deviceComboBox", widgets["deviceComboBox"], "")  # empty: the field's default
    assert bindings.fromWidget("deviceComboBox", widgets["deviceComboBox"]) == "auto"


def test_the_annotation_combo_gets_its_choices_from_the_parameters(loaded):
    """The Annotation combo is empty in the .ui: the widget fills it from `parameters.annotationChoices()`
    (Automatic, then the option's modes), stores the item data in AnnotationMode, and a label shows the mode."""
    pytest.importorskip("slicer")
    from PySide6 import QtWidgets

    from BrainDiffSegSlicer import parameters

    _, widgets, _ = loaded
    combo, label = widgets["annotationModeComboBox"], widgets["annotationModeLabel"]
    assert isinstance(combo, QtWidgets.QComboBox) and combo.count() == 0 and isinstance(label, QtWidgets.QLabel)
    assert label.wordWrap() and combo.toolTip()
    for value, text in parameters.annotationChoices():
        combo.addItem(text, value)
    assert [combo.itemData(i) for i in range(combo.count())] == ["auto", "slices", "seeds"]
    assert all(parameters.annotationChoiceOf(combo.itemData(i)) == combo.itemData(i) for i in range(combo.count()))
    widget = (REPO / "BrainDiffSeg" / "BrainDiffSegSlicer" / "widget.py").read_text()
    assert 'SetParameter("AnnotationMode", combo.itemData(' in widget


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


def test_requirements_are_lower_bounds_that_the_tested_pins_satisfy():
    """Slicer's requirements never pin (a pin would downgrade what another extension installed) and what the tests
    run (pyproject.toml's pins) satisfies every bound; every package the engine, the service and the client need is
    there (torch and numpy come separately)."""
    import tomllib

    from packaging.requirements import Requirement

    from BrainDiffSegSlicer import install

    pins = {}
    for req in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]:
        name, version = req.split("==")
        pins[name.lower()] = version
    requirements = [Requirement(r) for r in install.requirements()]
    assert requirements and not any(r.name in ("torch", "numpy") for r in requirements)
    for req in requirements:
        assert all(spec.operator == ">=" for spec in req.specifier), f"{req}: lower bounds only"
        assert pins[req.name.lower()] in req.specifier, (str(req), pins[req.name.lower()])
    covered = {install.DISTRIBUTIONS.get(p, p) for p in install.ENGINE_PACKAGES} - {"torch", "numpy"}
    assert covered == {r.name for r in requirements}
    assert set(install.CLIENT_PACKAGES) <= set(install.ENGINE_PACKAGES)
    assert pins["torch"] in Requirement("torch" + install.TORCH_REQUIREMENT).specifier


def test_the_panel_needs_the_slicer_application():
    import BrainDiffSeg as M

    if M.SLICER_APPLICATION:
        pytest.skip("inside Slicer")
    with pytest.raises(RuntimeError, match="needs the 3D Slicer application"):
        M.BrainDiffSegWidget()


def test_every_parameter_the_panel_uses_is_a_module_parameter():
    """The names the panel (widget and model) reads and writes in the parameter node are parameters of
    `parameters.py` (with defaults), flags it reads are the panel's own switches, and every bound option widget
    stands for an option field."""
    pytest.importorskip("slicer")
    from BrainDiffSegLib.options import fields
    from BrainDiffSegSlicer import bindings, parameters

    text = WIDGET_FILES[0].read_text() + (REPO / "BrainDiffSeg" / "BrainDiffSegSlicer" / "panel.py").read_text()
    used = set(re.findall(r'(?:GetParameter|SetParameter)\("(\w+)"', text))
    flags = set(re.findall(r'parameters\.flag\(\w+, "(\w+)"\)', text))
    assert {"ComponentRoles", "InpaintSegments"} <= used and flags
    assert used | flags <= set(parameters.defaultParameters())
    assert flags <= set(parameters.PANEL_DEFAULTS)
    keys = {f.key for f in fields()}
    assert set(bindings.OPTION_WIDGETS.values()) <= keys
    assert {parameters.parameterName(k) for k in bindings.OPTION_WIDGETS.values()} <= set(parameters.defaultParameters())
