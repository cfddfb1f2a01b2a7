"""State of one annotation session: the loaded sequences, the painted segmentation, the background propagation
and saving. No trame and no UI here (the app in `app.py` drives it), so it is tested without a browser.

Threading: the shown MRML scene is only ever touched from the thread that owns it (the trame server's event loop).
`start_propagation` copies the sequences and the painted segments into a private scene, the worker thread runs
`BrainDiffSegLogic.propagate` on that copy, and `import_result` (called on the owner thread once the job is done)
copies the new segmentation and the uncertainty volume into the shown scene. Painting while the job runs is
therefore safe and does not change the running job's input.
"""
from __future__ import annotations

import enum
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import vtk

import slicer

from BrainDiffSegLib.errors import BrainDiffSegError, CancelledError, InputError

log = logging.getLogger(__name__)

ROLES = ("t1", "t1ce", "t2", "flair")
# The segments a new session starts with: the BraTS classes, so that the result uses the BraTS labels 1 / 2 / 4.
DEFAULT_SEGMENTS = (("Necrotic core", (0.90, 0.10, 0.10)), ("Edema", (0.10, 0.80, 0.20)),
                    ("Enhancing tumour", (1.00, 0.85, 0.00)))
# colour tables for the uncertainty overlay, first available (the file-based ones need Slicer's share folder)
UNCERTAINTY_COLORS = ("vtkMRMLColorTableNodeFileInferno.txt", "vtkMRMLColorTableNodeWarm1",
                      "vtkMRMLColorTableNodeRainbow")
UNCERTAINTY_SHOWN_FROM = 0.25  # normalised entropy below this is transparent in the overlay
SAVE_SUFFIXES = (".seg.nrrd", ".nii.gz", "_painted.seg.nrrd")


class JobStatus(str, enum.Enum):
    IDLE = "idle"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"


@dataclass
class JobState:
    """What the UI shows of a propagation job; a copy taken under the job's lock."""
    status: JobStatus = JobStatus.IDLE
    stage: str = ""
    fraction: float = 0.0
    message: str = ""
    seconds: float = 0.0


@dataclass
class SavedFiles:
    segmentation: Path  # .seg.nrrd: segment names and colours
    labels: Path  # .nii.gz label volume on the sequences' grid
    painted: Path  # .seg.nrrd of the painted slices
    what: str  # "propagated" or "painted" (what went into `segmentation` / `labels`)


@dataclass
class _Private:
    """The private copy a job works on (its own scene, volumes and painted segmentation)."""
    scene: object
    volumes: dict
    painted: object
    logic: object
    result: object = None
    uncertainty: object = None
    least_certain: list = field(default_factory=list)


def _module():
    """The Slicer module file (BrainDiffSeg/BrainDiffSeg.py), imported lazily (it needs slicer-core)."""
    import BrainDiffSeg

    return BrainDiffSeg


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


def _copy_volume(volume, scene, name=None):
    """A scalar volume with a deep copy of the voxels and the same geometry, added to `scene`."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name or volume.GetName())
    m = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(m)
    node.SetIJKToRASMatrix(m)
    image = vtk.vtkImageData()
    image.DeepCopy(volume.GetImageData())
    node.SetAndObserveImageData(image)
    return node


def _copy_segmentation(source, scene, name, reference):
    """A segmentation node with a deep copy of `source`'s segments (and its BrainDiffSeg attributes) in `scene`."""
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    node.GetSegmentation().DeepCopy(source.GetSegmentation())
    for attribute in source.GetAttributeNames() or ():
        if attribute.startswith("BrainDiffSeg."):
            node.SetAttribute(attribute, source.GetAttribute(attribute))
    return node


