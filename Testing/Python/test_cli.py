"""The `braindiffseg` command line, run in-process through `BrainDiffSegCLI.main` on small synthetic BraTS-named
case folders: propagate (outputs on the input grid, summary JSON, overwrite protection, bad annotations, diffusion
with a tiny checkpoint, corrupt checkpoints), demo, train-ddpm and benchmark, plus the installed console script."""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from BrainDiffSegCLI import main
from conftest import LIB_PARENT
from BrainDiffSegLib.protocol import protocol_slices, region_dice

CASE = "BraTS2021_90001"
FAST = ["--ensemble", "1", "--device", "cpu", "--batch-size", "8"]
# a grid that is not the identity, so that "same grid" means something
AFFINE = np.array([[-0.9, 0, 0, 30.0], [0, 0.9, 0, -25.0], [0, 0, 2.5, -20.0], [0, 0, 0, 1]])


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory) -> Path:
    from conftest import write_tumour_case

    folder, _, _ = write_tumour_case(tmp_path_factory.mktemp("cases") / CASE, seed=3, affine=AFFINE)
    return folder


@pytest.fixture(scope="module")
def truth(case_dir) -> np.ndarray:
    return np.asarray(nib.load(str(case_dir / f"{CASE}_seg.nii.gz")).dataobj)


@pytest.fixture(scope="module")
def raw_run(case_dir, tmp_path_factory):
    """One `propagate --simulate-annotation 3 --method raw` run with every output requested."""
    out = tmp_path_factory.mktemp("raw")
    paths = {k: out / name for k, name in (("seg", "X.nii.gz"), ("unc", "U.nii.gz"), ("png", "O.png"),
                                           ("json", "S.json"))}
    argv = ["propagate", "--case", str(case_dir), "--simulate-annotation", "3", "--method", "raw",
            "--out", str(paths["seg"]), "--uncertainty", str(paths["unc"]), "--overlay", str(paths["png"]),
            "--json", str(paths["json"])] + FAST
    rc = main(argv)
    return rc, argv, paths


def _same_grid(path: Path, reference: Path):
    out, ref = nib.load(str(path)), nib.load(str(reference))
    assert out.shape == ref.shape, (path, out.shape, ref.shape)
    np.testing.assert_allclose(out.affine, ref.affine, atol=1e-5)
    return out


