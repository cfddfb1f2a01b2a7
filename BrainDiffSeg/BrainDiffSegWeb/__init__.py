"""BrainDiffSeg's browser annotator (`braindiffseg web`): paint, propagate and review a case in a web browser.

Built on trame-slicer (Slicer's MRML and views rendered server-side, shown in the browser); it calls the Slicer
module's Logic (`BrainDiffSegSlicer.logic`, on the trame app's scene and module logics) and through it the engine.
Not part of the Slicer extension. The quick preview (`--fast`) is the options preset 'quick', chosen by the command
line (`BrainDiffSegCLI.web`).
Needs the `web` extra: `pip install -e .[web]`.

Modules: `app` (the trame UI), `session` (loaded case, annotation mode, background propagation, saving), `planes`
(the slices of the three views and the strokes on them, numpy only), `paint_fix` (work-arounds for trame-slicer
2.0.0's brush).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def run(args, options) -> int:
    """The `braindiffseg web` command. args: the parsed command line (case / t1 / t1ce / t2 / flair / out / host /
    port / brush); options: the PropagationOptions to propagate with (`--fast`: already the 'quick' preset). Bad
    input raises InputError (exit code 2)."""
    from BrainDiffSegLib.constants import ROLES
    from BrainDiffSegLib.errors import InputError

    files = {role: getattr(args, role, None) for role in ROLES}
    files = {role: path for role, path in files.items() if path}
    if args.case and files:
        raise InputError("Give either --case DIR or sequence files (--t1/--t1ce/--t2/--flair), not both.")
    if not args.case and not files:
        raise InputError("Give --case DIR or at least one of --t1, --t1ce, --t2, --flair.")
    if args.brush <= 0:
        raise InputError(f"--brush {args.brush}: the brush diameter must be positive (millimetres).")
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise InputError(f"--out {args.out} exists and is not a folder.")

    log.info("propagation: method %s, %d MLPs, device %s", options.method, options.classifier.n_models,
             options.device)

    server = getattr(args, "server", None)
    token = getattr(args, "server_token", None) or os.environ.get("BRAINDIFFSEG_TOKEN", "")
    if server and not token:
        raise InputError("--server needs the service's token: --server-token T or $BRAINDIFFSEG_TOKEN.")

    def load(session):
        if server:  # where the engine runs (default: a worker thread of this process)
            session.logic.useRemoteServer(server, token, getattr(args, "server_ca", None))
        elif getattr(args, "local_service", False):
            session.logic.useLocalService()
        if args.case:
            session.load_case(args.case)
        else:
            session.load_files(files)

    from .app import serve

    # the panel's annotation choice: Automatic, unless --annotation-mode was given
    choice = vars(args).get("annotation-mode") or vars(args).get("annotation_mode") or "auto"
    serve(load, options=options, out_dir=args.out, host=args.host, port=args.port, brush_mm=args.brush,
          annotation_choice=choice)
    return 0
