"""The pixel classifier: an ensemble of MLPs with a class-balanced loss, early stopping and uncertainty."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from BrainDiffSegLib.propagation.classifier import ClassifierOptions, PixelEnsemble, _stratified_subset, make_mlp
from BrainDiffSegLib.errors import CancelledError
from BrainDiffSegBench.gridfeatures import ensemble_predict

DIM = 10
COUNTS = (20000, 2000, 500, 100)  # strongly unbalanced, like background / edema / core / enhancing


def _centres():
    # four blob centres, pairwise 6 standard deviations apart
    c = torch.zeros((4, DIM))
    for k in range(4):
        c[k, k] = 6 / 2 ** 0.5
    return c + 2.0  # not centred on the origin: standardisation matters


def _blobs(counts, seed):
    g = torch.Generator().manual_seed(seed)
    c = _centres()
    xs, ys = [], []
    for k, n in enumerate(counts):
        xs.append(c[k] + torch.randn((n, DIM), generator=g))
        ys.append(torch.full((n,), k))
    x, y = torch.cat(xs), torch.cat(ys)
    perm = torch.randperm(len(y), generator=g)
    return x[perm], y[perm]


def _balanced_accuracy(pred, y):
    recalls = [float((pred[y == k] == k).float().mean()) for k in torch.unique(y)]
    return float(np.mean(recalls)), recalls


def _midpoints(n=400, seed=3):
    """Points half-way between two blob centres (every pair), with a little jitter along the other axes."""
    g = torch.Generator().manual_seed(seed)
    c = _centres()
    pairs = [(a, b) for a in range(4) for b in range(a + 1, 4)]
    pts = []
    for i in range(n):
        a, b = pairs[i % len(pairs)]
        pts.append((c[a] + c[b]) / 2 + 0.1 * torch.randn(DIM, generator=g))
    return torch.stack(pts)


@pytest.fixture(scope="module")
def data():
    return _blobs(COUNTS, seed=0)


@pytest.fixture(scope="module")
def trained(data):
    x, y = data
    ens = PixelEnsemble(DIM, 4, ClassifierOptions(n_models=3, max_epochs=12, batch_size=1024, seed=0))
    history = ens.fit(x.half(), y)  # float16 features, as the extractor produces them
    return ens, history


def test_separable_unbalanced_problem_is_learned(trained):
    ens, history = trained
    assert len(ens.members) == 3 and len(history) == 3
    x, y = _blobs((2000, 2000, 2000, 2000), seed=1)  # held out, balanced
    p, _, _ = ensemble_predict(ens, x)
    bacc, recalls = _balanced_accuracy(p.argmax(1), y)
    assert bacc > 0.95, recalls
    assert min(recalls) > 0.95, recalls  # including the smallest class (100 training samples)


def test_loss_is_class_balanced(trained):
    """Half-way between the largest and the smallest class, a class-balanced classifier gives the small class a fair
    share (ideally 0.5); an unweighted one (200:1 prior) gives it almost nothing there (about 0.01 when tried)."""
    ens, _ = trained
    c = _centres()
    g = torch.Generator().manual_seed(4)
    mid = (c[0] + c[3]) / 2 + 0.1 * torch.randn((300, DIM), generator=g)
    p, _, _ = ensemble_predict(ens, mid)
    p3 = float(p[:, 3].mean())
    assert 0.1 < p3 < 0.9, p3
    assert float(p[:, [0, 3]].sum(1).mean()) > 0.85


def test_probabilities_and_uncertainty(trained):
    ens, _ = trained
    centres = _centres()
    mid = _midpoints()
    for pts in (centres, mid):
        p, e, d = ensemble_predict(ens, pts)
        assert p.shape == (len(pts), 4) and p.dtype == torch.float32
        torch.testing.assert_close(p.sum(1), torch.ones(len(pts)))
        assert torch.all(p >= 0)
        assert e.shape == d.shape == (len(pts),)
        assert torch.all((e >= 0) & (e <= 1 + 1e-6)) and torch.all((d >= 0) & (d <= 1))
    p_c, e_c, d_c = ensemble_predict(ens, centres)
    p_m, e_m, d_m = ensemble_predict(ens, mid)
    assert torch.equal(p_c.argmax(1), torch.arange(4))
    assert float(e_c.max()) < 0.35
    assert float(e_m.mean()) > float(e_c.max())  # uncertain between the blobs, confident at their centres
    assert float(d_m.mean()) > float(d_c.mean())
    assert float(d_c.max()) == 0.0  # every member agrees at the blob centres
    # the entropy is normalised: a uniform prediction would have entropy 1
    assert float(e_m.max()) <= 1.0 + 1e-6


def test_predict_in_chunks_matches_one_chunk(trained):
    ens, _ = trained
    x, _ = _blobs((50, 50, 50, 50), seed=5)
    a = ensemble_predict(ens, x)
    b = ensemble_predict(ens, x, chunk=7)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v)


def test_training_is_deterministic_for_a_seed():
    x, y = _blobs((800, 300, 100, 40), seed=2)
    opt = dict(n_models=2, max_epochs=3, hidden=(16,), batch_size=256)
    probe = _midpoints(40)

    def run(seed):
        ens = PixelEnsemble(DIM, 4, ClassifierOptions(seed=seed, **opt))
        hist = ens.fit(x, y)
        return ensemble_predict(ens, probe)[0], hist

    p1, h1 = run(0)
    torch.manual_seed(123)  # global RNG state must not matter
    p2, h2 = run(0)
    assert torch.equal(p1, p2)
    assert h1 == h2
    p3, _ = run(1)
    assert not torch.equal(p1, p3)


def test_early_stopping_on_an_easy_problem():
    """Overlapping classes: the validation loss reaches its floor (the Bayes loss) within a few epochs and then only
    fluctuates, so training must stop long before max_epochs. (On perfectly separable blobs the loss keeps shrinking
    as the logits grow, so it would not stop.)"""
    g = torch.Generator().manual_seed(6)
    y = torch.randint(0, 4, (4000,), generator=g)
    x = torch.randn((4000, DIM), generator=g)
    x[torch.arange(4000), y] += 1.0
    opt = ClassifierOptions(n_models=2, max_epochs=200, patience=2, hidden=(16,), batch_size=256)
    history = PixelEnsemble(DIM, 4, opt).fit(x, y)
    assert [h["member"] for h in history] == [0, 1]
    for h in history:
        assert opt.patience + 2 <= h["epochs"] < 80, history
        assert np.isfinite(h["val_loss"]) and h["val_loss"] < np.log(4)  # better than chance


def test_progress_is_reported_per_epoch():
    """The members train together: progress is the fraction of max_epochs done, 1.0 at the end (also when early
    stopping ends training sooner)."""
    x, y = _blobs((300, 100, 50, 20), seed=7)
    seen = []
    PixelEnsemble(DIM, 4, ClassifierOptions(n_models=3, max_epochs=2, hidden=(8,))).fit(x, y, progress=seen.append)
    assert seen == pytest.approx([0.5, 1.0])
    g = torch.Generator().manual_seed(6)
    y = torch.randint(0, 4, (2000,), generator=g)
    x = torch.randn((2000, DIM), generator=g)
    seen = []
    hist = PixelEnsemble(DIM, 4, ClassifierOptions(n_models=2, max_epochs=100, patience=1, hidden=(8,))).fit(
        x, y, progress=seen.append)  # pure noise: stops early
    assert max(h["epochs"] for h in hist) < 100
    assert seen[-1] == 1.0 and all(a < b for a, b in zip(seen, seen[1:])) and len(seen) <= 100


def test_cancellation():
    x, y = _blobs((300, 100, 50, 20), seed=7)
    ens = PixelEnsemble(DIM, 4, ClassifierOptions(n_models=2, max_epochs=2, hidden=(8,)))
    with pytest.raises(CancelledError):
        ens.fit(x, y, cancelled=lambda: True)
    calls = []

    def later():  # cancel before the second epoch
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(CancelledError):
        ens.fit(x, y, cancelled=later)
    assert len(calls) == 2
    # never cancelled: trains normally
    assert len(ens.fit(x, y, cancelled=lambda: False)) == 2


def test_shape_mismatch_and_untrained_use():
    ens = PixelEnsemble(DIM, 4, ClassifierOptions(n_models=1))
    with pytest.raises(ValueError, match="do not match"):
        ens.fit(torch.zeros((10, DIM)), torch.zeros(9, dtype=torch.long))
    with pytest.raises(ValueError, match="do not match"):
        ens.fit(torch.zeros((10, DIM + 1)), torch.zeros(10, dtype=torch.long))
    with pytest.raises(RuntimeError, match="not trained"):
        ensemble_predict(ens, torch.zeros((3, DIM)))


def test_stratified_subset_keeps_every_class():
    y = torch.cat([torch.full((n,), k) for k, n in enumerate((50000, 3000, 40, 3))])
    g = torch.Generator().manual_seed(0)
    idx = _stratified_subset(y, 1000, g)
    assert len(idx) <= 1000
    assert len(torch.unique(idx)) == len(idx)  # no duplicates
    counts = torch.bincount(y[idx], minlength=4)
    assert counts[3] == 3 and counts[2] == 40  # small classes entirely
    assert counts[0] > 0 and counts[1] > 0
    assert abs(int(counts[0]) - int(counts[1])) <= 1  # the rest of the budget shared by the large classes
    assert int(counts.sum()) == 1000
    # fewer pixels than the budget: all of them, shuffled
    idx = _stratified_subset(y[:500], 1000, g)
    assert sorted(idx.tolist()) == list(range(500))
    # a budget smaller than the number of classes still keeps what it can, without exceeding it
    idx = _stratified_subset(y, 4, g)
    assert len(idx) <= 4 and len(torch.unique(y[idx])) == 4


def test_make_mlp_layout():
    net = make_mlp(7, 3, (16, 8))
    kinds = [type(m).__name__ for m in net]
    assert kinds == ["Linear", "ReLU", "BatchNorm1d", "Linear", "ReLU", "BatchNorm1d", "Linear"]
    assert net(torch.zeros((5, 7))).shape == (5, 3)


def _fitted(precision: str):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn((6000, 9), generator=gen)
    y = (x[:, 0] + x[:, 7] > 0).long() + (x[:, 2] > 1).long()
    ens = PixelEnsemble(9, 3, ClassifierOptions(n_models=3, max_epochs=3, seed=2, precision=precision))
    ens.fit(x.half(), y)
    return ens, x


def test_classify_equals_predict_in_fp32():
    """The folded, batched, chunked inference (`classify`, what prediction uses) equals the members' own forward
    passes (`predict`): standardisation and BatchNorm folded into the weights, members stacked."""
    ens, x = _fitted("fp32")
    assert not ens.bf16
    p1, e1, d1 = ensemble_predict(ens, x)
    p2, e2, d2 = ens.classify(x, ens.folded(), chunk=1000)  # several chunks
    assert torch.allclose(p1, p2, atol=1e-5) and torch.allclose(e1, e2, atol=1e-5)
    assert torch.equal(d1, d2)


def test_classify_in_bf16_stays_close_to_fp32():
    """bf16 first layer (the default where the CPU computes bf16 natively): probabilities within 0.02 and class
    agreement above 99 % against the fp32 forward pass."""
    ens, x = _fitted("bf16")
    assert ens.bf16
    p1, _, _ = ensemble_predict(ens, x)
    p2, _, _ = ens.classify(x, ens.folded())
    assert (p1 - p2).abs().max() < 0.02
    assert (p1.argmax(1) == p2.argmax(1)).float().mean() > 0.99
    with pytest.raises(RuntimeError, match="not trained"):
        PixelEnsemble(9, 3).folded()


def test_hybrid_trains_both_sets_in_one_model_as_two_ensembles_would():
    """The hybrid (`intensity_columns`, `intensity_weight`): members on all the features and members on the last 3
    alone, trained in one stacked model, give the weighted mix (1 - w) p_all + w p_last of the two ensembles trained
    apart with the same seeds (as before the fold), up to float rounding (which a few epochs of training amplify a
    little: batched products of other shapes round differently), through the members and the folded `classify`;
    entropy from the mixed probabilities; bad settings fail clearly."""
    ens, x = _fitted("fp32")
    g = torch.Generator().manual_seed(5)
    y = (x[:, -3:].sum(1) + 0.3 * torch.randn(len(x), generator=g) > x[:, -3:].sum(1).median()).long()
    y[x[:, 0] > x[:, 0].quantile(0.9)] = 2
    opts = ClassifierOptions(n_models=2, max_epochs=4, precision="fp32", seed=1)
    full = PixelEnsemble(x.shape[1], 3, opts)
    full.fit(x.half(), y)
    last = PixelEnsemble(3, 3, opts)
    last.fit(x[:, -3:].half(), y)
    hybrid = PixelEnsemble(x.shape[1], 3, opts)
    history = hybrid.fit(x.half(), y, intensity_columns=3, intensity_weight=0.3)
    assert len(history) == 4 and len(hybrid.members) == 4
    assert torch.allclose(hybrid.member_weights, torch.tensor([0.35, 0.35, 0.15, 0.15]))
    assert torch.count_nonzero(hybrid.members[3][0].weight[:, :-3]) == 0  # reads the last 3 columns only
    pa, _, _ = ensemble_predict(full, x)
    pb, _, _ = ensemble_predict(last, x[:, -3:])
    ph, eh, dh = ensemble_predict(hybrid, x)
    mix = 0.7 * pa + 0.3 * pb
    assert (ph - mix).abs().max() < 0.02 and (ph.argmax(1) == mix.argmax(1)).float().mean() > 0.99
    assert not torch.allclose(ph, pa, atol=1e-3)  # the intensity members count
    with torch.no_grad():
        pf, ef, df = hybrid.classify(x, hybrid.folded(), chunk=500)
    assert torch.allclose(pf, ph, atol=1e-5) and torch.allclose(ef, eh, atol=1e-5) and torch.equal(df, dh)
    assert torch.allclose(eh, -(ph * ph.clamp_min(1e-8).log()).sum(1) / np.log(3), atol=1e-5)
    for columns, weight in ((x.shape[1], 0.5), (3, 1.0)):
        with pytest.raises(ValueError, match="intensity members"):
            PixelEnsemble(x.shape[1], 3, opts).fit(x.half(), y, intensity_columns=columns, intensity_weight=weight)


def test_initial_weights_come_from_their_own_generator_with_the_former_values():
    """The members' initial weights are drawn from a generator of their own (the engine changes no global state in
    a host process), bit-equal to what `torch.manual_seed(seed)` then `nn.Linear` gave before; the global
    generator is left as it was."""
    torch.manual_seed(7)
    former = make_mlp(20, 3, (128, 32))
    before = torch.random.get_rng_state().clone()
    now = make_mlp(20, 3, (128, 32), torch.Generator().manual_seed(7))
    assert torch.equal(before, torch.random.get_rng_state())
    for (name, a), (_, b) in zip(former.state_dict().items(), now.state_dict().items()):
        assert torch.equal(a, b), name


def test_class_weight_power_softens_the_balance_towards_the_minority_class():
    """`class_weight_power` (seeds mode uses 0.5): with full balance (1) an overlapping minority class takes more
    of the ambiguous pixels than with softened (0.5) or no (0) balance; 1 is today's weighting, unchanged."""
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(900, 2, generator=g), torch.randn(30, 2, generator=g) + 1.5])
    y = torch.cat([torch.zeros(900), torch.ones(30)]).long()
    grid = torch.stack(torch.meshgrid(torch.linspace(-1, 3, 41), torch.linspace(-1, 3, 41), indexing="ij"), -1)
    grid = grid.reshape(-1, 2)
    share = {}
    for power in (1.0, 0.5, 0.0):
        ens = PixelEnsemble(2, 2, ClassifierOptions(n_models=2, max_epochs=12, hidden=(16,), batch_size=128, seed=0))
        ens.fit(x, y, class_weight_power=power)
        p, _, _ = ensemble_predict(ens, grid)
        share[power] = float((p.argmax(1) == 1).float().mean())
    assert share[1.0] > share[0.5] > share[0.0], share
    default = PixelEnsemble(2, 2, ClassifierOptions(n_models=2, max_epochs=3, hidden=(16,), batch_size=128, seed=0))
    explicit = PixelEnsemble(2, 2, ClassifierOptions(n_models=2, max_epochs=3, hidden=(16,), batch_size=128, seed=0))
    default.fit(x, y)
    explicit.fit(x, y, class_weight_power=1.0)
    torch.testing.assert_close(ensemble_predict(default, grid)[0], ensemble_predict(explicit, grid)[0], rtol=0,
                               atol=0)


