"""The options of a propagation, in one place: the dataclasses, the named presets, and - generated from the fields -
the command-line flags and the string form stored in Slicer's parameter node.

Standard library only (no torch): the Slicer module reads and writes options before the engine is installed.

Every field carries its help text (and optionally its flag name and choices) in `field(metadata=...)`. From that:
- `add_arguments(parser)` adds one flag per field (nested fields flattened: `--blocks`, `--ensemble`, ...);
  `options_from_arguments(namespace)` starts from the chosen `--preset` and applies only the flags that were given.
- `to_strings(options)` / `from_strings(mapping)` convert to and from `{key: str}` with the flag names (without the
  dashes) as keys, e.g. {"method": "diffusion", "blocks": "1,2", "ensemble": "5"}; bad values raise InputError.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Iterator

from .constants import BACKGROUND_LABEL
from .errors import InputError


def _opt(default: Any = dataclasses.MISSING, help: str = "", *, flag: str | None = None,
         choices: tuple | None = None, cli: bool = True, low: float = 0, high: float | None = None,
         empty: bool = False, labels: dict | None = None, pattern: str | None = None,
         factory: Any = dataclasses.MISSING):
    """A dataclass field with its command-line / parameter-node / panel description (`low`, `high`: smallest and
    largest number allowed; `empty`: a tuple that may be empty, written ''; `labels`: how a front end names each
    choice; `pattern`: other values accepted besides the choices, a regular expression)."""
    meta = {"help": help, "flag": flag, "choices": choices, "cli": cli, "low": low, "high": high, "empty": empty,
            "labels": labels or {}, "pattern": pattern}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class FeatureSpec:
    """Which activations make a pixel's feature vector."""

    # Defaults: the best diffusion configuration of the feature-selection experiment on the tuning cases
    # (docs/results/features: `braindiffseg benchmark features --max-cases 4`).
    blocks: tuple[int, ...] = _opt((1, 2), "decoder blocks (indices into the U-Net's up blocks), e.g. '1,2'")
    timesteps: tuple[int, ...] = _opt((100,), "noise levels, e.g. '100' or '25,250'")
    noise_seed: int = _opt(0, "seed of the fixed noise added at each noise level")
    intensities: bool = _opt(True, "append the normalised intensities of each present sequence")
    smoothing: tuple[float, ...] = _opt((1.0, 2.0, 4.0), "Gaussian sigmas (pixels) of smoothed-intensity features, "
                                        "e.g. '1,2,4' ('' for none)", empty=True)

    def as_dict(self) -> dict:
        return {"blocks": list(self.blocks), "timesteps": list(self.timesteps), "noise_seed": self.noise_seed,
                "intensities": self.intensities, "smoothing": list(self.smoothing)}


@dataclass
class ClassifierOptions:
    """The MLP ensemble and its training."""

    n_models: int = _opt(5, "number of MLPs in the ensemble", flag="ensemble", low=1, high=50)
    # results section 14: (64, 32) measured the same Dice as (128, 32) on the tuning cases, a quarter less time
    hidden: tuple[int, ...] = _opt((64, 32), "hidden layer widths of each MLP, e.g. '128,32'", low=1)
    max_epochs: int = _opt(12, "training epochs at most (early stopping on a validation split)", low=1)
    patience: int = _opt(2, "epochs without improvement before stopping")
    # upper bound; small training sets use smaller batches (at least ~40 steps an epoch)
    batch_size: int = _opt(2048, "pixels per classifier training step (upper bound)", flag="classifier-batch-size",
                           low=1)
    lr: float = _opt(1e-3, "classifier learning rate", flag="classifier-lr")
    weight_decay: float = _opt(1e-4, "classifier weight decay")
    val_fraction: float = _opt(0.1, "fraction of the training pixels held out for early stopping")
    max_pixels: int = _opt(60000, "training pixels per MLP (a class-stratified random subset)", low=1)
    # docs/results section 8: bf16 halves the classifier's time on CPUs with native bf16 (AVX512-BF16 / AMX)
    precision: str = _opt("auto", "precision of the classifier's matrix products: auto (bf16 where the CPU or GPU "
                          "computes it natively, else fp32), fp32 or bf16", flag="classifier-precision",
                          choices=("auto", "fp32", "bf16"))
    seed: int = _opt(0, "classifier seed (the command line's --seed sets it)", flag="classifier-seed", cli=False)
    # issue 25: an update's time was mostly the classifier's training. 4 against 0 and 2 on the tuning cases (results
    # section 14, docs/results/speed/warm_start_tuning): training 5.5 -> 1.6 s an update, no Dice interval below zero;
    # then 3 against 4 and 0 (sixth stop, docs/results/speed/warm3_tuning): training 1.08 -> 0.80 s a BraTS update,
    # no interval below zero against either; 0 makes an update equal a from-scratch run, voxel for voxel
    warm_epochs: int = _opt(3, "an update on a cached volume (complete slices) starts the ensemble from the "
                            "previous run's members and trains at most this many epochs (0: from scratch, the same "
                            "result as a first run)", low=0)


