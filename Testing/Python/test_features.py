"""Per-pixel features: decoder activations of the backbone (checked against a normal forward pass with hooks) and the
FeatureExtractor (channel count, determinism, masking, absent sequences, raw intensity mode)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from BrainDiffSegLib.propagation.features import FeatureExtractor, FeatureSpec, gaussian_blur, decoder_activations, \
    feature_channels
from BrainDiffSegLib.io import ROLES
from BrainDiffSegLib.model import BackboneConfig, build_unet, model_input
from BrainDiffSegLib.preprocess import ModelGrid, normalize_case, stack_roles
from BrainDiffSegBench.gridfeatures import grid_features, grid_maps

SHAPE = (40, 36, 8)


@pytest.fixture(scope="module")
def cfg():
    return BackboneConfig(sample_size=32, block_out_channels=(8, 16, 16), attention_levels=(2,), norm_num_groups=4,
                          attention_head_dim=8)


@pytest.fixture(scope="module")
def unet(cfg):
    torch.manual_seed(0)
    return build_unet(cfg).eval()


@pytest.fixture
def case(head):
    """Normalised stack, presence (all four), grid at 32 and a head mask of a small synthetic case."""
    images, _ = head(SHAPE, seed=3)
    norm, fg = normalize_case(images)
    stack, present = stack_roles(norm)
    return stack, present, ModelGrid.from_mask(fg, 32), fg


def _extractor(unet, cfg, case, spec=None, present=None, stack=None, batch_size=16):
    st, pr, grid, _ = case
    return FeatureExtractor(unet, cfg, spec or FeatureSpec(), st if stack is None else stack,
                            pr if present is None else present, grid, batch_size=batch_size)


def _masks(n, size=32, seed=0, frac=0.3):
    g = np.random.default_rng(seed)
    m = g.random((n, size, size)) < frac
    m[0, 0, 0] = True
    return m


# --------------------------------------------------------------------------------------- decoder activations

def _hooked_up_block_outputs(unet, x, t):
    outs = {}
    handles = [blk.register_forward_hook(lambda mod, inp, out, i=i: outs.__setitem__(i, out))
               for i, blk in enumerate(unet.up_blocks)]
    try:
        with torch.no_grad():
            unet(x, t)
    finally:
        for h in handles:
            h.remove()
    return outs


@pytest.mark.parametrize("blocks", [(0,), (1,), (2,), (1, 2), (0, 1, 2), (0, 2)])
def test_decoder_activations_match_a_full_forward(unet, cfg, blocks):
    g = torch.Generator().manual_seed(1)
    images = torch.rand((3, len(ROLES), 32, 32), generator=g) * 2 - 1
    present = torch.tensor([True, False, True, True])
    x = model_input(images, present)
    t = torch.tensor([0, 50, 900])
    ref = _hooked_up_block_outputs(unet, x, t)
    assert len(ref) == len(unet.up_blocks) == 3
    with torch.no_grad():
        acts = decoder_activations(unet, x, t, blocks)
    assert len(acts) == len(blocks)
    for b, a in zip(sorted(blocks), acts):
        assert a.shape == ref[b].shape
        torch.testing.assert_close(a, ref[b], atol=1e-5, rtol=1e-5)
    # the channel count the extractor assumes for each block
    rev = list(reversed(cfg.block_out_channels))
    assert [a.shape[1] for a in acts] == [rev[b] for b in sorted(blocks)]


def test_decoder_activations_depend_on_the_timestep(unet):
    x = model_input(torch.zeros((1, 4, 32, 32)), torch.ones(4, dtype=torch.bool))
    with torch.no_grad():
        a = decoder_activations(unet, x, torch.tensor([10]), (1,))[0]
        b = decoder_activations(unet, x, torch.tensor([500]), (1,))[0]
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("blocks", [(3,), (0, 3), (-1,), (1, -1)])
def test_decoder_activations_reject_out_of_range_blocks(unet, blocks):
    x = model_input(torch.zeros((1, 4, 32, 32)), torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="decoder block"):
        decoder_activations(unet, x, torch.tensor([10]), blocks)


# ------------------------------------------------------------------------------------------ extractor

@pytest.mark.parametrize("spec,present,expected", [
    (FeatureSpec(blocks=(1, 2), timesteps=(50, 200), smoothing=()), (1, 1, 1, 1), (16 + 8) * 2 + 4),
    (FeatureSpec(blocks=(1, 2), timesteps=(50, 200)), (1, 1, 1, 1), (16 + 8) * 2 + 4 * 4),  # default smoothing
    (FeatureSpec(blocks=(0,), timesteps=(10,), intensities=False), (1, 1, 1, 1), 16),
    (FeatureSpec(blocks=(2,), timesteps=(10, 100, 400), smoothing=()), (1, 0, 0, 1), 8 * 3 + 2),
    (FeatureSpec(blocks=(0, 1, 2), timesteps=(5,), smoothing=(1.0, 2.0)), (0, 1, 1, 1), 40 + 3 * 3),
    (FeatureSpec(blocks=(1,), timesteps=(50,), intensities=False, smoothing=(1.0,)), (1, 1, 1, 1), 16),
])
def test_number_of_channels(unet, cfg, case, spec, present, expected):
    present = np.array(present, dtype=bool)
    ex = _extractor(unet, cfg, case, spec, present=present)
    assert ex.n_channels == expected
    assert feature_channels(unet, spec, int(present.sum())) == expected
    zs = [1, 4, 6]
    maps = grid_maps(ex, zs)
    assert maps.shape == (3, expected, 32, 32)
    feats = grid_features(ex, zs, _masks(3))
    assert feats.shape[1] == expected


def test_features_are_the_masked_map_pixels_in_float16(unet, cfg, case):
    spec = FeatureSpec(blocks=(1, 2), timesteps=(50, 200), smoothing=(1.5,))
    zs = [0, 2, 3, 5, 7]
    masks = _masks(len(zs), seed=4)
    ex = _extractor(unet, cfg, case, spec, batch_size=2)  # several batches
    feats = grid_features(ex, zs, masks)
    assert feats.dtype == torch.float16
    assert feats.shape == (int(masks.sum()), ex.n_channels)
    ref = grid_maps(ex, zs).permute(0, 2, 3, 1)[torch.from_numpy(masks)].to(torch.float16)  # slice-major order
    torch.testing.assert_close(feats, ref, atol=2e-3, rtol=2e-3)
    # a torch mask works too, and an empty mask gives no rows
    assert grid_features(ex, zs, torch.from_numpy(masks)).shape == feats.shape
    assert grid_features(ex, zs, np.zeros_like(masks)).shape == (0, ex.n_channels)
    assert grid_features(ex, [], np.zeros((0, 32, 32), bool)).shape == (0, ex.n_channels)


def test_features_of_a_slice_do_not_depend_on_its_batch(unet, cfg, case):
    ex = _extractor(unet, cfg, case, FeatureSpec(blocks=(1, 2), timesteps=(50,)))
    m = np.ones((1, 32, 32), bool)
    alone = grid_features(ex, [4], m)
    together = grid_features(ex, [1, 4, 6], np.concatenate([np.zeros_like(m), m, np.zeros_like(m)]))
    torch.testing.assert_close(alone.float(), together.float(), atol=2e-3, rtol=2e-3)


def test_features_are_deterministic_and_depend_on_the_noise_seed(unet, cfg, case):
    zs, masks = [2, 5], _masks(2, seed=1)
    spec = FeatureSpec(blocks=(1, 2), timesteps=(200, 600), noise_seed=7)
    a = grid_features(_extractor(unet, cfg, case, spec), zs, masks)
    b = grid_features(_extractor(unet, cfg, case, FeatureSpec(blocks=(1, 2), timesteps=(200, 600), noise_seed=7)),
                      zs, masks)
    assert torch.equal(a, b)
    c = grid_features(_extractor(unet, cfg, case, FeatureSpec(blocks=(1, 2), timesteps=(200, 600), noise_seed=8)),
                      zs, masks)
    n_diff = (16 + 8) * 2
    assert not torch.allclose(a[:, :n_diff].float(), c[:, :n_diff].float(), atol=1e-2)
    # the appended intensities do not depend on the noise
    assert torch.equal(a[:, n_diff:], c[:, n_diff:])


def test_absent_sequences_do_not_influence_the_features(unet, cfg, case):
    stack = case[0]
    present = np.array([True, False, True, True])
    spec = FeatureSpec(blocks=(1, 2), timesteps=(50, 300), smoothing=(1.0,))
    zs, masks = [1, 3, 6], _masks(3, seed=2, frac=0.5)
    ref = grid_features(_extractor(unet, cfg, case, spec, present=present), zs, masks)
    other = stack.copy()
    other[1] = np.random.default_rng(5).uniform(-1, 1, size=other[1].shape).astype(np.float32)
    changed = grid_features(_extractor(unet, cfg, case, spec, present=present, stack=other), zs, masks)
    assert torch.equal(ref, changed)
    # the same change in a present sequence does change them (so the comparison above can fail)
    other = stack.copy()
    other[2] = np.random.default_rng(5).uniform(-1, 1, size=other[2].shape).astype(np.float32)
    changed = grid_features(_extractor(unet, cfg, case, spec, present=present, stack=other), zs, masks)
    assert not torch.allclose(ref.float(), changed.float(), atol=1e-2)
    # ... and marking the sequence present changes them as well
    all_present = grid_features(_extractor(unet, cfg, case, spec, present=np.ones(4, bool)), zs, masks)
    assert all_present.shape[1] == ref.shape[1] + 2
    assert not torch.allclose(ref[:, :48].float(), all_present[:, :48].float(), atol=1e-2)


def test_raw_mode_gives_intensities_and_smoothed_intensities_only(case):
    stack, _, grid, _ = case
    present = np.array([True, True, False, True])
    spec = FeatureSpec(blocks=(1, 2), timesteps=(50, 200), smoothing=(1.0, 3.0))
    ex = FeatureExtractor(None, None, spec, stack, present, grid)
    assert ex.n_channels == 3 * 3
    zs = [0, 4]
    maps = grid_maps(ex, zs)
    assert maps.shape == (2, 9, 32, 32)
    x = grid.to_model(np.moveaxis(stack[..., zs], -1, 0))[:, [0, 1, 3]]
    torch.testing.assert_close(maps[:, :3], x)
    torch.testing.assert_close(maps[:, 3:6], gaussian_blur(x, 1.0))
    torch.testing.assert_close(maps[:, 6:9], gaussian_blur(x, 3.0))
    # the blur really smooths (lower variance) and keeps the mean roughly
    assert maps[:, 6:9].var() < maps[:, :3].var()
    masks = _masks(2, seed=3)
    feats = grid_features(ex, zs, masks)
    assert feats.shape == (int(masks.sum()), 9) and feats.dtype == torch.float16
    # without smoothing only the intensities of the present sequences
    ex = FeatureExtractor(None, None, FeatureSpec(smoothing=()), stack, present, grid)
    assert ex.n_channels == 3
    torch.testing.assert_close(grid_maps(ex, zs), x)


@pytest.mark.parametrize("sigma", [1.0, 1.5, 4.0])
def test_gaussian_blur_is_the_replicate_padded_gaussian(sigma):
    """`gaussian_blur` computes the documented filter: the normalised Gaussian of radius round(3 sigma) along each
    in-plane axis, the border replicated - checked against numpy on a random image."""
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(2, 3, 17, 23)).astype(np.float32))
    r = int(round(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    a = x.numpy().astype(np.float64)
    for axis in (2, 3):
        pad = [(0, 0)] * 4
        pad[axis] = (r, r)
        p = np.pad(a, pad, mode="edge")
        a = sum(k[i] * np.take(p, np.arange(i, i + a.shape[axis]), axis=axis) for i in range(2 * r + 1))
    got = gaussian_blur(x, sigma)
    assert got.dtype == torch.float32 and got.shape == x.shape
    np.testing.assert_allclose(got.numpy(), a, atol=1e-5)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0, 4.0])
def test_gaussian_blur_equals_the_depthwise_convolution_it_replaced(sigma):
    """The tap-by-tap correlation gives what torch's depthwise convolution gave (on this CPU to the bit; asserted
    here up to float rounding, which another CPU's kernels may order differently), for images smaller and larger
    than the kernel, on non-square slices."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(int(sigma * 10))
    for shape in ((3, 4, 37, 29), (2, 1, 7, 5)):
        x = torch.randn(shape, generator=g) * 3 + 1
        r = max(1, int(round(3 * sigma)))
        k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype) / sigma) ** 2)
        k = k / k.sum()
        c = x.shape[1]
        ref = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
        ref = F.conv2d(F.pad(ref, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
        got = gaussian_blur(x, sigma)
        assert got.shape == x.shape
        torch.testing.assert_close(got, ref)


def test_gaussian_blur_preserves_constants_and_mass():
    x = torch.full((1, 2, 16, 16), 0.7)
    torch.testing.assert_close(gaussian_blur(x, 2.0), x)
    d = torch.zeros((1, 1, 21, 21))
    d[0, 0, 10, 10] = 1.0
    b = gaussian_blur(d, 1.5)
    assert float(b.sum()) == pytest.approx(1.0, abs=1e-5)
    assert float(b[0, 0, 10, 10]) == float(b.max()) < 1.0
    torch.testing.assert_close(b, b.flip(-1))
    torch.testing.assert_close(b, b.transpose(-1, -2))


@pytest.mark.parametrize("t", [1000, 5000, -1])
def test_timestep_out_of_range_is_refused(unet, cfg, case, t):
    with pytest.raises(ValueError, match="timestep"):
        _extractor(unet, cfg, case, FeatureSpec(blocks=(1,), timesteps=(50, t)))


def test_diffusion_maps_are_upsampled_block_outputs(unet, cfg, case):
    """The diffusion channels are the bilinearly upsampled decoder outputs for the noised model-grid input."""
    stack, present, grid, _ = case
    spec = FeatureSpec(blocks=(0,), timesteps=(100,), intensities=False, noise_seed=3)  # block 0: 16 x 16
    ex = _extractor(unet, cfg, case, spec)
    zs = [2, 3]
    x0 = grid.to_model(np.moveaxis(stack[..., zs], -1, 0))
    noise = torch.randn((1, 4, 32, 32), generator=torch.Generator().manual_seed(3))[0]
    from BrainDiffSegLib.model import build_scheduler

    a = float(build_scheduler(cfg).alphas_cumprod[100])
    xt = a ** 0.5 * x0 + (1 - a) ** 0.5 * noise
    pres = torch.from_numpy(present)
    with torch.no_grad():
        ref = _hooked_up_block_outputs(unet, model_input(xt, pres), torch.tensor([100, 100]))[0]
    assert ref.shape[-2:] == (16, 16)
    ref = F.interpolate(ref, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(grid_maps(ex, zs), ref, atol=1e-5, rtol=1e-5)


def test_feature_experiment_candidates_are_distinct():
    """The feature experiment's grid holds no candidate twice (each is a separate classifier run on every case) and
    names each one differently in its table."""
    import json

    from BrainDiffSegBench.features import default_candidates, spec_name

    cands = default_candidates()
    assert len({json.dumps(c.as_dict()) for c in cands}) == len(cands) == 12
    assert len({spec_name(c) for c in cands}) == len(cands)


def test_channels_last_backbone_gives_the_contiguous_layouts_activations(unet, cfg, case):
    """On the CPU the extractor runs the backbone in channels-last layout (`features.channels_last`, faster
    convolutions): the activations equal those of the contiguous layout up to float rounding."""
    import copy

    spec = FeatureSpec(blocks=(1, 2), timesteps=(100,), intensities=False)
    ex = _extractor(unet, cfg, case, spec)
    assert ex.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    zs = [2, 5, 6]
    fast = ex.diffusion_parts(zs)
    plain = copy.deepcopy(unet).to(memory_format=torch.contiguous_format)
    assert plain.conv_in.weight.is_contiguous()
    stack, present, grid, _ = case
    x0 = grid.to_model(np.moveaxis(stack[..., zs], -1, 0)) * torch.from_numpy(present).view(1, -1, 1, 1)
    a = float(ex._alphas[100])
    xt = a ** 0.5 * x0 + (1 - a) ** 0.5 * ex.noise[0]
    with torch.no_grad():
        ref = decoder_activations(plain, model_input(xt, torch.from_numpy(present)), torch.full((3,), 100), (1, 2))
    for got, want in zip(fast, ref):
        assert got.is_contiguous()
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)

