"""Pixel classifier: an ensemble of small MLPs (Linear-ReLU-BatchNorm, as in Baranchuk et al.) trained with a
class-balanced loss and early stopping; predictions are averaged probabilities with per-pixel uncertainty."""
from __future__ import annotations

import copy
import logging
import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import CancelledError
from .options import ClassifierOptions

log = logging.getLogger(__name__)


def make_mlp(n_in: int, n_classes: int, hidden: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(n_in, h), nn.ReLU(), nn.BatchNorm1d(h)]
        n_in = h
    layers.append(nn.Linear(n_in, n_classes))
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

    def _standardise(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(self.device, torch.float32) - self.mean) / self.std

    def fit(self, x: torch.Tensor, y: torch.Tensor, progress: Callable[[float], None] | None = None,
            cancelled: Callable[[], bool] | None = None) -> list[dict]:
        """Train every member on features x (P, C) and class indices y (P,) in 0..n_classes-1."""
        if x.shape[0] != y.shape[0] or x.shape[1] != self.n_features:
            raise ValueError(f"features {tuple(x.shape)} and labels {tuple(y.shape)} do not match "
                             f"{self.n_features} features")
        xf = x.float()
        self.mean = xf.mean(0).to(self.device)
        self.std = xf.std(0).clamp_min(1e-3).to(self.device)
        del xf
        y = y.long()
        counts = torch.bincount(y, minlength=self.n_classes).float()
        weights = torch.where(counts > 0, counts.sum() / (counts.clamp_min(1) * (counts > 0).sum()), 0.0)
        weights = weights.to(self.device)
        history = []
        self.members = []
        for m in range(self.opt.n_models):
            gen = torch.Generator().manual_seed(self.opt.seed * 1000 + m)
            torch.manual_seed(self.opt.seed * 1000 + m)
            idx = _stratified_subset(y, self.opt.max_pixels, gen)
            n_val = max(1, int(len(idx) * self.opt.val_fraction))
            val, tr = idx[:n_val], idx[n_val:]
            xtr, ytr = self._standardise(x[tr]), y[tr].to(self.device)
            xva, yva = self._standardise(x[val]), y[val].to(self.device)
            net = make_mlp(self.n_features, self.n_classes, self.opt.hidden).to(self.device)
            optim = torch.optim.AdamW(net.parameters(), lr=self.opt.lr, weight_decay=self.opt.weight_decay)
            best, best_state, bad = math.inf, copy.deepcopy(net.state_dict()), 0
            batch = int(min(self.opt.batch_size, max(64, len(xtr) // 40)))
            for epoch in range(self.opt.max_epochs):
                if cancelled is not None and cancelled():
                    raise CancelledError("classifier training cancelled")
                net.train()
                perm = torch.randperm(len(xtr), generator=gen).to(self.device)
                for s in range(0, len(perm), batch):
                    b = perm[s:s + batch]
                    if len(b) < 2:
                        continue
                    loss = F.cross_entropy(net(xtr[b]), ytr[b], weight=weights)
                    optim.zero_grad(set_to_none=True)
                    loss.backward()
                    optim.step()
                net.eval()
                with torch.no_grad():
                    vloss = float(F.cross_entropy(net(xva), yva, weight=weights))
                if vloss < best - 1e-4:
                    best, best_state, bad = vloss, copy.deepcopy(net.state_dict()), 0
                else:
                    bad += 1
                    if bad > self.opt.patience:
                        break
            net.load_state_dict(best_state)
            net.eval()
            self.members.append(net)
            history.append({"member": m, "epochs": epoch + 1, "val_loss": best})
            if progress is not None:
                progress((m + 1) / self.opt.n_models)
        log.info("trained %d MLPs on %d pixels (%s); val loss %s", len(self.members), len(y),
                 counts.long().tolist(), [round(h["val_loss"], 3) for h in history])
        return history

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

    @torch.no_grad()
    def predict_factored(self, diffusion: torch.Tensor | list[torch.Tensor] | None,
                         sample_native: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                         mask: torch.Tensor, other: torch.Tensor | None,
                         slices_per_chunk: int = 2) -> tuple[torch.Tensor, ...]:
        """Predict native pixels without materialising their upsampled diffusion features.

        The first layer is linear and bilinear resampling is linear, so W·up(F) = up(W·F): the members' first layers
        (stacked) are applied to the diffusion features on the model grid, and only their outputs are resampled at
        the native pixels of `mask` (B, X, Y) by `sample_native` (ModelGrid.sample_native, giving (P, M*h)); the
        native features `other` (P, Ci) (intensities) are added through their own columns. `diffusion` is either the
        maps (B, Cd, S, S) or, cheaper, the decoder activations at each block's own resolution
        (`FeatureExtractor.diffusion_parts`, in channel order): the layer is then applied at the block's resolution
        and its outputs upsampled to S x S, as the features were. The standardisation and the BatchNorms are folded
        into the weights, the members run as one batched matrix product, and the first layer is a plain matrix
        product on channels-last data (the gather of native pixels then reads contiguous rows). Works through
        `slices_per_chunk` slices at a time to bound memory. Returns the same as `predict` for the pixels of `mask`,
        slice-major, up to float rounding.
        """
        folded = self.folded()
        parts = [diffusion] if isinstance(diffusion, torch.Tensor) else list(diffusion or [])
        layer = self.first_layer_parts(parts, folded[0])
        size = max((p.shape[-2:] for p in parts), default=None)
        n_d = sum(p.shape[1] for p in parts)
        counts = mask.flatten(1).sum(1).tolist()
        out, start = [], 0
        for s in range(0, mask.shape[0], slices_per_chunk):
            m = mask[s:s + slices_per_chunk]
            n = int(sum(counts[s:s + slices_per_chunk]))
            h = folded[1].expand(n, -1).clone()
            if layer:
                h += sample_native(self.resized_sum([y[s:s + slices_per_chunk] for y in layer], size), m)
            if other is not None:
                h += self.other_columns(other[start:start + n], folded[0], n_d)
            start += n
            out.append(self.head(h, folded))
        return tuple(torch.cat(v) for v in zip(*out))

    def folded(self) -> tuple[torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """The members folded for inference (see `_folded`); RuntimeError if not trained."""
        if not self.members:
            raise RuntimeError("the ensemble is not trained")
        return self._folded()

    @staticmethod
    def first_layer_parts(parts: list[torch.Tensor], w0: torch.Tensor) -> list[torch.Tensor]:
        """W_i · part_i for each (B, C_i, h_i, w_i) part (the columns of part i, in order): (B, M*h, h_i, w_i)
        tensors in channels-last memory, at each part's own resolution (no bias)."""
        out, offset = [], 0
        for part in parts:
            b, c, h, w = part.shape
            x = part.permute(0, 2, 3, 1).reshape(-1, c)
            out.append((x @ w0[:, offset:offset + c].T).view(b, h, w, -1).permute(0, 3, 1, 2))
            offset += c
        return out

    @staticmethod
    def resized_sum(layer: list[torch.Tensor], size) -> torch.Tensor:
        """sum_i up_size(layer_i): the first layer's output of the diffusion features on a size x size grid."""
        total = None
        for y in layer:
            if tuple(y.shape[-2:]) != tuple(size):
                y = F.interpolate(y, size=tuple(size), mode="bilinear", align_corners=False)
            total = y if total is None else total + y
        return total

    def other_columns(self, other: torch.Tensor, w0: torch.Tensor, n_diffusion: int) -> torch.Tensor:
        """The first layer's share (P, M*h) of the native features `other` (P, Ci), the columns after the first
        `n_diffusion`."""
        return other.to(self.device, torch.float32) @ w0[:, n_diffusion:].T

    def head(self, h: torch.Tensor, folded) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """From first-layer pre-activations h (P, M*h) (bias included) of all members: mean probabilities (P, K),
        normalised entropy (P,) and disagreement (P,) (as `predict`)."""
        n = h.shape[0]
        r = F.relu(h).view(n, len(self.members), -1).transpose(0, 1)  # (M, P, h)
        rest = folded[2]
        for i, (w, b) in enumerate(rest):
            r = torch.baddbmm(b, r, w.transpose(1, 2))
            if i < len(rest) - 1:
                r = F.relu(r)
        return self._combine(F.softmax(r, dim=2))

    def _combine(self, member_p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Members' probabilities (M, P, K) -> mean (P, K), normalised entropy (P,), disagreement (P,), on the CPU."""
        p = member_p.mean(0)
        ent = -(p * p.clamp_min(1e-8).log()).sum(1) / math.log(self.n_classes)
        dis = (member_p.argmax(2) != p.argmax(1)).float().mean(0)
        return p.cpu(), ent.cpu(), dis.cpu()

    @torch.no_grad()
    def predict(self, x: torch.Tensor, chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean probabilities (P, K) float32, normalised entropy (P,) and member disagreement (P,) in [0, 1]."""
        if not self.members:
            raise RuntimeError("the ensemble is not trained")
        probs, ent, dis = [], [], []
        for s in range(0, len(x), chunk):
            xb = self._standardise(x[s:s + chunk])
            member_p = torch.stack([F.softmax(net(xb), dim=1) for net in self.members])  # (M, B, K)
            for out, value in zip((probs, ent, dis), self._combine(member_p)):
                out.append(value)
        return torch.cat(probs), torch.cat(ent), torch.cat(dis)
