"""Driving the browser annotator (`braindiffseg web`) from Playwright: shared by the end-to-end test
(`test_web.py`) and `scripts/web_screenshot.py`.

Starts the server as a subprocess, moves the axial, sagittal or coronal view to a slice and maps voxels to screen
pixels with the view geometry the app publishes (`view_xy_to_ras`), and paints masks with real mouse drags
(horizontal strokes every other row of a one-slice brush; `step` rows apart for sparse seeds). numpy only at
import; Playwright pages are passed in.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]

# BraTS labels painted "completely" on a slice, in painting order: with the editor's default overwrite mode a
# stroke removes its voxels from the other segments, so the whole tumour is painted as Edema first, then the tumour
# core as Enhancing tumour, then the necrotic core (panel rows: 0 Necrotic core, 1 Edema, 2 Enhancing tumour).
BRATS_PLAN = (("#segment-1", (1, 2, 4)), ("#segment-2", (1, 4)), ("#segment-0", (1,)))


def start_server(case_dir, port: int, out_dir, log_path, fast: bool = False, device: str = "cpu",
                 brush_mm: float = 3.0, extra_args=()) -> subprocess.Popen:
    """`braindiffseg web --case case_dir` on 127.0.0.1:port, output to log_path (headless EGL rendering)."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "BrainDiffSeg"), VTK_DEFAULT_OPENGL_WINDOW="vtkEGLRenderWindow")
    args = [sys.executable, "-m", "BrainDiffSegCLI", "web", "--case", str(case_dir), "--port", str(port),
            "--out", str(out_dir), "--device", device, "--brush", str(brush_mm), *(["--fast"] if fast else []),
            *extra_args]
    with open(log_path, "w") as log_file:
        return subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, env=env)


def stop_server(server: subprocess.Popen, log_path=None) -> None:
    """Terminate the server (kill it after 20 s); print the end of its log if it failed."""
    server.terminate()
    try:
        server.wait(20)
    except subprocess.TimeoutExpired:
        server.kill()
    if server.returncode not in (0, -15, None) and log_path is not None:
        print(Path(log_path).read_text()[-3000:])


