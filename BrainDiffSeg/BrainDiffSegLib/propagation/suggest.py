"""Which slice to paint next: rank the non-annotated axial slices of a propagation result (numpy only).

A slice is a candidate when it is not annotated and contains tumour-or-uncertain pixels (predicted tumour, or
normalised entropy above 0.5 - the "region of interest", ROI). Strategies (a higher score is a better suggestion):

- `uncertainty`: mean entropy of the ensemble's mean prediction over the slice's ROI (the first ranking, formerly
  `PropagationResult.least_certain_slices`).
- `disagreement`: mean fraction of ensemble members disagreeing with the ensemble over the ROI.
- `distance`: distance (in slices) to the nearest annotated slice, for candidates within the axial extent of the
  predicted tumour (ties: the larger ROI first).
- `uncertainty-distance`: mean ROI entropy x distance to the nearest annotated slice.
- `area-uncertainty`: summed ROI entropy, i.e. ROI area x mean entropy (the expected number of wrong pixels).
- `tumour-uncertainty`: summed ROI entropy, only slices with predicted tumour (no suggestion of a slice where
  only uncertainty, no tumour, was predicted).
- `tumour-distance`: predicted tumour area x distance to the nearest annotated slice, only slices with predicted
  tumour (an adaptive even spacing: large tumour slices far from what was painted).

`benchmark suggest` (`BrainDiffSegBench.suggest`) measures them with a simulated user; `DEFAULT_STRATEGY` is the one
that measured best there (docs/results/README.md, section 9).
"""
from __future__ import annotations

import numpy as np

STRATEGIES = ("uncertainty", "disagreement", "distance", "uncertainty-distance", "area-uncertainty",
              "tumour-uncertainty", "tumour-distance")
DEFAULT_STRATEGY = "tumour-uncertainty"
ROI_ENTROPY = 0.5


def slice_scores(result, strategy: str = DEFAULT_STRATEGY) -> dict[int, float]:
    """Score of every candidate slice (see the module docstring); {} when there is none.

    Computed for all slices at once (per-slice sums over the flattened slice), not slice by slice; in the engine
    (`suggestions_of`), not in a front end's process."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown suggestion strategy {strategy!r}; choose from {list(STRATEGIES)}")
    Z = result.labels.shape[-1]
    annotated = sorted({int(z) for z in result.annotated_slices})
    labels = np.asarray(result.labels).reshape(-1, Z)
    entropy = np.asarray(result.entropy, dtype=np.float64).reshape(-1, Z)
    tumour = labels > 0
    roi = tumour | (entropy > ROI_ENTROPY)
    count = roi.sum(axis=0)
    candidate = count > 0
    candidate[[z for z in annotated if 0 <= z < Z]] = False
    zs = np.arange(Z)
    dist = (np.abs(np.array(annotated, dtype=float)[:, None] - zs[None, :]).min(axis=0) if annotated
            else np.full(Z, float(Z)))
    roi_entropy = np.where(roi, entropy, 0.0).sum(axis=0)
    mean_e = roi_entropy / np.maximum(count, 1)
    area = tumour.sum(axis=0)
    if strategy == "uncertainty":
        score = mean_e
    elif strategy == "disagreement":
        disagreement = np.asarray(result.disagreement, dtype=np.float64).reshape(-1, Z)
        score = np.where(roi, disagreement, 0.0).sum(axis=0) / np.maximum(count, 1)
    elif strategy == "distance":
        tumour_z = np.nonzero(area)[0]
        lo, hi = (int(tumour_z[0]), int(tumour_z[-1])) if len(tumour_z) else (0, -1)
        candidate &= (zs >= lo) & (zs <= hi)
        score = dist + 1e-6 * count / labels.shape[0]  # ties: the larger ROI
    elif strategy == "uncertainty-distance":
        score = mean_e * dist
    elif strategy == "area-uncertainty":
        score = roi_entropy
    else:
        candidate &= area > 0
        score = roi_entropy if strategy == "tumour-uncertainty" else area * dist
    return {int(z): float(score[z]) for z in np.nonzero(candidate)[0]}


def rank_slices(result, n: int = 5, strategy: str = DEFAULT_STRATEGY) -> list[tuple[int, float]]:
    """The n best slices to annotate next as (axial index, score), best first; never an annotated slice.

    `result`: a `BrainDiffSegLib.propagation.propagate.PropagationResult` (labels, entropy, disagreement, annotated_slices)."""
    scores = slice_scores(result, strategy)
    return sorted(scores.items(), key=lambda s: (-s[1], s[0]))[:max(0, int(n))]


def next_slice(result, strategy: str = DEFAULT_STRATEGY) -> int | None:
    """The slice to paint next, or None when no slice is left to suggest (all annotated, or none with tumour or
    uncertainty)."""
    best = rank_slices(result, 1, strategy)
    return best[0][0] if best else None


def suggestions_of(result) -> dict:
    """What the front ends suggest after a propagation, as plain values for an engine response (`jobs`): the axial
    slice to paint next (`next_slice`, or None) and the 5 least certain slices with their scores. Ranked in the
    engine: on a whole head it took 0.2 s of the Slicer panel's main thread
    (docs/results/update_service/panel_ticks_before_engine_ranking.md)."""
    z = next_slice(result)
    return {"next_slice": None if z is None else int(z),
            "least_certain": [[int(q), float(score)] for q, score in result.least_certain_slices(5)]}
