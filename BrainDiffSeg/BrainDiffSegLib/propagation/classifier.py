"""Pixel classifier: an ensemble of small MLPs (Linear-ReLU-BatchNorm, as in Baranchuk et al.) trained with a
class-balanced loss and early stopping; predictions are averaged probabilities with per-pixel uncertainty.

Length: the ensemble's one layout (members stacked for training, folded for inference, re-expressed for a warm
start) is described once here; split into modules, each would have to restate it."""
from __future__ import annotations

import logging
import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..device import use_bf16
from ..errors import CancelledError, EngineError
from ..options import ClassifierOptions

log = logging.getLogger(__name__)


def _linear(n_in: int, n_out: int, generator: torch.Generator | None) -> nn.Linear:
    """nn.Linear with its default initialisation (`reset_parameters`: Kaiming-uniform weights, uniform bias) drawn
    from `generator`, in the same order, so the same seed gives the same weights as `torch.manual_seed(seed)` before
    `nn.Linear(...)` did, without touching torch's global generator (None: the global one, as nn.Linear)."""
    if generator is None:
        return nn.Linear(n_in, n_out)
    layer = nn.utils.skip_init(nn.Linear, n_in, n_out)
    with torch.no_grad():
        nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
        bound = 1 / math.sqrt(n_in) if n_in > 0 else 0
        nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
    return layer


def make_mlp(n_in: int, n_classes: int, hidden: tuple[int, ...], generator: torch.Generator | None = None
             ) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [_linear(n_in, h, generator), nn.ReLU(), nn.BatchNorm1d(h)]
        n_in = h
    layers.append(_linear(n_in, n_classes, generator))
    return nn.Sequential(*layers)


