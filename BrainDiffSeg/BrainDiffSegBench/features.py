"""The feature-selection experiment (`braindiffseg benchmark features`): Dice of the propagation for candidate
feature specs on the tuning cases, the diffusion features of each case computed once and served to every candidate
from a cache (`cached_extractors`), which gives the features that the deployed FeatureExtractor computes. With several
`backbones` (`backbones.resolve_backbones`: bundled, random, checkpoint folders) every diffusion candidate runs on
each (its records name the backbone); the intensity-only candidates, which use no backbone, run once.
"""
from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from BrainDiffSegLib.propagation.classifier import ClassifierOptions
from BrainDiffSegLib.propagation.features import FeatureExtractor, FeatureSpec
from BrainDiffSegLib.io import load_case
from BrainDiffSegLib.model import load_backbone
from BrainDiffSegLib.preprocess import ModelGrid, normalize_case, stack_roles
from BrainDiffSegLib.propagation.propagate import PropagationOptions, propagate
from BrainDiffSegLib.protocol import region_dice, simulate_annotation

from .backbones import resolve_backbones
from .report import machine
from BrainDiffSegLib.propagation.sources import GivenExtractor

log = logging.getLogger(__name__)


class CachedExtractor(FeatureExtractor):
    """Serves a channel subset of precomputed per-pixel features (used by the feature-selection experiment).

    `rows` (P, C) float16 holds the features of the pixels where `index` (Z, S, S) is >= 0.
    """

    rows: torch.Tensor
    index: torch.Tensor
    channels: torch.Tensor

    def diffusion_maps(self, zs):
        if not len(self.channels):
            return None
        idx = self.index[list(zs)]
        out = torch.zeros(idx.shape + (len(self.channels),))
        out[idx >= 0] = self.rows[idx[idx >= 0]][:, self.channels].float()
        return out.permute(0, 3, 1, 2)


