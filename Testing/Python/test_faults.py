"""Faults a new user hit (issue 24), one test each, named after the fault: never a silent wrong result.

Damaged weights (bytes overwritten inside the file, its header intact, as in the report: a copy of the bundled
backbone or inpainting model) are refused on load with one sentence and the command exits 2 writing nothing;
non-finite features, classifier losses, predictions and inpainted voxels stop the engine with an error instead of
writing NaN or an empty segmentation. docs/FAULTS.md lists each fault and what the user sees now."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from BrainDiffSegCLI import main
from BrainDiffSegLib.errors import EngineError
from BrainDiffSegLib.options import preset
from BrainDiffSegLib.propagation.propagate import propagate
from BrainDiffSegLib.protocol import simulate_annotation


def damaged_copy(folder, target):
    """A copy of a model folder with 2 MB (or a quarter of the file) overwritten by 0xFF bytes mid-file (NaN)."""
    copy = shutil.copytree(folder, target)
    path = copy / "model.safetensors"
    raw = bytearray(path.read_bytes())
    n = min(2 << 20, len(raw) // 4)
    raw[len(raw) // 2:len(raw) // 2 + n] = b"\xff" * n
    path.write_bytes(bytes(raw))
    return copy


def test_damaged_backbone_weights_give_one_sentence_and_no_output(repo_root, tumour_case_writer, tmp_path, caplog):
    case, _, _ = tumour_case_writer(tmp_path / "case")
    model = damaged_copy(repo_root / "Resources" / "Models" / "backbone", tmp_path / "backbone")
    out = tmp_path / "out.nii.gz"
    code = main(["propagate", "--case", str(case), "--simulate-annotation", "2", "--out", str(out), "--checkpoint",
                 str(model), "--device", "cpu", "--ensemble", "1", "--max-epochs", "1"])
    assert code == 2 and not out.exists()
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "is damaged" in errors[0] and "NaN or infinite" in errors[0], errors


def test_damaged_inpainting_weights_write_no_nan(repo_root, tumour_case_writer, nifti_writer, tmp_path, caplog):
    case, _, label = tumour_case_writer(tmp_path / "case")
    model = damaged_copy(repo_root / "Resources" / "Models" / "inpaint", tmp_path / "inpaint")
    mask = nifti_writer(tmp_path / "mask.nii.gz", (label > 0).astype(np.uint8))
    out = tmp_path / "inpainted.nii.gz"
    code = main(["inpaint", "--case", str(case), "--mask", str(mask), "--out", str(out), "--model", str(model),
                 "--steps", "2"])
    assert code == 2 and not out.exists()
    assert any("is damaged" in r.getMessage() for r in caplog.records if r.levelname == "ERROR")


def test_non_finite_features_stop_the_propagation(tumour_case, monkeypatch):
    from BrainDiffSegLib.propagation.features import FeatureExtractor

    images, label, _ = tumour_case()
    ann, _ = simulate_annotation(label, 2)
    real = FeatureExtractor.native_features

    def poisoned(self, *args, **kwargs):
        x = real(self, *args, **kwargs)
        x[::7] = float("nan")
        return x

    monkeypatch.setattr(FeatureExtractor, "native_features", poisoned)
    with pytest.raises(EngineError, match="features of the annotated slices are not finite"):
        propagate(images, ann, preset("quick"))


def test_a_classifier_that_cannot_train_is_an_error_not_an_empty_segmentation():
    from BrainDiffSegLib.propagation.classifier import ClassifierOptions, PixelEnsemble

    x = torch.randn(400, 6)
    x[:, 2] = float("inf")  # standardised to NaN: every loss is NaN
    y = torch.randint(0, 2, (400,))
    with pytest.raises(EngineError, match="validation loss of 2 of its 2 members is not finite"):
        PixelEnsemble(6, 2, ClassifierOptions(n_models=2, max_epochs=2, hidden=(8,))).fit(x, y)


def test_a_non_finite_prediction_is_an_error(tumour_case, monkeypatch):
    import BrainDiffSegLib.propagation.propagate as P

    images, label, _ = tumour_case()
    ann, _ = simulate_annotation(label, 2)
    real = P.predict_slices

    def poisoned(*args, **kwargs):
        pred = real(*args, **kwargs)
        pred.entropy[...] = np.nan
        return pred

    monkeypatch.setattr(P, "predict_slices", poisoned)
    with pytest.raises(EngineError, match="prediction is not finite"):
        propagate(images, ann, preset("quick"))


def test_a_non_finite_inpainting_is_an_error(tumour_case, monkeypatch):
    import BrainDiffSegLib.inpainting.inpaint as I

    images, label, _ = tumour_case()
    monkeypatch.setattr(I, "sample", lambda *a, **k: torch.full_like(a[2], float("nan")))
    with pytest.raises(EngineError, match="inpainted voxels are not finite"):
        I.inpaint_volume(images["t1"], label > 0, steps=1)


# ------------------------------------------------------------------------------------------ outputs (issue 24 §2, §5)

QUICK = ["--preset", "quick", "--device", "cpu"]


@pytest.fixture
def case(tumour_case_writer, tmp_path):
    folder, _, label = tumour_case_writer(tmp_path / "case")
    return folder, label


def test_out_without_an_extension_is_refused_and_overwrites_nothing(case, tmp_path, caplog):
    folder, _ = case
    out = tmp_path / "out"
    out.mkdir()
    existing = out / "result.nii"
    existing.write_bytes(b"the user's earlier result")
    assert main(["propagate", "--case", str(folder), "--simulate-annotation", "2", "--out", str(out / "result"),
                 *QUICK]) == 2
    assert existing.read_bytes() == b"the user's earlier result"
    assert "use a .nii.gz or .nii file name" in caplog.text


@pytest.mark.parametrize("outputs, words", [
    (lambda t, f: ["--out", str(t / "result.txt")], "use a .nii.gz or .nii file name"),
    (lambda t, f: ["--out", str(t / "x.nii.gz"), "--uncertainty", str(t / "x.nii.gz"), "--force"],
     "name the same file"),
    (lambda t, f: ["--out", str(next(f.glob("*_flair.nii.gz"))), "--force"], "is an input of this run"),
    (lambda t, f: ["--out", str(t / "x.nii.gz"), "--overlay", str(t / "x.nii.gz.png"), "--json", str(t / "s.txt")],
     "--json"),
    (lambda t, f: ["--out", str(t / "a-file" / "x.nii.gz")], "cannot write into"),  # (a read-only folder, as root)
])
def test_outputs_are_checked_before_any_work(case, tmp_path, caplog, monkeypatch, outputs, words):
    import BrainDiffSegLib.propagation.propagate as P

    folder, _ = case
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setattr(P, "propagate", lambda *a, **k: pytest.fail("work started before the outputs were checked"))
    before = sorted(p.name for p in folder.iterdir())
    assert main(["propagate", "--case", str(folder), "--simulate-annotation", "2", *outputs(tmp_path, folder),
                 *QUICK]) == 2
    assert words in caplog.text
    assert sorted(p.name for p in folder.iterdir()) == before


def test_a_failed_write_leaves_no_partial_file_and_the_old_one_intact(case, tmp_path, monkeypatch, caplog):
    import errno

    import nibabel as nib

    folder, _ = case
    out = tmp_path / "seg.nii.gz"
    assert main(["propagate", "--case", str(folder), "--simulate-annotation", "2", "--out", str(out), *QUICK]) == 0
    good = out.read_bytes()
    real = nib.save

    def full_disk(img, filename):
        real(img, filename)
        with open(filename, "r+b") as f:
            f.truncate(100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(nib, "save", full_disk)
    assert main(["propagate", "--case", str(folder), "--simulate-annotation", "3", "--out", str(out), "--force",
                 *QUICK]) == 2
    assert out.read_bytes() == good and sorted(p.name for p in tmp_path.iterdir() if "seg" in p.name) == [out.name]
    assert "No space left on device; nothing was replaced" in caplog.text


@pytest.mark.parametrize("value, dtype", [(300, np.uint16), (40000, np.uint16), (70000, np.uint32)])
def test_label_values_above_255_are_kept_exactly(case, tmp_path, nifti_writer, value, dtype):
    """Label 4 repainted as 300 / 40000 / 70000: the annotated slices keep it exactly and the output's type holds
    it (uint8 silently made 44 / 0 / 112 of them before)."""
    import nibabel as nib

    folder, label = case
    annotation, zs = simulate_annotation(label, 2)
    annotation = annotation.astype(np.int64)
    annotation[annotation == 4] = value
    path = nifti_writer(tmp_path / "ann.nii.gz", annotation.astype(np.int32))
    out = tmp_path / "out.nii.gz"
    assert main(["propagate", "--case", str(folder), "--annotation", str(path), "--out", str(out), *QUICK]) == 0
    img = nib.load(out)
    data = np.asarray(img.dataobj)
    assert img.get_data_dtype() == dtype
    np.testing.assert_array_equal(data[..., zs], annotation[..., zs])
    assert value in np.unique(data[..., [z for z in range(data.shape[-1]) if z not in zs]])


def test_every_slice_annotated_reports_no_dice(case, tmp_path, nifti_writer, capsys):
    """'Dice on the non-annotated slices: WT 1.000' when nothing was left to compare: no Dice, one sentence."""
    folder, label = case
    whole = nifti_writer(tmp_path / "whole.nii.gz", label)  # every slice with tumour painted completely
    assert main(["propagate", "--case", str(folder), "--annotation", str(whole), "--out",
                 str(tmp_path / "o.nii.gz"), *QUICK]) == 0
    printed = capsys.readouterr().out
    assert "Dice on" not in printed and "Every slice with tumour in the ground truth is annotated" in printed
    everything = nifti_writer(tmp_path / "all.nii.gz", np.where(label > 0, label, 2).astype(np.uint8))  # no 0: refused
    assert main(["propagate", "--case", str(folder), "--annotation", str(everything), "--out",
                 str(tmp_path / "p.nii.gz"), *QUICK]) == 2


def test_ctrl_c_prints_one_sentence_and_leaves_no_partial_output(case, tmp_path, monkeypatch, caplog):
    import BrainDiffSegCLI.propagate as C

    folder, _ = case

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("BrainDiffSegLib.propagation.propagate.propagate", interrupted)
    out = tmp_path / "o.nii.gz"
    assert main(["propagate", "--case", str(folder), "--simulate-annotation", "2", "--out", str(out), *QUICK]) == 130
    assert not list(tmp_path.glob("*o.*")) and "Cancelled (Ctrl-C)" in caplog.text and "Traceback" not in caplog.text
    assert C  # (the command module, patched through the engine's function it imports at run time)


def test_the_slicer_logic_refuses_a_truncated_file_as_the_command_line_does(data_root, tmp_path, headless):
    """Issue 24 §4: `loadCase` read a truncated .nii.gz without a word (slices 9-22 of the FLAIR became zeros);
    now the engine's reader refuses it first, with the command line's sentence, and the scene is unchanged."""
    from BrainDiffSegLib.errors import InputError
    from BrainDiffSegLib.io import load_case

    source = data_root / "brats2021" / "BraTS2021_00006"
    if not source.is_dir():
        pytest.skip("BraTS2021_00006 not available")
    case = shutil.copytree(source, tmp_path / "BraTS2021_00006")
    flair = case / "BraTS2021_00006_flair.nii.gz"
    flair.write_bytes(flair.read_bytes()[: flair.stat().st_size * 2 // 3])
    with pytest.raises(InputError, match="Cannot read .*_flair.nii.gz") as cli:
        load_case(case)
    logic = headless.logic()
    before = headless.scene.GetNumberOfNodes()
    with pytest.raises(InputError, match="Cannot read .*_flair.nii.gz") as panel:
        logic.loadCase(case)
    assert str(panel.value) == str(cli.value) and headless.scene.GetNumberOfNodes() == before


def test_a_background_segment_is_not_propagated_as_a_tumour_class(headless, tumour_case):
    """A segment named 'Background' was propagated as one more tumour class; now it is background (in the
    complete-slice mode, which these options ask for, its voxels are what the slices' unpainted voxels are anyway),
    the user is told, and the tumour classes keep their BraTS values."""
    from BrainDiffSegSlicer.segments import isBackgroundName, labelValuesForSegments

    assert [isBackgroundName(n) for n in ("Background", "background 2", "BG", "Edema", "bright")] == \
        [True, True, True, False, False]
    assert labelValuesForSegments(["Edema", "Background", "Enhancing tumour"]) == ([2, 0, 4], True)
    assert labelValuesForSegments(["Mass", "Background", "Rim"]) == ([1, 0, 2], False)
    images, label, head = tumour_case()
    logic = headless.logic()
    ijk = np.diag([1.0, 1.0, 2.0, 1.0])
    volumes = {r: logic.addVolumeFromArray(logic.fromEngineArray(images[r], 2), ijk, r) for r in ("flair", "t1ce")}
    annotation, zs = simulate_annotation(label, 2)
    painted = headless.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Painted")
    painted.CreateDefaultDisplayNodes()
    painted.SetReferenceImageGeometryParameterFromVolumeNode(volumes["flair"])
    for name, mask in (("Edema", annotation == 2), ("Background", (annotation == 0) & head),
                       ("Enhancing tumour", annotation == 4), ("Necrotic core", annotation == 1)):
        sid = painted.GetSegmentation().AddEmptySegment("", name)
        logic.setSegmentFromArray(painted, sid, logic.fromEngineArray(mask, 2), volumes["flair"])
    out = logic.propagate(volumes, painted, preset("quick"))
    names = [out.GetSegmentation().GetSegment(s).GetName() for s in out.GetSegmentation().GetSegmentIDs()]
    assert "Background" not in names and set(names) == {"Edema", "Enhancing tumour", "Necrotic core"}
    # (complete slices: its voxels are background anyway; the user is told its strokes are not used as seeds)
    assert any("'Background' is painted but the annotation is complete slices" in m for m in logic.lastMessages)
    labels, _, _ = logic.labelArrayFromSegmentation(out, volumes["flair"])
    assert set(np.unique(labels)) <= {0, 1, 2, 4}


@pytest.mark.parametrize("names, roles", [
    (("sub-01_T1w", "sub-01_ce-gd_T1w", "sub-01_T2w", "sub-01_FLAIR"), ("t1", "t1ce", "t2", "flair")),
    (("case_t1", "case_t1gd", "case_t2", "case_flair"), ("t1", "t1ce", "t2", "flair")),
    (("BraTS-GLI-00001-000-t1n", "BraTS-GLI-00001-000-t1c", "BraTS-GLI-00001-000-t2w",
      "BraTS-GLI-00001-000-t2f"), ("t1", "t1ce", "t2", "flair")),
])
def test_bids_and_brats_2023_names_are_read_and_unknown_files_are_named(tmp_path, nifti_writer, head, caplog, names,
                                                                        roles):
    """Issue 24: `_T1w`, `_ce-gd_T1w`, `_t1gd` were dropped without a word (the run went on with fewer sequences)."""
    from BrainDiffSegLib.io import find_case_files

    images, _ = head()
    for name, role in zip(names, roles):
        nifti_writer(tmp_path / f"{name}.nii.gz", images[role])
    nifti_writer(tmp_path / "sub-01_notes_dwi.nii.gz", images["t1"])
    found = find_case_files(tmp_path)
    assert {r: p.name for r, p in found.items()} == {r: f"{n}.nii.gz" for n, r in zip(names, roles)}
    assert "ignored sub-01_notes_dwi.nii.gz" in caplog.text and "t1ce=" in caplog.text


def test_missing_sequences_are_said_with_what_they_cost(tmp_path, nifti_writer, head, caplog):
    from BrainDiffSegLib.io import find_case_files

    images, _ = head()
    nifti_writer(tmp_path / "case_flair.nii.gz", images["flair"])
    find_case_files(tmp_path)
    assert "no t1, t1ce, t2: propagating with flair only" in caplog.text and "enhancing tumour" in caplog.text


def test_a_large_volume_gets_an_estimate_before_the_run():
    from BrainDiffSegLib.outputs import size_warning

    assert size_warning((240, 240, 155)) is None and size_warning((128, 128, 88), 3) is None
    text = size_warning((512, 512, 300), 4, total_gb=24)
    assert text.startswith("This volume (512 x 512 x 300, 4 sequences) is 8.8x a BraTS volume: expect roughly 4 min")
    assert "27 GB of memory, more than this computer's 24 GB can give: crop the volume" in text
    assert "more than" not in size_warning((512, 512, 300), 4, total_gb=128)


def test_label_values_beyond_int32_are_refused(tmp_path, nifti_writer, default_affine):
    from BrainDiffSegLib.errors import InputError
    from BrainDiffSegLib.io import load_label

    path = nifti_writer(tmp_path / "big.nii.gz", np.full((4, 4, 2), 3e9))
    with pytest.raises(InputError, match="label values up to 2147483647 are supported, not 3000000000"):
        load_label(path, (4, 4, 2), default_affine, 2)


def test_the_panel_says_what_a_missing_t1ce_costs(headless, tumour_case):
    images, label, _ = tumour_case()
    logic = headless.logic()
    ijk = np.diag([1.0, 1.0, 2.0, 1.0])
    flair = logic.addVolumeFromArray(logic.fromEngineArray(images["flair"], 2), ijk, "flair")
    annotation, _ = simulate_annotation(label, 2)
    painted = logic.paintTumourSegments(flair, annotation)
    logic.preparePropagation({"flair": flair}, painted)
    assert any(m.startswith("Without a T1ce the tumour core") for m in logic.lastMessages)
    t1ce = logic.addVolumeFromArray(logic.fromEngineArray(images["t1ce"], 2), ijk, "t1ce")
    logic.preparePropagation({"flair": flair, "t1ce": t1ce}, painted)
    assert not any("T1ce" in m for m in logic.lastMessages)
