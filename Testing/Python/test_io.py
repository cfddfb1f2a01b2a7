"""Reading case folders (BraTS 2018-2021, BraTS 2023, LGG layouts), input validation, and writing label volumes."""
from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from BrainDiffSegLib.errors import InputError, OutputExistsError
from BrainDiffSegLib.io import (ROLES, axial_axis_of, find_case_files, find_cases, load_case, load_case_files,
                                parse_sequence_name, save_volume)

SHAPE = (24, 20, 12)


# ---------------------------------------------------------------------------------------------------------- layouts

@pytest.mark.parametrize("name, role", [
    ("Brats18_2013_3_1_flair.nii.gz", "flair"), ("Brats18_2013_3_1_t1.nii.gz", "t1"),
    ("Brats18_2013_3_1_t1ce.nii.gz", "t1ce"), ("Brats18_2013_3_1_t2.nii.gz", "t2"),
    ("Brats18_2013_3_1_seg.nii.gz", "seg"), ("BraTS2021_00006_t1ce.nii", "t1ce"),
    ("BraTS-GLI-00000-000-t2f.nii.gz", "flair"), ("BraTS-GLI-00000-000-t1n.nii.gz", "t1"),
    ("BraTS-GLI-00000-000-t1c.nii.gz", "t1ce"), ("BraTS-GLI-00000-000-t2w.nii.gz", "t2"),
    ("BraTS-GLI-00000-000-seg.nii.gz", "seg"),
    ("TCGA_CS_4941_19960909_pre.nii.gz", "t1"), ("TCGA_CS_4941_19960909_post.nii.gz", "t1ce"),
    ("TCGA_CS_4941_19960909_flair.nii.gz", "flair"), ("TCGA_CS_4941_19960909_seg.nii.gz", "seg"),
    ("case_T1CE.nii.gz", "t1ce"),
    ("case_mask.nii.gz", None), ("case_t1.txt", None), ("flair.nii.gz", None), ("case_t1ce.nii.gz.bak", None),
])
def test_parse_sequence_name(name, role):
    assert parse_sequence_name(Path(name)) == role


@pytest.mark.parametrize("layout", ["brats2021", "brats2023", "lgg"])
def test_load_case_layouts(tmp_path, case_writer, layout):
    roles = ("t1", "t1ce", "flair") if layout == "lgg" else ROLES
    folder, written, label = case_writer(tmp_path / "CASE01", layout=layout, roles=roles)
    case = load_case(folder)
    assert case.name == "CASE01"
    assert case.roles == tuple(r for r in ROLES if r in roles)
    assert case.shape == SHAPE
    assert case.axial_axis == 2
    for role in roles:
        assert case.images[role].dtype == np.float32
        # each role gets the data of its own file (t1 / t1ce / t1n / t1c / pre / post are not mixed up)
        np.testing.assert_array_equal(case.images[role], written[role])
    assert case.label is not None and np.issubdtype(case.label.dtype, np.integer)
    np.testing.assert_array_equal(case.label, label)
    assert set(np.unique(case.label)) == {0, 1, 2, 4}
    assert case.paths["seg"].name.startswith("CASE01") and case.paths["seg"].name.endswith(".nii.gz")
    np.testing.assert_allclose(case.affine, nib.load(str(case.paths[case.roles[0]])).affine)


def test_t1_and_t1ce_not_confused(tmp_path, nifti_writer, head):
    images, _ = head(SHAPE)
    # '_t1' is a prefix of '_t1ce': give the two clearly different data and check each lands in its own slot
    nifti_writer(tmp_path / "c" / "c_t1ce.nii.gz", images["t1ce"] * 3)
    nifti_writer(tmp_path / "c" / "c_t1.nii.gz", images["t1"])
    case = load_case(tmp_path / "c")
    assert case.roles == ("t1", "t1ce")
    np.testing.assert_array_equal(case.images["t1"], images["t1"])
    np.testing.assert_array_equal(case.images["t1ce"], images["t1ce"] * 3)
    assert case.paths["t1"].name == "c_t1.nii.gz" and case.paths["t1ce"].name == "c_t1ce.nii.gz"


SUBSETS = [s for n in range(1, 5) for s in itertools.combinations(ROLES, n)]


