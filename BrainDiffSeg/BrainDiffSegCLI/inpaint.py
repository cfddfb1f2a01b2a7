"""`braindiffseg inpaint` (healthy tissue inside a mask of a T1), `braindiffseg train-inpaint` (the conditional
DDPM on healthy masks of the tuning split; resumable, DDP under torchrun) and `braindiffseg pack-crops` (those training
crops in one compact file that `train-inpaint --crops` trains from, e.g. on a GPU machine that has neither the data
nor nibabel: scripts/gpu_prepare.sh, scripts/train_inpaint_gpu.sh)."""
from __future__ import annotations

import logging
import time
from pathlib import Path

log = logging.getLogger("braindiffseg")


def add_parsers(sub) -> None:
    from .train import ints

    p = sub.add_parser("inpaint", help="synthesise healthy tissue inside a mask of a T1 volume (conditional DDPM)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--case", help="case folder (its T1 is used)")
    src.add_argument("--t1", help="T1 NIfTI file")
    p.add_argument("--mask", required=True, help="mask NIfTI on the grid of the T1 (non-zero: inpaint)")
    p.add_argument("--out", required=True, help="output NIfTI (the T1 with the mask inpainted)")
    p.add_argument("--steps", type=int, default=25, help="DDIM sampling steps")
    p.add_argument("--samples", type=int, default=None, help="independent samples averaged inside the mask "
                   "(smoother and closer to the truth on average; the time grows with it; default: the engine's "
                   "DEFAULT_SAMPLES, 4)")
    p.add_argument("--strength", type=float, default=None, help="fraction of the diffusion trajectory sampled, "
                   "starting from the distance-weighted fill of the mask noised to that level (1: from pure noise; "
                   "default: the engine's DEFAULT_STRENGTH, 0.15)")
    p.add_argument("--model", default=None, help="inpainting checkpoint folder (default: the bundled model)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--force", action="store_true", help="overwrite --out")

    p = sub.add_parser("train-inpaint", help="train the inpainting DDPM on healthy masks (resumable)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", nargs="+", default=None, help="case folders or folders above them (default: the "
                     "tuning split of $BRAINDIFFSEG_DATA: the test split is kept for the benchmark)")
    src.add_argument("--crops", default=None, help="train on this crop pack (`braindiffseg pack-crops`) instead; "
                     "its crop size and context normalisation are the run's (--masks-per-case does not apply)")
    p.add_argument("--out", required=True, help="checkpoint folder; an existing run there is resumed")
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--masks-per-case", type=int, default=8)
    p.add_argument("--pseudo3d", action="store_true", help="the pseudo-3D variant (1D convolutions along z)")
    p.add_argument("--depth", type=int, default=5, help="pseudo-3D: adjacent slices per training stack")
    p.add_argument("--channels", type=ints, default=None, help="U-Net widths per level, e.g. '16,32,64'")
    p.add_argument("--crop", type=int, default=None, help="training crop size on the model grid (default 64, or "
                   "the --crops pack's)")
    p.add_argument("--context-norm", action="store_true", help="subtract from each window the mean of the known "
                   "tissue around the mask (the model fills relative to its context; on with a --crops pack cut so)")
    p.add_argument("--init-from", default=None, help="start from this inpainting checkpoint (e.g. the 2D model "
                   "for a pseudo-3D run)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--device", default="auto")
    p.add_argument("--max-minutes", type=float, default=0.0, help="save and stop after this long")
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("pack-crops", help="write the inpainting training crops of --data to one compact file for "
                                          "`train-inpaint --crops` (uint8, xz-compressed)")
    p.add_argument("--data", nargs="+", default=None, help="case folders or folders above them (default: the "
                   "tuning split of $BRAINDIFFSEG_DATA, as train-inpaint)")
    p.add_argument("--out", required=True, help="output .npz file")
    p.add_argument("--masks-per-case", type=int, default=8, help="healthy masks per case (whole masks are packed: "
                   "the size grows with it, ~0.34 MiB per mask of each of the 15 tuning cases at 64 px)")
    p.add_argument("--mask-seed", type=int, default=0)
    p.add_argument("--like", default=None, help="cut the crops for this inpainting checkpoint's geometry (crop, "
                   "max_in_plane, context_norm), e.g. Resources/Models/inpaint; overrides --crop and --context-norm")
    p.add_argument("--crop", type=int, default=64, help="crop size on the model grid")
    p.add_argument("--context-norm", action="store_true", help="crops normalised by their context mean")
    p.add_argument("--cache", default=None, help="folder for the float16 crop cache of build_crops (rebuilt if "
                   "absent)")


def _default_data(data: list[str] | None) -> list[str]:
    """--data, or the tuning split of $BRAINDIFFSEG_DATA."""
    if data:
        return data
    from BrainDiffSegLib.splits import data_split
    from BrainDiffSegLib.resources import data_root

    return [str(c) for c in data_split(data_root())["tuning"]]


