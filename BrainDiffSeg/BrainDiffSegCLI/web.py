"""`braindiffseg web`: the browser annotator (BrainDiffSegWeb, trame-slicer), imported only when this command runs."""
from __future__ import annotations

from BrainDiffSegLib.options import add_arguments, options_from_arguments


def add_parser(sub) -> None:
    p = sub.add_parser("web", help="the browser annotator: paint, propagate and review a case (trame-slicer)")
    p.add_argument("--case", help="case folder (BraTS, BraTS 2023 or LGG layout)")
    for role in ("t1", "t1ce", "t2", "flair"):
        p.add_argument(f"--{role}", metavar="FILE", help=f"{role.upper()} image (instead of --case)")
    p.add_argument("--out", help="folder for saved segmentations (default: the case folder)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--brush", type=float, default=3.0, help="brush diameter in mm (one axial slice thick)")
    p.add_argument("--fast", action="store_true", help="the same as --preset quick (a quick preview; also for tests)")
    p.add_argument("--server", metavar="URL", help="run the engine on this engine service (`braindiffseg serve`, e.g. a "
                   "GPU machine: https://HOST:PORT) instead of in this process")
    p.add_argument("--server-token", help="the service's token (default: $BRAINDIFFSEG_TOKEN)")
    p.add_argument("--server-ca", metavar="PEM", help="the service's certificate, to trust a self-signed one")
    p.add_argument("--local-service", action="store_true",
                   help="run the engine in a private engine service process on this computer")
    add_arguments(p)


def options(a):
    """The propagation options of the parsed command line; --fast is --preset quick (flags given override it)."""
    if a.fast:
        a.preset = "quick"
    return options_from_arguments(a)


def run(a) -> int:
    from BrainDiffSegLib.errors import InputError

    opts = options(a)
    try:  # lazy: the annotator needs slicer-core and trame-slicer (the `web` extra), the engine does not
        import BrainDiffSegWeb
    except ImportError as exc:
        raise InputError(f"The browser annotator needs the 'web' extra (pip install -e .[web]): {exc}") from exc
    return BrainDiffSegWeb.run(a, opts)