@pytest.mark.parametrize("roles", SUBSETS, ids=["+".join(s) for s in SUBSETS])
def test_any_subset_of_sequences(tmp_path, case_writer, roles):
    folder, written, _ = case_writer(tmp_path / "sub", roles=roles, seg=False)
    case = load_case(folder)
    assert case.roles == roles
    assert case.label is None
    for r in roles:
        np.testing.assert_array_equal(case.images[r], written[r])


def test_requested_roles(tmp_path, case_writer):
    folder, _, _ = case_writer(tmp_path / "c", roles=("t1", "flair"))
    case = load_case(folder, roles=("flair",))
    assert case.roles == ("flair",)
    with pytest.raises(InputError, match=r"Missing sequence\(s\) \['t2'\]"):
        load_case(folder, roles=("flair", "t2"))


def test_axial_axis_first_is_moved_last_and_restored(tmp_path, nifti_writer, head):
    images, label = head(SHAPE)  # (X, Y, Z) with Z axial
    # store as (Z, X, Y): array axis 0 runs superior (S), axis 1 along R-L (x), axis 2 along A-P (y)
    affine = np.array([[0.0, 0.9, 0, 10.0], [0, 0, 1.1, -20.0], [2.5, 0, 0, 30.0], [0, 0, 0, 1]])
    stored = {r: np.moveaxis(v, -1, 0) for r, v in images.items()}
    stored_label = np.moveaxis(label, -1, 0)
    for r, v in stored.items():
        nifti_writer(tmp_path / "c" / f"c_{r}.nii.gz", v, affine)
    nifti_writer(tmp_path / "c" / "c_seg.nii.gz", stored_label, affine)
    assert axial_axis_of(affine) == 0
    case = load_case(tmp_path / "c")
    assert case.axial_axis == 0
    assert case.shape == SHAPE
    for r in ROLES:
        np.testing.assert_array_equal(case.images[r], images[r])
    np.testing.assert_array_equal(case.label, label)
    np.testing.assert_array_equal(case.native(case.label), stored_label)
    np.testing.assert_array_equal(case.native(case.images["t2"]), stored["t2"])

    # writing goes back to the stored order and grid
    out = save_volume(case, case.label, tmp_path / "out" / "pred.nii.gz")
    img = nib.load(str(out))
    assert img.shape == stored_label.shape
    np.testing.assert_array_equal(np.asarray(img.dataobj), stored_label)
    np.testing.assert_allclose(img.affine, nib.load(str(case.paths["t1"])).affine, atol=0, rtol=0)


@pytest.mark.parametrize("column, expected", [(0, 0), (1, 1), (2, 2)])
def test_axial_axis_of_permutations(column, expected):
    affine = np.eye(4)
    perm = [c for c in range(3) if c != column]
    affine[:3, :3] = 0
    affine[2, column] = -3.0  # I direction on this array axis (sign does not matter)
    affine[0, perm[0]] = 1.0
    affine[1, perm[1]] = 1.0
    assert axial_axis_of(affine) == expected


def test_lgg_flair_copy_is_dropped(tmp_path, case_writer, nifti_writer):
    folder, written, _ = case_writer(tmp_path / "TCGA_XX_0001", layout="lgg", roles=("t1ce", "flair"))
    # the dataset copied FLAIR into the missing pre-contrast slot
    nifti_writer(folder / "TCGA_XX_0001_pre.nii.gz", written["flair"])
    case = load_case(folder)
    assert case.roles == ("t1ce", "flair")
    assert "t1" not in case.images
    np.testing.assert_array_equal(case.images["flair"], written["flair"])
    # a sequence that merely resembles FLAIR is kept
    nifti_writer(folder / "TCGA_XX_0001_pre.nii.gz", written["flair"] + 1.0)
    assert load_case(folder).roles == ("t1", "t1ce", "flair")


def test_flair_copy_real_lgg_case(data_root):
    folder = data_root / "lgg128" / "TCGA_DU_7301_19911112"
    if not folder.is_dir():
        pytest.skip(f"{folder} not available")
    case = load_case(folder)
    assert case.roles == ("t1", "flair")  # its post-contrast slot is a FLAIR copy
    assert case.label is not None and set(np.unique(case.label)) <= {0, 1}
    assert case.shape[:2] == (128, 128)