@contextmanager
def app_page(case_dir, port: int, out_dir, log_path, chromium: str, brush_mm: float = 3.0):
    """A Chromium page on the annotator (`start_server` on `case_dir`: the fast preview on the CPU, the one-slice
    brush of `brush_mm`), open and ready (`open_app`); the browser is closed and the server stopped after the block
    (its log printed if it failed)."""
    from playwright.sync_api import sync_playwright

    server = start_server(case_dir, port, out_dir, log_path, fast=True, device="cpu", brush_mm=brush_mm)
    try:
        wait_for_port(port, server, 90)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                open_app(page, port)
                yield page
            finally:
                browser.close()
    finally:
        stop_server(server, log_path)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with code {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise AssertionError(f"the server did not listen on port {port} within {timeout} s")


def wait_for(page, expression: str, timeout_s: float = 30):
    page.wait_for_function(expression, timeout=timeout_s * 1000)


def state(page, key: str):
    """A trame state variable, as the browser sees it."""
    return page.evaluate(f"() => window.trame.state.get('{key}')")


# Counts the page's websocket sends: trame-rca queues view events in the browser and sends them one by one, so
# after a burst of mouse drags the events may reach the server long after Playwright has returned. A later state
# change (another segment, another slice) must wait until they have been sent, or strokes land there.
SEND_PROBE = """(() => {
  window.__bdsLastSend = performance.now();
  const send = WebSocket.prototype.send;
  WebSocket.prototype.send = function (...args) { window.__bdsLastSend = performance.now(); return send.apply(this, args); };
})();"""


def wait_sent(page, quiet_s: float = 1.5, timeout_s: float = 120) -> None:
    """Wait until the page has sent nothing for quiet_s (the queued view events have gone to the server)."""
    time.sleep(quiet_s)
    wait_for(page, f"performance.now() - window.__bdsLastSend > {1000 * quiet_s}", timeout_s)


def open_app(page, port: int, timeout_s: float = 60) -> None:
    """Load the app and wait until the axial view has published its geometry."""
    page.add_init_script(SEND_PROBE)
    page.goto(f"http://127.0.0.1:{port}/")
    page.wait_for_selector("#view-Red", timeout=timeout_s * 1000)
    wait_for(page, "window.trame.state.get('axial_xy_to_ras').length === 16", timeout_s)


VIEWS = {"axial": "Red", "sagittal": "Yellow", "coronal": "Green"}  # orientation -> the app's view tag


def plane_axes(affine: np.ndarray) -> dict[str, int]:
    """Orientation -> the IJK axis of a (non-oblique) NIfTI grid its slices cut: the axis closest to S, R, A."""
    directions = np.abs(np.asarray(affine, float)[:3, :3])
    axial = int(np.argmax(directions[2]))
    rest = [a for a in range(3) if a != axial]
    sagittal = max(rest, key=lambda a: directions[0, a])
    return {"axial": axial, "sagittal": sagittal, "coronal": next(a for a in rest if a != sagittal)}


def go_to_slice(page, orientation: str, index: int, affine: np.ndarray):
    """Show slice `index` of an orientation (typed into the panel) and return screen(u, v): the page pixel of the
    voxel whose IJK indices are (u, v) on the other two axes, in IJK order, and `index` on the slice's axis, from
    the view geometry the app publishes (RAS = M @ (x, y, 0, 1), view pixels from the bottom left)."""
    tag, axis = VIEWS[orientation], plane_axes(affine)[orientation]
    row = int(np.argmax(np.abs(np.asarray(affine)[:3, axis])))  # the RAS coordinate that axis moves
    ijk = [0, 0, 0, 1]
    ijk[axis] = index
    target = float((affine @ ijk)[row])
    wait_sent(page)
    page.locator(f"#{orientation}-slice").fill(str(index))
    page.keyboard.press("Enter")
    wait_for(page, f"window.trame.state.get('{orientation}_slice') === {index}")
    wait_for(page, f"(window.trame.state.get('view_xy_to_ras')['{tag}'] || [])[{4 * row + 3}] !== undefined && "
                   f"Math.abs(window.trame.state.get('view_xy_to_ras')['{tag}'][{4 * row + 3}] - {target}) < 0.01")
    m = np.array(state(page, "view_xy_to_ras")[tag]).reshape(4, 4)
    box = page.locator(f"#view-{tag}").bounding_box()
    to_xy = np.linalg.pinv(m[:3, :2])
    others = [a for a in range(3) if a != axis]

    def screen(u, v):
        voxel = [0.0, 0.0, 0.0, 1.0]
        voxel[axis], voxel[others[0]], voxel[others[1]] = index, u, v
        x, y = to_xy @ ((affine @ voxel)[:3] - m[:3, 3])
        return float(box["x"] + x), float(box["y"] + box["height"] - y)

    return screen


def go_to_axial(page, z: int, affine: np.ndarray):
    """Show axial slice z and return screen(i, j): the page pixel of voxel (i, j, z) (`go_to_slice`)."""
    return go_to_slice(page, "axial", z, affine)


def stroke_rows(mask2d: np.ndarray, step: int = 2) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Horizontal strokes (voxel (i, j) start and end) every `step` rows of a 2D mask (I x J), each run of the
    mask shortened by the brush radius so that the brush stays inside."""
    strokes = []
    js = np.flatnonzero(mask2d.any(0))
    if len(js) == 0:
        return strokes
    for j in range(js.min() + 1, js.max(), step) if js.max() - js.min() >= 2 else js:
        row = mask2d[:, j].astype(np.int8)
        edges = np.flatnonzero(np.diff(np.concatenate([[0], row, [0]])))
        for i0, i1 in zip(edges[::2], edges[1::2] - 1):
            if i1 - i0 >= 2:
                strokes.append(((i0 + 1, j), (i1 - 1, j)))
            else:
                strokes.append(((i0, j), (i1, j)))
    return strokes


def paint_mask(page, segment_selector: str, mask2d: np.ndarray, screen, step: int = 2) -> int:
    """Select a segment, the Paint tool, and paint mask2d with mouse drags; the number of strokes. Returns once
    the drags have been sent to the server."""
    wait_sent(page)
    page.locator(segment_selector).click()
    page.locator("#tool-paint").click()
    wait_sent(page, 0.5)
    strokes = stroke_rows(mask2d, step)
    for (i0, j0), (i1, j1) in strokes:
        page.mouse.move(*screen(i0, j0))
        page.mouse.down()
        page.mouse.move(*screen(i1, j1), steps=int(max(2, (i1 - i0) // 4)))
        page.mouse.up()
    wait_sent(page)
    return len(strokes)


def paint_slice(page, label2d: np.ndarray, screen, plan=BRATS_PLAN) -> int:
    """Paint one axial slice of a label map following plan: (segment selector, labels) in painting order."""
    return sum(paint_mask(page, selector, np.isin(label2d, labels), screen) for selector, labels in plan
               if np.isin(label2d, labels).any())


def wait_annotated(page, zs, timeout_s: float = 30) -> None:
    """Wait until the panel lists exactly the axial slices zs as annotated."""
    wait_for(page, f"JSON.stringify(window.trame.state.get('annotated_slices')) === '{list(map(int, zs))}'"
                   .replace(" ", ""), timeout_s)


def propagate(page, timeout_s: float = 150) -> None:
    """Click Propagate and wait until the job has finished (done, failed or cancelled)."""
    wait_sent(page)
    page.locator("#propagate").click()
    wait_for(page, "window.trame.state.get('running') === true", 10)
    wait_for(page, "window.trame.state.get('running') === false", timeout_s)
