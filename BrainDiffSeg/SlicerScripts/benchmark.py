"""The benchmarks of `braindiffseg benchmark ...`, run through the BrainDiffSeg Slicer module.

    Slicer --no-main-window --python-script BrainDiffSeg/SlicerScripts/benchmark.py -- propagation --k 3 --out OUT ...
    python BrainDiffSeg/SlicerScripts/benchmark.py propagation --k 3 --out OUT ...      # without Slicer (slicer-core)

The arguments are those of `braindiffseg benchmark` (propagation, features, fewshot, speed). In the propagation
benchmark the classifier methods (diffusion-mlp, raw-mlp) go through `BrainDiffSegLogic.propagate` on MRML nodes
(`benchmarkPropagator` below: volumes loaded by the Logic, the annotation painted into a
segmentation, the result read back from the new segmentation node); the other methods and benchmarks run the engine
as the command line (`BrainDiffSegCLI`) does. Inside the Slicer application the Logic works on the application's
scene; under plain Python on a slicer-core scene of its own (`BrainDiffSegSlicer.headless.HeadlessScene`).
Exit status: 0 on success, 2 for bad input, 1 for any other failure.
"""
from __future__ import annotations

import logging
import sys
import traceback
from dataclasses import replace
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[1]  # BrainDiffSeg/: BrainDiffSegLib, BrainDiffSegSlicer, BrainDiffSegCLI
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))


def benchmarkPropagator(logic):
    """A `BrainDiffSegBench` propagator (`propagator(case, annotation, method, options) -> labels`): runs
    'hybrid-mlp' / 'diffusion-mlp' / 'raw-mlp' (with the options `BrainDiffSegBench.propagation.method_options` gives
    them) through `logic.propagate` on MRML nodes of `logic.scene`, as a user would: the case's volumes loaded by
    `loadCase`, the simulated annotation painted into a segmentation (BraTS segment names for BraTS labels, else
    'Tumour N'; in seeds mode a Background segment too), the result read back from the new segmentation node. The nodes are removed again after each call."""
    import numpy as np

    from BrainDiffSegLib.constants import BACKGROUND_COLOR, BACKGROUND_NAME
    from BrainDiffSegSlicer.segments import BRATS_SEGMENTS, PALETTE

    def propagator(case, annotation, method, options):
        scene = logic.scene
        before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
        try:
            nodes = logic.loadCase(case.reference_path().parent)
            reference = nodes.get("flair") or next(iter(nodes.values()))
            axis = logic.axialAxis(reference)
            segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{case.name} painted")
            segmentation.CreateDefaultDisplayNodes()
            segmentation.SetReferenceImageGeometryParameterFromVolumeNode(reference)
            seeds = options.annotation_mode == "seeds"  # the Background segment holds the background seeds
            values = [int(v) for v in np.unique(annotation) if v != 0 and not (seeds and v == options.background_label)]
            brats = set(values) <= set(BRATS_SEGMENTS)
            painted = [(v, BRATS_SEGMENTS[v] if brats else (f"Tumour {i + 1}", PALETTE[i % len(PALETTE)]))
                       for i, v in enumerate(values)]
            if seeds:
                painted.append((options.background_label, (BACKGROUND_NAME, BACKGROUND_COLOR)))
            for value, (name, color) in painted:
                sid = segmentation.GetSegmentation().AddEmptySegment("", name, color)
                logic.setSegmentFromArray(segmentation, sid, logic.fromEngineArray(annotation == value, axis),
                                          reference)
            engine_method = {"hybrid-mlp": "diffusion", "diffusion-mlp": "diffusion", "raw-mlp": "raw"}[method]
            out = logic.propagate(nodes, segmentation, replace(options, method=engine_method))
            labels, _, _ = logic.labelArrayFromSegmentation(out, reference)
            labels = logic.toEngineArray(labels, axis)
            if not brats:  # segments were numbered 1..N in order: back to the annotation's values
                labels = np.asarray([0] + values, dtype=np.int16)[labels]
            return labels
        finally:
            for node in [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]:
                if node is not None and node.GetID() not in before and node.GetScene() is not None:
                    scene.RemoveNode(node)
    return propagator


def main(argv: list[str]) -> int:
    from BrainDiffSegCLI import main as cli_main
    from BrainDiffSegSlicer.compat import SLICER_APPLICATION
    from BrainDiffSegSlicer.headless import HeadlessScene
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
