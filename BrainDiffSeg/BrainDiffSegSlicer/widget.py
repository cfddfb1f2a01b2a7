"""BrainDiffSegWidget: the module panel (Qt; used only inside the Slicer application).

Inputs, the embedded Segment Editor (the painted segmentation, or with "Paint corrections into the result" the result:
before updating it the panel saves an editor undo state, so Ctrl+Z there takes the update back), Propagate / Cancel
with progress, "Paint this slice next", "Inpaint healthy tissue" (a T1 and segments in, a new volume out, in the
background like propagation), advanced settings. All computation goes
through `BrainDiffSegLogic` (on the application's scene); settings live in the module's parameter node (`parameters`,
saved with the scene). qt / ctk are imported inside the methods, so the file also imports under slicer-core.

Length: one panel, one class; the inpainting section's handlers share the parameter node, the poll timer and the
one-job-at-a-time state with propagation (and Qt stays in this file only, by the architecture rules).
"""
from __future__ import annotations

import logging

import vtk

import slicer
import slicer.util

from BrainDiffSegLib.errors import BrainDiffSegError, CancelledError
from BrainDiffSegLib.resources import resources_dir

from . import install, parameters, segments
from .compat import ScriptedLoadableModuleWidget
from .compat import tr as _
from .logic import BrainDiffSegLogic

log = logging.getLogger(__name__)