def test_a_warm_start_re_expresses_the_members_for_new_statistics_and_never_starts_worse(data):
    """An update's warm start: the previous members, first layers re-expressed for the new training set's
    standardisation, compute the same function of the raw features; training from them keeps each member's start
    unless an epoch improves its validation loss, so no member ends worse on validation than where it started."""
    x, y = data
    opts = ClassifierOptions(n_models=2, max_epochs=6, batch_size=512, seed=0, precision="fp32")
    before = PixelEnsemble(DIM, 4, opts)
    before.fit(x[:1500], y[:1500], intensity_columns=2, intensity_weight=0.4)
    more_x, more_y = _blobs([300, 50, 200, 80], seed=7)
    more_x = more_x * 1.5 - 1.0  # other statistics: the standardisation changes
    x2, y2 = torch.cat([x, more_x]), torch.cat([y, more_y])
    after = PixelEnsemble(DIM, 4, opts)
    after.mean, after.std = x2.mean(0), x2.std(0).clamp_min(1e-3)
    import copy
    for net, state in zip(before.members, after._warm_states(before)):
        moved = copy.deepcopy(net)
        moved.load_state_dict(state)
        with torch.no_grad():
            assert torch.allclose(net(before.standardise(x2)), moved(after.standardise(x2)), atol=1e-4)
    # the start's validation loss per member (0 epochs: the members as they are), then one epoch from it
    kept = PixelEnsemble(DIM, 4, opts)
    kept_history = kept.fit(x2, y2, intensity_columns=2, intensity_weight=0.4, warm=before, max_epochs=0)
    start = PixelEnsemble(DIM, 4, opts)
    history = start.fit(x2, y2, intensity_columns=2, intensity_weight=0.4, warm=before, max_epochs=1)
    assert len(history) == 4 and all(h["epochs"] == 1 for h in history)
    assert all(h["val_loss"] <= k["val_loss"] for h, k in zip(history, kept_history))
    assert any(h["val_loss"] < k["val_loss"] for h, k in zip(history, kept_history))  # the epoch did train
    p0, _, _ = kept.classify(x2, kept.folded())  # the kept members are the earlier ones, re-expressed
    p1, _, _ = before.classify(x2, before.folded())
    assert torch.allclose(p0, p1, atol=1e-4)
    p, _, _ = start.classify(x2, start.folded())
    acc, _ = _balanced_accuracy(p.argmax(1), y2)
    assert acc > 0.95, acc