@dataclass
class PropagationOptions:
    """One propagation: features, classifier, device and post-processing."""

    # issue 23: what the annotation's voxels mean (BrainDiffSegLib.propagation.annotation)
    annotation_mode: str = _opt("slices", "slices: complete axial slices (every unpainted voxel of a painted slice is "
                                "background); seeds: strokes anywhere (0 unknown, --background-label background)",
                                choices=("slices", "seeds"),
                                labels={"slices": "complete slices", "seeds": "seeds (strokes)"})
    background_label: int = _opt(BACKGROUND_LABEL, "seeds mode: the annotation value that means background (the "
                                 "Background segment)", low=1, high=2**15 - 1)
    method: str = _opt("diffusion", "diffusion: backbone features + intensities; raw: intensities + filters only",
                       choices=("diffusion", "raw"),
                       labels={"diffusion": "diffusion model", "raw": "intensities only"})
    checkpoint: str | None = _opt(None, "backbone folder (default: the bundled model or $BRAINDIFFSEG_MODEL)")
    features: FeatureSpec = _opt(help="features", factory=FeatureSpec)
    classifier: ClassifierOptions = _opt(help="classifier", factory=ClassifierOptions)
    device: str = _opt("auto", "auto (the GPU when torch sees one), cuda (or cuda:N) or cpu", choices=("auto", "cuda", "cpu"),
                       labels={"auto": "auto", "cuda": "GPU", "cpu": "CPU"}, pattern=r"cuda:\d+")
    # results section 14: bf16 where native measured the same Dice on the tuning cases, 2.8x faster features
    precision: str = _opt("auto", "precision of the backbone's forward pass: auto (bf16 where the CPU or GPU computes "
                          "it natively, else fp32), fp32, bf16 or fp16", choices=("auto", "fp32", "bf16", "fp16"))
    batch_size: int = _opt(16, "slices per forward pass", low=1, high=1024)
    postprocess: bool = _opt(True, "keep only tumour connected in 3D to the annotated tumour")
    # docs/results section 11: the hybrid, a second ensemble on the intensity features alone, averaged in
    intensity_weight: float = _opt(0.5, "diffusion method: weight in the class probabilities of a second ensemble "
                                   "trained on the intensity features alone (0: none; 0.5: an even mix)")
    # docs/results/refine: 3D refinement of the class probabilities (BrainDiffSegLib.propagation.refine)
    smooth_xy: float = _opt(0.0, "Gaussian smoothing of the class probabilities in plane (voxels; 0: none)")
    smooth_z: float = _opt(0.0, "Gaussian smoothing of the class probabilities across slices (voxels; 0: none)")
    decision: str = _opt("argmax", "labels from the probabilities: argmax, or regions (BraTS nesting: WT, then TC "
                         "within it, then ET within TC)", choices=("argmax", "regions"))
    # results section 15: with strokes the watershed's background (the Background drawn around the tumour of a slice)
    # floods the tumour of the neighbouring slices; the classifier's confident core as more tumour markers, chosen
    # on the tuning cases (scripts/seeds_gate_variants.py), is what auto runs for strokes
    gate: str = _opt("auto", "keep predicted tumour only inside: none; watershed (the tumour side of a watershed "
                     "seeded by the annotation on the FLAIR gradient); watershed-core (the same, with the "
                     "classifier's confident tumour connected to the tumour seeds as more tumour markers); auto "
                     "(watershed when every slice the annotation touches is complete - always in the complete-slice "
                     "mode - else watershed-core)",
                     choices=("auto", "none", "watershed", "watershed-core"))
    gate_margin: float = _opt(2.0, "voxels around the watershed's tumour where predicted tumour may stay")
    # results section 15: with strokes the core spilled into the edema; its border redrawn on the T1ce gradient
    # gained TC on the tuning cases with 2 voxels (docs/results/seeds/tuning_core_band.md) but lost ET at 3 axial
    # slices of strokes on the test split (-0.041 [-0.086, -0.012]): an option, off by default
    core_band: int = _opt(0, "BraTS labels: redraw the border between the tumour core and the edema on the T1ce "
                          "gradient within this many voxels of it (0: off)", low=0, high=10)
    # results section 14: 2 makes the gate 4x faster (1.3 -> 0.4 s on the tuning cases) but lost BraTS ET on the
    # tuning cases (-0.003, interval below zero) with the other new defaults: 1 stays the default
    gate_scale: int = _opt(1, "in-plane subsampling of the gate's watershed (1: every voxel; 2: every other voxel "
                           "in plane, about 4x faster)", low=1, high=8)
    # docs/results section 8: the coarse-to-fine prediction, and the exact one (0) it is measured against
    roi_threshold: float = _opt(0.1, "classify native pixels only near coarse cells whose tumour probability "
                                "reaches this (or whose ensemble members disagree); 0 classifies every head pixel "
                                "natively (exact, slower)")
    roi_margin: int = _opt(1, "coarse cells added around those cells (a cell is 2 model-grid pixels)")
    seed: int = _opt(0, "seed of everything random (the classifier's seed too)", high=2**31 - 1)


