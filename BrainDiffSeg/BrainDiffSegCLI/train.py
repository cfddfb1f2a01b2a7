"""`braindiffseg train-ddpm`: train the diffusion backbone on unlabelled slices (resumable; DDP under torchrun)."""
from __future__ import annotations


def ints(s: str) -> tuple[int, ...]:
    return tuple(int(v) for v in s.replace(",", " ").split())


def add_parser(sub) -> None:
    p = sub.add_parser("train-ddpm", help="train the diffusion backbone on unlabelled slices (resumable)")
    p.add_argument("--data", nargs="+", required=True, help="folders with case folders below them")
    p.add_argument("--out", required=True, help="checkpoint folder; an existing run there is resumed")
    p.add_argument("--steps", type=int, default=10000)
    p.add_argument("--batch-size", type=int, default=16, help="global batch (split over DDP processes)")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--crop", type=int, default=0, help="train on random crops of this size (0: full slices)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--device", default="auto")
    p.add_argument("--max-minutes", type=float, default=0.0, help="save and stop after this long")
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--channels", type=ints, default=None, help="U-Net widths per level, e.g. '32,64,128,128'")
    p.add_argument("--init-from", default=None,
                   help="start from this checkpoint's weights (e.g. Resources/Models/backbone) instead of random ones")


def channels_config(channels: tuple[int, ...]):
    """The default architecture with other widths: self-attention stays at the lowest resolution."""
    from BrainDiffSegLib.errors import InputError
    from BrainDiffSegLib.model import BackboneConfig

    base = BackboneConfig()
    cfg = BackboneConfig(block_out_channels=tuple(channels), attention_levels=(len(channels) - 1,))
    bad = [c for c in channels if c <= 0 or c % base.norm_num_groups]
    if bad:
        raise InputError(f"--channels {','.join(map(str, channels))}: every width must be a positive multiple of "
                         f"{base.norm_num_groups} (the GroupNorm groups); {bad} is not.")
    if channels[-1] < base.attention_head_dim:
        raise InputError(f"--channels {','.join(map(str, channels))}: the last width ({channels[-1]}, with "
                         f"self-attention) must be at least the attention head size {base.attention_head_dim}.")
    return cfg


def run(a) -> int:
    from BrainDiffSegLib.ddpm_train import TrainOptions, train_ddpm
    from BrainDiffSegLib.errors import InputError

    cfg = channels_config(a.channels) if a.channels else None
    try:
        train_ddpm(TrainOptions(data=a.data, out=a.out, steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                                crop=a.crop, precision=a.precision, device=a.device, seed=a.seed,
                                max_minutes=a.max_minutes, save_every=a.save_every, config=cfg,
                                init_from=a.init_from))
    except FileNotFoundError as exc:  # no case folders below --data
        raise InputError(str(exc)) from exc
    return 0
