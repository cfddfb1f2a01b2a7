"""Training of the inpainting DDPM (`braindiffseg train-inpaint`): crops of T1 slices around healthy masks (never
tumour inside the mask), noise on the image channel only, epsilon prediction, cosine schedule, EMA; the loop,
resuming (bit-identical: the generator is reseeded per step), the time limit and DDP are `ddpm_train.run_loop`'s."""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .ddpm_train import STATE, TrainOptions, run_loop, setup_distributed
from .device import autocast
from .errors import CheckpointError, InputError
from .inpaint import prepare
from .inpaint_masks import MaskRules, healthy_masks
from .inpaint_model import (InpaintConfig, build_inpaint_net, load_inpaint_model, model_input, sample_range,
                            train_scheduler, weights_from_2d)
from .io import find_cases, load_case
from .model import read_config

log = logging.getLogger(__name__)


@dataclass
class InpaintTrainOptions(TrainOptions):
    """`TrainOptions` plus the healthy masks; `config` is an `InpaintConfig`, `init_from` a 2D checkpoint to start
    from (e.g. a pseudo-3D run from the trained 2D model)."""
    masks_per_case: int = 8
    mask_seed: int = 0
    mask_weight: float = 1.0  # extra weight of the loss inside the mask (0: the plain full-crop loss)


def load_t1_cases(case_dirs: list[Path]) -> list:
    """Cases with a T1 (LGG patients whose 'pre' slot holds a copy of FLAIR are skipped) and a label; only the T1 and
    the label are kept in memory."""
    cases = []
    for d in case_dirs:
        case = load_case(d)
        if "t1" not in case.images or case.label is None:
            log.info("skipping %s: no T1 or no label", Path(d).name)
            continue
        case.images = {"t1": case.images["t1"]}
        cases.append(case)
    return cases


def build_crops(case_dirs: list[Path], cfg: InpaintConfig, per_case: int, seed: int, cache_dir: Path | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
    """Training crops: clean images (N, S, S) float16 in [-1, 1] ([-2, 2] with context normalisation), masks
    (N, S, S) bool, the block (case x mask) of each slice (N,), and the mask records. Cached on disk by cases,
    geometry and seed."""
    key = hashlib.sha1(json.dumps([[str(Path(c).resolve()) for c in case_dirs], cfg.crop, cfg.max_in_plane,
                                   per_case, seed] + ([True] if cfg.context_norm else [])).encode()).hexdigest()[:12]
    cache = Path(cache_dir) / f"inpaint-crops-{key}.npz" if cache_dir else None
    if cache is not None and cache.is_file():
        d = np.load(cache)
        return d["clean"], d["mask"], d["block"], json.loads(str(d["records"]))
    cases = load_t1_cases(case_dirs)
    if len(cases) < 2:
        raise InputError(f"need at least two cases with a T1 and a tumour label to make healthy masks, got {len(cases)}")
    clean, masks, blocks, records = [], [], [], []
    by_name = {c.name: c for c in cases}
    for k, (mask, rec) in enumerate(healthy_masks(cases, seed=seed, per_case=per_case, rules=MaskRules())):
        prep = prepare(by_name[rec["case"]].images["t1"], mask, cfg, window_size=cfg.crop, grow=False)
        clean.append(prep["clean"].numpy().astype(np.float16))
        masks.append(prep["mask"].numpy() > 0)
        blocks.append(np.full(len(prep["zs"]), k, np.int32))
        records.append(rec)
    out = np.concatenate(clean), np.concatenate(masks), np.concatenate(blocks), records
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + ".tmp.npz")
        np.savez(tmp, clean=out[0], mask=out[1], block=out[2], records=json.dumps(records))
        tmp.replace(cache)
    return out