# ---------------------------------------------------------------------------------------------------- presets

PRESETS = {
    "default": "diffusion features and the full classifier ensemble (the product's default)",
    "quick": "quick preview: intensity features ('raw') and 2 small MLPs (32-16 units, at most 6 epochs); seconds "
             "instead of minutes on a CPU, less accurate (also what the tests use)",
}


def preset(name: str = "default") -> PropagationOptions:
    """A fresh copy of a named preset (see PRESETS)."""
    if name == "default":
        return PropagationOptions()
    if name == "quick":
        return PropagationOptions(method="raw", classifier=ClassifierOptions(n_models=2, max_epochs=6,
                                                                             hidden=(32, 16), batch_size=1024))
    raise InputError(f"Unknown preset '{name}'; use one of {', '.join(PRESETS)}.")


# ---------------------------------------------------------------------------------------------------- the fields

@dataclass(frozen=True)
class OptionField:
    """One leaf field of PropagationOptions: its path (e.g. ('features', 'blocks')), key, type and description."""

    path: tuple[str, ...]
    key: str  # flag name without the dashes, also the parameter-node key
    type: Any
    default: Any
    help: str
    choices: tuple | None
    cli: bool
    low: float = 0
    empty: bool = False  # a tuple that may be empty ('')
    high: float | None = None
    labels: dict = dataclasses.field(default_factory=dict)  # choice -> how a front end names it
    pattern: str | None = None  # values accepted besides the choices

    def label(self, value) -> str:
        return self.labels.get(value, str(value))


def _leaf_fields(cls=PropagationOptions, prefix: tuple[str, ...] = ()) -> Iterator[OptionField]:
    hints = typing.get_type_hints(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            yield from _leaf_fields(kind, prefix + (f.name,))
            continue
        meta = f.metadata
        yield OptionField(prefix + (f.name,), meta.get("flag") or f.name.replace("_", "-"), kind,
                          getattr(defaults, f.name), meta.get("help", ""), meta.get("choices"), meta.get("cli", True),
                          meta.get("low", 0), meta.get("empty", False), meta.get("high"), dict(meta.get("labels", {})),
                          meta.get("pattern"))


def fields() -> list[OptionField]:
    """The leaf fields of PropagationOptions; keys are unique (checked)."""
    out = list(_leaf_fields())
    keys = [f.key for f in out]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise AssertionError(f"option keys must be unique; give these a flag name: {dup}")
    return out


def _get(options, path):
    for name in path:
        options = getattr(options, name)
    return options


def _with(options, path, value):
    if len(path) == 1:
        return dataclasses.replace(options, **{path[0]: value})
    inner = getattr(options, path[0])
    return dataclasses.replace(options, **{path[0]: _with(inner, path[1:], value)})


def _base_and_optional(kind) -> tuple[Any, bool]:
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, getattr(__import__("types"), "UnionType", typing.Union)) \
            and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return kind, False


