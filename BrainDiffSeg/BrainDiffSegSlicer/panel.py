"""What the module panel does and shows, without Qt: it starts and cancels jobs through the Logic's one job controller
(`BrainDiffSegLogic.jobs`), polls it once per timer tick, and says what every button, label and progress bar shows
(`PanelView`) in every state: idle, starting the engine service, sending the volume, the engine's stages, adding
the result, done, cancelled, failed. The widget (`widget`) only binds Qt widgets to this; the tests drive it with
real MRML scenes and real engines (Testing/Python/test_slicer_panel.py, test_slicer_event_loop.py).

Inputs come from the module's parameter node (`parameters`); where the engine runs comes from `EngineSettings`
(the panel keeps them in the application's settings, not in the scene: a token must not be saved with a scene).

The annotation mode (issue 23): the parameter AnnotationMode holds the panel's choice, Automatic (the default),
Complete slices or Seeds (strokes); the Logic resolves it for the painted segmentation
(`BrainDiffSegLogic.annotationModeFor`: Automatic is seeds when the Background segment is painted), the panel shows
which mode the next Propagate uses and why (`PanelView.annotationText`), and a propagation's options carry the
resolved mode. The engine's warnings (e.g. seeds outside the head) come with its messages in the status.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from BrainDiffSegLib.constants import ROLES
from BrainDiffSegLib.errors import BrainDiffSegError, InputError

from . import engine as engines
from . import parameters
from .compat import tr as _

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineSettings:
    """Where the panel's jobs run: 'local' (a private engine service on this computer) or 'remote' (a server)."""

    mode: str = "local"
    url: str = ""
    token: str = ""
    cafile: str = ""

    def check(self) -> None:
        if self.mode not in engines.MODES:
            raise InputError(f"Unknown engine '{self.mode}'; use one of {', '.join(engines.MODES)}.")
        if self.mode == "remote" and not (self.url.strip() and self.token.strip()):
            raise InputError("Give the server's address (https://HOST:PORT) and its token in Advanced, or run the "
                             "engine on this computer.")


@dataclass(frozen=True)
class PanelView:
    """What the panel shows (the widget copies it onto its Qt widgets)."""

    running: bool
    propagateText: str
    propagateEnabled: bool
    propagateToolTip: str
    status: str
    progress: int  # 0..1000
    settingsEnabled: bool  # inputs, advanced settings, restore defaults, "paint corrections into the result"
    paintNextEnabled: bool
    paintNextText: str
    leastCertain: str
    inpaintText: str
    inpaintEnabled: bool
    inpaintToolTip: str
    inpaintStatus: str
    inpaintProgress: int
    inpaintSettingsEnabled: bool
    annotationText: str  # the annotation mode the next (or the running) propagation uses, and why
    nextPollMs: int  # when to poll again (the timer's interval); 0: as soon as the loop is idle


@dataclass(frozen=True)
class JobEnd:
    """A job that just ended: what the widget does next (show the result, or an error dialog)."""

    kind: str  # "propagation", "inpainting"
    status: str  # "done", "cancelled", "failed"
    outcome: object  # the new or updated node when done
    message: str
    dialog: bool  # whether the message deserves a dialog (a failure)


def stageText(state) -> str:
    """'Predicting... 42 %' from a controller state."""
    stage = (state.stage or "").strip()
    text = stage[:1].upper() + stage[1:] if stage else _("Working")
    return f"{text}... {int(round(100 * state.fraction))} %"


