"""The engine service: the engine (`BrainDiffSegLib.jobs`) behind an HTTP API (FastAPI, served by uvicorn), so that
front ends never run it in their own process (docs/SERVICE.md documents the API and the message format).

- Every request needs `Authorization: Bearer <token>` (compared in constant time); without it: 401.
- It binds 127.0.0.1 unless told otherwise; any other address needs TLS (`--certfile`, `--keyfile`), so that the
  token never travels in clear (or an explicit `--allow-insecure-http`, for a TLS proxy in front).
- Request bodies are bounded (`--max-request-mb`, the compressed body and the arrays it declares); a malformed body,
  unknown options or a job it cannot do get a 4xx with one sentence; an engine failure ends that job as failed with
  its message; nothing takes the service down.
- Jobs run one at a time in a worker thread, in the order they came; a second job on a volume that has one queued
  or running gets 409 ("busy"). Volumes (images and feature cache) are kept between jobs, the last `--max-volumes`.
- A private service (started by a front end: `--parent-pid`, `--allow-shutdown`) stops when its parent process ends
  or on `POST /shutdown`.

No `from __future__ import annotations` here: FastAPI reads the routes' annotations at run time.

Length: the API (routes, bounded body reading, auth), the job queue and the serve command belong together; the
client is in `client`, the process launcher in `launcher`.
"""
import argparse
import hmac
import json
import logging
import os
import secrets
import signal
import socket
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from BrainDiffSegLib.device import adaptive_threads, set_threads
from BrainDiffSegLib.errors import BrainDiffSegError, CancelledError, InputError
from BrainDiffSegLib.jobs import KINDS, Workspace, run_request
from BrainDiffSegLib.transfer import MEDIA_TYPE, Decoder, EngineRequest, TooLarge, encode, images_digest

log = logging.getLogger("BrainDiffSegService")
TOKEN_ENV = "BRAINDIFFSEG_TOKEN"
LOOPBACK = ("127.0.0.1", "::1", "localhost")
RESULT_TTL = 900.0  # seconds a finished job's result waits to be fetched
FEED_SIZE = 1 << 20  # bytes of a request body decoded at a time (off the event loop)
TERMINAL = ("done", "failed", "cancelled")


class Busy(Exception):
    """A job for a volume that already has one queued or running."""


@dataclass
class ServiceJob:
    """A job of the service: its request until it runs, its state, then its response until fetched."""

    id: str
    kind: str
    volume: str | None
    request: EngineRequest | None
    state: str = "queued"  # queued, running, done, failed, cancelled
    stage: str = "queued"
    fraction: float = 0.0
    message: str = ""
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    response: object = None
    cancel: threading.Event = field(default_factory=threading.Event)

    def snapshot(self, position: int = 0) -> dict:
        now = time.monotonic()
        return {"job": self.id, "kind": self.kind, "state": self.state, "stage": self.stage,
                "fraction": round(self.fraction, 4), "message": self.message, "queue_position": position,
                "seconds": round((self.finished or now) - (self.started or now), 3)}


