"""`braindiffseg serve`: the engine service (`BrainDiffSegService.server`; the same as
`python -m BrainDiffSegService serve`, which the Slicer panel starts with Slicer's own Python)."""
from __future__ import annotations


def add_parser(sub) -> None:
    from BrainDiffSegService.server import add_arguments

    p = sub.add_parser("serve", help="the engine service: propagation and inpainting over authenticated HTTP(S) "
                                     "for the Slicer panel, the browser annotator or scripts (docs/SERVICE.md)")
    add_arguments(p)


def run(a) -> int:
    from BrainDiffSegLib.errors import InputError

    try:
        from BrainDiffSegService.server import run as serve
    except ImportError as exc:  # pragma: no cover - the service extra is part of the dependencies
        raise InputError(f"The engine service needs FastAPI and uvicorn (pip install fastapi uvicorn): {exc}") from exc
    return serve(a)
