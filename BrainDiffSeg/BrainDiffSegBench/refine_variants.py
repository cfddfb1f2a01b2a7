"""Phase `evaluate` of the refinement experiment (`refine_experiment`): every variant from the cached probabilities.

Variants:
* `none`: the product's labels before this issue (argmax, no smoothing);
* `s{xy}-{z}[-regions]`: `BrainDiffSegLib.propagation.refine` (Gaussian smoothing of the class probabilities, widths in voxels,
  argmax or the BraTS regions' decision);
* `prior-{c}`: the tumour classes' probabilities weighted down beyond the outermost annotated slices, by a logistic
  fall at c x the equivalent radius of the end slice's tumour (`extent_prior`);
* `gate-m{margin}[-s{xy}-{z}]`: the product's watershed gate (`BrainDiffSegLib.propagation.refine.watershed_gate`), with
  smoothing;
* `ws-core[-mlp]`: the gate for the whole tumour, and the tumour core of a watershed on T1ce with one marker per
  label (the split of the core into necrotic / enhancing from that watershed, or with `-mlp` from the classifier);
* `and-ws2`: the gate (margin 0), and core labels kept only inside a 2-marker core watershed on T1ce;
* `and-gc`: predicted tumour kept only inside the growcut baseline's tumour (needs ITK: not a product option);
* `gc-seeded-{tau}`: a hybrid, ITK's FastGrowCut (Slicer's Grow from seeds, as the `growcut` baseline runs it: whole
  tumour on FLAIR, core on T1ce) seeded by the annotated slices *and* the voxels whose (smoothed) class probability
  reaches tau;
* `raw-gate`: the intensity-only classifier (raw-mlp) with the product's gate;
* `mix-{w}[-core{m}]`: the hybrid, w x the diffusion classifier's probabilities + (1 - w) x raw-mlp's, argmax, the
  product's gate (needs a cache written with raw-mlp's probabilities); `-core{m}`: then core labels farther than m
  voxels from the core side of a 2-marker watershed on T1ce become edema;
* `growcut`: the baseline itself (cached).
Each variant's labels go through the product's post-processing (tumour connected in 3D to the annotated tumour).
Dice per region on the non-annotated slices; paired per-case differences against `none` and `growcut`.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from BrainDiffSegLib.io import load_case
from BrainDiffSegLib.options import PropagationOptions
from BrainDiffSegLib.propagation.propagate import keep_connected_to_annotation
from BrainDiffSegLib.propagation.volume import normalize_volume
from BrainDiffSegLib.protocol import region_dice, simulate_annotation
from BrainDiffSegLib.propagation.refine import refine_labels, smooth_probabilities, watershed_tumour

from .baselines import CORE_ROLES, WT_ROLES, fast_growcut
from .stats import bootstrap_ci, paired_differences

log = logging.getLogger(__name__)

def default_variants() -> list[str]:
    return ["none", "growcut", "s1-0", "s0-2", "s1-2", "s2-4", "s1-2-regions", "prior-1.0", "gate-m0", "gate-m2",
            "gate-m4", "gate-m8", "gate-m2-s1-2", "ws-core", "ws-core-mlp", "and-ws2", "and-gc", "gc-seeded-0.9",
            "raw-gate", "mix-0.25", "mix-0.5", "mix-0.75", "mix-0.5-core4"]


def _seeded_growcut(images: dict, probs: np.ndarray, annotation: np.ndarray, zs: list[int], values: list[int],
                    tau: float) -> np.ndarray:
    """FastGrowCut seeded by the annotated slices and the voxels of class probability >= tau (the same two runs as
    `baselines.growcut_brats`: whole tumour on FLAIR, core labels on T1ce)."""
    conf = probs.max(-1) >= tau
    seeds = np.where(conf, probs.argmax(-1) + 1, 0).astype(np.uint8)
    seeds[..., zs] = np.searchsorted(values, annotation[..., zs]) + 1
    vals = np.asarray(values)

    def run(roles):
        image = next(images[r] for r in roles if r in images)
        return vals[np.clip(fast_growcut(image, seeds) - 1, 0, len(vals) - 1)]

    wt_run = run(WT_ROLES)
    if set(values) != {0, 1, 2, 4}:
        return wt_run.astype(np.int16)
    core = run(CORE_ROLES)
    result = np.where(wt_run > 0, 2, 0)
    core_in = (wt_run > 0) & np.isin(core, (1, 4))
    result[core_in] = core[core_in]
    return result.astype(np.int16)


def extent_prior(annotation: np.ndarray, zs: list[int], spacing, c: float) -> np.ndarray:
    """(Z,) weight of the tumour classes by axial distance beyond the outermost annotated slices: a logistic fall
    at c x the equivalent radius (mm) of the tumour on the nearest end slice; 1 between annotated slices."""
    z = np.arange(annotation.shape[-1])
    w = np.ones(len(z), np.float32)
    px = spacing[0] * spacing[1]
    for end, side in ((min(zs), z < min(zs)), (max(zs), z > max(zs))):
        r = np.sqrt(np.count_nonzero(annotation[..., end]) * px / np.pi)
        d = np.abs(z - end) * spacing[2]
        scale = max(c * r, 1e-3)
        w[side] = (1.0 / (1.0 + np.exp((d - scale) / (0.2 * scale))))[side]
    return w


def _with_prior(probs: np.ndarray, w: np.ndarray) -> np.ndarray:
    p = probs.copy()
    p[..., 1:] *= w[None, None, :, None]
    p[..., 0] = 1.0 - p[..., 1:].sum(-1)
    return p


def _watershed_labels(image: np.ndarray, annotation: np.ndarray, zs: list[int]) -> np.ndarray:
    """A watershed on the smoothed image's gradient with one marker per label of the annotated slices (background
    included): the label values of the annotation."""
    from scipy import ndimage
    from skimage.segmentation import watershed

    sm = ndimage.gaussian_filter(np.asarray(image, np.float32), 1.0)
    grad = np.sqrt(sum(ndimage.sobel(sm, axis=a) ** 2 for a in range(3)))
    values = np.unique(annotation[..., zs])
    markers = np.zeros(annotation.shape, np.int32)
    markers[..., zs] = np.searchsorted(values, annotation[..., zs]) + 1
    return values[watershed(grad, markers) - 1]


def apply_variant(name: str, entry: dict, case, fg: np.ndarray, annotation: np.ndarray) -> np.ndarray:
    probs, zs, values = entry["probs"], entry["annotated"], entry["values"]
    if name == "none":
        labels = entry["labels"]
    elif name == "growcut":
        return entry["growcut"]  # the baseline as the benchmark runs it (no post-processing)
    elif name == "raw-gate" or name.startswith("mix-"):
        if "raw_probs" not in entry:
            raise ValueError(f"variant {name} needs a cache with raw-mlp's probabilities (rerun the cache phase)")
        if name == "raw-gate":
            p, base = entry["raw_probs"], entry["raw_labels"]
        else:
            w, _, core_margin = name[len("mix-"):].partition("-core")
            p = float(w) * probs + (1 - float(w)) * entry["raw_probs"]
            base = np.asarray(values, dtype=np.int16)[p.argmax(-1)]
        labels = refine_labels(p, annotation, zs, values, fg, PropagationOptions(), case.images, labels=base)
        if name.startswith("mix-") and core_margin and set(values) == {0, 1, 2, 4}:
            core = watershed_tumour({"t1ce": case.images["t1ce"]}, np.where(np.isin(annotation, (1, 4)), 1, 0), zs)
            core = ndimage.distance_transform_edt(~core) <= float(core_margin)
            labels[np.isin(labels, (1, 4)) & ~core] = 2
            labels[..., zs] = annotation[..., zs]
    elif name.startswith("gate-m"):  # the product's watershed gate: gate-m{margin}[-s{xy}-{z}]
        parts = name[len("gate-m"):].split("-s")
        xy, z = parts[1].split("-") if len(parts) > 1 else (0, 0)
        opt = replace(PropagationOptions(), gate="watershed", gate_margin=float(parts[0]), smooth_xy=float(xy),
                      smooth_z=float(z))
        labels = refine_labels(probs, annotation, zs, values, fg, opt, case.images, labels=entry["labels"])
    elif name.startswith("ws-core"):  # whole tumour gated as the product does, the core of a 4-marker watershed
        labels = refine_labels(probs, annotation, zs, values, fg, PropagationOptions(), case.images,
                               labels=entry["labels"])
        if set(values) == {0, 1, 2, 4}:
            core = _watershed_labels(case.images["t1ce"], annotation, zs)
            tumour = labels > 0
            labels[tumour] = 2
            inner = tumour & np.isin(core, (1, 4))
            if name == "ws-core-mlp":  # necrotic / enhancing from the classifier
                i1, i4 = values.index(1), values.index(4)
                labels[inner] = np.where(probs[inner][:, i4] >= probs[inner][:, i1], 4, 1)
            else:
                labels[inner] = core[inner]
            labels[..., zs] = annotation[..., zs]
    elif name.startswith("and-"):
        p = smooth_probabilities(probs, 1.0, 2.0) if name.endswith("-s1-2") else probs
        base = np.asarray(values, dtype=np.int16)[p.argmax(-1)]
        other = entry["growcut"] > 0 if name.startswith("and-gc") else watershed_tumour(case.images, annotation, zs)
        labels = np.where(other & fg, base, 0).astype(np.int16)
        if name.startswith("and-ws2") and set(values) == {0, 1, 2, 4}:
            core = watershed_tumour({"t1ce": case.images["t1ce"]}, np.where(np.isin(annotation, (1, 4)), 1, 0), zs)
            labels[(labels == 1) & ~core] = 2
            labels[(labels == 4) & ~core] = 2
        labels[..., zs] = annotation[..., zs]
    elif name.startswith("prior-"):
        rest = name[len("prior-"):].split("-s")
        w = extent_prior(annotation, zs, case.spacing, float(rest[0]))
        p = _with_prior(probs, w)
        xy, z = (rest[1].split("-") if len(rest) > 1 else (0, 0))
        opt = replace(PropagationOptions(), smooth_xy=float(xy), smooth_z=float(z), gate="none")
        labels = refine_labels(p, annotation, zs, values, fg, opt)
    elif name.startswith("gc-seeded-"):
        rest = name[len("gc-seeded-"):]
        p = probs
        if rest.startswith("s"):
            sm, tau = rest.rsplit("-", 1)
            xy, z = sm[1:].split("-")
            p = smooth_probabilities(probs, float(xy), float(z))
        else:
            tau = rest
        labels = _seeded_growcut(case.images, p, annotation, zs, values, float(tau))
        labels[~fg] = 0
        labels[..., zs] = annotation[..., zs]
    else:
        parts = name[1:].split("-")
        opt = replace(PropagationOptions(), smooth_xy=float(parts[0]), smooth_z=float(parts[1]), gate="none",
                      decision="regions" if name.endswith("-regions") else "argmax")
        labels = refine_labels(probs, annotation, zs, values, fg, opt)
    return keep_connected_to_annotation(labels, annotation)


def evaluate(cache: Path, cases: list[str] | None, variants: list[str] | None, out: Path | None) -> list[dict]:
    variants = variants or default_variants()
    records = []
    for path in sorted(Path(cache).glob("*_k*.npz")):
        name, k = path.stem.rsplit("_k", 1)
        if cases and name not in cases:
            continue
        d = np.load(path)
        entry = {"probs": d["probs"].astype(np.float32), "labels": d["labels"], "growcut": d["growcut"],
                 "annotated": [int(z) for z in d["annotated"]], "values": [int(v) for v in d["values"]]}
        if "raw_probs" in d:
            entry.update(raw_probs=d["raw_probs"].astype(np.float32), raw_labels=d["raw_labels"])
        case = load_case(Path(str(d["case_dir"])))
        annotation, zs = simulate_annotation(case.label, int(k))
        assert list(zs) == entry["annotated"], (path, zs)
        fg = normalize_volume(case.images).foreground
        dataset = "LGG" if name.startswith("TCGA") else "BraTS"
        for v in variants:
            t = time.perf_counter()
            labels = apply_variant(v, entry, case, fg, annotation)
            sec = time.perf_counter() - t
            dice = region_dice(labels, case.label, zs)
            records.append({"case": name, "dataset": dataset, "k": int(k), "method": v, "dice": dice,
                            "seconds": round(sec, 2)})
            log.info("%s k=%s %s: %s (%.1f s)", name, k, v, {r: round(x, 3) for r, x in dice.items()}, sec)
    if out is not None:
        write_report(records, variants, Path(out))
    return records


def _table(records: list[dict], variants: list[str], dataset: str) -> list[str]:
    regions = ["WT", "TC", "ET"] if dataset == "BraTS" else ["WT"]
    rows = [r for r in records if r["dataset"] == dataset]
    ks = sorted({r["k"] for r in rows})
    lines = [f"### {dataset} ({len({r['case'] for r in rows})} tuning cases)", "",
             "| variant | " + " | ".join(f"{reg} k={k}" for k in ks for reg in regions) + " | s (refine) |",
             "|---|" + "---|" * (len(ks) * len(regions) + 1)]
    for v in variants:
        cells = []
        for k in ks:
            for reg in regions:
                vals = [r["dice"][reg] for r in rows if r["method"] == v and r["k"] == k]
                cells.append(f"{np.mean(vals):.3f}" if vals else "")
        secs = [r["seconds"] for r in rows if r["method"] == v]
        lines.append(f"| {v} | " + " | ".join(cells) + f" | {np.mean(secs):.1f} |")
    return lines + [""]


def write_report(records: list[dict], variants: list[str], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    pairs = [(v, b) for v in variants for b in ("none", "growcut") if v not in ("none", "growcut") or
             (v == "none" and b == "growcut")]
    diffs = []
    for dataset in ("BraTS", "LGG"):
        rows = [r for r in records if r["dataset"] == dataset]
        for d in paired_differences(rows, pairs):
            diffs.append(dict(d, dataset=dataset))
    (out / "results.json").write_text(json.dumps({"records": records, "paired": diffs}, indent=1))
    lines = ["# Refinement of the class probabilities in 3D (tuning cases)", "",
             "Mean Dice on the non-annotated slices; `python -m BrainDiffSegBench.refine_experiment` (see its "
             "docstring). Paired differences with bootstrap 95 % intervals in `results.json`.", ""]
    for dataset in ("BraTS", "LGG"):
        if any(r["dataset"] == dataset for r in records):
            lines += _table(records, variants, dataset)
    lines += ["### Paired per-case differences (A - B), bootstrap 95 % interval", "",
              "| dataset | A | B | k | region | mean | 95 % CI | A wins / B wins |", "|---|---|---|---|---|---|---|---|"]
    for d in diffs:
        lines.append(f"| {d['dataset']} | {d['a']} | {d['b']} | {d['k']} | {d['region']} | {d['mean']:+.3f} | "
                     f"[{d['lo']:+.3f}, {d['hi']:+.3f}] | {d['a_wins']} / {d['b_wins']} |")
    (out / "README.md").write_text("\n".join(lines) + "\n")


def summary(records: list[dict], variant: str, k: int, dataset: str, region: str) -> tuple[float, float, float]:
    """Mean and bootstrap interval of one variant's Dice."""
    return bootstrap_ci([r["dice"][region] for r in records if r["method"] == variant and r["k"] == k
                         and r["dataset"] == dataset and region in r["dice"]])
