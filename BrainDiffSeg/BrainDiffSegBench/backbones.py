"""Backbones as a benchmark dimension (`--backbones`): which weights the diffusion features come from.

- `bundled`: the bundled backbone (`BrainDiffSegLib.resources.default_checkpoint`, or $BRAINDIFFSEG_MODEL);
- `random` or `random:SEED`: the same architecture with seeded random weights (`BrainDiffSegLib.model.random_backbone`,
  seed 0 unless given), written to a temporary checkpoint folder so that the engine loads it like any other;
- anything else: a checkpoint folder (config.json + model.safetensors), named by its path as given.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from BrainDiffSegLib.errors import InputError
from BrainDiffSegLib.model import random_backbone, read_config, save_backbone
from BrainDiffSegLib.resources import default_checkpoint


@dataclass(frozen=True)
class Backbone:
    name: str  # as recorded in the results ('bundled', 'random', 'random:1', a path)
    checkpoint: Path

    def describe(self) -> dict:
        """The checkpoint and its training provenance, for the results JSON."""
        return {"checkpoint": str(self.checkpoint), "training": read_config(self.checkpoint).training}


def random_seed_of(spec: str) -> int | None:
    """The seed of a 'random' / 'random:SEED' spec, None for other specs; InputError for a bad seed."""
    if spec != "random" and not spec.startswith("random:"):
        return None
    try:
        return int(spec.split(":", 1)[1]) if ":" in spec else 0
    except ValueError:
        raise InputError(f"--backbones: '{spec}': write random or random:SEED with an integer seed") from None


def resolve_backbones(specs: list[str] | None, workdir: Path, default: str | None = None) -> list[Backbone]:
    """The backbones named by `specs` (default: [`default`], a checkpoint path, or 'bundled'); random weights are
    saved under `workdir`. InputError for duplicates, CheckpointError for a folder that is not a checkpoint."""
    specs = list(specs or [default or "bundled"])
    if len(set(specs)) != len(specs):
        raise InputError(f"--backbones: each backbone once, got {specs}")
    out = []
    for spec in specs:
        seed = random_seed_of(spec)
        if spec == "bundled":
            path = Path(default_checkpoint())
        elif seed is not None:
            unet, cfg = random_backbone(seed)
            path = save_backbone(Path(workdir) / f"random-seed{seed}", unet.state_dict(), cfg)
        else:
            path = Path(spec)
            read_config(path)
        out.append(Backbone(spec, path))
    return out
