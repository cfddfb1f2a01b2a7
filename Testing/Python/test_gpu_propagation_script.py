"""scripts/gpu_propagation.sh (issue 25's GPU targets, run on a lent device) on this CPU: end to end on a synthetic
case, without ITK (the device has none), and what comes back in $OUT."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import write_tumour_case


def _run(repo_root: Path, tmp_path: Path, **env) -> subprocess.CompletedProcess:
    no_itk = tmp_path / "no_itk"
    (no_itk / "itk").mkdir(parents=True, exist_ok=True)
    (no_itk / "itk" / "__init__.py").write_text('raise ImportError("no ITK on the device")\n')
    full = {**os.environ, "DEVICE": "cpu", "SKIP_INSTALL": "1", "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(no_itk), **env}
    return subprocess.run(["bash", str(repo_root / "scripts/gpu_propagation.sh")], env=full, capture_output=True,
                          text=True, timeout=600)


def test_gpu_propagation_script_on_cpu(tmp_path, repo_root, tiny_checkpoint):
    case, _, _ = write_tumour_case(tmp_path / "case")
    out = tmp_path / "out"
    res = _run(repo_root, tmp_path, CASE=str(case), OUT=str(out),
               UPDATE_ARGS=f"--preset quick --method diffusion --checkpoint {tiny_checkpoint} --blocks 1,2")
    assert res.returncode == 0, res.stdout + res.stderr
    assert {p.name for p in out.iterdir()} == {"propagation.log", "update_warm", "update_cold", "speed"}
    log = (out / "propagation.log").read_text()
    assert log.startswith("python ") and "torch" in log.splitlines()[0] and "failed" not in log
    warm = json.loads((out / "update_warm" / "update.json").read_text())
    cold = json.loads((out / "update_cold" / "update.json").read_text())
    assert warm["growcut"] == [] and cold["growcut"] == []  # ITK is not importable here, as on the device
    assert warm["warm_up_seconds"] > 0 and cold["warm_up_seconds"] is None
    assert warm["options"]["device"] == "cpu" and warm["options"]["ensemble"] == 2  # the quick preset, as asked
    assert [r["dice"] for r in warm["runs"]] == [r["dice"] for r in cold["runs"]]
    assert (out / "update_warm" / "update.md").read_text().count("warm-up run") == 1
    speed = json.loads((out / "speed" / "speed.json").read_text())
    assert "first" in json.dumps(speed) and (out / "speed" / "speed.md").is_file()
    assert all(p.stat().st_size <= 16 * 2**20 for p in out.rglob("*") if p.is_file())  # what may come back


def test_gpu_propagation_script_without_the_case(tmp_path, repo_root):
    res = _run(repo_root, tmp_path, CASE=str(tmp_path / "missing"), OUT=str(tmp_path / "out"))
    assert res.returncode == 2 and "PACK=case bash scripts/gpu_prepare.sh" in res.stdout + res.stderr
    assert "no case at" in (tmp_path / "out" / "propagation.log").read_text()  # the log comes back too
