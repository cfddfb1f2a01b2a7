"""Training of the backbone (`braindiffseg train-ddpm`): unlabelled slices, epsilon prediction, cosine schedule,
EMA weights; resumable; CPU, one GPU with bf16/fp16 autocast, or several processes with `torchrun` (DDP)."""
from __future__ import annotations

import csv
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from diffusers.training_utils import EMAModel

from ..device import autocast, pick_device, seed_everything
from ..errors import CheckpointError, InputError
from ..io import find_cases
from ..model import BackboneConfig, build_scheduler, build_unet, load_backbone, model_input, read_config, save_backbone
from .slices import build_slice_set, load_packed_slices

log = logging.getLogger(__name__)
STATE = "train_state.pt"


@dataclass
class TrainOptions:
    data: list[str]
    out: str
    steps: int = 10000
    batch_size: int = 16
    lr: float = 2e-4
    warmup: int = 200
    crop: int = 0  # train on random crops of this size (0 = full slices); the U-Net is fully convolutional
    drop_sequences: float = 0.5  # probability that a sample hides a random subset of its sequences
    ema_decay: float = 0.999
    precision: str = "fp32"
    device: str = "auto"
    seed: int = 0
    save_every: int = 250
    log_every: int = 25
    max_minutes: float = 0.0  # stop (and save) after this wall time; 0 = no limit
    cache: str | None = None
    config: BackboneConfig | None = None
    init_from: str | None = None  # start a new run from this checkpoint's (EMA) weights, e.g. the bundled model
    slices: str | None = None  # train on this packed slice set (`braindiffseg pack-slices`) instead of `data`