class JobManager:
    """The queue: one worker thread runs the jobs in order; the workspace is shared by uploads and jobs."""

    def __init__(self, workspace: Workspace, threads: int | None = None):
        self.workspace = workspace
        self.threads = threads  # None: leave torch's threads alone; 0: `adaptive_threads` per job; N: fixed at start
        self.lock = threading.Lock()
        self.jobs: dict[str, ServiceJob] = {}
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="BrainDiffSeg engine")

    # -------------------------------------------------------------- volumes
    def has_volume(self, digest: str) -> bool:
        return digest in self.workspace

    def put_volume(self, digest: str, images: dict) -> None:
        self.workspace.put(images, digest)

    def drop_volume(self, digest: str) -> bool:
        with self.lock:
            if any(j.volume == digest and j.state not in TERMINAL for j in self.jobs.values()):
                raise Busy("A job of this volume is queued or running; cancel it first.")
            return self.workspace.drop(digest)

    # -------------------------------------------------------------- jobs
    def submit(self, request: EngineRequest, volume: str | None) -> ServiceJob:
        with self.lock:
            self._prune()
            if volume is not None:
                if volume not in self.workspace:
                    raise KeyError(volume)
                if any(j.volume == volume and j.state in ("queued", "running") for j in self.jobs.values()):
                    raise Busy(f"The service is busy with another job on this volume ({volume[:8]}): wait for it to "
                               "finish or cancel it.")
            job = ServiceJob(uuid.uuid4().hex, request.kind, volume, request)
            self.jobs[job.id] = job
        self._executor.submit(self._run, job)
        log.info("job %s (%s) queued", job.id[:8], job.kind)
        return job

    def position(self, job: ServiceJob) -> int:
        """Jobs ahead of a queued one (the running one included)."""
        if job.state != "queued":
            return 0
        with self.lock:
            return sum(1 for j in self.jobs.values() if j.state in ("queued", "running") and j.created < job.created)

    def _run(self, job: ServiceJob) -> None:
        if job.cancel.is_set():
            job.state, job.stage, job.message, job.finished = "cancelled", "cancelled", "Cancelled.", time.monotonic()
            job.request = None
            return
        job.state, job.stage, job.started = "running", "starting", time.monotonic()

        def progress(stage: str, fraction: float) -> None:
            job.stage, job.fraction = str(stage), float(min(max(fraction, 0.0), 1.0))

        try:
            if job.volume is not None and job.volume not in self.workspace:  # evicted by uploads meanwhile
                raise InputError("The volume was dropped from the service before its job ran (it keeps the last "
                                 f"{self.workspace.max_volumes}); send it again.")
            if self.threads == 0:  # not fixed by --threads: as many as the machine's idle cores allow, per job
                log.info("job %s: %d torch thread(s)", job.id[:8], set_threads(adaptive_threads()))
            job.response = run_request(job.request, self.workspace, progress, job.cancel.is_set)
            job.state, job.stage, job.fraction = "done", "done", 1.0
        except CancelledError:
            job.state, job.stage, job.message = "cancelled", "cancelled", "Cancelled."
        except BrainDiffSegError as exc:
            job.state, job.message = "failed", str(exc)
            log.warning("job %s failed: %s", job.id[:8], exc)
        except Exception as exc:  # an engine bug: the job fails with its message, the service goes on
            job.state, job.message = "failed", f"The {job.kind} failed: {type(exc).__name__}: {exc}"
            log.exception("job %s failed", job.id[:8])
        finally:
            job.request = None
            job.finished = time.monotonic()
            log.info("job %s %s in %.1f s", job.id[:8], job.state, job.finished - job.started)

    def cancel(self, job_id: str) -> ServiceJob:
        job = self.jobs[job_id]
        job.cancel.set()
        if job.state in TERMINAL:
            with self.lock:
                self.jobs.pop(job_id, None)
        return job

    def take_result(self, job_id: str):
        with self.lock:
            job = self.jobs[job_id]
            if job.state != "done":
                return job, None
            self.jobs.pop(job_id)
            return job, job.response

    def _prune(self) -> None:
        now = time.monotonic()
        for jid in [j.id for j in self.jobs.values() if j.finished and now - j.finished > RESULT_TTL]:
            log.info("job %s: result not fetched within %.0f s, dropped", jid[:8], RESULT_TTL)
            self.jobs.pop(jid)

    def counts(self) -> dict:
        with self.lock:
            states = [j.state for j in self.jobs.values()]
        return {s: states.count(s) for s in ("queued", "running")}

    def shutdown(self) -> None:
        for job in list(self.jobs.values()):
            job.cancel.set()
        self._executor.shutdown(wait=False, cancel_futures=True)


@dataclass
class Settings:
    token: str
    max_request_bytes: int = 2048 << 20
    allow_shutdown: bool = False