def test_real_brats_case(data_root):
    folders = sorted((data_root / "brats2018").glob("Brats18_*")) if (data_root / "brats2018").is_dir() else []
    if not folders:
        pytest.skip("no BraTS 2018 case available")
    from BrainDiffSegLib.preprocess import is_brats_labels, label_values

    case = load_case(folders[0])
    assert case.roles == ROLES and case.shape == (240, 240, 155) and case.axial_axis == 2
    assert set(label_values(case.label)) <= {0, 1, 2, 4} and is_brats_labels(label_values(case.label))


def test_find_case_files_two_files_for_one_role(tmp_path, case_writer, nifti_writer, head):
    folder, _, _ = case_writer(tmp_path / "c", roles=("t1",), seg=False)
    nifti_writer(folder / "c-t1n.nii.gz", head(SHAPE)[0]["t1"])
    with pytest.raises(InputError, match="Two files for sequence 't1'") as exc:
        find_case_files(folder)
    assert "c_t1.nii.gz" in str(exc.value) and "c-t1n.nii.gz" in str(exc.value)


# ------------------------------------------------------------------------------------------------------ bad input

def _message(exc_info) -> str:
    return str(exc_info.value)


def test_missing_folder(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(InputError) as exc:
        load_case(missing)
    assert str(missing) in _message(exc) and "not found" in _message(exc)


def test_folder_without_sequences(tmp_path):
    folder = tmp_path / "empty_case"
    folder.mkdir()
    (folder / "notes.txt").write_text("x")
    (folder / "c_mask.nii.gz").write_bytes(b"")
    with pytest.raises(InputError) as exc:
        load_case(folder)
    msg = _message(exc)
    assert "No MRI sequence found" in msg and str(folder) in msg
    assert "notes.txt" in msg and "c_mask.nii.gz" in msg  # tells the user what it did find
    assert "CASE_flair.nii.gz" in msg  # and what it expected


def test_empty_folder(tmp_path):
    (tmp_path / "e").mkdir()
    with pytest.raises(InputError, match=r"\(empty folder\)"):
        load_case(tmp_path / "e")


def test_different_shapes(tmp_path, case_writer, nifti_writer, head):
    folder, _, _ = case_writer(tmp_path / "c", roles=("t1", "flair"), seg=False)
    nifti_writer(folder / "c_flair.nii.gz", head((24, 20, 13))[0]["flair"])
    with pytest.raises(InputError) as exc:
        load_case(folder)
    msg = _message(exc)
    assert "c_flair.nii.gz" in msg and "(24, 20, 13)" in msg and "(24, 20, 12)" in msg and "one grid" in msg


def test_different_affines(tmp_path, case_writer, nifti_writer, head, default_affine):
    folder, written, _ = case_writer(tmp_path / "c", roles=("t1", "t2"), seg=False)
    shifted = default_affine
    shifted[0, 3] += 1.0
    nifti_writer(folder / "c_t2.nii.gz", written["t2"], shifted)
    with pytest.raises(InputError) as exc:
        load_case(folder)
    msg = _message(exc)
    assert "c_t2.nii.gz" in msg and "voxel-to-world" in msg and "c_t1.nii.gz" in msg


def test_affine_within_tolerance_is_accepted(tmp_path, case_writer, nifti_writer, default_affine):
    folder, written, _ = case_writer(tmp_path / "c", roles=("t1", "t2"), seg=False)
    nearly = default_affine
    nearly[0, 3] += 1e-5  # float32 rounding of real headers
    nifti_writer(folder / "c_t2.nii.gz", written["t2"], nearly)
    assert load_case(folder).roles == ("t1", "t2")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_image(tmp_path, case_writer, nifti_writer, bad):
    folder, written, _ = case_writer(tmp_path / "c", roles=("t1", "t2"), seg=False)
    data = written["t2"].copy()
    data[3, 4, 5] = bad
    nifti_writer(folder / "c_t2.nii.gz", data)
    with pytest.raises(InputError) as exc:
        load_case(folder)
    assert "c_t2.nii.gz" in _message(exc) and "NaN or infinite" in _message(exc)


def test_constant_image(tmp_path, case_writer, nifti_writer):
    folder, _, _ = case_writer(tmp_path / "c", roles=("t1", "flair"), seg=False)
    nifti_writer(folder / "c_flair.nii.gz", np.full(SHAPE, 7, np.int16))
    with pytest.raises(InputError) as exc:
        load_case(folder)
    assert "c_flair.nii.gz" in _message(exc) and "constant" in _message(exc) and "7.0" in _message(exc)


def test_label_on_different_grid_shape(tmp_path, case_writer, nifti_writer):
    folder, _, _ = case_writer(tmp_path / "c", roles=("t1",), seg=False)
    nifti_writer(folder / "c_seg.nii.gz", np.zeros((24, 20, 11), np.uint8))
    with pytest.raises(InputError) as exc:
        load_case(folder)
    msg = _message(exc)
    assert "c_seg.nii.gz" in msg and "(24, 20, 11)" in msg and "grid of the images" in msg


def test_label_on_different_grid_affine(tmp_path, case_writer, nifti_writer, default_affine):
    folder, _, label = case_writer(tmp_path / "c", roles=("t1",), seg=False)
    other = default_affine
    other[2, 2] = 3.0
    nifti_writer(folder / "c_seg.nii.gz", label, other)
    with pytest.raises(InputError) as exc:
        load_case(folder)
    assert "c_seg.nii.gz" in _message(exc) and "voxel-to-world" in _message(exc)


@pytest.mark.parametrize("value, dtype", [(-1, np.int16), (1.5, np.float32), (np.nan, np.float32)])
def test_bad_label_values(tmp_path, case_writer, nifti_writer, value, dtype):
    folder, _, label = case_writer(tmp_path / "c", roles=("t1",), seg=False)
    bad = label.astype(dtype)
    bad[2, 3, 4] = value
    nifti_writer(folder / "c_seg.nii.gz", bad)
    with pytest.raises(InputError) as exc:
        load_case(folder)
    assert "c_seg.nii.gz" in _message(exc) and "non-negative integers" in _message(exc)


def test_float_label_with_integer_values_is_accepted(tmp_path, case_writer, nifti_writer):
    folder, _, label = case_writer(tmp_path / "c", roles=("t1",), seg=False)
    nifti_writer(folder / "c_seg.nii.gz", label.astype(np.float32))
    case = load_case(folder)
    assert np.issubdtype(case.label.dtype, np.integer)
    np.testing.assert_array_equal(case.label, label)


def test_oblique_affine(tmp_path, case_writer):
    a = np.deg2rad(45)
    rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    affine = np.eye(4)
    affine[:3, :3] = rot
    folder, _, _ = case_writer(tmp_path / "c", roles=("t1", "flair"), affine=affine)
    with pytest.raises(InputError) as exc:
        load_case(folder)
    assert "c_t1.nii.gz" in _message(exc) and "oblique" in _message(exc)


def test_slightly_tilted_affine_is_accepted(tmp_path, case_writer):
    a = np.deg2rad(10)
    affine = np.eye(4)
    affine[:3, :3] = [[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]]
    folder, _, _ = case_writer(tmp_path / "c", roles=("t1",), affine=affine)
    assert load_case(folder).axial_axis == 2


def test_truncated_gz(tmp_path, case_writer):
    folder, _, _ = case_writer(tmp_path / "c", roles=("t1", "t2"), seg=False)
    path = folder / "c_t2.nii.gz"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError) as exc:
        load_case(folder)
    assert "Cannot read" in _message(exc) and str(path) in _message(exc)


