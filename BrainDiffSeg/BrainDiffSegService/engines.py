"""Where a front end's job runs, behind one interface: in this process, in a private local service, or on a remote
server.

An engine has `run(request, progress, cancelled)` (blocking: scripts, benchmarks, tests) and `submit(request)` (a
`Submission` that the front end's loop advances a slice of time at a time: `advance(deadline)`, `stage`,
`fraction`, `next_poll` (seconds until there is more to do), `cancel()`, `done`, `response()`).

- `InProcessEngine`: the engine in this process (`BrainDiffSegLib.jobs.run_request`, its own workspace of
  volumes and feature caches). `submit` runs it in a worker thread: only for front ends whose loop lets Python
  threads run (the browser annotator), never in the Slicer application (its idle loop keeps the GIL).
- `ServiceEngine`: jobs on an engine service (`server`), private and local (`ServiceEngine.local()`: started on
  first use by `launcher.LocalService`) or remote (`ServiceEngine.remote(url, token)`). Everything happens in
  `advance`, in the caller's thread: hashing the images, sending them (only when the service does not have them:
  an update sends the annotation only), polling the job, receiving the result, each in bounded slices.

Standard library, NumPy and h11 only (the engine itself is imported by `InProcessEngine` when it runs).
"""
from __future__ import annotations

import logging
import time

from BrainDiffSegLib.errors import BrainDiffSegError, CancelledError
from BrainDiffSegLib.transfer import Decoder, Encoder, EngineRequest, EngineResponse, digest_steps

from .client import Connection, Endpoint, Exchange, ServiceError, ServiceUnavailable, request as blocking_request
from .launcher import LocalService

log = logging.getLogger(__name__)
IO_WAIT = 0.005  # seconds until the next advance when the socket would block
UPLOAD_SHARE, DOWNLOAD_SHARE = 0.1, 0.05  # of the overall fraction: sending the volume, receiving the result
CHUNK = 1 << 18  # input bytes compressed at a time while sending (a few ms)


class EngineJobError(BrainDiffSegError):
    """The engine reported a job as failed (its message says why)."""


def _drive(submission, progress=None, cancelled=None, timeout: float | None = None) -> EngineResponse:
    """Advance a submission to its end in this thread (a blocking call)."""
    last = None
    end = None if timeout is None else time.monotonic() + timeout
    while not submission.done:
        if cancelled is not None and cancelled():
            submission.cancel()
        submission.advance(time.monotonic() + 0.05)
        if progress is not None and (submission.stage, submission.fraction) != last:
            last = (submission.stage, submission.fraction)
            progress(*last)
        if end is not None and time.monotonic() > end:
            submission.cancel()
            raise TimeoutError(f"the job did not finish within {timeout} s")
        if not submission.done:
            time.sleep(min(max(submission.next_poll, 0.001), 0.05))
    return submission.response()


# ------------------------------------------------------------------------------------------------ in process

class ThreadSubmission:
    """A job run by the engine in a worker thread of this process (`BrainDiffSegLib.background.BackgroundTask`)."""

    def __init__(self, engine: "InProcessEngine", request: EngineRequest):
        from BrainDiffSegLib.background import BackgroundTask

        self.stage, self.fraction, self.next_poll = "starting", 0.0, 0.1
        self._task = BackgroundTask(lambda progress, cancelled: engine.run(request, progress, cancelled),
                                    name=request.kind).start()

    @property
    def done(self) -> bool:
        return self._task.done

    def advance(self, deadline: float) -> None:
        self._task.poll()
        self.stage, self.fraction = self._task.stage, self._task.fraction

    def cancel(self) -> None:
        self._task.cancel()

    def response(self) -> EngineResponse:
        return self._task.result()


