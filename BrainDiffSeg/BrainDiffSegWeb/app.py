"""The browser annotator: a trame-slicer application around an `AnnotationSession`.

Axial (large), sagittal and coronal slice views of the case, each paintable; in the side panel: the sequence shown,
the painted segments (the BraTS classes and Background; select one, Paint / Erase with a brush one slice thick in the
view it paints in, undo), the annotation mode (Automatic / Complete slices / Seeds (strokes), and the mode the next
Propagate uses, resolved by the session with the Slicer panel's rule), what is painted (the annotated axial slices, or
the slices of each view that hold seeds), the axial, sagittal and coronal slice shown, Propagate with a progress bar,
stage text and Cancel, the engine's warnings, the propagated segments with their voxel counts, an uncertainty
overlay toggle, the slices the model is least sure of (click one to go there), "Paint this slice next" (the suggested
axial slice: paint it completely, or in seeds mode a few strokes, Background only where it has no tumour), "Inpaint
healthy tissue" (the T1 inside the propagated or the painted tumour, shown as the background volume and saved as a
numbered NIfTI when done) and Save.

Everything that changes the MRML scene runs on the server's event loop; the propagation and the inpainting run in a
worker thread (see `session.py`; one job at a time, sharing the progress bar and Cancel), polled by `_poll` a few
times a second.

Length: one page of declarative UI layout (views, side panel) with the handlers it binds; split, the layout and its
handlers would have to be read side by side.
"""
from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")  # headless rendering, no X server

from trame.app import get_server  # noqa: E402
from trame.ui.vuetify3 import SinglePageWithDrawerLayout  # noqa: E402
from trame.widgets import html  # noqa: E402
from trame.widgets import vuetify3 as v3  # noqa: E402
from trame_server.utils.asynchronous import create_task  # noqa: E402
from trame_slicer.app.ui import create_vertical_slice_view_gutter_ui  # noqa: E402
from trame_slicer.core import LayoutManager, SlicerApp  # noqa: E402
from trame_slicer.rca_view import register_rca_factories  # noqa: E402
from trame_slicer.segmentation import (  # noqa: E402
    SegmentationEffectErase,
    SegmentationEffectNoTool,
    SegmentationEffectPaint,
)
from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition  # noqa: E402
from undo_stack import UndoStack  # noqa: E402

from BrainDiffSegLib.errors import BrainDiffSegError  # noqa: E402

from .paint_fix import rebind_effect_pipelines, use_slice_brush  # noqa: E402
from .planes import ORIENTATIONS  # noqa: E402
from .session import DEFAULT_SEGMENTS, MODE_LABELS, AnnotationSession, JobStatus  # noqa: E402

INPAINTED_ROLE = "inpainted"  # the sequence menu's entry for the newest inpainted T1

log = logging.getLogger(__name__)

LAYOUT_ID = "BrainDiffSeg"
AXIAL, SAGITTAL, CORONAL = "Red", "Yellow", "Green"  # the views' singleton tags
VIEW_OF = {"axial": AXIAL, "sagittal": SAGITTAL, "coronal": CORONAL}  # orientation -> view
ORIENTATION_OF = {tag: orientation for orientation, tag in VIEW_OF.items()}
TOOLS = {"none": SegmentationEffectNoTool, "paint": SegmentationEffectPaint, "erase": SegmentationEffectErase}
POLL_SECONDS = 0.25
HELP = {"slices": "Complete slices: select a segment and paint the whole tumour class on a few axial slices "
                  "(unpainted voxels of a painted slice are background). Propagate segments every other slice into "
                  "a new segmentation.",
        "seeds": "Seeds: paint a few strokes inside each tumour class and Background strokes around the tumour, in "
                 "any view (a stroke stays in the slice of the view it is painted in; a Background stroke alone says "
                 "'no tumour here'). Unpainted voxels are unknown. Propagate labels every voxel into a new "
                 "segmentation."}