class BrainDiffSegWidget(ScriptedLoadableModuleWidget, slicer.util.VTKObservationMixin):
    """The panel: inputs, the embedded Segment Editor, Propagate / Cancel with progress, healthy-tissue inpainting,
    advanced settings.

    All computation goes through `BrainDiffSegLogic`. Propagation and inpainting run in a background thread
    (`startPropagation`, `startInpainting`; one at a time); Qt timers poll them, so the GUI never freezes.
    Settings live in the module's parameter node (saved with the scene)."""

    ROLE_SELECTORS = {"t1": "t1Selector", "t1ce": "t1ceSelector", "t2": "t2Selector", "flair": "flairSelector"}
    DEVICES = ("auto", "cuda", "cpu")  # deviceComboBox items: auto, GPU, CPU
    METHODS = ("diffusion", "raw")  # methodComboBox items
    SEGMENT_EDITOR_NODE_TAG = "BrainDiffSeg"
    POLL_MS = 100

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        slicer.util.VTKObservationMixin.__init__(self)
        self.logic = None
        self.ui = None
        self._parameterNode = None
        self._updatingGUI = False
        self._run = None  # the running PropagationRun
        self._inpaintRun = None  # the running inpainting.InpaintingRun (one job at a time: never both)
        self._timer = None
        self._nextSlice = None  # (axial index, reference volume) suggested by the last result

    # ------------------------------------------------------------------ set-up

    def setup(self):
        import qt

        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(str(resources_dir() / "UI" / "BrainDiffSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = BrainDiffSegLogic()

        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_MS)
        self._timer.connect("timeout()", self.onPollRun)
        self._inpaintTimer = qt.QTimer()
        self._inpaintTimer.setInterval(self.POLL_MS)
        self._inpaintTimer.connect("timeout()", self.onPollInpainting)

        for selector in [*self.ROLE_SELECTORS.values(), "multiComponentSelector", "segmentationSelector"]:
            getattr(self.ui, selector).connect("currentNodeChanged(vtkMRMLNode*)", self.updateParameterNodeFromGUI)
        for edit in ("componentRolesLineEdit", "blocksLineEdit", "timestepsLineEdit"):
            getattr(self.ui, edit).connect("editingFinished()", self.updateParameterNodeFromGUI)
        for box in ("updateResultCheckBox", "uncertaintyCheckBox"):
            getattr(self.ui, box).connect("toggled(bool)", self.updateParameterNodeFromGUI)
        for spin in ("ensembleSpinBox", "batchSizeSpinBox"):
            getattr(self.ui, spin).connect("valueChanged(int)", self.updateParameterNodeFromGUI)
        for combo in ("deviceComboBox", "methodComboBox"):
            getattr(self.ui, combo).connect("currentIndexChanged(int)", self.updateParameterNodeFromGUI)
        self.ui.checkpointPathLineEdit.connect("currentPathChanged(QString)", self.updateParameterNodeFromGUI)
        import ctk

        self.ui.checkpointPathLineEdit.filters = ctk.ctkPathLineEdit.Dirs
        self.ui.showUncertaintyCheckBox.connect("toggled(bool)", self.onShowUncertainty)
        self.ui.editResultCheckBox.connect("toggled(bool)", lambda on: self._parameterNode and self._updateSegmentEditor())
        self.ui.paintNextButton.connect("clicked(bool)", self.onPaintNext)
        self.ui.propagateButton.connect("clicked(bool)", self.onPropagateButton)
        self.ui.addTumourSegmentsButton.connect("clicked(bool)", self.onAddTumourSegments)
        self.ui.restoreDefaultsButton.connect("clicked(bool)", self.onRestoreDefaults)
        self.ui.inpaintVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateParameterNodeFromGUI)
        self.ui.inpaintSegmentsSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateParameterNodeFromGUI)
        self.ui.inpaintSegmentsSelector.connect("segmentSelectionChanged(QStringList)",
                                                self.updateParameterNodeFromGUI)
        self.ui.inpaintStepsSpinBox.connect("valueChanged(int)", self.updateParameterNodeFromGUI)
        self.ui.inpaintButton.connect("clicked(bool)", self.onInpaintButton)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.onNodeAdded)
        self.initializeParameterNode()

    def cleanup(self):
        self.cancelRun(wait=True)
        self.cancelInpainting(wait=True)
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()
        editor = self.ui.segmentEditorWidget
        editor.installKeyboardShortcuts()
        editor.setupViewObservations()
        editor.updateWidgetFromMRML()

    def exit(self):
        editor = self.ui.segmentEditorWidget
        editor.setActiveEffect(None)
        editor.uninstallKeyboardShortcuts()
        editor.removeViewObservations()
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event):
        self.cancelRun(wait=True)
        self.cancelInpainting(wait=True)
        self.logic.clearCache()  # the features and written labels belong to the closed scene's volumes
        self._nextSlice = None
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def onNodeAdded(self, caller, event):
        """A volume loaded after entering the module fills the empty input its name suggests."""
        import qt

        qt.QTimer.singleShot(0, self.fillInputsFromNames)

    # ------------------------------------------------------------------ parameter node <-> GUI

    def initializeParameterNode(self):
        node = self.logic.getParameterNode()
        parameters.setDefaultParameters(node)
        editorNode = slicer.mrmlScene.GetSingletonNode(self.SEGMENT_EDITOR_NODE_TAG, "vtkMRMLSegmentEditorNode")
        if editorNode is None:
            editorNode = slicer.mrmlScene.CreateNodeByClass("vtkMRMLSegmentEditorNode")
            editorNode.UnRegister(None)
            editorNode.SetSingletonTag(self.SEGMENT_EDITOR_NODE_TAG)
            editorNode = slicer.mrmlScene.AddNode(editorNode)
        self.ui.segmentEditorWidget.setMRMLSegmentEditorNode(editorNode)
        self.setParameterNode(node)
        self.fillInputsFromNames()

    def fillInputsFromNames(self):
        """Empty inputs get the loaded volumes whose names name their sequence (e.g. '..._flair')."""
        node = self._parameterNode
        if node is None or self._run is not None or self._inpaintRun is not None:
            return
        volumes = [slicer.mrmlScene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
                   for i in range(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))]
        wasModifying = node.StartModify()
        for role, volume in segments.guessInputs(volumes).items():
            if node.GetNodeReference(f"Input_{role}") is None:
                node.SetNodeReferenceID(f"Input_{role}", volume.GetID())
        if node.GetNodeReference("InpaintVolume") is None and node.GetNodeReference("Input_t1") is not None:
            node.SetNodeReferenceID("InpaintVolume", node.GetNodeReference("Input_t1").GetID())
        node.EndModify(wasModifying)

    def setParameterNode(self, node):
        if self._parameterNode is not None:
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode = node
        if node is not None:
            self.addObserver(node, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self.updateGUIFromParameterNode()

    def updateGUIFromParameterNode(self, caller=None, event=None):
        node = self._parameterNode
        if node is None or self.ui is None or self._updatingGUI:
            return
        self._updatingGUI = True
        try:
            for role, selector in self.ROLE_SELECTORS.items():
                getattr(self.ui, selector).setCurrentNode(node.GetNodeReference(f"Input_{role}"))
            self.ui.multiComponentSelector.setCurrentNode(node.GetNodeReference("MultiComponent"))
            self.ui.segmentationSelector.setCurrentNode(node.GetNodeReference("Segmentation"))
            self.ui.componentRolesLineEdit.text = node.GetParameter("ComponentRoles")
            self.ui.blocksLineEdit.text = node.GetParameter("Blocks")
            self.ui.timestepsLineEdit.text = node.GetParameter("Timesteps")
            self.ui.checkpointPathLineEdit.currentPath = node.GetParameter("Checkpoint")
            self.ui.ensembleSpinBox.value = int(node.GetParameter("Ensemble") or 1)
            self.ui.batchSizeSpinBox.value = int(node.GetParameter("BatchSize") or 1)
            device = node.GetParameter("Device")
            self.ui.deviceComboBox.currentIndex = self.DEVICES.index(device) if device in self.DEVICES else 0
            method = node.GetParameter("Method")
            self.ui.methodComboBox.currentIndex = self.METHODS.index(method) if method in self.METHODS else 0
            self.ui.updateResultCheckBox.checked = parameters.flag(node, "UpdateResult")
            self.ui.uncertaintyCheckBox.checked = parameters.flag(node, "CreateUncertainty")
            self.ui.showUncertaintyCheckBox.checked = parameters.flag(node, "ShowUncertainty")
            self._updateInpaintingGUI(node)
            self._updateSegmentEditor()
            self._updateButtons()
        finally:
            self._updatingGUI = False

    def updateParameterNodeFromGUI(self, *args):
        node = self._parameterNode
        if node is None or self._updatingGUI:
            return
        wasModifying = node.StartModify()
        for role, selector in self.ROLE_SELECTORS.items():
            node.SetNodeReferenceID(f"Input_{role}", getattr(self.ui, selector).currentNodeID)
        node.SetNodeReferenceID("MultiComponent", self.ui.multiComponentSelector.currentNodeID)
        node.SetNodeReferenceID("Segmentation", self.ui.segmentationSelector.currentNodeID)
        node.SetParameter("ComponentRoles", self.ui.componentRolesLineEdit.text)
        node.SetParameter("Blocks", self.ui.blocksLineEdit.text)
        node.SetParameter("Timesteps", self.ui.timestepsLineEdit.text)
        node.SetParameter("Checkpoint", self.ui.checkpointPathLineEdit.currentPath)
        node.SetParameter("Ensemble", str(self.ui.ensembleSpinBox.value))
        node.SetParameter("BatchSize", str(self.ui.batchSizeSpinBox.value))
        node.SetParameter("Device", self.DEVICES[max(self.ui.deviceComboBox.currentIndex, 0)])
        node.SetParameter("Method", self.METHODS[max(self.ui.methodComboBox.currentIndex, 0)])
        node.SetParameter("UpdateResult", "true" if self.ui.updateResultCheckBox.checked else "false")
        node.SetParameter("CreateUncertainty", "true" if self.ui.uncertaintyCheckBox.checked else "false")
        node.SetParameter("ShowUncertainty", "true" if self.ui.showUncertaintyCheckBox.checked else "false")
        node.SetNodeReferenceID("InpaintVolume", self.ui.inpaintVolumeSelector.currentNodeID)
        node.SetNodeReferenceID("InpaintSegmentation", self.ui.inpaintSegmentsSelector.currentNodeID())
        node.SetParameter("InpaintSegments", ",".join(self._chosenSegmentIds()))
        node.SetParameter("InpaintSteps", str(self.ui.inpaintStepsSpinBox.value))
        node.EndModify(wasModifying)

    def _inputVolumes(self):
        """The volumes argument of the Logic: the multi-component volume if one is selected, else role -> node."""
        node = self._parameterNode
        multi = node.GetNodeReference("MultiComponent")
        if multi is not None:
            return multi
        return {role: node.GetNodeReference(f"Input_{role}") for role in self.ROLE_SELECTORS
                if node.GetNodeReference(f"Input_{role}") is not None}

    def _updateSegmentEditor(self):
        editor = self.ui.segmentEditorWidget
        segmentationNode = self._parameterNode.GetNodeReference("Segmentation")
        result = self.logic.previousResultOf(segmentationNode) if self.ui.editResultCheckBox.checked else None
        target = result or segmentationNode
        if editor.segmentationNode() is not target:  # switching clears the editor's undo history
            editor.setSegmentationNode(target)
        volumes = self._inputVolumes()
        source = volumes if hasattr(volumes, "IsA") else next(
            (volumes[r] for r in ("flair", "t1ce", "t2", "t1") if r in volumes), None)
        if source is not None and editor.sourceVolumeNode() is None:
            editor.setSourceVolumeNode(source)
        self.ui.addTumourSegmentsButton.enabled = segmentationNode is not None

    def _updateButtons(self):
        running = self._run is not None
        inpainting = self._inpaintRun is not None
        node = self._parameterNode
        ready = node is not None and node.GetNodeReference("Segmentation") is not None and bool(self._inputVolumes())
        self.ui.propagateButton.text = _("Cancel") if running else _("Propagate")
        self.ui.propagateButton.enabled = running or (ready and not inpainting)
        self.ui.propagateButton.toolTip = (_("Stop the propagation; the scene is left as it was.") if running else
                                           _("Segment every axial slice from the painted ones.") if ready else
                                           _("Select at least one input volume and the painted segmentation."))
        for name in ("inputsCollapsibleButton", "advancedCollapsibleButton", "restoreDefaultsButton"):
            getattr(self.ui, name).enabled = not running
        self.ui.editResultCheckBox.enabled = not running
        painted = node.GetNodeReference("Segmentation") if node is not None else None
        editor = self.ui.segmentEditorWidget  # no corrections into the result while an update runs
        editor.readOnly = running and editor.segmentationNode() not in (None, painted)
        self.ui.paintNextButton.enabled = not running and self._nextSlice is not None
        self._updateInpaintButton()

    # ------------------------------------------------------------------ actions

    def onRestoreDefaults(self):
        parameters.setDefaultParameters(self._parameterNode, overwrite=True)

    def onAddTumourSegments(self):
        segmentationNode = self._parameterNode.GetNodeReference("Segmentation")
        if segmentationNode is not None:
            added = self.logic.addTumourSegments(segmentationNode)
            self.ui.statusLabel.text = (_("Added: ") + ", ".join(
                segmentationNode.GetSegmentation().GetSegment(s).GetName() for s in added)) if added else \
                _("The tumour segments exist already.")

    def onShowUncertainty(self, show):
        self.updateParameterNodeFromGUI()
        segmentationNode = self._parameterNode.GetNodeReference("Segmentation")
        result = self.logic.previousResultOf(segmentationNode)
        uncertainty = self.logic.uncertaintyNodeOf(result)
        if uncertainty is None:
            return
        if show:
            display = uncertainty.GetDisplayNode()
            if display is not None:
                display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeFileColdToHotRainbow.txt")
                display.AutoWindowLevelOff()
                display.SetWindowLevelMinMax(0.0, 1.0)
            slicer.util.setSliceViewerLayers(foreground=uncertainty, foregroundOpacity=0.4)
        else:
            slicer.util.setSliceViewerLayers(foreground=None)

    def onPropagateButton(self):
        if self._run is not None:
            self.cancelRun()
        else:
            self.startRun()

    def ensureEngineInstalled(self) -> bool:
        """Install torch and the pinned requirements after the user agrees; True when the engine can run."""
        missing = install.missingPackages()
        if not missing:
            return True
        if not slicer.util.confirmOkCancelDisplay(
                _("BrainDiffSeg needs these Python packages, which are not installed: ") + ", ".join(missing)
                + _(".\n\nInstall them now? This downloads about 1-3 GB (PyTorch) and takes several minutes.")):
            return False
        with slicer.util.tryWithErrorDisplay(_("Installing the Python packages failed."), waitCursor=True):
            install.installEngine(missing)
        missing = install.missingPackages()
        if missing:
            slicer.util.errorDisplay(_("Still missing after installation: ") + ", ".join(missing))
        return not missing

    def startRun(self):
        if not self.ensureEngineInstalled():
            return
        self.updateParameterNodeFromGUI()
        node = self._parameterNode
        segmentationNode = node.GetNodeReference("Segmentation")
        try:
            options = parameters.optionsFromParameters(node)
            outputNode = (self.logic.previousResultOf(segmentationNode)
                          if parameters.flag(node, "UpdateResult") else None)
            self._run = self.logic.startPropagation(
                self._inputVolumes(), segmentationNode, options,
                createUncertainty=parameters.flag(node, "CreateUncertainty"), outputNode=outputNode,
                componentRoles=parameters.componentRoles(node))
        except BrainDiffSegError as exc:
            slicer.util.errorDisplay(str(exc), windowTitle=_("BrainDiffSeg"))
            return
        self.ui.segmentEditorWidget.setActiveEffect(None)  # no painting into the inputs while they are read
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = _("Starting...")
        self.ui.leastCertainLabel.text = ""
        self._updateButtons()
        self._timer.start()

    def cancelRun(self, wait: bool = False):
        run = self._run
        if run is None:
            return
        run.task.cancel()
        self.ui.statusLabel.text = _("Cancelling...")
        if wait:
            run.task.wait(30)
            self.onPollRun()

    def onPollRun(self):
        run = self._run
        if run is None:
            self._timer.stop()
            return
        for stage, fraction in run.task.poll():
            self.ui.statusLabel.text = stage
            self.ui.progressBar.value = int(round(1000 * fraction))
        if not run.task.done:
            return
        self._timer.stop()
        self._run = None
        if run.task.error is None and run.job.outputNode is not None and \
                self.ui.segmentEditorWidget.segmentationNode() is run.job.outputNode:
            self.ui.segmentEditorWidget.saveStateForUndo()  # Undo in the editor restores the result before this
        try:
            outputNode = self.logic.finishPropagation(run)
        except CancelledError:
            self.ui.statusLabel.text = _("Cancelled; the scene (and the previous result) is unchanged.")
            self.ui.progressBar.value = 0
        except BrainDiffSegError as exc:
            self.ui.statusLabel.text = str(exc)
            slicer.util.errorDisplay(str(exc), windowTitle=_("BrainDiffSeg"))
        except Exception as exc:  # unexpected: keep the GUI usable and show the traceback in the log
            log.exception("Propagation failed")
            self.ui.statusLabel.text = _("Failed: ") + str(exc)
            slicer.util.errorDisplay(_("Propagation failed: ") + str(exc), windowTitle=_("BrainDiffSeg"))
        else:
            self._showResult(outputNode, run.job.referenceNode)
        finally:
            self._updateButtons()

    def _showResult(self, outputNode, referenceNode):
        result = self.logic.lastResult
        self.ui.progressBar.value = 1000
        seconds = result.timings.get("total", sum(result.timings.values())) if result.timings else 0.0
        messages = " ".join(self.logic.lastMessages)
        self.ui.statusLabel.text = (_("Done in {seconds:.1f} s on {device}: '{name}' (feature cache {mb:.0f} MB). ")
                                    .format(seconds=seconds, device=result.device, name=outputNode.GetName(),
                                            mb=self.logic.featureCacheBytes() / 1024 ** 2) + messages)
        z = self.logic.nextSliceToPaint(result)
        self._nextSlice = (z, referenceNode) if z is not None else None
        self.ui.paintNextButton.text = _("Paint this slice next: {z}").format(z="" if z is None else z)
        self._updateSegmentEditor()  # a new result node becomes the edited one with "Paint corrections into ..."
        worst = result.least_certain_slices(5)
        self.ui.leastCertainLabel.text = ", ".join(f"{z} ({score:.2f})" for z, score in worst) or _("none")
        displayNode = outputNode.GetDisplayNode()
        if displayNode is not None:
            displayNode.SetVisibility(True)
            displayNode.SetOpacity2DFill(0.35)
        if self.ui.showUncertaintyCheckBox.checked:
            self.onShowUncertainty(True)
        node = self._parameterNode  # inpainting then defaults to the result instead of the painted slices
        if node.GetNodeReference("InpaintSegmentation") in (None, node.GetNodeReference("Segmentation")):
            node.SetNodeReferenceID("InpaintSegmentation", outputNode.GetID())

    def onPaintNext(self):
        """Centre the Red slice view on the suggested axial slice."""
        if self._nextSlice is None:
            return
        z, referenceNode = self._nextSlice
        sliceNode = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode()
        self.logic.jumpToAxialSlice(sliceNode, referenceNode, z)

    # ------------------------------------------------------------------ healthy-tissue inpainting

    def _chosenSegmentIds(self) -> list[str]:
        """The segments chosen in the inpainting selector (several with multi-selection, else the current one)."""
        selector = self.ui.inpaintSegmentsSelector
        if hasattr(selector, "selectedSegmentIDs"):
            return [str(sid) for sid in selector.selectedSegmentIDs() if sid]
        current = selector.currentSegmentID()
        return [str(current)] if current else []

    def _updateInpaintingGUI(self, node):
        """The inpainting section from the parameter node; the region defaults to the newest propagated result of
        the painted segmentation (else the painted one), the segments to the visible ones (none chosen)."""
        self.ui.inpaintVolumeSelector.setCurrentNode(node.GetNodeReference("InpaintVolume"))
        segmentationNode = node.GetNodeReference("InpaintSegmentation")
        if segmentationNode is None:
            painted = node.GetNodeReference("Segmentation")
            segmentationNode = self.logic.previousResultOf(painted) or painted
        selector = self.ui.inpaintSegmentsSelector
        if selector.currentNode() is not segmentationNode:
            selector.setCurrentNode(segmentationNode)
        chosen = parameters.inpaintSegments(node) or []
        if hasattr(selector, "setSelectedSegmentIDs") and chosen != self._chosenSegmentIds():
            selector.setSelectedSegmentIDs(chosen)
        self.ui.inpaintStepsSpinBox.value = int(node.GetParameter("InpaintSteps") or 25)

    def _updateInpaintButton(self):
        inpainting = self._inpaintRun is not None
        node = self._parameterNode
        ready = (node is not None and self.ui.inpaintVolumeSelector.currentNode() is not None
                 and self.ui.inpaintSegmentsSelector.currentNode() is not None)
        button = self.ui.inpaintButton
        button.text = _("Cancel") if inpainting else _("Inpaint")
        button.enabled = inpainting or (ready and self._run is None)
        button.toolTip = (_("Stop the inpainting; the scene is left as it was.") if inpainting else
                          _("Wait for the propagation to finish.") if self._run is not None else
                          _("Synthesise healthy tissue inside the chosen segments (no segment chosen: the visible "
                            "ones) into a new volume.") if ready else
                          _("Select the T1 volume and the segmentation of the region to inpaint."))
        for name in ("inpaintVolumeSelector", "inpaintSegmentsSelector", "inpaintStepsSpinBox"):
            getattr(self.ui, name).enabled = not inpainting

    def onInpaintButton(self):
        if self._inpaintRun is not None:
            self.cancelInpainting()
        else:
            self.startInpainting()

    def startInpainting(self):
        if not self.ensureEngineInstalled():
            return
        self.updateParameterNodeFromGUI()
        node = self._parameterNode
        try:
            device = parameters.optionsFromParameters(node).device  # the Advanced section's device
            self._inpaintRun = self.logic.startInpainting(
                self.ui.inpaintVolumeSelector.currentNode(), self.ui.inpaintSegmentsSelector.currentNode(),
                segmentIds=parameters.inpaintSegments(node), steps=parameters.inpaintSteps(node), device=device)
        except BrainDiffSegError as exc:
            slicer.util.errorDisplay(str(exc), windowTitle=_("BrainDiffSeg"))
            return
        self.ui.inpaintProgressBar.value = 0
        self.ui.inpaintStatusLabel.text = _("Starting...")
        self._updateButtons()
        self._inpaintTimer.start()

    def cancelInpainting(self, wait: bool = False):
        run = self._inpaintRun
        if run is None:
            return
        run.task.cancel()
        self.ui.inpaintStatusLabel.text = _("Cancelling...")
        if wait:
            run.task.wait(30)
            self.onPollInpainting()

    def onPollInpainting(self):
        run = self._inpaintRun
        if run is None:
            self._inpaintTimer.stop()
            return
        for stage, fraction in run.task.poll():
            self.ui.inpaintStatusLabel.text = stage
            self.ui.inpaintProgressBar.value = int(round(1000 * fraction))
        if not run.task.done:
            return
        self._inpaintTimer.stop()
        self._inpaintRun = None
        try:
            outputNode = self.logic.finishInpainting(run)
        except CancelledError:
            self.ui.inpaintStatusLabel.text = _("Cancelled; the scene is unchanged.")
            self.ui.inpaintProgressBar.value = 0
        except BrainDiffSegError as exc:
            self.ui.inpaintStatusLabel.text = str(exc)
            slicer.util.errorDisplay(str(exc), windowTitle=_("BrainDiffSeg"))
        except Exception as exc:  # unexpected: keep the GUI usable and show the traceback in the log
            log.exception("Inpainting failed")
            self.ui.inpaintStatusLabel.text = _("Failed: ") + str(exc)
            slicer.util.errorDisplay(_("Inpainting failed: ") + str(exc), windowTitle=_("BrainDiffSeg"))
        else:
            self.ui.inpaintProgressBar.value = 1000
            self.ui.inpaintStatusLabel.text = _("Done in {seconds:.1f} s: '{name}'.").format(
                seconds=run.task.seconds or 0.0, name=outputNode.GetName())
            slicer.util.setSliceViewerLayers(background=outputNode)  # the segments stay shown on top
        finally:
            self._updateButtons()
