"""The module panel's behaviour, executed through its Qt-free model (`BrainDiffSegSlicer.panel.PanelModel`, which the
widget only binds to Qt) and the Logic's one job controller, on a real MRML scene with a real engine service: the
buttons, tool tips, progress text and bar in every state (idle, not ready, running, adding the result, done,
cancelled, failed), bad input refused before any job, the undo hook before an update, one seed for every front end;
also the minimum Slicer version check and the installer's rules (lower bounds, only what is missing, PyTorchUtils
with a version requirement, stopping when it declines)."""
from __future__ import annotations

import argparse
import sys
import time
import types
from dataclasses import replace

import numpy as np
import pytest

from BrainDiffSegLib.errors import InputError
from BrainDiffSegLib.options import add_arguments, options_from_arguments, preset
from service_support import start_service
from test_slicer_logic import (RAW, M, add_volumes, crop, paint, painted_truth, scene_ids,  # noqa: F401 (fixtures)
                               snapshot)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    s = start_service(tmp_path_factory.mktemp("service"))
    yield s
    s.stop()


@pytest.fixture
def panel(headless, service, crop, M):
    """A PanelModel on a scene with the crop's FLAIR and T1ce and the truth painted on 3 slices, its parameter
    node filled as the widget fills it, its engine the test service."""
    from BrainDiffSegLib.options import to_strings
    from BrainDiffSegSlicer import parameters
    from BrainDiffSegSlicer.panel import EngineSettings, PanelModel

    scene = headless.scene
    volumes = add_volumes(scene, crop, roles=("flair", "t1ce", "t1"))
    ann, zs = painted_truth(crop, M)
    painted = paint(scene, volumes["flair"], ann)
    logic = M.BrainDiffSegLogic(scene, headless.volumesLogic, headless.segmentationsLogic)
    model = PanelModel(logic)
    model.setEngineSettings(EngineSettings("remote", service.url, service.token))
    node = logic.getParameterNode()
    parameters.setDefaultParameters(node)
    for key, value in to_strings(RAW).items():
        node.SetParameter(parameters.parameterName(key), value)
    yield types.SimpleNamespace(model=model, logic=logic, node=node, scene=scene, volumes=volumes, painted=painted,
                                service_url=service.url, service_token=service.token)
    logic.stopEngine()


def tick_until_end(panel, timeout=300.0):
    views, end = [], None
    deadline = time.monotonic() + timeout
    while end is None:
        end = panel.model.tick()
        views.append(panel.model.view(panel.node))
        assert time.monotonic() < deadline, views[-1]
        if end is None:
            time.sleep(max(views[-1].nextPollMs, 1) / 1000)
    return views, end


def test_idle_and_not_ready(panel):
    model, node = panel.model, panel.node
    view = model.view(node)
    assert not view.running and view.propagateText == "Propagate" and not view.propagateEnabled
    assert view.propagateToolTip == "Select at least one input volume and the painted segmentation."
    node.SetNodeReferenceID("Input_flair", panel.volumes["flair"].GetID())
    assert not model.view(node).propagateEnabled  # still no segmentation
    node.SetNodeReferenceID("Segmentation", panel.painted.GetID())
    view = model.view(node)
    assert view.propagateEnabled and view.propagateToolTip == "Segment every axial slice from the painted ones."
    assert not view.inpaintEnabled and view.inpaintToolTip.startswith("Select the T1 volume")
    node.SetNodeReferenceID("InpaintVolume", panel.volumes["t1"].GetID())
    assert model.view(node).inpaintEnabled  # the region defaults to the painted segmentation
    assert not view.paintNextEnabled and view.status == "" and view.progress == 0


def test_a_propagation_as_the_panel_runs_it(panel):
    model, node = panel.model, panel.node
    for role in ("flair", "t1ce"):
        node.SetNodeReferenceID(f"Input_{role}", panel.volumes[role].GetID())
    node.SetNodeReferenceID("Segmentation", panel.painted.GetID())
    node.SetNodeReferenceID("InpaintVolume", panel.volumes["t1"].GetID())
    ids = scene_ids(panel.scene)
    model.startPropagation(node)
    view = model.view(node)
    assert view.running and view.propagateText == "Cancel" and view.propagateEnabled and not view.settingsEnabled
    assert view.propagateToolTip == "Stop the propagation; the scene is left as it was."
    assert not view.inpaintEnabled and view.inpaintToolTip == "Wait for the propagation to finish."
    assert view.status == "Starting..." and not view.paintNextEnabled
    with pytest.raises(InputError, match="already running"):
        model.startPropagation(node)
    views, end = tick_until_end(panel)
    texts = [v.status for v in views]
    assert any(t.startswith("Sending the volume... ") for t in texts), texts
    assert any(t.startswith("Training classifier... ") for t in texts)
    assert any(t == "Adding the result... 100 %" for t in texts)
    progress = [v.progress for v in views if v.running]
    assert progress == sorted(progress) and 0 <= progress[0] and progress[-1] == 1000
    assert end.kind == "propagation" and end.status == "done" and not end.dialog
    out = end.outcome
    assert out.GetName() == "Painted propagated" and out.GetID() not in ids
    view = views[-1]
    assert not view.running and view.propagateText == "Propagate" and view.settingsEnabled and view.progress == 1000
    assert view.status.startswith("Done in ") and "on cpu (remote server): 'Painted propagated'" in view.status
    assert view.paintNextEnabled and view.paintNextText.startswith("Paint this slice next: ")
    z = model.nextSlice[0]
    assert view.paintNextText == f"Paint this slice next: {z}" and z not in painted_slices(panel)
    assert view.leastCertain and view.leastCertain != "none"
    assert model.tick() is None  # reported once

    # an update of that result: the widget's undo hook is called with it the tick before it is written
    seen = []
    model.onBeforeResult = lambda node_: seen.append((node_, snapshot(node_)["mtime"]))
    before = snapshot(out)["mtime"]
    model.startPropagation(node)
    views, end = tick_until_end(panel)
    assert end.outcome is out and seen and seen[0][0] is out and seen[0][1] == before
    assert "sending the volume" not in " ".join(v.status.lower() for v in views)


