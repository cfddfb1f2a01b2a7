"""The diffusion backbone: a diffusers `UNet2DModel` noise predictor (improved-DDPM style: sinusoidal timestep
embedding, residual blocks, self-attention at the lowest resolution, skip connections) and its checkpoints.

One backbone serves any subset of the four sequences: the input holds a channel per role (T1, T1ce, T2, FLAIR) plus a
presence plane per role; training drops random sequences, so a case with one to four sequences is one forward pass.
Checkpoints are a folder with `model.safetensors` (EMA weights) and `config.json`; loading validates both.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

import torch
from diffusers import DDPMScheduler, UNet2DModel
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import CheckpointError
from .constants import ROLES

log = logging.getLogger(__name__)
FORMAT = "braindiffseg-backbone/1"


class CheckpointConfig:
    """Mixin of the checkpointed model configurations (dataclasses with a `training` dict and a `FORMAT` name):
    the architecture fields compared on load, and construction from a config.json dict."""

    FORMAT: ClassVar[str] = FORMAT

    def arch(self) -> dict:
        """Fields that must match between a checkpoint and the code that loads it."""
        d = asdict(self)
        d.pop("training")
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict):
        fields = cls.__dataclass_fields__
        known = {k: v for k, v in d.items() if k in fields}
        for k, v in known.items():
            if isinstance(fields[k].default, tuple):
                known[k] = tuple(v)  # TypeError for a non-sequence: reported as an invalid configuration
        return cls(**known)


@dataclass
class BackboneConfig(CheckpointConfig):
    sample_size: int = 128
    roles: tuple[str, ...] = ROLES
    block_out_channels: tuple[int, ...] = (32, 64, 128, 128)
    layers_per_block: int = 1
    attention_levels: tuple[int, ...] = (3,)  # indices of resolution levels with self-attention
    norm_num_groups: int = 16
    attention_head_dim: int = 32
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"  # the cosine schedule of improved DDPM
    prediction_type: str = "epsilon"
    training: dict = field(default_factory=dict)  # provenance only, not checked

    @property
    def in_channels(self) -> int:
        return 2 * len(self.roles)


def build_unet(cfg: BackboneConfig) -> UNet2DModel:
    n = len(cfg.block_out_channels)
    down = tuple("AttnDownBlock2D" if i in cfg.attention_levels else "DownBlock2D" for i in range(n))
    up = tuple("AttnUpBlock2D" if (n - 1 - i) in cfg.attention_levels else "UpBlock2D" for i in range(n))
    return UNet2DModel(
        sample_size=cfg.sample_size, in_channels=cfg.in_channels, out_channels=len(cfg.roles),
        block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
        down_block_types=down, up_block_types=up, norm_num_groups=cfg.norm_num_groups,
        attention_head_dim=cfg.attention_head_dim)


def build_scheduler(cfg: BackboneConfig) -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                         prediction_type=cfg.prediction_type)


def model_input(images: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """images (B, R, H, W) in [-1, 1], present (B, R) or (R,) bool -> (B, 2R, H, W): absent channels zeroed."""
    b, r, h, w = images.shape
    p = present.to(images.dtype).reshape(-1, r, 1, 1).expand(b, r, h, w)
    return torch.cat([images * p, p], dim=1)


def save_backbone(folder: str | Path, state_dict: dict[str, torch.Tensor], cfg: CheckpointConfig) -> Path:
    """Write `model.safetensors` and `config.json` (any `CheckpointConfig`: the backbone, the inpainting model)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "model.safetensors.tmp"
    save_file({k: v.detach().float().contiguous().cpu() for k, v in state_dict.items()}, str(tmp))
    tmp.replace(folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"format": cfg.FORMAT, **cfg.arch(), "training": cfg.training},
                                                   indent=2))
    return folder


