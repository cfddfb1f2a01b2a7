"""How long each tick of the Slicer panel's timer blocks, on a full case through the panel's code path.

The Logic (slicer-core, no Qt) reads the case into MRML nodes, the truth is painted on the k protocol slices, and
the propagation runs on a private local engine service while this script calls what the panel's timer calls
(`PanelModel.tick`: the Logic's job controller polled, and in the last tick what the panel does with the result),
then waits the interval the controller asks for. Reported per run: the seconds the click takes (reading the
scene), the whole run, and the longest ticks with the stage each ended in. Run twice: the first sends the volume,
the second is an update (the service has it).

    python scripts/panel_ticks.py [--case DIR] [--k 3] [--preset quick] --out docs/results/update_service/panel_ticks.md
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "BrainDiffSeg"))


def main() -> int:
    from BrainDiffSegLib.options import preset
    from BrainDiffSegLib.protocol import simulate_annotation
    from BrainDiffSegLib.resources import data_root
    from BrainDiffSegBench.report import machine
    from BrainDiffSegSlicer.headless import HeadlessScene
    from BrainDiffSegSlicer.panel import PanelModel

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", default=str(data_root() / "brats2021" / "BraTS2021_00006"))
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--preset", default="quick", help="options preset (the ticks do not depend on it)")
    ap.add_argument("--out", required=True, help="Markdown report (a .json beside it)")
    a = ap.parse_args()

    import slicer

    runs = []
    with HeadlessScene() as headless:
        logic = headless.logic()
        logic.useLocalService()
        try:
            nodes = logic.loadCase(a.case, loadGroundTruth=True)
            truth = logic.toEngineArray(slicer.util.arrayFromVolume(nodes.pop("seg")), 2)
            annotation, _ = simulate_annotation(truth, a.k)
            painted = logic.paintTumourSegments(nodes["flair"], annotation)
            options = replace(preset(a.preset), device="cpu")
            for name in ("first (the volume sent)", "update (the service has the volume)"):
                t0 = time.perf_counter()
                job = logic.startPropagation(nodes, painted, options, createUncertainty=True)
                click = time.perf_counter() - t0
                ticks, model, end = [], PanelModel(logic), None
                while end is None:
                    t = time.perf_counter()
                    end = model.tick()  # the panel's timer (minus the Qt setters)
                    ticks.append((time.perf_counter() - t, job.state.stage))
                    time.sleep(max(job.state.next_poll_ms, 1) / 1000)
                assert job.state.status == "done", job.state
                longest = sorted(ticks, reverse=True)[:6]
                runs.append({"run": name, "click_seconds": round(click, 3),
                             "total_seconds": round(time.perf_counter() - t0, 2), "ticks": len(ticks),
                             "longest_ms": [[round(1000 * d, 1), s] for d, s in longest],
                             "transfer_max_ms": round(1000 * max(d for d, s in ticks if s != "adding the result"
                                                                 and s != "done"), 1)})
        finally:
            logic.stopEngine()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"case": Path(a.case).name, "k": a.k, "preset": a.preset, "machine": machine(), "runs": runs}
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    lines = [f"# Ticks of the panel's timer: {result['case']}, k = {a.k}, through a local engine service", "",
             f"Machine: {result['machine']}. `python scripts/panel_ticks.py --out {a.out}` (options preset "
             f"{a.preset}: the ticks do not depend on it). A tick's stage is the one it ended in: 'adding the "
             "result' ticks build the segmentation and the uncertainty array outside the scene, 'done' is the one "
             "that changes the scene and ends the panel's job.", "",
             "| run | click (reading the scene) | whole run | ticks | longest transfer tick | longest ticks |",
             "|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['run']} | {r['click_seconds']:.2f} s | {r['total_seconds']:.1f} s | {r['ticks']} | "
                     f"{r['transfer_max_ms']:.1f} ms | " + ", ".join(f"{d} ms ({s})" for d, s in r["longest_ms"]) + " |")
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
