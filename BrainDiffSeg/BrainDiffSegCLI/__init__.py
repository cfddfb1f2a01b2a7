"""The `braindiffseg` command: propagate, demo, train-ddpm, pack-slices, inpaint, train-inpaint, pack-crops,
benchmark, web, serve.

The one package that wires the engine (`BrainDiffSegLib`), the benchmarks (`BrainDiffSegBench`) and the browser
annotator (`BrainDiffSegWeb`, imported only by `braindiffseg web`). Each command lives in its own module
(`propagate`: propagate and demo, `train`: train-ddpm and pack-slices, `inpaint`: inpaint, train-inpaint and pack-crops,
`benchmark`, `web`, `serve`: the engine service of `BrainDiffSegService`), which adds its parser and runs it. The
propagation flags (`--preset`, `--method`, `--blocks`, `--ensemble`, ...) are generated from the options dataclasses
by `BrainDiffSegLib.options.add_arguments`; given flags override the chosen preset.

Exit status: 0 on success, 2 for bad input (a message, no traceback), 1 when a benchmark produced nothing, 130 when
cancelled with Ctrl-C (no half-written output: every output is written atomically; see `command` for the one case
where CPython ends the process by SIGINT instead, which a shell also reports as 130).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading

log = logging.getLogger("braindiffseg")


class _Parser(argparse.ArgumentParser):
    """No prefix matching of long flags (`--classifier-seed` must not silently mean `--classifier-seeds`); the
    sub-command parsers inherit the class."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def command_of(argv: list[str]) -> str | None:
    """The sub-command named in `argv` (its first word that is not an option), or None."""
    return next((w for w in argv if not w.startswith("-")), None)


def build_parser(command: str | None = "benchmark") -> argparse.ArgumentParser:
    """The parser of every command. The benchmark's own flags are added only when `command` is "benchmark": they
    name the benchmarks' methods, and BrainDiffSegBench, which defines them, imports torch and the engine (before,
    every command, `--help` included, spent 4 s importing the benchmarks). For another command, "benchmark" is
    listed with its help alone."""
    from . import benchmark, inpaint, propagate, serve, train, web

    ap = _Parser(prog="braindiffseg", description=__doc__.split("\n\n")[0])
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="command", required=True)
    propagate.add_parsers(sub)
    train.add_parser(sub)
    inpaint.add_parsers(sub)
    if command == "benchmark":
        benchmark.add_parser(sub)
    else:
        sub.add_parser("benchmark", help=benchmark.HELP, add_help=False)
    web.add_parser(sub)
    serve.add_parser(sub)
    return ap


CANCELLED = "Cancelled (Ctrl-C); no output was written or replaced by the step that was running."


def command() -> int:
    """The process's entry point (`braindiffseg`, `python -m BrainDiffSegCLI`): `main`, after importing torch with
    Ctrl-C held back until the import is over. A KeyboardInterrupt raised inside torch's import (C++ code calling
    Python) could abort the process ("terminate called after throwing ... KeyboardInterrupt", status -6; seen once in
    12 tries with Ctrl-C in the first 1.5 s). Held back, a Ctrl-C during the import cancels right after it (about
    1 s): the one line and status 130. Only here, in a process of its own: `main` called inside a host (the Slicer
    benchmark script) never touches the host's signal handlers.

    A Ctrl-C that lands in Python 3.11's `exec` of a string (as `dataclasses` does while a module is being imported)
    marks the interpreter even though `main` catches it, and CPython then ends the process by SIGINT after `main`
    has printed its line and returned 130, as it does for any uncaught Ctrl-C. A shell reports both as status 130;
    a parent process sees 130 or -SIGINT."""
    try:
        with _ctrl_c_held_back():
            import torch  # noqa: F401
    except KeyboardInterrupt:
        log.error(CANCELLED)
        return 130
    return main()


@contextlib.contextmanager
def _ctrl_c_held_back():
    """SIGINT only noted while the block runs, then raised as KeyboardInterrupt once the block is over. Left as it is
    where SIGINT does not have Python's default handler (ignored, or a host's own)."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    noted = []
    signal.signal(signal.SIGINT, lambda signum, frame: noted.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if noted:
        raise KeyboardInterrupt


def main(argv: list[str] | None = None, propagator=None) -> int:
    """The command line. `propagator`: see `BrainDiffSegBench.propagation.benchmark_propagation` (the Slicer
    benchmark script injects one that runs the classifier methods through the module's Logic)."""
    try:
        return _main(sys.argv[1:] if argv is None else list(argv), propagator)
    except Exception as exc:
        if not _interrupted(exc):
            raise
    except KeyboardInterrupt:
        pass
    # Ctrl-C, also while the command is still importing: outputs are written atomically
    log.error(CANCELLED)
    return 130


def _interrupted(exc: BaseException | None) -> bool:
    """Whether `exc` comes from a Ctrl-C: Python wraps a KeyboardInterrupt raised while a class is being created
    (as happens during an import) in a RuntimeError ("Error calling __set_name__ ...")."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _main(argv: list[str], propagator) -> int:
    from BrainDiffSegLib.errors import BrainDiffSegError

    a = build_parser(command_of(argv)).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if a.command in ("propagate", "demo", "benchmark"):
        # this process is the engine's own (the engine itself never changes process-global settings): reproducible
        # kernels where torch has them (CPU results do not depend on it; GPU ones may)
        from BrainDiffSegLib.device import adaptive_threads, set_threads, use_deterministic_algorithms

        use_deterministic_algorithms()
        if a.command in ("propagate", "demo") and not os.environ.get("OMP_NUM_THREADS"):
            # torch's choice on an idle machine, fewer while other work keeps the cores busy (results section 14)
            log.debug("%d torch thread(s)", set_threads(adaptive_threads()))
    try:
        from . import benchmark, inpaint, propagate, serve, train, web

        if a.command in ("train-ddpm", "pack-slices"):
            return train.run(a)
        if a.command in ("inpaint", "train-inpaint", "pack-crops"):
            return inpaint.run(a)
        if a.command == "benchmark":
            return benchmark.run(a, propagator)
        if a.command == "web":
            return web.run(a)
        if a.command == "serve":
            return serve.run(a)
        return propagate.run(a)
    except BrainDiffSegError as exc:
        log.error("%s", exc)
        return 2

if __name__ == "__main__":
    sys.exit(main())
