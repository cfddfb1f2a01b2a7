"""MRML volumes and segmentations <-> numpy arrays in the engine's layout, and the checks of the inputs.

Module functions, no scene state (used through `BrainDiffSegLogic`, which also re-exports them). Axes:
`slicer.util.arrayFromVolume` gives KJI arrays; the engine wants IJK with the axial axis last (as from NIfTI).
Reading a segmentation needs the segmentation representation converters, which creating a Segmentations module
logic registers (every `BrainDiffSegLogic` has one).
"""
from __future__ import annotations

import json

import numpy as np
import vtk
from vtk.util import numpy_support

import slicer
import slicer.util

from BrainDiffSegLib.constants import AFFINE_TOLERANCE_MM, ROLES
from BrainDiffSegLib.errors import InputError

from .segments import (ANNOTATED_SLICES_ATTRIBUTE, BINARY_LABELMAP, BRATS_SEGMENTS, BRATS_TERMINOLOGY,
                       LABEL_VALUE_TAG, LABEL_VALUES_ATTRIBUTE, PALETTE, SOURCE_REFERENCE_ROLE, isBackgroundName,
                       labelValuesForSegments)


# ---------------------------------------------------------------------------------------------- geometry and arrays

def ijkToRasArray(volumeNode) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(i, j) for j in range(4)] for i in range(4)])


def axialAxis(volumeNode) -> int:
    """IJK axis of the volume closest to superior-inferior (the engine's rule, as for NIfTI files);
    InputError naming the node for oblique volumes."""
    from BrainDiffSegLib.io import axial_axis_of

    return axial_axis_of(ijkToRasArray(volumeNode), f"Volume '{volumeNode.GetName()}'")


def toEngineArray(kji: np.ndarray, axialAxis: int) -> np.ndarray:
    """A KJI array (slicer.util.arrayFromVolume) -> IJK with the axial axis last (the engine's convention)."""
    return np.moveaxis(np.transpose(kji, (2, 1, 0)), axialAxis, -1)


def fromEngineArray(array: np.ndarray, axialAxis: int) -> np.ndarray:
    """Inverse of `toEngineArray`: an axial-last IJK array -> KJI, contiguous."""
    return np.ascontiguousarray(np.transpose(np.moveaxis(array, -1, axialAxis), (2, 1, 0)))


def referenceImage(volumeNode):
    """An empty vtkOrientedImageData with the geometry (extent, IJK-to-RAS) of the volume."""
    ref = slicer.vtkOrientedImageData()
    ref.SetExtent(volumeNode.GetImageData().GetExtent())
    m = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(m)
    ref.SetImageToWorldMatrix(m)
    return ref


def orientedImageFromArray(kji: np.ndarray, volumeNode):
    img = referenceImage(volumeNode)
    vtkType = vtk.VTK_UNSIGNED_CHAR if kji.max(initial=0) < 256 and kji.min(initial=0) >= 0 else vtk.VTK_SHORT
    img.AllocateScalars(vtkType, 1)
    scalars = numpy_support.vtk_to_numpy(img.GetPointData().GetScalars())
    scalars[:] = kji.ravel()
    return img


def addVolumeFromArray(scene, kji: np.ndarray, ijkToRas, name: str = "",
                       className: str = "vtkMRMLScalarVolumeNode", windowLevel: tuple | None = None):
    """A new volume node in `scene` with the voxels of a KJI array (copied) and a 4x4 IJK-to-RAS matrix; as
    `slicer.util.addVolumeFromArray`, but in the given scene. `windowLevel`: the (min, max) shown, for a volume
    whose range is known (the uncertainty's 0..1): no histogram of the voxels is computed (half the time of adding
    a BraTS-sized volume)."""
    node = scene.AddNewNodeByClass(className, name)
    m = vtk.vtkMatrix4x4()
    for i in range(4):
        for j in range(4):
            m.SetElement(i, j, float(np.asarray(ijkToRas)[i, j]))
    node.SetIJKToRASMatrix(m)
    slicer.util.updateVolumeFromArray(node, kji)
    if windowLevel is None or not node.IsA("vtkMRMLScalarVolumeNode") or node.IsA("vtkMRMLLabelMapVolumeNode"):
        node.CreateDefaultDisplayNodes()
        return node
    display = scene.AddNewNodeByClass("vtkMRMLScalarVolumeDisplayNode")
    display.SetAutoWindowLevel(False)
    display.SetWindowLevelMinMax(float(windowLevel[0]), float(windowLevel[1]))
    if scene.GetNodeByID("vtkMRMLColorTableNodeGrey") is not None:
        display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeGrey")
    node.SetAndObserveDisplayNodeID(display.GetID())
    return node