def painted_slices(panel):
    import json

    result = panel.logic.previousResultOf(panel.painted)
    return json.loads(result.GetAttribute("BrainDiffSeg.annotatedSlices"))["indices"]


def test_cancel_and_failures_as_the_panel_shows_them(panel):
    from BrainDiffSegLib.options import to_strings
    from BrainDiffSegSlicer import parameters
    from BrainDiffSegSlicer.panel import EngineSettings

    model, node = panel.model, panel.node
    node.SetNodeReferenceID("Input_flair", panel.volumes["flair"].GetID())
    node.SetNodeReferenceID("Segmentation", panel.painted.GetID())
    ids = scene_ids(panel.scene)
    # bad input: refused at once, with the parameter's name, no job
    node.SetParameter("Ensemble", "0")
    with pytest.raises(InputError, match="Ensemble: '0' must be at least 1"):
        model.startPropagation(node)
    assert panel.logic.jobs.job is None and not model.view(node).running
    node.SetParameter("Ensemble", "2")
    node.SetParameter("Checkpoint", "/no/such/folder")  # on this computer: checked before the job
    model.engineSettings = EngineSettings("local")
    with pytest.raises(InputError, match="Backbone folder '/no/such/folder' does not exist"):
        model.startPropagation(node)
    node.SetParameter("Checkpoint", "")
    model.engineSettings = EngineSettings("remote", panel.service_url, panel.service_token)
    # cancel while the engine works
    for key, value in to_strings(replace(preset("default"), device="cpu")).items():
        node.SetParameter(parameters.parameterName(key), value)
    model.startPropagation(node)
    while "Training classifier" not in model.view(node).status and "Predicting" not in model.view(node).status:
        assert model.tick() is None
        time.sleep(0.02)
    model.cancel()
    assert model.view(node).status == "Cancelling..."
    views, end = tick_until_end(panel, timeout=60)
    assert end.status == "cancelled" and not end.dialog
    assert views[-1].status == "Cancelled; the scene (and the previous result) is unchanged."
    assert views[-1].progress == 0 and views[-1].propagateText == "Propagate"
    assert scene_ids(panel.scene) == ids
    # an engine that refuses: a failed job, its message in the status and in a dialog
    model.setEngineSettings(EngineSettings("remote", model.engineSettings.url, "wrong-token"))
    for key, value in to_strings(RAW).items():
        node.SetParameter(parameters.parameterName(key), value)
    model.startPropagation(node)
    views, end = tick_until_end(panel, timeout=60)
    assert end.status == "failed" and end.dialog and "refused the token (401)" in end.message
    assert views[-1].status == end.message and scene_ids(panel.scene) == ids
    with pytest.raises(InputError, match="server's address"):
        model.setEngineSettings(EngineSettings("remote", "", ""))


def test_inpainting_as_the_panel_runs_it(panel):
    model, node = panel.model, panel.node
    node.SetNodeReferenceID("InpaintVolume", panel.volumes["t1"].GetID())
    node.SetNodeReferenceID("Segmentation", panel.painted.GetID())
    node.SetParameter("InpaintSteps", "2")
    model.startInpainting(node)
    view = model.view(node)
    assert view.inpaintText == "Cancel" and not view.inpaintSettingsEnabled and not view.propagateEnabled
    views, end = tick_until_end(panel)
    assert end.kind == "inpainting" and end.status == "done"
    assert views[-1].inpaintStatus.startswith("Done in ") and end.outcome.GetName() in views[-1].inpaintStatus
    assert views[-1].inpaintProgress == 1000 and views[-1].inpaintText == "Inpaint"


