"""The benchmarks of `braindiffseg benchmark ...`, run through the BrainDiffSeg Slicer module.

    Slicer --no-main-window --python-script BrainDiffSeg/Scripts/benchmark.py -- propagation --k 3 --out OUT ...
    python BrainDiffSeg/Scripts/benchmark.py propagation --k 3 --out OUT ...      # without Slicer (slicer-core)

The arguments are those of `braindiffseg benchmark` (propagation, features, fewshot, speed). In the propagation
benchmark the classifier methods (diffusion-mlp, raw-mlp) go through `BrainDiffSegLogic.propagate` on MRML nodes
(`BrainDiffSeg.benchmarkPropagator`: volumes loaded by the Logic, the annotation painted into a segmentation, the
result read back from the new segmentation node); the other methods and benchmarks run the engine as the command line
does. Inside the Slicer application the application's scene is used; under plain Python a slicer-core scene is set
up (`BrainDiffSeg.headlessScene`). Exit status: 0 on success, 2 for bad input, 1 for any other failure.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import traceback
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[1]  # BrainDiffSeg/: the module file and BrainDiffSegLib
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))


def main(argv: list[str]) -> int:
    import BrainDiffSeg as M
    from BrainDiffSegLib import cli

    import slicer

    scene = contextlib.nullcontext(slicer.mrmlScene) if M.SLICER_APPLICATION else M.headlessScene()
    with scene:
        return cli.main(["benchmark"] + list(argv), propagator=M.benchmarkPropagator())


def run(argv: list[str]) -> int:
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse: --help (0) or bad arguments (2)
        rc = exc.code if isinstance(exc.code, int) else 1
    except Exception:  # noqa: BLE001 - any failure is reported and turned into a non-zero exit status
        logging.getLogger("braindiffseg").error("benchmark failed:\n%s", traceback.format_exc())
        rc = 1
    return int(rc or 0)


if __name__ == "__main__":
    code = run(sys.argv[1:])
    try:
        import BrainDiffSeg as _M

        in_slicer = _M.SLICER_APPLICATION
    except Exception:  # noqa: BLE001 - the module itself failed to import
        in_slicer = False
    if in_slicer:
        import slicer

        slicer.util.exit(code)
    sys.exit(code)
