"""BrainDiffSegLib.transfer (the service's message format) and BrainDiffSegLib.jobs (requests -> responses): round
trips of real image types, the bounds that protect a service (declared sizes, decompressed size, header size), every
kind of malformed message refused with one sentence, incremental encoding and decoding, and that running a request
gives what the engine's own call gives, without touching process-global state."""
from __future__ import annotations

import json
import random
import struct
import zlib

import numpy as np
import pytest
import torch

from BrainDiffSegLib.errors import InputError
from BrainDiffSegLib.jobs import Workspace, run_request
from BrainDiffSegLib.options import preset, to_strings
from BrainDiffSegLib.propagation.propagate import propagate
from BrainDiffSegLib.protocol import simulate_annotation
from BrainDiffSegLib.transfer import (Decoder, Encoder, EngineRequest, FormatError, decode, digest_steps, encode,
                                      images_digest)


def raw_message(header: dict, payload: bytes = b"", magic: bytes = b"BDS1") -> bytes:
    head = json.dumps(header).encode()
    return zlib.compress(magic + struct.pack("<I", len(head)) + head + payload)


def test_round_trip_keeps_types_shapes_values_and_meta(tumour_case):
    images, label, _ = tumour_case()
    arrays = {"flair": images["flair"], "labels": label.astype(np.int16), "mask": label > 0,
              "u8": label, "f64": np.linspace(0, 1, 7), "empty": np.zeros((0, 3), np.float32),
              "scalar": np.array(3.5, np.float32), "fortran": np.asfortranarray(images["t1"])}
    meta = {"kind": "propagate", "options": {"seed": "3"}, "list": [1, 2], "text": "é"}
    got_meta, got = decode(encode(meta, arrays))
    assert got_meta == meta and list(got) == list(arrays)
    for name, a in arrays.items():
        assert got[name].dtype == a.dtype and got[name].shape == a.shape, name
        np.testing.assert_array_equal(got[name], a)


