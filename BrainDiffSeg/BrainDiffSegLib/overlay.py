"""Overlay pictures of a few axial slices: image, ground truth and prediction, so a person can judge a result."""
from __future__ import annotations

from pathlib import Path

import numpy as np

# BraTS colours: necrotic core red, edema green, enhancing yellow; other labels blue
COLOURS = {1: (0.9, 0.1, 0.1), 2: (0.1, 0.8, 0.2), 3: (0.2, 0.4, 1.0), 4: (1.0, 0.85, 0.0)}


def _rgb(image: np.ndarray, labels: np.ndarray | None, alpha: float = 0.45) -> np.ndarray:
    lo, hi = np.percentile(image, [1, 99.5])
    g = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.stack([g] * 3, -1)
    if labels is not None:
        for v in np.unique(labels):
            if v == 0:
                continue
            c = np.array(COLOURS.get(int(v), (0.2, 0.4, 1.0)))
            m = labels == v
            rgb[m] = (1 - alpha) * rgb[m] + alpha * c
    return rgb


def pick_slices(labels: np.ndarray, annotated: list[int], n: int = 5) -> list[int]:
    """n predicted (non-annotated) slices spread over the tumour's z-range."""
    zs = np.nonzero(labels.reshape(-1, labels.shape[-1]).any(0))[0]
    if len(zs) == 0:
        return []
    cand = [z for z in range(zs[0], zs[-1] + 1) if z not in annotated]
    idx = np.linspace(0, len(cand) - 1, min(n, len(cand))).round().astype(int)
    return [cand[i] for i in idx]


def save_overlay(path: str | Path, image: np.ndarray, prediction: np.ndarray, truth: np.ndarray | None,
                 annotated: list[int], title: str = "", n: int = 5) -> Path:
    """PNG with one column per slice; rows: prediction, and ground truth when given. Arrays axial-last."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    zs = pick_slices(truth if truth is not None else prediction, annotated, n)
    rows = [("prediction", prediction)] + ([("ground truth", truth)] if truth is not None else [])
    fig, axes = plt.subplots(len(rows), max(1, len(zs)), figsize=(2.4 * max(1, len(zs)), 2.5 * len(rows)), dpi=110,
                             squeeze=False)
    for c, z in enumerate(zs):
        for r, (name, lab) in enumerate(rows):
            ax = axes[r, c]
            ax.imshow(np.rot90(_rgb(image[..., z], lab[..., z])), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"slice {z}", fontsize=9)
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
