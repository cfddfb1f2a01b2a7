"""BackgroundTask: the engine work of the front ends in a thread, with progress, result, errors and cancel."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from BrainDiffSegLib.background import BackgroundTask
from BrainDiffSegLib.propagation.classifier import ClassifierOptions
from BrainDiffSegLib.errors import CancelledError, InputError
from BrainDiffSegLib.propagation.propagate import PropagationOptions, propagate
from BrainDiffSegLib.protocol import simulate_annotation

FAST = PropagationOptions(method="raw", device="cpu",
                          classifier=ClassifierOptions(n_models=2, max_epochs=4, hidden=(16,), batch_size=512))


def test_result_progress_and_thread():
    main = threading.get_ident()
    seen = {}

    def work(progress, cancelled):
        seen["thread"] = threading.get_ident()
        for i in range(5):
            progress(f"step {i}", i / 4)
        return "value"

    task = BackgroundTask(work, name="t")
    with pytest.raises(RuntimeError, match="has not finished"):
        task.result()
    task.start()
    assert task.wait(10) and task.done
    assert task.result() == "value" and seen["thread"] != main
    events = task.poll()
    assert [s for s, _ in events] == [f"step {i}" for i in range(5)]
    assert events[-1] == ("step 4", 1.0) and (task.stage, task.fraction) == ("step 4", 1.0)
    assert task.poll() == [] and task.seconds >= 0
    with pytest.raises(RuntimeError, match="already started"):
        task.start()


def test_errors_are_reraised_in_the_callers_thread():
    def work(progress, cancelled):
        raise InputError("bad annotation")

    task = BackgroundTask(work).start()
    assert task.wait(10)
    assert isinstance(task.error, InputError)
    with pytest.raises(InputError, match="bad annotation"):
        task.result()


def test_progress_fractions_are_clamped():
    task = BackgroundTask(lambda p, c: [p("a", -1), p("b", 3)]).start()
    task.wait(10)
    assert task.poll() == [("a", 0.0), ("b", 1.0)]


def test_cancel_stops_the_engine_promptly(tumour_case):
    """A real propagation started in the background and cancelled while it runs raises CancelledError quickly."""
    images, label, _ = tumour_case()
    ann, _ = simulate_annotation(label, 2)
    started = threading.Event()

    def progress(stage, fraction):
        started.set()

    def work(report, cancelled):
        return propagate(images, ann, FAST, progress=lambda s, f: (report(s, f), progress(s, f)),
                         cancelled=cancelled)

    task = BackgroundTask(work, name="propagation").start()
    assert started.wait(60)
    t0 = time.perf_counter()
    task.cancel()
    assert task.cancel_requested
    assert task.wait(30), "not stopped within 30 s"
    with pytest.raises(CancelledError):
        task.result()
    assert time.perf_counter() - t0 < 30


def test_uncancelled_engine_run_matches_a_direct_call(tumour_case):
    images, label, _ = tumour_case()
    ann, _ = simulate_annotation(label, 2)
    task = BackgroundTask(lambda p, c: propagate(images, ann, FAST, progress=p, cancelled=c)).start()
    assert task.wait(120)
    direct = propagate(images, ann, FAST)
    np.testing.assert_array_equal(task.result().labels, direct.labels)
