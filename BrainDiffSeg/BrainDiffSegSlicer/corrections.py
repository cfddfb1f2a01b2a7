"""Corrections painted into a propagated segmentation, and locked segments (used by `BrainDiffSegLogic`).

Corrections: the Logic remembers, per result node and in memory only, the labels it wrote there (`WrittenLabels`).
When that node is updated again (`outputNode`), every axial slice whose labels now differ from the written ones is a
slice the user corrected: it becomes an annotated slice of the next run, with the labels it has in the result node.
A result segment stands for the label value of its tag `BrainDiffSeg.labelValue` (set by the Logic; the painted
segmentation's values), a segment the user added there for the value of the painted segment of the same name. A
slice the painted segmentation annotates keeps its painted labels (the painted one wins), and the painted
segmentation itself is never modified. After the scene is closed (`clearCache`) or reloaded, nothing is known of
what was written: then no corrections are taken, the result node is simply overwritten (minus its locked segments).
A slice corrected to no tumour at all is no annotation for the engine: it is predicted again.

In seeds mode (`PropagationJob.annotationMode`, issue 23) a correction is voxels, not slices: every voxel whose label
in the result node now differs from the written one becomes a seed of the next run with its new value, on any slice
of any view; a voxel where the user erased tumour becomes a Background seed (`job.backgroundLabel`). A voxel the
painted segmentation seeds keeps its painted label.

Locks: Slicer has no per-segment edit lock (the Segment Editor's `readOnly` locks the whole editor); its segments
table has a per-segment "State" column (the tag `Segmentation.Status`, `vtkSlicerSegmentationsModuleLogic.
GetSegmentStatus`). A segment whose state is "Completed" is locked: an update keeps a locked result segment exactly
as it is (id, name, colour, tags, voxels), writes no new voxel over it and drops the new prediction of its label
value. The painted segmentation is read only anyway.
"""
from __future__ import annotations

import uuid

import numpy as np
import vtk

import slicer

from . import arrays
from .segments import BINARY_LABELMAP, LABEL_VALUE_TAG

WRITTEN_TOKEN_ATTRIBUTE = "BrainDiffSeg.writtenToken"  # which in-memory record belongs to a result node


def isLocked(segment) -> bool:
    """Whether the user locked a segment (a vtkSegment): its state in the segments table is "Completed"."""
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    return segment is not None and logic.GetSegmentStatus(segment) == logic.Completed


def lockedSegmentIds(segmentationNode) -> list[str]:
    segmentation = segmentationNode.GetSegmentation()
    return [sid for sid in segmentation.GetSegmentIDs() if isLocked(segmentation.GetSegment(sid))]


def _tagValue(segment) -> int | None:
    value = vtk.reference("")
    if segment.GetTag(LABEL_VALUE_TAG, value):
        try:
            return int(str(value))
        except ValueError:
            return None
    return None


def paintedValues(paintedNode) -> tuple[dict, dict]:
    """Of the painted segmentation: segment name -> label value, label value -> segment id (all its segments)."""
    ids, values, _ = arrays.segmentLabelInfo(paintedNode)
    segmentation = paintedNode.GetSegmentation()
    return ({segmentation.GetSegment(s).GetName(): v for s, v in zip(ids, values)}, dict(zip(values, ids)))


def resultLabels(resultNode, referenceNode, axis: int, valueOfName: dict) -> tuple[np.ndarray, dict, list[str]]:
    """A result node's labels in the engine's layout and the painted values (see the module docstring); also the
    value of each segment with voxels and the names of segments that stand for no painted value (ignored)."""
    masks = arrays.segmentMasks(resultNode, referenceNode)
    dims = referenceNode.GetImageData().GetDimensions()
    labels = np.zeros(tuple(reversed(dims)), dtype=np.int16)
    segmentation = resultNode.GetSegmentation()
    valueOfSegment, unknown = {}, []
    for sid, mask in masks.items():
        segment = segmentation.GetSegment(sid)
        value = _tagValue(segment)
        if value is None:
            value = valueOfName.get(segment.GetName())
        if value is None or value <= 0:
            unknown.append(segment.GetName())
            continue
        labels[mask] = value
        valueOfSegment[sid] = value
    return arrays.toEngineArray(labels, axis), valueOfSegment, unknown


def writtenLabels(labels: np.ndarray, locked, valueOfName: dict, resultNode) -> np.ndarray:
    """What `resultLabels` reads back from a result node just filled with `labels` (engine layout, already without
    the locked segments' voxels and values) plus its `locked` segments (`lockedMasks`), computed without reading
    the node: each locked segment stands for its tagged value, else the painted value of its name; segments of no
    painted value are left out, as `resultLabels` does."""
    out = np.array(labels, dtype=np.int16, copy=True)
    segmentation = resultNode.GetSegmentation()
    for sid, mask, value in locked:
        if value is None:
            segment = segmentation.GetSegment(sid)
            value = valueOfName.get(segment.GetName()) if segment is not None else None
        if value is not None and value > 0:
            out[mask] = value
    return out


