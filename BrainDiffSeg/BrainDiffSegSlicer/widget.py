"""BrainDiffSegWidget: the module panel (Qt; used only inside the Slicer application). Bindings only.

What the panel does and shows lives in `panel.PanelModel` (Qt-free, tested); the option widgets are bound to the
parameter node by `bindings` (choices and bounds from the option fields); settings live in the module's parameter
node (saved with the scene), where the engine runs in the application's settings (never in a scene). One Qt timer
polls the Logic's job controller; its interval follows the controller's `next_poll_ms` (0 while bytes move, so the
GUI handles its events between slices of work; 100 ms while the engine computes). The engine never runs in Slicer's
process: a private local engine service (Slicer's own Python) or a remote server does the work.

qt / ctk are imported inside the methods, so the file also imports under slicer-core.

The Annotation combo (Automatic, Complete slices, Seeds) is stored in the parameter AnnotationMode; the label under
it says which mode the next Propagate uses and why (`PanelView.annotationText`), refreshed when the painted
segmentation's segments change (painting the Background segment switches Automatic to seeds).

Length: the Qt side of one panel (signals, parameter node <-> widgets, the engine settings, showing a result and
the inpainting section's inputs); its behaviour is in `panel`, its option bindings in `bindings`.
"""
from __future__ import annotations

import logging

import vtk

import slicer
import slicer.util

from BrainDiffSegLib.errors import BrainDiffSegError
from BrainDiffSegLib.resources import resources_dir

from . import bindings, install, parameters, segments
from .compat import ScriptedLoadableModuleWidget
from .compat import tr as _
from .logic import BrainDiffSegLogic
from .panel import EngineSettings, PanelModel, startError

log = logging.getLogger(__name__)
SEGMENT_EVENTS = ("SegmentAdded", "SegmentRemoved", "SegmentModified", "SourceRepresentationModified")
SETTINGS = "BrainDiffSeg/"  # application settings: Engine, ServerUrl, ServerCaFile (the token is kept in memory)
ENGINE_CHOICES = (("local", "This computer (a separate process)"), ("remote", "A server (GPU)"))