def test_garbage_file(tmp_path, case_writer):
    folder, _, _ = case_writer(tmp_path / "c", roles=("t1",), seg=False)
    (folder / "c_t1.nii.gz").write_bytes(b"this is not a nifti file at all" * 20)
    with pytest.raises(InputError, match="Cannot read .*c_t1.nii.gz"):
        load_case(folder)


def test_4d_volume_refused(tmp_path, case_writer, nifti_writer):
    folder, _, _ = case_writer(tmp_path / "c", roles=("t1",), seg=False)
    nifti_writer(folder / "c_t1.nii.gz", np.random.default_rng(0).random(SHAPE + (2,)).astype(np.float32))
    with pytest.raises(InputError) as exc:
        load_case(folder)
    assert "c_t1.nii.gz" in _message(exc) and "3D" in _message(exc)


def test_load_case_files_checks(tmp_path, case_writer):
    folder, _, _ = case_writer(tmp_path / "c", roles=("t1",))
    with pytest.raises(InputError, match="Unknown sequence role"):
        load_case_files({"pd": folder / "c_t1.nii.gz"})
    with pytest.raises(InputError, match="No image sequence"):
        load_case_files({"seg": folder / "c_seg.nii.gz"})
    with pytest.raises(InputError) as exc:
        load_case_files({"t1": folder / "c_t1.nii.gz", "flair": folder / "missing_flair.nii.gz"})
    assert "missing_flair.nii.gz" in str(exc.value) and "flair" in str(exc.value)
    case = load_case_files({"flair": str(folder / "c_t1.nii.gz"), "seg": folder / "c_seg.nii.gz"}, name="x")
    assert case.name == "x" and case.roles == ("flair",) and case.label is not None


