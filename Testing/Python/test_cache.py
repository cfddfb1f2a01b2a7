"""BrainDiffSegLib.propagation.cache: re-propagation of one volume reuses its preparation and backbone activations, gives the
result of a from-scratch run, and recomputes when the images or the features change. On a crop of a real case with
the bundled backbone."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from BrainDiffSegLib.propagation import cache as C
from BrainDiffSegLib.propagation.features import FeatureExtractor
from BrainDiffSegLib.options import ClassifierOptions, preset
from BrainDiffSegLib.propagation.propagate import propagate
from BrainDiffSegLib.protocol import protocol_slices, region_dice
from test_propagate import _reduced_real_case

OPTIONS = replace(preset("quick"), method="diffusion", device="cpu", batch_size=8)
# updates from scratch: an update equals a first run (the default warm start is tested on its own, below)
SCRATCH = replace(OPTIONS, classifier=replace(OPTIONS.classifier, warm_epochs=0))


@pytest.fixture(scope="module")
def real(data_root):
    images, label = _reduced_real_case(data_root)
    return images, label


@pytest.fixture
def count_forward(monkeypatch):
    """Counts the slices that go through the backbone."""
    calls = {"slices": 0}
    original = FeatureExtractor._activations

    def counting(self, zs, x0):
        calls["slices"] += len(zs)
        return original(self, zs, x0)

    monkeypatch.setattr(FeatureExtractor, "_activations", counting)
    return calls


def _annotation(label, zs):
    ann = np.zeros_like(label)
    ann[..., zs] = label[..., zs]
    return ann


def test_second_run_reuses_everything_and_equals_a_from_scratch_run(real, count_forward):
    images, label = real
    zs1 = protocol_slices(label, 1)
    zs2 = sorted(set(zs1) | set(protocol_slices(label, 3)))
    cache = C.VolumeCache()
    first = propagate(images, _annotation(label, zs1), SCRATCH, features=cache)
    head_slices = int(np.count_nonzero(cache.volume(images).foreground.reshape(-1, label.shape[-1]).any(0)))
    # each slice the run needed (those the gate lets tumour reach, in their batches) through the backbone once
    assert count_forward["slices"] == cache.describe()["slices"] <= head_slices and cache.nbytes > 0
    update = propagate(images, _annotation(label, zs2), SCRATCH, features=cache)
    assert count_forward["slices"] == cache.describe()["slices"]  # no slice of the cache went through it again
    assert update.annotated_slices == zs2 and first.annotated_slices == zs1
    fresh = propagate(images, _annotation(label, zs2), SCRATCH, features=C.VolumeCache())
    assert np.array_equal(update.labels, fresh.labels)
    assert np.array_equal(update.entropy, fresh.entropy)
    # the cached features are the uncached ones to float16 rounding: the results agree
    plain = propagate(images, _annotation(label, zs2), SCRATCH)
    assert np.mean(update.labels != plain.labels) < 0.002
    d = region_dice(update.labels, label, zs2)
    assert d["WT"] > 0.85, d


def test_changed_images_or_features_invalidate(real, count_forward):
    images, label = real
    ann = _annotation(label, protocol_slices(label, 2))
    cache = C.VolumeCache()
    propagate(images, ann, OPTIONS, features=cache)
    n = count_forward["slices"]
    other = {r: v.copy() for r, v in images.items()}
    other["flair"][0, 0, 0] += 1.0  # one voxel differs: another volume
    propagate(other, ann, OPTIONS, features=cache)
    assert count_forward["slices"] == 2 * n and cache.misses == 2
    blocks = replace(OPTIONS, features=replace(OPTIONS.features, blocks=(1,)))
    propagate(other, ann, blocks, features=cache)
    assert count_forward["slices"] == 3 * n
    assert cache.describe()["slices"] == n  # only the current features are kept
    raw = replace(OPTIONS, method="raw")
    propagate(other, ann, raw, features=cache)
    assert count_forward["slices"] == 3 * n  # intensity features need no backbone


def test_memory_bound_is_respected_and_results_stay_right(real):
    images, label = real
    ann = _annotation(label, protocol_slices(label, 2))
    unbounded = propagate(images, ann, OPTIONS, features=C.VolumeCache())
    small = C.VolumeCache(max_bytes=10 * 1024 ** 2)
    bounded = propagate(images, ann, OPTIONS, features=small)
    assert small.nbytes <= small.max_bytes and 0 < small.describe()["slices"]
    assert np.array_equal(bounded.labels, unbounded.labels)


def test_extractor_belongs_to_the_cached_volume(real):
    images, _ = real
    cache = C.VolumeCache()
    with pytest.raises(ValueError, match="VolumeCache.volume"):
        cache.extractor(C.normalize_volume(images), OPTIONS, torch.device("cpu"))


def test_kept_float16_slices_are_stacked_as_float32_unchanged():
    """`_stacked_float32` (the cache's decoder activations into a prediction batch) gives exactly
    `torch.stack(slices).float()`, whatever the values (normal, subnormal, infinite, the extremes of float16), and a
    new tensor: the kept slices are not changed."""
    gen = torch.Generator().manual_seed(0)
    slices = [(torch.randn(3, 5, 4, generator=gen) * 10 ** k).half() for k in (-6, 0, 4)]
    slices[1][0, 0, :4] = torch.tensor([float("inf"), -65504.0, 6e-8, 0.0]).half()
    kept = [s.clone() for s in slices]
    out = C._stacked_float32(slices, torch.device("cpu"))
    assert out.dtype == torch.float32 and out.shape == (3, 3, 5, 4)
    assert torch.equal(out, torch.stack(slices).float())
    assert all(torch.equal(a, b) for a, b in zip(slices, kept))


def test_images_digest_sees_values_dtype_and_roles():
    a = {"t1": np.zeros((4, 4, 2), np.float32)}
    assert C.images_digest(a) == C.images_digest({"t1": np.zeros((4, 4, 2), np.float32)})
    assert C.images_digest(a) != C.images_digest({"t2": a["t1"]})
    assert C.images_digest(a) != C.images_digest({"t1": a["t1"].astype(np.float64)})
    b = {"t1": a["t1"].copy()}
    b["t1"][1, 2, 1] = 1
    assert C.images_digest(a) != C.images_digest(b)


@pytest.mark.parametrize("warm", ["0", "default"])
def test_benchmark_update_command(tmp_path, tiny_checkpoint, warm):
    """`braindiffseg benchmark update` on a synthetic case with a tiny backbone: a first run, the updates, the
    run without a cache and the fresh-cache check, as JSON and Markdown. From scratch (`--warm-epochs 0`) the last
    update equals a fresh run; warm-started (the default) it is reported how far it is from one."""
    import json

    from BrainDiffSegCLI import main
    from conftest import write_tumour_case

    folder, _, _ = write_tumour_case(tmp_path / "case")
    out = tmp_path / "update"
    assert main(["benchmark", "update", "--case", str(folder), "--out", str(out), "--preset", "quick",
                 "--method", "diffusion", "--checkpoint", str(tiny_checkpoint), "--blocks", "1,2",
                 "--device", "cpu"] + ([] if warm == "default" else ["--warm-epochs", warm])) == 0
    result = json.loads((out / "update.json").read_text())
    runs = result["runs"]  # the k = 3 protocol slices not yet painted, one per update
    assert len(runs) >= 3 and [r["run"] for r in runs] == ["first"] + ["update"] * (len(runs) - 1)
    assert [len(r["annotated"]) for r in runs] == list(range(1, len(runs) + 1))
    if warm == "0":
        assert result["warm_epochs"] == 0 and result["update_equals_fresh_cache"] is True
        assert result["update_voxels_differing_from_fresh"] == 0
    else:
        assert result["warm_epochs"] == ClassifierOptions().warm_epochs > 0
        assert 0 <= result["update_voxels_differing_from_fresh"] < 0.01
        assert "warm-start" in (out / "update.md").read_text()
    assert result["runs"][-1]["cache_gb"] > 0 and result["runs"][-1]["dice"]["WT"] > 0.5
    # ITK Grow from seeds timed in the same run on the first and the last annotation, each run's ratio to it
    g1, g3 = result["growcut"]
    assert g1["annotated"] == runs[0]["annotated"] and g3["annotated"] == runs[-1]["annotated"]
    assert g3["seconds"] > 0 and g3["dice"]["WT"] > 0.3 and result["load"] == 0
    assert runs[-1]["ratio_to_growcut"] == pytest.approx(runs[-1]["seconds"] / g3["seconds"], abs=0.01)
    text = (out / "update.md").read_text()
    assert "fresh cache" in text and "Ratio ours / Grow from seeds" in text


def test_benchmark_update_without_growcut_after_a_warm_up(tmp_path, tiny_checkpoint, monkeypatch):
    """`--no-growcut --warm-up` (the GPU machine's run, scripts/gpu_propagation.sh): ITK is never called, so no
    ratios; an untimed propagation runs first and its seconds are reported; the timed runs are those of a plain
    run (the same labels: the warm-up has a cache of its own)."""
    import json

    import BrainDiffSegBench.update as update
    from BrainDiffSegCLI import main
    from conftest import write_tumour_case

    def no_itk(*args, **kwargs):
        raise AssertionError("Grow from seeds was run")

    folder, _, _ = write_tumour_case(tmp_path / "case")
    common = ["benchmark", "update", "--case", str(folder), "--preset", "quick", "--method", "diffusion",
              "--checkpoint", str(tiny_checkpoint), "--blocks", "1,2", "--device", "cpu"]
    with monkeypatch.context() as m:
        m.setattr(update, "timed_growcut", no_itk)
        assert main(common + ["--out", str(tmp_path / "a"), "--no-growcut", "--warm-up"]) == 0
    result = json.loads((tmp_path / "a" / "update.json").read_text())
    assert result["growcut"] == [] and result["warm_up_seconds"] > 0
    assert all("ratio_to_growcut" not in r for r in result["runs"])
    text = (tmp_path / "a" / "update.md").read_text()
    assert "was not run" in text and "warm-up run" in text and "Ratio ours" not in text
    assert main(common + ["--out", str(tmp_path / "b")]) == 0
    plain = json.loads((tmp_path / "b" / "update.json").read_text())
    assert plain["warm_up_seconds"] is None and len(plain["growcut"]) == 2
    assert [r["dice"] for r in result["runs"]] == [r["dice"] for r in plain["runs"]]


def test_benchmark_update_through_the_service(tmp_path, tiny_checkpoint):
    """`benchmark update --service local`: the first run and the updates also through a private engine service
    (started and stopped by the benchmark) and the same requests in process; the overhead per call is reported and
    the service's labels equal the in-process ones."""
    import json

    from BrainDiffSegCLI import main
    from conftest import write_tumour_case

    folder, _, _ = write_tumour_case(tmp_path / "case")
    out = tmp_path / "update"
    assert main(["benchmark", "update", "--case", str(folder), "--out", str(out), "--preset", "quick",
                 "--method", "diffusion", "--checkpoint", str(tiny_checkpoint), "--blocks", "1,2",
                 "--device", "cpu", "--service", "local"]) == 0
    service = json.loads((out / "update.json").read_text())["service"]
    assert service["labels_equal_in_process"] is True and service["service_threads"] == 1
    rows = service["runs"]
    assert [r["run"] for r in rows] == ["first"] + ["update"] * (len(rows) - 1) and len(rows) >= 3
    for r in rows:
        assert r["service_seconds"] >= r["service_engine_seconds"] > 0 and r["in_process_seconds"] > 0
        assert abs(r["overhead_seconds"] - (r["service_seconds"] - r["in_process_seconds"])) < 0.01
    text = (out / "update.md").read_text()
    assert "## Through the engine service" in text and "overhead per call" in text


def test_predicting_only_inside_the_gate_gives_the_labels_of_predicting_everything(real, count_forward):
    """The gate first (the default): only the slices and pixels where the watershed gate lets tumour stay are
    predicted, the labels equal those of predicting every head slice and gating afterwards (the path taken when the
    probabilities are kept), with fewer slices through the backbone on a case whose gate leaves slices out."""
    images, label = real
    zs = protocol_slices(label, 1)
    ann = _annotation(label, zs)
    gated = propagate(images, ann, OPTIONS, features=C.VolumeCache())
    gated_slices = count_forward["slices"]
    everything = propagate(images, ann, OPTIONS, features=C.VolumeCache(), keep_probabilities=True)
    assert np.array_equal(gated.labels, everything.labels)
    assert "gate" in gated.timings and "gate" not in everything.timings
    assert gated_slices < count_forward["slices"] - gated_slices  # the gate kept slices out of the backbone
    predicted = gated.entropy.reshape(-1, label.shape[-1]).any(0)
    assert predicted.sum() < everything.entropy.reshape(-1, label.shape[-1]).any(0).sum()


def test_an_update_with_warm_epochs_starts_from_the_last_runs_members(real, caplog):
    """`classifier.warm_epochs` > 0 (the default 3): the cache keeps the run's ensemble and the next run on the
    volume (same options and classes) trains from it for at most that many epochs; 0 keeps nothing, so an update
    equals a from-scratch run (above)."""
    import logging

    images, label = real
    zs1 = protocol_slices(label, 1)
    zs2 = sorted(set(zs1) | set(protocol_slices(label, 3)))
    warm = replace(OPTIONS, classifier=replace(OPTIONS.classifier, warm_epochs=2))
    cold_cache, warm_cache = C.VolumeCache(), C.VolumeCache()
    propagate(images, _annotation(label, zs1), SCRATCH, features=cold_cache)
    assert cold_cache._ensemble is None
    with caplog.at_level(logging.INFO, logger="BrainDiffSegLib.propagation.propagate"):
        propagate(images, _annotation(label, zs1), warm, features=warm_cache)
        assert "warm-started" not in caplog.text  # nothing to start from yet
        kept = warm_cache._ensemble[1]
        update = propagate(images, _annotation(label, zs2), warm, features=warm_cache)
        assert "warm-started" in caplog.text
    assert warm_cache._ensemble[1] is not kept  # the update's ensemble is kept for the next one
    # Propagate again with nothing painted since: the same classifier, the same result (no drift from re-running)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="BrainDiffSegLib.propagation.propagate"):
        again = propagate(images, _annotation(label, zs2), warm, features=warm_cache)
        assert "used again" in caplog.text and "warm-started" not in caplog.text
    assert np.array_equal(again.labels, update.labels) and np.array_equal(again.entropy, update.entropy)
    scratch = propagate(images, _annotation(label, zs2), SCRATCH, features=C.VolumeCache())
    d_warm, d_scratch = region_dice(update.labels, label, zs2), region_dice(scratch.labels, label, zs2)
    assert d_warm["WT"] > d_scratch["WT"] - 0.03, (d_warm, d_scratch)
    # other classes (a binary annotation of the same volume): no warm start from a three-class ensemble
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="BrainDiffSegLib.propagation.propagate"):
        propagate(images, (_annotation(label, zs2) > 0).astype(label.dtype), warm, features=warm_cache)
        assert "warm-started" not in caplog.text