def test_a_warm_start_refuses_an_ensemble_of_other_classes_or_members(trained, data):
    x, y = data
    ens, _ = trained
    with pytest.raises(ValueError, match="warm-start"):  # trained with 3 members, asked for 2
        PixelEnsemble(DIM, 4, ClassifierOptions(n_models=2, max_epochs=1)).fit(x, y, warm=ens)
    with pytest.raises(ValueError, match="warm-start"):  # other classes
        PixelEnsemble(DIM, 3, ClassifierOptions(n_models=3, max_epochs=1)).fit(x, y.clamp_max(2), warm=ens)


def test_standardise_is_the_formula_and_leaves_the_features_alone():
    """`standardise` (computed in place on its own copy): exactly (x - mean) / std in float32, for float32 and
    float16 features, and the caller's features are not changed (float32 on the same device would otherwise be
    the very tensor)."""
    gen = torch.Generator().manual_seed(1)
    ens = PixelEnsemble(6, 3, ClassifierOptions(), torch.device("cpu"))
    ens.mean = torch.randn(6, generator=gen)
    ens.std = torch.rand(6, generator=gen) + 0.1
    for dtype in (torch.float32, torch.float16):
        x = (torch.randn(50, 6, generator=gen) * 3).to(dtype)
        before = x.clone()
        out = ens.standardise(x)
        assert out.dtype == torch.float32
        assert torch.equal(out, (x.float() - ens.mean) / ens.std)
        assert torch.equal(x, before)