def setSegmentFromArray(segmentationNode, segmentId: str, mask: np.ndarray, referenceVolumeNode) -> None:
    """Replace a segment's voxels by a binary KJI mask on the grid of `referenceVolumeNode` (what painting does;
    as `slicer.util.updateSegmentBinaryLabelmapFromArray`, without a temporary node in a scene)."""
    image = orientedImageFromArray((np.asarray(mask) > 0).astype(np.uint8), referenceVolumeNode)
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    if not logic.SetBinaryLabelmapToSegment(image, segmentationNode, segmentId, logic.MODE_REPLACE,
                                            image.GetExtent()):
        raise RuntimeError(f"Setting the voxels of segment '{segmentId}' of '{segmentationNode.GetName()}' "
                           "failed.")


def checkVolumes(volumeNodes: dict) -> dict:
    """role -> node in ROLES order, None values dropped; every node a 3D scalar volume with voxels."""
    if not isinstance(volumeNodes, dict):
        raise InputError("volumeNodes must map sequence roles (t1, t1ce, t2, flair) to volume nodes.")
    unknown = sorted(set(volumeNodes) - set(ROLES))
    if unknown:
        raise InputError(f"Unknown sequence role(s) {unknown}; use {list(ROLES)}.")
    volumes = {r: volumeNodes[r] for r in ROLES if volumeNodes.get(r) is not None}
    if not volumes:
        raise InputError("No input volume selected: select at least one of T1, T1ce, T2, FLAIR.")
    for role, node in volumes.items():
        ok = (hasattr(node, "IsA") and node.IsA("vtkMRMLScalarVolumeNode")
              and not node.IsA("vtkMRMLLabelMapVolumeNode"))
        if not ok:
            raise InputError(f"The {role} input '{getattr(node, 'GetName', lambda: node)()}' is not a scalar "
                             "volume.")
        image = node.GetImageData()
        if image is None or image.GetNumberOfPoints() == 0:
            raise InputError(f"Volume '{node.GetName()}' ({role}) has no voxels.")
        if image.GetNumberOfScalarComponents() != 1:
            raise InputError(f"Volume '{node.GetName()}' ({role}) has {image.GetNumberOfScalarComponents()} "
                             "components per voxel; use a grey-level (scalar) MRI volume.")
    return volumes


def checkSameGrid(volumes: dict) -> None:
    """All volumes share dimensions, spacing, origin and axis directions (clear InputError otherwise)."""
    (refRole, ref), *others = volumes.items()
    refMatrix = ijkToRasArray(ref)
    for role, node in others:
        what = None
        if node.GetImageData().GetDimensions() != ref.GetImageData().GetDimensions():
            what = ("dimensions", node.GetImageData().GetDimensions(), ref.GetImageData().GetDimensions())
        elif not np.allclose(node.GetSpacing(), ref.GetSpacing(), atol=AFFINE_TOLERANCE_MM):
            what = ("spacing", node.GetSpacing(), ref.GetSpacing())
        elif not np.allclose(node.GetOrigin(), ref.GetOrigin(), atol=AFFINE_TOLERANCE_MM):
            what = ("origin", node.GetOrigin(), ref.GetOrigin())
        elif not np.allclose(ijkToRasArray(node), refMatrix, atol=AFFINE_TOLERANCE_MM):
            what = ("axis directions", "", "")
        if what:
            name, mine, theirs = what
            detail = f" {tuple(round(float(v), 4) for v in mine)}" if len(mine) else ""
            other = f" {tuple(round(float(v), 4) for v in theirs)}" if len(theirs) else ""
            raise InputError(
                f"Volume '{node.GetName()}' ({role}) and volume '{ref.GetName()}' ({refRole}) are not on one "
                f"grid: different {name}{detail} vs{other}. All sequences must be co-registered on one grid "
                "(resample them onto one of them first).")


