"""The propagation flags of the `braindiffseg` commands, generated from the options dataclasses
(`BrainDiffSegLib.options.add_arguments`): every leaf field of PropagationOptions is reachable from the command line
(but the classifier seed, which --seed sets), the historical flags keep their names and meanings, given flags
override the preset (`--fast` of `web` is `--preset quick`), and bad values are usage errors (exit 2, a message)."""
from __future__ import annotations

import dataclasses
import sys
import types
import typing

import pytest

from BrainDiffSegCLI import build_parser, main
from BrainDiffSegLib import options as O

BASE = {"propagate": ["propagate", "--case", "C", "--out", "X.nii.gz"], "demo": ["demo"],
        "benchmark propagation": ["benchmark", "propagation", "--out", "B"], "web": ["web", "--case", "C"]}
# the flags of the command line before the options were generated, and the fields they set
HISTORICAL = {"--method": ("method",), "--checkpoint": ("checkpoint",), "--blocks": ("features", "blocks"),
              "--timesteps": ("features", "timesteps"), "--smoothing": ("features", "smoothing"),
              "--ensemble": ("classifier", "n_models"), "--device": ("device",), "--precision": ("precision",),
              "--batch-size": ("batch_size",), "--no-postprocess": ("postprocess",), "--seed": ("seed",)}


def _options(argv: list[str]) -> O.PropagationOptions:
    a = build_parser().parse_args(argv)
    if a.command == "web":
        from BrainDiffSegCLI.web import options

        return options(a)
    return O.options_from_arguments(a)


def _get(options, path):
    for name in path:
        options = getattr(options, name)
    return options


def _other_value(f: O.OptionField):
    """A valid value of field `f` that differs from the default preset's, and its command-line form."""
    kind, _ = O._base_and_optional(f.type)
    default = f.default
    if f.choices:
        value = next(c for c in f.choices if c != default)
    elif kind is bool:
        return (not default), []
    elif typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        value = (item(3),) if default != (item(3),) else (item(4),)
    elif kind is str:
        value = "/models/other" if f.key == "checkpoint" else "cpu"
    elif kind is int:
        value = default + 3
    else:
        value = default * 2 if default else 0.25
    return value, [O.format_value(value)]


@pytest.mark.parametrize("command", list(BASE))
def test_every_option_field_is_a_flag_but_the_classifier_seed(command):
    fields = O.fields()
    assert {f.key for f in fields if not f.cli} == {"classifier-seed"}
    default = _options(BASE[command])
    assert default == O.preset("default")
    for f in fields:
        if not f.cli:
            continue
        value, text = _other_value(f)
        flag = f"--{f.key}" if not (f.type is bool and f.default) else f"--no-{f.key}"
        got = _options(BASE[command] + [flag] + text)
        assert _get(got, f.path) == value, (command, flag, text)
        # nothing else changes (the seed also seeds the classifier)
        expected = O._with(O.preset("default"), f.path, value)
        if f.path == ("seed",):
            expected = O._with(expected, ("classifier", "seed"), value)
        assert got == expected, (command, flag)
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(BASE[command] + ["--classifier-seed", "3"])
    assert info.value.code == 2


def test_historical_flags_keep_their_names_and_meanings():
    parser = build_parser()
    for command in ("propagate", "demo", "web"):
        sub = parser._subparsers._group_actions[0].choices[command]
        flags = {s for action in sub._actions for s in action.option_strings}
        assert set(HISTORICAL) <= flags, (command, set(HISTORICAL) - flags)
    o = _options(BASE["propagate"] + [
        "--method", "raw", "--checkpoint", "/m", "--blocks", "0,2", "--timesteps", "25 250", "--smoothing", "1,2",
        "--ensemble", "3", "--device", "cpu", "--precision", "bf16", "--batch-size", "4", "--no-postprocess",
        "--seed", "7"])
    assert (o.method, o.checkpoint, o.device, o.precision, o.batch_size, o.postprocess, o.seed) == \
        ("raw", "/m", "cpu", "bf16", 4, False, 7)
    assert o.features == dataclasses.replace(O.FeatureSpec(), blocks=(0, 2), timesteps=(25, 250), smoothing=(1.0, 2.0))
    assert o.classifier == dataclasses.replace(O.ClassifierOptions(), n_models=3, seed=7)  # --seed seeds it too
    assert _options(BASE["propagate"] + ["--smoothing", ""]).features.smoothing == ()  # no smoothed intensities


def test_given_flags_override_the_preset():
    quick = O.preset("quick")
    assert _options(BASE["propagate"] + ["--preset", "quick"]) == quick
    o = _options(BASE["propagate"] + ["--preset", "quick", "--method", "diffusion", "--ensemble", "4"])
    assert o.method == "diffusion" and o.classifier.n_models == 4
    assert o.classifier == dataclasses.replace(quick.classifier, n_models=4)
    # the order of the flags does not matter
    assert _options(BASE["propagate"] + ["--ensemble", "4", "--method", "diffusion", "--preset", "quick"]) == o


def test_web_fast_is_the_quick_preset(monkeypatch, tmp_path):
    assert _options(BASE["web"] + ["--fast"]) == O.preset("quick")
    assert _options(BASE["web"] + ["--fast", "--ensemble", "1"]) == \
        O._with(O.preset("quick"), ("classifier", "n_models"), 1)
    # the web front end is imported only by the web command, and gets the final options
    seen = {}
    fake = types.ModuleType("BrainDiffSegWeb")
    fake.run = lambda args, options: seen.update(args=args, options=options) or 0
    monkeypatch.setitem(sys.modules, "BrainDiffSegWeb", fake)
    assert main(["web", "--case", str(tmp_path), "--fast", "--device", "cpu", "--port", "9999"]) == 0
    assert seen["options"] == O._with(O.preset("quick"), ("device",), "cpu")
    assert seen["args"].port == 9999 and seen["args"].case == str(tmp_path)


@pytest.mark.parametrize("flags, message", [
    (["--method", "magic"], "method: 'magic' is unknown; use one of diffusion, raw"),
    (["--precision", "fp8"], "use one of auto, fp32, bf16, fp16"),
    (["--ensemble", "0"], "ensemble: '0' must be at least 1"),
    (["--blocks", "1,x"], "blocks: '1,x' is not a valid value"),
    (["--batch-size", "many"], "batch-size: 'many' is not a valid value"),
    (["--preset", "fastest"], "invalid choice: 'fastest'"),
])
def test_bad_values_are_usage_errors_with_a_message(flags, message, capsys):
    for command in ("propagate", "benchmark propagation"):
        with pytest.raises(SystemExit) as info:
            main(BASE[command] + flags)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert message in err and "usage: braindiffseg" in err, err


def test_help_lists_the_generated_flags(capsys):
    with pytest.raises(SystemExit) as info:
        main(["propagate", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for f in O.fields():
        if f.cli:
            assert f"--{f.key}" in out or f"--no-{f.key}" in out, f.key
    assert "--preset" in out and "quick" in out
