"""The module's parameter node (a vtkMRMLScriptedModuleNode, saved with the scene) <-> PropagationOptions.

Every field of `BrainDiffSegLib.options.PropagationOptions` is one parameter, named after its command-line flag in
CamelCase ('method' -> 'Method', 'batch-size' -> 'BatchSize', 'ensemble' -> 'Ensemble', ...), stored as the
string `BrainDiffSegLib.options.to_strings` writes and read back with `from_strings` (the panel's widgets for them
are bound in `bindings`, their choices and bounds from the fields). AnnotationMode (the option `annotation_mode`)
also takes 'auto', the panel's default: the Logic picks complete slices or seeds from the painted segmentation
(`BrainDiffSegLogic.annotationModeFor`); `optionsFromParameters` leaves the option's default for it. The panel's own
parameters (not options): ComponentRoles, CreateUncertainty, ShowUncertainty, UpdateResult, and for healthy-tissue
inpainting InpaintSteps (DDIM steps) and InpaintSegments (the chosen segment ids, comma-separated; empty: the
visible ones). The panel's input nodes are node references (Input_<role>, MultiComponent, Segmentation, InpaintVolume,
InpaintSegmentation). Standard library only: works before torch is installed.
Slicer's `parameterNodeWrapper` is not used: it is not available under slicer-core.
"""
from __future__ import annotations

import re

from BrainDiffSegLib.constants import ROLES
from BrainDiffSegLib.errors import InputError
from BrainDiffSegLib.options import OptionField, fields, from_strings, one_seed, preset, to_strings

# panel parameter -> default (strings, as stored)
PANEL_DEFAULTS = {"ComponentRoles": ",".join(ROLES), "CreateUncertainty": "true", "ShowUncertainty": "false",
                  "UpdateResult": "true"}
INPAINT_DEFAULTS = {"InpaintSteps": "25", "InpaintSegments": ""}  # the panel's healthy-tissue inpainting
AUTO = "auto"  # AnnotationMode: the mode follows the painted segmentation (BrainDiffSegLogic.annotationModeFor)
CHOICE_DEFAULTS = {"AnnotationMode": AUTO}  # option parameters whose panel default is a choice of the panel's own


def parameterName(key: str) -> str:
    """The parameter of an option key: 'batch-size' -> 'BatchSize'."""
    return "".join(part[:1].upper() + part[1:] for part in key.split("-"))


def optionParameters() -> dict[str, OptionField]:
    """Parameter name -> the option field it stores."""
    return {parameterName(f.key): f for f in fields()}


def defaultParameters() -> dict[str, str]:
    """Parameter name -> default value (strings, as stored in the parameter node)."""
    values = to_strings(preset("default"))
    return {**{parameterName(key): value for key, value in values.items()}, **CHOICE_DEFAULTS, **PANEL_DEFAULTS,
            **INPAINT_DEFAULTS}


def setDefaultParameters(parameterNode, overwrite: bool = False) -> None:
    """Fill in the parameters that are not set yet (all of them with overwrite)."""
    wasModifying = parameterNode.StartModify()
    for name, value in defaultParameters().items():
        if overwrite or not parameterNode.GetParameter(name):
            parameterNode.SetParameter(name, value)
    parameterNode.EndModify(wasModifying)


def setParametersFromOptions(parameterNode, options) -> None:
    """Store every field of `options` in the parameter node."""
    wasModifying = parameterNode.StartModify()
    for key, value in to_strings(options).items():
        parameterNode.SetParameter(parameterName(key), value)
    parameterNode.EndModify(wasModifying)


def optionsFromParameters(parameterNode, base=None):
    """PropagationOptions from the parameter node: `base` (default: the default preset) with every non-empty
    option parameter applied, the classifier seeded by Seed (`one_seed`: the same result as the command line's
    --seed). Choices may be stored by value or by their label ('GPU'). InputError naming the parameter for a value
    that does not parse or lies outside the field's bounds."""
    options = base if base is not None else preset("default")
    for name, f in optionParameters().items():
        text = (parameterNode.GetParameter(name) or "").strip()
        if not text or f.key == "classifier-seed" or (f.key == "annotation-mode" and text.lower() == AUTO):
            continue  # not set: the default; the classifier's seed is Seed's; 'auto': the Logic picks the mode
        try:
            options = from_strings({f.key: text}, base=options)
        except InputError as exc:
            message = str(exc)
            if message.startswith(f"{f.key}:"):
                message = name + message[len(f.key):]
            raise InputError(message) from None
    return one_seed(options)


def annotationChoices() -> list[tuple[str, str]]:
    """The panel's Annotation choices, (value, label): Automatic, then the option's modes."""
    f = optionParameters()["AnnotationMode"]
    return [(AUTO, "Automatic")] + [(c, f.label(c)[:1].upper() + f.label(c)[1:]) for c in f.choices]


def annotationChoiceOf(text: str) -> str:
    """'auto', 'slices' or 'seeds' from a stored choice (its value or label, any case; empty: 'auto'); InputError
    naming AnnotationMode otherwise."""
    wanted = (text or AUTO).strip().lower()
    for value, label in annotationChoices():
        if wanted in (value, label.lower()):
            return value
    raise InputError(f"AnnotationMode: '{text}' is unknown; use one of "
                     f"{', '.join(value for value, _ in annotationChoices())}.")


def annotationChoice(parameterNode) -> str:
    """The stored Annotation choice ('auto', 'slices' or 'seeds')."""
    return annotationChoiceOf(parameterNode.GetParameter("AnnotationMode"))


def componentRoles(parameterNode) -> list[str] | None:
    """The sequence of each component of a multi-component input volume, or None for the default order."""
    roles = [r for r in re.split(r"[,\s]+", parameterNode.GetParameter("ComponentRoles")) if r]
    return roles or None


def inpaintSteps(parameterNode) -> int:
    """The DDIM steps of the panel's inpainting (InputError for a value that is not a whole number >= 1)."""
    text = parameterNode.GetParameter("InpaintSteps") or INPAINT_DEFAULTS["InpaintSteps"]
    try:
        steps = int(text)
    except ValueError:
        steps = 0
    if steps < 1:
        raise InputError(f"InpaintSteps: '{text}' is not a whole number >= 1.")
    return steps


def inpaintSegments(parameterNode) -> list[str] | None:
    """The segment ids chosen for inpainting, or None for the visible segments."""
    ids = [s for s in (parameterNode.GetParameter("InpaintSegments") or "").split(",") if s]
    return ids or None


def flag(parameterNode, name: str) -> bool:
    """A panel switch (CreateUncertainty, ShowUncertainty, UpdateResult)."""
    return parameterNode.GetParameter(name) == "true"