def checkTransforms(volumes: dict, segmentationNode) -> str | None:
    pairs = [(n.GetName(), n.GetTransformNodeID() or "") for n in list(volumes.values()) + [segmentationNode]]
    if len({tid for _, tid in pairs}) > 1:
        where = ", ".join(f"'{n}': {t or 'no transform'}" for n, t in pairs)
        raise InputError("The input volumes and the segmentation are under different transforms: harden the "
                         "transforms (Data module, right-click > Harden transform) or put all of them under the "
                         f"same one ({where}).")
    return segmentationNode.GetTransformNodeID()


def volumeArray(volumeNode, axialAxis: int) -> np.ndarray:
    """The voxels of a volume node as float32, IJK with the axial axis last (a copy)."""
    return toEngineArray(slicer.util.arrayFromVolume(volumeNode), axialAxis).astype(np.float32)


def engineVolumeArray(volumeNode, axialAxis: int) -> np.ndarray:
    """The voxels of a volume node in their own type (what travels to an engine service: int16 is half of float32;
    the engine reads them as float32, the same values), IJK with the axial axis last, a C-ordered copy."""
    return _sendable(toEngineArray(slicer.util.arrayFromVolume(volumeNode), axialAxis))


def _sendable(array: np.ndarray) -> np.ndarray:
    from BrainDiffSegLib.transfer import DTYPES

    array = np.ascontiguousarray(array)
    return array if array.dtype.str in DTYPES else array.astype(np.float32)

def sliceCentreRas(volumeNode, axialIndex: int) -> tuple[float, float, float]:
    """RAS centre of an axial slice of a volume, the slice given by its index along the engine's axial axis (the
    IJK axis `axialAxis` picks): for jumping a slice view there."""
    axis = axialAxis(volumeNode)
    ijk = [(d - 1) / 2.0 for d in volumeNode.GetImageData().GetDimensions()]
    ijk[axis] = float(axialIndex)
    ras = ijkToRasArray(volumeNode) @ [*ijk, 1.0]
    return float(ras[0]), float(ras[1]), float(ras[2])

# ---------------------------------------------------------------------------------------------- segments <-> labels

def segmentLabelInfo(segmentationNode) -> tuple[list[str], list[int], bool]:
    """Segment ids in order, their label values and whether the BraTS values are used."""
    segmentation = segmentationNode.GetSegmentation()
    ids = list(segmentation.GetSegmentIDs())
    names, terms = [], []
    for sid in ids:
        segment = segmentation.GetSegment(sid)
        names.append(segment.GetName() or sid)
        terms.append(segment.GetTerminology() if hasattr(segment, "GetTerminology") else "")
    values, brats = labelValuesForSegments(names, terms)
    return ids, values, brats


def labelArrayFromSegmentation(segmentationNode, referenceVolumeNode,
                               backgroundLabel: int | None = None) -> tuple[np.ndarray, dict, bool]:
    """The segments as one label array (KJI, on the reference volume's grid), label value -> segment id (the
    tumour classes), and whether the BraTS values are used. A segment named as background (`segments.
    isBackgroundName`) is no class: its voxels stay 0, unless `backgroundLabel` is given (the seeds mode: 0 is
    unknown there), when they get that value. The segmentation node is only read: conversions, if any, are made on
    a copy outside the scene."""
    ids, values, brats = segmentLabelInfo(segmentationNode)
    if backgroundLabel is not None:
        clash = [segmentationNode.GetSegmentation().GetSegment(s).GetName() for s, v in zip(ids, values)
                 if v == backgroundLabel]
        if clash:
            raise InputError(f"Segment '{clash[0]}' of '{segmentationNode.GetName()}' has the label value "
                             f"{backgroundLabel}, which stands for Background in seeds mode: use fewer segments "
                             "or another background label.")
    dims = referenceVolumeNode.GetImageData().GetDimensions()
    labels = np.zeros(tuple(reversed(dims)), dtype=np.int16)
    masks = segmentMasks(segmentationNode, referenceVolumeNode)
    segmentIdOfValue = {}
    for sid, value in zip(ids, values):
        if sid in masks and value != 0:
            labels[masks[sid]] = value
            segmentIdOfValue[value] = sid
        elif sid in masks and backgroundLabel is not None:  # a Background segment in seeds mode
            labels[masks[sid]] = backgroundLabel
    return labels, segmentIdOfValue, brats


