"""The backbone U-Net: input assembly for any subset of sequences, checkpoints and their validation."""
from __future__ import annotations

import itertools
import json
from dataclasses import replace

import pytest
import torch

from BrainDiffSegLib.errors import CheckpointError
from BrainDiffSegLib.io import ROLES
from BrainDiffSegLib.model import (FORMAT, BackboneConfig, build_scheduler, build_unet, load_backbone, model_input,
                                   read_config, save_backbone)

PRESENCE = [p for n in range(1, 5) for p in itertools.combinations(range(4), n)]


@pytest.fixture(scope="module")
def tiny():
    return BackboneConfig(sample_size=32, block_out_channels=(8, 16), attention_levels=(1,), norm_num_groups=4,
                          attention_head_dim=8)


@pytest.fixture(scope="module")
def tiny_model(tiny):
    torch.manual_seed(0)
    return build_unet(tiny).eval()


@pytest.fixture
def checkpoint(tmp_path, tiny, tiny_model):
    tiny = replace(tiny, training={"steps": 3, "note": "unit test"})
    return save_backbone(tmp_path / "ckpt", tiny_model.state_dict(), tiny)


def _images(b=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((b, len(ROLES), size, size), generator=g) * 2 - 1


# ----------------------------------------------------------------------------------------------------- input

@pytest.mark.parametrize("present_idx", PRESENCE, ids=lambda p: "+".join(ROLES[i] for i in p))
def test_model_input_and_forward_any_subset(tiny, tiny_model, present_idx):
    images = _images()
    present = torch.zeros(len(ROLES), dtype=torch.bool)
    present[list(present_idx)] = True
    x = model_input(images, present)
    assert x.shape == (2, 2 * len(ROLES), 32, 32) and x.shape[1] == tiny.in_channels
    for i in range(len(ROLES)):
        if present[i]:
            assert torch.equal(x[:, i], images[:, i])
            assert torch.all(x[:, len(ROLES) + i] == 1)
        else:
            assert torch.all(x[:, i] == 0)
            assert torch.all(x[:, len(ROLES) + i] == 0)
    with torch.no_grad():
        out = tiny_model(x, torch.tensor([5, 900])).sample
    assert out.shape == (2, len(ROLES), 32, 32)
    assert torch.all(torch.isfinite(out))


def test_model_input_per_sample_presence():
    images = _images(b=3)
    present = torch.tensor([[1, 0, 0, 0], [0, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    x = model_input(images, present)
    for b in range(3):
        for r in range(4):
            if present[b, r]:
                assert torch.equal(x[b, r], images[b, r])
            else:
                assert torch.count_nonzero(x[b, r]) == 0
            assert torch.all(x[b, 4 + r] == float(present[b, r]))


def test_absent_channel_content_does_not_matter(tiny_model):
    """What sits in an absent sequence's channel never reaches the network."""
    images = _images()
    other = images.clone()
    other[:, 1] = 123.0
    present = torch.tensor([True, False, True, True])
    t = torch.tensor([10, 10])
    with torch.no_grad():
        a = tiny_model(model_input(images, present), t).sample
        b = tiny_model(model_input(other, present), t).sample
        c = tiny_model(model_input(other, torch.ones(4, dtype=torch.bool)), t).sample
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_unet_is_fully_convolutional(tiny_model):
    x = model_input(_images(b=1, size=16), torch.ones(4, dtype=torch.bool))
    with torch.no_grad():
        assert tiny_model(x, torch.tensor([1])).sample.shape == (1, 4, 16, 16)


def test_attention_levels_follow_config(tiny):
    m = build_unet(tiny)
    assert [type(b).__name__ for b in m.down_blocks] == ["DownBlock2D", "AttnDownBlock2D"]
    assert [type(b).__name__ for b in m.up_blocks] == ["AttnUpBlock2D", "UpBlock2D"]
    m0 = build_unet(replace(tiny, attention_levels=(0,)))
    assert [type(b).__name__ for b in m0.down_blocks] == ["AttnDownBlock2D", "DownBlock2D"]
    assert [type(b).__name__ for b in m0.up_blocks] == ["UpBlock2D", "AttnUpBlock2D"]


def test_scheduler_from_config(tiny):
    s = build_scheduler(tiny)
    assert s.config.num_train_timesteps == 1000 and s.config.beta_schedule == "squaredcos_cap_v2"
    ac = s.alphas_cumprod
    assert ac.shape == (1000,) and torch.all(ac[1:] < ac[:-1]) and 0 < ac[-1] < ac[0] < 1


def test_config_dict_round_trip(tiny):
    arch = tiny.arch()
    assert "training" not in arch and arch["block_out_channels"] == [8, 16] and arch["roles"] == list(ROLES)
    again = BackboneConfig.from_dict({**json.loads(json.dumps(arch)), "format": FORMAT, "unknown_key": 1})
    assert again == tiny and isinstance(again.block_out_channels, tuple)
    assert tiny.in_channels == 8


# ------------------------------------------------------------------------------------------------ checkpoints

def test_save_load_round_trip_identical_outputs(tmp_path, tiny, tiny_model, checkpoint):
    assert (checkpoint / "model.safetensors").is_file()
    saved = json.loads((checkpoint / "config.json").read_text())
    assert saved["format"] == FORMAT and saved["training"] == {"steps": 3, "note": "unit test"}
    model, cfg = load_backbone(checkpoint, expect=tiny)
    assert cfg.arch() == tiny.arch() and cfg.training["steps"] == 3
    assert not model.training  # ready for inference
    x = model_input(_images(), torch.tensor([True, False, True, True]))
    t = torch.tensor([3, 700])
    with torch.no_grad():
        assert torch.equal(model(x, t).sample, tiny_model(x, t).sample)
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), tiny_model.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    assert read_config(checkpoint) == cfg


def test_save_overwrites_checkpoint_and_leaves_no_temp(tmp_path, tiny, tiny_model, checkpoint):
    torch.manual_seed(1)
    other = build_unet(tiny)
    save_backbone(checkpoint, other.state_dict(), tiny)
    assert sorted(p.name for p in checkpoint.iterdir()) == ["config.json", "model.safetensors"]
    model, _ = load_backbone(checkpoint)
    assert torch.equal(model.conv_in.weight, other.conv_in.weight)
    assert not torch.equal(model.conv_in.weight, tiny_model.conv_in.weight)


def _raises(folder, *fragments, **kw):
    with pytest.raises(CheckpointError) as exc:
        load_backbone(folder, **kw)
    msg = str(exc.value)
    for f in fragments:
        assert f in msg, f"{f!r} not in {msg!r}"
    return msg


def test_missing_folder(tmp_path):
    _raises(tmp_path / "no_such_ckpt", "Checkpoint folder not found", str(tmp_path / "no_such_ckpt"))


def test_missing_config(checkpoint):
    (checkpoint / "config.json").unlink()
    _raises(checkpoint, str(checkpoint / "config.json"), "is missing")


def test_missing_weights(checkpoint):
    (checkpoint / "model.safetensors").unlink()
    _raises(checkpoint, str(checkpoint / "model.safetensors"), "is missing")


@pytest.mark.parametrize("text", ['{"format": "braindiffseg-backbone/1", ', "", "\xff\xfe garbage"])
def test_invalid_json(checkpoint, text):
    (checkpoint / "config.json").write_bytes(text.encode("latin-1"))
    _raises(checkpoint, str(checkpoint / "config.json"), "not valid JSON")


@pytest.mark.parametrize("text", ["[1, 2]", '"just a string"', "42", "null"])
def test_config_not_an_object(checkpoint, text):
    (checkpoint / "config.json").write_text(text)
    _raises(checkpoint, str(checkpoint / "config.json"), "JSON object")


@pytest.mark.parametrize("fmt", ["braindiffseg-backbone/2", None, "diffusers"])
def test_wrong_format(checkpoint, fmt):
    path = checkpoint / "config.json"
    d = json.loads(path.read_text())
    if fmt is None:
        d.pop("format")
    else:
        d["format"] = fmt
    path.write_text(json.dumps(d))
    _raises(checkpoint, str(path), "unknown checkpoint format", repr(fmt), FORMAT)


@pytest.mark.parametrize("content", [b"\x00garbage" * 50, b"", b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\": 1}"])
def test_corrupt_weights(checkpoint, content):
    (checkpoint / "model.safetensors").write_bytes(content)
    _raises(checkpoint, str(checkpoint / "model.safetensors"), "corrupt")


def test_truncated_weights(checkpoint):
    path = checkpoint / "model.safetensors"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    _raises(checkpoint, str(path), "corrupt")


@pytest.mark.parametrize("field, value", [
    ("block_out_channels", [8, 8]),  # same tensors, other shapes
    ("block_out_channels", [8, 16, 16]),  # extra level: missing tensors
    ("attention_levels", []),  # no attention: unexpected tensors
    ("roles", ["t1", "flair"]),  # other input channel count
])
def test_weights_not_matching_config(checkpoint, field, value):
    path = checkpoint / "config.json"
    d = json.loads(path.read_text())
    d[field] = value
    path.write_text(json.dumps(d))
    _raises(checkpoint, str(checkpoint / "model.safetensors"), "does not fit the architecture in config.json")


def test_damaged_weights_are_refused_with_one_sentence(checkpoint, tmp_path, repo_root):
    """Bytes overwritten inside the file (its header intact, as a damaged copy of the bundled backbone): refused on
    load, never a silent wrong result (issue 24 §1). The same on a copy of the bundled backbone."""
    import shutil

    for folder in (checkpoint, shutil.copytree(repo_root / "Resources" / "Models" / "backbone", tmp_path / "copy")):
        path = folder / "model.safetensors"
        raw = bytearray(path.read_bytes())
        middle = len(raw) // 2
        raw[middle:middle + min(2 << 20, len(raw) // 4)] = b"\xff" * min(2 << 20, len(raw) // 4)  # NaN floats
        path.write_bytes(bytes(raw))
        msg = _raises(folder, str(path), "is damaged", "tensors hold NaN or infinite values", "restore it")
        assert msg.count("\n") == 0


def test_shapes_not_matching_the_config_are_one_sentence(checkpoint):
    path = checkpoint / "config.json"
    d = json.loads(path.read_text())
    d["block_out_channels"] = [8, 8]
    path.write_text(json.dumps(d))
    msg = _raises(checkpoint, "tensors have other shapes", "in the weights", "belong to different models")
    assert "size mismatch" not in msg and msg.count("\n") == 0


@pytest.mark.parametrize("field, value", [("block_out_channels", [8, 10]), ("layers_per_block", "two")])
def test_config_that_cannot_build_a_model(checkpoint, field, value):
    path = checkpoint / "config.json"
    d = json.loads(path.read_text())
    d[field] = value
    path.write_text(json.dumps(d))
    _raises(checkpoint, str(path))


def test_config_field_of_wrong_type(checkpoint):
    # a known field with a value that does not fit the dataclass constructor
    path = checkpoint / "config.json"
    d = json.loads(path.read_text())
    d["block_out_channels"] = 8  # tuple(8) -> TypeError
    path.write_text(json.dumps(d))
    _raises(checkpoint, str(path), "invalid configuration")


def test_expect_mismatch_names_field(checkpoint, tiny):
    msg = _raises(checkpoint, "does not match the requested model", "block_out_channels",
                  "checkpoint [8, 16] vs expected [8, 32]", str(checkpoint),
                  expect=replace(tiny, block_out_channels=(8, 32)))
    assert "attention_levels" not in msg and "sample_size" not in msg
    msg = _raises(checkpoint, "sample_size: checkpoint 32 vs expected 64", "norm_num_groups",
                  expect=replace(tiny, sample_size=64, norm_num_groups=8))
    assert "block_out_channels" not in msg
    # provenance ('training') is not part of the match
    load_backbone(checkpoint, expect=replace(tiny, training={"steps": 99}))