def test_big_endian_is_sent_little_endian_and_objects_are_refused():
    big = np.arange(10, dtype=">i2")
    _, got = decode(encode({}, {"x": big}))
    assert got["x"].dtype == np.dtype("<i2") and got["x"].tolist() == big.tolist()
    with pytest.raises(FormatError, match="type object"):
        encode({}, {"x": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(FormatError, match="cannot be sent"):
        encode({}, {"x": np.array(["a", "b"])})


def test_incremental_encoding_and_decoding_in_small_pieces(tumour_case):
    images, _, _ = tumour_case()
    encoder = Encoder({"n": 1}, images, chunk=1 << 14)
    decoder = Decoder(1 << 30)
    pieces = 0
    for chunk in encoder:
        for i in range(0, len(chunk), 997):  # odd piece sizes: header and arrays split anywhere
            decoder.feed(chunk[i:i + 997])
            pieces += 1
        assert 0.0 <= decoder.fraction <= 1.0
    assert pieces > 10 and encoder.done == encoder.size and decoder.complete and decoder.fraction == 1.0
    meta, got = decoder.finish()
    assert meta == {"n": 1} and all(np.array_equal(got[r], images[r]) for r in images)


@pytest.mark.parametrize("make, match", [
    (lambda: b"not zlib at all", "not a compressed BrainDiffSeg message"),
    (lambda: zlib.compress(b"XXXX" + b"\0" * 8), "does not start with the BrainDiffSeg format mark"),
    (lambda: zlib.compress(b"BDS1" + struct.pack("<I", 5) + b"{nope"), "not valid JSON"),
    (lambda: raw_message([1, 2]), "must be an object"),
    (lambda: raw_message({"arrays": [{"name": "x", "dtype": "|O", "shape": [1]}]}), "has type '\\|O'"),
    (lambda: raw_message({"arrays": [{"name": "x", "dtype": "<f4", "shape": [-1]}]}), "has shape"),
    (lambda: raw_message({"arrays": [{"name": "x", "dtype": "<f4", "shape": [1]}] * 2}, b"\0" * 8),
     "missing or repeated"),
    (lambda: raw_message({"arrays": [{"name": "x", "dtype": "<f4", "shape": [4]}]}, b"\0" * 8), "truncated"),
    (lambda: raw_message({"arrays": [{"name": "x", "dtype": "<f4", "shape": [1]}]}, b"\0" * 40), "more data"),
    (lambda: encode({}, {"x": np.zeros(4, np.float32)})[:-6], "truncated"),
    (lambda: encode({}, {"x": np.zeros(4, np.float32)}) + b"extra", "after its end"),
    (lambda: zlib.compress(b"BDS1" + struct.pack("<I", 1 << 30)), "at most"),
])
def test_malformed_messages_are_refused_with_one_sentence(make, match):
    with pytest.raises(FormatError, match=match) as info:
        decode(make(), max_bytes=1 << 20)
    assert isinstance(info.value, InputError) and str(info.value).count(".") >= 1


def test_declared_and_decompressed_sizes_are_bounded_before_allocation():
    # a header declaring 8 GB of arrays is refused before anything is allocated
    huge = raw_message({"arrays": [{"name": "x", "dtype": "<f8", "shape": [1 << 30]}]})
    with pytest.raises(FormatError, match="declares 8192 MB"):
        decode(huge, max_bytes=1 << 20)
    # a tiny body (a zip bomb) that inflates far beyond what its header declares stops at the declared size
    bomb = zlib.compress(b"BDS1" + struct.pack("<I", 2) + b"{}" + b"\0" * (64 << 20), 9)
    assert len(bomb) < 100_000
    with pytest.raises(FormatError, match="more data than its header declares"):
        decode(bomb, max_bytes=1 << 30)


def test_digest_sees_values_dtype_roles_and_steps_give_the_same_digest(tumour_case):
    images, _, _ = tumour_case()
    d = images_digest(images)
    steps = digest_steps(images, chunk=4096)
    n = 0
    while True:
        try:
            next(steps)
            n += 1
        except StopIteration as done:
            assert done.value == d
            break
    assert n > 10
    assert images_digest({**images, "t1": images["t1"].astype(np.float64)}) != d
    changed = {**images, "t1": images["t1"].copy()}
    changed["t1"][0, 0, 0] += 1
    assert images_digest(changed) != d


def test_a_request_gives_the_engines_result_and_leaves_global_state_alone(tumour_case):
    """run_request == propagate (same seeds), in any dtype the images come in; no global seed, flag or generator
    of torch, NumPy or Python changes (the engine service and the in-process Logic both rely on it)."""
    from BrainDiffSegLib.propagation.cache import VolumeCache

    images, label, _ = tumour_case()
    ann, _ = simulate_annotation(label, 2)
    options = preset("quick")
    torch.use_deterministic_algorithms(False)
    states = (torch.random.get_rng_state().clone(), np.random.get_state()[1].copy(), random.getstate())
    workspace = Workspace(max_volumes=2)
    as_int = {r: np.round(a).astype(np.int16) for r, a in images.items()}
    response = run_request(EngineRequest("propagate", {"options": to_strings(options)}, {"annotation": ann},
                                         volume={r: a.astype(np.float32) for r, a in as_int.items()}), workspace)
    again = run_request(EngineRequest("propagate", {"options": to_strings(options)}, {"annotation": ann},
                                      volume=as_int), workspace)
    assert torch.equal(states[0], torch.random.get_rng_state())
    assert np.array_equal(states[1], np.random.get_state()[1]) and states[2] == random.getstate()
    assert not torch.are_deterministic_algorithms_enabled()
    np.testing.assert_array_equal(response.arrays["labels"], again.arrays["labels"])  # int16 == float32 input
    # the engine's own call through a feature cache (features kept in float16), as the workspace runs it
    expected = propagate({r: a.astype(np.float32) for r, a in as_int.items()}, ann, options, features=VolumeCache())
    for name in ("labels", "entropy", "disagreement"):
        np.testing.assert_array_equal(response.arrays[name], getattr(expected, name))
    assert response.meta["annotated_slices"] == expected.annotated_slices
    assert response.meta["label_values"] == [0, 1, 2, 4] and response.meta["device"] == "cpu"
    # the suggestions ranked in the engine (not in the front end's process), as the ranking gives them
    from BrainDiffSegLib.propagation.suggest import next_slice
    from BrainDiffSegLib.results import PropagationResult

    ranked = response.meta["suggestions"]
    assert ranked["next_slice"] == next_slice(expected) and ranked["next_slice"] not in expected.annotated_slices
    assert [tuple(x) for x in ranked["least_certain"]] == expected.least_certain_slices(5) and ranked["least_certain"]
    assert PropagationResult.from_response(response).suggestions == ranked
    assert len(workspace) == 2  # two dtypes, two volumes... kept by digest
    small = Workspace(max_volumes=1)
    small.put(images)
    small.put(as_int)
    assert len(small) == 1 and images_digest(as_int) in small and images_digest(images) not in small


@pytest.mark.parametrize("request_, match", [
    (EngineRequest("segment-everything"), "Unknown job kind"),
    (EngineRequest("propagate", {"options": {}}, {}), "no 'annotation'"),
    (EngineRequest("propagate", {"options": {}, "volume": "abc"}, {"annotation": np.zeros((2, 2, 2))}),
     "is not loaded"),
    (EngineRequest("propagate", {"options": {"method": "magic"}}, {"annotation": np.zeros((2, 2, 2))},
                   volume={"t1": np.ones((2, 2, 2))}), "method: 'magic' is unknown"),
    (EngineRequest("inpaint", {"steps": 5}, {"image": np.zeros((4, 4, 4))}), "needs the arrays"),
    (EngineRequest("inpaint", {"steps": "five"}, {"image": np.zeros((4, 4, 4)), "mask": np.zeros((4, 4, 4))}),
     "'steps' of the inpaint request must be int"),
])
def test_bad_requests_are_input_errors(request_, match):
    with pytest.raises(InputError, match=match):
        run_request(request_, Workspace())
