"""Training of the inpainting DDPM (`braindiffseg train-inpaint`): crops of T1 slices around healthy masks (never
tumour inside the mask), noise on the image channel only, epsilon prediction, cosine schedule, EMA; the loop,
resuming (bit-identical: the generator is reseeded per step), the time limit and DDP are `ddpm_train.run_loop`'s.

The crops can also be packed into one compact file (`braindiffseg pack-crops`, `pack_crops`) that
`train-inpaint --crops` trains from without the NIfTI data or nibabel (e.g. on a GPU machine that only receives the
repository: scripts/gpu_prepare.sh, scripts/train_inpaint_gpu.sh)."""
from __future__ import annotations

import hashlib
import json
import logging
import lzma
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .ddpm import STATE, TrainOptions, _randn, run_loop, setup_distributed
from ..device import autocast
from ..errors import CheckpointError, InputError
from ..inpainting.inpaint import prepare
from ..inpainting.masks import MaskRules, healthy_masks
from ..inpainting.model import (InpaintConfig, build_inpaint_net, load_inpaint_model, model_input, sample_range,
                                train_scheduler, weights_from_2d)
from ..io import find_cases, load_case
from ..model import read_config

log = logging.getLogger(__name__)


@dataclass
class InpaintTrainOptions(TrainOptions):
    """`TrainOptions` plus the healthy masks; `config` is an `InpaintConfig`, `init_from` a 2D checkpoint to start
    from (e.g. a pseudo-3D run from the trained 2D model)."""
    masks_per_case: int = 8
    mask_seed: int = 0
    mask_weight: float = 1.0  # extra weight of the loss inside the mask (0: the plain full-crop loss)
    crops: str | None = None  # train on this crop pack (`braindiffseg pack-crops`) instead of `data`


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


CROPS_FORMAT = "braindiffseg-inpaint-crops/1"
_XZ_PRESET = 9  # 64 MiB window: the masks of one case overlap, and the window holds all their crops


def _xz(a: np.ndarray) -> np.ndarray:
    return np.frombuffer(lzma.compress(np.ascontiguousarray(a).tobytes(), preset=_XZ_PRESET), np.uint8)


def pack_crops(path: Path, clean: np.ndarray, masks: np.ndarray, block: np.ndarray, records: list[dict],
               cfg: InpaintConfig, masks_per_case: int = 0, mask_seed: int = 0, data: list[str] = ()) -> int:
    """Write `build_crops`' training crops compactly for `train-inpaint --crops`: each block's (mask's) images
    quantised to uint8 from the block's minimum in steps of 2/255 (a block spans at most 2: [-1, 1], or [-1, 1] less
    its context mean; error at most 1/255), the masks as bits, both xz-compressed (the masks of one case overlap,
    which xz's large window finds: ~0.8 kB a 64-px crop against 2.2 kB with zlib and 12 kB as float16). Whole blocks
    are kept, so the stacks of adjacent slices of pseudo-3D training are too. The crop geometry (crop,
    max_in_plane, context_norm) and `masks_per_case`, `mask_seed`, `data` are kept as provenance. Returns the crops
    written."""
    if not (clean.shape == masks.shape and clean.ndim == 3 and len(block) == len(clean)):
        raise InputError(f"crops {clean.shape}, masks {masks.shape} and blocks {block.shape} do not match")
    c = clean.astype(np.float32)
    blocks = max(len(records), int(block.max()) + 1 if len(block) else 0)
    lo = np.zeros(blocks, np.float32)
    step = np.full(blocks, 2 / 255, np.float32)
    for b in np.unique(block):
        v = c[block == b]
        lo[b] = v.min()
        step[b] = max(2.0, float(v.max() - v.min())) / 255  # float16 rounding can exceed 2 by a hair
    q = np.round((c - lo[block][:, None, None]) / step[block][:, None, None]).clip(0, 255).astype(np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez_compressed(
                f, format=np.array(CROPS_FORMAT), codec=np.array("xz"), shape=np.array(clean.shape, np.int64),
                images=_xz(q), masks=_xz(np.packbits(masks.astype(bool), axis=-1)), block=block.astype(np.int32),
                offset=lo, step=step, records=np.array(json.dumps(records)), crop=np.int64(cfg.crop),
                max_in_plane=np.int64(cfg.max_in_plane), context_norm=np.bool_(cfg.context_norm),
                masks_per_case=np.int64(masks_per_case), mask_seed=np.int64(mask_seed),
                data=np.array([str(d) for d in data], dtype=str))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return len(q)


def load_packed_crops(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict], dict]:
    """A `pack_crops` file: clean crops (N, S, S) float16, masks (N, S, S) bool, blocks (N,) int32, mask records
    (as `build_crops` returns them) and the provenance (crop, max_in_plane, context_norm, masks_per_case, mask_seed,
    data). Raises InputError for a missing, truncated or foreign file."""
    return _read_pack(Path(path), arrays=True)


