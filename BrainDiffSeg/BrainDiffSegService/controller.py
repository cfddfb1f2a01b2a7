"""The one job controller of the front ends: start a job, poll it from the front end's own event loop (state and
progress), cancel it, and finish it (add its result to the scene) in the caller's thread. No Qt, no MRML, no
threads of its own: the Slicer panel polls it from one Qt timer, the browser annotator from its server loop, scripts
with `wait()`.

`JobController.start(kind, engine, request, finish)` -> `Job`; `Job.poll(budget)` advances the engine's submission
for at most about `budget` seconds and returns a `JobState`; once the engine's response is in, the next poll
announces "adding the result" and the one after calls `finish(response)` (the only step that touches the scene),
whose return value is the job's `outcome()`. A `finish` that is a generator runs one step per poll (the Logic's:
the work outside the scene, then the scene changes), its return value the outcome. One job at a time per controller (`JobBusyError` otherwise).
`JobState.next_poll_ms` tells the loop when to poll again: soon while bytes move, every 100 ms otherwise.
"""
from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

from BrainDiffSegLib.errors import BrainDiffSegError, CancelledError, InputError

log = logging.getLogger(__name__)
IDLE, RUNNING, DONE, CANCELLED, FAILED = "idle", "running", "done", "cancelled", "failed"
DEFAULT_BUDGET = 0.006  # seconds of work per poll: a GUI tick stays well under 20 ms, even on a busy machine
WAIT_POLL_MS = 100


class JobBusyError(InputError):
    """A job was started while another one runs."""


@dataclass(frozen=True)
class JobState:
    """What a front end shows of the job (a snapshot)."""

    kind: str = ""  # "propagation", "inpainting"
    status: str = IDLE  # idle, running, done, cancelled, failed
    stage: str = ""  # what is happening now, in words
    fraction: float = 0.0  # overall progress 0..1
    message: str = ""  # why it failed, or that it was cancelled
    seconds: float = 0.0
    next_poll_ms: int = WAIT_POLL_MS
    cancelling: bool = False

    @property
    def running(self) -> bool:
        return self.status == RUNNING