def backgroundSegmentIds(segmentationNode, painted: bool = False) -> list[str]:
    """The segments named as background (`segments.isBackgroundName`); with `painted`, only those with voxels."""
    segmentation = segmentationNode.GetSegmentation()
    ids = [sid for sid in segmentation.GetSegmentIDs()
           if isBackgroundName(segmentation.GetSegment(sid).GetName() or "")]
    return [sid for sid in ids if segmentHasVoxels(segmentationNode, sid)] if painted else ids


def segmentHasVoxels(segmentationNode, segmentId: str) -> bool:
    """Whether a segment has painted voxels, read from its source representation without conversion (cheap: the
    panel asks on every change)."""
    segmentation = segmentationNode.GetSegmentation()
    segment = segmentation.GetSegment(segmentId)
    data = segment.GetRepresentation(segmentation.GetSourceRepresentationName()) if segment is not None else None
    if data is None:
        return False
    if data.IsA("vtkPolyData"):
        return data.GetNumberOfPoints() > 0
    scalars = data.GetPointData().GetScalars() if data.GetPointData() is not None else None
    if scalars is None or data.GetNumberOfPoints() == 0:
        return False
    # a shared labelmap holds several segments, each with its own value
    return bool(np.any(numpy_support.vtk_to_numpy(scalars) == segment.GetLabelValue()))


def segmentMasks(segmentationNode, referenceVolumeNode) -> dict:
    """Segment id -> boolean KJI mask on the reference volume's grid, for the segments with voxels there (in the
    segmentation's order). The node is only read: conversions, if any, are made on a copy outside the scene."""
    ids = list(segmentationNode.GetSegmentation().GetSegmentIDs())
    dims = referenceVolumeNode.GetImageData().GetDimensions()
    if not ids:
        return {}
    reference = referenceImage(referenceVolumeNode)
    source = segmentationNode
    if not segmentationNode.GetSegmentation().ContainsRepresentation(BINARY_LABELMAP):
        source = slicer.vtkMRMLSegmentationNode()  # not added to the scene
        source.GetSegmentation().DeepCopy(segmentationNode.GetSegmentation())
        source.GetSegmentation().SetConversionParameter(
            slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(),
            slicer.vtkSegmentationConverter.SerializeImageGeometry(reference))
        if not source.GetSegmentation().CreateRepresentation(BINARY_LABELMAP):
            raise InputError(f"Segmentation '{segmentationNode.GetName()}' cannot be converted to a binary "
                             "labelmap.")
    masks = {}
    for sid in ids:
        image = slicer.vtkOrientedImageData()
        if not source.GetBinaryLabelmapRepresentation(sid, image):
            raise InputError(f"Segment '{sid}' of '{segmentationNode.GetName()}' has no binary labelmap.")
        resampled = slicer.vtkOrientedImageData()
        slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            image, reference, resampled, False, False)
        if resampled.GetPointData().GetScalars() is None or resampled.GetDimensions() != dims:
            continue  # nothing of this segment on the volume's grid
        mask = numpy_support.vtk_to_numpy(resampled.GetPointData().GetScalars()).reshape(tuple(reversed(dims))) > 0
        if mask.any():
            masks[sid] = mask
    return masks


