"""Training-step cost of the backbone on this machine, per setting (issue 10 §1: what buys steps per CPU-hour).

One AdamW step of noise prediction (forward, MSE, backward, update) on random 8-channel inputs, the bundled
architecture (or --channels), for crop size x batch x precision x memory format; median of --steps timed steps after
2 warm-up steps. Prints a Markdown table (seconds per step, crops per second, pixels per second):

    OMP_NUM_THREADS=2 python scripts/train_speed.py --threads 2
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from BrainDiffSegLib.model import build_unet, read_config
from BrainDiffSegLib.resources import default_checkpoint


def step_seconds(unet, crop: int, batch: int, precision: str, channels_last: bool, steps: int) -> float:
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    unet.to(memory_format=fmt)
    x = torch.randn(batch, unet.config.in_channels, crop, crop).to(memory_format=fmt)
    noise = torch.randn(batch, unet.config.out_channels, crop, crop)
    t = torch.randint(0, 1000, (batch,))
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = unet(x, t).sample
        loss = torch.nn.functional.mse_loss(out.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--channels", default=None, help="U-Net widths, e.g. '32,64,128,128' (default: the bundled)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = read_config(default_checkpoint())
    if a.channels:
        cfg = dataclasses.replace(cfg, block_out_channels=tuple(int(c) for c in a.channels.split(",")))
    print(f"threads {a.threads}, widths {list(cfg.block_out_channels)}, torch {torch.__version__}")
    print("| crop | batch | precision | memory format | s / step | crops / s | Mpixel / s |")
    print("|---|---|---|---|---|---|---|")
    settings = [(64, 16, "fp32", False), (64, 16, "bf16", False), (64, 16, "fp32", True), (64, 32, "fp32", False),
                (96, 16, "fp32", False), (128, 16, "fp32", False), (128, 16, "bf16", False)]
    for crop, batch, precision, cl in settings:
        unet = build_unet(cfg)
        s = step_seconds(unet, crop, batch, precision, cl, a.steps)
        print(f"| {crop} | {batch} | {precision} | {'channels-last' if cl else 'contiguous'} | {s:.2f} | "
              f"{batch / s:.1f} | {batch * crop * crop / s / 1e6:.2f} |", flush=True)


if __name__ == "__main__":
    main()
