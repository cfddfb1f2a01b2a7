"""The one job controller of the front ends (`BrainDiffSegService.controller`) on a scripted submission: states and
progress in order, the poll interval it asks for, the result added in the poll after the response (in the caller's
thread), one job at a time, cancel, a result dropped with `discard`, errors of the engine and of adding the result
(a bug gives its type and message, never a traceback in the status), and that a poll stays within its budget."""
from __future__ import annotations

import threading
import time

import pytest

from BrainDiffSegLib.errors import CancelledError, InputError
from BrainDiffSegService.controller import JobBusyError, JobController


class Script:
    """A submission that goes through (stage, fraction, next_poll) steps, one per advance, then responds."""

    def __init__(self, steps, response="response", error=None, work=0.0):
        self.steps, self.response_, self.error, self.work = list(steps), response, error, work
        self.stage, self.fraction, self.next_poll, self.done = "connecting", 0.0, 0.0, False
        self.cancelled = False
        self.deadlines = []

    def advance(self, deadline):
        self.deadlines.append(deadline - time.monotonic())  # the budget it was given
        end = min(time.monotonic() + self.work, deadline)
        while time.monotonic() < end:  # bounded work, like an encoder slice
            pass
        if self.cancelled:
            self.error, self.done = CancelledError("cancelled"), True
        elif self.steps:
            self.stage, self.fraction, self.next_poll = self.steps.pop(0)
        else:
            self.done = True

    def cancel(self):
        self.cancelled = True

    def response(self):
        if self.error is not None:
            raise self.error
        return self.response_


class Engine:
    def __init__(self, script):
        self.script = script

    def submit(self, request):
        return self.script

    def describe(self):
        return "a scripted engine"


def test_states_progress_and_the_result_added_in_the_callers_thread():
    script = Script([("sending the volume", 0.05, 0.0), ("training classifier", 0.3, 0.2),
                     ("predicting", 0.8, 0.2)])
    threads = []
    controller = JobController()
    job = controller.start("propagation", Engine(script), "request",
                           lambda response: threads.append(threading.get_ident()) or f"node of {response}")
    assert controller.running and job.request == "request"
    seen = [controller.poll() for _ in range(6)]
    assert [s.stage for s in seen] == ["sending the volume", "training classifier", "predicting",
                                       "adding the result", "done", "done"]
    assert [s.status for s in seen] == ["running"] * 4 + ["done"] * 2
    assert [s.next_poll_ms for s in seen[:4]] == [0, 200, 200, 0] and seen[4].fraction == 1.0
    assert job.outcome() == "node of response" and threads == [threading.get_ident()]
    assert not controller.running
    controller.forget()
    assert controller.poll().status == "idle" and controller.job is None


def test_one_job_at_a_time_and_cancel():
    controller = JobController()
    script = Script([("predicting", 0.5, 0.1)] * 100)
    job = controller.start("propagation", Engine(script), None, lambda r: r)
    with pytest.raises(JobBusyError, match="A propagation is already running"):
        controller.start("inpainting", Engine(Script([])), None, lambda r: r)
    controller.poll()
    controller.cancel()
    assert job.state.stage == "cancelling" and job.state.cancelling and script.cancelled
    assert controller.poll().status == "cancelled"
    assert job.state.message == "Propagation cancelled."
    with pytest.raises(CancelledError):
        job.outcome()
    second = controller.start("inpainting", Engine(Script([])), None, lambda r: "volume")
    assert second.wait(5) and second.outcome() == "volume"


def test_a_result_that_arrived_is_dropped_with_discard_and_kept_without():
    added = []
    for discard in (False, True):
        controller = JobController()
        job = controller.start("propagation", Engine(Script([])), None, lambda r: added.append(r) or "node")
        controller.poll()
        assert job.state.stage == "adding the result"
        controller.cancel(discard=discard)
        job.wait(5)
        assert job.state.status == ("cancelled" if discard else "done")
    assert added == ["response"]  # added once: not when discarded


def test_errors_end_the_job_with_one_sentence():
    controller = JobController()
    job = controller.start("propagation", Engine(Script([], error=InputError("Paint some tumour."))), None, str)
    job.wait(5)
    assert (job.state.status, job.state.message) == ("failed", "Paint some tumour.")
    with pytest.raises(InputError):
        job.outcome()

    def broken(response):
        raise KeyError("labels")

    job = controller.start("propagation", Engine(Script([])), None, broken)
    job.wait(5)
    assert job.state.status == "failed" and job.state.message == "Propagation failed: KeyError: 'labels'"


def test_a_poll_gives_the_submission_its_budget_only():
    controller = JobController()
    script = Script([("sending the volume", 0.05, 0.0)] * 5, work=1.0)
    controller.start("propagation", Engine(script), None, str)
    for _ in range(5):
        t = time.perf_counter()
        controller.poll(budget=0.01)
        assert time.perf_counter() - t < 0.05
    assert len(script.deadlines) == 5 and all(0 < d <= 0.01 for d in script.deadlines)
