"""Supervised 2D segmentation networks on model-grid slices and their shared training loop.

Used by the propagation benchmark (`unet_patient.py`: a U-Net trained on the annotated slices of one patient) and by
the few-shot experiment (`fewshot.py`: U-Net, TransUNet-style hybrid, fine-tuned noise predictor). Every network
takes the backbone's input layout, (B, 2R, S, S): the R sequence-role channels in [-1, 1] and R presence planes
(`BrainDiffSegLib.model.model_input`), and returns (B, K, S, S) class logits.

Training (`train_segnet`): seeded, random flips / rotations / intensity scaling of the sequence channels (MONAI
transforms, labels moved with the images, nearest-neighbour), optionally random square crops (patch training as in
nnU-Net, half of them centred on a labelled pixel), AdamW with a polynomial learning-rate decay (power 0.9, as
nnU-Net) over `steps`, a fixed batch size; loss DiceCE (MONAI `DiceCELoss`) or class-weighted cross-entropy. With a
`validate` callback training stops early when the validation score has not improved for `patience` evaluations and
the best weights are restored (the history keeps the validation curve). Everything is CPU-feasible at the default
sizes (see the defaults of `SegTrainOptions`).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from BrainDiffSegLib.errors import InputError
from BrainDiffSegLib.model import model_input

log = logging.getLogger(__name__)


@dataclass
class SegTrainOptions:
    steps: int = 150
    batch_size: int = 4
    lr: float = 2e-3
    weight_decay: float = 1e-4
    loss: str = "dicece"  # "dicece" (MONAI DiceCELoss) or "ce" (class-weighted cross-entropy)
    augment: bool = True
    seed: int = 0
    log_every: int = 50
    crop: int = 0  # > 0: train on random crop x crop patches (inference stays on whole slices)
    val_every: int = 25  # with a `validate` callback: evaluate every this many steps
    patience: int = 4  # ... and stop after this many evaluations without an improvement of min_delta
    min_delta: float = 0.002
    min_steps: int = 100  # never stop before this step


# ------------------------------------------------------------------------------------------------ networks

def build_unet2d(in_channels: int, n_classes: int, filters: tuple[int, ...] = (16, 32, 64, 128)) -> nn.Module:
    """A small 2D U-Net in the nnU-Net manner: MONAI `DynUNet` (conv-instance norm-leaky ReLU blocks, strided
    convolutions down, transposed convolutions up), one resolution level per entry of `filters`."""
    from monai.networks.nets import DynUNet

    n = len(filters)
    return DynUNet(spatial_dims=2, in_channels=in_channels, out_channels=n_classes, kernel_size=[3] * n,
                   strides=[1] + [2] * (n - 1), upsample_kernel_size=[2] * (n - 1), filters=list(filters),
                   norm_name="instance", res_block=False)


class TransUNet2D(nn.Module):
    """TransUNet-style hybrid (Chen et al. 2021), small: a CNN encoder (MONAI `UnetBasicBlock`s, stride-2 down) to
    S/8, a stack of pre-norm transformer blocks (torch `TransformerEncoderLayer`) on the S/8 x S/8 tokens (learned position embedding) at the bottleneck,
    and a CNN decoder with skip connections (MONAI `UnetUpBlock`s)."""

    def __init__(self, in_channels: int, n_classes: int, filters: tuple[int, ...] = (16, 32, 64, 128),
                 size: int = 128, n_layers: int = 2, n_heads: int = 4):
        super().__init__()
        from monai.networks.blocks.dynunet_block import UnetBasicBlock, UnetOutBlock, UnetUpBlock

        kw = dict(spatial_dims=2, kernel_size=3, norm_name="instance")
        self.enc = nn.ModuleList([UnetBasicBlock(in_channels=c_in, out_channels=c_out, stride=1 if i == 0 else 2, **kw)
                                  for i, (c_in, c_out) in enumerate(zip((in_channels,) + filters[:-1], filters))])
        hidden = filters[-1]
        n_tokens = (size // 2 ** (len(filters) - 1)) ** 2
        self.pos = nn.Parameter(torch.zeros(1, n_tokens, hidden))
        nn.init.trunc_normal_(self.pos, std=0.02)
        # pre-norm ViT blocks (as TransUNet's). MONAI's TransformerBlock would do the same but needs `einops`, which
        # is not a dependency of this project; torch's own encoder layer is used instead.
        layer = nn.TransformerEncoderLayer(d_model=hidden, nhead=n_heads, dim_feedforward=2 * hidden, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, num_layers=n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        self.dec = nn.ModuleList([UnetUpBlock(in_channels=c_in, out_channels=c_out, stride=2, upsample_kernel_size=2,
                                              **kw)
                                  for c_in, c_out in zip(filters[:0:-1], filters[-2::-1])])
        self.out = UnetOutBlock(spatial_dims=2, in_channels=filters[0], out_channels=n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.enc:
            x = block(x)
            skips.append(x)
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        tokens = self.norm(self.transformer(tokens + self._position(h, w)))
        x = tokens.transpose(1, 2).reshape(b, c, h, w)
        for block, skip in zip(self.dec, skips[-2::-1]):
            x = block(x, skip)
        return self.out(x)

    def _position(self, h: int, w: int) -> torch.Tensor:
        """The learned position embedding for an h x w token grid: bilinearly resized from the square grid it was
        built for when the grid differs (crop training, as ViT fine-tuning at another resolution)."""
        n = self.pos.shape[1]
        if h * w == n:
            return self.pos
        g = int(round(n ** 0.5))
        if g * g != n:
            raise InputError(f"TransUNet2D was built for {n} bottleneck tokens, got {h} x {w}")
        grid = self.pos.transpose(1, 2).reshape(1, -1, g, g)
        return F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)


class NoisePredictorSegmenter(nn.Module):
    """The paper's proposal: the backbone noise predictor (diffusers `UNet2DModel`) with its output head `conv_out`
    replaced by a zero-initialised convolution to the classes; the encoder (time embedding, conv_in, down blocks,
    mid block) is frozen, the decoder (up blocks, output norm) and the new head are trained.

    The input is noised to the fixed timestep `t` with fixed seeded noise, exactly as for the features
    (`FeatureExtractor`: same schedule, same noise for the same `noise_seed`); t = 0 uses the clean images."""

    def __init__(self, unet, cfg, n_classes: int, t: int = 100, noise_seed: int = 0):
        super().__init__()
        from BrainDiffSegLib.model import build_scheduler

        self.unet = unet
        old = unet.conv_out
        unet.conv_out = nn.Conv2d(old.in_channels, n_classes, kernel_size=old.kernel_size, padding=old.padding)
        nn.init.zeros_(unet.conv_out.weight)
        nn.init.zeros_(unet.conv_out.bias)
        for module in (unet.time_proj, unet.time_embedding, unet.conv_in, unet.down_blocks, unet.mid_block):
            for p in module.parameters():
                p.requires_grad_(False)
        self.t = int(t)
        self.n_roles = len(cfg.roles)
        alpha = float(build_scheduler(cfg).alphas_cumprod[self.t]) if self.t > 0 else 1.0
        g = torch.Generator().manual_seed(noise_seed)
        noise = torch.randn((1, len(cfg.roles), cfg.sample_size, cfg.sample_size), generator=g)
        self.register_buffer("noise", noise, persistent=False)
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mirrors `UNet2DModel.forward` (as `features.decoder_activations`): the frozen encoder runs without
        autograd, the decoder and the head with it."""
        u, r = self.unet, self.n_roles
        images, present = x[:, :r], x[:, r:]
        if self.t > 0:
            # a crop (patch training) takes the noise field's top-left corner: the noise is i.i.d., so a patch sees
            # noise of the same distribution as the whole slice at inference
            noise = self.noise[..., :images.shape[-2], :images.shape[-1]]
            images = (self.alpha ** 0.5 * images + (1 - self.alpha) ** 0.5 * noise) * present
        tt = torch.full((len(x),), self.t, device=x.device, dtype=torch.long)
        with torch.no_grad():
            emb = u.time_embedding(u.time_proj(tt).to(dtype=x.dtype))
            h = u.conv_in(torch.cat([images, present], dim=1))
            skips = (h,)
            for block in u.down_blocks:
                h, res = block(hidden_states=h, temb=emb)
                skips += res
            h = u.mid_block(h, emb)
        # torch 2.13 on the CPU crashed (segfault) in the backward pass when no input of the decoder required a
        # gradient; the encoder outputs are made leaves that do (their gradients are computed and discarded)
        emb = emb.detach().requires_grad_(self.training)
        skips = tuple(s.detach().requires_grad_(self.training) for s in skips)
        h = h.detach().requires_grad_(self.training)
        for block in u.up_blocks:
            n = len(block.resnets)
            res, skips = skips[-n:], skips[:-n]
            h = block(h, res, emb)
        return u.conv_out(u.conv_act(u.conv_norm_out(h)))

    def train(self, mode: bool = True):
        super().train(mode)
        # the frozen encoder stays in eval mode (GroupNorm has no running statistics, but dropout would)
        for module in (self.unet.conv_in, self.unet.down_blocks, self.unet.mid_block):
            module.eval()
        return self