def _stratified_subset(y: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """Indices of at most n pixels, keeping every class (small classes entirely when possible)."""
    if len(y) <= n:
        return torch.randperm(len(y), generator=gen)
    classes = torch.unique(y)
    idx, budget = [], n
    counts = sorted(((int((y == c).sum()), int(c)) for c in classes))
    for i, (cnt, c) in enumerate(counts):
        share = budget // (len(counts) - i)
        take = min(cnt, share)
        members = torch.nonzero(y == c).flatten()
        idx.append(members[torch.randperm(cnt, generator=gen)[:take]])
        budget -= take
    out = torch.cat(idx)
    return out[torch.randperm(len(out), generator=gen)]


def _adamw(params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW with the fused kernel where torch has one for the device (one kernel for all parameters instead of
    a loop over them), else the for-each implementation."""
    params = list(params)
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, foreach=True)


def _member_losses(logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Class-weighted cross-entropy per member, (M,), of logits (M, K, B) and targets (M, B): each member's
    `F.cross_entropy(..., weight=weights)` (the weighted mean)."""
    nll = F.cross_entropy(logits, y, weight=weights, reduction="none")  # (M, B)
    return nll.sum(1) / weights[y].sum(1)


def _rows(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`t[index]` for an index tensor of any shape into t's first axis, by `index_select`: the same values, 6x faster
    than advanced indexing on the training steps' (M, B) batches of bf16 features (1.5 -> 0.25 ms a step, 160
    steps an update; the 2-core CPU)."""
    return t.index_select(0, index.reshape(-1)).view(tuple(index.shape) + tuple(t.shape[1:]))


def _column_groups(columns: list[int]) -> list[tuple[int, int, int]]:
    """(first member, end, columns read) of each run of consecutive members reading the same last columns."""
    groups: list[tuple[int, int, int]] = []
    for m, k in enumerate(columns):
        if groups and groups[-1][2] == k:
            groups[-1] = (groups[-1][0], m + 1, k)
        else:
            groups.append((m, m + 1, k))
    return groups


class _StackedMLPs(nn.Module):
    """Members of `make_mlp`'s layout as one module, features (M, B, C) -> logits (M, K, B). Activations are kept
    as (M, units, B): each Linear is one batched matrix product and each member's BatchNorm1d is one `batch_norm`
    over M * units channels (a view, no copy), so the members' statistics and running averages are exactly those of
    their own BatchNorm1d. A member may read only the last columns of the features (`columns`, per member: the
    hybrid's intensity members); the first layers of members reading the same columns are one batched product.
    `member_state(m)` gives member m's state dict in `make_mlp`'s keys."""

    def __init__(self, nets: list[nn.Sequential], columns: list[int]):
        super().__init__()
        self.n_hidden = (len(nets[0]) - 1) // 3
        self.n_members = len(nets)
        bn = nets[0][2] if self.n_hidden else None
        self.eps, self.momentum = (bn.eps, bn.momentum) if bn is not None else (1e-5, 0.1)

        def stack(get, members=nets):
            return torch.stack([get(net).detach() for net in members]).clone()

        self.groups = _column_groups(columns)
        self.w0 = nn.ParameterList(nn.Parameter(stack(lambda n: n[0].weight, nets[s:e])) for s, e, _ in self.groups)
        self.b0 = nn.ParameterList(nn.Parameter(stack(lambda n: n[0].bias, nets[s:e])[..., None])
                                   for s, e, _ in self.groups)
        lins = [3 * i for i in range(1, self.n_hidden + 1)]  # the later layers, (M, out, in)
        self.weights = nn.ParameterList(nn.Parameter(stack(lambda n, i=i: n[i].weight)) for i in lins)
        self.biases = nn.ParameterList(nn.Parameter(stack(lambda n, i=i: n[i].bias)[..., None]) for i in lins)
        bns = [3 * i + 2 for i in range(self.n_hidden)]
        self.gammas = nn.ParameterList(nn.Parameter(stack(lambda n, i=i: n[i].weight).flatten()) for i in bns)
        self.betas = nn.ParameterList(nn.Parameter(stack(lambda n, i=i: n[i].bias).flatten()) for i in bns)
        for j, i in enumerate(bns):
            self.register_buffer(f"mean{j}", stack(lambda n, i=i: n[i].running_mean).flatten())
            self.register_buffer(f"var{j}", stack(lambda n, i=i: n[i].running_var).flatten())
        self.batches = 0

    def _first(self, h: torch.Tensor) -> torch.Tensor:
        """The first layer of every member on features h (M, C, B), each group on its last columns."""
        c = h.shape[1]
        out = [torch.baddbmm(b, w, h[s:e, c - k:] if k == c else h[s:e, c - k:].contiguous()) for (s, e, k), w, b in zip(self.groups, self.w0, self.b0)]
        return out[0] if len(out) == 1 else torch.cat(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.shape[0]
        h = x.transpose(1, 2)  # (M, C, B)
        for i in range(self.n_hidden):
            h = (self._first(h) if i == 0 else torch.baddbmm(self.biases[i - 1], self.weights[i - 1], h)).relu_()
            units = h.shape[1]
            h = F.batch_norm(h.view(1, m * units, -1), getattr(self, f"mean{i}"), getattr(self, f"var{i}"),
                             self.gammas[i], self.betas[i], self.training, self.momentum, self.eps).view(m, units, -1)
        if self.training and self.n_hidden:
            self.batches += 1
        if self.n_hidden == 0:
            return self._first(h)
        return torch.baddbmm(self.biases[-1], self.weights[-1], h)

    @torch.no_grad()
    def member_state(self, m: int) -> dict[str, torch.Tensor]:
        g = next(j for j, (s, e, _) in enumerate(self.groups) if s <= m < e)
        state: dict[str, torch.Tensor] = {"0.weight": self.w0[g][m - self.groups[g][0]].clone(),
                                          "0.bias": self.b0[g][m - self.groups[g][0], :, 0].clone()}
        for i in range(1, self.n_hidden + 1):
            state[f"{3 * i}.weight"] = self.weights[i - 1][m].clone()
            state[f"{3 * i}.bias"] = self.biases[i - 1][m, :, 0].clone()
        for i in range(self.n_hidden):
            k = 3 * i + 2
            units = self.gammas[i].numel() // self.n_members
            part = slice(m * units, (m + 1) * units)
            state[f"{k}.weight"] = self.gammas[i][part].clone()
            state[f"{k}.bias"] = self.betas[i][part].clone()
            state[f"{k}.running_mean"] = getattr(self, f"mean{i}")[part].clone()
            state[f"{k}.running_var"] = getattr(self, f"var{i}")[part].clone()
            state[f"{k}.num_batches_tracked"] = torch.tensor(self.batches, dtype=torch.long)
        return state


class PixelEnsemble:
    """Ensemble of MLPs over standardised per-pixel features."""

    def __init__(self, n_features: int, n_classes: int, options: ClassifierOptions | None = None,
                 device: torch.device | str = "cpu"):
        self.opt = options or ClassifierOptions()
        self.n_features, self.n_classes = n_features, n_classes
        self.device = torch.device(device)
        self.members: list[nn.Sequential] = []
        self.mean = torch.zeros(n_features)
        self.std = torch.ones(n_features)
        self.bf16 = use_bf16(self.opt.precision, self.device)
        self.member_weights: torch.Tensor | None = None  # (M,) summing to 1; None: the plain mean
        self.columns: list[int] | None = None  # per member: how many of the last feature columns it reads

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        """(x - mean) / std in float32 on the ensemble's device, as a new tensor (x is not changed): one copy, then
        the two operations in place (the same values as `(x - mean) / std`, without two more temporaries)."""
        return x.to(self.device, torch.float32, copy=True).sub_(self.mean).div_(self.std)

    def fit(self, x: torch.Tensor, y: torch.Tensor, progress: Callable[[float], None] | None = None,
            cancelled: Callable[[], bool] | None = None, intensity_columns: int = 0,
            intensity_weight: float = 0.0, min_epoch_samples: int = 0, class_weight_power: float = 1.0,
            warm: "PixelEnsemble | None" = None, max_epochs: int | None = None) -> list[dict]:
        """Train every member on features x (P, C) and class indices y (P,) in 0..n_classes-1.

        The members are trained together, as one stacked model (`_StackedMLPs`: batched matrix products), each on
        its own class-stratified subset, validation split, initialisation and batch order (seeded per member):
        the same updates as training them one after the other, up to float rounding, with a fifth of the steps'
        overhead (docs/results section 8). Each member keeps its best epoch on its validation split; training
        stops when every member has gone `patience` epochs without improving (or after `max_epochs`).

        The hybrid (`PropagationOptions.intensity_weight`): with `intensity_columns` > 0 and 0 < `intensity_weight`
        < 1, a second set of `n_models` members reads the last `intensity_columns` features alone (the intensities)
        and is trained in the same stacked model (formerly a second ensemble trained after the first: the same
        members, seeds and updates, in half the steps); the ensemble's probabilities are the two sets' means mixed
        with that weight. Those members get first layers over all the features with zero weights on the columns
        they do not read, so the ensemble is used like any other (`folded`, `classify`).

        `min_epoch_samples`: an epoch visits at least this many training pixels, each pixel as often as the others
        give or take one (several shuffled passes; seeds, where a few hundred painted pixels would otherwise give an
        epoch of a handful of steps). 0, and whenever the training set is larger: one pass an epoch.

        The loss weighs each class by the inverse of its share of the training pixels, raised to
        `class_weight_power` (1: full balance; 0: none).

        `warm`: an ensemble trained before on the same kind of features and classes (an earlier run on this volume,
        `warm_compatible`): every member starts from its counterpart (first layers re-expressed for this training
        set's standardisation, the same function of the raw features) and keeps it unless an epoch improves its
        validation loss; `max_epochs` (default `options.max_epochs`) bounds the epochs (0 with `warm`: its members
        as they are)."""
        if x.shape[0] != y.shape[0] or x.shape[1] != self.n_features:
            raise ValueError(f"features {tuple(x.shape)} and labels {tuple(y.shape)} do not match "
                             f"{self.n_features} features")
        hybrid = intensity_columns > 0 and intensity_weight > 0
        if hybrid and not (intensity_columns < self.n_features and intensity_weight < 1):
            raise ValueError(f"the intensity members must read fewer than the {self.n_features} features "
                             f"(got {intensity_columns}) with a weight below 1 (got {intensity_weight})")
        xf = x.float()
        self.mean = xf.mean(0).to(self.device)
        self.std = xf.std(0).clamp_min(1e-3).to(self.device)
        del xf
        y = y.long()
        counts = torch.bincount(y, minlength=self.n_classes).float()
        weights = torch.where(counts > 0, counts.sum() / (counts.clamp_min(1) * (counts > 0).sum()), 0.0)
        if class_weight_power != 1.0:
            weights = torch.where(counts > 0, weights ** class_weight_power, 0.0)
        weights = weights.to(self.device)
        n_set = self.opt.n_models
        columns = [self.n_features] * n_set + ([intensity_columns] * n_set if hybrid else [])
        n_models = len(columns)
        gens, nets, trs, vals = [], [], [], []
        for j, k in enumerate(columns):
            m = j % n_set  # a member of the second set has the seeds of the first set's member m
            gen = torch.Generator().manual_seed(self.opt.seed * 1000 + m)
            idx = _stratified_subset(y, self.opt.max_pixels, gen)
            n_val = max(1, int(len(idx) * self.opt.val_fraction))
            vals.append(idx[:n_val])
            trs.append(idx[n_val:])
            init = torch.Generator().manual_seed(self.opt.seed * 1000 + m)  # the member's initial weights
            nets.append(make_mlp(k, self.n_classes, self.opt.hidden, init))
            gens.append(gen)
        if warm is not None:
            if not self.warm_compatible(warm, columns):
                raise ValueError("the warm-start ensemble does not match these features, classes or members")
            for net, start, k in zip(nets, self._warm_states(warm), columns):
                start["0.weight"] = start["0.weight"][:, self.n_features - k:]
                net.load_state_dict(start)
        xs = self.standardise(x)  # (P, C), gathered per member and step
        y = y.to(self.device)
        tr, val = torch.stack(trs).to(self.device), torch.stack(vals).to(self.device)  # (M, n) each
        xva, yva = _rows(xs, val), _rows(y, val)
        if self.bf16:  # the training steps read bf16 (autocast computes in it anyway): half the memory traffic
            xs = xs.to(torch.bfloat16)
        stacked = _StackedMLPs(nets, columns).to(self.device)
        optim = _adamw(stacked.parameters(), self.opt.lr, self.opt.weight_decay)
        n_train = tr.shape[1]
        passes = max(1, math.ceil(min_epoch_samples / max(1, n_train)))
        n_epoch = n_train * passes
        batch = int(min(self.opt.batch_size, max(64, n_epoch // 40)))
        best = [math.inf] * n_models
        best_state = [stacked.member_state(m) for m in range(n_models)]
        if warm is not None:  # the start is a candidate: kept unless an epoch does better on validation
            stacked.eval()
            with torch.no_grad():
                best = [v if math.isfinite(v) else math.inf
                        for v in _member_losses(stacked(xva), yva, weights).tolist()]
        bad, stopped = [0] * n_models, [0] * n_models
        epochs = self.opt.max_epochs if max_epochs is None else int(max_epochs)
        if epochs < (0 if warm is not None else 1):  # 0 with a warm start: its members as they are
            raise ValueError(f"max_epochs must be at least {0 if warm is not None else 1}, got {epochs}")
        epoch = -1
        for epoch in range(epochs):
            if cancelled is not None and cancelled():
                raise CancelledError("classifier training cancelled")
            stacked.train()
            perm = torch.stack([torch.cat([torch.randperm(n_train, generator=g) for _ in range(passes)])
                                for g in gens]).to(self.device)
            order = torch.gather(tr, 1, perm)
            for s in range(0, n_epoch, batch):
                b = order[:, s:s + batch]
                if b.shape[1] < 2:
                    continue
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                    logits = stacked(_rows(xs, b))
                loss = _member_losses(logits.float(), _rows(y, b), weights).sum()
                optim.zero_grad(set_to_none=True)
                loss.backward()
                optim.step()
            stacked.eval()
            with torch.no_grad():
                vloss = _member_losses(stacked(xva), yva, weights).tolist()
            for m in range(n_models):
                if stopped[m]:
                    continue
                if vloss[m] < best[m] - 1e-4:
                    best[m], best_state[m], bad[m] = vloss[m], stacked.member_state(m), 0
                else:
                    bad[m] += 1
                    if bad[m] > self.opt.patience:
                        stopped[m] = epoch + 1
            if progress is not None:
                progress(1.0 if all(stopped) else (epoch + 1) / epochs)
            if all(stopped):
                break
        if progress is not None and epochs == 0:
            progress(1.0)
        diverged = sum(not math.isfinite(b) for b in best)
        if diverged:
            raise EngineError(f"The classifier did not train: the validation loss of {diverged} of its {n_models} "
                              "members is not finite (the features or the labels are damaged); nothing was segmented.")
        self.members = []
        for m, net in enumerate(nets):
            net.load_state_dict(best_state[m])
            if columns[m] < self.n_features:  # first layer over all the features, zero on those it does not read
                lin = net[0]
                padded = nn.utils.skip_init(nn.Linear, self.n_features, lin.out_features)  # no global draw
                with torch.no_grad():
                    padded.weight.zero_()
                    padded.weight[:, self.n_features - columns[m]:] = lin.weight
                    padded.bias.copy_(lin.bias)
                net = nn.Sequential(padded, *list(net)[1:])
            net.to(self.device).eval()
            self.members.append(net)
        self.member_weights, self.columns = None, list(columns)
        if hybrid:
            self.member_weights = torch.cat([torch.full((n_set,), (1 - intensity_weight) / n_set),
                                             torch.full((n_set,), intensity_weight / n_set)])
        history = [{"member": m, "epochs": stopped[m] or epoch + 1, "val_loss": best[m]} for m in range(n_models)]
        log.info("trained %d MLPs on %d pixels (%s); val loss %s", len(self.members), len(y),
                 counts.long().tolist(), [round(h["val_loss"], 3) for h in history])
        return history

    def warm_compatible(self, warm: "PixelEnsemble", columns: list[int]) -> bool:
        """Whether `warm` can start this ensemble's training: trained, the same features, classes, hidden layers and
        members (the same columns read per member)."""
        return (bool(warm.members) and warm.n_features == self.n_features and warm.n_classes == self.n_classes
                and tuple(warm.opt.hidden) == tuple(self.opt.hidden) and list(warm.columns or []) == list(columns))

    @torch.no_grad()
    def _warm_states(self, warm: "PixelEnsemble") -> list[dict[str, torch.Tensor]]:
        """`warm`'s members as state dicts on the CPU, first layers over all the features re-expressed for this
        ensemble's standardisation (`self.mean`, `self.std`): W' = W s_new / s_old, b' = b + W (m_new - m_old) /
        s_old, the same outputs for the same raw features."""
        old_mean, old_std = warm.mean.cpu(), warm.std.cpu()
        new_mean, new_std = self.mean.cpu(), self.std.cpu()
        states = []
        for net in warm.members:
            state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
            w, b = state["0.weight"], state["0.bias"]
            state["0.weight"] = w * (new_std / old_std)[None, :]
            state["0.bias"] = b + w @ ((new_mean - old_mean) / old_std)
            states.append(state)
        return states

    def _folded(self) -> tuple[torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """All members at once, for inference: the first layers stacked, (M*h, C) weights and (M*h,) biases with the
        standardisation folded in, then per later layer (M, out, in) weights and (M, 1, out) biases with the preceding
        BatchNorm (an affine map in eval mode) folded in. Same outputs as the members, up to float rounding."""
        w0, b0, rest = [], [], []
        for net in self.members:
            lin = net[0]
            w = lin.weight / self.std[None, :]
            w0.append(w)
            b0.append(lin.bias - (w * self.mean[None, :]).sum(1))
        layers = [m for m in self.members[0]]
        n_hidden = (len(layers) - 1) // 3
        for i in range(n_hidden):
            ws, bs = [], []
            for net in self.members:
                bn, lin = net[3 * i + 2], net[3 * i + 3]
                a = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                c = bn.bias - a * bn.running_mean
                ws.append(lin.weight * a[None, :])
                bs.append(lin.bias + lin.weight @ c)
            rest.append((torch.stack(ws), torch.stack(bs)[:, None, :]))
        return torch.cat(w0), torch.cat(b0), rest

    def folded(self) -> tuple[torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """The members folded for inference (see `_folded`); RuntimeError if not trained."""
        if not self.members:
            raise RuntimeError("the ensemble is not trained")
        return self._folded()

    def head(self, h: torch.Tensor, folded) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """From first-layer pre-activations h (P, M*h) (bias included) of all members: mean probabilities (P, K),
        normalised entropy (P,) and disagreement (P,) (`combine`). `h` is overwritten (in-place ReLU: a fresh
        output tensor per activation costs more than the activation itself, its pages are faulted in each time)."""
        n = h.shape[0]
        r = h.relu_().view(n, len(self.members), -1).transpose(0, 1)  # (M, P, h)
        rest = folded[2]
        for i, (w, b) in enumerate(rest):
            r = torch.baddbmm(b, r, w.transpose(1, 2))
            if i < len(rest) - 1:
                r.relu_()
        return self.combine(F.softmax(r, dim=2))

    @property
    def input_dtype(self) -> torch.dtype:
        """The dtype in which `classify` multiplies the features (the first layer, most of the work): bfloat16
        with `self.bf16`, else float32. Features built in it are not converted again."""
        return torch.bfloat16 if self.bf16 else torch.float32

    def classify(self, x: torch.Tensor, folded, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`head` of the folded first layer applied to features x (P, C), `chunk` pixels at a time: the temporaries
        (chunk x M*h floats, 10 MB by default) then stay below glibc's mmap threshold and are reused instead of
        being mapped and faulted in anew (measured: 1.5x faster than one large product on the 2-core CPU). With
        `self.bf16` the first layer runs in bfloat16 (see `use_bf16`)."""
        w0, b0 = folded[0], folded[1]
        # members that read only the last columns (the hybrid's intensity members) multiply only those: their other
        # weights are zeros (half the first layer's work of the hybrid's prediction)
        rows = w0.shape[0] // len(self.members)  # first-layer units per member
        dtype = self.input_dtype
        parts = [(w0[a * rows:b * rows, -k:].T.to(dtype).contiguous(), b0[a * rows:b * rows].to(dtype), k)
                 for a, b, k in _column_groups(self.columns or [self.n_features] * len(self.members))]

        def first(v):
            v = v.to(dtype)
            out = [torch.addmm(b, v if k == v.shape[1] else v[:, -k:], w) for w, b, k in parts]
            return (out[0] if len(out) == 1 else torch.cat(out, dim=1)).float()
        if len(x) <= chunk:
            return self.head(first(x), folded)
        outs = [self.head(first(x[s:s + chunk]), folded) for s in range(0, len(x), chunk)]
        return tuple(torch.cat(v) for v in zip(*outs))

    def combine(self, member_p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Members' probabilities (M, P, K) -> mean (P, K), normalised entropy (P,), disagreement (P,), on the CPU."""
        if self.member_weights is None:
            p = member_p.mean(0)
            dis = (member_p.argmax(2) != p.argmax(1)).float().mean(0)
        else:
            w = self.member_weights.to(member_p.device)
            p = torch.einsum("m,mpk->pk", w, member_p)
            dis = torch.einsum("m,mp->p", w, (member_p.argmax(2) != p.argmax(1)).float())
        ent = -(p * p.clamp_min(1e-8).log()).sum(1) / math.log(self.n_classes)
        return p.cpu(), ent.cpu(), dis.cpu()
