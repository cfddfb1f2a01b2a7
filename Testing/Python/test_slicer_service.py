"""The Slicer Logic's scenarios through the engine service (real MRML under slicer-core, a real service process on
loopback, the real crop of BraTS2021_00006 of test_slicer_logic.py): first run and an update that hits the
service's feature cache (the volume is sent once), cancel, a killed local service (clear message, scene unchanged,
the next run starts a new one), a remote server with a token and with a wrong one, two clients on one service,
inpainting; in the Slicer application a background job never runs in Slicer's process, and the client's process
never imports torch."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest

from BrainDiffSegLib.errors import CancelledError
from BrainDiffSegLib.options import preset
from BrainDiffSegLib.protocol import region_dice
from conftest import LIB_PARENT
from service_support import start_service
from test_slicer_logic import (RAW, M, add_volumes, assert_same_snapshot, crop, paint,  # noqa: F401 (fixtures)
                               painted_truth, scene_ids, snapshot)

SLOW = replace(preset("default"), device="cpu")  # the bundled backbone, the full ensemble: seconds on a crop


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    s = start_service(tmp_path_factory.mktemp("service"))
    yield s
    s.stop()


def remote(service, token=None):
    from BrainDiffSegService.engines import ServiceEngine

    return ServiceEngine.remote(service.url, service.token if token is None else token)


def run_in_loop(logic, run, timeout=300.0):
    """Poll the Logic's job controller as the panel's timer does; the states seen."""
    states = []
    end = time.monotonic() + timeout
    while not run.done:
        states.append(logic.jobs.poll())
        assert time.monotonic() < end, f"the job did not end within {timeout} s: {states[-1]}"
        time.sleep(max(states[-1].next_poll_ms, 1) / 1000)
    return states


def labels(logic, node, reference):
    kji, _, _ = logic.labelArrayFromSegmentation(node, reference)
    return logic.toEngineArray(kji, 2)


def test_first_run_and_an_update_through_the_service_equal_the_engine_in_process(headless, service, crop, M):
    scene = headless.scene
    volumes = add_volumes(scene, crop, roles=("flair", "t1ce"))
    ann, zs = painted_truth(crop, M, k=2)
    painted = paint(scene, volumes["flair"], ann)
    before = snapshot(painted)
    logic = M.BrainDiffSegLogic(scene, headless.volumesLogic, headless.segmentationsLogic, engine=remote(service))
    ids = scene_ids(scene)
    run = logic.startPropagation(volumes, painted, RAW, createUncertainty=True)
    states = run_in_loop(logic, run)
    stages = [s.stage for s in states]
    assert "sending the volume" in stages and "adding the result" in stages and states[-1].status == "done"
    assert scene_ids(scene) != ids
    out = run.outcome()
    gt = logic.toEngineArray(crop["arrays"]["seg"], 2)
    assert region_dice(labels(logic, out, volumes["flair"]), gt, zs)["WT"] > 0.8
    assert logic.lastUncertaintyNode is not None and logic.featureCacheBytes() > 0
    assert_same_snapshot(before, snapshot(painted))
    # the same in this process: the same labels (one seed, one result)
    local = M.BrainDiffSegLogic(scene, headless.volumesLogic, headless.segmentationsLogic)
    in_process = local.propagate(volumes, painted, RAW, createUncertainty=True)
    np.testing.assert_array_equal(labels(logic, out, volumes["flair"]), labels(local, in_process, volumes["flair"]))

    # one more painted slice; the update goes to the same node and hits the service's cache
    ann3, zs3 = painted_truth(crop, M, k=3)
    painted3 = paint(scene, volumes["flair"], ann3, name="Painted 3")
    first_misses = logic.featureCacheStats()["misses"]
    run = logic.startPropagation(volumes, painted3, RAW, createUncertainty=True)
    states = run_in_loop(logic, run)
    assert "sending the volume" not in [s.stage for s in states]  # the service has the volume
    stats = logic.featureCacheStats()
    assert stats["hits"] >= 1 and stats["misses"] == first_misses
    assert region_dice(labels(logic, run.outcome(), volumes["flair"]), gt, zs3)["WT"] > 0.8
    logic.clearCache()
    assert logic.featureCacheStats() == {} and not logic.engine._volumes


def test_cancel_through_the_service_leaves_the_scene_as_it_was(headless, service, crop, M):
    scene = headless.scene
    volumes = add_volumes(scene, crop, roles=("flair", "t1ce"))
    ann, _ = painted_truth(crop, M)
    painted = paint(scene, volumes["flair"], ann)
    logic = M.BrainDiffSegLogic(scene, headless.volumesLogic, headless.segmentationsLogic, engine=remote(service))
    first = logic.propagate(volumes, painted, RAW)  # blocking, through the service
    before, ids = snapshot(first), scene_ids(scene)
    run = logic.startPropagation(volumes, painted, SLOW, outputNode=first)
    while logic.jobs.poll().stage in ("starting", "preparing the volume", "sending the job", "starting the engine service",
                                      "connecting to the engine service", "preparing", "queued"):
        time.sleep(0.02)
    run.cancel()
    states = run_in_loop(logic, run, timeout=60)
    assert states[-1].status == "cancelled" and states[-1].message == "Propagation cancelled."
    with pytest.raises(CancelledError):
        run.outcome()
    assert scene_ids(scene) == ids and not logic.running
    assert_same_snapshot(before, snapshot(first))


def test_a_killed_local_service_gives_a_clear_message_the_scene_unchanged_and_a_new_one_next_time(headless, crop, M):
    scene = headless.scene
    volumes = add_volumes(scene, crop, roles=("flair", "t1ce"))
    ann, _ = painted_truth(crop, M)
    painted = paint(scene, volumes["flair"], ann)
    logic = M.BrainDiffSegLogic(scene, headless.volumesLogic, headless.segmentationsLogic)
    logic.useLocalService(threads=1)
    try:
        before, ids = snapshot(painted), scene_ids(scene)
        run = logic.startPropagation(volumes, painted, SLOW, createUncertainty=True)
        while logic.jobs.poll().stage != "training classifier":
            assert not run.done, run.state
            time.sleep(0.02)
        pid = logic.engine.launcher.pid
        os.kill(pid, signal.SIGKILL)
        states = run_in_loop(logic, run, timeout=60)
        assert states[-1].status == "failed"
        assert "The engine service stopped unexpectedly (exit code -9); nothing was changed" in states[-1].message
        assert scene_ids(scene) == ids and not logic.running
        assert_same_snapshot(before, snapshot(painted))
        out = logic.propagate(volumes, painted, RAW)  # a new service
        assert out is not None and logic.engine.launcher.pid not in (None, pid)
    finally:
        logic.stopEngine()
    assert logic.engine.launcher.process is None


def test_wrong_token_and_two_clients(headless, service, crop, M):
    scene = headless.scene
    volumes = add_volumes(scene, crop, roles=("flair", "t1ce"))
    ann, _ = painted_truth(crop, M)
    painted = paint(scene, volumes["flair"], ann)
    ids = scene_ids(scene)
    wrong = M.BrainDiffSegLogic(scene, headless.volumesLogic, headless.segmentationsLogic,
                                engine=remote(service, token="not-the-token"))
    run = wrong.startPropagation(volumes, painted, RAW)
    states = run_in_loop(wrong, run, timeout=60)
    assert states[-1].status == "failed" and "refused the token (401)" in states[-1].message
    assert scene_ids(scene) == ids

    first = M.BrainDiffSegLogic(scene, headless.volumesLogic, headless.segmentationsLogic, engine=remote(service))
    second = M.BrainDiffSegLogic(scene, headless.volumesLogic, headless.segmentationsLogic, engine=remote(service))
    slow = first.startPropagation(volumes, painted, SLOW)
    while first.jobs.poll().stage in ("starting", "preparing the volume", "sending the volume", "sending the job",
                                      "connecting to the engine service"):
        time.sleep(0.02)
    other = second.startPropagation(volumes, painted, RAW)
    states = run_in_loop(second, other, timeout=60)
    assert states[-1].status == "failed" and "busy with another job on this volume" in states[-1].message
    assert first.jobs.running
    slow.cancel()
    assert run_in_loop(first, slow, timeout=60)[-1].status == "cancelled"
    assert scene_ids(scene) == ids
    assert run_in_loop(second, second.startPropagation(volumes, painted, RAW))[-1].status == "done"


def test_inpainting_through_the_service(headless, service, crop, M):
    import slicer

    scene = headless.scene
    volumes = add_volumes(scene, crop, roles=("t1",))
    painted = paint(scene, volumes["t1"], crop["arrays"]["seg"], name="Tumour")
    logic = M.BrainDiffSegLogic(scene, headless.volumesLogic, headless.segmentationsLogic, engine=remote(service))
    run = logic.startInpainting(volumes["t1"], painted, steps=2)
    states = run_in_loop(logic, run)
    assert states[-1].status == "done", states[-1]
    out = run.outcome()
    inside = crop["arrays"]["seg"] > 0
    result = slicer.util.arrayFromVolume(out)
    np.testing.assert_array_equal(result[~inside], crop["arrays"]["t1"].astype(np.float32)[~inside])
    assert np.isfinite(result).all() and not np.array_equal(result[inside], crop["arrays"]["t1"][inside])


def test_in_the_slicer_application_background_jobs_go_to_a_local_service(headless, crop, M, monkeypatch):
    """The Logic's default engine is in process (scripts); in the Slicer application a background job switches it
    to a private local service first: no worker thread in Slicer's process."""
    from BrainDiffSegSlicer import engine as engines

    monkeypatch.setattr(engines, "SLICER_APPLICATION", True)
    monkeypatch.setattr(engines, "servicePython", lambda: sys.executable)
    monkeypatch.setattr(engines, "localService", lambda threads=0, extraArgs=(): __import__(
        "BrainDiffSegService.engines", fromlist=["ServiceEngine"]).ServiceEngine.local(sys.executable, 1))
    scene = headless.scene
    volumes = add_volumes(scene, crop, roles=("flair",))
    ann, _ = painted_truth(crop, M)
    painted = paint(scene, volumes["flair"], ann)
    logic = M.BrainDiffSegLogic(scene, headless.volumesLogic, headless.segmentationsLogic)
    assert engines.isInProcess(logic.engine)
    try:
        run = logic.startPropagation(volumes, painted, RAW)
        assert logic.engine.name == "local service"
        assert run_in_loop(logic, run)[-1].status == "done"
        assert logic.engine.launcher.running
    finally:
        logic.stopEngine()