def format_value(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(format_value(v) for v in value)
    return str(value)


def parse_value(f: OptionField, text: str):
    """The value of field `f` from its string form; InputError naming the key for bad values."""
    kind, optional = _base_and_optional(f.type)
    text = str(text).strip()
    example = format_value(f.default) or "..."
    try:
        if optional and text == "":
            return None
        if typing.get_origin(kind) is tuple:
            item = typing.get_args(kind)[0]
            parts = [p for p in text.replace(",", " ").split() if p]
            if not parts and not f.empty:
                raise ValueError("empty list")
            value = tuple(item(p) for p in parts)
        elif kind is bool:
            low = text.lower()
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise ValueError(text)
        else:
            value = kind(text)
    except (TypeError, ValueError):
        raise InputError(f"{f.key}: '{text}' is not a valid value (e.g. '{example}'): {f.help}.") from None
    if f.choices and value not in f.choices:
        by_label = {str(label).lower(): choice for choice, label in f.labels.items()}
        lowered = str(value).lower()
        if lowered in f.choices or lowered in by_label:
            value = lowered if lowered in f.choices else by_label[lowered]
        elif not (f.pattern and re.fullmatch(f.pattern, str(value))):
            raise InputError(f"{f.key}: '{text}' is unknown; use one of {', '.join(map(str, f.choices))}.")
    if isinstance(value, tuple) and any(v < f.low for v in value):
        raise InputError(f"{f.key}: '{text}': every value must be at least {f.low:g}.")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < f.low:
            raise InputError(f"{f.key}: '{text}' must be at least {f.low:g}.")
        if f.high is not None and value > f.high:
            raise InputError(f"{f.key}: '{text}' must be at most {f.high:g}.")
    return value


def to_strings(options: PropagationOptions) -> dict[str, str]:
    """{key: string} for every field (the parameter node's form)."""
    return {f.key: format_value(_get(options, f.path)) for f in fields()}


def from_strings(values: dict[str, str], base: PropagationOptions | None = None) -> PropagationOptions:
    """`base` (default: the default preset) with the given string values applied; unknown keys are ignored, bad
    values raise InputError."""
    options = base if base is not None else preset("default")
    for f in fields():
        if f.key in values and values[f.key] is not None:
            options = _with(options, f.path, parse_value(f, values[f.key]))
    return options


# ---------------------------------------------------------------------------------------------------- command line

def add_arguments(parser: argparse.ArgumentParser, title: str = "propagation options") -> None:
    """--preset plus one flag per field. Only given flags are applied over the preset (see options_from_arguments)."""
    g = parser.add_argument_group(title)
    g.add_argument("--preset", choices=tuple(PRESETS), default="default",
                   help="; ".join(f"{k}: {v}" for k, v in PRESETS.items()) + ". Flags below override it.")
    defaults = preset("default")
    for f in fields():
        if not f.cli:
            continue
        kind, _ = _base_and_optional(f.type)
        default = _get(defaults, f.path)
        shown = format_value(default)
        help_text = (f"{f.help} (default: {shown})" if shown else f.help).replace("%", "%%")
        if kind is bool:
            if default:
                g.add_argument(f"--no-{f.key}", dest=f.key, action="store_false", default=argparse.SUPPRESS,
                               help=f"turn off: {f.help}".replace("%", "%%"))
            else:
                g.add_argument(f"--{f.key}", dest=f.key, action="store_true", default=argparse.SUPPRESS,
                               help=help_text)
        else:
            metavar = "{" + ",".join(map(str, f.choices)) + "}" if f.choices else f.key.upper().replace("-", "_")
            g.add_argument(f"--{f.key}", dest=f.key, type=lambda text, f=f: _parse_flag(f, text),
                           default=argparse.SUPPRESS, metavar=metavar, help=help_text)


def _parse_flag(f: OptionField, text: str):
    try:
        return parse_value(f, text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def one_seed(options: PropagationOptions) -> PropagationOptions:
    """The options with the classifier seeded by `seed`: what every front end runs (the command line, the Slicer
    panel, the browser annotator), so one seed means one result everywhere. (The benchmarks vary the classifier's
    seed alone.)"""
    return _with(options, ("classifier", "seed"), options.seed)


def options_from_arguments(namespace: argparse.Namespace) -> PropagationOptions:
    """The options a parsed command line asks for: its --preset with the given flags applied. --seed also seeds the
    classifier (`one_seed`)."""
    options = preset(getattr(namespace, "preset", "default"))
    given = vars(namespace)
    for f in fields():
        if f.cli and f.key in given:
            options = _with(options, f.path, given[f.key])
    return one_seed(options)
