"""Work-arounds for the brush of trame-slicer 2.0.0's segmentation editor.

1. `rebind_effect_pipelines`: the effect pipelines (one per effect and view) are created by the LayerDM pipeline
   factory while a view is being built, before the view is registered with the view manager, so
   `SegmentationEditor._try_create_effect_pipeline` gives them `view_manager.get_view(view_node) == None`. A paint
   pipeline without a view never creates its brush widget, and activating Paint then fails with
   `AttributeError: 'NoneType' object has no attribute 'paint_interaction_stopped'`. Once the UI (and so every
   view) is built, giving each pipeline whose view is None the view of its view node fixes it. Call it after the
   layout is built and whenever views or effects may have been added (it is idempotent and cheap).

2. `use_slice_brush`: a stroke must lie in one slice of the view it is painted in (complete slices: every axial
   slice with a painted voxel is a fully annotated slice; seeds: a stroke is one slice of the axial, sagittal or
   coronal view). trame-slicer 2.0.0 has one paint pipeline, with its own brush widget, per slice view; with
   `use_sphere_brush` off its 2D brush is a cylinder turned to the view's slice normal (`SegmentationPaintWidget2D.
   _update_brush_shape` rotates it by the view's SliceToRAS), of height half the view's slice step, and every
   point of a stroke is rounded to a voxel index before the brush is stamped (`SegmentModifier.
   paint_glyph_in_labelmap`). So in each of the three views a stroke fills exactly one slice of that view (on
   volumes whose axes are the views' normals: the engine refuses oblique ones), also when the button is pressed
   without a mouse move first (test_web checks all three views). Two things break it: a sphere brush (or a brush
   whose shape was never updated) marks every slice within its radius, and a view whose slice lies between two
   voxel planes paints the nearest plane, which need not be the one shown (the app therefore moves the views to
   voxel centres only: `AnnotationSession.plane_ras`). `use_slice_brush` turns the sphere brush off and sets an
   absolute diameter in millimetres (the default diameter is relative to the screen size, which is meaningless
   for an off-screen EGL window).
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