def multiComponentArrays(vectorNode, componentRoles=None, native: bool = False) -> dict:
    """The components of a multi-component volume as engine arrays, one per sequence role (float32, or with
    `native` in the volume's own type, C-ordered)."""
    if not vectorNode.IsA("vtkMRMLScalarVolumeNode") or vectorNode.GetImageData() is None:
        raise InputError(f"'{vectorNode.GetName()}' is not a volume with voxels.")
    n = vectorNode.GetImageData().GetNumberOfScalarComponents()
    if componentRoles is None:
        if n != len(ROLES):
            raise InputError(f"Volume '{vectorNode.GetName()}' has {n} components: say which sequence each "
                             f"component is (e.g. 'flair,t1ce'); 4 components are read as {', '.join(ROLES)}.")
        componentRoles = ROLES
    roles = [r.strip().lower() for r in componentRoles if r and r.strip()]
    if len(roles) != n:
        raise InputError(f"Volume '{vectorNode.GetName()}' has {n} components but {len(roles)} sequence "
                         f"names were given ({', '.join(roles) or 'none'}).")
    unknown = sorted(set(roles) - set(ROLES))
    if unknown or len(set(roles)) != len(roles):
        raise InputError(f"Component names {roles} must be distinct sequence roles among {list(ROLES)}.")
    kjic = slicer.util.arrayFromVolume(vectorNode)
    if kjic.ndim == 3:
        kjic = kjic[..., None]
    axis = axialAxis(vectorNode)
    if native:
        return {role: _sendable(toEngineArray(kjic[..., c], axis)) for c, role in enumerate(roles)}
    return {role: toEngineArray(kjic[..., c], axis).astype(np.float32) for c, role in enumerate(roles)}


# ---------------------------------------------------------------------------------------------- results

def fillResultSegmentation(node, job, result):
    """Fill `node` with one segment per predicted label value of an engine result (names, colours, label values and
    terminology by the rule in `segments`), the annotated slices and the source reference."""
    reference, axis = job.referenceNode, job.axis
    node.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    if job.transformId and node.GetScene() is not None:
        node.SetAndObserveTransformNodeID(job.transformId)
    labels = fromEngineArray(result.labels, axis)
    shared = orientedImageFromArray(labels, reference)  # one shared labelmap, segment = label value
    sourceSegmentation = job.segmentationNode.GetSegmentation()
    used = set()
    for value in [v for v in result.label_values if v != 0 and np.any(labels == v)]:
        if job.brats:
            segmentName, color = BRATS_SEGMENTS[value]
        else:
            sourceSegment = sourceSegmentation.GetSegment(job.segmentIdOfValue[value])
            segmentName, color = sourceSegment.GetName(), tuple(sourceSegment.GetColor())
            if tuple(np.round(color, 3)) in used:
                color = next((c for c in PALETTE if tuple(np.round(c, 3)) not in used), color)
        used.add(tuple(np.round(color, 3)))
        segment = slicer.vtkSegment()
        segment.SetName(segmentName)
        segment.SetColor(*color)
        segment.AddRepresentation(BINARY_LABELMAP, shared)
        segment.SetLabelValue(int(value))
        segment.SetTag(LABEL_VALUE_TAG, str(int(value)))  # stays with the segment whatever its layer's values
        if job.brats:
            segment.SetTerminology(BRATS_TERMINOLOGY[value])
        else:
            sourceSegment = sourceSegmentation.GetSegment(job.segmentIdOfValue[value])
            if sourceSegment.GetTerminology():
                segment.SetTerminology(sourceSegment.GetTerminology())
        node.GetSegmentation().AddSegment(segment)
    zs = [int(z) for z in result.annotated_slices]
    node.SetAttribute(ANNOTATED_SLICES_ATTRIBUTE, json.dumps({"axis": "IJK"[axis], "indices": zs}))
    node.SetAttribute(LABEL_VALUES_ATTRIBUTE, json.dumps([int(v) for v in result.label_values]))
    if node.GetScene() is not None:
        node.SetNodeReferenceID(SOURCE_REFERENCE_ROLE, job.segmentationNode.GetID())
    return node