def _cache_case(ex: FeatureExtractor, fg: np.ndarray, batch: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Diffusion features of every pixel of the model grid near the head, as (rows, index).

    "Near": the model pixels that overlap the head, dilated by one pixel, so that every model pixel that the bilinear
    resampling to the native grid reads for a head pixel is cached (an uncached neighbour would be read as 0)."""
    from scipy import ndimage

    grid, Z = ex.grid, fg.shape[-1]
    near = grid.to_model(np.moveaxis(fg, -1, 0)[:, None].astype(np.float32), fill=0.0)[:, 0] > 0.01
    near = torch.from_numpy(ndimage.binary_dilation(near.numpy(), np.ones((1, 3, 3), bool)))
    index = torch.full(near.shape, -1, dtype=torch.long)
    if ex.n_diffusion_channels == 0:  # raw candidates only: nothing to cache
        return torch.zeros((0, 0), dtype=torch.float16), index
    index[near] = torch.arange(int(near.sum()))
    rows = []
    for s in range(0, Z, batch):
        zs = list(range(s, min(s + batch, Z)))
        m = near[zs]
        if m.any():
            rows.append(ex.diffusion_maps(zs).permute(0, 2, 3, 1)[m].half())
    return torch.cat(rows), index


def _cache_plan(candidates: list[FeatureSpec], unet, cfg, stack, present, grid
                ) -> tuple[FeatureExtractor, list[list[int]]]:
    """One extractor computing the diffusion features of every candidate, and per candidate its entries.

    A FeatureExtractor draws the noise of its i-th timestep by position (from `noise_seed` and the number of
    timesteps), so the same timestep can carry different noise in different candidates: the cache holds one entry
    per distinct (timestep, noise) pair, with exactly the noise that the candidate's own extractor would use.
    """
    ts: list[int] = []
    noises: list[torch.Tensor] = []
    plan = []
    for spec in candidates:
        entries = []
        if spec.blocks:
            own = FeatureExtractor(unet, cfg, spec, stack, present, grid).noise
            for t, n in zip(spec.timesteps, own):
                e = next((j for j, (tj, nj) in enumerate(zip(ts, noises)) if tj == t and torch.equal(nj, n)), None)
                if e is None:
                    ts.append(int(t))
                    noises.append(n)
                    e = len(ts) - 1
                entries.append(e)
        plan.append(entries)
    blocks = tuple(sorted({b for c in candidates for b in c.blocks}))
    full = FeatureExtractor(unet if ts else None, cfg, FeatureSpec(blocks=blocks, timesteps=tuple(ts),
                                                                   intensities=False), stack, present, grid,
                            noise=torch.stack(noises) if ts else None)
    return full, plan


def cached_extractors(candidates: list[FeatureSpec], unet, cfg, stack: np.ndarray, present: np.ndarray,
                      grid: ModelGrid, fg: np.ndarray) -> list[CachedExtractor]:
    """One CachedExtractor per candidate spec, all served from one cache of the case's diffusion features; each
    gives the features that FeatureExtractor(unet, cfg, spec, stack, present, grid) gives, up to float16 rounding."""
    full, plan = _cache_plan(candidates, unet, cfg, stack, present, grid)
    rows, index = _cache_case(full, fg)
    # channel layout of FeatureExtractor.diffusion_maps: per (timestep, noise) entry, per block (in block order)
    rev = list(reversed(unet.config.block_out_channels))
    offsets, o = {}, 0
    for e in range(len(full.spec.timesteps)):
        for b in full.spec.blocks:
            offsets[(e, b)] = (o, o + rev[b])
            o += rev[b]
    out = []
    for spec, entries in zip(candidates, plan):
        ch = [c for e in entries for b in sorted(set(spec.blocks)) for c in range(*offsets[(e, b)])]
        cex = CachedExtractor(unet if spec.blocks else None, cfg, spec, stack, present, grid)
        cex.rows, cex.index, cex.channels = rows, index, torch.tensor(ch, dtype=torch.long)
        out.append(cex)
    return out


def select_features(case_dirs: list[Path], checkpoint: str, out: Path, k: int = 3,
                    candidates: list[FeatureSpec] | None = None, n_models: int = 3,
                    backbones: list[str] | None = None) -> list[dict]:
    """Dice of the propagation for candidate feature specs on tuning cases (features computed once per case and
    backbone); `backbones` default to [checkpoint]."""
    with tempfile.TemporaryDirectory(prefix="braindiffseg-backbones-") as tmp:
        chosen = resolve_backbones(backbones, Path(tmp), checkpoint)
        loaded = [(b.name if len(chosen) > 1 else None, *load_backbone(b.checkpoint)) for b in chosen]
    candidates = candidates or default_candidates()
    records = []
    for ci, cdir in enumerate(case_dirs):
        case = load_case(cdir)
        for bi, (name, unet, cfg) in enumerate(loaded):
            records += _case_records(case, k, unet, cfg, name, [c for c in candidates if c.blocks or bi == 0],
                                     n_models, f"[{ci + 1}/{len(case_dirs)}]")
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "feature_selection.json").write_text(json.dumps(
            {"machine": machine(), "checkpoint": str(checkpoint), "backbones": [b.name for b in chosen], "k": k,
             "records": records}, indent=1))
        write_feature_table(records, Path(out) / "feature_selection.md")
    return records


def _case_records(case, k: int, unet, cfg, backbone: str | None, candidates: list[FeatureSpec], n_models: int,
                  progress: str) -> list[dict]:
    """The candidates' records on one case with one backbone (`backbone`: its name when several are compared,
    recorded for the candidates that use it)."""
    annotation, zs = simulate_annotation(case.label, k)
    norm, fg = normalize_case(case.images)
    stack, present = stack_roles(norm)
    grid = ModelGrid.from_mask(fg, cfg.sample_size)
    t = time.perf_counter()
    extractors = cached_extractors(candidates, unet, cfg, stack, present, grid, fg)
    log.info("%s: cached %s features in %.1f s", case.name, tuple(extractors[0].rows.shape),
             time.perf_counter() - t)
    records = []
    for spec, cex in zip(candidates, extractors):
        # the cache and its extractors live on the CPU, so the classifier runs there too (also on a GPU machine)
        opts = PropagationOptions(method="diffusion" if spec.blocks else "raw", features=spec,
                                  classifier=ClassifierOptions(n_models=n_models), device="cpu")
        t = time.perf_counter()
        res = propagate(case.images, annotation, opts, features=GivenExtractor(cex))
        d = region_dice(res.labels, case.label, zs)
        rec = {"case": case.name, "spec": spec_name(spec), "backbone": backbone if spec.blocks else None,
               "channels": cex.n_channels, "seconds_classifier": round(time.perf_counter() - t, 2),
               "dice": {r: round(v, 4) for r, v in d.items()}}
        records.append(rec)
        log.info("%s %s %-40s %s %s", progress, case.name, rec["spec"], backbone or "",
                 " ".join(f"{r} {v:.3f}" for r, v in d.items()))
    return records


def spec_name(spec: FeatureSpec) -> str:
    if not spec.blocks:
        return "raw" + (f" + smooth{list(spec.smoothing)}" if spec.smoothing else "")
    s = f"blocks {list(spec.blocks)} t {list(spec.timesteps)}"
    if spec.intensities:
        s += " + int"
    if spec.smoothing:
        s += " + smooth"
    return s


def default_candidates() -> list[FeatureSpec]:
    """The grid of the feature experiment. Smoothing is explicit: `FeatureSpec`'s default is the smoothed
    intensities, so `F(blocks=...)` alone would repeat the smoothed candidates."""
    F = FeatureSpec
    sm, plain = (1.0, 2.0, 4.0), ()
    return [
        F(blocks=(), timesteps=(), smoothing=sm),
        F(blocks=(1,), timesteps=(100,), smoothing=plain),
        F(blocks=(2,), timesteps=(100,), smoothing=plain),
        F(blocks=(1, 2), timesteps=(100,), smoothing=plain),
        F(blocks=(0, 1, 2), timesteps=(100,), smoothing=plain),
        F(blocks=(1, 2), timesteps=(25,), smoothing=plain),
        F(blocks=(1, 2), timesteps=(250,), smoothing=plain),
        F(blocks=(1, 2), timesteps=(25, 250), smoothing=plain),
        F(blocks=(1,), timesteps=(25, 250), smoothing=plain),
        F(blocks=(1, 2), timesteps=(100,), intensities=False, smoothing=plain),
        F(blocks=(1, 2), timesteps=(100,), smoothing=sm),
        F(blocks=(1,), timesteps=(100,), smoothing=sm),
    ]


def write_feature_table(records: list[dict], path: Path) -> None:
    """A row per candidate (per candidate and backbone when the records name several), best first."""
    by: dict = {}
    for r in records:
        by.setdefault((r["spec"], r.get("backbone")), []).append(r)
    with_backbone = any(b for _, b in by)
    lines = ["| features | " + ("backbone | " if with_backbone else "") + "channels | cases | WT | TC | ET | mean "
             "of regions |", "|---|---|---|---|---|---|---|" + ("---|" if with_backbone else "")]
    rows = []
    for (spec, backbone), rs in by.items():
        spec = f"{spec} | {backbone or '–'}" if with_backbone else spec
        vals = {reg: [r["dice"][reg] for r in rs if reg in r["dice"]] for reg in ("WT", "TC", "ET")}
        means = {reg: float(np.mean(v)) if v else float("nan") for reg, v in vals.items()}
        overall = float(np.mean([v for r in rs for v in r["dice"].values()]))
        rows.append((overall, f"| {spec} | {rs[0]['channels']} | {len(rs)} | "
                     + " | ".join("–" if np.isnan(means[g]) else f"{means[g]:.3f}" for g in ("WT", "TC", "ET"))
                     + f" | {overall:.3f} |"))
    lines += [row for _, row in sorted(rows, key=lambda x: -x[0])]
    path.write_text("\n".join(lines) + "\n")
