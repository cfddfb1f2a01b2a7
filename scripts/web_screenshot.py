#!/usr/bin/env python
"""The README's screenshot of the browser annotator, end to end, as a user would make it.

Starts `braindiffseg web --case CASE --device cpu` (the default propagation: diffusion features, bundled backbone;
`--fast` for the quick preview), opens it in headless Chromium (Playwright, 1400 x 900), paints the three BraTS
classes completely on the k protocol slices (`protocol_slices(label, k)`) of the ground truth with real mouse drags
(Edema over the whole tumour, Enhancing tumour over the core, Necrotic core over the necrosis), clicks Propagate,
waits, shows an axial slice that was not painted (the one between two painted slices with the most tumour, or
--show-slice) and saves the screenshot (PNG, palette-quantised if it exceeds --max-kb). Then clicks Save and prints
the Dice (WT / TC / ET) of the saved result against the ground truth on the slices not painted, and the
propagation time.

    python scripts/web_screenshot.py --case ../shared/data/brats2021/BraTS2021_00006 --out docs/images/web_annotator.png

Needs the `web` extra, Playwright and Debian chromium (scripts/setup.sh); the case folder must hold the ground truth
(`*_seg.nii.gz`).
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "Testing" / "Python"), str(REPO / "BrainDiffSeg")]

from web_driver import (free_port, go_to_axial, open_app, paint_slice, propagate, start_server,  # noqa: E402
                        state, stop_server, wait_annotated, wait_for, wait_for_port)


def shown_slice(label: np.ndarray, zs: list[int]) -> int:
    """The unpainted slice halfway between two consecutive painted slices with the most tumour (or, with one
    painted slice, the unpainted slice with the most tumour)."""
    area = (label > 0).reshape(-1, label.shape[-1]).sum(0)
    candidates = [(z0 + z1) // 2 for z0, z1 in zip(zs, zs[1:]) if z1 - z0 >= 2]
    if not candidates:
        candidates = [z for z in range(label.shape[-1]) if z not in zs]
    return int(max(candidates, key=lambda z: area[z]))


def save_png(src: Path, out: Path, max_kb: int) -> None:
    """Write src to out as an optimised PNG; palette-quantised (256 colours) if it would exceed max_kb."""
    from PIL import Image

    image = Image.open(src).convert("RGB")
    image.save(out, optimize=True)
    if out.stat().st_size > max_kb * 1024:
        image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(out, optimize=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", default=str(REPO.parent / "shared" / "data" / "brats2021" / "BraTS2021_00006"),
                    help="BraTS case folder with its *_seg.nii.gz (default: BraTS2021_00006 of the shared data)")
    ap.add_argument("--out", default=str(REPO / "docs" / "images" / "web_annotator.png"), help="the screenshot")
    ap.add_argument("--k", type=int, default=3, help="number of painted axial slices (protocol_slices)")
    ap.add_argument("--port", type=int, default=0, help="server port (0: a free one)")
    ap.add_argument("--fast", action="store_true", help="the quick preview propagation (intensity features)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--brush", type=float, default=3.0, help="brush diameter in mm")
    ap.add_argument("--show-slice", type=int, default=None, help="axial slice shown (default: see shown_slice)")
    ap.add_argument("--sequence", default="flair", choices=("t1", "t1ce", "t2", "flair"), help="background")
    ap.add_argument("--timeout", type=float, default=900, help="seconds to wait for the propagation")
    ap.add_argument("--max-kb", type=int, default=400, help="quantise the PNG above this size")
    ap.add_argument("--json", default=None, help="also write the measurements here")
    ap.add_argument("--save-dir", default=None, help="where the app's Save writes (default: a temporary folder)")
    a = ap.parse_args(argv)

    import nibabel as nib
    from playwright.sync_api import sync_playwright

    from BrainDiffSegLib.protocol import protocol_slices, region_dice

    case = Path(a.case)
    segs = sorted(case.glob("*_seg.nii.gz"))
    if not segs:
        ap.error(f"no *_seg.nii.gz ground truth in {case}")
    chromium = shutil.which("chromium")
    if chromium is None:
        ap.error("Debian chromium not found (scripts/setup.sh installs it)")
    seg = nib.load(segs[0])
    label, affine = np.asarray(seg.dataobj).astype(np.int16), seg.affine
    zs = protocol_slices(label, a.k)
    z_show = a.show_slice if a.show_slice is not None else shown_slice(label, zs)
    port = a.port or free_port()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="braindiffseg-web-") as tmp:
        tmp = Path(tmp)
        log_path = tmp / "server.log"
        t0 = time.time()
        server = start_server(case, port, Path(a.save_dir or tmp / "out"), log_path, fast=a.fast, device=a.device, brush_mm=a.brush)
        try:
            wait_for_port(port, server, 120)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                open_app(page, port, 120)
                if a.sequence != "flair":
                    page.evaluate(f"() => window.trame.state.set('background_role', '{a.sequence}')")
                t_paint = time.time()
                strokes = 0
                for z in zs:
                    strokes += paint_slice(page, label[..., z], go_to_axial(page, z, affine))
                page.locator("#tool-none").click()
                wait_annotated(page, zs, 60)
                print(f"painted slices {zs} with {strokes} mouse drags in {time.time() - t_paint:.0f} s")

                t_prop = time.time()
                propagate(page, a.timeout)
                wall = time.time() - t_prop
                if state(page, "job_status") != "done":
                    raise SystemExit(f"propagation {state(page, 'job_status')}: {state(page, 'message')}")
                stage = state(page, "job_stage")
                match = re.search(r"done in ([0-9.]+) s", stage or "")
                seconds = float(match.group(1)) if match else wall
                result = {s["name"]: s["voxels"] for s in state(page, "result_segments")}
                print(f"propagated in {seconds:.1f} s ({wall:.1f} s until the panel showed it): {result}")

                go_to_axial(page, z_show, affine)
                page.mouse.move(5, 5)  # no brush cursor or hover in the views
                time.sleep(2.0)  # let the views render
                raw = tmp / "screenshot.png"
                page.screenshot(path=str(raw))

                page.locator("#save").click()
                wait_for(page, "window.trame.state.get('saved_files').length === 3", 60)
                saved = [Path(f) for f in state(page, "saved_files")]
                browser.close()
            save_png(raw, out, a.max_kb)
            pred = np.asarray(nib.load(saved[1]).dataobj)
        finally:
            stop_server(server, log_path)

    dice = region_dice(pred, label, zs)
    painted = region_dice(pred[..., zs], label[..., zs])  # the result keeps the painted slices
    summary = {"case": case.name, "k": a.k, "painted_slices": zs, "shown_slice": z_show,
               "method": "fast" if a.fast else "default", "propagation_s": round(seconds, 1),
               "dice_unpainted": {k: round(v, 3) for k, v in dice.items()},
               "dice_painted_slices": {k: round(v, 3) for k, v in painted.items()},
               "total_s": round(time.time() - t0, 1), "screenshot": str(out), "kb": out.stat().st_size // 1024}
    print("Dice on the slices not painted: " + ", ".join(f"{k} {v:.3f}" for k, v in dice.items()))
    print("Dice of the painted slices (painting accuracy): " + ", ".join(f"{k} {v:.3f}" for k, v in painted.items()))
    print(f"shown axial slice {z_show}; wrote {out} ({summary['kb']} KB)")
    if a.json:
        Path(a.json).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