CLIENT_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np
import slicer
from BrainDiffSegService.engines import ServiceEngine
from BrainDiffSegSlicer.headless import HeadlessScene
from BrainDiffSegLib.options import preset
with HeadlessScene() as headless:
    logic = headless.logic()
    logic.setEngine(ServiceEngine.remote(sys.argv[2], sys.argv[3]))
    shape = (40, 40, 16)
    x, y, z = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    head = ((x - 20) / 17) ** 2 + ((y - 20) / 15) ** 2 + ((z - 8) / 20) ** 2 < 1
    tumour = (((x - 24) / 6) ** 2 + ((y - 18) / 6) ** 2 + ((z - 8) / 4) ** 2 < 1) & head
    rng = np.random.default_rng(0)
    img = np.where(head, 1000.0, 0.0) + 30 * rng.standard_normal(shape)
    img[tumour] *= 1.8
    img[~head] = 0
    ijk = np.diag([1.0, 1.0, 2.0, 1.0])
    flair = logic.addVolumeFromArray(logic.fromEngineArray(img.astype(np.float32), 2), ijk, "flair")
    painted = headless.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Painted")
    painted.CreateDefaultDisplayNodes()
    painted.SetReferenceImageGeometryParameterFromVolumeNode(flair)
    sid = painted.GetSegmentation().AddEmptySegment("", "Edema")
    ann = np.zeros(shape, bool)
    ann[..., 8] = tumour[..., 8]
    logic.setSegmentFromArray(painted, sid, logic.fromEngineArray(ann, 2), flair)
    run = logic.startPropagation({"flair": flair}, painted, preset("quick"))
    assert run.wait(120) and run.state.status == "done", run.state
    print("torch" in sys.modules, "scipy" in sys.modules, run.outcome().GetName())
"""


def test_the_client_process_never_imports_torch(service, tmp_path):
    """What the panel's process does (Logic, job controller, service engine) imports neither torch nor scipy."""
    script = tmp_path / "client.py"
    script.write_text(CLIENT_SCRIPT)
    run = subprocess.run([sys.executable, str(script), str(LIB_PARENT), service.url, service.token],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split()[:3] == ["False", "False", "Painted"], run.stdout
