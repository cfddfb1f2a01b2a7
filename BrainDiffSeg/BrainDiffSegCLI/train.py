"""`braindiffseg train-ddpm`: train the diffusion backbone on unlabelled slices (resumable; DDP under torchrun);
`braindiffseg pack-slices`: write those slices to one compact file that `train-ddpm --slices` trains from (e.g. on a
GPU machine that has neither the data nor nibabel: scripts/gpu_prepare.sh, scripts/train_gpu.sh)."""
from __future__ import annotations

import logging
import os
from pathlib import Path


def ints(s: str) -> tuple[int, ...]:
    return tuple(int(v) for v in s.replace(",", " ").split())


def add_parser(sub) -> None:
    p = sub.add_parser("train-ddpm", help="train the diffusion backbone on unlabelled slices (resumable)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", nargs="+", help="folders with case folders below them")
    src.add_argument("--slices", help="train on this packed slice set (`braindiffseg pack-slices`) instead")
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

    p = sub.add_parser("pack-slices", help="write the training slices of --data to one compact file for "
                                           "`train-ddpm --slices` (uint8, compressed)")
    p.add_argument("--data", nargs="+", required=True, help="folders with case folders below them")
    p.add_argument("--out", required=True, help="output .npz file")
    p.add_argument("--every", type=int, default=1, help="keep every N-th slice (adjacent slices are much alike)")
    p.add_argument("--offset", type=int, default=0, help="with --every: start at this slice (another subset)")
    p.add_argument("--size", type=int, default=128, help="slice size (the backbone's sample_size)")
    p.add_argument("--cache", default=None, help="folder for the float16 slice-set cache (rebuilt if absent)")


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
    from BrainDiffSegLib.training.ddpm import TrainOptions, train_ddpm
    from BrainDiffSegLib.errors import InputError

    if a.command == "pack-slices":
        return pack(a)
    cfg = channels_config(a.channels) if a.channels else None
    try:
        train_ddpm(TrainOptions(data=a.data or [], out=a.out, steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                                crop=a.crop, precision=a.precision, device=a.device, seed=a.seed,
                                max_minutes=a.max_minutes, save_every=a.save_every, config=cfg,
                                init_from=a.init_from, slices=a.slices))
    except FileNotFoundError as exc:  # no case folders below --data
        raise InputError(str(exc)) from exc
    return 0


def pack(a) -> int:
    from BrainDiffSegLib.errors import InputError
    from BrainDiffSegLib.io import find_cases
    from BrainDiffSegLib.training.slices import build_slice_set, pack_slices

    if a.every < 1 or not 0 <= a.offset < a.every:
        raise InputError(f"--every must be at least 1 and --offset in [0, every), not {a.every} and {a.offset}")
    cases = find_cases(a.data)
    if not cases:
        raise InputError(f"No case folders below {a.data}")
    images, present = build_slice_set(cases, a.size, Path(a.cache) if a.cache else None)
    n = pack_slices(Path(a.out), images, present, every=a.every, offset=a.offset, cases=len(cases), data=a.data)
    logging.getLogger("braindiffseg").info("%d of %d slices from %d cases -> %s (%.1f MiB)", n, len(images),
                                           len(cases), a.out, os.path.getsize(a.out) / 2**20)
    return 0