def read_config(folder: str | Path, cls: type = BackboneConfig):
    folder = Path(folder)
    path = folder / "config.json"
    if not folder.is_dir():
        raise CheckpointError(f"Checkpoint folder not found: {folder}")
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: a checkpoint is a folder with config.json and model.safetensors")
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(d, dict):
        raise CheckpointError(f"{path}: expected a JSON object with the checkpoint configuration, "
                              f"got {type(d).__name__}")
    if d.get("format") != cls.FORMAT:
        raise CheckpointError(f"{path}: unknown checkpoint format {d.get('format')!r} (expected {cls.FORMAT!r})")
    try:
        return cls.from_dict(d)
    except TypeError as exc:
        raise CheckpointError(f"{path}: invalid configuration: {exc}") from exc


def load_backbone(folder: str | Path, expect: BackboneConfig | None = None,
                  device: str | torch.device = "cpu") -> tuple[UNet2DModel, BackboneConfig]:
    """Load a checkpoint folder; refuse (with the differing fields named) if it does not match `expect`."""
    return load_checkpoint(folder, BackboneConfig, build_unet, expect, device)


def load_checkpoint(folder: str | Path, cls: type, build: Callable, expect=None, device: str | torch.device = "cpu"):
    """Load a checkpoint folder of configuration class `cls`, building the network with `build(cfg)`."""
    folder = Path(folder)
    cfg = read_config(folder, cls)
    if expect is not None:
        a, b = cfg.arch(), expect.arch()
        diff = {k: (a[k], b[k]) for k in a if a[k] != b.get(k)}
        if diff:
            text = "; ".join(f"{k}: checkpoint {v[0]} vs expected {v[1]}" for k, v in diff.items())
            raise CheckpointError(f"{folder} does not match the requested model: {text}")
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing")
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights} is corrupt or not a safetensors file: {exc}") from exc
    damaged = [k for k, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if damaged:  # e.g. bytes overwritten inside the file: the header still reads, the values do not
        raise CheckpointError(f"{weights} is damaged: {len(damaged)} of {len(state)} tensors hold NaN or infinite "
                              f"values (e.g. {damaged[0]}); restore it from a copy (or reinstall BrainDiffSeg for "
                              "the bundled models).")
    try:
        model = build(cfg)
    except (ValueError, TypeError) as exc:  # e.g. channels not divisible by norm_num_groups, non-integer fields
        raise CheckpointError(f"{folder / 'config.json'}: cannot build a model from this configuration: {exc}"
                              ) from exc
    own = model.state_dict()
    other = [k for k, t in state.items() if k in own and tuple(own[k].shape) != tuple(t.shape)]
    if other:
        k = other[0]
        raise CheckpointError(f"{weights} does not fit the architecture in config.json: {len(other)} tensors have "
                              f"other shapes (e.g. {k}: {tuple(state[k].shape)} in the weights, "
                              f"{tuple(own[k].shape)} in the model); the two files belong to different models.")
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # (shapes are checked above)
        raise CheckpointError(f"{weights} does not fit the architecture in config.json: {exc}") from exc
    if missing or unexpected:
        raise CheckpointError(f"{weights} does not fit the architecture in config.json "
                              f"(missing {len(missing)} tensors, e.g. {missing[:2]}; unexpected {unexpected[:2]})")
    return model.to(device).eval(), cfg


def random_backbone(seed: int = 0, like: str | Path | None = None,
                    device: str | torch.device = "cpu") -> tuple[UNet2DModel, BackboneConfig]:
    """The architecture of checkpoint folder `like` (default: the bundled backbone) with seeded random weights
    (diffusers' own initialisation after `torch.manual_seed(seed)`; the global torch generator is left as it was):
    the random-weights ablation of the benchmarks. The same seed gives the same weights."""
    from .resources import default_checkpoint

    like = Path(like or default_checkpoint())
    cfg = read_config(like)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_unet(cfg)
    cfg.training = {"random_weights_seed": seed, "architecture_of": str(like)}
    return model.to(device).eval(), cfg