class WrittenLabels:
    """What the Logic wrote into each result node (engine layout), in memory; see the module docstring."""

    def __init__(self):
        self._records: dict = {}  # node id -> (token, labels)

    def clear(self) -> None:
        self._records = {}

    def remember(self, node, labels: np.ndarray) -> None:
        token = uuid.uuid4().hex
        node.SetAttribute(WRITTEN_TOKEN_ATTRIBUTE, token)
        self._records[node.GetID()] = (token, np.array(labels, copy=True))

    def written(self, node) -> np.ndarray | None:
        record = self._records.get(node.GetID()) if node is not None else None
        if record is None or node.GetAttribute(WRITTEN_TOKEN_ATTRIBUTE) != record[0]:
            return None
        return record[1]

    @property
    def nbytes(self) -> int:
        return sum(labels.nbytes for _, labels in self._records.values())


def takeCorrections(job, written: np.ndarray | None) -> tuple[list[int], list[str]]:
    """Make the slices corrected in `job.outputNode` annotated slices of `job` (its annotation and its
    `segmentIdOfValue` are extended). Returns the corrected slices taken and messages for the user."""
    if job.outputNode is None or written is None:
        return [], []
    valueOfName, idOfValue = paintedValues(job.segmentationNode)
    current, _, unknown = resultLabels(job.outputNode, job.referenceNode, job.axis, valueOfName)
    messages = []
    if unknown:
        messages.append(f"Segments {', '.join(sorted(set(unknown)))} of '{job.outputNode.GetName()}' match no "
                        f"segment of '{job.segmentationNode.GetName()}'; their voxels are not taken as corrections.")
    if written.shape != current.shape:
        return [], messages
    if job.annotationMode == "seeds":
        return _takeSeeds(job, current, written, idOfValue, messages)
    depth = current.shape[-1]
    edited = np.flatnonzero((current != written).reshape(-1, depth).any(axis=0))
    painted = set(np.flatnonzero(job.annotation.reshape(-1, depth).any(axis=0)).tolist())
    taken = []
    for z in (int(z) for z in edited):
        block = current[..., z]
        values = [int(v) for v in np.unique(block) if v != 0]
        if z in painted or not values or any(v not in idOfValue for v in values):
            continue
        job.annotation[..., z] = block
        for v in values:
            job.segmentIdOfValue.setdefault(v, idOfValue[v])
        taken.append(z)
    if taken:
        messages.append(f"Axial slices {', '.join(map(str, taken))} corrected in '{job.outputNode.GetName()}' "
                        "are annotated slices of this run.")
    return taken, messages


def _takeSeeds(job, current: np.ndarray, written: np.ndarray, idOfValue: dict, messages: list[str]):
    """`takeCorrections` in seeds mode: the changed voxels as seeds (see the module docstring)."""
    tumour = [v for v in idOfValue if v > 0]
    seeds = (current != written) & (job.annotation == 0) & ((current == 0) | np.isin(current, tumour))
    if not seeds.any():
        return [], messages
    values = current[seeds]
    job.annotation[seeds] = np.where(values == 0, job.backgroundLabel, values)
    for v in (int(v) for v in np.unique(values) if v != 0):
        job.segmentIdOfValue.setdefault(v, idOfValue[v])
    taken = [int(z) for z in np.flatnonzero(seeds.reshape(-1, seeds.shape[-1]).any(axis=0))]
    n = int(seeds.sum())
    where = ", ".join(map(str, taken)) if len(taken) <= 8 else f"{taken[0]} to {taken[-1]}"
    messages.append(f"{n} voxel{'s' if n > 1 else ''} corrected in '{job.outputNode.GetName()}' (axial slices "
                    f"{where}) {'are seeds' if n > 1 else 'is a seed'} of this run.")
    return taken, messages


def lockedMasks(resultNode, referenceNode, axis: int) -> list[tuple[str, np.ndarray, int | None]]:
    """The locked segments of a result node: (segment id, engine-layout mask, label value or None)."""
    ids = lockedSegmentIds(resultNode)
    if not ids:
        return []
    masks = arrays.segmentMasks(resultNode, referenceNode)
    dims = tuple(reversed(referenceNode.GetImageData().GetDimensions()))
    segmentation = resultNode.GetSegmentation()
    return [(sid, arrays.toEngineArray(masks.get(sid, np.zeros(dims, bool)), axis),
             _tagValue(segmentation.GetSegment(sid))) for sid in ids]


def withoutLocked(labels: np.ndarray, locked) -> np.ndarray:
    """Engine labels with nothing written over a locked segment's voxels nor in its label value."""
    if not locked:
        return labels
    labels = labels.copy()
    for _, mask, value in locked:
        labels[mask] = 0
        if value is not None:
            labels[labels == value] = 0
    return labels


def copyLockedSegments(target, source, locked, referenceNode, axis: int) -> None:
    """Add the locked segments of `source` to `target` (a segmentation node outside the scene) with their ids and
    metadata, each as its own binary labelmap layer of its voxels."""
    for sid, mask, _ in locked:
        segment = slicer.vtkSegment()
        segment.DeepCopyMetadata(source.GetSegmentation().GetSegment(sid))
        kji = arrays.fromEngineArray(mask.astype(np.uint8), axis)
        segment.AddRepresentation(BINARY_LABELMAP, arrays.orientedImageFromArray(kji, referenceNode))
        segment.SetLabelValue(1)
        target.GetSegmentation().AddSegment(segment, sid)