def _config(opt: InpaintTrainOptions, out: Path) -> tuple[InpaintConfig, dict | None]:
    if (out / STATE).is_file():
        cfg = read_config(out, InpaintConfig)
        if opt.config is not None and cfg.arch() != opt.config.arch():
            raise CheckpointError(f"{out} holds a run of a different architecture; choose a new --out to start "
                                  "afresh.")
        return cfg, None
    cfg = opt.config or InpaintConfig()
    return cfg, None


def train_inpaint(opt: InpaintTrainOptions) -> Path:
    rank, world, device = setup_distributed(opt)
    out = Path(opt.out)
    cfg, _ = _config(opt, out)
    cases = find_cases(opt.data)
    if not cases:
        raise FileNotFoundError(f"No case folders below {opt.data}")
    clean, masks, block, records = build_crops(cases, cfg, opt.masks_per_case, opt.mask_seed,
                                               Path(opt.cache) if opt.cache else out / "cache")
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "masks.json").write_text(json.dumps(records, indent=1))
        log.info("%d crops of %d px from %d healthy masks of %d cases; %s on %s", len(clean), cfg.crop,
                 len(records), len({r['case'] for r in records}), "pseudo-3D" if cfg.pseudo3d else "2D", device)
    clean_t, mask_t = torch.from_numpy(clean), torch.from_numpy(masks)
    d = cfg.depth if cfg.pseudo3d else 1
    # start indices of stacks of d consecutive slices of one block
    starts = np.nonzero([block[i] == block[i + d - 1] for i in range(len(block) - d + 1)])[0]
    if not len(starts):
        raise InputError(f"no healthy mask spans {d} slices")
    starts_t = torch.from_numpy(starts)

    torch.manual_seed(opt.seed)
    net = build_inpaint_net(cfg).to(device)
    init_info = None
    if opt.init_from and not (out / STATE).is_file():
        init, init_cfg = load_inpaint_model(opt.init_from)
        if init_cfg.context_norm != cfg.context_norm:
            log.warning("%s was trained %s context normalisation, this run is %s it", opt.init_from,
                        "with" if init_cfg.context_norm else "without", "with" if cfg.context_norm else "without")
        net.load_state_dict(weights_from_2d(init.state_dict(), net) if cfg.pseudo3d else init.state_dict())
        init_info = {"init_from": str(opt.init_from), "init_training": init_cfg.training}
    alphas = train_scheduler(cfg).alphas_cumprod.to(device)
    bound = sample_range(cfg)

    def batch_loss(model, gen: torch.Generator, n: int) -> torch.Tensor:
        stacks = max(1, n // d)
        first = starts_t[torch.randint(len(starts_t), (stacks,), generator=gen)]
        idx = (first[:, None] + torch.arange(d)[None]).reshape(-1)
        x0, m = clean_t[idx].float()[:, None], mask_t[idx].float()[:, None]
        flip = (torch.rand(stacks, generator=gen) < 0.5).repeat_interleave(d)
        x0[flip], m[flip] = x0[flip].flip(-2), m[flip].flip(-2)
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(cfg.num_train_timesteps, (stacks,), generator=gen).repeat_interleave(d)
        x0, m, noise, t = x0.to(device), m.to(device), noise.to(device), t.to(device)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        voided = torch.where(m > 0, -bound, x0)  # the voided image: the model's lowest value inside the mask
        with autocast(device, opt.precision):
            pred = model(model_input(xt, voided, m), t, depth=d)
        err = (pred.float() - noise) ** 2
        loss = err.mean()
        if opt.mask_weight:
            loss = loss + opt.mask_weight * (err * m).sum() / m.sum().clamp(min=1.0)
        return loss

    provenance = {"cases": len({r["case"] for r in records}), "masks": len(records), "crops": int(len(clean)),
                  "masks_per_case": opt.masks_per_case, "mask_seed": opt.mask_seed, "mask_weight": opt.mask_weight,
                  "data": [str(c) for c in opt.data]}
    run_loop(opt, cfg, net, device, batch_loss, provenance, init_info=init_info, reseed_every_step=True)
    return out
