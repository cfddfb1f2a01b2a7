"""Segment names <-> BraTS labels, the result segments' terminology and colours, sequence roles guessed from volume
names, and the node attribute / reference-role names the module writes. Standard library only.

Each segment of the user's segmentation is classified by its name (case-insensitive), else by its terminology:

* BraTS label 1 (necrotic / non-enhancing tumour core): names containing "necro", "non-enhancing" /
  "nonenhancing", or the words "NCR" / "NET";
* BraTS label 2 (edema): names containing "edema" / "oedema" / "peritumoral", or the word "ED";
* BraTS label 4 (enhancing tumour): names containing "enhancing" (but not "non-enhancing"), or the word "ET".

If *every* segment is recognised and no two segments fall in the same class, the segments get the BraTS values
1 / 2 / 4 and the result uses the BraTS segment names 'Necrotic core', 'Edema', 'Enhancing tumour'. Otherwise the
segments get the values 1..N in the order of the segments in the segmentation, and the result has one segment per
user segment, with the user's names (and colours, unless two segments share a colour). Where segments overlap,
the later segment in the list wins. Empty segments keep their value but produce no output segment.
"""
from __future__ import annotations

import re

from BrainDiffSegLib.constants import BRATS_CLASSES, ROLES

BINARY_LABELMAP = "Binary labelmap"
BRATS_SEGMENTS = BRATS_CLASSES  # label value -> (segment name, colour)
PALETTE = [(0.90, 0.10, 0.10), (0.10, 0.80, 0.20), (1.00, 0.85, 0.00), (0.10, 0.45, 0.95), (0.85, 0.30, 0.90),
           (0.00, 0.80, 0.80), (1.00, 0.55, 0.10), (0.55, 0.35, 0.15)]
# Terminology of the BraTS result segments (Slicer's 'category and type' list; SNOMED CT codes), anatomic region brain
_TERMINOLOGY = ("Segmentation category and type - 3D Slicer General Anatomy list~SCT^49755003^Morphologically Altered "
                "Structure~SCT^{code}^{meaning}~^^~Anatomic codes - DICOM master list~SCT^12738006^Brain~^^")
BRATS_TERMINOLOGY = {
    1: _TERMINOLOGY.format(code="6574001", meaning="Necrosis"),
    2: _TERMINOLOGY.format(code="79654002", meaning="Edema"),
    4: _TERMINOLOGY.format(code="108369006", meaning="Neoplasm"),
}
UNCERTAINTY_REFERENCE_ROLE = "BrainDiffSeg.uncertainty"  # result segmentation -> its uncertainty volume
SOURCE_REFERENCE_ROLE = "BrainDiffSeg.sourceSegmentation"  # result segmentation -> the painted segmentation
ANNOTATED_SLICES_ATTRIBUTE = "BrainDiffSeg.annotatedSlices"  # JSON {"axis": "K", "indices": [...]}
LABEL_VALUES_ATTRIBUTE = "BrainDiffSeg.labelValues"  # JSON list of the result's label values
LABEL_VALUE_TAG = "BrainDiffSeg.labelValue"  # segment tag of a result segment: the label value it stands for
# Slicer's segment status tag (vtkSlicerSegmentationsModuleLogic.GetStatusTagName(), the "State" column of the
# segments table) and the status that locks a segment: a propagation never changes a "Completed" segment
STATUS_TAG, LOCKED_STATUS = "Segmentation.Status", "completed"

__all__ = ["ROLES", "BINARY_LABELMAP", "BRATS_SEGMENTS", "PALETTE", "BRATS_TERMINOLOGY", "UNCERTAINTY_REFERENCE_ROLE",
           "SOURCE_REFERENCE_ROLE", "ANNOTATED_SLICES_ATTRIBUTE", "LABEL_VALUES_ATTRIBUTE", "LABEL_VALUE_TAG",
           "STATUS_TAG", "LOCKED_STATUS", "bratsLabelOfName", "isBackgroundName",
           "labelValuesForSegments", "roleOfVolumeName", "guessInputs"]


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"[^a-z0-9]+", text.lower()) if w]


def bratsLabelOfName(text: str) -> int | None:
    """BraTS label (1, 2, 4) a segment name or terminology string refers to, or None (see the module docstring)."""
    t = text.lower()
    words = _words(text)
    if "necro" in t or re.search(r"non[\s_-]?enhanc", t) or "ncr" in words or "net" in words:
        return 1
    if "enhanc" in t or "et" in words:
        return 4
    if "edema" in t or "oedema" in t or "peritumo" in t or "ed" in words:
        return 2
    return None


def isBackgroundName(name: str) -> bool:
    """A segment the user named as background ('Background', 'background 2', 'BG'): not a tumour class."""
    words = _words(name)
    return "background" in words or words == ["bg"]


def labelValuesForSegments(names: list[str], terminologies: list[str] | None = None) -> tuple[list[int], bool]:
    """Label value of each segment (in segment order) and whether the BraTS values were used.

    A segment named as background (`isBackgroundName`) gets 0: it is no tumour class and its voxels are not
    propagated (in seeds mode its voxels become background seeds: `arrays.labelArrayFromSegmentation`). The
    others: BraTS values (1 necrotic core, 2 edema, 4 enhancing) when every one is recognised by its
    name, or else by its terminology, and no two fall in the same class; otherwise 1..N in segment order."""
    terminologies = terminologies or [""] * len(names)
    background = [isBackgroundName(n) for n in names]
    if any(background):
        kept = [(n, t) for n, t, b in zip(names, terminologies, background) if not b]
        values, brats = labelValuesForSegments([n for n, _ in kept], [t for _, t in kept])
        it = iter(values)
        return [0 if b else next(it) for b in background], brats
    brats = []
    for name, term in zip(names, terminologies):
        value = bratsLabelOfName(name)
        if value is None and term:
            # a terminology entry is 'context~category~type~modifier~...'; the type and modifier carry the meaning
            value = bratsLabelOfName(" ".join(term.split("~")[2:4]).replace("^", " "))
        brats.append(value)
    if names and None not in brats and len(set(brats)) == len(brats):
        return brats, True
    return list(range(1, len(names) + 1)), False


def roleOfVolumeName(name: str) -> str | None:
    """The sequence role a volume's name suggests (BraTS, BraTS 2023 and LGG file names), or None."""
    words = _words(name)
    if "flair" in words or "t2f" in words:
        return "flair"
    if {"t1ce", "t1c", "t1gd", "post"} & set(words):
        return "t1ce"
    if {"t2", "t2w"} & set(words):
        return "t2"
    if {"t1", "t1n", "pre"} & set(words):
        return "t1"
    return None


def guessInputs(volumeNodes) -> dict:
    """role -> node for the first volume whose name names each role (label maps excluded)."""
    found = {}
    for node in volumeNodes:
        if node is None or node.IsA("vtkMRMLLabelMapVolumeNode"):
            continue
        role = roleOfVolumeName(node.GetName())
        if role and role not in found:
            found[role] = node
    return found