def test_one_seed_means_one_result_in_every_front_end(headless, M):
    """The panel's Seed seeds the classifier as the command line's --seed does: the same options, so the same
    result (the engine is deterministic for given options and threads: test_determinism.py)."""
    from BrainDiffSegSlicer import parameters

    node = M.BrainDiffSegLogic(headless.scene).getParameterNode()
    parameters.setDefaultParameters(node)
    node.SetParameter("Seed", "7")
    node.SetParameter("ClassifierSeed", "0")  # a stale value from an older scene does not win
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cli = options_from_arguments(parser.parse_args(["--seed", "7"]))
    panel = parameters.optionsFromParameters(node)
    assert panel == cli and panel.classifier.seed == 7
    node.SetParameter("Device", "GPU")  # the combo box's label is understood
    assert parameters.optionsFromParameters(node).device == "cuda"


# ------------------------------------------------------------------------------------------ Slicer versions

def test_an_older_slicer_gets_a_panel_that_says_what_it_needs(monkeypatch):
    import importlib.util

    from BrainDiffSegSlicer import version

    assert version.unsupportedReason(None) is None and version.unsupportedReason((5, 10)) is None
    assert version.unsupportedReason((6, 0)) is None
    reason = version.unsupportedReason((5, 8))
    assert reason.startswith("BrainDiffSeg needs 3D Slicer 5.10 or later; this is Slicer 5.8.")

    # the module file under a fake Slicer 5.8: nothing of ours but the check is imported
    class Base:
        def __init__(self, parent=None):
            self.parent = parent

    fake_slicer = types.ModuleType("slicer")
    fake_slicer.app = types.SimpleNamespace(majorVersion=5, minorVersion=8)
    slm = types.ModuleType("slicer.ScriptedLoadableModule")
    slm.ScriptedLoadableModule, slm.ScriptedLoadableModuleWidget = Base, Base
    monkeypatch.setitem(sys.modules, "slicer", fake_slicer)
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", slm)
    for name in [m for m in sys.modules if m.startswith(("BrainDiffSegSlicer.logic", "BrainDiffSegSlicer.module"))]:
        monkeypatch.delitem(sys.modules, name)
    from conftest import LIB_PARENT

    spec = importlib.util.spec_from_file_location("BrainDiffSeg_on_5_8", LIB_PARENT / "BrainDiffSeg.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.UNSUPPORTED == reason
    assert "BrainDiffSegSlicer.logic" not in sys.modules and "BrainDiffSegSlicer.module" not in sys.modules
    parent = types.SimpleNamespace()
    module.BrainDiffSeg(parent)
    assert parent.title == "BrainDiffSeg" and parent.helpText == reason
    assert issubclass(module.BrainDiffSegWidget, Base)


# ------------------------------------------------------------------------------------------ installing

@pytest.fixture
def fake_slicer_util(monkeypatch):
    """slicer.util.pip_install recorded instead of run."""
    import slicer.util

    calls = []
    monkeypatch.setattr(slicer.util, "pip_install", lambda req: calls.append(req), raising=False)
    return calls


def test_only_missing_packages_are_installed_with_lower_bounds(fake_slicer_util, monkeypatch):
    from BrainDiffSegSlicer import install

    monkeypatch.setattr(install, "missingPackages", lambda remote=False: [])
    install.installEngine(["skimage", "h11"])
    assert len(fake_slicer_util) == 1 and fake_slicer_util[0][:2] == ["scikit-image>=0.22", "h11>=0.14"]
    option, constraints = fake_slicer_util[0][2:]  # the installed numpy and torch are kept as they are
    pins = open(constraints).read().split()
    assert option == "--constraint" and pins == [f"numpy=={np.__version__}", f"torch=={install.installedVersion('torch')}"]
    assert all("==" not in r for r in install.requirements())


def test_torch_comes_from_pytorchutils_with_a_version_requirement_and_a_refusal_stops(fake_slicer_util, monkeypatch):
    from BrainDiffSegSlicer import install

    asked = []

    class Logic:
        def installTorch(self, askConfirmation=False, torchVersionRequirement=None, **kwargs):
            asked.append((askConfirmation, torchVersionRequirement))
            return answer["torch"]

    answer = {"torch": object()}
    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=Logic))
    monkeypatch.setattr(install, "missingPackages", lambda remote=False: [])
    install.installEngine(["torch", "scipy"])
    assert asked == [(True, ">=2.5")] and fake_slicer_util[0][0] == "scipy>=1.11" and len(fake_slicer_util) == 1
    answer["torch"] = None  # the user declined (or PyTorchUtils failed to install it)
    fake_slicer_util.clear()
    with pytest.raises(install.InstallDeclined, match="was not installed.*remote server"):
        install.installEngine(["torch", "scipy"])
    assert fake_slicer_util == []  # nothing else is installed
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # no PyTorch extension: pip, with the bound
    install.installEngine(["torch"])
    assert fake_slicer_util == ["torch>=2.5"]


def test_a_remote_server_needs_only_the_client_here(monkeypatch):
    from BrainDiffSegSlicer import install

    monkeypatch.setattr(install.importlib.util, "find_spec", lambda name: None)
    assert install.missingPackages(remote=True) == ["h11"]
    assert set(install.missingPackages()) >= {"torch", "fastapi", "uvicorn", "h11", "scipy"}
    assert "numpy" not in install.toInstall(install.ENGINE_PACKAGES)  # Slicer's own: never installed