def create_app(settings: Settings, manager: JobManager):
    """The FastAPI application (docs/SERVICE.md)."""
    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.responses import JSONResponse, Response
    from starlette.concurrency import run_in_threadpool

    expected = settings.token.encode()

    def authorised(request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            raise HTTPException(401, "A valid token is required: send 'Authorization: Bearer <token>'.",
                                headers={"WWW-Authenticate": "Bearer"})

    app = FastAPI(title="BrainDiffSeg engine service", docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(authorised)])
    app.state.manager, app.state.server = manager, None

    @app.exception_handler(InputError)
    async def bad_input(request, exc: InputError):
        return JSONResponse({"detail": str(exc)}, status_code=413 if isinstance(exc, TooLarge) else 400)

    @app.exception_handler(Exception)
    async def unexpected(request, exc: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse({"detail": f"Internal error of the service: {type(exc).__name__}: {exc}"}, 500)

    async def read_message(request: Request) -> tuple[dict, dict]:
        limit = settings.max_request_bytes
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise HTTPException(413, f"The request is {int(length) / 2**20:.0f} MB; this service accepts at most "
                                     f"{limit / 2**20:.0f} MB (--max-request-mb).")
        if not request.headers.get("content-type", "").startswith(MEDIA_TYPE):
            raise HTTPException(415, f"Send the body as {MEDIA_TYPE} (docs/SERVICE.md).")
        decoder, pending, total = Decoder(limit), bytearray(), 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise HTTPException(413, f"The request is over {limit / 2**20:.0f} MB, the most this service accepts "
                                         "(--max-request-mb).")
            pending += chunk
            if len(pending) >= FEED_SIZE:
                await run_in_threadpool(decoder.feed, bytes(pending))
                pending.clear()
        if pending:
            await run_in_threadpool(decoder.feed, bytes(pending))
        return decoder.finish()

    @app.get("/health")
    def health():
        import torch

        cuda = torch.cuda.is_available()
        return {"status": "ok", "service": "braindiffseg", "version": _version(), "torch": torch.__version__,
                "device": "cuda" if cuda else "cpu", "gpu": torch.cuda.get_device_name(0) if cuda else None,
                "threads": torch.get_num_threads(), "jobs": manager.counts(), "volumes": len(manager.workspace),
                "max_request_mb": settings.max_request_bytes >> 20}

    @app.get("/volumes/{digest}")
    def volume(digest: str):
        if not manager.has_volume(digest):
            raise HTTPException(404, f"Volume {digest[:12]} is not on the service.")
        return {"volume": digest}

    @app.put("/volumes/{digest}", status_code=201)
    async def put_volume(digest: str, request: Request):
        meta, images = await read_message(request)

        def check_and_keep():
            if images_digest(images) != digest:
                raise InputError("The volume's images do not match its digest in the address (corrupt upload?).")
            manager.put_volume(digest, images)
        await run_in_threadpool(check_and_keep)
        return {"volume": digest}

    @app.delete("/volumes/{digest}")
    def drop_volume(digest: str):
        try:
            dropped = manager.drop_volume(digest)
        except Busy as exc:
            raise HTTPException(409, str(exc)) from None
        return {"volume": digest, "dropped": dropped}

    @app.post("/jobs", status_code=202)
    async def submit(request: Request):
        meta, arrays = await read_message(request)
        kind = meta.get("kind")
        if kind not in KINDS:
            raise InputError(f"Unknown job kind {kind!r}; use one of {', '.join(KINDS)}.")
        volume = meta.get("volume") if kind == "propagate" else None
        if kind == "propagate":
            if not isinstance(volume, str):
                raise InputError("A propagation needs 'volume': the digest of images sent with PUT /volumes/{digest}.")
            from BrainDiffSegLib.options import from_strings

            options = meta.get("options")
            if not isinstance(options, dict):
                raise InputError("A propagation needs 'options': an object of option strings.")
            from_strings(options)  # bad options: 400 now rather than a failed job
        job_meta = {k: v for k, v in meta.items() if k not in ("kind",)}
        try:
            job = manager.submit(EngineRequest(kind, job_meta, arrays), volume)
        except KeyError:
            raise HTTPException(404, f"Volume {str(volume)[:12]} is not on the service (it keeps the last "
                                     f"{manager.workspace.max_volumes}): send it again.") from None
        except Busy as exc:
            raise HTTPException(409, str(exc)) from None
        return job.snapshot(manager.position(job))

    def find(job_id: str) -> ServiceJob:
        job = manager.jobs.get(job_id)
        if job is None:
            raise HTTPException(404, f"No job {job_id[:12]} on the service (finished results are kept "
                                     f"{RESULT_TTL / 60:.0f} minutes).")
        return job

    @app.get("/jobs/{job_id}")
    def status(job_id: str):
        job = find(job_id)
        return job.snapshot(manager.position(job))

    @app.get("/jobs/{job_id}/result")
    async def result(job_id: str):
        find(job_id)
        job, response = manager.take_result(job_id)
        if response is None:
            raise HTTPException(409, job.message or f"The job is {job.state}; its result is not ready.")
        body = await run_in_threadpool(encode, response.meta, response.arrays)
        return Response(body, media_type=MEDIA_TYPE)

    @app.delete("/jobs/{job_id}")
    def cancel(job_id: str):
        find(job_id)
        return manager.cancel(job_id).snapshot()

    @app.post("/shutdown", status_code=202)
    def shutdown():
        if not settings.allow_shutdown:
            raise HTTPException(403, "This service was not started to be stopped by its clients.")
        server = app.state.server
        if server is not None:
            log.info("shutdown requested")
            server.should_exit = True
        return {"status": "stopping"}

    return app


def _version() -> str:
    from BrainDiffSegLib import __version__

    return __version__


# ------------------------------------------------------------------------------------------------ the command

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this computer "
                        "only; any other address needs --certfile/--keyfile)")
    parser.add_argument("--port", type=int, default=8765, help="port (0: a free one; see --port-file)")
    parser.add_argument("--token", help=f"the bearer token clients must send (default: ${TOKEN_ENV}, else a random "
                        "one, printed at start)")
    parser.add_argument("--certfile", help="TLS certificate (PEM): serve https")
    parser.add_argument("--keyfile", help="TLS private key (PEM) of --certfile")
    parser.add_argument("--allow-insecure-http", action="store_true",
                        help="serve plain http beyond this computer (only behind a TLS proxy: the token travels in "
                             "clear otherwise)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: chosen per job: torch's choice on an "
                        "idle machine, fewer while other work keeps the cores busy)")
    parser.add_argument("--max-request-mb", type=int, default=2048, help="largest request body and arrays (MB)")
    parser.add_argument("--max-volumes", type=int, default=2, help="volumes (images + feature cache) kept between jobs")
    parser.add_argument("--cache-mb", type=int, default=0, help="feature cache per volume (MB; 0: the default 2048)")
    parser.add_argument("--port-file", help="write {'port', 'pid'} here (JSON) once listening (for --port 0)")
    parser.add_argument("--parent-pid", type=int, help="stop when this process ends (a front end's private service)")
    parser.add_argument("--allow-shutdown", action="store_true", help="clients may stop the service (POST /shutdown)")
    parser.add_argument("--access-log", action="store_true", help="log every request")


