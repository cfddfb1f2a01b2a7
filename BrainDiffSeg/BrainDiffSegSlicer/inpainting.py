"""Healthy-tissue inpainting of a T1 volume node inside segments, for `BrainDiffSegLogic` (`inpaint`,
`startInpainting`, `finishInpainting` delegate here).

Three steps, so that a GUI can run the slow one elsewhere: `prepareInpainting` reads the volume and the union of
the chosen segments into engine arrays in the caller's thread and checks what can be checked there,
`inpaintingRequest` is the engine's request on those arrays (`BrainDiffSegLib.jobs`, run in process, by a local
engine service or a remote server: no MRML there), and `addInpaintingResult`, in the caller's thread again, adds
the result as a NEW scalar volume ("<input> inpainted", same geometry and parent transform as the input). The input
volume and the segmentation are only read; cancelling or failing before the last step leaves the scene as it was.

Which voxels are inpainted: the union of the given segments (by id), default all segments shown in the
segmentation's display node (all segments without one). The segmentation can be the painted one or a propagated
result; it is resampled onto the volume's grid (as for propagation), so a segmentation made on another grid is
used where it overlaps the volume and refused when nothing of it falls on the volume.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from BrainDiffSegLib.errors import InputError

from . import arrays

log = logging.getLogger(__name__)

SOURCE_VOLUME_ROLE = "BrainDiffSeg.inpaintedFrom"  # result volume -> the input volume
MASK_REFERENCE_ROLE = "BrainDiffSeg.inpaintingMask"  # result volume -> the segmentation of the mask
SEGMENTS_ATTRIBUTE = "BrainDiffSeg.InpaintedSegments"  # result volume: the segment names of the mask


@dataclass
class InpaintingJob:
    """The inputs of one inpainting, read from the scene (by `prepareInpainting`): the engine's arrays plus what is
    needed to add the result (node references are kept but only used in the caller's thread)."""

    image: np.ndarray  # float32 T1, IJK with the axial axis last
    mask: np.ndarray  # bool, same layout
    axis: int  # IJK axis that is axial
    volumeNode: object  # the input volume: the result's geometry and parent transform
    segmentationNode: object  # where the mask came from (read only)
    segmentNames: list  # the segments of the mask
    describe: str  # "'<volume>' inside segments 'a', 'b' of '<segmentation>'", for messages run in the thread
    steps: int = 25
    seed: int = 0
    model: object = None  # checkpoint folder, loaded (net, config) pair, or None for the bundled model
    device: str = "cpu"


def visibleSegmentIds(segmentationNode) -> list[str]:
    """The segments shown by the segmentation's display node (every segment when it has none), in order."""
    ids = list(segmentationNode.GetSegmentation().GetSegmentIDs())
    display = segmentationNode.GetDisplayNode()
    if display is None:
        return ids
    return [sid for sid in ids if display.GetSegmentVisibility(sid)]


def prepareInpainting(volumeNode, segmentationNode, segmentIds=None, steps: int = 25, seed: int = 0, model=None,
                      device: str = "cpu") -> InpaintingJob:
    """Check the nodes and read the T1 and the mask (union of the segments) into arrays; the scene is not modified.

    InputError naming the nodes for: no volume or not a scalar volume, no segmentation, a segmentation without
    segments, a segment id it does not have, no visible segment, segments without voxels on the volume's grid,
    volume and segmentation under different transforms, an oblique volume, fewer than 1 DDIM step."""
    if volumeNode is None:
        raise InputError("Select the T1 volume to inpaint.")
    arrays.checkVolumes({"t1": volumeNode})  # a 3D grey-level scalar volume with voxels
    volumeName = volumeNode.GetName()
    if segmentationNode is None or not segmentationNode.IsA("vtkMRMLSegmentationNode"):
        raise InputError(f"Select the segmentation whose segments mark the region of '{volumeName}' to inpaint "
                         "(the painted tumour or a propagated result).")
    segName = segmentationNode.GetName()
    segmentation = segmentationNode.GetSegmentation()
    allIds = list(segmentation.GetSegmentIDs())
    if not allIds:
        raise InputError(f"Segmentation '{segName}' has no segments: paint the region to inpaint first.")
    if segmentIds is None:
        segmentIds = visibleSegmentIds(segmentationNode)
        if not segmentIds:
            raise InputError(f"No segment of '{segName}' is visible: show the segments to inpaint or choose them.")
    else:
        segmentIds = [segmentIds] if isinstance(segmentIds, str) else list(segmentIds)
        if not segmentIds:
            raise InputError(f"No segment of '{segName}' chosen: choose the segments to inpaint.")
        unknown = [sid for sid in segmentIds if sid not in allIds]
        if unknown:
            names = ", ".join(f"'{segmentation.GetSegment(s).GetName()}' ({s})" for s in allIds)
            raise InputError(f"Segmentation '{segName}' has no segment {', '.join(repr(s) for s in unknown)}; "
                             f"its segments are {names}.")
    if int(steps) < 1:
        raise InputError(f"The number of DDIM steps must be at least 1, not {steps}.")
    arrays.checkTransforms({"t1": volumeNode}, segmentationNode)
    axis = arrays.axialAxis(volumeNode)
    names = [segmentation.GetSegment(sid).GetName() or sid for sid in segmentIds]
    quoted = ", ".join(f"'{n}'" for n in names)
    describe = f"'{volumeName}' inside segment{'s' if len(names) > 1 else ''} {quoted} of '{segName}'"
    masks = arrays.segmentMasks(segmentationNode, volumeNode)  # resampled onto the volume's grid
    dims = volumeNode.GetImageData().GetDimensions()
    maskKJI = np.zeros(tuple(reversed(dims)), dtype=bool)
    for sid in segmentIds:
        if sid in masks:
            maskKJI |= masks[sid]
    if not maskKJI.any():
        raise InputError(f"Nothing to inpaint: segment{'s' if len(names) > 1 else ''} {quoted} of '{segName}' "
                         f"{'are' if len(names) > 1 else 'is'} empty on the grid of volume '{volumeName}' (paint "
                         "the region to inpaint, or choose a segmentation made on this volume).")
    return InpaintingJob(image=arrays.volumeArray(volumeNode, axis), mask=arrays.toEngineArray(maskKJI, axis),
                         axis=axis, volumeNode=volumeNode, segmentationNode=segmentationNode, segmentNames=names,
                         describe=describe, steps=int(steps), seed=int(seed), model=model, device=device)


def inpaintingRequest(job: InpaintingJob):
    """The engine's request of a prepared job (`BrainDiffSegLib.jobs`: 'inpaint')."""
    from BrainDiffSegLib.transfer import EngineRequest

    model = job.model
    if model is not None and not isinstance(model, (str, bytes)) and not hasattr(model, "__fspath__"):
        raise InputError("The inpainting model must be a checkpoint folder (the engine loads it where it runs).")
    meta = {"steps": int(job.steps), "seed": int(job.seed), "model": str(model) if model else None,
            "device": job.device or "cpu", "describe": job.describe}
    return EngineRequest("inpaint", meta, {"image": job.image, "mask": job.mask})


def addInpaintingResponse(scene, job: InpaintingJob, response):
    """`addInpaintingResult` of the engine's response."""
    return addInpaintingResult(scene, job, response.arrays["inpainted"])


def addInpaintingResult(scene, job: InpaintingJob, inpainted: np.ndarray):
    """Add the inpainted array as a new scalar volume on the input's grid and under its parent transform; the
    result references the input volume and the mask's segmentation. Nothing is left behind on failure."""
    volume = job.volumeNode
    if inpainted.shape != job.image.shape:
        raise RuntimeError(f"The inpainted volume has shape {inpainted.shape}, the input {job.image.shape}.")
    name = scene.GenerateUniqueName(f"{volume.GetName()} inpainted")
    kji = arrays.fromEngineArray(np.asarray(inpainted, dtype=np.float32), job.axis)
    node = None
    try:
        node = arrays.addVolumeFromArray(scene, kji, arrays.ijkToRasArray(volume), name)
        if volume.GetTransformNodeID():
            node.SetAndObserveTransformNodeID(volume.GetTransformNodeID())
        if volume.GetScene() is scene:
            node.SetNodeReferenceID(SOURCE_VOLUME_ROLE, volume.GetID())
        if job.segmentationNode.GetScene() is scene:
            node.SetNodeReferenceID(MASK_REFERENCE_ROLE, job.segmentationNode.GetID())
        node.SetAttribute(SEGMENTS_ATTRIBUTE, ",".join(job.segmentNames))
        _copyWindowLevel(volume, node)
    except Exception:
        if node is not None:
            display = node.GetDisplayNode()
            for n in (node, display):
                if n is not None and n.GetScene() is not None:
                    scene.RemoveNode(n)
        raise
    log.info("added '%s' (%s)", name, job.describe)
    return node


def _copyWindowLevel(source, target) -> None:
    """The result is shown like the input (same window / level and colours), so that the eye compares tissue."""
    src, dst = source.GetDisplayNode(), target.GetDisplayNode()
    if src is None or dst is None:
        return
    if src.GetColorNodeID():
        dst.SetAndObserveColorNodeID(src.GetColorNodeID())
    if not src.GetAutoWindowLevel():
        dst.SetAutoWindowLevel(False)
        dst.SetWindowLevel(src.GetWindow(), src.GetLevel())
