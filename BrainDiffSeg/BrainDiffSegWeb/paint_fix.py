"""Work-arounds for the brush of trame-slicer 2.0.0's segmentation editor.

1. `rebind_effect_pipelines`: the effect pipelines (one per effect and view) are created by the LayerDM pipeline
   factory while a view is being built, before the view is registered with the view manager, so
   `SegmentationEditor._try_create_effect_pipeline` gives them `view_manager.get_view(view_node) == None`. A paint
   pipeline without a view never creates its brush widget, and activating Paint then fails with
   `AttributeError: 'NoneType' object has no attribute 'paint_interaction_stopped'`. Once the UI (and so every
   view) is built, giving each pipeline whose view is None the view of its view node fixes it. Call it after the
   layout is built and whenever views or effects may have been added (it is idempotent and cheap).

2. `use_slice_brush`: strokes must annotate one axial slice only (the engine treats every slice with a painted
   voxel as a fully annotated slice). trame-slicer's 2D brush is a cylinder of height half the slice step, centred
   on the slice, when `use_sphere_brush` is off; a sphere brush (or a brush whose shape was never updated, as
   happens when a stroke starts before the brush widget saw the parameters) marks every slice within its radius.
   `use_slice_brush` turns the sphere brush off and sets an absolute diameter in millimetres (the default
   diameter is relative to the screen size, which is meaningless for an off-screen EGL window).
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def effect_pipelines(segmentation_editor) -> list:
    """Every live effect pipeline of every registered effect of a trame-slicer `SegmentationEditor`."""
    pipelines = []
    for effect in segmentation_editor._effects.values():  # trame-slicer 2.0.0 keeps them there, by effect name
        for weak in getattr(effect, "_pipelines", []):
            pipeline = weak()
            if pipeline is not None:
                pipelines.append(pipeline)
    return pipelines


def rebind_effect_pipelines(segmentation_editor, view_manager) -> int:
    """Give every effect pipeline that has no view the view of its view node; returns how many were re-bound.

    The pipelines that already have a widget keep it; a pipeline that is already active gets its widget created
    (as `SetActive(True)` would have done had the view been there)."""
    rebound = 0
    for pipeline in effect_pipelines(segmentation_editor):
        if getattr(pipeline, "_view", None) is not None:
            continue
        view_node = pipeline.GetViewNode()
        view = view_manager.get_view(view_node) if view_node is not None else None
        if view is None:
            continue
        pipeline.SetView(view)
        rebound += 1
        if getattr(pipeline, "_isActive", False) and getattr(pipeline, "widget", "absent") is None:
            # active without a brush widget: SetActive(False) would touch the missing widget, so only the flag is
            # reset; SetActive(True) then creates the widget as it would have with a view
            pipeline._isActive = False
            pipeline.SetActive(True)
    if rebound:
        log.debug("re-bound %d segmentation effect pipelines to their views", rebound)
    return rebound


def use_slice_brush(effect, diameter_mm: float) -> None:
    """Make a Paint / Erase effect paint on the current slice only, with a round brush of `diameter_mm`."""
    from trame_slicer.segmentation.paint_effect_parameters import BrushDiameterMode

    if diameter_mm <= 0:
        raise ValueError(f"brush diameter must be positive, not {diameter_mm}")
    effect.set_use_sphere_brush(False)
    effect.set_brush_diameter(float(diameter_mm), BrushDiameterMode.Absolute)
