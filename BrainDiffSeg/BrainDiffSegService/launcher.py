"""A private engine service on this computer, started by a front end (the Slicer panel with Slicer's own Python,
PythonSlicer) and watched without blocking its event loop.

`LocalService.poll()` starts the process on first use (`python -m BrainDiffSegService serve --host 127.0.0.1
--port 0 --port-file F --parent-pid <this process> --allow-shutdown`), then returns the service's `client.Endpoint`
once the service has written its port file, or None while it is starting. The token is random per start and goes
to the child in its environment (not on its command line, which other users of the computer can read). The service
logs to a file (never to a pipe nobody reads, which would stall it); when it fails to start or dies, the error names
the exit code and the log's last lines. It stops with `stop()` (POST /shutdown, then terminate, then kill: the
PythonSlicer launcher may stand between us and the Python process), and on its own when this process ends.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .client import Endpoint, ServiceError, ServiceUnavailable

log = logging.getLogger(__name__)
TOKEN_ENV = "BRAINDIFFSEG_TOKEN"
PACKAGES_DIR = Path(__file__).resolve().parent.parent  # the folder holding BrainDiffSegService, BrainDiffSegLib


class LocalService:
    """One private service process (restarted by `poll()` after it ended).

    python: the interpreter (default: this one; the Slicer Logic passes PythonSlicer); threads: torch threads of
    the service (0: torch's choice); env: the base environment (default: this process's); startup_timeout: seconds
    to wait for the port file."""

    def __init__(self, python: str | None = None, threads: int = 0, env: dict | None = None,
                 startup_timeout: float = 180.0, extra_args: tuple = ()):
        self.python = python or sys.executable
        self.threads = int(threads or 0)
        self.env = env
        self.startup_timeout = startup_timeout
        self.extra_args = tuple(extra_args)
        self.process: subprocess.Popen | None = None
        self.endpoint: Endpoint | None = None
        self.log_path: Path | None = None
        self._port_file: Path | None = None
        self._started_at = 0.0
        self._token = ""
        self.starts = 0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def exit_code(self) -> int | None:
        return self.process.poll() if self.process is not None else None

    def command(self) -> list[str]:
        cmd = [self.python, "-m", "BrainDiffSegService", "serve", "--host", "127.0.0.1", "--port", "0",
               "--port-file", str(self._port_file), "--parent-pid", str(os.getpid()), "--allow-shutdown"]
        if self.threads:
            cmd += ["--threads", str(self.threads)]
        return cmd + list(self.extra_args)

    def start(self) -> None:
        """Start the process (non-blocking); `poll()` says when it listens."""
        folder = Path(tempfile.gettempdir()) / "BrainDiffSeg"
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"service-{os.getpid()}-{int(time.time() * 1000)}"
        self._port_file, self.log_path = folder / f"{stem}.json", folder / f"{stem}.log"
        self._token = secrets.token_urlsafe(32)
        env = dict(self.env if self.env is not None else os.environ)
        env[TOKEN_ENV] = self._token
        env["PYTHONPATH"] = os.pathsep.join([str(PACKAGES_DIR)] + [p for p in [env.get("PYTHONPATH")] if p])
        env["PYTHONUNBUFFERED"] = "1"
        flags = getattr(subprocess, "CREATE_NO_WINDOW", 0) if os.name == "nt" else 0
        with open(self.log_path, "wb") as logfile:
            try:
                self.process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=logfile,
                                                stderr=subprocess.STDOUT, env=env, cwd=str(folder),
                                                creationflags=flags)
            except OSError as exc:
                self.process = None
                raise ServiceError(f"Cannot start the engine service with {self.python}: {exc.strerror}.") from None
        self.endpoint, self._started_at = None, time.monotonic()
        self.starts += 1
        log.info("engine service starting (pid %d, log %s)", self.process.pid, self.log_path)

    def poll(self, restart: bool = True) -> Endpoint | None:
        """Start the service if it is not running; its endpoint once it listens, None while it starts. Raises
        ServiceError when it exits before listening or does not listen within `startup_timeout`, and
        ServiceUnavailable when it ended after listening and `restart` is False (a job was using it)."""
        if self.process is not None and self.process.poll() is not None:
            code = self.process.returncode
            was_listening = self.endpoint is not None
            tail = self.log_tail(4)
            self._forget()
            if not was_listening:
                raise ServiceError(f"The engine service failed to start (exit code {code}). {tail}")
            if not restart:
                raise ServiceUnavailable(f"The engine service stopped unexpectedly (exit code {code}); nothing was "
                                         f"changed. Run again to start a new one. {tail}".strip())
        if self.process is None:
            self.start()
        if self.endpoint is not None:
            return self.endpoint
        if self._port_file.is_file():
            try:
                info = json.loads(self._port_file.read_text())
                port = int(info["port"])
            except (OSError, ValueError, KeyError, TypeError):
                return None  # being written
            self.endpoint = Endpoint(f"http://127.0.0.1:{port}", self._token)
            log.info("engine service ready on port %d (pid %d) after %.1f s", port, self.process.pid,
                     time.monotonic() - self._started_at)
            return self.endpoint
        if time.monotonic() - self._started_at > self.startup_timeout:
            self.stop()
            raise ServiceError(f"The engine service did not start within {self.startup_timeout:.0f} s. "
                               f"{self.log_tail()}")
        return None

    def died(self) -> int | None:
        """The exit code if the service has ended since it listened (it is then forgotten: the next `poll()`
        starts a new one), else None."""
        if self.process is not None and self.process.poll() is not None:
            code = self.process.returncode
            self._forget()
            return code
        return None

    def log_tail(self, lines: int = 8) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        tail = self.log_path.read_text(errors="replace").strip().splitlines()[-lines:]
        return f"Its log ({self.log_path}) ends with:\n" + "\n".join(tail) if tail else ""

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the service: ask it (POST /shutdown), then terminate, then kill."""
        process = self.process
        if process is None:
            return
        if process.poll() is None and self.endpoint is not None:
            from .client import request

            try:
                request(self.endpoint, "POST", "/shutdown", timeout=min(2.0, timeout))
            except ServiceError:
                pass
        for action in ("wait", "terminate", "kill"):
            if action != "wait" and process.poll() is None:
                getattr(process, action)()
            try:
                process.wait(timeout / 2 if action == "wait" else timeout / 4)
                break
            except subprocess.TimeoutExpired:
                continue
        log.info("engine service stopped (pid %d, exit code %s)", process.pid, process.poll())
        self._forget()

    def _forget(self) -> None:
        self.process, self.endpoint = None, None
        if self._port_file is not None:
            for path in (self._port_file, self._port_file.with_name(self._port_file.name + ".tmp")):
                try:
                    path.unlink()
                except OSError:
                    pass