def _dist_info() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _hide_sequences(present: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Randomly hide sequences of some samples, keeping at least one present sequence per sample."""
    keep = present.clone()
    for i in range(len(keep)):
        if torch.rand((), generator=gen) < p:
            idx = torch.nonzero(present[i]).flatten()
            if len(idx) > 1:
                sub = torch.rand(len(idx), generator=gen) < 0.5
                sub[torch.randint(len(idx), (), generator=gen)] = True
                keep[i] = False
                keep[i, idx[sub]] = True
    return keep


def _randn(shape: torch.Size, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """Standard normal noise from `gen`; on a GPU drawn there from a generator seeded by `gen`: one CPU thread
    cannot draw a large batch's noise (16 M values for 256 slices) as fast as the GPU trains on it."""
    if device.type != "cuda":
        return torch.randn(shape, generator=gen)
    seed = int(torch.randint(2**62, (), generator=gen))
    return torch.randn(shape, generator=torch.Generator(device).manual_seed(seed), device=device)


def setup_distributed(opt: TrainOptions) -> tuple[int, int, torch.device]:
    """(rank, world size, device) of this process; joins the process group under torchrun."""
    rank, world = _dist_info()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() and opt.device != "cpu" else "gloo")
    device = pick_device(opt.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    return rank, world, device


def train_ddpm(opt: TrainOptions) -> Path:
    rank, world, device = setup_distributed(opt)
    out = Path(opt.out)
    resume = (out / STATE).is_file()
    init = None
    if resume:
        cfg = read_config(out)
    elif opt.init_from:
        init, cfg = load_backbone(opt.init_from)
        cfg.training = {"init_from": str(opt.init_from), "init_training": cfg.training}
    else:
        cfg = opt.config or BackboneConfig()
    if opt.config is not None and (resume or init is not None) and cfg.arch() != opt.config.arch():
        raise CheckpointError(f"{out} holds a run of a different architecture; choose a new --out to start afresh.")

    if opt.slices:
        images, present, packed = load_packed_slices(Path(opt.slices))
        if images.shape[-1] != cfg.sample_size:
            raise InputError(f"{opt.slices} holds {images.shape[-1]}-px slices; the model takes {cfg.sample_size}")
        n_cases, data = packed["cases"], packed["data"]
    else:
        cases = find_cases(opt.data)
        if not cases:
            raise FileNotFoundError(f"No case folders below {opt.data}")
        images, present = build_slice_set(cases, cfg.sample_size, Path(opt.cache) if opt.cache else out / "cache")
        n_cases, data = len(cases), [str(d) for d in opt.data]
    images_t, present_t = torch.from_numpy(images), torch.from_numpy(present)
    if device.type == "cuda":
        images_t = images_t.to(device)  # batches are gathered on the GPU (the full set is 0.6 GB in float16)
    if rank == 0:
        log.info("%d slices from %d cases; world size %d on %s", len(images), n_cases, world, device)

    torch.manual_seed(opt.seed)  # initial weights follow the seed (and are the same on every rank)
    model = build_unet(cfg).to(device)
    if init is not None:
        model.load_state_dict(init.state_dict())
    scheduler = build_scheduler(cfg)
    alphas = scheduler.alphas_cumprod.to(device)

    def batch_loss(net, gen: torch.Generator, n: int) -> torch.Tensor:
        idx = torch.randint(len(images_t), (n,), generator=gen)
        x0 = images_t[idx.to(images_t.device)].float()
        if opt.crop and opt.crop < cfg.sample_size:
            ox, oy = torch.randint(cfg.sample_size - opt.crop + 1, (2,), generator=gen).tolist()
            x0 = x0[..., ox:ox + opt.crop, oy:oy + opt.crop]
        if torch.rand((), generator=gen) < 0.5:
            x0 = x0.flip(-2)  # left-right flip
        keep = _hide_sequences(present_t[idx], opt.drop_sequences, gen)
        noise = _randn(x0.shape, gen, device)
        t = torch.randint(cfg.num_train_timesteps, (n,), generator=gen)
        x0, noise, t, keep = x0.to(device), noise.to(device), t.to(device), keep.to(device)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with autocast(device, opt.precision):
            pred = net(model_input(xt, keep), t).sample
        w = keep.float().view(n, -1, 1, 1)
        return (((pred.float() - noise) ** 2) * w).sum() / (w.sum() * x0.shape[-1] * x0.shape[-2])

    provenance = {"crop": opt.crop, "cases": n_cases, "slices": int(len(images)), "data": data}
    if opt.slices:
        provenance.update(packed_slices=str(opt.slices), packed_every=packed["every"], packed_offset=packed["offset"])
    run_loop(opt, cfg, model, device, batch_loss, provenance, init_info=cfg.training if init is not None else None)
    return out


def run_loop(opt: TrainOptions, cfg, model: torch.nn.Module, device: torch.device, batch_loss, provenance: dict,
             init_info: dict | None = None, reseed_every_step: bool = False) -> None:
    """The training loop shared by the backbone and the inpainting model: AdamW with warm-up, gradient clipping,
    EMA, resuming from `out/train_state.pt`, loss.csv and its plot, checkpoints (EMA weights via
    `save_backbone`), the time limit, DDP. `batch_loss(net, generator, per_rank_batch)` returns one step's loss;
    `provenance` is added to `cfg.training`. With `reseed_every_step` the generator is reseeded from (seed, rank,
    step) before each step, so that an interrupted and resumed run is bit-identical to an uninterrupted one."""
    rank, world = _dist_info()
    out = Path(opt.out)
    state_path = out / STATE
    optim = torch.optim.AdamW(model.parameters(), lr=opt.lr, weight_decay=0.0)
    ema = EMAModel(model.parameters(), decay=opt.ema_decay)
    step, wall = 0, 0.0
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optim.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
        step, wall = int(state["step"]), float(state["wall_seconds"])
        if rank == 0:
            log.info("resumed %s at step %d (%.1f min trained)", out, step, wall / 60)
    ema.to(device)
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    # on a GPU deterministic algorithms (no cuDNN autotuning) slow training; kept where resuming must be bit-identical
    deterministic = device.type != "cuda" or reseed_every_step
    gen = seed_everything(opt.seed + 1000 * rank + 7919 * step, deterministic=deterministic)
    if not deterministic:
        torch.backends.cudnn.benchmark = True
    per_rank = max(1, opt.batch_size // world)
    start, losses, first_step = time.time(), [], step
    loss_file = out / "loss.csv"
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        new_file = not loss_file.exists()
        csv_f = open(loss_file, "a", newline="")
        writer = csv.writer(csv_f)
        if new_file:
            writer.writerow(["step", "loss", "wall_seconds"])

    def save():
        if rank != 0:
            return
        cfg.training = {"steps": step, "batch_size": opt.batch_size, "lr": opt.lr,
                        "ema_decay": opt.ema_decay, "precision": opt.precision, "world_size": world,
                        "wall_seconds": round(wall + time.time() - start, 1), "device": _hardware(device),
                        **provenance}
        if init_info:
            cfg.training.update(init_info)
        ema.store(model.parameters())
        ema.copy_to(model.parameters())
        save_backbone(out, model.state_dict(), cfg)
        ema.restore(model.parameters())
        tmp = out / (STATE + ".tmp")
        torch.save({"model": model.state_dict(), "optimizer": optim.state_dict(), "ema": ema.state_dict(),
                    "step": step, "wall_seconds": wall + time.time() - start}, tmp)
        tmp.replace(state_path)
        csv_f.flush()
        log.info("saved checkpoint at step %d to %s", step, out)

    model.train()
    while step < opt.steps:
        if reseed_every_step:
            gen.manual_seed(opt.seed + 1000 * rank + 7919 * step)
        lr = opt.lr * min(1.0, (step + 1) / max(1, opt.warmup))
        for g in optim.param_groups:
            g["lr"] = lr
        loss = batch_loss(ddp, gen, per_rank)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        ema.step(model.parameters())
        step += 1
        losses.append(loss.item())
        if rank == 0 and (step % opt.log_every == 0 or step == opt.steps):
            elapsed = wall + time.time() - start
            writer.writerow([step, f"{np.mean(losses):.5f}", f"{elapsed:.1f}"])
            log.info("step %d/%d loss %.4f lr %.2e (%.2f s/step)", step, opt.steps, np.mean(losses), lr,
                     (time.time() - start) / (step - first_step))
            losses = []
        timeout = bool(opt.max_minutes) and (time.time() - start) > opt.max_minutes * 60
        if world > 1 and opt.max_minutes:
            # every rank must stop at the same step, or the others block forever in the next all-reduce
            flag = torch.tensor([float(timeout)], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            timeout = bool(flag.item())
        if step % opt.save_every == 0 or step == opt.steps or timeout:
            save()
            if rank == 0:
                plot_loss(loss_file, out / "loss_curve.png")
        if timeout:
            if rank == 0:
                log.info("time limit of %.1f min reached at step %d; rerun the same command to resume",
                         opt.max_minutes, step)
            break
    if rank == 0:
        csv_f.close()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def plot_loss(loss_csv: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(open(loss_csv)))
    if not rows:
        return
    steps = np.array([int(r["step"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, loss, lw=0.8, alpha=0.5, label="per log interval")
    if len(loss) >= 10:
        k = max(5, len(loss) // 20)
        ax.plot(steps[k - 1:], np.convolve(loss, np.ones(k) / k, mode="valid"), lw=1.5, label=f"moving mean ({k})")
    ax.set_xlabel("step")
    ax.set_ylabel("noise-prediction MSE")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