class BrainDiffSegWidget(ScriptedLoadableModuleWidget, slicer.util.VTKObservationMixin):
    """The panel (see the module docstring)."""

    ROLE_SELECTORS = {"t1": "t1Selector", "t1ce": "t1ceSelector", "t2": "t2Selector", "flair": "flairSelector"}
    SEGMENT_EDITOR_NODE_TAG = "BrainDiffSeg"

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        slicer.util.VTKObservationMixin.__init__(self)
        self.logic = self.model = self.ui = None
        self._parameterNode = None
        self._updatingGUI = False
        self._timer = None
        self._optionWidgets = {}
        self._observedSegmentation = None
        self._annotationTimer = None

    # ------------------------------------------------------------------ set-up

    def setup(self):
        import ctk
        import qt

        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(str(resources_dir() / "UI" / "BrainDiffSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = BrainDiffSegLogic()
        self.model = PanelModel(self.logic)
        self.model.onBeforeResult = self._saveUndoStateOf
        self._timer = qt.QTimer()
        self._timer.setSingleShot(True)
        self._timer.connect("timeout()", self.onTick)
        self._annotationTimer = qt.QTimer()  # painting: the annotation mode is shown again once the stroke is in
        self._annotationTimer.setSingleShot(True)
        self._annotationTimer.setInterval(200)
        self._annotationTimer.connect("timeout()", self.onSegmentsChanged)
        slicer.app.connect("aboutToQuit()", self.logic.stopEngine)  # the local service stops with Slicer

        self._optionWidgets = {name: getattr(self.ui, name) for name in bindings.OPTION_WIDGETS}
        for name, widget in self._optionWidgets.items():
            bindings.setUp(name, widget)
        self.ui.checkpointPathLineEdit.filters = ctk.ctkPathLineEdit.Dirs
        for name, widget in self._optionWidgets.items():
            signal = {"ComboBox": "currentIndexChanged(int)", "SpinBox": "valueChanged(int)",
                      "PathLineEdit": "currentPathChanged(QString)", "LineEdit": "editingFinished()"}
            widget.connect(signal[bindings.kind(name)], self.updateParameterNodeFromGUI)
        for selector in [*self.ROLE_SELECTORS.values(), "multiComponentSelector", "segmentationSelector",
                         "inpaintVolumeSelector", "inpaintSegmentsSelector"]:
            getattr(self.ui, selector).connect("currentNodeChanged(vtkMRMLNode*)", self.updateParameterNodeFromGUI)
        self.ui.componentRolesLineEdit.connect("editingFinished()", self.updateParameterNodeFromGUI)
        self.ui.annotationModeComboBox.clear()
        for value, label in parameters.annotationChoices():
            self.ui.annotationModeComboBox.addItem(_(label), value)
        self.ui.annotationModeComboBox.connect("currentIndexChanged(int)", self.updateParameterNodeFromGUI)
        for box in ("updateResultCheckBox", "uncertaintyCheckBox"):
            getattr(self.ui, box).connect("toggled(bool)", self.updateParameterNodeFromGUI)
        self.ui.inpaintSegmentsSelector.connect("segmentSelectionChanged(QStringList)",
                                                self.updateParameterNodeFromGUI)
        self.ui.inpaintStepsSpinBox.connect("valueChanged(int)", self.updateParameterNodeFromGUI)
        self.ui.showUncertaintyCheckBox.connect("toggled(bool)", self.onShowUncertainty)
        self.ui.editResultCheckBox.connect("toggled(bool)", lambda on: self._parameterNode and self._updateSegmentEditor())
        self.ui.paintNextButton.connect("clicked(bool)", self.onPaintNext)
        self.ui.propagateButton.connect("clicked(bool)", self.onPropagateButton)
        self.ui.inpaintButton.connect("clicked(bool)", self.onInpaintButton)
        self.ui.addTumourSegmentsButton.connect("clicked(bool)", self.onAddTumourSegments)
        self.ui.restoreDefaultsButton.connect("clicked(bool)", self.onRestoreDefaults)
        self._setUpEngineSettings()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.onNodeAdded)
        self.initializeParameterNode()

    def _setUpEngineSettings(self):
        import qt

        settings = qt.QSettings()
        combo = self.ui.engineComboBox
        combo.clear()
        for value, label in ENGINE_CHOICES:
            combo.addItem(_(label), value)
        modes = [value for value, label in ENGINE_CHOICES]
        mode = settings.value(SETTINGS + "Engine", "local")
        combo.setCurrentIndex(modes.index(mode) if mode in modes else 0)
        self.ui.serverUrlLineEdit.text = settings.value(SETTINGS + "ServerUrl", "")
        self.ui.serverCaPathLineEdit.currentPath = settings.value(SETTINGS + "ServerCaFile", "")
        self.ui.serverTokenLineEdit.echoMode = qt.QLineEdit.Password
        combo.connect("currentIndexChanged(int)", self.onEngineSettingsChanged)
        for edit in ("serverUrlLineEdit", "serverTokenLineEdit"):
            getattr(self.ui, edit).connect("editingFinished()", self.onEngineSettingsChanged)
        self.ui.serverCaPathLineEdit.connect("currentPathChanged(QString)", self.onEngineSettingsChanged)
        self.onEngineSettingsChanged()

    def engineSettings(self) -> EngineSettings:
        mode = self.ui.engineComboBox.itemData(max(self.ui.engineComboBox.currentIndex, 0))
        return EngineSettings(mode, self.ui.serverUrlLineEdit.text.strip(), self.ui.serverTokenLineEdit.text.strip(),
                              self.ui.serverCaPathLineEdit.currentPath.strip())

    def onEngineSettingsChanged(self, *args):
        import qt

        chosen = self.engineSettings()
        settings = qt.QSettings()
        settings.setValue(SETTINGS + "Engine", chosen.mode)
        settings.setValue(SETTINGS + "ServerUrl", chosen.url)
        settings.setValue(SETTINGS + "ServerCaFile", chosen.cafile)
        remote = chosen.mode == "remote"
        for name in ("serverUrlLineEdit", "serverTokenLineEdit", "serverCaPathLineEdit"):
            getattr(self.ui, name).enabled = remote

    def cleanup(self):
        self.logic.stopEngine()
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
        if self.logic.jobs.running:  # its result belongs to the closing scene: dropped, never added
            self.logic.jobs.cancel(discard=True)
            self.logic.jobs.job.wait(30)
            self.model.tick()
        self.logic.clearCache()  # the features and written labels belong to the closed scene's volumes
        self.model.clear()
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
        if node is None or self.logic.running:
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
        if node is None:
            self._observeSegmentation(None)
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
            self._showAnnotationChoice(node)
            bindings.updateWidgets(node, self._optionWidgets)
            self.ui.updateResultCheckBox.checked = parameters.flag(node, "UpdateResult")
            self.ui.uncertaintyCheckBox.checked = parameters.flag(node, "CreateUncertainty")
            self.ui.showUncertaintyCheckBox.checked = parameters.flag(node, "ShowUncertainty")
            self._updateInpaintingGUI(node)
            self._updateSegmentEditor()
            self._apply(self.model.view(node))
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
        combo = self.ui.annotationModeComboBox
        node.SetParameter("AnnotationMode", combo.itemData(max(combo.currentIndex, 0)))
        bindings.updateParameters(node, self._optionWidgets)
        node.SetParameter("UpdateResult", "true" if self.ui.updateResultCheckBox.checked else "false")
        node.SetParameter("CreateUncertainty", "true" if self.ui.uncertaintyCheckBox.checked else "false")
        node.SetParameter("ShowUncertainty", "true" if self.ui.showUncertaintyCheckBox.checked else "false")
        node.SetNodeReferenceID("InpaintVolume", self.ui.inpaintVolumeSelector.currentNodeID)
        node.SetNodeReferenceID("InpaintSegmentation", self.ui.inpaintSegmentsSelector.currentNodeID())
        node.SetParameter("InpaintSegments", ",".join(self._chosenSegmentIds()))
        node.SetParameter("InpaintSteps", str(self.ui.inpaintStepsSpinBox.value))
        node.EndModify(wasModifying)

    def _showAnnotationChoice(self, node):
        combo = self.ui.annotationModeComboBox
        values = [combo.itemData(i) for i in range(combo.count)]
        try:
            choice = parameters.annotationChoice(node)
        except BrainDiffSegError:
            choice = parameters.AUTO  # (the label under the combo says what is wrong with the stored one)
        combo.setCurrentIndex(values.index(choice) if choice in values else 0)

    def _observeSegmentation(self, segmentationNode):
        """Watch the painted segmentation's segments (their voxels decide the Automatic annotation mode)."""
        if segmentationNode is self._observedSegmentation:
            return
        events = [getattr(slicer.vtkSegmentation, name) for name in SEGMENT_EVENTS]
        if self._observedSegmentation is not None:
            for event in events:
                self.removeObserver(self._observedSegmentation, event, self.onSegmentsModified)
        if segmentationNode is not None:
            for event in events:
                self.addObserver(segmentationNode, event, self.onSegmentsModified)
        self._observedSegmentation = segmentationNode

    def onSegmentsModified(self, caller=None, event=None):
        self._annotationTimer.start()  # once per burst of events (a stroke, several segments added)

    def onSegmentsChanged(self):
        if self._parameterNode is not None:  # (while a job runs the view keeps the running job's mode)
            self.ui.annotationModeLabel.text = self.model.view(self._parameterNode).annotationText

    def _updateSegmentEditor(self):
        editor = self.ui.segmentEditorWidget
        segmentationNode = self._parameterNode.GetNodeReference("Segmentation")
        self._observeSegmentation(segmentationNode)
        result = self.logic.previousResultOf(segmentationNode) if self.ui.editResultCheckBox.checked else None
        target = result or segmentationNode
        if editor.segmentationNode() is not target:  # switching clears the editor's undo history
            editor.setSegmentationNode(target)
        volumes = self.model.inputVolumes(self._parameterNode)
        source = volumes if hasattr(volumes, "IsA") else next(
            (volumes[r] for r in ("flair", "t1ce", "t2", "t1") if r in volumes), None)
        if source is not None and editor.sourceVolumeNode() is None:
            editor.setSourceVolumeNode(source)
        self.ui.addTumourSegmentsButton.enabled = segmentationNode is not None

    def _apply(self, view):
        """Show a `panel.PanelView`."""
        ui = self.ui
        ui.propagateButton.text, ui.propagateButton.enabled = view.propagateText, view.propagateEnabled
        ui.propagateButton.toolTip = view.propagateToolTip
        ui.statusLabel.text, ui.progressBar.value = view.status, view.progress
        for name in ("inputsCollapsibleButton", "advancedCollapsibleButton", "restoreDefaultsButton",
                     "editResultCheckBox", "annotationModeComboBox"):
            getattr(ui, name).enabled = view.settingsEnabled
        ui.annotationModeLabel.text = view.annotationText
        painted = self._parameterNode.GetNodeReference("Segmentation") if self._parameterNode else None
        editor = ui.segmentEditorWidget  # no corrections into the result while an update runs
        editor.readOnly = not view.settingsEnabled and editor.segmentationNode() not in (None, painted)
        ui.paintNextButton.enabled, ui.paintNextButton.text = view.paintNextEnabled, view.paintNextText
        ui.leastCertainLabel.text = view.leastCertain
        ui.inpaintButton.text, ui.inpaintButton.enabled = view.inpaintText, view.inpaintEnabled
        ui.inpaintButton.toolTip = view.inpaintToolTip
        ui.inpaintStatusLabel.text, ui.inpaintProgressBar.value = view.inpaintStatus, view.inpaintProgress
        for name in ("inpaintVolumeSelector", "inpaintSegmentsSelector", "inpaintStepsSpinBox"):
            getattr(ui, name).enabled = view.inpaintSettingsEnabled

    # ------------------------------------------------------------------ jobs

    def onTick(self):
        end = self.model.tick()
        view = self.model.view(self._parameterNode)
        self._apply(view)
        if end is not None:
            self._onJobEnd(end)
        if view.running:
            self._timer.start(view.nextPollMs)

    def _onJobEnd(self, end):
        if end.status == "done" and end.kind == "propagation":
            self._showResult(end.outcome)
        elif end.status == "done":
            slicer.util.setSliceViewerLayers(background=end.outcome)  # the segments stay shown on top
        elif end.dialog:
            slicer.util.errorDisplay(end.message, windowTitle=_("BrainDiffSeg"))

    def _start(self, start):
        """Start a job (`start(parameterNode)` of the model) after the packages are there; bad input: a dialog."""
        if not self.ensureEngineInstalled():
            return
        self.updateParameterNodeFromGUI()
        try:
            self.model.setEngineSettings(self.engineSettings())
            start(self._parameterNode)
        except Exception as exc:  # noqa: BLE001 - bad input or an unusable engine setting: one sentence, no job
            if not isinstance(exc, BrainDiffSegError):
                log.exception("Could not start")
            slicer.util.errorDisplay(startError(exc), windowTitle=_("BrainDiffSeg"))
            return
        self.ui.segmentEditorWidget.setActiveEffect(None)  # no painting into the inputs while they are read
        self.onTick()

    def onPropagateButton(self):
        self._startOrCancel(self.model.startPropagation)

    def onInpaintButton(self):
        self._startOrCancel(self.model.startInpainting)

    def _startOrCancel(self, start):
        """The job's button: Cancel while a job runs (only its own button is enabled then), else start."""
        if self.logic.jobs.running:
            self.model.cancel()
            self._apply(self.model.view(self._parameterNode))
        else:
            self._start(start)

    def _saveUndoStateOf(self, outputNode):
        """Before a result is written into the edited result node: Undo in the Segment Editor restores it."""
        if self.ui.segmentEditorWidget.segmentationNode() is outputNode:
            self.ui.segmentEditorWidget.saveStateForUndo()

    def ensureEngineInstalled(self) -> bool:
        """Install what this computer's part of the engine needs after the user agrees (a remote server needs the
        client only); True when a job can start."""
        remote = self.engineSettings().mode == "remote"
        missing = install.missingPackages(remote)
        if not missing:
            return True
        if not slicer.util.confirmOkCancelDisplay(
                _("BrainDiffSeg needs these Python packages, which are not installed: ") + ", ".join(missing)
                + (_(".\n\nInstall them now?") if remote else
                   _(".\n\nInstall them now? This downloads about 1-3 GB (PyTorch) and takes several minutes."))):
            return False
        try:
            with slicer.util.tryWithErrorDisplay(_("Installing the Python packages failed."), waitCursor=True):
                install.installEngine(missing)
        except install.InstallDeclined as exc:
            slicer.util.errorDisplay(str(exc), windowTitle=_("BrainDiffSeg"))
            return False
        missing = install.missingPackages(remote)
        if missing:
            slicer.util.errorDisplay(_("Still missing after installation: ") + ", ".join(missing))
        return not missing

    # ------------------------------------------------------------------ results and other actions

    def _showResult(self, outputNode):
        self._updateSegmentEditor()  # a new result node becomes the edited one with "Paint corrections into ..."
        displayNode = outputNode.GetDisplayNode()
        if displayNode is not None:
            displayNode.SetVisibility(True)
            displayNode.SetOpacity2DFill(0.35)
        if self.ui.showUncertaintyCheckBox.checked:
            self.onShowUncertainty(True)
        node = self._parameterNode  # inpainting then defaults to the result instead of the painted slices
        if node.GetNodeReference("InpaintSegmentation") in (None, node.GetNodeReference("Segmentation")):
            node.SetNodeReferenceID("InpaintSegmentation", outputNode.GetID())

    def onRestoreDefaults(self):
        parameters.setDefaultParameters(self._parameterNode, overwrite=True)

    def onAddTumourSegments(self):
        segmentationNode = self._parameterNode.GetNodeReference("Segmentation")
        if segmentationNode is not None:
            added = self.logic.addTumourSegments(segmentationNode)
            self.ui.statusLabel.text = (_("Added: ") + ", ".join(
                segmentationNode.GetSegmentation().GetSegment(s).GetName() for s in added)) if added else \
                _("The tumour and Background segments exist already.")

    def onShowUncertainty(self, show):
        self.updateParameterNodeFromGUI()
        segmentationNode = self._parameterNode.GetNodeReference("Segmentation")
        uncertainty = self.logic.uncertaintyNodeOf(self.logic.previousResultOf(segmentationNode))
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

    def onPaintNext(self):
        """Centre the Red slice view on the suggested axial slice."""
        if self.model.nextSlice is None:
            return
        z, referenceNode = self.model.nextSlice
        sliceNode = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode()
        self.logic.jumpToAxialSlice(sliceNode, referenceNode, z)

    # ------------------------------------------------------------------ healthy-tissue inpainting inputs

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
