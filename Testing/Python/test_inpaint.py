"""The inpainting engine: bad input, the output outside the mask, progress / cancel, the pseudo-3D start."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from BrainDiffSegLib.errors import CancelledError, InputError
from BrainDiffSegLib.inpainting.inpaint import check_inputs, inpaint_volume, prepare
from BrainDiffSegLib.inpainting.model import InpaintConfig, InpaintNet, load_inpaint_model, weights_from_2d


@pytest.fixture(scope="module")
def case_and_mask(data_root):
    from inpaint_support import lgg_t1_cases

    from BrainDiffSegLib.inpainting.masks import healthy_masks
    from BrainDiffSegLib.training.inpaint import load_t1_cases

    cases = load_t1_cases(lgg_t1_cases(data_root, 3))
    mask, _ = healthy_masks(cases, seed=0)[0]
    return cases[0], mask


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from inpaint_support import tiny_inpaint_model

    return tiny_inpaint_model(tmp_path_factory.mktemp("inp") / "tiny")


def test_bad_masks_are_refused(case_and_mask):
    case, mask = case_and_mask
    t1 = case.images["t1"]
    with pytest.raises(InputError, match="mask is empty"):
        check_inputs(t1, np.zeros_like(mask))
    with pytest.raises(InputError, match="grid of the image"):
        check_inputs(t1, mask[:, :, :-1])
    outside = np.zeros_like(mask)
    outside[:3, :3, :] = True  # the corner of the field of view: air
    with pytest.raises(InputError, match="outside the head"):
        check_inputs(t1, outside)
    with pytest.raises(InputError, match="% of the brain"):
        check_inputs(t1, t1 > 0)
    image, m = check_inputs(t1, mask.astype(np.uint8))
    assert image.dtype == np.float32 and m.dtype == bool and np.array_equal(m, mask)


def test_inpaint_keeps_the_outside_and_the_inputs(case_and_mask, tiny_model):
    case, mask = case_and_mask
    t1 = case.images["t1"].copy()
    voided = np.where(mask, 0, t1).astype(np.float32)
    before_v, before_m = voided.copy(), mask.copy()
    stages = []
    out = inpaint_volume(voided, mask, model=tiny_model, steps=3, strength=1.0,
                         progress=lambda s, f: stages.append((s, f)))
    np.testing.assert_array_equal(voided, before_v)
    np.testing.assert_array_equal(mask, before_m)
    assert out.shape == t1.shape and out.dtype == np.float32
    np.testing.assert_array_equal(out[~mask], voided[~mask])  # exactly the input outside the mask
    assert np.all(np.isfinite(out[mask])) and np.any(out[mask] != 0)  # something was synthesised inside
    lo, hi = np.percentile(voided, [0.5, 99.5])
    assert out[mask].min() >= max(lo, 0) - 1e-3 and out[mask].max() <= hi + 1e-3  # on the normalised range
    assert stages[0] == ("loading", 0.0) and stages[-1] == ("done", 1.0)
    assert [f for s, f in stages if s == "sampling"] == pytest.approx([1 / 3, 2 / 3, 1.0])
    again = inpaint_volume(voided, mask, model=tiny_model, steps=3, strength=1.0)
    np.testing.assert_array_equal(again, out)  # seeded


def test_cancel(case_and_mask, tiny_model):
    case, mask = case_and_mask
    calls = []

    def cancelled():
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(CancelledError):
        inpaint_volume(case.images["t1"], mask, model=tiny_model, steps=5, strength=1.0, cancelled=cancelled)
    assert len(calls) == 2


def test_prepare_windows_cover_the_mask(case_and_mask):
    case, mask = case_and_mask
    cfg = InpaintConfig()
    prep = prepare(case.images["t1"], mask, cfg)
    assert prep["factor"] == 1 and len(prep["zs"]) == int(mask.any(axis=(0, 1)).sum())
    assert prep["window"].size % cfg.multiple == 0
    assert int(prep["mask"].sum()) == int(mask.sum())  # factor 1: every mask voxel is in the window
    assert torch.all(prep["voided"][prep["mask"] > 0] == -1.0)
    big = np.zeros((240, 240, 20), np.float32)
    assert prepare(big + 1, np.pad(mask[:, :, :20], ((0, 112), (0, 112), (0, 0))), cfg)["factor"] == 2


def test_pseudo3d_starts_as_the_2d_model(tiny_model):
    net2d, cfg = load_inpaint_model(tiny_model)
    from dataclasses import replace

    net3d = InpaintNet(replace(cfg, pseudo3d=True)).eval()
    net3d.load_state_dict(weights_from_2d(net2d.state_dict(), net3d))
    assert any(".zconv." in k for k in net3d.state_dict())
    x = torch.randn(2 * 4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.full((8,), 300)
    with torch.no_grad():
        a = net2d(x, t)
        b = net3d(x, t, depth=4)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # a trained z-convolution mixes adjacent slices
        next(m for n, m in net3d.named_modules() if n.endswith("zconv")).weight.add_(0.1)
        assert not torch.allclose(net3d(x, t, depth=4), a, atol=1e-4)


def test_samples_are_averaged(case_and_mask, tiny_model):
    """samples=2 is the mean of two independent single samples (the same noise drawn for the slices twice over)."""
    from BrainDiffSegLib.inpainting.inpaint import sample

    case, mask = case_and_mask
    net, cfg = load_inpaint_model(tiny_model)
    prep = prepare(case.images["t1"], mask, cfg)
    v, m = prep["voided"][:4], prep["mask"][:4]
    mean2 = sample(net, cfg, v, m, steps=3, seed=1, samples=2)
    twice = sample(net, cfg, torch.cat([v, v]), torch.cat([m, m]), steps=3, seed=1)
    assert mean2.shape == v.shape
    torch.testing.assert_close(mean2, (twice[:4] + twice[4:]) / 2, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(twice[:4], twice[4:])  # the two samples differ...
    single = sample(net, cfg, v, m, steps=3, seed=1)
    assert not torch.allclose(single, mean2)  # ...and their mean is not one of them
    with pytest.raises(InputError, match="at least 1"):
        inpaint_volume(case.images["t1"], mask, model=tiny_model, steps=2, samples=0)
    out = inpaint_volume(case.images["t1"], mask, model=tiny_model, steps=2, samples=2)
    np.testing.assert_array_equal(out[~mask], case.images["t1"][~mask].astype(np.float32))


def test_context_normalisation_round_trip(case_and_mask, tmp_path):
    """With context normalisation the window is shifted by the mean of its known tissue (outside the mask, above
    background), the voided region sits at the new lowest value -2, and `paste` adds the mean back: a perfect
    prediction (the shifted clean window) gives back the image inside the mask up to the model grid's rounding."""
    from dataclasses import replace

    from BrainDiffSegLib.inpainting.inpaint import context_mean, paste
    from inpaint_support import tiny_inpaint_model

    case, mask = case_and_mask
    t1 = case.images["t1"]
    plain = prepare(t1, mask, InpaintConfig())
    ctx = prepare(t1, mask, replace(InpaintConfig(), context_norm=True))
    assert plain["context"] is None
    c = ctx["context"]
    assert c == pytest.approx(context_mean(plain["voided"], plain["mask"])) and -1.0 < c < 1.0
    known = (plain["mask"] == 0) & (plain["voided"] > -1.0 + 1e-3)
    assert float(ctx["voided"][known].mean()) == pytest.approx(0.0, abs=1e-4)  # the context is centred
    assert torch.all(ctx["voided"][ctx["mask"] > 0] == -2.0)
    torch.testing.assert_close(ctx["clean"], plain["clean"] - c)
    back_plain = paste(t1, mask, plain["clean"], plain)
    back_ctx = paste(t1, mask, ctx["clean"], ctx)
    np.testing.assert_allclose(back_ctx, back_plain, atol=1e-3 * float(t1.max()))
    # an untrained context model: values may reach [-2, 2] before the shift back, the outside stays exact
    folder = tiny_inpaint_model(tmp_path / "ctx", context_norm=True)
    net, cfg = load_inpaint_model(folder)
    assert cfg.context_norm
    out = inpaint_volume(t1, mask, model=folder, steps=2)
    np.testing.assert_array_equal(out[~mask], t1[~mask].astype(np.float32))
    lo, hi = np.percentile(np.where(mask, 0, t1), [0.5, 99.5])
    assert out[mask].min() >= max(lo, 0) - 1e-3 and out[mask].max() <= hi + 1e-3


