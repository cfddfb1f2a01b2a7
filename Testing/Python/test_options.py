"""BrainDiffSegLib.options: presets and the string form generated from the dataclass fields."""
from __future__ import annotations

import argparse
import dataclasses

import pytest

from BrainDiffSegLib import options as O
from BrainDiffSegLib.errors import InputError


def _leaves(obj, prefix=()):
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, prefix + (f.name,))
        else:
            yield prefix + (f.name,), value


def test_fields_cover_every_leaf_with_unique_keys_and_help():
    paths = {path for path, _ in _leaves(O.PropagationOptions())}
    fields = O.fields()
    assert {f.path for f in fields} == paths
    assert len({f.key for f in fields}) == len(fields)
    assert all(f.help for f in fields)


def test_presets_are_fresh_copies_and_quick_is_small():
    a, b = O.preset("quick"), O.preset("quick")
    assert a == b and a is not b and a.classifier is not b.classifier
    assert a.method == "raw" and a.classifier.n_models == 2 and a.classifier.max_epochs == 6
    assert O.preset("default") == O.PropagationOptions()
    with pytest.raises(InputError, match="Unknown preset 'fastest'"):
        O.preset("fastest")


@pytest.mark.parametrize("name", list(O.PRESETS))
def test_string_round_trip_is_exact(name):
    options = O.preset(name)
    strings = O.to_strings(options)
    assert all(isinstance(v, str) for v in strings.values())
    assert O.from_strings(strings) == options


def test_every_field_changes_through_strings():
    base = O.preset("default")
    changed = dataclasses.replace(
        base, method="raw", checkpoint="/models/x", device="cpu", precision="bf16", batch_size=3, postprocess=False,
        seed=7, features=O.FeatureSpec(blocks=(0, 3), timesteps=(25, 250), noise_seed=4, intensities=False,
                                       smoothing=(0.5,)),
        classifier=O.ClassifierOptions(n_models=3, hidden=(64,), max_epochs=9, patience=1, batch_size=512, lr=0.01,
                                       weight_decay=0.0, val_fraction=0.2, max_pixels=1000, seed=5))
    strings = O.to_strings(changed)
    assert strings["blocks"] == "0,3" and strings["postprocess"] == "false" and strings["ensemble"] == "3"
    assert O.from_strings(strings) == changed
    # only given keys change; others keep the base's values
    assert O.from_strings({"blocks": "2"}).features == dataclasses.replace(base.features, blocks=(2,))
    assert O.from_strings({"checkpoint": ""}).checkpoint is None


@pytest.mark.parametrize("key, value, message", [
    ("blocks", "1,x", "blocks: '1,x' is not a valid value"),
    ("blocks", "", "blocks"),
    ("ensemble", "0", "ensemble: '0' must be at least 1"),
    ("hidden", "32,0", "hidden: '32,0': every value must be at least 1"),
    ("noise-seed", "-1", "noise-seed: '-1' must be at least 0"),
    ("method", "magic", "method: 'magic' is unknown; use one of diffusion, raw"),
    ("postprocess", "maybe", "postprocess"),
    ("precision", "fp8", "use one of auto, fp32, bf16, fp16"),
])
def test_bad_strings_name_the_key(key, value, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        O.from_strings({key: value})


def test_arguments_apply_only_given_flags_over_the_preset():
    parser = argparse.ArgumentParser()
    O.add_arguments(parser)
    quick = O.options_from_arguments(parser.parse_args(["--preset", "quick", "--ensemble", "4", "--no-postprocess"]))
    assert quick.method == "raw" and quick.classifier.n_models == 4 and quick.postprocess is False
    assert quick.classifier.hidden == O.preset("quick").classifier.hidden
    seeded = O.options_from_arguments(parser.parse_args(["--seed", "3", "--smoothing", "1,2"]))
    assert seeded.seed == 3 and seeded.classifier.seed == 3 and seeded.features.smoothing == (1.0, 2.0)
    assert O.options_from_arguments(parser.parse_args([])) == O.preset("default")
    with pytest.raises(SystemExit):
        parser.parse_args(["--method", "magic"])