def check_address(host: str, certfile: str | None, keyfile: str | None, allow_insecure: bool) -> None:
    if bool(certfile) != bool(keyfile):
        raise InputError("Give both --certfile and --keyfile for TLS.")
    for path in (certfile, keyfile):
        if path and not Path(path).is_file():
            raise InputError(f"TLS file not found: {path}")
    if host not in LOOPBACK and not certfile and not allow_insecure:
        raise InputError(f"Serving on {host} (beyond this computer) would send the token in clear: give --certfile "
                         "and --keyfile (TLS), or --allow-insecure-http behind a TLS proxy.")


def run(a: argparse.Namespace) -> int:
    """`braindiffseg serve` / `python -m BrainDiffSegService serve`."""
    import uvicorn

    from BrainDiffSegLib.device import use_deterministic_algorithms

    check_address(a.host, a.certfile, a.keyfile, a.allow_insecure_http)
    token = a.token or os.environ.get(TOKEN_ENV) or ""
    generated = not token
    token = token or new_token()
    set_threads(a.threads)
    use_deterministic_algorithms()  # this process is the engine's own: reproducible kernels on the GPU
    workspace = Workspace(a.max_volumes, (a.cache_mb << 20) or None)
    manager = JobManager(workspace, threads=a.threads)
    app = create_app(Settings(token, max(1, a.max_request_mb) << 20, a.allow_shutdown), manager)
    family = socket.AF_INET6 if ":" in a.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((a.host, a.port))
    except OSError as exc:
        raise InputError(f"Cannot listen on {a.host}:{a.port}: {exc.strerror}.") from None
    sock.listen(64)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, host=a.host, port=port, log_level="info", access_log=a.access_log,
                            ssl_certfile=a.certfile, ssl_keyfile=a.keyfile, lifespan="off", timeout_keep_alive=30)
    server = uvicorn.Server(config)
    app.state.server = server
    stop_on_signals(server)
    scheme = "https" if a.certfile else "http"
    shown = f"[{a.host}]" if ":" in a.host else a.host
    print(f"BrainDiffSeg engine service on {scheme}://{shown}:{port}" + (f"  token: {token}" if generated else ""),
          flush=True)
    if a.port_file:
        _write_atomically(Path(a.port_file), json.dumps({"port": port, "pid": os.getpid(), "scheme": scheme}))
    if a.parent_pid:
        threading.Thread(target=_watch_parent, args=(a.parent_pid, server), daemon=True,
                         name="BrainDiffSeg parent watch").start()
    try:
        server.run(sockets=[sock])
    finally:
        manager.shutdown()
    log.info("engine service stopped")
    return 0