class InProcessEngine:
    """The engine in this process (see the module docstring); `workspace` keeps the last `max_volumes` volumes."""

    name = "in process"

    def __init__(self, max_volumes: int = 1):
        self._max_volumes = max_volumes
        self._workspace = None

    @property
    def workspace(self):
        if self._workspace is None:
            from BrainDiffSegLib.jobs import Workspace

            self._workspace = Workspace(self._max_volumes)
        return self._workspace

    def run(self, request: EngineRequest, progress=None, cancelled=None) -> EngineResponse:
        from BrainDiffSegLib.jobs import run_request

        return run_request(request, self.workspace, progress, cancelled)

    def submit(self, request: EngineRequest) -> ThreadSubmission:
        return ThreadSubmission(self, request)

    def forget(self) -> None:
        """Forget the volumes and their feature caches."""
        if self._workspace is not None:
            self._workspace.clear()

    def close(self) -> None:
        self.forget()

    def describe(self) -> str:
        return "the engine in this process"


# ------------------------------------------------------------------------------------------------ service

class ServiceEngine:
    """Jobs on an engine service: `ServiceEngine.local(...)` (a private service started on first use, stopped by
    `close()`) or `ServiceEngine.remote(url, token, cafile)`."""

    def __init__(self, endpoint: Endpoint | None = None, launcher: LocalService | None = None,
                 max_result_bytes: int = 8 << 30):
        if (endpoint is None) == (launcher is None):
            raise ValueError("give an endpoint (remote) or a launcher (local)")
        self._endpoint, self.launcher = endpoint, launcher
        self.max_result_bytes = max_result_bytes
        self._connection: Connection | None = None
        self._volumes: set = set()  # digests this engine sent (forgotten on `forget`)

    @classmethod
    def local(cls, python: str | None = None, threads: int = 0, env: dict | None = None,
              extra_args: tuple = ()) -> "ServiceEngine":
        return cls(launcher=LocalService(python, threads, env, extra_args=extra_args))

    @classmethod
    def remote(cls, url: str, token: str, cafile: str | None = None) -> "ServiceEngine":
        return cls(endpoint=Endpoint(url.rstrip("/"), token, cafile or None))

    @property
    def name(self) -> str:
        return "local service" if self.launcher is not None else "remote server"

    def describe(self) -> str:
        if self.launcher is not None:
            pid = self.launcher.pid
            return f"the local engine service (pid {pid})" if pid else "the local engine service (not started)"
        return f"the engine server at {self._endpoint.url}"

    def endpoint(self, restart: bool = True) -> Endpoint | None:
        """The service's endpoint; None while a local one is starting (non-blocking). A local service that ended
        is started again, unless `restart` is False (then: ServiceUnavailable, saying so)."""
        if self.launcher is None:
            return self._endpoint
        return self.launcher.poll(restart)

    def connection(self, endpoint: Endpoint) -> Connection:
        if self._connection is None or self._connection.endpoint != endpoint:
            if self._connection is not None:
                self._connection.close()
            self._connection = Connection(endpoint)
        return self._connection

    def submit(self, request: EngineRequest) -> "ServiceSubmission":
        return ServiceSubmission(self, request)

    def run(self, request: EngineRequest, progress=None, cancelled=None) -> EngineResponse:
        return _drive(self.submit(request), progress, cancelled)

    def health(self, timeout: float = 60.0) -> dict:
        """GET /health (blocking; starts a local service and waits for it)."""
        end = time.monotonic() + timeout
        endpoint = self.endpoint()
        while endpoint is None:
            if time.monotonic() > end:
                raise ServiceUnavailable(f"The engine service did not start within {timeout:.0f} s.")
            time.sleep(0.05)
            endpoint = self.endpoint()
        return blocking_request(endpoint, "GET", "/health", timeout=max(1.0, end - time.monotonic())).json

    def explain(self, exc: ServiceError) -> ServiceError:
        """A lost connection, in words the user can act on: a local service that died is restarted next time."""
        if not isinstance(exc, ServiceUnavailable):
            return exc
        if self._connection is not None:
            self._connection.close()
        self._volumes.clear()
        if "stopped unexpectedly" in str(exc):
            return exc
        if self.launcher is not None:
            for _ in range(20):  # a killed process is reaped within moments
                tail = self.launcher.log_tail(4)
                code = self.launcher.died()
                if code is not None:
                    return ServiceUnavailable(f"The engine service stopped unexpectedly (exit code {code}); nothing "
                                              f"was changed. Run again to start a new one. {tail}".strip())
                time.sleep(0.01)
        return ServiceUnavailable(f"{exc} Nothing was changed.")

    def forget(self) -> None:
        """Ask the service to drop the volumes this engine sent (their feature caches); errors are ignored."""
        endpoint = self._endpoint if self.launcher is None else self.launcher.endpoint
        for digest in list(self._volumes):
            if endpoint is not None:
                try:
                    blocking_request(endpoint, "DELETE", f"/volumes/{digest}", timeout=2.0)
                except ServiceError as exc:
                    log.info("could not drop volume %s on the service: %s", digest[:8], exc)
        self._volumes.clear()

    def close(self) -> None:
        """Close the connection; stop a local service."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        if self.launcher is not None:
            self.launcher.stop()
        self._volumes.clear()


class ServiceSubmission:
    """One job on a service, advanced in the caller's thread: a generator (`_flow`) that yields whenever it would
    block (IO) or wants to wait (polling the job), so `advance` returns within its deadline."""

    POLL_INTERVAL = 0.1  # seconds between polls of a running job (the result is noticed 50 ms late on average)

    def __init__(self, engine: ServiceEngine, request: EngineRequest):
        self.engine, self.request = engine, request
        self.stage, self.fraction, self.next_poll = "connecting to the engine service", 0.0, 0.0
        self.done = False
        self.job_id: str | None = None
        self._error: BaseException | None = None
        self._response: EngineResponse | None = None
        self._cancel = False
        self._cancel_sent = False
        self._wake = 0.0
        self._deadline = 0.0
        self._endpoint: Endpoint | None = None
        self._flow = self._run()

    # -------------------------------------------------------------- the caller's side
    def advance(self, deadline: float) -> None:
        if self.done or time.monotonic() < self._wake:
            return
        self._deadline = deadline
        try:
            wait = next(self._flow)  # runs until the flow would block (0) or waits (> 0)
            self.next_poll = wait if wait > 0 else IO_WAIT
            self._wake = time.monotonic() + wait
        except StopIteration as stop:
            self._response, self.done, self.next_poll = stop.value, True, 0.0
        except ServiceError as exc:
            self._end(self.engine.explain(exc))
        except BaseException as exc:
            self._end(exc)

    def _end(self, error: BaseException) -> None:
        self._error, self.done, self.next_poll = error, True, 0.0
        if self.engine._connection is not None and not isinstance(error, (EngineJobError,)):
            self.engine._connection.close()  # an exchange may have been left half-way

    def cancel(self) -> None:
        self._cancel = True
        self._wake = 0.0

    def response(self) -> EngineResponse:
        if not self.done:
            raise RuntimeError("the job has not finished")
        if self._error is not None:
            raise self._error
        return self._response

    # -------------------------------------------------------------- the flow
    def _exchange(self, method: str, path: str, body=None, decoder=None, allow=(), share=None):
        """Run one exchange, yielding 0 while the socket would block; returns the Exchange. `share`: (start, width)
        of the overall fraction that the exchange's transfer covers."""
        endpoint = self.engine.endpoint(restart=self._endpoint is None)  # a job's service may not be replaced
        while endpoint is None:
            self.stage = "starting the engine service"
            yield 0.05
            endpoint = self.engine.endpoint()
        if self._endpoint is None:
            self._endpoint = endpoint
        elif endpoint != self._endpoint:
            raise ServiceUnavailable("The engine service was replaced during the job; nothing was changed. Run again.")
        exchange = Exchange(self.engine.connection(endpoint), method, path, body, decoder)
        try:
            while not exchange.advance(self._deadline):
                if share is not None:
                    part = exchange.sent_fraction if body is not None and decoder is None else exchange.received_fraction
                    self.fraction = share[0] + share[1] * part
                if self._cancel and not self._cancel_sent and self.job_id is None:
                    raise CancelledError("cancelled before the job reached the engine")
                yield 0
        except ServiceError as exc:
            if exc.status in allow:
                exchange.status = exc.status
                return exchange
            raise
        return exchange

    def _run(self):
        request = self.request
        meta = {"kind": request.kind, **request.meta}
        if request.volume is not None:
            self.stage = "preparing the volume"
            steps = digest_steps(request.volume, chunk=1 << 20)
            while True:
                try:
                    next(steps)
                except StopIteration as done:
                    digest = done.value
                    break
                if time.monotonic() >= self._deadline:
                    yield 0
            request._digest = digest
            meta["volume"] = digest
            for attempt in range(2):
                if digest not in self.engine._volumes or attempt:
                    found = yield from self._exchange("GET", f"/volumes/{digest}", allow=(404,))
                    if found.status == 404:
                        self.stage = "sending the volume"
                        encoder = Encoder({"kind": "volume"}, request.volume, chunk=CHUNK)
                        yield from self._exchange("PUT", f"/volumes/{digest}", body=encoder, share=(0.0, UPLOAD_SHARE))
                    self.engine._volumes.add(digest)
                self.stage, self.fraction = "sending the job", UPLOAD_SHARE
                submitted = yield from self._exchange("POST", "/jobs", body=Encoder(meta, request.arrays, chunk=CHUNK),
                                                      allow=(404,) if attempt == 0 else ())
                if submitted.status != 404:
                    break
                self.engine._volumes.discard(digest)  # dropped by the service meanwhile: send it again
        else:
            self.stage = "sending the job"
            submitted = yield from self._exchange("POST", "/jobs", body=Encoder(meta, request.arrays, chunk=CHUNK),
                                                  share=(0.0, UPLOAD_SHARE))
        self.job_id = submitted.json["job"]
        state = submitted.json
        while state["state"] not in ("done", "failed", "cancelled"):
            if self._cancel and not self._cancel_sent:
                self._cancel_sent = True
                self.stage = "cancelling"
                state = (yield from self._exchange("DELETE", f"/jobs/{self.job_id}")).json
                continue
            yield self.POLL_INTERVAL
            state = (yield from self._exchange("GET", f"/jobs/{self.job_id}")).json
            self._show(state)
        if state["state"] == "cancelled":
            raise CancelledError(f"{request.kind} cancelled")
        if state["state"] == "failed":
            raise EngineJobError(state.get("message") or f"The {request.kind} failed on the engine service.")
        if self._cancel:
            raise CancelledError(f"{request.kind} cancelled")
        self.stage, self.fraction = "receiving the result", 1.0 - DOWNLOAD_SHARE
        decoder = Decoder(self.engine.max_result_bytes)
        yield from self._exchange("GET", f"/jobs/{self.job_id}/result", decoder=decoder,
                                  share=(1.0 - DOWNLOAD_SHARE, DOWNLOAD_SHARE))
        meta, arrays = decoder.finish()
        self.fraction = 1.0
        return EngineResponse(meta, arrays)

    def _show(self, state: dict) -> None:
        if state["state"] == "queued":
            ahead = int(state.get("queue_position") or 0)
            self.stage = f"queued behind {ahead} job{'s' if ahead != 1 else ''} on the engine service"
        elif not self._cancel_sent:
            self.stage = state.get("stage") or state["state"]
            engine_share = 1.0 - UPLOAD_SHARE - DOWNLOAD_SHARE
            self.fraction = UPLOAD_SHARE + engine_share * float(state.get("fraction") or 0.0)
