"""Where the Logic's jobs run (`BrainDiffSegService.engines`), chosen the Slicer way.

- In the Slicer application, background jobs (the panel's) never run in Slicer's own process: its main thread holds
  Python's GIL while Qt is idle, so a worker thread there barely advances (Testing/Python/test_slicer_event_loop.py).
  They go to an engine service: a private local one started with Slicer's own Python (`PythonSlicer`, with the
  environment Slicer was started with, as `slicer.util.launchConsoleProcess` does), or a remote server (URL, token,
  and for a self-signed certificate its CA file).
- Elsewhere (slicer-core scripts, the browser annotator, `Slicer --no-main-window` batch scripts, which have no idle
  loop to starve) the engine may run in this process.

Nothing process-global changes here: the engine service's process is the one that imports torch.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys

import slicer

from .compat import SLICER_APPLICATION

log = logging.getLogger(__name__)
MODES = ("local", "remote")


def servicePython() -> str:
    """The Python that runs a local service: Slicer's PythonSlicer in the application, else this interpreter."""
    if SLICER_APPLICATION:
        found = shutil.which("PythonSlicer")
        if found:
            return found
        folder = os.path.dirname(sys.executable)
        for name in ("PythonSlicer", "PythonSlicer.exe"):
            if os.path.isfile(os.path.join(folder, name)):
                return os.path.join(folder, name)
    return sys.executable


def serviceEnvironment() -> dict | None:
    """The environment of a local service: the one Slicer was started with (PythonSlicer sets up its own), else
    None (this process's)."""
    if SLICER_APPLICATION and hasattr(slicer.util, "startupEnvironment"):
        try:
            return dict(slicer.util.startupEnvironment())
        except Exception:  # noqa: BLE001 - older Slicer: inherit ours
            log.debug("no startup environment", exc_info=True)
    return None


def inProcess():
    from BrainDiffSegService.engines import InProcessEngine

    return InProcessEngine()


def localService(threads: int = 0, extraArgs: tuple = ()):
    """A private engine service, started on first use (see `BrainDiffSegService.launcher`)."""
    from BrainDiffSegService.engines import ServiceEngine

    return ServiceEngine.local(servicePython(), threads, serviceEnvironment(), extra_args=extraArgs)


def remoteServer(url: str, token: str, cafile: str | None = None):
    """An engine server elsewhere (`braindiffseg serve` on a GPU machine; https beyond loopback)."""
    from BrainDiffSegService.engines import ServiceEngine

    return ServiceEngine.remote(url.strip(), token.strip(), (cafile or "").strip() or None)


def isInProcess(engine) -> bool:
    return getattr(engine, "name", "") == "in process"


def backgroundEngineFor(engine):
    """The engine a background job may use: in the Slicer application never the in-process one (a worker thread
    starves there): a local service instead. None: keep `engine`."""
    if SLICER_APPLICATION and isInProcess(engine):
        log.info("background jobs in the Slicer application go to a local engine service")
        return localService()
    return None
