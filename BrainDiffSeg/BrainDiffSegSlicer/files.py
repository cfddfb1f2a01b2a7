"""Case folders -> volume nodes and segmentations -> files, with storage nodes and the Volumes module logic (never
`slicer.util.load*` / `save*`, so this runs the same in Slicer, headless and under slicer-core)."""
from __future__ import annotations

import logging
import re
from pathlib import Path

import vtk

import slicer

from BrainDiffSegLib.constants import ROLES
from BrainDiffSegLib.errors import BrainDiffSegError, InputError, OutputExistsError

from . import arrays

log = logging.getLogger(__name__)


def loadCase(scene, volumesLogic, caseDir, loadGroundTruth: bool = False) -> dict:
    """Load the sequences of a case folder (BraTS 2018-2021, BraTS 2023 or LGG names) as volume nodes of `scene`.

    Returns role -> vtkMRMLScalarVolumeNode (and 'seg' -> vtkMRMLLabelMapVolumeNode with loadGroundTruth and
    a label file present). Every file first passes the engine's reader and checks (`BrainDiffSegLib.io.
    check_volume_file`: the command line refuses the same files with the same sentence), then loads with the Volumes
    module logic (archetype storage nodes); on any failure the nodes loaded so far are removed again."""
    from BrainDiffSegLib.io import check_volume_file, find_case_files

    files = find_case_files(caseDir)
    wanted = [r for r in ROLES if r in files] + (["seg"] if loadGroundTruth and "seg" in files else [])
    for role in wanted:  # the engine's reader and checks first: a damaged file is refused, not read as zeros
        check_volume_file(files[role], role)
    loaded = {}
    try:
        for role in wanted:
            path = Path(files[role])
            name = re.sub(r"\.nii(\.gz)?$", "", path.name)
            node = volumesLogic.AddArchetypeVolume(str(path), name, 1 if role == "seg" else 0)
            if node is None or node.GetImageData() is None:
                raise InputError(f"Cannot read {path} ({role}).")
            loaded[role] = node
    except Exception:
        for node in loaded.values():
            removeVolumeNode(node)
        raise
    return loaded


def removeVolumeNode(node):
    """Remove a volume node and its display and storage nodes from its scene."""
    scene = node.GetScene()
    extra = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    extra.append(node.GetStorageNode())
    scene.RemoveNode(node)
    for n in extra:
        if n is not None and n.GetScene() is not None:
            scene.RemoveNode(n)


def saveSegmentation(segmentationNode, path, referenceVolumeNode=None, force: bool = False,
                     backgroundLabel: int | None = None) -> Path:
    """Write a segmentation with a storage node, never overwriting an existing file unless `force`.

    `.seg.nrrd` / `.nrrd` (and `.nhdr`): Slicer's segmentation file, segment names and colours included.
    `.nii` / `.nii.gz`: a label volume on the grid of `referenceVolumeNode` (default: the segmentation's
    reference geometry volume) with the label values of the segment rule (`segments`: BraTS 1/2/4 for BraTS
    segments, as the engine and the command line write them); with `backgroundLabel`, a Background segment's
    voxels get that value (a seeds annotation: `braindiffseg propagate --annotation-mode seeds`).
    """
    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(f"{path} exists; pass force=True to overwrite it.")
    path.parent.mkdir(parents=True, exist_ok=True)
    lower = path.name.lower()
    if lower.endswith((".nii", ".nii.gz")):
        reference = referenceVolumeNode or segmentationNode.GetNodeReference(
            slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole())
        if reference is None:
            raise InputError(f"Saving '{segmentationNode.GetName()}' as {path.name} needs a reference volume "
                             "(the grid of the label volume).")
        labels, _, _ = arrays.labelArrayFromSegmentation(segmentationNode, reference, backgroundLabel)
        labelNode = slicer.vtkMRMLLabelMapVolumeNode()  # not added to the scene
        m = vtk.vtkMatrix4x4()
        reference.GetIJKToRASMatrix(m)
        labelNode.SetIJKToRASMatrix(m)
        image = arrays.orientedImageFromArray(labels, reference)
        plain = vtk.vtkImageData()
        plain.ShallowCopy(image)
        plain.SetOrigin(0, 0, 0)
        plain.SetSpacing(1, 1, 1)
        labelNode.SetAndObserveImageData(plain)
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetUseCompression(lower.endswith(".gz"))
    elif lower.endswith((".nrrd", ".nhdr")):
        labelNode = segmentationNode
        storage = segmentationNode.CreateDefaultStorageNode()
    else:
        raise InputError(f"Cannot save a segmentation as {path.name}: use .seg.nrrd or .nii.gz.")
    _write(storage, labelNode, path)
    return path


def _write(storage, node, path: Path) -> None:
    """Write through a storage node atomically (`BrainDiffSegLib.outputs.atomic`: a temporary file beside `path`,
    renamed over it once written): a failed or interrupted write leaves no partial file and the old one as it was.
    (A detached .nhdr header names its data file, so it is written in place.)"""
    from BrainDiffSegLib.outputs import atomic

    if path.name.lower().endswith(".nhdr"):
        storage.SetFileName(str(path))
        if not storage.WriteData(node):
            raise BrainDiffSegError(f"Writing {path} failed.")
    else:
        with atomic(path) as tmp:
            storage.SetFileName(str(tmp))
            if not storage.WriteData(node):
                raise BrainDiffSegError(f"Writing {path} failed; nothing was replaced.")
    log.info("wrote %s", path)


def saveVolume(volumeNode, path, force: bool = False) -> Path:
    """Write a scalar volume (e.g. an inpainted T1) with an archetype storage node not added to the scene (the
    node keeps no link to the file), never overwriting an existing file unless `force`. `.nii` / `.nii.gz` /
    `.nrrd`; the voxels, spacing, origin and axis directions are written as they are in the node (a parent
    transform is not applied: harden it first to save the transformed volume)."""
    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(f"{path} exists; pass force=True to overwrite it.")
    lower = path.name.lower()
    if not lower.endswith((".nii", ".nii.gz", ".nrrd", ".nhdr")):
        raise InputError(f"Cannot save volume '{volumeNode.GetName()}' as {path.name}: use .nii.gz or .nrrd.")
    path.parent.mkdir(parents=True, exist_ok=True)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetUseCompression(lower.endswith((".gz", ".nrrd")))
    _write(storage, volumeNode, path)
    return path