def run_inpaint(a) -> int:
    import numpy as np

    from BrainDiffSegLib.errors import InputError
    from BrainDiffSegLib.inpainting.inpaint import inpaint_volume
    from BrainDiffSegLib.io import load_case, load_case_files, load_label, save_volume
    from BrainDiffSegLib.outputs import check_outputs

    if a.case:
        case = load_case(a.case)
        if "t1" not in case.images:
            raise InputError(f"{a.case}: no T1 sequence (inpainting works on T1)")
    else:
        case = load_case_files({"t1": a.t1})
    check_outputs({"--out": (a.out, "volume")}, inputs=[*case.paths.values(), a.mask], force=a.force)
    try:
        mask = load_label(a.mask, case.native(case.images["t1"]).shape, case.affine, case.axial_axis)
    except InputError as exc:
        raise InputError(f"inpainting mask: {exc}") from exc
    start = time.time()
    last = [-1]

    def progress(stage: str, fraction: float) -> None:
        pct = int(100 * fraction)
        if stage != "sampling" or pct // 20 != last[0]:
            last[0] = pct // 20
            log.info("%s %d %%", stage, pct)

    extra = {k: v for k, v in (("samples", a.samples), ("strength", a.strength)) if v is not None}
    out = inpaint_volume(case.images["t1"], mask > 0, model=a.model, steps=a.steps, seed=a.seed, progress=progress,
                         device=a.device, **extra)
    save_volume(case, out, a.out, force=a.force, dtype=np.float32)
    log.info("inpainted %d voxels in %.1f s", int((mask > 0).sum()), time.time() - start)
    return 0


def run_train(a) -> int:
    from BrainDiffSegLib.errors import InputError
    from BrainDiffSegLib.inpainting.model import InpaintConfig
    from BrainDiffSegLib.training.inpaint import InpaintTrainOptions, packed_crop_info, train_inpaint

    kw = {}
    if a.crops:
        data = []
        with_crops = packed_crop_info(a.crops)  # its geometry (a mismatch with --crop fails in train_inpaint)
        kw["max_in_plane"] = with_crops["max_in_plane"]
        crop = a.crop or with_crops["crop"]
        context_norm = a.context_norm or with_crops["context_norm"]
    else:
        data = _default_data(a.data)
        crop, context_norm = a.crop or 64, a.context_norm
    if a.channels:
        groups = InpaintConfig().norm_num_groups
        bad = [c for c in a.channels if c <= 0 or c % groups]
        if bad or len(a.channels) < 2:
            raise InputError(f"--channels {','.join(map(str, a.channels))}: give two or more widths, each a positive "
                             f"multiple of {groups} (the GroupNorm groups); {bad} is not.")
        kw.update({"block_out_channels": a.channels, "attention_levels": (len(a.channels) - 1,),
                   "attention_head_dim": min(InpaintConfig().attention_head_dim, a.channels[-1])})
    cfg = InpaintConfig(crop=crop, pseudo3d=a.pseudo3d, depth=a.depth, context_norm=context_norm, **kw)
    if cfg.crop % cfg.multiple:
        raise InputError(f"--crop {crop} must be a multiple of {cfg.multiple}")
    try:
        train_inpaint(InpaintTrainOptions(data=data, out=a.out, steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                                          precision=a.precision, device=a.device, seed=a.seed,
                                          max_minutes=a.max_minutes, save_every=a.save_every, config=cfg,
                                          init_from=a.init_from, masks_per_case=a.masks_per_case,
                                          crops=a.crops))
    except FileNotFoundError as exc:
        raise InputError(str(exc)) from exc
    return 0


def run_pack(a) -> int:
    """`pack-crops`: build_crops on --data (or the tuning split) for the geometry of --like (or --crop,
    --context-norm), then pack_crops."""
    import os

    from BrainDiffSegLib.errors import InputError
    from BrainDiffSegLib.inpainting.model import InpaintConfig
    from BrainDiffSegLib.training.inpaint import build_crops, pack_crops
    from BrainDiffSegLib.io import find_cases
    from BrainDiffSegLib.model import read_config

    if a.masks_per_case < 1:
        raise InputError(f"--masks-per-case must be at least 1, not {a.masks_per_case}")
    if a.like:
        like = read_config(Path(a.like), InpaintConfig)
        cfg = InpaintConfig(crop=like.crop, max_in_plane=like.max_in_plane, context_norm=like.context_norm)
    else:
        cfg = InpaintConfig(crop=a.crop, context_norm=a.context_norm)
    if cfg.crop % cfg.multiple:
        raise InputError(f"--crop {cfg.crop} must be a multiple of {cfg.multiple}")
    data = _default_data(a.data)
    cases = find_cases(data)
    if not cases:
        raise InputError(f"No case folders below {data}")
    clean, masks, block, records = build_crops(cases, cfg, a.masks_per_case, a.mask_seed,
                                               Path(a.cache) if a.cache else None)
    n = pack_crops(Path(a.out), clean, masks, block, records, cfg, masks_per_case=a.masks_per_case,
                   mask_seed=a.mask_seed, data=[str(c) for c in cases])
    log.info("%d crops of %d px (%d masks of %d cases, %s context normalisation) -> %s (%.2f MiB)", n, cfg.crop,
             len(records), len({r["case"] for r in records}), "with" if cfg.context_norm else "without", a.out,
             os.path.getsize(a.out) / 2**20)
    return 0


def run(a) -> int:
    if a.command == "pack-crops":
        return run_pack(a)
    return run_inpaint(a) if a.command == "inpaint" else run_train(a)
