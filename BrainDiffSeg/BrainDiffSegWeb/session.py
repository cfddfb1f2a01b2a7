"""State of one annotation session: the loaded sequences, the painted segmentation, the background propagation
and saving. No trame and no UI here (the app in `app.py` drives it), so it is tested without a browser.

Threading: the shown MRML scene is only ever touched from the thread that owns it (the trame server's event loop).
`start_propagation` reads the sequences and the painted segments into arrays there
(`BrainDiffSegSlicer.logic.BrainDiffSegLogic.startPropagation`, on the shown scene and the app's module logics); the
engine runs elsewhere: where the Logic's engine says (by default a worker thread of this process, which the trame
loop lets run; with `braindiffseg web --server URL` or `--local-service`, an engine service). The job is the Logic's
one job controller's (`BrainDiffSegService.controller`, the same as the Slicer panel's): `job_state()`, called on
the owner thread by the app's poll, advances it, and the poll after the engine's result arrived adds the new
segmentation and the uncertainty volume to the shown scene there; `import_result` then shows them. Painting while
the job runs is therefore safe and does not change the running job's input.

Interactive loop: every propagation goes through the Logic's feature cache (cleared when another case is loaded), a
re-run updates the previous result in place, and `next_slice` is the slice to paint next (`BrainDiffSegLib.propagation.suggest`).

Annotation modes (issue 23): the painted segmentation has the BraTS classes and a Background segment
(`DEFAULT_SEGMENTS`). `annotation_choice` is the panel's choice, as in the Slicer panel: 'auto' (the default), 'slices'
or 'seeds'; `annotation_mode()` resolves it with the Slicer panel's own rule (`BrainDiffSegLogic.annotationModeFor`:
'auto' is seeds when the Background segment has painted voxels, else complete slices), and `start_propagation`
propagates in that mode: the Logic then reads the Background segment's voxels as `options.background_label` and every
unpainted voxel as unknown (0). `painting()` says what the panel shows: the mode, why, and what is painted (the
annotated axial slices, or `seed_planes()`: the axial, sagittal and coronal slices that hold strokes; a stroke of the
one-slice brush lies in one slice of the view it was painted in). The views show voxel centres only (`plane_ras`).

Healthy-tissue inpainting (`start_inpainting`): the T1 inside the painted tumour (never its Background strokes) or
the propagated result, through
`BrainDiffSegLogic.startInpainting` in the same job controller (one job at a time, same `job_state` / `cancel`),
`import_inpainted` returns the new volume and `save_inpainted` writes it as NIfTI under a numbered name.

Length: the one object behind the annotator's panel (loading, the annotation mode and what is painted, the views'
slices, background jobs, inpainting, saving), which the tests drive without a browser; its array-only parts live in
`planes`.
"""
from __future__ import annotations

import enum
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from BrainDiffSegLib.constants import BACKGROUND_COLOR, BACKGROUND_NAME, BRATS_CLASSES, ROLES
from BrainDiffSegLib.errors import InputError

from .planes import plane_axes as grid_axes
from .planes import seed_planes as planes_of_strokes
from .planes import summary as painting_summary

log = logging.getLogger(__name__)

# The segments a new session starts with: the BraTS classes, so that the result uses the BraTS labels 1 / 2 / 4, and
# Background (strokes of "no tumour here": painted, they make the annotation seeds in the 'auto' mode)
TUMOUR_SEGMENTS = tuple(BRATS_CLASSES[value] for value in sorted(BRATS_CLASSES))  # (name, colour)
DEFAULT_SEGMENTS = (*TUMOUR_SEGMENTS, (BACKGROUND_NAME, BACKGROUND_COLOR))
AUTO = "auto"  # the annotation choice that follows the painted segmentation (as the Slicer panel's 'Automatic')
MODE_LABELS = {"slices": "complete slices", "seeds": "seeds (strokes)"}
# colour tables for the uncertainty overlay, first available (the file-based ones need Slicer's share folder)
UNCERTAINTY_COLORS = ("vtkMRMLColorTableNodeFileInferno.txt", "vtkMRMLColorTableNodeWarm1",
                      "vtkMRMLColorTableNodeRainbow")
UNCERTAINTY_SHOWN_FROM = 0.25  # normalised entropy below this is transparent in the overlay
SAVE_SUFFIXES = (".seg.nrrd", ".nii.gz", "_painted.seg.nrrd")
INPAINT_SOURCES = ("result", "painted")  # what `start_inpainting` inpaints: the propagated or the painted tumour


