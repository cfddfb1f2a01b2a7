"""The panel's option widgets <-> the parameter node, generated from the option fields
(`BrainDiffSegLib.options.fields`): a combo box gets the field's choices (named by the field's labels, e.g. 'GPU'),
a spin box the field's bounds, a line edit the field's text form. A new option shown in the panel is one line in
`OPTION_WIDGETS` (and the widget in the .ui file).

No Qt import: the functions take the widgets themselves, and work with Slicer's PythonQt widgets (properties read as
attributes) and with PySide6's (properties read by calling them), which the tests use offscreen.
"""
from __future__ import annotations

from BrainDiffSegLib.options import OptionField, fields, format_value

from .parameters import parameterName

# widget name in Resources/UI/BrainDiffSeg.ui -> option key (its command-line flag)
OPTION_WIDGETS = {
    "deviceComboBox": "device",
    "methodComboBox": "method",
    "checkpointPathLineEdit": "checkpoint",
    "blocksLineEdit": "blocks",
    "timestepsLineEdit": "timesteps",
    "ensembleSpinBox": "ensemble",
    "batchSizeSpinBox": "batch-size",
    "seedSpinBox": "seed",
}
SPIN_MAX = 2**31 - 1  # a QSpinBox holds an int


def _get(widget, name: str):
    """A Qt property: an attribute in PythonQt, a getter method in PySide6."""
    value = getattr(widget, name)
    return value() if callable(value) else value


def optionField(key: str) -> OptionField:
    return next(f for f in fields() if f.key == key)


def boundFields() -> dict[str, OptionField]:
    """Widget name -> the option field it shows."""
    return {name: optionField(key) for name, key in OPTION_WIDGETS.items()}


def kind(name: str) -> str:
    for suffix in ("ComboBox", "SpinBox", "PathLineEdit", "LineEdit"):
        if name.endswith(suffix):
            return suffix
    raise ValueError(f"no binding for widget '{name}'")


def setUp(name: str, widget) -> None:
    """Give a widget its field's choices (combo box: label shown, value as item data) or bounds (spin box), and the
    field's help as tool tip where the .ui gives none."""
    f = optionField(OPTION_WIDGETS[name])
    k = kind(name)
    if k == "ComboBox":
        widget.clear()
        for choice in f.choices:
            widget.addItem(f.label(choice), choice)
    elif k == "SpinBox":
        widget.setMinimum(int(f.low))
        widget.setMaximum(int(min(f.high if f.high is not None else SPIN_MAX, SPIN_MAX)))
    if not _get(widget, "toolTip"):
        widget.setToolTip(f.help[:1].upper() + f.help[1:] + ".")


def toWidget(name: str, widget, text: str) -> None:
    """Show a parameter's stored text (empty: the field's default)."""
    f = optionField(OPTION_WIDGETS[name])
    text = text if text else format_value(f.default)
    k = kind(name)
    if k == "ComboBox":
        values = [widget.itemData(i) for i in range(_get(widget, "count"))]
        wanted = text.lower()
        by_label = {str(f.label(v)).lower(): v for v in values}
        index = values.index(wanted) if wanted in values else (
            values.index(by_label[wanted]) if wanted in by_label else 0)
        widget.setCurrentIndex(index)
    elif k == "SpinBox":
        try:
            widget.setValue(int(float(text)))
        except ValueError:
            widget.setValue(int(f.default))
    elif k == "PathLineEdit":
        widget.setCurrentPath(text)
    else:
        widget.setText(text)


def fromWidget(name: str, widget) -> str:
    """The text to store for what a widget shows."""
    k = kind(name)
    if k == "ComboBox":
        index = _get(widget, "currentIndex")
        return str(widget.itemData(max(index, 0)))
    if k == "SpinBox":
        return str(int(_get(widget, "value")))
    if k == "PathLineEdit":
        return str(_get(widget, "currentPath"))
    return str(_get(widget, "text")).strip()


def updateWidgets(parameterNode, widgets: dict) -> None:
    """Every bound widget (name -> widget) from the parameter node."""
    for name, widget in widgets.items():
        toWidget(name, widget, parameterNode.GetParameter(parameterName(OPTION_WIDGETS[name])))


def updateParameters(parameterNode, widgets: dict) -> None:
    """The parameter node from every bound widget (call inside the node's StartModify / EndModify)."""
    for name, widget in widgets.items():
        parameterNode.SetParameter(parameterName(OPTION_WIDGETS[name]), fromWidget(name, widget))