# ----------------------------------------------------------------------------------------------------------- write

def test_save_volume_round_trip_and_no_overwrite(tmp_path, case_writer):
    affine = np.array([[-0.9375, 0, 0, 119.53125], [0, -0.9375, 0, 119.53125], [0, 0, 1.5, -78.0], [0, 0, 0, 1]])
    folder, _, label = case_writer(tmp_path / "c", roles=("t1", "t2"), affine=affine)
    case = load_case(folder)
    pred = (case.label == 4).astype(np.uint8) * 3
    out = tmp_path / "results" / "deeper" / "pred.nii.gz"
    assert save_volume(case, pred, out) == out
    img = nib.load(str(out))
    np.testing.assert_array_equal(img.affine, nib.load(str(folder / "c_t1.nii.gz")).affine)
    np.testing.assert_array_equal(img.affine, affine)
    data = np.asarray(img.dataobj)
    assert data.dtype == np.uint8
    np.testing.assert_array_equal(data, pred)
    # re-reading the written label on the case's grid works
    again = load_case_files({"t1": folder / "c_t1.nii.gz", "seg": out})
    np.testing.assert_array_equal(again.label, pred)

    before = out.read_bytes()
    with pytest.raises(OutputExistsError) as exc:
        save_volume(case, pred * 0, out)
    assert str(out) in str(exc.value)
    assert out.read_bytes() == before  # untouched
    save_volume(case, np.ones_like(pred), out, force=True)
    np.testing.assert_array_equal(np.asarray(nib.load(str(out)).dataobj), 1)


def test_save_volume_other_dtype(tmp_path, case_writer):
    folder, _, _ = case_writer(tmp_path / "c", roles=("t1",), seg=False)
    case = load_case(folder)
    prob = np.linspace(0, 1, np.prod(case.shape), dtype=np.float32).reshape(case.shape)
    out = save_volume(case, prob, tmp_path / "p.nii.gz", dtype=np.float32)
    np.testing.assert_array_equal(np.asarray(nib.load(str(out)).dataobj), prob)


def test_save_volume_ignores_reference_scaling(tmp_path, nifti_writer, head):
    """A reference image stored with scl_slope must not rescale the written labels."""
    images, label = head(SHAPE)
    folder = tmp_path / "c"
    folder.mkdir()
    img = nib.Nifti1Image(images["t1"], np.eye(4))
    img.set_data_dtype(np.int16)
    img.header.set_slope_inter(2.0, 10.0)
    nib.save(img, str(folder / "c_t1.nii.gz"))
    case = load_case(folder)
    out = save_volume(case, label, tmp_path / "lab.nii.gz")
    np.testing.assert_array_equal(np.asarray(nib.load(str(out)).dataobj), label)


# ------------------------------------------------------------------------------------------------------ find_cases

def test_find_cases_nested(tmp_path, case_writer):
    root = tmp_path / "data"
    expected = [
        case_writer(root / "site_a" / "P1", roles=("flair",), seg=False)[0],
        case_writer(root / "site_a" / "P2", layout="brats2023", roles=("t1", "t2"), seg=False)[0],
        case_writer(root / "site_b" / "batch" / "deeper" / "P3", layout="lgg", roles=("t1ce",))[0],
    ]
    (root / "site_b" / "docs").mkdir(parents=True)
    (root / "site_b" / "docs" / "readme_t1.txt").write_text("not a case")
    labels_only = root / "labels_only"
    labels_only.mkdir()
    shutil.copy(expected[2] / "P3_seg.nii.gz", labels_only / "P3_seg.nii.gz")  # seg alone is not a case
    assert find_cases(root) == sorted(expected)
    assert find_cases(str(root)) == sorted(expected)
    assert find_cases([root / "site_a", root / "site_b"]) == sorted(expected)
    assert find_cases(expected[0]) == [expected[0]]  # a case folder itself
    assert find_cases(root / "site_b" / "docs") == []
    with pytest.raises(InputError, match="Data folder not found"):
        find_cases(root / "missing")
