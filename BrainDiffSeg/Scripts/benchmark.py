"""The benchmarks of `braindiffseg benchmark ...`, run through the BrainDiffSeg Slicer module.

    Slicer --no-main-window --python-script BrainDiffSeg/Scripts/benchmark.py -- propagation --k 3 --out OUT ...
    python BrainDiffSeg/Scripts/benchmark.py propagation --k 3 --out OUT ...      # without Slicer (slicer-core)

The arguments are those of `braindiffseg benchmark` (propagation, features, fewshot, speed). In the propagation
benchmark the classifier methods (diffusion-mlp, raw-mlp) go through `BrainDiffSegLogic.propagate` on MRML nodes
(`BrainDiffSegSlicer.headless.benchmarkPropagator`: volumes loaded by the Logic, the annotation painted into a
segmentation, the result read back from the new segmentation node); the other methods and benchmarks run the engine
as the command line (`BrainDiffSegCLI`) does. Inside the Slicer application the Logic works on the application's
scene; under plain Python on a slicer-core scene of its own (`BrainDiffSegSlicer.headless.HeadlessScene`).
Exit status: 0 on success, 2 for bad input, 1 for any other failure.
"""
from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[1]  # BrainDiffSeg/: BrainDiffSegLib, BrainDiffSegSlicer, BrainDiffSegCLI
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))


def main(argv: list[str]) -> int:
    from BrainDiffSegCLI import main as cli_main
    from BrainDiffSegSlicer.compat import SLICER_APPLICATION
    from BrainDiffSegSlicer.headless import HeadlessScene, benchmarkPropagator
    from BrainDiffSegSlicer.logic import BrainDiffSegLogic

    if SLICER_APPLICATION:  # the application's scene and module logics
        return cli_main(["benchmark"] + list(argv), propagator=benchmarkPropagator(BrainDiffSegLogic()))
    with HeadlessScene() as headless:
        return cli_main(["benchmark"] + list(argv), propagator=benchmarkPropagator(headless.logic()))


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
        from BrainDiffSegSlicer.compat import SLICER_APPLICATION as in_slicer
    except Exception:  # noqa: BLE001 - the Slicer layer itself failed to import
        in_slicer = False
    if in_slicer:
        import slicer

        slicer.util.exit(code)
    sys.exit(code)
