"""`braindiffseg inpaint` (healthy tissue inside a mask of a T1) and `braindiffseg train-inpaint` (the conditional
DDPM on healthy masks of the tuning split; resumable, DDP under torchrun)."""
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
    p.add_argument("--data", nargs="+", default=None, help="case folders or folders above them (default: the "
                   "tuning split of $BRAINDIFFSEG_DATA: the test split is kept for the benchmark)")
    p.add_argument("--out", required=True, help="checkpoint folder; an existing run there is resumed")
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--masks-per-case", type=int, default=8)
    p.add_argument("--pseudo3d", action="store_true", help="the pseudo-3D variant (1D convolutions along z)")
    p.add_argument("--depth", type=int, default=5, help="pseudo-3D: adjacent slices per training stack")
    p.add_argument("--channels", type=ints, default=None, help="U-Net widths per level, e.g. '16,32,64'")
    p.add_argument("--crop", type=int, default=64, help="training crop size on the model grid")
    p.add_argument("--context-norm", action="store_true", help="subtract from each window the mean of the known "
                   "tissue around the mask (the model fills relative to its context)")
    p.add_argument("--init-from", default=None, help="start from this inpainting checkpoint (e.g. the 2D model "
                   "for a pseudo-3D run)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--device", default="auto")
    p.add_argument("--max-minutes", type=float, default=0.0, help="save and stop after this long")
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)


def run_inpaint(a) -> int:
    import numpy as np

    from BrainDiffSegLib.errors import InputError
    from BrainDiffSegLib.inpaint import inpaint_volume
    from BrainDiffSegLib.io import check_writable, load_case, load_case_files, load_label, save_volume

    check_writable(a.out, a.force)
    if a.case:
        case = load_case(a.case)
        if "t1" not in case.images:
            raise InputError(f"{a.case}: no T1 sequence (inpainting works on T1)")
    else:
        case = load_case_files({"t1": a.t1})
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
    from BrainDiffSegLib.inpaint_model import InpaintConfig
    from BrainDiffSegLib.inpaint_train import InpaintTrainOptions, train_inpaint
    from BrainDiffSegLib.resources import data_root

    if a.data:
        data = a.data
    else:
        from BrainDiffSegBench.splits import data_split

        data = [str(c) for c in data_split(data_root())["tuning"]]
    kw = {}
    if a.channels:
        groups = InpaintConfig().norm_num_groups
        bad = [c for c in a.channels if c <= 0 or c % groups]
        if bad or len(a.channels) < 2:
            raise InputError(f"--channels {','.join(map(str, a.channels))}: give two or more widths, each a positive "
                             f"multiple of {groups} (the GroupNorm groups); {bad} is not.")
        kw = {"block_out_channels": a.channels, "attention_levels": (len(a.channels) - 1,),
              "attention_head_dim": min(InpaintConfig().attention_head_dim, a.channels[-1])}
    cfg = InpaintConfig(crop=a.crop, pseudo3d=a.pseudo3d, depth=a.depth, context_norm=a.context_norm, **kw)
    if cfg.crop % cfg.multiple:
        raise InputError(f"--crop {a.crop} must be a multiple of {cfg.multiple}")
    try:
        train_inpaint(InpaintTrainOptions(data=data, out=a.out, steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                                          precision=a.precision, device=a.device, seed=a.seed,
                                          max_minutes=a.max_minutes, save_every=a.save_every, config=cfg,
                                          init_from=a.init_from, masks_per_case=a.masks_per_case))
    except FileNotFoundError as exc:
        raise InputError(str(exc)) from exc
    return 0


def run(a) -> int:
    return run_inpaint(a) if a.command == "inpaint" else run_train(a)
