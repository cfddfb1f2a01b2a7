"""Slices of the three views and the strokes painted on them, on arrays only (numpy; no scene, no UI).

A slice view cuts one IJK axis of the reference volume (`plane_axes`): axial the engine's axial axis, sagittal the
axis closest to right-left, coronal the remaining one. trame-slicer's one-slice brush (`paint_fix.use_slice_brush`)
paints a stroke into one slice of the view it is painted in, so the strokes of a seeds annotation can be told apart
by the slices they lie in (`seed_planes`), and the panel can say so (`summary`).
"""
from __future__ import annotations

import numpy as np

ORIENTATIONS = ("axial", "sagittal", "coronal")  # the slice views' orientations (views Red, Yellow, Green)


def plane_axes(ijk_to_ras: np.ndarray, axial_axis: int) -> dict[str, int]:
    """Orientation -> the IJK axis its slices cut: axial `axial_axis` (the engine's rule), sagittal the other axis
    whose direction is closest to right-left, coronal the remaining one."""
    directions = np.abs(np.asarray(ijk_to_ras, float)[:3, :3])
    rest = [a for a in range(3) if a != axial_axis]
    sagittal = max(rest, key=lambda a: directions[0, a] / max(float(np.linalg.norm(directions[:, a])), 1e-12))
    return {"axial": int(axial_axis), "sagittal": int(sagittal), "coronal": next(a for a in rest if a != sagittal)}


def seed_planes(painted_kji: np.ndarray, axes: dict[str, int]) -> dict[str, list[int]]:
    """Orientation -> the slices (indices along its IJK axis, `axes`) that hold strokes, and 'other' -> [the number
    of painted voxels in none of them]. painted_kji: the painted voxels (any segment), KJI as Slicer's arrays.

    A voxel is thin in an orientation when neither neighbouring slice of that orientation has a painted voxel
    beside it: what the one-slice brush leaves in the view it paints in. A slice holds a stroke when a fifth of its
    painted voxels, and at least 3 (or all), are thin: a stroke of another view crossing it (a line through the
    slice, thick across it) does not hide a stroke there, and the few thin tips of a narrow brush's stroke do not
    make a slice of another orientation. A one-voxel-wide line lies in two slices and is listed in both; a blob
    painted on neighbouring slices lies in none ('other')."""
    painted = np.asarray(painted_kji, bool)
    out: dict[str, list[int]] = {o: [] for o in ORIENTATIONS}
    covered = np.zeros_like(painted)
    if painted.any():
        for orientation in ORIENTATIONS:
            along = 2 - axes[orientation]  # the numpy axis of that IJK axis in a KJI array
            padded = np.pad(painted, [(1, 1) if a == along else (0, 0) for a in range(3)])
            n = painted.shape[along]
            thin = painted & ~np.take(padded, range(n), axis=along) & ~np.take(padded, range(2, n + 2), axis=along)
            others = tuple(a for a in range(3) if a != along)
            n_thin, n_painted = thin.sum(axis=others), painted.sum(axis=others)
            planes = np.flatnonzero((n_painted > 0) & (n_thin >= np.minimum(3, n_painted)) & (5 * n_thin >= n_painted))
            out[orientation] = [int(p) for p in planes]
            index = [slice(None)] * 3
            index[along] = planes
            covered[tuple(index)] |= painted[tuple(index)]
    out["other"] = [int(np.count_nonzero(painted & ~covered))]
    return out


def _indices(values: list[int], limit: int = 12) -> str:
    shown = ", ".join(map(str, values[:limit]))
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")


def summary(mode: str, annotated: list[int], planes: dict[str, list[int]] | None = None,
            voxels: dict[str, int] | None = None) -> str:
    """What the panel says of the painting. 'slices': the annotated axial slices (those with a tumour voxel);
    'seeds': the slices of each orientation that hold strokes and the painted voxels of each segment."""
    if mode != "seeds":
        return f"Annotated axial slices: {', '.join(map(str, annotated)) if annotated else 'none'}"
    planes = planes or {}
    parts = [f"{o} {_indices(planes[o])}" for o in ORIENTATIONS if planes.get(o)]
    other = (planes.get("other") or [0])[0]
    if other:
        parts.append(f"{other} voxels across neighbouring slices")
    counts = ", ".join(f"{name} {n}" for name, n in (voxels or {}).items() if n)
    if not parts:
        return "Seeds: none painted yet"
    return f"Seeds on {'; '.join(parts)}" + (f" (voxels: {counts})" if counts else "")
