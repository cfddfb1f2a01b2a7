"""Running long engine work in a background thread, with progress and prompt cancellation.

Front ends must not freeze while features are extracted and classifiers trained. Where the front end's own loop
lets Python threads run (the browser annotator's server; scripts) the engine may run in a worker thread of its
process (`BrainDiffSegService.engines.InProcessEngine.submit`); in the Slicer application it never does: its main
thread holds the GIL while Qt is idle, so such a thread starves (Testing/Python/test_slicer_event_loop.py keeps the
measurement), and the panel uses an engine service instead. `BackgroundTask` runs one callable in a daemon thread and passes it `progress(stage, fraction)` and
`cancelled() -> bool`, the two callbacks the engine's long functions take. The front end polls it from its own event
loop (a Qt timer, a trame callback): `poll()` returns the progress reports made since the last call, `done` says
whether it has finished, and `result()` returns the value or re-raises the exception of the callable in the caller's
thread. Nothing here touches MRML or a GUI: the work in the thread must only compute on arrays (MRML is not
thread-safe); reading nodes before and writing nodes after is the caller's job, in its own thread.

torch and numpy release the interpreter lock in their kernels, so a front end's loop that does not hold the GIL
stays responsive while the work runs. `cancel()` sets a flag that the engine checks between batches; the engine then raises
`BrainDiffSegLib.errors.CancelledError`, which `result()` re-raises.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable

log = logging.getLogger(__name__)


class BackgroundTask:
    """One callable `work(progress, cancelled)` run in a daemon thread.

    >>> task = BackgroundTask(lambda progress, cancelled: 42, name="demo").start()
    >>> task.wait(5)
    True
    >>> task.result()
    42
    """

    def __init__(self, work: Callable[[Callable[[str, float], None], Callable[[], bool]], Any], name: str = "task"):
        self._work = work
        self.name = name
        self._events: queue.Queue = queue.Queue()
        self._cancel = threading.Event()
        self._finished = threading.Event()
        self._thread: threading.Thread | None = None
        self._value: Any = None
        self._error: BaseException | None = None
        self.stage = "waiting"
        self.fraction = 0.0
        self.started_at: float | None = None
        self.seconds: float | None = None

    # -------------------------------------------------------------- control (caller's thread)

    def start(self) -> "BackgroundTask":
        if self._thread is not None:
            raise RuntimeError(f"{self.name} was already started")
        self.started_at = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name=f"BrainDiffSeg {self.name}", daemon=True)
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Ask the work to stop; it raises CancelledError at its next check (within one batch)."""
        if not self._finished.is_set():
            log.info("%s: cancel requested", self.name)
        self._cancel.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    @property
    def done(self) -> bool:
        return self._finished.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until finished (or the timeout); True when finished."""
        return self._finished.wait(timeout)

    def poll(self) -> list[tuple[str, float]]:
        """Progress reports (stage, fraction in 0..1) made since the last poll, oldest first."""
        events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                break
        if events:
            self.stage, self.fraction = events[-1]
        return events

    def result(self) -> Any:
        """The work's return value; re-raises its exception. Only once finished."""
        if not self.done:
            raise RuntimeError(f"{self.name} has not finished")
        if self._error is not None:
            raise self._error
        return self._value

    @property
    def error(self) -> BaseException | None:
        return self._error if self.done else None

    # -------------------------------------------------------------- the worker thread

    def _progress(self, stage: str, fraction: float) -> None:
        self._events.put((str(stage), float(min(max(fraction, 0.0), 1.0))))

    def _run(self) -> None:
        try:
            self._value = self._work(self._progress, self._cancel.is_set)
        except BaseException as exc:  # handed to the caller's thread by result()
            self._error = exc
            if not self._cancel.is_set():
                log.debug("%s failed", self.name, exc_info=True)
        finally:
            self.seconds = time.perf_counter() - (self.started_at or time.perf_counter())
            self._finished.set()