class PanelModel:
    """The panel's behaviour (see the module docstring). `onBeforeResult(outputNode)` is called the tick before a
    propagation's result is written into an existing result node (the widget saves the Segment Editor's undo
    state there)."""

    def __init__(self, logic):
        self.logic = logic
        self.status, self.progress = "", 0
        self.inpaintStatus, self.inpaintProgress = "", 0
        self.leastCertain = ""
        self.nextSlice = None  # (axial index, reference volume) suggested by the last result
        self.engineSettings = EngineSettings()
        self.onBeforeResult = None
        self._announced = False
        self._outputNode = None
        self._reference = None
        self._annotation = (None, "")  # (mode, text) of the running propagation, or the last one computed

    # ------------------------------------------------------------------ inputs

    @staticmethod
    def inputVolumes(node):
        """The volumes argument of the Logic: the multi-component volume if one is selected, else role -> node."""
        if node is None:
            return {}
        multi = node.GetNodeReference("MultiComponent")
        if multi is not None:
            return multi
        return {role: node.GetNodeReference(f"Input_{role}") for role in ROLES
                if node.GetNodeReference(f"Input_{role}") is not None}

    def readyToPropagate(self, node) -> bool:
        return node is not None and node.GetNodeReference("Segmentation") is not None and bool(self.inputVolumes(node))

    def inpaintSegmentation(self, node):
        """The segmentation whose segments are inpainted: the chosen one, else the newest propagated result of the
        painted segmentation, else the painted one."""
        if node is None:
            return None
        chosen = node.GetNodeReference("InpaintSegmentation")
        if chosen is not None:
            return chosen
        painted = node.GetNodeReference("Segmentation")
        return self.logic.previousResultOf(painted) or painted

    def annotationMode(self, node) -> tuple[str, str]:
        """The annotation mode ('slices' or 'seeds') the next propagation uses, and why (`BrainDiffSegLogic.
        annotationModeFor` of the painted segmentation and the stored choice; InputError for an unknown choice)."""
        return self.logic.annotationModeFor(node.GetNodeReference("Segmentation") if node is not None else None,
                                            parameters.annotationChoice(node) if node is not None else parameters.AUTO)

    def annotationText(self, node, running: bool = False) -> tuple[str | None, str]:
        """The mode of `annotationMode` and what the panel says of it: 'Propagate uses seeds (strokes): Background
        is painted.' (None and the error for a bad choice)."""
        try:
            mode, reason = self.annotationMode(node)
        except InputError as exc:
            return None, str(exc)
        label = dict(parameters.annotationChoices())[mode].lower()
        text = _("This run uses {mode}: {reason}.") if running else _("Propagate uses {mode}: {reason}.")
        return mode, text.format(mode=label, reason=reason)

    def readyToInpaint(self, node) -> bool:
        return node is not None and node.GetNodeReference("InpaintVolume") is not None and \
            self.inpaintSegmentation(node) is not None

    # ------------------------------------------------------------------ where the engine runs

    def setEngineSettings(self, settings: EngineSettings) -> None:
        """Use these settings from the next job on (a changed choice closes the current engine; refused while a
        job runs)."""
        settings.check()
        if settings == self.engineSettings and not engines.isInProcess(self.logic.engine):
            return
        if settings.mode == "remote":
            self.logic.useRemoteServer(settings.url, settings.token, settings.cafile or None)
        else:
            self.logic.useLocalService()
        self.engineSettings = settings

    def _ensureEngine(self) -> None:
        if engines.isInProcess(self.logic.engine):  # first job of the panel: its engine (never in process)
            self.setEngineSettings(self.engineSettings)

    # ------------------------------------------------------------------ actions

    def startPropagation(self, node):
        """Read the inputs and start the propagation (InputError at once for bad input; engine errors end the
        job as failed). Returns the controller's Job."""
        self._ensureEngine()
        segmentationNode = node.GetNodeReference("Segmentation")
        options = parameters.optionsFromParameters(node)
        if options.checkpoint and self.engineSettings.mode == "local" and not Path(options.checkpoint).is_dir():
            raise InputError(f"Backbone folder '{options.checkpoint}' does not exist; leave it empty for the bundled "
                             "model.")  # (a server's folders are checked where they are)
        outputNode = self.logic.previousResultOf(segmentationNode) if parameters.flag(node, "UpdateResult") else None
        annotation = self.annotationText(node, running=True)
        if annotation[0] is None:
            raise InputError(annotation[1])
        options = replace(options, annotation_mode=annotation[0])
        job = self.logic.startPropagation(self.inputVolumes(node), segmentationNode, options,
                                          createUncertainty=parameters.flag(node, "CreateUncertainty"),
                                          outputNode=outputNode, componentRoles=parameters.componentRoles(node))
        self._outputNode, self._announced = outputNode, False
        volumes = self.inputVolumes(node)
        self._reference = volumes if hasattr(volumes, "IsA") else next(iter(volumes.values()))
        self.status, self.progress, self.leastCertain = _("Starting..."), 0, ""
        self._annotation = annotation
        return job

    def startInpainting(self, node):
        """Start inpainting the T1 inside the chosen segments (the Advanced section's device)."""
        self._ensureEngine()
        device = parameters.optionsFromParameters(node).device
        job = self.logic.startInpainting(node.GetNodeReference("InpaintVolume"), self.inpaintSegmentation(node),
                                         segmentIds=parameters.inpaintSegments(node),
                                         steps=parameters.inpaintSteps(node), device=device)
        self.inpaintStatus, self.inpaintProgress = _("Starting..."), 0
        return job

    def cancel(self) -> None:
        jobs = self.logic.jobs
        if not jobs.running:
            return
        jobs.cancel()
        state = jobs.job.state
        if state.running:
            if state.kind == "inpainting":
                self.inpaintStatus = _("Cancelling...")
            else:
                self.status = _("Cancelling...")

    def tick(self):
        """One poll of the job controller (a timer tick): updates what is shown; returns a `JobEnd` when the job
        ended in this tick, else None."""
        jobs = self.logic.jobs
        job = jobs.job
        if job is None:
            return None
        if job.done:  # ended before this tick (e.g. a blocking wait): report it once
            jobs.forget()
            return self._ended(job)
        state = jobs.poll()
        if state.running:
            text = _("Cancelling...") if state.cancelling else stageText(state)
            if state.kind == "inpainting":
                self.inpaintStatus, self.inpaintProgress = text, int(round(1000 * state.fraction))
            else:
                self.status, self.progress = text, int(round(1000 * state.fraction))
                if state.stage == "adding the result" and not self._announced:
                    self._announced = True
                    if self._outputNode is not None and self.onBeforeResult is not None:
                        self.onBeforeResult(self._outputNode)
            return None
        jobs.forget()
        return self._ended(job)

    def _ended(self, job):
        state = job.state
        error = job.error
        if state.status == "done":
            outcome = job.outcome()
            if job.kind == "propagation":
                self._propagationDone(outcome)
            else:
                self.inpaintProgress = 1000
                self.inpaintStatus = _("Done in {seconds:.1f} s: '{name}'.").format(seconds=state.seconds,
                                                                                  name=outcome.GetName())
            return JobEnd(job.kind, "done", outcome, "", False)
        if state.status == "cancelled":
            message = (_("Cancelled; the scene (and the previous result) is unchanged.") if job.kind == "propagation"
                       else _("Cancelled; the scene is unchanged."))
            dialog = False
        else:
            message = str(error) if isinstance(error, BrainDiffSegError) else state.message
            dialog = True
        if job.kind == "propagation":
            self.status, self.progress = message, 0
        else:
            self.inpaintStatus, self.inpaintProgress = message, 0
        return JobEnd(job.kind, state.status, None, message, dialog)

    def _propagationDone(self, outputNode) -> None:
        logic = self.logic
        result = logic.lastResult
        seconds = result.timings.get("total", sum(result.timings.values())) if result.timings else 0.0
        messages = " ".join(logic.lastMessages)
        self.progress = 1000
        self.status = (_("Done in {seconds:.1f} s on {device} ({engine}): '{name}' (feature cache {mb:.0f} MB). ")
                       .format(seconds=seconds, device=result.device, engine=logic.engine.name,
                               name=outputNode.GetName(), mb=logic.featureCacheBytes() / 1024 ** 2) + messages).strip()
        z, worst = logic.suggestions(result)  # ranked before the scene changed (a step of its own)
        self.nextSlice = (z, self._reference) if z is not None else None
        self.leastCertain = ", ".join(f"{z} ({score:.2f})" for z, score in worst) or _("none")

    def clear(self) -> None:
        """Forget what the last result suggested (scene closed)."""
        self.nextSlice, self.leastCertain = None, ""

    # ------------------------------------------------------------------ what is shown

    def view(self, node) -> PanelView:
        jobs = self.logic.jobs
        state = jobs.job.state if jobs.running else None  # a snapshot: showing never advances the job
        propagating = state is not None and state.kind == "propagation"
        inpainting = state is not None and state.kind == "inpainting"
        ready = self.readyToPropagate(node)
        inpaintReady = self.readyToInpaint(node)
        if state is None:  # (while a job runs: what the running propagation uses; no reading of segments per tick)
            chosen = node is not None and node.GetNodeReference("Segmentation") is not None
            self._annotation = self.annotationText(node) if chosen else (None, "")
        seeds = ready and self._annotation[0] == "seeds"
        z = self.nextSlice[0] if self.nextSlice is not None else None
        return PanelView(
            running=state is not None,
            propagateText=_("Cancel") if propagating else _("Propagate"),
            propagateEnabled=propagating or (ready and not inpainting),
            propagateToolTip=(_("Stop the propagation; the scene is left as it was.") if propagating else
                              _("Wait for the inpainting to finish.") if inpainting else
                              _("Segment the whole volume from the painted strokes.") if seeds else
                              _("Segment every axial slice from the painted ones.") if ready else
                              _("Select at least one input volume and the painted segmentation.")),
            status=self.status, progress=self.progress,
            settingsEnabled=not propagating,
            paintNextEnabled=not propagating and z is not None,
            paintNextText=_("Paint this slice next: {z}").format(z="" if z is None else z),
            leastCertain=self.leastCertain,
            inpaintText=_("Cancel") if inpainting else _("Inpaint"),
            inpaintEnabled=inpainting or (inpaintReady and not propagating),
            inpaintToolTip=(_("Stop the inpainting; the scene is left as it was.") if inpainting else
                            _("Wait for the propagation to finish.") if propagating else
                            _("Synthesise healthy tissue inside the chosen segments (no segment chosen: the visible "
                              "ones) into a new volume.") if inpaintReady else
                            _("Select the T1 volume and the segmentation of the region to inpaint.")),
            inpaintStatus=self.inpaintStatus, inpaintProgress=self.inpaintProgress,
            inpaintSettingsEnabled=not inpainting,
            annotationText=self._annotation[1],
            nextPollMs=state.next_poll_ms if state is not None else 100)


def startError(exc: Exception) -> str:
    """The message of a start refused with bad input (shown in a dialog)."""
    return str(exc) if isinstance(exc, BrainDiffSegError) else f"{type(exc).__name__}: {exc}"