def test_sampling_from_the_distance_weighted_fill(case_and_mask, tiny_model):
    """strength < 1 runs only the last fraction of the DDIM steps, from the distance-weighted fill noised to that
    level: at a tiny strength (one step from the least noisy level) the result is the fill itself, at strength 1 it
    is the (untrained) model's own sample; the outside is exact either way."""
    from BrainDiffSegLib.inpainting.inpaint import intensity_range
    from BrainDiffSegLib.inpainting.fill import fill_distance_weighted

    case, mask = case_and_mask
    t1 = case.images["t1"]
    voided = np.where(mask, 0, t1).astype(np.float32)
    lo, hi = intensity_range(voided)
    fill = np.clip(fill_distance_weighted(voided, mask), max(lo, 0), hi)
    stages = []
    near = inpaint_volume(t1, mask, model=tiny_model, steps=20, strength=0.05, samples=1,
                          progress=lambda s, f: stages.append((s, f)))
    assert [f for s, f in stages if s == "sampling"] == [1.0]  # round(0.05 * 20) = 1 step
    np.testing.assert_array_equal(near[~mask], t1[~mask].astype(np.float32))
    err = np.abs(near[mask] - fill[mask]) / (hi - lo)
    assert err.mean() < 0.02 and err.max() < 0.2, (err.mean(), err.max())
    far = inpaint_volume(t1, mask, model=tiny_model, steps=20, strength=1.0, samples=1)
    assert (np.abs(far[mask] - fill[mask]) / (hi - lo)).mean() > 5 * err.mean()
    stages.clear()
    inpaint_volume(t1, mask, model=tiny_model, steps=10, strength=0.3, samples=1,
                   progress=lambda s, f: stages.append((s, f)))
    assert [f for s, f in stages if s == "sampling"] == pytest.approx([1 / 3, 2 / 3, 1.0])
    with pytest.raises(InputError, match="strength"):
        inpaint_volume(t1, mask, model=tiny_model, steps=10, strength=0.0)


