"""The conditional DDPM of healthy-tissue inpainting (Durrer et al., DGM4MICCAI 2024), 2D and pseudo-3D.

Input channels: the noisy image, the voided image (0 intensity inside the mask, i.e. -1 on the model's scale) and the
mask; the output is the noise of the image channel (epsilon prediction), cosine schedule. A diffusers `UNet2DModel`.
The pseudo-3D variant follows each residual block's 2D convolutions with a 1D convolution along z over a stack of
adjacent slices, initialised as the identity, so that it starts as the 2D model (and can start from its weights).
Checkpoints: `model.safetensors` + `config.json` (format `braindiffseg-inpaint/1`), validated on load.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from torch import nn

from ..model import CheckpointConfig, load_checkpoint


@dataclass
class InpaintConfig(CheckpointConfig):
    FORMAT: ClassVar[str] = "braindiffseg-inpaint/1"
    crop: int = 64  # training crop (model pixels); inference crops adapt to the mask, multiples of `multiple`
    block_out_channels: tuple[int, ...] = (16, 32, 64)
    layers_per_block: int = 1
    attention_levels: tuple[int, ...] = (2,)
    norm_num_groups: int = 8
    attention_head_dim: int = 32
    pseudo3d: bool = False
    z_kernel: int = 3  # pseudo-3D: kernel of the 1D convolutions along z
    depth: int = 5  # pseudo-3D: adjacent slices per training stack
    max_in_plane: int = 128  # volumes larger in plane are downsampled by an integer factor to at most this
    # subtract the mean of each case's known tissue around the mask (`inpaint.prepare`), so that the model fills
    # relative to its context instead of with a prior brightness learnt from other cases (values in [-2, 2])
    context_norm: bool = False
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "epsilon"
    training: dict = field(default_factory=dict)

    @property
    def multiple(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


class ZConv(nn.Module):
    """A 2D convolution followed by a 1D convolution along z across the `depth` slices of each stack in the batch
    (batch = stacks x depth, slices of a stack consecutive); the 1D convolution starts as the identity."""

    def __init__(self, conv: nn.Conv2d, kernel: int, state: dict):
        super().__init__()
        self.conv = conv
        c = conv.out_channels
        self.zconv = nn.Conv1d(c, c, kernel, padding=kernel // 2)
        with torch.no_grad():
            self.zconv.weight.zero_()
            self.zconv.weight[:, :, kernel // 2] = torch.eye(c)
            self.zconv.bias.zero_()
        self.state = state  # shared with the model: {"depth": slices per stack}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        d = self.state["depth"]
        n, c, h, w = y.shape
        if d <= 1:
            return y
        z = y.view(n // d, d, c, h, w).permute(0, 3, 4, 2, 1).reshape(-1, c, d)
        z = self.zconv(z)
        return z.view(n // d, h, w, c, d).permute(0, 4, 3, 1, 2).reshape(n, c, h, w)


class InpaintNet(nn.Module):
    """The noise predictor: `forward(x (N, 3, H, W), t (N,), depth=1)`; with pseudo-3D, N = stacks x depth."""

    def __init__(self, cfg: InpaintConfig):
        super().__init__()
        n = len(cfg.block_out_channels)
        down = tuple("AttnDownBlock2D" if i in cfg.attention_levels else "DownBlock2D" for i in range(n))
        up = tuple("AttnUpBlock2D" if (n - 1 - i) in cfg.attention_levels else "UpBlock2D" for i in range(n))
        self.unet = UNet2DModel(
            sample_size=cfg.crop, in_channels=3, out_channels=1, block_out_channels=tuple(cfg.block_out_channels),
            layers_per_block=cfg.layers_per_block, down_block_types=down, up_block_types=up,
            norm_num_groups=cfg.norm_num_groups, attention_head_dim=cfg.attention_head_dim)
        self.state = {"depth": 1}
        if cfg.pseudo3d:
            for module in list(self.unet.modules()):
                if type(module).__name__ == "ResnetBlock2D":
                    module.conv1 = ZConv(module.conv1, cfg.z_kernel, self.state)
                    module.conv2 = ZConv(module.conv2, cfg.z_kernel, self.state)

    def forward(self, x: torch.Tensor, t: torch.Tensor, depth: int = 1) -> torch.Tensor:
        if len(x) % depth:
            raise ValueError(f"batch of {len(x)} slices is not a whole number of stacks of {depth}")
        self.state["depth"] = depth
        try:
            return self.unet(x, t).sample
        finally:
            self.state["depth"] = 1


def weights_from_2d(state_2d: dict[str, torch.Tensor], net: InpaintNet) -> dict[str, torch.Tensor]:
    """A 2D model's state dict renamed for a pseudo-3D `net` (its z-convolutions keep their identity start)."""
    own = net.state_dict()
    out = dict(own)
    for k, v in state_2d.items():
        for cand in (k, k.replace(".conv1.", ".conv1.conv.").replace(".conv2.", ".conv2.conv.")):
            if cand in own and own[cand].shape == v.shape:
                out[cand] = v
                break
    return out


def build_inpaint_net(cfg: InpaintConfig) -> InpaintNet:
    return InpaintNet(cfg)


def train_scheduler(cfg: InpaintConfig) -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                         prediction_type=cfg.prediction_type)


def sample_range(cfg: InpaintConfig) -> float:
    """The bound of the model's image values: [-1, 1], or [-2, 2] with context normalisation."""
    return 2.0 if cfg.context_norm else 1.0


def sampling_scheduler(cfg: InpaintConfig, steps: int) -> DDIMScheduler:
    s = DDIMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                      prediction_type=cfg.prediction_type, clip_sample=True, set_alpha_to_one=True,
                      clip_sample_range=sample_range(cfg))
    s.set_timesteps(steps)
    return s


def load_inpaint_model(folder: str | Path, device: str | torch.device = "cpu") -> tuple[InpaintNet, InpaintConfig]:
    return load_checkpoint(folder, InpaintConfig, build_inpaint_net, None, device)


def model_input(noisy: torch.Tensor, voided: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) each -> (N, 3, H, W)."""
    return torch.cat([noisy, voided, mask], dim=1)
