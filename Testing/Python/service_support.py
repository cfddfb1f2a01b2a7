"""Engine services for the tests: started through the command line's interface (`braindiffseg serve --host H --port
P --token T`, as a user or a checker would), with one torch thread (so results equal the tests' in-process runs),
stopped at the end. `request()` is an independent client (urllib), for checking the HTTP API itself."""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from conftest import LIB_PARENT


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Service:
    process: subprocess.Popen
    url: str
    token: str
    log: Path
    cafile: str | None = None

    def endpoint(self, token: str | None = None):
        from BrainDiffSegService.client import Endpoint

        return Endpoint(self.url, self.token if token is None else token, self.cafile)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.is_file() else ""


def start_service(tmp_path: Path, *args: str, token: str | None = None, host: str = "127.0.0.1",
                  scheme: str = "http", cafile: str | None = None, wait: bool = True) -> Service:
    """`python -m BrainDiffSegCLI serve --host H --port P --token T --threads 1 ARGS`, waited for (GET /health)."""
    token = token or secrets.token_urlsafe(16)
    port = free_port()
    log = tmp_path / f"service-{port}.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(LIB_PARENT), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "BrainDiffSegCLI", "serve", "--host", host, "--port", str(port), f"--token={token}",
           "--threads", "1", *args]  # (a token may start with '-')
    with open(log, "wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(tmp_path))
    service = Service(process, f"{scheme}://127.0.0.1:{port}", token, log, cafile)
    if wait:
        end = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the service exited ({process.returncode}):\n{service.log_text()}")
            with contextlib.suppress(OSError):
                status, _ = request(service, "GET", "/health")
                if status == 200:
                    break
            if time.monotonic() > end:
                service.stop()
                raise RuntimeError(f"the service did not answer within 120 s:\n{service.log_text()}")
            time.sleep(0.2)
    return service


def request(service: Service, method: str, path: str, body: bytes | None = None, token: str | None = "",
            headers: dict | None = None, timeout: float = 30.0) -> tuple[int, dict]:
    """(status, JSON body) of one request with urllib; token '' means the service's, None means none."""
    import ssl

    headers = dict(headers or {})
    token = service.token if token == "" else token
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(service.url + path, data=body, method=method, headers=headers)
    context = ssl.create_default_context(cafile=service.cafile) if service.url.startswith("https") else None
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError):
        return status, {"raw": raw}
