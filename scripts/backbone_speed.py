"""Seconds per slice of the backbone's forward pass up to the feature blocks (the features' main cost), by batch
size, memory layout (contiguous or channels-last) and precision (fp32 or bf16 autocast), on the CPU:

    python scripts/backbone_speed.py --threads 2

The measurement behind `features.channels_last` (results section 14). Best of 3 repeats per setting.
"""
from __future__ import annotations

import argparse
import time

import torch

from BrainDiffSegLib.model import load_backbone, model_input
from BrainDiffSegLib.propagation.features import decoder_activations
from BrainDiffSegLib.resources import default_checkpoint


def seconds_per_slice(unet, cfg, batch: int, channels_last: bool, dtype, blocks=(1, 2), repeats: int = 3) -> float:
    size = cfg.sample_size
    sample = model_input(torch.randn(batch, len(cfg.roles), size, size), torch.ones(len(cfg.roles)))
    if channels_last:
        unet = unet.to(memory_format=torch.channels_last)
        sample = sample.contiguous(memory_format=torch.channels_last)
    t = torch.full((batch,), 100, dtype=torch.long)
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                decoder_activations(unet, sample, t, blocks)
            best = min(best, time.perf_counter() - start)
    unet.to(memory_format=torch.contiguous_format)
    return best / batch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 16])
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    unet, cfg = load_backbone(default_checkpoint(), device=torch.device("cpu"))
    print(f"{torch.get_num_threads()} torch thread(s); seconds per slice up to decoder block 2")
    print("| batch | fp32 | fp32 channels-last | bf16 | bf16 channels-last |\n|---|---|---|---|---|")
    for b in a.batches:
        cells = [seconds_per_slice(unet, cfg, b, cl, dt) for dt in (None, torch.bfloat16) for cl in (False, True)]
        print(f"| {b} | " + " | ".join(f"{c:.4f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