@pytest.mark.parametrize("which", ["inpaint", "inpaint3d"])
def test_bundled_models_on_a_real_case(case_and_mask, which):
    """The bundled 2D and pseudo-3D models (Resources/Models, model cards there) load safely, are the variant they
    claim, keep the outside of the mask exactly and, with the defaults (from the distance-weighted fill, mean of 4),
    come closer to the truth inside the mask than the mean-of-tissue fill on a real LGG case (challenge MSE)."""
    from BrainDiffSegBench.inpaint_metrics import challenge_metrics
    from BrainDiffSegLib.inpainting.inpaint import default_inpaint3d_model, default_inpaint_model
    from BrainDiffSegLib.inpainting.fill import fill_mean

    folder = default_inpaint_model() if which == "inpaint" else default_inpaint3d_model()
    net, cfg = load_inpaint_model(folder)
    assert cfg.pseudo3d == (which == "inpaint3d") and cfg.context_norm
    assert (folder / "MODEL_CARD.md").is_file()
    case, mask = case_and_mask
    t1 = case.images["t1"]
    voided = np.where(mask, 0, t1).astype(np.float32)
    out = inpaint_volume(voided, mask, model=(net, cfg))
    np.testing.assert_array_equal(out[~mask], voided[~mask])
    ours = challenge_metrics(out, t1, voided, mask)
    mean_fill = challenge_metrics(fill_mean(voided, mask), t1, voided, mask)
    assert ours["mse"] < mean_fill["mse"], (ours, mean_fill)
