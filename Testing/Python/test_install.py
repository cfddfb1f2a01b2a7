"""The project as a user installs it: `pip install .` (not editable) gives a working `braindiffseg` outside the source
tree - the packages and the bundled resources (backbone, icon, .ui) come from the installed copy.

The wheel is built from a copy of the files a fresh clone has and installed with this environment's setuptools and
dependencies (`--no-deps --no-build-isolation --target`: nothing is downloaded), then run from another working
directory with `python -S` and PYTHONPATH = the installed copy + this environment's site-packages, so neither the
source tree nor the editable install's import hook (a .pth file, which -S skips) can be used.
"""
from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig

import pytest

from conftest import REPO, write_tumour_case

CHECK = """
import sys
from pathlib import Path
target, repo = Path(sys.argv[1]), Path(sys.argv[2])
import BrainDiffSegBench, BrainDiffSegCLI, BrainDiffSegLib, BrainDiffSegSlicer, BrainDiffSegWeb
from BrainDiffSegLib.model import read_config
from BrainDiffSegLib.resources import default_checkpoint, resources_dir
ours = [m for m in sys.modules.values() if getattr(m, "__name__", "").startswith("BrainDiffSeg")]
outside = [m.__name__ for m in ours if getattr(m, "__file__", None) and target not in Path(m.__file__).parents]
assert not outside, outside
assert not any(p and Path(p).resolve() in (repo, repo / "BrainDiffSeg") for p in sys.path), sys.path
assert target in resources_dir().parents, resources_dir()
assert (resources_dir() / "Icons" / "BrainDiffSeg.png").is_file()
assert (resources_dir() / "UI" / "BrainDiffSeg.ui").is_file()
cfg = read_config(default_checkpoint())
assert (default_checkpoint() / "model.safetensors").stat().st_size > 1e6
print("ok", cfg.sample_size)
"""


def _checkout(dest):
    """The files a fresh clone would have (tracked, and new files git does not ignore), so that no build/ or
    *.egg-info left in the working tree can leak into the wheel; without git, the tree minus the usual leftovers."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                cwd=str(REPO), capture_output=True, check=True, timeout=60).stdout
        files = [f for f in listed.decode().split("\0") if f and (REPO / f).is_file()]
    except (OSError, subprocess.CalledProcessError):
        shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__",
                                                                  "out", "runs"))
        return dest
    for f in files:
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, dest / f)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    source = _checkout(tmp_path_factory.mktemp("checkout") / "braindiffseg")
    target = tmp_path_factory.mktemp("site")
    run = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--no-compile", "--target", str(target), str(source)],
                         capture_output=True, text=True, timeout=300, cwd=str(target))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    site_packages = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]] + site.getsitepackages()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRAINDIFFSEG_MODEL")}
    env["PYTHONPATH"] = os.pathsep.join([str(target)] + list(dict.fromkeys(site_packages)))
    env["OMP_NUM_THREADS"] = "1"
    return target, env


def _run(installed, args, cwd, timeout=300):
    target, env = installed
    return subprocess.run([sys.executable, "-S"] + args, capture_output=True, text=True, timeout=timeout,
                          cwd=str(cwd), env=env)


def test_installed_copy_has_the_packages_and_resources(installed, tmp_path):
    target, _ = installed
    run = _run(installed, ["-c", CHECK, str(target), str(REPO)], tmp_path)
    assert run.returncode == 0 and run.stdout.startswith("ok 128"), run.stderr[-3000:]


def test_installed_command_runs_outside_the_source_tree(installed, tmp_path):
    target, _ = installed
    script = target / "bin" / "braindiffseg"
    assert script.is_file()
    helped = _run(installed, [str(script), "--help"], tmp_path)
    assert helped.returncode == 0, helped.stderr[-3000:]
    assert all(c in helped.stdout for c in ("propagate", "demo", "train-ddpm", "benchmark", "web"))
    folder, _, _ = write_tumour_case(tmp_path / "BraTS2021_95001", seed=2)
    out = tmp_path / "out"
    run = _run(installed, [str(script), "propagate", "--preset", "quick", "--device", "cpu", "--case", str(folder),
                           "--simulate-annotation", "3", "--out", str(out / "seg.nii.gz"),
                           "--overlay", str(out / "o.png"), "--json", str(out / "s.json")], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((out / "s.json").read_text())
    assert summary["dice"]["WT"] > 0.8, summary
    assert (out / "o.png").read_bytes()[:4] == b"\x89PNG"
    # the demo, with the bundled backbone of the installed copy (diffusion features)
    demo = _run(installed, [str(script), "demo", "--case", str(folder), "--k", "2", "--ensemble", "1",
                            "--device", "cpu", "--out-dir", str(tmp_path / "demo")], tmp_path)
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert json.loads((tmp_path / "demo" / "summary.json").read_text())["dice"]["WT"] > 0.7