def _quiet_trame_logging() -> None:
    for name in ("trame_client", "trame_server", "trame_rca", "wslink", "aiohttp.access"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _hex(color) -> str:
    return "#" + "".join(f"{round(255 * c):02x}" for c in color[:3])


def _view_ui(server, view_id, view):
    """trame-slicer's slice-view gutter plus an empty, click-through marker `#view-<tag>` covering the view (a
    stable handle for the view's area, e.g. for browser automation)."""
    create_vertical_slice_view_gutter_ui(server, view_id, view)
    html.Div(id=f"view-{view_id}", style="position:absolute;inset:0;pointer-events:none;")


class BrainDiffSegWebApp:
    """Builds the scene, views and UI; `server.start()` serves it.

    session_loader(session) loads the sequences into the session's scene (raises InputError for bad input)."""

    def __init__(self, session_loader, options=None, out_dir=None, server=None, brush_mm: float = 3.0,
                 annotation_choice: str = "auto"):
        _quiet_trame_logging()
        self.server = get_server(server, client_type="vue3")
        self.state, self.ctrl = self.server.state, self.server.controller
        self.slicer_app = SlicerApp()
        self.editor = self.slicer_app.segmentation_editor
        self.editor.set_undo_stack(UndoStack(undo_limit=20))
        # the app's module logics are registered with its application logic: loaded volumes get colour tables
        self.session = AnnotationSession(self.slicer_app.scene, options, volumesLogic=self.slicer_app.volumes_logic,
                                         segmentationsLogic=self.slicer_app.segmentations_logic)
        session_loader(self.session)
        self.session.check_volumes()
        self.session.set_annotation_choice(annotation_choice)
        self.out_dir = Path(out_dir) if out_dir else self.session.case_dir
        self.brush_mm = brush_mm
        self._painted_dirty = True
        self._prepare_editor()  # the editor is set up with the session, before the views (and the UI) exist

        register_rca_factories(self.slicer_app.view_manager, self.server, slice_view_ui_f=_view_ui)
        self.layout_manager = LayoutManager(self.slicer_app.scene, self.slicer_app.view_manager, self.server)
        axial, sagittal, coronal = (ViewLayoutDefinition.axial_view(), ViewLayoutDefinition.sagittal_view(),
                                    ViewLayoutDefinition.coronal_view())
        self.layout_manager.register_layout(
            LAYOUT_ID, Layout(LayoutDirection.Horizontal, [axial, Layout(LayoutDirection.Vertical,
                                                                          [sagittal, coronal])]))
        self.layout_manager.set_layout(LAYOUT_ID)
        self._init_state()
        self._build_ui()
        # trame-slicer 2.0.0: effect pipelines made while the views were built have no view (see paint_fix)
        rebind_effect_pipelines(self.editor, self.slicer_app.view_manager)
        self._show_case()
        self._bind()
        self.ctrl.on_server_ready.add(lambda **_: create_task(self._poll()))

    # ------------------------------------------------------------------ set-up

    def _init_state(self):
        s = self.state
        s.trame__title = f"BrainDiffSeg: {self.session.case_name}"
        s.case_name = self.session.case_name
        s.sequences = [{"title": role.upper() if role != "t1ce" else "T1ce", "value": role}
                       for role in self.session.volumes]
        s.background_role = "flair" if "flair" in self.session.volumes else s.sequences[0]["value"]
        s.segments, s.active_segment_id, s.annotated_slices = [], "", []
        s.tool, s.brush_mm = "none", self.brush_mm
        for orientation in ORIENTATIONS:  # axial_slices / axial_slice, sagittal_..., coronal_...: counts and shown
            s[f"{orientation}_slices"] = self.session.plane_count(orientation)
            s[f"{orientation}_slice"] = s[f"{orientation}_slices"] // 2
        s.axial_xy_to_ras, s.axial_view_size = [], [0, 0]
        s.view_xy_to_ras = {}  # view tag -> its XY (pixels from the bottom left) -> RAS matrix, row-major
        s.annotation_choices = [{"title": label, "value": value} for value, label in self.session.annotation_choices()]
        s.annotation_choice = self.session.annotation_choice
        s.annotation_mode, s.annotation_reason, s.annotation_help = "slices", "", HELP["slices"]
        s.annotation_mode_label = MODE_LABELS["slices"]
        s.painting_summary, s.seed_planes = "", {}
        s.notes = []
        s.can_undo = False
        s.job_status, s.job_stage, s.job_percent, s.job_seconds = JobStatus.IDLE.value, "", 0, 0.0
        s.running = False
        s.result_name, s.result_segments = "", []
        s.has_uncertainty, s.show_uncertainty, s.least_certain = False, False, []
        s.next_slice = None
        s.message, s.message_type = "", "info"
        s.saved_files = []
        s.out_dir = str(self.out_dir)
        s.job_kind = ""
        s.has_t1 = "t1" in self.session.volumes
        s.inpaint_source, s.inpaint_steps, s.inpainted_name = self.session.inpainting_source(), 25, ""
        s.inpaint_sources = self._inpaint_sources()

    def _build_ui(self):
        with SinglePageWithDrawerLayout(self.server, width=370, theme="dark") as layout:
            self.ui = layout
            layout.title.set_text("BrainDiffSeg")
            with layout.toolbar:
                v3.VSpacer()
                html.Div("{{ case_name }}", classes="text-subtitle-1 mr-4", id="case-name")
            with layout.drawer:
                self._build_panel()
            with layout.content:
                with v3.VContainer(fluid=True, classes="fill-height pa-0"):
                    self.layout_manager.initialize_layout_grid(layout)

    def _build_panel(self):
        with v3.VContainer(classes="pa-2", style="font-size: 0.9rem;"):
            v3.VSelect(label="Sequence", items=("sequences",), v_model=("background_role",), density="compact",
                       hide_details=True, id="sequence-select", classes="mb-2")
            html.Div("Painted segments", classes="text-subtitle-2")
            with v3.VList(density="compact", id="segment-list", classes="py-0"):
                with v3.VListItem(v_for="(seg, i) in segments", key="seg.id", value=("seg.id",),
                                  active=("seg.id === active_segment_id",),
                                  click="active_segment_id = seg.id", id=("`segment-${i}`",)):
                    with v3.Template(v_slot_prepend=True):
                        v3.VIcon("mdi-square", color=("seg.color",))
                    v3.VListItemTitle("{{ seg.name }}")
            v3.VSelect(label="Annotation", items=("annotation_choices",), v_model=("annotation_choice",),
                       density="compact", hide_details=True, id="annotation-choice", classes="mt-2 mb-1")
            html.Div("Next Propagate: {{ annotation_mode_label }}"
                     "{{ annotation_reason ? ` - ${annotation_reason}` : '' }}", classes="text-caption",
                     id="annotation-mode")
            html.Div("{{ painting_summary }}", classes="text-caption mb-1", id="annotated-slices")
            with v3.VBtnToggle(v_model=("tool",), mandatory=True, density="compact", divided=True,
                               variant="outlined", classes="mb-1"):
                v3.VBtn("None", value="none", id="tool-none", prepend_icon="mdi-cursor-default")
                v3.VBtn("Paint", value="paint", id="tool-paint", prepend_icon="mdi-brush")
                v3.VBtn("Erase", value="erase", id="tool-erase", prepend_icon="mdi-eraser")
            v3.VBtn(icon="mdi-undo", size="small", variant="text", disabled=("!can_undo",), id="undo",
                    click=self.undo)
            v3.VSlider(v_model=("brush_mm",), min=1, max=20, step=0.5, label="Brush (mm)", thumb_label=True,
                       density="compact", hide_details=True, id="brush-size")
            with html.Div(classes="d-flex ga-1 my-2"):
                for orientation in ORIENTATIONS:
                    v3.VTextField(v_model_number=(f"{orientation}_slice",), type="number",
                                  label=(f"`{orientation.capitalize()} (0-${{{orientation}_slices - 1}})`",),
                                  density="compact", hide_details=True, id=f"{orientation}-slice")
            html.Div("{{ annotation_help }}", classes="text-caption text-medium-emphasis mb-2", id="help")
            v3.VDivider(classes="my-2")
            with html.Div(classes="d-flex ga-2 mb-1"):
                v3.VBtn("Propagate", color="primary", click=self.propagate, disabled=("running",), id="propagate",
                        prepend_icon="mdi-play")
                v3.VBtn("Cancel", click=self.cancel, disabled=("!running",), id="cancel", prepend_icon="mdi-stop")
            v3.VProgressLinear(model_value=("job_percent",), height=8, color="primary", id="progress",
                               classes="my-1", active=("running",))
            html.Div("{{ job_stage }}{{ running ? ` ${job_percent}% (${job_seconds} s)` : '' }}",
                     classes="text-caption", id="job-stage")
            v3.VAlert(text=("message",), type=("message_type",), v_if="message", density="compact",
                      variant="tonal", id="message", classes="my-1", closable=True,
                      click_close="message = ''")
            with html.Div(id="notes", v_if="notes.length"):
                v3.VAlert(text=("note",), v_for="(note, i) in notes", key="i", type="warning", density="compact",
                          variant="tonal", classes="my-1 text-caption")
            with html.Div(v_if="result_name", id="result"):
                html.Div("{{ result_name }}", classes="text-subtitle-2 mt-2")
                with v3.VTable(density="compact"):
                    with html.Tbody():
                        with html.Tr(v_for="seg in result_segments", key="seg.name"):
                            with html.Td():
                                v3.VIcon("mdi-square", color=("seg.color",), size="small")
                            html.Td("{{ seg.name }}")
                            html.Td("{{ seg.voxels.toLocaleString() }} voxels", classes="text-right")
                v3.VSwitch(v_model=("show_uncertainty",), label="Show uncertainty", disabled=("!has_uncertainty",),
                           density="compact", hide_details=True, color="orange", id="show-uncertainty")
                v3.VBtn("Paint this slice next: {{ next_slice }}", v_if="next_slice !== null", size="small",
                        variant="tonal", color="primary", click="axial_slice = next_slice", id="paint-next",
                        prepend_icon="mdi-target", classes="my-1")
                html.Div("Least certain slices (click to review)", classes="text-caption")
                with html.Div(classes="d-flex flex-wrap ga-1", id="least-certain"):
                    v3.VChip("{{ s.z }} ({{ s.score.toFixed(2) }})", v_for="s in least_certain", key="s.z",
                             size="small", click="axial_slice = s.z", id=("`least-certain-${s.z}`",))
            v3.VDivider(classes="my-2")
            html.Div("Inpaint healthy tissue (T1)", classes="text-subtitle-2")
            with html.Div(classes="d-flex ga-2 align-center"):
                v3.VSelect(label="Region", items=("inpaint_sources",), v_model=("inpaint_source",),
                           density="compact", hide_details=True, id="inpaint-source", disabled=("running",))
                v3.VTextField(v_model_number=("inpaint_steps",), type="number", label="DDIM steps", min=1,
                              density="compact", hide_details=True, id="inpaint-steps", style="max-width: 7rem;",
                              disabled=("running",))
            v3.VBtn("Inpaint healthy tissue", click=self.inpaint, disabled=("running || !has_t1",), id="inpaint",
                    prepend_icon="mdi-auto-fix", classes="my-1", size="small")
            html.Div("{{ inpainted_name }}", v_if="inpainted_name", classes="text-caption", id="inpainted-name")
            v3.VDivider(classes="my-2")
            v3.VBtn("Save", click=self.save, disabled=("running",), id="save", prepend_icon="mdi-content-save")
            html.Div("to {{ out_dir }}", classes="text-caption text-medium-emphasis")
            with html.Div(id="saved-files", classes="text-caption"):
                html.Div("{{ f }}", v_for="f in saved_files", key="f")

    def _prepare_editor(self):
        """The painted segmentation with the BraTS segments, and the Paint / Erase brushes preset to one slice
        and `brush_mm`: done before the views exist, so the effect pipelines need `rebind_effect_pipelines`."""
        session, editor = self.session, self.editor
        painted = editor.create_empty_segmentation_node()
        painted.SetName("Painted")
        editor.set_active_segmentation(painted, session.reference)
        for name, color in DEFAULT_SEGMENTS:  # the BraTS classes, then Background
            editor.add_empty_segment(segment_name=name, segment_color=list(color))
        editor.set_active_segment_id(editor.get_nth_segment_id(0))
        for effect_type in (SegmentationEffectPaint, SegmentationEffectErase):
            use_slice_brush(editor.set_active_effect_type(effect_type), self.brush_mm)
        editor.deactivate_effect()
        session.painted = painted

    def _show_case(self):
        self.slicer_app.display_manager.show_volume_in_slice_background(
            self.session.volumes[self.state.background_role])
        self.slicer_app.display_manager.set_node_visible_in_group(self.session.painted)
        for view in self.slicer_app.view_manager.get_slice_views():
            view.fit_view_to_content()
        self._update_segments()
        for orientation in ORIENTATIONS:
            self._jump(orientation, self.state[f"{orientation}_slice"])
        self._fitted_sizes = {}
        for view in self.slicer_app.view_manager.get_slice_views():
            view.get_view_node().AddObserver("ModifiedEvent", lambda node, _event: self._on_view_node_modified(node))
        for tag in VIEW_OF.values():
            self._publish_view(tag)

    def _bind(self):
        self.state.change("background_role")(self._on_background_role)
        self.state.change("active_segment_id")(self._on_active_segment)
        self.state.change("tool")(self._on_tool)
        self.state.change("brush_mm")(self._on_brush)
        for orientation in ORIENTATIONS:
            self.state.change(f"{orientation}_slice")(self._slice_handler(orientation))
        self.state.change("annotation_choice")(self._on_annotation_choice)
        self.state.change("show_uncertainty")(self._on_show_uncertainty)
        self.editor.segmentation_modified.connect(self._on_painted_modified)
        undo = self.editor.undo_stack
        for signal in undo.signals():
            signal.connect(lambda *_: setattr(self.state, "can_undo", undo.can_undo()))

    # ------------------------------------------------------------------ painting and views

    def _update_segments(self):
        segmentation = self.session.painted.GetSegmentation()
        self.state.segments = [{"id": sid, "name": segmentation.GetSegment(sid).GetName(),
                                "color": _hex(segmentation.GetSegment(sid).GetColor())}
                               for sid in segmentation.GetSegmentIDs()]
        self.state.active_segment_id = self.editor.get_active_segment_id()

    def _on_painted_modified(self, *_):
        self._painted_dirty = True  # the annotated-slice summary is refreshed by _poll (not on every stroke)

    def _refresh_annotated_slices(self):
        """The annotation mode the next Propagate uses and what is painted (refreshed by `_poll` after painting)."""
        painting = self.session.painting()
        self.state.annotated_slices, self.state.seed_planes = painting.annotated, painting.seed_planes
        self.state.annotation_mode, self.state.annotation_reason = painting.mode, painting.reason
        self.state.annotation_mode_label, self.state.annotation_help = MODE_LABELS[painting.mode], HELP[painting.mode]
        self.state.painting_summary = painting.summary
        self._painted_dirty = False

    def _on_annotation_choice(self, annotation_choice, **_):
        try:
            self.session.set_annotation_choice(annotation_choice)
        except BrainDiffSegError as exc:
            self._say(str(exc), "warning")
            return
        self._refresh_annotated_slices()

    def _on_active_segment(self, active_segment_id, **_):
        if active_segment_id and active_segment_id != self.editor.get_active_segment_id():
            self.editor.set_active_segment_id(active_segment_id)

    def _on_tool(self, tool, **_):
        effect_type = TOOLS.get(tool, SegmentationEffectNoTool)
        effect = self.editor.set_active_effect_type(effect_type)
        rebind_effect_pipelines(self.editor, self.slicer_app.view_manager)
        if effect_type is not SegmentationEffectNoTool and effect is not None:
            use_slice_brush(effect, float(self.state.brush_mm))

    def _on_brush(self, brush_mm, **_):
        effect = self.editor.active_effect
        if effect is not None and hasattr(effect, "set_brush_diameter"):
            use_slice_brush(effect, float(brush_mm))

    def undo(self):
        if self.editor.undo_stack is not None and self.editor.undo_stack.can_undo():
            self.editor.undo_stack.undo()

    def _on_background_role(self, background_role, **_):
        node = (self.session.inpainted if background_role == INPAINTED_ROLE
                else self.session.volumes.get(background_role))
        if node is not None:
            self.slicer_app.display_manager.show_volume_in_slice_background(node)
            self._show_uncertainty_overlay(self.state.show_uncertainty)

    def _jump(self, orientation: str, index: int):
        """Show slice `index` of an orientation in its view (on the voxel centres: what is shown is painted)."""
        self.state[f"{orientation}_slice"] = int(index)  # first: a view fitted meanwhile goes back to this slice
        view = self.slicer_app.view_manager.get_view(VIEW_OF[orientation])
        view.get_view_node().JumpSliceByOffsetting(*self.session.plane_ras(orientation, int(index)))

    def _jump_to_axial(self, z: int):
        self._jump("axial", z)

    def _slice_handler(self, orientation: str):
        """The state-change handler of `<orientation>_slice` (trame passes the whole state as keywords)."""
        return lambda **state: self._on_slice(orientation, state.get(f"{orientation}_slice"))

    def _on_slice(self, orientation: str, index):
        try:
            index = int(index)
        except (TypeError, ValueError):
            return
        index = min(max(index, 0), self.state[f"{orientation}_slices"] - 1)
        if index != self._current_index(orientation):
            self._jump(orientation, index)

    def _current_index(self, orientation: str) -> int:
        """The slice of an orientation (index along its IJK axis; axial: the engine's index) its view shows."""
        m = self.slicer_app.view_manager.get_view(VIEW_OF[orientation]).get_view_node().GetSliceToRAS()
        return self.session.plane_index(orientation, [m.GetElement(i, 3) for i in range(3)])

    def _on_view_node_modified(self, view_node):
        """Fit a slice view to the volume whenever its size changes (the browser sets the size after the first
        render; fitting re-centres the slice, so the view then goes back to its slice), then publish the view's
        geometry and slice."""
        size = tuple(view_node.GetDimensions()[:2])
        tag = view_node.GetSingletonTag()
        if tag not in ORIENTATION_OF:
            return
        if self._fitted_sizes.get(tag) != size and min(size) > 1:
            self._fitted_sizes[tag] = size
            view = self.slicer_app.view_manager.get_view(tag)
            if view is not None:
                view.fit_view_to_content()
                orientation = ORIENTATION_OF[tag]
                self._jump(orientation, int(self.state[f"{orientation}_slice"]))
        self._publish_view(tag)

    def _publish_view(self, tag: str):
        """Publish a view's slice index and its XY (pixels from the bottom left) -> RAS matrix (`view_xy_to_ras`;
        the axial view's also as `axial_xy_to_ras` / `axial_view_size`)."""
        view = self.slicer_app.view_manager.get_view(tag)
        if view is None:
            return
        m = view.get_view_node().GetXYToRAS()
        xy_to_ras = [round(m.GetElement(i, j), 6) for i in range(4) for j in range(4)]
        orientation = ORIENTATION_OF[tag]
        index = self._current_index(orientation)
        with self.state:
            if xy_to_ras != self.state.view_xy_to_ras.get(tag):
                self.state.view_xy_to_ras = {**self.state.view_xy_to_ras, tag: xy_to_ras}
                if tag == AXIAL:
                    self.state.axial_xy_to_ras = xy_to_ras
                    self.state.axial_view_size = list(view.get_view_node().GetDimensions()[:2])
            if index != self.state[f"{orientation}_slice"]:
                self.state[f"{orientation}_slice"] = index

    # ------------------------------------------------------------------ propagation

    def _say(self, message: str, message_type: str = "info"):
        self.state.message, self.state.message_type = message, message_type

    def propagate(self):
        try:
            self.session.start_propagation()
        except BrainDiffSegError as exc:
            self._say(str(exc), "warning")
            return
        self._job_started("propagation")

    def _job_started(self, kind: str):
        self._say("")
        self.state.notes = []
        self.state.running, self.state.job_status, self.state.job_percent = True, JobStatus.RUNNING.value, 0
        self.state.job_stage, self.state.job_kind = "starting", kind

    def cancel(self):
        self.session.cancel()

    async def _poll(self):
        while True:
            await asyncio.sleep(POLL_SECONDS)
            try:
                with self.state:
                    self._poll_once()
            except Exception:  # keep polling: one failed update must not freeze the UI
                log.exception("UI update failed")

    def _poll_once(self):
        job = self.session.job_state()
        if job.status == JobStatus.RUNNING:
            self.state.job_stage, self.state.job_percent = job.stage, int(round(100 * job.fraction))
            self.state.job_seconds = round(job.seconds, 1)
        elif job.status == JobStatus.DONE and not self.session.running:
            if job.kind == "inpainting":
                self._finish_inpainting(job)
            else:
                self._finish_propagation(job)
        elif job.status in (JobStatus.CANCELLED, JobStatus.FAILED) and self.state.running:
            self.state.running, self.state.job_status = False, job.status.value
            self.state.job_stage = job.status.value
            self._say(job.message, "info" if job.status == JobStatus.CANCELLED else "error")
        if self._painted_dirty:
            self._refresh_annotated_slices()

    def _finish_propagation(self, job):
        result = self.session.import_result()
        self.state.running, self.state.job_status = False, JobStatus.DONE.value
        self.state.job_stage, self.state.job_percent = f"done in {job.seconds:.1f} s", 100
        if result is None:
            return
        display = result.GetDisplayNode()
        display.SetOpacity2DFill(0.3)
        display.SetOpacity2DOutline(1.0)
        self.slicer_app.display_manager.set_node_visible_in_group(result)
        counts = self.session.segment_voxels(result)
        segmentation = result.GetSegmentation()
        self.state.result_name = result.GetName()
        self.state.result_segments = [
            {"name": segmentation.GetSegment(sid).GetName(), "color": _hex(segmentation.GetSegment(sid).GetColor()),
             "voxels": counts.get(segmentation.GetSegment(sid).GetName(), 0)}
            for sid in segmentation.GetSegmentIDs()]
        self.state.least_certain = [{"z": int(z), "score": float(score)} for z, score in self.session.least_certain]
        self.state.next_slice = self.session.next_slice
        self.state.has_uncertainty = self.session.uncertainty is not None
        self._show_uncertainty_overlay(self.state.show_uncertainty)
        self.state.inpaint_sources = self._inpaint_sources()
        self.state.inpaint_source = "result"  # inpainting now defaults to the propagated tumour
        self.state.notes = self.session.notes()
        mode = MODE_LABELS.get(self.session.last_mode or "slices", "")
        self._say(f"Propagated from {mode} in {job.seconds:.1f} s into '{result.GetName()}' (feature cache "
                  f"{self.session.feature_cache_mb():.0f} MB).", "success")
        log.info("result %s: %s", result.GetName(), counts)

    # ------------------------------------------------------------------ healthy-tissue inpainting

    def _inpaint_sources(self) -> list[dict]:
        items = [{"title": "Painted tumour", "value": "painted"}]
        if self.session.result is not None:
            items.insert(0, {"title": "Propagated result", "value": "result"})
        return items

    def inpaint(self):
        try:
            steps = int(self.state.inpaint_steps)
        except (TypeError, ValueError):
            self._say(f"DDIM steps: '{self.state.inpaint_steps}' is not a whole number.", "warning")
            return
        try:
            self.session.start_inpainting(self.state.inpaint_source, steps=steps)
        except BrainDiffSegError as exc:
            self._say(str(exc), "warning")
            return
        self._job_started("inpainting")

    def _finish_inpainting(self, job):
        """Add the inpainted T1, show it as the background volume and save it (never overwriting)."""
        node = self.session.import_inpainted()
        self.state.running, self.state.job_status = False, JobStatus.DONE.value
        self.state.job_stage, self.state.job_percent = f"done in {job.seconds:.1f} s", 100
        if node is None:
            return
        if not any(item["value"] == INPAINTED_ROLE for item in self.state.sequences):
            self.state.sequences = [*self.state.sequences, {"title": "T1 inpainted", "value": INPAINTED_ROLE}]
        self.state.inpainted_name = node.GetName()
        self._on_background_role(INPAINTED_ROLE)  # also when the menu shows it already (a newer result)
        self.state.background_role = INPAINTED_ROLE
        try:
            path = self.session.save_inpainted(self.out_dir)
        except BrainDiffSegError as exc:
            self._say(f"Inpainted into '{node.GetName()}', but saving failed: {exc}", "error")
            return
        self.state.saved_files = [*self.state.saved_files, str(path)]
        self._say(f"Inpainted in {job.seconds:.1f} s into '{node.GetName()}' (shown), saved as {path.name}.",
                  "success")

    def _on_show_uncertainty(self, show_uncertainty, **_):
        self._show_uncertainty_overlay(bool(show_uncertainty))

    def _show_uncertainty_overlay(self, show: bool):
        node = self.session.uncertainty if show else None
        self.slicer_app.display_manager.show_volume_in_slice_foreground(node)
        for view in self.slicer_app.view_manager.get_slice_views():
            view.set_foreground_opacity(0.5 if node is not None else 0.0)

    # ------------------------------------------------------------------ saving

    def save(self):
        try:
            files = self.session.save(self.out_dir)
        except BrainDiffSegError as exc:
            self._say(str(exc), "error")
            return
        self.state.saved_files = [*self.state.saved_files,
                                  *(str(p) for p in (files.segmentation, files.labels, files.painted))]
        self._say(f"Saved the {files.what} segmentation as {files.segmentation.name} and {files.labels.name}.",
                  "success")


def serve(session_loader, options=None, out_dir=None, host: str = "127.0.0.1", port: int = 8080,
          brush_mm: float = 3.0, open_browser: bool = False, annotation_choice: str = "auto") -> None:
    """Build the app (loading the case first: bad input raises before anything is served) and serve it."""
    app = BrainDiffSegWebApp(session_loader, options=options, out_dir=out_dir, brush_mm=brush_mm,
                             annotation_choice=annotation_choice)
    log.info("BrainDiffSeg annotator on http://%s:%d/ (case %s; saving to %s)", host, port,
             app.session.case_name, app.out_dir)
    app.server.start(host=host, port=port, open_browser=open_browser, show_connection_info=False)