# ------------------------------------------------------------------------------------------------ training

def _augmenter(seed: int):
    from monai.transforms import Compose, RandFlipd, RandRotated, RandScaleIntensityd

    keys = ("image", "label")
    aug = Compose([
        RandFlipd(keys, prob=0.5, spatial_axis=0),
        RandFlipd(keys, prob=0.5, spatial_axis=1),
        RandRotated(keys, range_x=np.pi / 12, prob=0.5, mode=("bilinear", "nearest"), padding_mode="border",
                    keep_size=True),
        RandScaleIntensityd("image", factors=0.1, prob=0.5),
    ])
    aug.set_random_state(seed=seed)
    return aug


def class_weights(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Inverse-frequency class weights (mean 1 over the classes present; absent classes 0)."""
    counts = torch.bincount(labels.flatten().long(), minlength=n_classes).float()
    present = counts > 0
    w = torch.where(present, counts.sum() / counts.clamp_min(1), torch.zeros_like(counts))
    return w / w[present].mean()


def _crop(x: torch.Tensor, y: torch.Tensor, size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random size x size patch of one slice x (C, S, S) and its labels y (1, S, S): centred on a random labelled
    (non-background) pixel for half of the draws when there is one (nnU-Net's foreground oversampling), else
    uniform; clipped to the slice."""
    S = x.shape[-1]
    if size >= S:
        return x, y
    fg = torch.nonzero(y[0] > 0)
    if len(fg) and torch.rand((), generator=gen) < 0.5:
        cy, cx = fg[int(torch.randint(len(fg), (), generator=gen))].tolist()
        i = min(max(cy - size // 2, 0), S - size)
        j = min(max(cx - size // 2, 0), S - size)
    else:
        i, j = (int(v) for v in torch.randint(S - size + 1, (2,), generator=gen))
    return x[..., i:i + size, j:j + size], y[..., i:i + size, j:j + size]


def train_segnet(net: nn.Module, images: torch.Tensor, present: torch.Tensor, labels: torch.Tensor,
                 n_classes: int, options: SegTrainOptions | None = None,
                 cancelled: Callable[[], bool] | None = None,
                 validate: Callable[[nn.Module], float] | None = None) -> dict:
    """Train `net` on slices: images (N, R, S, S) in [-1, 1], present (N, R) bool, labels (N, S, S) class indices.

    `options.steps` is the budget (and the length of the learning-rate decay). With `validate` (net in eval mode ->
    a score, higher is better) the net is evaluated every `val_every` steps and at the end; training stops once
    `patience` evaluations in a row (after `min_steps`) have not beaten the best score by `min_delta`, and the
    weights of the best evaluation are restored.

    Returns a history: steps run, seconds, first and last loss, and with `validate` the curve
    ([step, mean training loss since the last evaluation, validation score]), the best step and score, and why
    training stopped ("plateau" or "budget")."""
    from monai.losses import DiceCELoss
    from monai.utils import convert_to_tensor

    opt = options or SegTrainOptions()
    if len(images) == 0:
        raise InputError("no training slices")
    if images.shape[0] != labels.shape[0] or images.shape[-2:] != labels.shape[-2:]:
        raise InputError(f"images {tuple(images.shape)} and labels {tuple(labels.shape)} do not match")
    if opt.loss not in ("dicece", "ce"):
        raise InputError(f"unknown loss {opt.loss!r}; use 'dicece' or 'ce'")
    if opt.crop < 0 or (opt.crop and opt.crop % 8):
        raise InputError(f"crop must be 0 (whole slices) or a positive multiple of 8, got {opt.crop}")
    if validate is not None and (opt.val_every < 1 or opt.patience < 1):
        raise InputError("val_every and patience must be positive")
    torch.manual_seed(opt.seed)
    gen = torch.Generator().manual_seed(opt.seed)
    aug = _augmenter(opt.seed) if opt.augment else None
    labels = labels.long()
    weights = class_weights(labels, n_classes)
    if opt.loss == "dicece":
        loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=True)
    else:
        loss_fn = None
    params = [p for p in net.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=opt.lr, weight_decay=opt.weight_decay)
    sched = torch.optim.lr_scheduler.PolynomialLR(optim, total_iters=opt.steps, power=0.9)
    net.train()
    t0, first, last = time.perf_counter(), None, None
    curve, losses, best, best_state, stale, stopped = [], [], None, None, 0, "budget"

    def evaluate(step: int) -> bool:
        """Validate at `step`; True when training should stop."""
        nonlocal best, best_state, stale
        score = float(validate(net.eval()))
        net.train()
        curve.append([step, round(float(np.mean(losses)), 5) if losses else None, round(score, 5)])
        losses.clear()
        if best is None or score > best[1] + opt.min_delta:
            best, stale = (step, score), 0
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        else:
            stale += 1
        return stale >= opt.patience and step >= opt.min_steps

    step = 0
    for step in range(1, opt.steps + 1):
        if cancelled is not None and cancelled():
            from BrainDiffSegLib.errors import CancelledError

            raise CancelledError("training cancelled")
        idx = torch.randint(len(images), (opt.batch_size,), generator=gen)
        xs, ys = [], []
        for i in idx.tolist():
            x, y = images[i].float(), labels[i][None].float()
            if aug is not None:
                d = aug({"image": x, "label": y})
                # plain tensors: MONAI's MetaTensor must not reach autograd (it crashes the backward of the
                # diffusers attention on CPU)
                x = convert_to_tensor(d["image"], track_meta=False).float()
                y = convert_to_tensor(d["label"], track_meta=False).float()
            if opt.crop:
                x, y = _crop(x, y.round(), opt.crop, gen)
            xs.append(x)
            ys.append(y)
        x = model_input(torch.stack(xs), present[idx].bool())
        y = torch.stack(ys).round().long()  # (B, 1, S, S)
        logits = net(x)
        if loss_fn is not None:
            loss = loss_fn(logits, y)
        else:
            loss = F.cross_entropy(logits, y[:, 0], weight=weights)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        sched.step()
        last = float(loss.detach())
        losses.append(last)
        first = last if first is None else first
        if opt.log_every and step % opt.log_every == 0:
            log.info("step %d/%d loss %.4f (%.1f s)", step, opt.steps, last, time.perf_counter() - t0)
        if validate is not None and step % opt.val_every == 0 and evaluate(step):
            stopped = "plateau"
            break
    if validate is not None and (not curve or curve[-1][0] != step):
        evaluate(step)
    hist = {"steps": step, "seconds": round(time.perf_counter() - t0, 2), "first_loss": first, "last_loss": last}
    if validate is not None:
        net.load_state_dict(best_state)
        hist.update(curve=curve, best_step=best[0], best_score=round(best[1], 5), stopped=stopped)
    net.eval()
    return hist


@torch.no_grad()
def predict_segnet(net: nn.Module, images: torch.Tensor, present: torch.Tensor, batch_size: int = 8,
                   roi: int = 0) -> torch.Tensor:
    """Class probabilities (N, K, S, S) float32 for slices images (N, R, S, S), present (N, R).

    `roi` > 0 (a net trained on roi x roi patches): MONAI's sliding-window inference with patches of that size
    (half overlap, Gaussian blending of the probabilities), as nnU-Net infers. The instance / group normalisation of
    the nets computes its statistics over the patch, so a patch-trained net must see patches: on a BraTS few-shot
    run (N = 5) the noise predictor trained on 64 x 64 patches reached validation Dice 0.11 when applied to whole
    slices."""
    from monai.inferers import sliding_window_inference

    net.eval()
    out = []
    for s in range(0, len(images), batch_size):
        x = model_input(images[s:s + batch_size].float(), present[s:s + batch_size].bool())
        if roi and roi < x.shape[-1]:
            p = sliding_window_inference(x, (roi, roi), batch_size, lambda z: F.softmax(net(z).float(), dim=1),
                                         overlap=0.5, mode="gaussian")
            out.append(torch.as_tensor(p).float())
        else:
            out.append(F.softmax(net(x).float(), dim=1))
    return torch.cat(out) if out else torch.zeros((0,))


# ------------------------------------------------------------------------------------------------ model-grid data

def labels_to_model(grid, labels: np.ndarray, values: list[int]) -> torch.Tensor:
    """Native label slices (N, X, Y) -> class indices (N, S, S) on the model grid (index of `values`): the one-hot
    planes are resampled like the images (bilinear, antialiased) and the most likely class is taken."""
    onehot = np.stack([labels == v for v in values], axis=1).astype(np.float32)
    return grid.to_model(onehot, fill=0.0).argmax(1)


def native_slices(stack: np.ndarray, zs: list[int]) -> np.ndarray:
    """(R, X, Y, Z) stack -> (len(zs), R, X, Y) slices."""
    return np.moveaxis(stack[..., list(zs)], -1, 0)