def _errors(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


# ------------------------------------------------------------------------------------------ console script

def test_console_script_is_installed():
    exe = shutil.which("braindiffseg", path=str(Path(sys.executable).parent)) or shutil.which("braindiffseg")
    if exe is None:
        pytest.fail("the braindiffseg console script is not installed (pip install -e .)")
    res = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    for command in ("propagate", "demo", "train-ddpm", "benchmark", "serve"):
        assert command in res.stdout


def test_product_commands_do_not_load_the_benchmarks():
    """`propagate`, `serve`, `web` and `inpaint` build their parsers without importing BrainDiffSegBench (before,
    every command imported it, and torch with it, to name the benchmark's methods); `benchmark` lists them."""
    code = """
import sys
from BrainDiffSegCLI import main
for argv in (["propagate", "--help"], ["serve", "--help"], ["web", "--help"], ["inpaint", "--help"], ["--help"]):
    try:
        main(argv)
    except SystemExit as done:
        assert done.code == 0, (argv, done.code)
print("BENCH", sorted(m for m in sys.modules if m.startswith("BrainDiffSegBench")))
main(["benchmark", "propagation", "--help"])
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "BENCH []" in res.stdout, res.stdout[-2000:]
    assert "hybrid-mlp" in res.stdout.split("BENCH")[1] and "growcut" in res.stdout.split("BENCH")[1]


@pytest.mark.parametrize("delay", [0.3, 0.7, 1.1, 1.5])
def test_ctrl_c_while_the_command_is_importing_is_one_line(tmp_path, delay):
    """Ctrl+C early in `braindiffseg serve` (still importing torch and the service), at several moments of the
    import: the one-line "Cancelled" message, no traceback, no abort, status 130 (should the address line already
    be out, the service's own clean stop: status 0). Before torch's import was held back from Ctrl-C, a try could
    end aborted by a KeyboardInterrupt thrown through torch's C++ code (status -6). Status -SIGINT after the line is
    CPython's own ending when the Ctrl-C landed in an `exec` of a string (see `BrainDiffSegCLI.command`; a shell
    reports it as 130 too). The command starts with Ctrl+C's default meaning, as from a terminal, even where the
    suite itself runs with SIGINT ignored (launched in the background without job control, e.g. `nohup ... &`):
    a process started with SIGINT ignored keeps ignoring it until the service installs its own handlers, so the
    signal of this test would be lost and the service would run on."""
    import os
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "BrainDiffSegCLI", "serve", "--port", "0", "--token", "t"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
                            env=dict(os.environ, PYTHONPATH=str(LIB_PARENT)),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait(20)
    assert "Traceback" not in out and "terminate called" not in out, out
    if "engine service on" in out:
        assert proc.returncode == 0 and "engine service stopped" in out, (proc.returncode, out)
    else:
        assert proc.returncode in (130, -signal.SIGINT) and "Cancelled (Ctrl-C)" in out, (proc.returncode, out)


def test_ctrl_c_held_back_is_raised_when_the_block_is_over():
    """The shield around torch's import: a SIGINT inside the block lets the block finish, then raises
    KeyboardInterrupt, and Python's own handler is back. Where SIGINT is not Python's default (ignored, or a host's
    handler) the block leaves it alone."""
    import os
    import signal

    from BrainDiffSegCLI import _ctrl_c_held_back

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        finished = []
        with pytest.raises(KeyboardInterrupt):
            with _ctrl_c_held_back():
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(1000):  # Python runs the handler between bytecodes: give it some
                    finished.append(len(finished))
        assert len(finished) == 1000
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with _ctrl_c_held_back():  # nothing pending: nothing raised
            pass

        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with _ctrl_c_held_back():
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_an_interrupt_wrapped_by_python_is_still_a_cancel(monkeypatch, caplog):
    """A Ctrl+C that lands while a class is being created reaches `main` as a RuntimeError caused by the
    KeyboardInterrupt: still status 130 and the one line; any other RuntimeError is not swallowed."""
    import BrainDiffSegCLI

    def wrapped(argv, propagator):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise RuntimeError("Error calling __set_name__ on 'Field' instance") from exc

    monkeypatch.setattr(BrainDiffSegCLI, "_main", wrapped)
    with caplog.at_level(logging.ERROR):
        assert main(["serve"]) == 130
    assert "Cancelled (Ctrl-C)" in caplog.text

    def broken(argv, propagator):
        raise RuntimeError("a real error")

    monkeypatch.setattr(BrainDiffSegCLI, "_main", broken)
    with pytest.raises(RuntimeError, match="a real error"):
        main(["serve"])


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "usage" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ propagate

def test_propagate_writes_every_output_on_the_case_grid(raw_run, case_dir, truth):
    rc, _, paths = raw_run
    assert rc == 0
    flair = case_dir / f"{CASE}_flair.nii.gz"
    seg = _same_grid(paths["seg"], flair)
    unc = _same_grid(paths["unc"], flair)
    labels = np.asarray(seg.dataobj)
    assert labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, 1, 2, 4} and {1, 2, 4} <= set(np.unique(labels))
    zs = protocol_slices(truth, 3)
    np.testing.assert_array_equal(labels[..., zs], truth[..., zs])  # annotated slices are the ground truth
    u = np.asarray(unc.dataobj)
    assert u.dtype == np.float32 and np.all((u >= 0) & (u <= 1 + 1e-5))
    assert not u[..., zs].any()
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_propagate_summary_json(raw_run, truth):
    _, _, paths = raw_run
    s = json.loads(paths["json"].read_text())
    assert s["case"] == CASE
    assert s["sequences"] == ["t1", "t1ce", "t2", "flair"]
    assert s["annotated_slices"] == protocol_slices(truth, 3)
    assert s["device"] == "cpu"
    assert set(s["dice"]) == {"WT", "TC", "ET"}
    assert s["dice"]["WT"] > 0.8 and s["dice"]["TC"] > 0.6 and s["dice"]["ET"] > 0.5, s["dice"]
    # the reported Dice is the Dice of the written volume
    labels = np.asarray(nib.load(str(paths["seg"])).dataobj)
    d = region_dice(labels, truth, s["annotated_slices"])
    assert s["dice"] == pytest.approx(d, abs=1e-4)
    assert s["seconds"] > 0 and {"load", "train_classifier", "predict", "total"} <= set(s["timings"])
    assert all(z not in s["annotated_slices"] for z in s["least_certain_slices"])


def test_propagate_refuses_to_overwrite_without_force(raw_run, caplog):
    _, argv, paths = raw_run
    before = {k: p.read_bytes() for k, p in paths.items()}
    with caplog.at_level(logging.ERROR):
        assert main(argv) == 2
    assert str(paths["seg"]) in _errors(caplog) and "--force" in _errors(caplog)
    assert {k: p.read_bytes() for k, p in paths.items()} == before


def test_propagate_refuses_an_existing_summary_before_any_work(raw_run, tmp_path, caplog):
    """Only the --json target exists: refused up front, nothing else written."""
    _, argv, paths = raw_run
    new = {k: tmp_path / p.name for k, p in paths.items()}
    new["json"].write_text("{}")
    argv = list(argv)
    for k in ("seg", "unc", "png", "json"):
        argv[argv.index(str(paths[k]))] = str(new[k])
    with caplog.at_level(logging.ERROR):
        assert main(argv) == 2
    assert str(new["json"]) in _errors(caplog)
    assert new["json"].read_text() == "{}"
    assert not new["seg"].exists() and not new["unc"].exists() and not new["png"].exists()


def test_propagate_overwrites_with_force(raw_run, tmp_path):
    _, argv, paths = raw_run
    out = tmp_path / "X.nii.gz"
    out.write_bytes(b"not a nifti")
    argv = list(argv)
    argv[argv.index(str(paths["seg"]))] = str(out)
    for k in ("unc", "png", "json"):  # only the segmentation
        i = argv.index(str(paths[k]))
        del argv[i - 1:i + 1]
    assert main(argv + ["--force"]) == 0
    np.testing.assert_array_equal(np.asarray(nib.load(str(out)).dataobj),
                                  np.asarray(nib.load(str(paths["seg"])).dataobj))  # same seed: same result


def test_propagate_with_an_annotation_file(case_dir, truth, tmp_path, capsys):
    zs = [7, 12, 17]
    ann = np.zeros_like(truth)
    ann[..., zs] = truth[..., zs]
    ann_path = tmp_path / "ann.nii.gz"
    nib.save(nib.Nifti1Image(ann, AFFINE), str(ann_path))
    out = tmp_path / "seg.nii.gz"
    js = tmp_path / "s.json"
    assert main(["propagate", "--case", str(case_dir), "--annotation", str(ann_path), "--method", "raw",
                 "--out", str(out), "--json", str(js)] + FAST) == 0
    s = json.loads(js.read_text())
    assert s["annotated_slices"] == zs
    assert s["dice"]["WT"] > 0.8, s["dice"]
    labels = np.asarray(_same_grid(out, ann_path).dataobj)
    np.testing.assert_array_equal(labels[..., zs], truth[..., zs])
    assert "Dice on the non-annotated slices: WT" in capsys.readouterr().out


def test_propagate_keeps_the_storage_order_of_the_inputs(tmp_path):
    """A case stored with the axial axis first: the output has the input's array shape and affine."""
    from conftest import synthetic_tumour_case, write_nifti

    images, label, _ = synthetic_tumour_case(seed=5)
    # array axes (z, x, y); voxel (k, i, j) -> world (i, j, 2.5 k)
    affine = np.array([[0, 1.0, 0, -30], [0, 0, 1.0, -30], [2.5, 0, 0, -20], [0, 0, 0, 1]])
    folder = tmp_path / "BraTS2021_90002"
    for role, img in images.items():
        write_nifti(folder / f"BraTS2021_90002_{role}.nii.gz", np.moveaxis(img, -1, 0).copy(), affine)
    write_nifti(folder / "BraTS2021_90002_seg.nii.gz", np.moveaxis(label, -1, 0).copy(), affine)
    out, js = tmp_path / "seg.nii.gz", tmp_path / "s.json"
    assert main(["propagate", "--case", str(folder), "--simulate-annotation", "3", "--method", "raw",
                 "--out", str(out), "--json", str(js)] + FAST) == 0
    seg = _same_grid(out, folder / "BraTS2021_90002_flair.nii.gz")
    assert seg.shape == (24, 64, 64)
    zs = protocol_slices(label, 3)
    assert json.loads(js.read_text())["annotated_slices"] == zs
    labels = np.moveaxis(np.asarray(seg.dataobj), 0, -1)
    np.testing.assert_array_equal(labels[..., zs], label[..., zs])
    assert region_dice(labels, label, zs)["WT"] > 0.8


def test_annotation_on_another_grid_is_refused(case_dir, truth, tmp_path, caplog):
    ann = np.zeros(truth.shape[:2] + (truth.shape[2] - 2,), np.uint8)
    ann[30:40, 25:35, 10] = 2
    ann_path = tmp_path / "other_grid.nii.gz"
    nib.save(nib.Nifti1Image(ann, AFFINE), str(ann_path))
    out = tmp_path / "seg.nii.gz"
    with caplog.at_level(logging.ERROR):
        rc = main(["propagate", "--case", str(case_dir), "--annotation", str(ann_path), "--method", "raw",
                   "--out", str(out)] + FAST)
    assert rc == 2
    msg = _errors(caplog)
    assert str(ann_path) in msg and "shape" in msg
    assert not out.exists()


def test_annotation_with_another_affine_is_refused(case_dir, truth, tmp_path, caplog):
    ann = np.zeros_like(truth)
    ann[..., 12] = truth[..., 12]
    shifted = AFFINE.copy()
    shifted[0, 3] += 5.0
    ann_path = tmp_path / "shifted.nii.gz"
    nib.save(nib.Nifti1Image(ann, shifted), str(ann_path))
    with caplog.at_level(logging.ERROR):
        rc = main(["propagate", "--case", str(case_dir), "--annotation", str(ann_path), "--method", "raw",
                   "--out", str(tmp_path / "seg.nii.gz")] + FAST)
    assert rc == 2
    assert str(ann_path) in _errors(caplog)


def test_annotation_without_tumour_is_refused(case_dir, truth, tmp_path, caplog):
    ann_path = tmp_path / "empty.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros_like(truth), AFFINE), str(ann_path))
    out = tmp_path / "seg.nii.gz"
    with caplog.at_level(logging.ERROR):
        rc = main(["propagate", "--case", str(case_dir), "--annotation", str(ann_path), "--method", "raw",
                   "--out", str(out)] + FAST)
    assert rc == 2
    assert "no tumour" in _errors(caplog)
    assert not out.exists()


def test_propagate_needs_an_annotation(case_dir, tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        rc = main(["propagate", "--case", str(case_dir), "--method", "raw", "--out", str(tmp_path / "s.nii.gz")])
    assert rc == 2
    assert "--annotation" in _errors(caplog) and "--simulate-annotation" in _errors(caplog)


def test_simulated_annotation_needs_ground_truth(tmp_path, caplog):
    from conftest import write_tumour_case

    folder, _, _ = write_tumour_case(tmp_path / "BraTS2021_90003", seg=False)
    with caplog.at_level(logging.ERROR):
        rc = main(["propagate", "--case", str(folder), "--simulate-annotation", "2", "--method", "raw",
                   "--out", str(tmp_path / "s.nii.gz")])
    assert rc == 2
    assert "ground truth" in _errors(caplog) and str(folder) in _errors(caplog)


def test_missing_case_folder(tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        rc = main(["propagate", "--case", str(tmp_path / "nowhere"), "--simulate-annotation", "2",
                   "--out", str(tmp_path / "s.nii.gz")])
    assert rc == 2
    assert str(tmp_path / "nowhere") in _errors(caplog)


def test_propagate_with_a_diffusion_checkpoint(case_dir, truth, tiny_checkpoint, tmp_path):
    out, js = tmp_path / "seg.nii.gz", tmp_path / "s.json"
    assert main(["propagate", "--case", str(case_dir), "--simulate-annotation", "3", "--method", "diffusion",
                 "--checkpoint", str(tiny_checkpoint), "--blocks", "1,2", "--timesteps", "50",
                 "--out", str(out), "--json", str(js)] + FAST) == 0
    labels = np.asarray(_same_grid(out, case_dir / f"{CASE}_t1.nii.gz").dataobj)
    s = json.loads(js.read_text())
    assert s["annotated_slices"] == protocol_slices(truth, 3)
    # an untrained tiny backbone plus the intensities still finds the tumour
    assert s["dice"]["WT"] > 0.7, s["dice"]
    assert s["dice"] == pytest.approx(region_dice(labels, truth, s["annotated_slices"]), abs=1e-4)


def test_corrupt_checkpoint_is_refused(case_dir, tiny_checkpoint, tmp_path, caplog):
    bad = tmp_path / "bad_ckpt"
    shutil.copytree(tiny_checkpoint, bad)
    (bad / "model.safetensors").write_bytes(b"\x00garbage" * 100)
    out = tmp_path / "seg.nii.gz"
    with caplog.at_level(logging.ERROR):
        rc = main(["propagate", "--case", str(case_dir), "--simulate-annotation", "2", "--method", "diffusion",
                   "--checkpoint", str(bad), "--out", str(out)] + FAST)
    assert rc == 2
    assert str(bad / "model.safetensors") in _errors(caplog)
    assert not out.exists()


def test_missing_checkpoint_is_refused(case_dir, tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        rc = main(["propagate", "--case", str(case_dir), "--simulate-annotation", "2", "--method", "diffusion",
                   "--checkpoint", str(tmp_path / "no_ckpt"), "--out", str(tmp_path / "seg.nii.gz")] + FAST)
    assert rc == 2
    assert str(tmp_path / "no_ckpt") in _errors(caplog)


# ------------------------------------------------------------------------------------------ demo

def test_demo(case_dir, truth, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--case", str(case_dir), "--out-dir", str(out), "--method", "raw", "--k", "2"] + FAST) == 0
    for name in ("segmentation.nii.gz", "uncertainty.nii.gz"):
        _same_grid(out / name, case_dir / f"{CASE}_flair.nii.gz")
    assert (out / "overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    s = json.loads((out / "summary.json").read_text())
    assert s["annotated_slices"] == protocol_slices(truth, 2)
    printed = capsys.readouterr().out
    line = next(ln for ln in printed.splitlines() if ln.startswith("Dice on the non-annotated slices"))
    assert f"WT {s['dice']['WT']:.3f}" in line
    assert str(out / "segmentation.nii.gz") in printed
    # the demo overwrites its own outputs when run again
    assert main(["demo", "--case", str(case_dir), "--out-dir", str(out), "--method", "raw", "--k", "2"] + FAST) == 0


# ------------------------------------------------------------------------------------------ train-ddpm

@pytest.fixture
def unlabelled(tmp_path, case_writer):
    root = tmp_path / "data"
    case_writer(root / "Case_A", shape=(40, 40, 10), seed=1)
    case_writer(root / "Case_B", roles=("t1ce", "flair"), shape=(40, 40, 10), seed=2)
    return root


@pytest.fixture
def single_process(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)


def test_train_ddpm(unlabelled, tmp_path, single_process):
    """Two steps of a narrow 2-level U-Net (on the default 128 x 128 grid: --channels sets only the widths)."""
    from BrainDiffSegLib.model import load_backbone

    out = tmp_path / "run"
    argv = ["train-ddpm", "--data", str(unlabelled), "--out", str(out), "--steps", "2", "--batch-size", "2",
            "--channels", "16,32", "--device", "cpu", "--save-every", "2"]
    assert main(argv) == 0
    unet, cfg = load_backbone(out)
    assert cfg.block_out_channels == (16, 32) and cfg.sample_size == 128
    assert cfg.training["steps"] == 2 and cfg.training["cases"] == 2
    # self-attention stays at the lowest resolution, as in the default architecture
    assert cfg.attention_levels == (1,)
    assert any("Attn" in type(b).__name__ for b in unet.down_blocks)
    # a second run with more steps resumes
    assert main(argv[:argv.index("--steps") + 1] + ["3"] + argv[argv.index("--steps") + 2:]) == 0
    assert load_backbone(out)[1].training["steps"] == 3


def test_train_ddpm_with_widths_that_do_not_fit_the_group_norm(unlabelled, tmp_path, single_process, caplog):
    """--channels 8,16 with the default 16 GroupNorm groups: a clear error (exit 2), not a traceback."""
    with caplog.at_level(logging.ERROR):
        rc = main(["train-ddpm", "--data", str(unlabelled), "--out", str(tmp_path / "run"), "--steps", "1",
                   "--channels", "8,16", "--device", "cpu"])
    assert rc == 2
    assert "--channels" in _errors(caplog)


def test_train_ddpm_without_cases(tmp_path, single_process, caplog):
    empty = tmp_path / "empty"
    empty.mkdir()
    with caplog.at_level(logging.ERROR):
        rc = main(["train-ddpm", "--data", str(empty), "--out", str(tmp_path / "run"), "--steps", "1",
                   "--device", "cpu"])
    assert rc == 2
    assert str(empty) in _errors(caplog)


# ------------------------------------------------------------------------------------------ benchmark

def test_benchmark_propagation_command(case_dir, tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["benchmark", "propagation", "--data", str(case_dir), "--k", "1", "--methods", "raw-mlp",
                 "--out", str(out)] + FAST) == 0
    records = json.loads((out / "results.json").read_text())["records"]
    assert [(r["case"], r["k"], r["method"]) for r in records] == [(CASE, 1, "raw-mlp")]
    assert "| raw-mlp | 1 | 1 |" in capsys.readouterr().out


def test_unavailable_or_unknown_device_is_a_clear_error():
    import torch

    from BrainDiffSegLib.device import pick_device
    from BrainDiffSegLib.errors import InputError

    for device in (["cuda"] if not torch.cuda.is_available() else []) + ["tpu9"]:
        with pytest.raises(InputError, match=device):
            pick_device(device)
    assert pick_device("cpu").type == "cpu"
