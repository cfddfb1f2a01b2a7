"""`unet-patient`, a baseline of the propagation benchmark: a small U-Net (`segnets.build_unet2d`) trained from
scratch on the annotated slices of the patient only (`segnets.train_segnet`), then applied to the other slices."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from .segnets import SegTrainOptions, build_unet2d, labels_to_model, native_slices, predict_segnet, train_segnet

log = logging.getLogger(__name__)


@dataclass
class PatientUNetOptions:
    """`unet-patient`: a small U-Net trained from scratch on the annotated slices of the patient only."""

    train: SegTrainOptions = None  # default: SegTrainOptions() (150 steps, batch 4, DiceCE, augmentation)
    filters: tuple[int, ...] = (16, 32, 64, 128)
    size: int = 128
    postprocess: bool = True  # as diffusion-mlp: keep only tumour connected in 3D to the annotated tumour
    batch_size: int = 16

    def __post_init__(self):
        if self.train is None:
            self.train = SegTrainOptions()


def propagate_unet_patient(images: dict[str, np.ndarray], annotation: np.ndarray,
                           options: PatientUNetOptions | None = None) -> np.ndarray:
    """Label volume (axial axis last) predicted by a U-Net trained on the annotated slices of this case."""
    from BrainDiffSegLib.preprocess import ModelGrid, normalize_case, stack_roles
    from BrainDiffSegLib.propagation.propagate import check_annotation, keep_connected_to_annotation

    opt = options or PatientUNetOptions()
    norm, fg = normalize_case(images)
    zs, values = check_annotation(annotation, next(iter(images.values())).shape, fg)
    stack, present = stack_roles(norm)
    grid = ModelGrid.from_mask(fg, opt.size)
    x = grid.to_model(native_slices(stack, zs))
    y = labels_to_model(grid, np.moveaxis(annotation[..., zs], -1, 0), values)
    pres = torch.from_numpy(present)[None].expand(len(zs), -1)
    torch.manual_seed(opt.train.seed)
    net = build_unet2d(2 * len(present), len(values), opt.filters)
    hist = train_segnet(net, x, pres, y, len(values), opt.train)
    labels = np.zeros(annotation.shape, dtype=np.int16)
    todo = [z for z in range(annotation.shape[-1]) if z not in zs and fg[..., z].any()]
    vals = np.array(values, dtype=np.int16)
    for s in range(0, len(todo), opt.batch_size):
        zb = todo[s:s + opt.batch_size]
        xb = grid.to_model(native_slices(stack, zb))
        p = predict_segnet(net, xb, torch.from_numpy(present)[None].expand(len(zb), -1))
        cls = grid.to_native(p).argmax(1).numpy()
        block = np.where(np.moveaxis(fg[..., zb], -1, 0), vals[cls], 0)
        labels[..., zb] = np.moveaxis(block, 0, -1)
    labels[..., zs] = annotation[..., zs]
    if opt.postprocess:
        labels = keep_connected_to_annotation(labels, annotation)
    log.info("unet-patient: %d annotated slices, trained %d steps in %.1f s (loss %.3f -> %.3f)", len(zs),
             hist["steps"], hist["seconds"], hist["first_loss"], hist["last_loss"])
    return labels