def stop_on_signals(server) -> None:
    """Ctrl+C (SIGINT) or SIGTERM at any moment from here on stops the service cleanly (exit status 0): uvicorn
    handles them only while it serves, and restores these handlers after, so a signal during the start-up (the
    address just printed, the loop not yet running) or the one uvicorn raises again after its own shutdown ends
    here too, instead of a KeyboardInterrupt in the middle of the start-up. A second Ctrl+C before the loop runs
    stops at once. Main thread only (elsewhere Python allows no signal handler)."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handle(sig, frame):
        if server.should_exit and sig == signal.SIGINT and not server.started:
            raise KeyboardInterrupt
        server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handle)


def new_token() -> str:
    """A random token that never starts with '-' (a command line would read it as an option)."""
    while True:
        token = secrets.token_urlsafe(24)
        if not token.startswith("-"):
            return token


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def process_alive(pid: int) -> bool:
    if os.name == "nt":
        import ctypes

        kernel32 = ctypes.windll.kernel32
        handle = kernel32.OpenProcess(0x00100000, False, pid)  # SYNCHRONIZE
        if not handle:
            return False
        try:
            return kernel32.WaitForSingleObject(handle, 0) == 0x102  # WAIT_TIMEOUT: still running
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _watch_parent(pid: int, server) -> None:
    while not server.should_exit:
        if not process_alive(pid):
            log.info("parent process %d ended: stopping", pid)
            server.should_exit = True
            return
        time.sleep(1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m BrainDiffSegService", allow_abbrev=False,
                                     description="The BrainDiffSeg engine service.")
    sub = parser.add_subparsers(dest="command", required=True)
    add_arguments(sub.add_parser("serve", help="serve the engine over HTTP(S)", allow_abbrev=False))
    a = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    try:
        return run(a)
    except BrainDiffSegError as exc:
        log.error("%s", exc)
        return 2