class Job:
    """One job: an engine submission, then `finish(response)` in the caller's thread."""

    def __init__(self, kind: str, submission, finish: Callable[[Any], Any], engine_name: str = "", request=None):
        self.kind, self.submission, self._finish = kind, submission, finish
        self.request = request  # what was sent to the engine (inspection)
        self.engine_name = engine_name
        self.started = time.monotonic()
        self.ended: float | None = None
        self._outcome = None
        self.error: BaseException | None = None
        self._finishing = False
        self._steps = None  # a finish given as a generator: its steps, one per poll
        self._discarded = False
        self._state = JobState(kind, RUNNING, "starting", 0.0, next_poll_ms=0)

    @property
    def state(self) -> JobState:
        return self._state

    @property
    def done(self) -> bool:
        return self._state.status in (DONE, CANCELLED, FAILED)

    def poll(self, budget: float = DEFAULT_BUDGET) -> JobState:
        if self.done:
            return self._state
        seconds = time.monotonic() - self.started
        sub = self.submission
        if self._finishing and self._discarded:
            return self._end(CancelledError(f"{self.kind} cancelled"))
        if self._finishing:  # the response is in: add it to the scene now (the caller's thread)
            try:
                if self._steps is None:
                    outcome = self._finish(sub.response())
                    if not inspect.isgenerator(outcome):
                        self._outcome = outcome
                    else:  # a finish in steps: one step per poll
                        self._steps = outcome
                if self._steps is not None:
                    try:
                        stage = next(self._steps)
                        self._state = JobState(self.kind, RUNNING, str(stage or "adding the result"), 1.0, "",
                                               seconds, 0)
                        return self._state
                    except StopIteration as done:
                        self._outcome = done.value
            except BaseException as exc:  # noqa: BLE001 - reported through the state and outcome()
                return self._end(exc)
            self.ended = time.monotonic()
            self._state = JobState(self.kind, DONE, "done", 1.0, "", self.ended - self.started, WAIT_POLL_MS)
            log.info("%s done in %.1f s (%s)", self.kind, self._state.seconds, self.engine_name)
            return self._state
        try:
            sub.advance(time.monotonic() + budget)
        except BaseException as exc:  # noqa: BLE001 - a submission reports its errors through response()
            return self._end(exc)
        if sub.done:
            try:
                sub.response()
            except BaseException as exc:  # noqa: BLE001
                return self._end(exc)
            self._finishing = True
            self._state = JobState(self.kind, RUNNING, "adding the result", 1.0, "", seconds, 0)
            return self._state
        cancelling = self._state.cancelling
        self._state = JobState(self.kind, RUNNING, "cancelling" if cancelling else sub.stage, sub.fraction, "",
                               seconds, int(round(1000 * sub.next_poll)), cancelling)
        return self._state

    def _end(self, error: BaseException) -> JobState:
        self.error, self.ended = error, time.monotonic()
        seconds = self.ended - self.started
        if isinstance(error, CancelledError):
            self._state = JobState(self.kind, CANCELLED, "cancelled", 0.0, f"{self.kind.capitalize()} cancelled.",
                                   seconds)
            log.info("%s cancelled", self.kind)
        elif isinstance(error, BrainDiffSegError):
            self._state = JobState(self.kind, FAILED, "failed", 0.0, str(error), seconds)
            log.warning("%s failed: %s", self.kind, error)
        else:  # a bug: shown to the user, logged with its traceback
            self._state = JobState(self.kind, FAILED, "failed", 0.0,
                                   f"{self.kind.capitalize()} failed: {type(error).__name__}: {error}", seconds)
            log.error("%s failed", self.kind, exc_info=error)
        return self._state

    def cancel(self, discard: bool = False) -> None:
        """Ask the job to stop; the scene stays as it was (a job whose result is already in finishes, unless
        `discard`: then its result is dropped, e.g. when the scene it was for is being closed)."""
        self._discarded = self._discarded or discard
        if self.done or (self._finishing and not discard):
            return
        log.info("%s: cancel requested", self.kind)
        self.submission.cancel()
        self._state = replace(self._state, stage="cancelling", cancelling=True, next_poll_ms=0)

    def wait(self, timeout: float | None = None, budget: float = 0.05) -> bool:
        """Poll until the job has ended (a script's loop: sleeps between polls); True when it has."""
        end = None if timeout is None else time.monotonic() + timeout
        while not self.done:
            state = self.poll(budget)
            if self.done or (end is not None and time.monotonic() > end):
                break
            time.sleep(min(max(state.next_poll_ms, 1), WAIT_POLL_MS) / 1000.0)
        return self.done

    def outcome(self):
        """What `finish` returned; re-raises the job's error (CancelledError, InputError, ...)."""
        if not self.done:
            raise RuntimeError(f"The {self.kind} has not finished yet.")
        if self.error is not None:
            raise self.error
        return self._outcome


class JobController:
    """One job at a time (see the module docstring)."""

    def __init__(self):
        self.job: Job | None = None

    @property
    def running(self) -> bool:
        return self.job is not None and not self.job.done

    def start(self, kind: str, engine, request, finish: Callable[[Any], Any]) -> Job:
        """Submit `request` to `engine` (`engines`) and return the Job; `finish(response)` adds the result."""
        if self.running:
            what = self.job.kind
            raise JobBusyError(f"A{'n' if what[:1] in 'aeiou' else ''} {what} is already running: wait for it or "
                               "cancel it.")
        self.job = Job(kind, engine.submit(request), finish, engine.describe(), request)
        log.info("%s started (%s)", kind, self.job.engine_name)
        return self.job

    def poll(self, budget: float = DEFAULT_BUDGET) -> JobState:
        """The current (or last) job's state, advanced by up to `budget` seconds of work; idle without a job."""
        return self.job.poll(budget) if self.job is not None else JobState()

    def cancel(self, discard: bool = False) -> None:
        if self.job is not None:
            self.job.cancel(discard)

    def forget(self) -> None:
        """Drop the last job once it has ended (e.g. after the front end showed its outcome)."""
        if self.job is not None and self.job.done:
            self.job = None