class JobStatus(str, enum.Enum):
    IDLE = "idle"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"


@dataclass
class JobState:
    """What the UI shows of the background job (a propagation or an inpainting); a copy."""
    status: JobStatus = JobStatus.IDLE
    stage: str = ""
    fraction: float = 0.0
    message: str = ""
    seconds: float = 0.0
    kind: str = ""  # "propagation" or "inpainting"


@dataclass
class Painting:
    """What the panel shows of the painting (`AnnotationSession.painting`)."""
    mode: str  # the annotation mode of the next propagation: 'slices' or 'seeds'
    reason: str  # why, in a few words (the Slicer panel's: 'Background is painted', 'chosen', ...)
    annotated: list[int]  # the axial slices with a painted tumour voxel (the annotated slices of 'slices')
    seed_planes: dict  # in seeds mode: orientation -> the slices holding strokes, 'other' -> [voxels elsewhere]
    summary: str  # one line for the panel (`planes.summary`)


@dataclass
class SavedFiles:
    segmentation: Path  # .seg.nrrd: segment names and colours
    labels: Path  # .nii.gz label volume on the sequences' grid
    painted: Path  # .seg.nrrd of the painted slices
    what: str  # "propagated" or "painted" (what went into `segmentation` / `labels`)


def output_folder(out_dir) -> Path:
    """`out_dir` as a Path, created if missing; InputError with the reason if it cannot be."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"Cannot create the output folder {out_dir}: {exc.strerror}") from exc
    return out_dir


def numbered_stem(out_dir: Path, stem: str, suffixes=SAVE_SUFFIXES) -> str:
    """`stem`, else `stem-2`, `stem-3`, ...: the first stem for which no `out_dir/<stem><suffix>` exists.

    Saving never overwrites: a second save writes a new, numbered set of files."""
    out_dir = Path(out_dir)
    n = 1
    while True:
        candidate = stem if n == 1 else f"{stem}-{n}"
        if not any((out_dir / f"{candidate}{s}").exists() for s in suffixes):
            return candidate
        n += 1


class AnnotationSession:
    """The sequences of one case, the painted segmentation, a background propagation and saving.

    scene: the shown MRML scene; volumesLogic / segmentationsLogic: the module logics attached to it (the trame
    app's; default: the Logic's own). options: the `BrainDiffSegLib.options.PropagationOptions` of every
    propagation.
    """

    def __init__(self, scene, options=None, volumesLogic=None, segmentationsLogic=None):
        from BrainDiffSegSlicer.logic import BrainDiffSegLogic  # needs slicer-core

        self.scene = scene
        self.options = options
        self.logic = BrainDiffSegLogic(scene, volumesLogic=volumesLogic, segmentationsLogic=segmentationsLogic)
        self.volumes: dict = {}
        self.case_name = "case"
        self.case_dir: Path | None = None
        self.painted = None
        self.result = None
        self.uncertainty = None
        self.least_certain: list[tuple[int, float]] = []
        self.next_slice: int | None = None  # the slice to paint next, after a propagation
        self.inpainted = None  # the newest inpainted T1 (a volume node), after `import_inpainted`
        self.annotation_choice = AUTO  # 'auto', 'slices' or 'seeds' (`set_annotation_choice`)
        self.last_mode: str | None = None  # the annotation mode of the last propagation started
        self._state = JobState()

    # ------------------------------------------------------------------ loading

    def load_case(self, case_dir) -> dict:
        """Load a case folder (any layout the engine reads) with `BrainDiffSegLogic.loadCase`."""
        case_dir = Path(case_dir)
        if not case_dir.is_dir():
            raise InputError(f"Case folder not found: {case_dir}")
        self.volumes = self.logic.loadCase(case_dir, loadGroundTruth=False)
        self.logic.clearCache()
        self.case_dir, self.case_name = case_dir, case_dir.name
        log.info("loaded %s: %s", case_dir, ", ".join(self.volumes))
        return self.volumes

    def load_files(self, files: dict) -> dict:
        """Load NIfTI (or any ITK-readable) files given one by one: role ('t1', 't1ce', 't2', 'flair') -> path."""
        files = {role: Path(p) for role, p in files.items() if p}
        unknown = sorted(set(files) - set(ROLES))
        if unknown:
            raise InputError(f"Unknown sequence role(s) {unknown}; use {list(ROLES)}.")
        if not files:
            raise InputError("No sequence given: give --case DIR or at least one of --t1, --t1ce, --t2, --flair.")
        for role, path in files.items():
            if not path.is_file():
                raise InputError(f"--{role}: file not found: {path}")
        volumes_logic = self.logic.volumesLogic
        loaded = {}
        try:
            for role in [r for r in ROLES if r in files]:
                path = files[role]
                name = re.sub(r"\.nii(\.gz)?$", "", path.name)
                node = volumes_logic.AddArchetypeVolume(str(path), name, 0)
                if node is None or node.GetImageData() is None:
                    raise InputError(f"--{role}: cannot read {path} as an image volume.")
                loaded[role] = node
        except Exception:
            for node in loaded.values():
                self.scene.RemoveNode(node)
            raise
        self.volumes = loaded
        self.logic.clearCache()
        first = files[next(iter(loaded))]
        self.case_dir = first.parent
        self.case_name = re.sub(r"[_-](t1|t1ce|t2|flair|t1n|t1c|t2w|t2f|pre|post)$", "",
                                re.sub(r"\.nii(\.gz)?$", "", first.name), flags=re.IGNORECASE)
        log.info("loaded %s", ", ".join(f"{r}={p}" for r, p in files.items()))
        return loaded

    @property
    def reference(self):
        """The volume that defines the grid (FLAIR if loaded, else the first sequence)."""
        return self.volumes.get("flair") or next(iter(self.volumes.values()), None)

    def check_volumes(self) -> None:
        """InputError (naming the volumes) unless the sequences are on one grid: checked at start, not at the
        first Propagate click."""
        self.logic.checkSameGrid(self.logic.checkVolumes(self.volumes))

    # ------------------------------------------------------------------ propagation in the background

    def job_state(self) -> JobState:
        """The current job's status, stage, fraction, message and elapsed time; advances the job (on the scene's
        thread: the poll after the engine's result arrived adds it to the scene)."""
        job = self.logic.jobs.job
        if job is not None:
            state = job.state if job.done else job.poll()
            stage = "cancelling" if state.cancelling else state.stage
            self._state = JobState(JobStatus(state.status), stage, state.fraction, state.message, state.seconds,
                                   job.kind)
        return JobState(**vars(self._state))

    @property
    def running(self) -> bool:
        return self.logic.jobs.running

    def start_propagation(self) -> None:
        """Read the inputs and propagate in the background, where the Logic's engine runs, in the annotation mode
        `annotation_mode()` gives (raises InputError at once for bad input, such as an empty painting; engine errors
        end the job as FAILED with the message)."""
        self._refuse_if_running()
        if self.painted is None or not self.volumes:
            raise InputError("Load a case and paint the tumour on a few axial slices first.")
        mode, _ = self.annotation_mode()
        if not any(self._painted_voxels().values()):
            raise InputError("Nothing is painted yet: paint the tumour on at least one axial slice." if mode == "slices"
                             else "Nothing is painted yet: paint a few strokes in each tumour class and some "
                                  f"{BACKGROUND_NAME} around the tumour, in any view.")
        previous = self.result if self.result is not None and self.result.GetScene() is self.scene else None
        self.logic.startPropagation(self.volumes, self.painted, self.propagation_options(mode),
                                    createUncertainty=True, outputNode=previous)  # a re-run updates the previous result
        self.last_mode = mode
        self._state = JobState(status=JobStatus.RUNNING, stage="starting", kind="propagation")

    # ------------------------------------------------------------------ the annotation mode

    @staticmethod
    def annotation_choices() -> list[tuple[str, str]]:
        """The choices of the annotation mode, (value, label), as the Slicer panel shows them: Automatic, Complete
        slices, Seeds (strokes)."""
        from BrainDiffSegSlicer.parameters import annotationChoices

        return annotationChoices()

    def set_annotation_choice(self, choice: str) -> str:
        """Set the annotation choice ('auto', 'slices', 'seeds' or their labels; InputError otherwise); returns it."""
        from BrainDiffSegSlicer.parameters import annotationChoiceOf

        self.annotation_choice = annotationChoiceOf(choice)
        return self.annotation_choice

    def annotation_mode(self) -> tuple[str, str]:
        """The annotation mode the next propagation uses ('slices' or 'seeds') and why, in a few words: the Slicer
        panel's rule (`BrainDiffSegLogic.annotationModeFor`) applied to the painted segmentation and the choice."""
        return self.logic.annotationModeFor(self.painted, self.annotation_choice)

    def propagation_options(self, mode: str | None = None):
        """The session's options (default: the engine's defaults) in an annotation mode (default: `annotation_mode`)."""
        from dataclasses import replace

        from BrainDiffSegLib.options import preset

        options = self.options if self.options is not None else preset("default")
        mode = mode or self.annotation_mode()[0]
        return options if options.annotation_mode == mode else replace(options, annotation_mode=mode)

    def _refuse_if_running(self) -> None:
        if self.running:
            kind = self._state.kind or "propagation"
            raise InputError(f"A{'n' if kind[0] in 'aeiou' else ''} {kind} is already running: wait for it or "
                             "cancel it.")

    def cancel(self) -> None:
        """Ask the running job to stop (it stops at the engine's next check, leaving the shown scene unchanged)."""
        if self.running:
            self.logic.jobs.cancel()

    def wait(self, timeout: float | None = None) -> JobState:
        job = self.logic.jobs.job
        if job is not None:
            job.wait(timeout)
        return self.job_state()

    def _take(self, kind: str):
        """The outcome of the finished job of `kind` (None unless it is DONE), and the job forgotten."""
        job = self.logic.jobs.job
        if job is None or job.kind != kind or self.job_state().status != JobStatus.DONE:
            return None
        outcome = job.outcome()
        self.logic.jobs.forget()
        self._state = JobState()
        return outcome

    def import_result(self):
        """On the scene's thread, after a job is DONE: the new segmentation (and uncertainty volume), added to the
        shown scene by the job's last poll, shown. Returns the segmentation node; the painted one is not touched."""
        result = self._take("propagation")
        if result is None:
            return None
        uncertainty = self.logic.lastUncertaintyNode
        if uncertainty is not None:
            display = uncertainty.GetDisplayNode()
            color = next((c for c in UNCERTAINTY_COLORS if self.scene.GetNodeByID(c) is not None), None)
            if color is not None:
                display.SetAndObserveColorNodeID(color)
            display.SetAutoWindowLevel(False)
            display.SetWindowLevelMinMax(0.0, 1.0)
            display.SetApplyThreshold(True)
            display.SetLowerThreshold(UNCERTAINTY_SHOWN_FROM)
            display.SetUpperThreshold(1.0)
        self.result, self.uncertainty = result, uncertainty
        self.next_slice, self.least_certain = self.logic.suggestions()
        return result

    def notes(self) -> list[str]:
        """What the last propagation has to tell the user: the engine's warnings (e.g. seeds outside the head) and
        the Logic's notes (e.g. Background strokes unused in complete-slices mode, no T1ce)."""
        return [str(m) for m in dict.fromkeys(self.logic.lastMessages or [])]

    # ------------------------------------------------------------------ healthy-tissue inpainting

    def inpainting_source(self) -> str:
        """The default region to inpaint: the propagated result if there is one, else the painted tumour."""
        return "result" if self.result is not None else "painted"

    def start_inpainting(self, source: str | None = None, steps: int = 25, seed: int = 0, model=None) -> None:
        """Inpaint healthy tissue into the T1 inside every segment of the propagated result (source 'result') or
        of the painted segmentation ('painted'; default: `inpainting_source()`), in the background. Bad input
        raises InputError at once; engine errors end the job as FAILED with the message."""
        self._refuse_if_running()
        if not self.volumes:
            raise InputError("Load a case first.")
        if "t1" not in self.volumes:
            raise InputError(f"Inpainting works on the T1 and '{self.case_name}' has none: load a case with a T1 "
                             "sequence.")
        source = source or self.inpainting_source()
        if source not in INPAINT_SOURCES:
            raise InputError(f"Unknown region '{source}' to inpaint; use {' or '.join(INPAINT_SOURCES)}.")
        if source == "result" and self.result is None:
            raise InputError("There is no propagated result yet: propagate first, or inpaint the painted tumour.")
        node = self.result if source == "result" else self.painted
        tumour = self.tumour_segment_ids(node) if node is not None else []
        counts = self.segment_voxels(node) if node is not None else {}
        segmentation = node.GetSegmentation() if node is not None else None
        if not tumour or not any(counts.get(segmentation.GetSegment(sid).GetName()) for sid in tumour):
            raise InputError("Nothing is painted yet: paint the tumour first." if source == "painted" else
                             f"The propagated result '{node.GetName()}' is empty: nothing to inpaint.")
        device = getattr(self.options, "device", None) or "cpu"
        self.logic.startInpainting(self.volumes["t1"], node, tumour, steps=steps, seed=seed, model=model,
                                   device=device)
        self._state = JobState(status=JobStatus.RUNNING, stage="starting", kind="inpainting")
        log.info("inpainting the T1 inside the %s segmentation '%s' (%d DDIM steps)", source, node.GetName(), steps)

    def import_inpainted(self):
        """On the scene's thread, after an inpainting job is DONE: the inpainted T1, added to the shown scene as a
        new volume by the job's last poll (`inpainted`); the T1 and the segmentations are not touched."""
        node = self._take("inpainting")
        if node is not None:
            self.inpainted = node
        return node

    def save_inpainted(self, out_dir) -> Path:
        """Write the newest inpainted T1 as `<case>_inpainted.nii.gz` in `out_dir`, numbered (`-2`, `-3`, ...) if
        that name exists: an earlier file is never overwritten."""
        if self.inpainted is None:
            raise InputError("Nothing inpainted to save yet.")
        out_dir = output_folder(out_dir)
        path = out_dir / f"{numbered_stem(out_dir, f'{self.case_name}_inpainted', ('.nii.gz',))}.nii.gz"
        self.logic.saveVolume(self.inpainted, path)
        log.info("saved the inpainted T1 '%s' as %s", self.inpainted.GetName(), path.name)
        return path

    # ------------------------------------------------------------------ inspection

    def _painted_voxels(self) -> dict[str, int]:
        return self.segment_voxels(self.painted)

    def _painted_masks(self) -> dict:
        """Segment id -> KJI mask of the painted segmentation on the reference grid (segments with voxels)."""
        from BrainDiffSegSlicer.arrays import segmentMasks

        return segmentMasks(self.painted, self.reference) if self.painted is not None else {}

    def segment_voxels(self, node, masks: dict | None = None) -> dict[str, int]:
        """Segment name -> number of voxels on the reference grid (every segment, Background included); masks: the
        node's `segmentMasks` if already read."""
        if node is None:
            return {}
        from BrainDiffSegSlicer.arrays import segmentMasks

        masks = segmentMasks(node, self.reference) if masks is None else masks
        segmentation = node.GetSegmentation()
        return {segmentation.GetSegment(sid).GetName(): int(np.count_nonzero(masks[sid])) if sid in masks else 0
                for sid in segmentation.GetSegmentIDs()}

    @staticmethod
    def tumour_segment_ids(node) -> list[str]:
        """The segments of a segmentation that are not named as background (`BrainDiffSegSlicer.segments`)."""
        from BrainDiffSegSlicer.segments import isBackgroundName

        segmentation = node.GetSegmentation()
        return [sid for sid in segmentation.GetSegmentIDs()
                if not isBackgroundName(segmentation.GetSegment(sid).GetName() or "")]

    def painted_labels(self, mode: str = "slices"):
        """The painted segmentation as the engine reads it in `mode` (IJK, axial axis last): in 'slices' the tumour
        classes' values (Background 0), in 'seeds' also the Background voxels as `options.background_label`."""
        options = self.propagation_options(mode)
        labels, _, _ = self.logic.labelArrayFromSegmentation(
            self.painted, self.reference, options.background_label if mode == "seeds" else None)
        return self.logic.toEngineArray(labels, self.logic.axialAxis(self.reference))

    def annotated_axial_slices(self, masks: dict | None = None) -> list[int]:
        """The axial slices (engine indices) with a painted tumour voxel (any segment but Background): the annotated
        slices in 'slices' mode. masks: `_painted_masks()` if already read."""
        masks = self._painted_masks() if masks is None else masks
        tumour = [masks[sid] for sid in self.tumour_segment_ids(self.painted) if sid in masks] if masks else []
        if not tumour:
            return []
        along = 2 - self.plane_axes()["axial"]  # the numpy axis of the axial axis in a KJI mask
        hit = np.logical_or.reduce(tumour).any(axis=tuple(a for a in range(3) if a != along))
        return [int(z) for z in np.flatnonzero(hit)]

    def seed_planes(self, masks: dict | None = None) -> dict[str, list[int]]:
        """Orientation -> the slices that hold strokes of the painted segmentation, 'other' -> [voxels in none of
        them] (`planes.seed_planes`, indices along `plane_axes`). masks: `_painted_masks()` if already read."""
        masks = self._painted_masks() if masks is None else masks
        painted = np.zeros(tuple(reversed(self.reference.GetImageData().GetDimensions())), bool)  # KJI
        for mask in masks.values():
            painted |= mask
        return planes_of_strokes(painted, self.plane_axes())

    def painting(self) -> Painting:
        """The annotation mode of the next propagation, why, and what is painted (one read of the segmentation)."""
        mode, reason = self.annotation_mode()
        masks = self._painted_masks()
        annotated = self.annotated_axial_slices(masks)
        if mode != "seeds":
            return Painting(mode, reason, annotated, {}, painting_summary(mode, annotated))
        seed_planes = self.seed_planes(masks)
        voxels = self.segment_voxels(self.painted, masks) if self.painted is not None else {}
        return Painting(mode, reason, annotated, seed_planes, painting_summary(mode, annotated, seed_planes, voxels))

    def slice_ras(self, axial_index: int) -> tuple[float, float, float]:
        """RAS centre of an axial slice (an index along the engine's axial axis) of the reference volume."""
        return self.logic.sliceCentreRas(self.reference, axial_index)

    def plane_axes(self) -> dict[str, int]:
        """Orientation ('axial', 'sagittal', 'coronal') -> the IJK axis of the reference volume its slices cut."""
        return grid_axes(self.logic.ijkToRasArray(self.reference), self.logic.axialAxis(self.reference))

    def plane_count(self, orientation: str) -> int:
        """How many slices the reference volume has in an orientation."""
        return int(self.reference.GetImageData().GetDimensions()[self.plane_axes()[orientation]])

    def plane_ras(self, orientation: str, index: int) -> tuple[float, float, float]:
        """A RAS point on the voxel centres of slice `index` of an orientation (the other IJK coordinates: the
        middle voxel): jumping a slice view there shows, and paints, exactly that slice."""
        ijk = [float((d - 1) // 2) for d in self.reference.GetImageData().GetDimensions()]
        ijk[self.plane_axes()[orientation]] = float(index)
        ras = self.logic.ijkToRasArray(self.reference) @ [*ijk, 1.0]
        return float(ras[0]), float(ras[1]), float(ras[2])

    def plane_index(self, orientation: str, ras) -> int:
        """The slice of an orientation a RAS point lies in (nearest voxel centre)."""
        ijk = np.linalg.inv(self.logic.ijkToRasArray(self.reference)) @ [*map(float, ras[:3]), 1.0]
        return int(np.rint(ijk[self.plane_axes()[orientation]]))

    def feature_cache_mb(self) -> float:
        return self.logic.featureCacheBytes() / 1024 ** 2

    def axial_slice_count(self) -> int:
        reference = self.reference
        return int(reference.GetImageData().GetDimensions()[self.logic.axialAxis(reference)])

    # ------------------------------------------------------------------ saving

    def save(self, out_dir) -> SavedFiles:
        """Write the propagated segmentation (or, before any propagation, the painted one) as `.seg.nrrd` and
        `.nii.gz`, and the painted slices as `_painted.seg.nrrd`, to `out_dir`, under a new numbered name if
        files of that name exist: an earlier save is never overwritten."""
        if self.painted is None:
            raise InputError("Nothing to save: load a case first.")
        out_dir = output_folder(out_dir)
        stem = numbered_stem(out_dir, f"{self.case_name}_braindiffseg")
        node, what = (self.result, "propagated") if self.result is not None else (self.painted, "painted")
        files = SavedFiles(segmentation=out_dir / f"{stem}.seg.nrrd", labels=out_dir / f"{stem}.nii.gz",
                           painted=out_dir / f"{stem}_painted.seg.nrrd", what=what)
        self.logic.saveSegmentation(node, files.segmentation, self.reference)
        self.logic.saveSegmentation(node, files.labels, self.reference)
        self.logic.saveSegmentation(self.painted, files.painted, self.reference)
        log.info("saved the %s segmentation as %s and %s (painted slices: %s)", what, files.segmentation.name,
                 files.labels.name, files.painted.name)
        return files