class AnnotationSession:
    """The sequences of one case, the painted segmentation, a background propagation and saving.

    scene: the shown MRML scene. options: `BrainDiffSegLib.propagate.PropagationOptions` for every propagation.
    """

    def __init__(self, scene, options=None):
        self.scene = scene
        self.options = options
        self.logic = _module().BrainDiffSegLogic()
        self.volumes: dict = {}
        self.case_name = "case"
        self.case_dir: Path | None = None
        self.painted = None
        self.result = None
        self.uncertainty = None
        self.least_certain: list[tuple[int, float]] = []
        self._lock = threading.Lock()
        self._state = JobState()
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._private: _Private | None = None
        self._started = 0.0

    # ------------------------------------------------------------------ loading

    def load_case(self, case_dir) -> dict:
        """Load a case folder (any layout the engine reads) with `BrainDiffSegLogic.loadCase`."""
        case_dir = Path(case_dir)
        if not case_dir.is_dir():
            raise InputError(f"Case folder not found: {case_dir}")
        previous = getattr(slicer, "mrmlScene", None)
        slicer.mrmlScene = self.scene  # loadCase adds the volumes to slicer.mrmlScene
        try:
            self.volumes = self.logic.loadCase(case_dir, loadGroundTruth=False)
        finally:
            if previous is not None:
                slicer.mrmlScene = previous
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
        volumes_logic = self.logic._moduleLogic("volumes", "vtkSlicerVolumesLogic", self.scene)
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
        self.logic._checkSameGrid(self.logic._checkVolumes(self.volumes))

    # ------------------------------------------------------------------ propagation in the background

    def job_state(self) -> JobState:
        with self._lock:
            return JobState(**vars(self._state))

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _set(self, **kwargs) -> None:
        with self._lock:
            for key, value in kwargs.items():
                setattr(self._state, key, value)
            self._state.seconds = time.perf_counter() - self._started if self._started else 0.0

    def start_propagation(self) -> None:
        """Copy the inputs to a private scene and propagate there in a worker thread (raises InputError at once
        for an empty painting; engine errors end the job as FAILED with the message)."""
        if self.running:
            raise InputError("A propagation is already running: wait for it or cancel it.")
        if self.painted is None or not self.volumes:
            raise InputError("Load a case and paint the tumour on a few axial slices first.")
        if not any(self._painted_voxels().values()):
            raise InputError("Nothing is painted yet: paint the tumour on at least one axial slice.")
        scene = slicer.vtkMRMLScene()
        volumes = {role: _copy_volume(node, scene) for role, node in self.volumes.items()}
        reference = volumes.get("flair") or next(iter(volumes.values()))
        painted = _copy_segmentation(self.painted, scene, self.painted.GetName(), reference)
        self._private = _Private(scene=scene, volumes=volumes, painted=painted, logic=_module().BrainDiffSegLogic())
        self._cancel.clear()
        self._started = time.perf_counter()
        self._set(status=JobStatus.RUNNING, stage="starting", fraction=0.0, message="")
        self._thread = threading.Thread(target=self._run, args=(self._private,), name="braindiffseg-propagate",
                                        daemon=True)
        self._thread.start()

    def _run(self, private: _Private) -> None:
        try:
            private.result = private.logic.propagate(
                private.volumes, private.painted, self.options,
                progress=lambda stage, fraction: self._set(stage=stage, fraction=float(fraction)),
                cancelled=self._cancel.is_set, createUncertainty=True)
            private.uncertainty = private.logic.lastUncertaintyNode
            private.least_certain = private.logic.lastResult.least_certain_slices()
            self._set(status=JobStatus.DONE, stage="done", fraction=1.0)
            log.info("propagation done in %.1f s", self.job_state().seconds)
        except CancelledError:
            self._set(status=JobStatus.CANCELLED, message="Propagation cancelled.")
            log.info("propagation cancelled")
        except BrainDiffSegError as exc:
            self._set(status=JobStatus.FAILED, message=str(exc))
            log.error("propagation failed: %s", exc)
        except Exception as exc:  # an unexpected engine error: shown to the user, logged with the traceback
            self._set(status=JobStatus.FAILED, message=f"Propagation failed: {type(exc).__name__}: {exc}")
            log.exception("propagation failed")

    def cancel(self) -> None:
        """Ask the running job to stop (it stops at the engine's next check, leaving the shown scene unchanged)."""
        if self.running:
            self._cancel.set()
            self._set(stage="cancelling")

    def wait(self, timeout: float | None = None) -> JobState:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.job_state()

    def import_result(self):
        """On the scene's thread, after a job is DONE: copy the new segmentation (and uncertainty volume) into the
        shown scene. Returns the new segmentation node; the painted segmentation is not touched."""
        private = self._private
        if private is None or private.result is None or self.running:
            return None
        self._private = None
        reference = self.reference
        result = _copy_segmentation(private.result, self.scene, private.result.GetName(), reference)
        result.SetNodeReferenceID(_module().SOURCE_REFERENCE_ROLE, self.painted.GetID())
        uncertainty = None
        if private.uncertainty is not None:
            uncertainty = _copy_volume(private.uncertainty, self.scene,
                                       self.scene.GenerateUniqueName(f"{result.GetName()} uncertainty"))
            uncertainty.CreateDefaultDisplayNodes()
            display = uncertainty.GetDisplayNode()
            color = next((c for c in UNCERTAINTY_COLORS if self.scene.GetNodeByID(c) is not None), None)
            if color is not None:
                display.SetAndObserveColorNodeID(color)
            display.SetAutoWindowLevel(False)
            display.SetWindowLevelMinMax(0.0, 1.0)
            display.SetApplyThreshold(True)
            display.SetLowerThreshold(UNCERTAINTY_SHOWN_FROM)
            display.SetUpperThreshold(1.0)
            result.SetNodeReferenceID(_module().UNCERTAINTY_REFERENCE_ROLE, uncertainty.GetID())
        private.scene.Clear(1)
        self.result, self.uncertainty, self.least_certain = result, uncertainty, private.least_certain
        self._set(status=JobStatus.IDLE)
        return result

    # ------------------------------------------------------------------ inspection

    def _painted_voxels(self) -> dict[str, int]:
        return self.segment_voxels(self.painted)

    def segment_voxels(self, node) -> dict[str, int]:
        """Segment name -> number of voxels on the reference grid."""
        if node is None:
            return {}
        import numpy as np

        out = {}
        labels, segment_of_value, _ = self.logic.labelArrayFromSegmentation(node, self.reference)
        names = {sid: node.GetSegmentation().GetSegment(sid).GetName()
                 for sid in node.GetSegmentation().GetSegmentIDs()}
        for value, sid in segment_of_value.items():
            out[names[sid]] = int(np.count_nonzero(labels == value))
        for name in names.values():
            out.setdefault(name, 0)
        return out

    def slice_ras(self, axial_index: int) -> tuple[float, float, float]:
        """RAS centre of an axial slice (an index along the engine's axial axis) of the reference volume."""
        reference = self.reference
        axis = self.logic.axialAxis(reference)
        dims = reference.GetImageData().GetDimensions()
        ijk = [(d - 1) / 2.0 for d in dims]
        ijk[axis] = float(axial_index)
        m = self.logic.ijkToRasArray(reference)
        ras = m @ [*ijk, 1.0]
        return float(ras[0]), float(ras[1]), float(ras[2])

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
        out_dir = Path(out_dir)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"Cannot create the output folder {out_dir}: {exc.strerror}") from exc
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