def packed_crop_info(path: Path) -> dict:
    """The provenance of a `pack_crops` file (as `load_packed_crops` returns it) without decompressing the crops."""
    return _read_pack(Path(path), arrays=False)


def _read_pack(path: Path, arrays: bool):
    if not path.is_file():
        raise InputError(f"{path}: no such crop pack (write one with `braindiffseg pack-crops`)")
    try:
        with np.load(path, allow_pickle=False) as d:
            if "format" not in d.files or str(d["format"]) != CROPS_FORMAT:
                got = str(d["format"]) if "format" in d.files else "none"
                raise InputError(f"{path}: crop pack format {got!r}, this version reads {CROPS_FORMAT!r}")
            if str(d["codec"]) != "xz":
                raise InputError(f"{path}: unknown codec {str(d['codec'])!r}")
            info = {"crop": int(d["crop"]), "max_in_plane": int(d["max_in_plane"]),
                    "context_norm": bool(d["context_norm"]), "masks_per_case": int(d["masks_per_case"]),
                    "mask_seed": int(d["mask_seed"]), "data": [str(v) for v in d["data"]]}
            if not arrays:
                return info
            n, h, w = (int(v) for v in d["shape"])
            q = np.frombuffer(lzma.decompress(d["images"].tobytes()), np.uint8).reshape(n, h, w)
            bits = np.frombuffer(lzma.decompress(d["masks"].tobytes()), np.uint8).reshape(n, h, -1)
            block, lo, step = d["block"].astype(np.int32), d["offset"], d["step"]
            records = json.loads(str(d["records"]))
    except InputError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, lzma.LZMAError) as exc:
        raise InputError(f"{path}: not a readable crop pack of `braindiffseg pack-crops` ({exc})") from exc
    if len(block) != n or (n and (block.min() < 0 or block.max() >= len(lo))):
        raise InputError(f"{path}: corrupt crop pack ({n} crops, {len(block)} block indices, {len(lo)} blocks)")
    clean = (lo[block][:, None, None] + q.astype(np.float32) * step[block][:, None, None]).astype(np.float16)
    masks = np.unpackbits(bits, axis=-1, count=w).astype(bool)
    log.info("loaded %d packed crops of %d px (%d masks) from %s", n, w, len(records), path)
    return clean, masks, block, records, info


def check_crop_geometry(info: dict, cfg: InpaintConfig, path) -> None:
    """InputError unless the crops of a pack (`load_packed_crops`' info) were cut for the model of `cfg`."""
    want = {"crop": cfg.crop, "max_in_plane": cfg.max_in_plane, "context_norm": cfg.context_norm}
    got = {k: info[k] for k in want}
    if got != want:
        raise InputError(f"{path} holds crops cut with {got}, the model takes {want}; pack again with "
                         "`braindiffseg pack-crops` (--crop, --context-norm or --like the model)")


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
    if opt.crops:
        clean, masks, block, records, packed = load_packed_crops(Path(opt.crops))
        check_crop_geometry(packed, cfg, opt.crops)
        masks_per_case, mask_seed, data = packed["masks_per_case"], packed["mask_seed"], packed["data"]
    else:
        cases = find_cases(opt.data)
        if not cases:
            raise FileNotFoundError(f"No case folders below {opt.data}")
        clean, masks, block, records = build_crops(cases, cfg, opt.masks_per_case, opt.mask_seed,
                                                   Path(opt.cache) if opt.cache else out / "cache")
        masks_per_case, mask_seed, data = opt.masks_per_case, opt.mask_seed, [str(c) for c in opt.data]
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "masks.json").write_text(json.dumps(records, indent=1))
        log.info("%d crops of %d px from %d healthy masks of %d cases; %s on %s", len(clean), cfg.crop,
                 len(records), len({r['case'] for r in records}), "pseudo-3D" if cfg.pseudo3d else "2D", device)
    clean_t, mask_t = torch.from_numpy(clean), torch.from_numpy(masks)
    if device.type == "cuda":  # batches are gathered on the GPU (6,900 64-px crops are 85 MB)
        clean_t, mask_t = clean_t.to(device), mask_t.to(device)
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
        idx = idx.to(clean_t.device)
        x0, m = clean_t[idx].float()[:, None], mask_t[idx].float()[:, None]
        flip = (torch.rand(stacks, generator=gen) < 0.5).repeat_interleave(d).to(x0.device)
        x0[flip], m[flip] = x0[flip].flip(-2), m[flip].flip(-2)
        noise = _randn(x0.shape, gen, x0.device)  # on a GPU drawn there (the CPU draws the same as before)
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
                  "masks_per_case": masks_per_case, "mask_seed": mask_seed, "mask_weight": opt.mask_weight,
                  "data": data}
    if opt.crops:
        provenance["packed_crops"] = str(opt.crops)
    run_loop(opt, cfg, net, device, batch_loss, provenance, init_info=init_info, reseed_every_step=True)
    return out
