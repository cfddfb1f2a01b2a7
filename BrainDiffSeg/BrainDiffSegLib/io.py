"""Reading a case folder (or individual files) of co-registered NIfTI sequences, and writing label volumes.

Arrays are returned with the axial (inferior-superior) axis last, whatever the storage order on disk; `Case.native`
restores the storage order for writing, so outputs keep the exact grid and affine of the inputs. nibabel is imported
only where files are read or written: training from a packed slice set (`train-ddpm --slices`) runs without it.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .constants import AFFINE_TOLERANCE_MM, ROLES
from .errors import InputError, OutputExistsError

log = logging.getLogger(__name__)

"""Canonical sequence roles, in the channel order of the backbone."""

# File-name suffixes of the supported layouts -> role. "seg" is the label volume.
SUFFIX_ROLES = {
    # BraTS 2018-2021
    "t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair",
    # BraTS 2023
    "t1n": "t1", "t1c": "t1ce", "t2w": "t2", "t2f": "flair",
    # LGG (Buda et al.)
    "pre": "t1", "post": "t1ce",
    # BIDS suffixes (a contrast agent as the `ce-` entity: see parse_sequence_name; T2w, FLAIR and T1c above) and
    # other common spellings
    "t1w": "t1", "t1gd": "t1ce", "t1post": "t1ce",
    "seg": "seg", "dseg": "seg",
}
_CONTRAST_RE = re.compile(r"(^|[_-])ce-(gd|gadolinium|contrast|[a-z0-9]+)([_-]|$)", re.IGNORECASE)
_NAME_RE = re.compile(r"^(?P<stem>.+?)[_-](?P<suffix>[A-Za-z0-9]+)\.nii(\.gz)?$")


@dataclass
class Case:
    """One patient: co-registered sequences on one grid, and optionally a label volume."""

    name: str
    images: dict[str, np.ndarray]  # role -> float32 array, axial axis last
    affine: np.ndarray  # voxel -> world of the stored (native) array order
    axial_axis: int  # axis of the stored array that is axial
    label: np.ndarray | None = None  # integer array, axial axis last
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return next(iter(self.images.values())).shape

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm in the engine's axis order (axial axis last), from the affine."""
        sp = [float(v) for v in np.linalg.norm(np.asarray(self.affine)[:3, :3], axis=0)]
        axial = sp.pop(self.axial_axis)
        return (sp[0], sp[1], axial)

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(r for r in ROLES if r in self.images)

    def native(self, array: np.ndarray) -> np.ndarray:
        """Move the axial axis back to where it is stored on disk."""
        return np.moveaxis(array, -1, self.axial_axis)

    def reference_path(self) -> Path | None:
        return next((self.paths[r] for r in ROLES if r in self.paths), None)


def parse_sequence_name(path: Path) -> str | None:
    """Role of a file from its name (`x_flair.nii.gz`, `x-t2f.nii.gz`, `x_post.nii.gz`), or None."""
    m = _NAME_RE.match(path.name)
    if not m:
        return None
    role = SUFFIX_ROLES.get(m.group("suffix").lower())
    if role == "t1" and _CONTRAST_RE.search(m.group("stem")):  # BIDS: sub-01_ce-gd_T1w.nii.gz is the T1ce
        return "t1ce"
    return role


def find_case_files(case_dir: str | Path) -> dict[str, Path]:
    """Map role -> file for the NIfTI sequences (and 'seg') found in a case folder."""
    case_dir = Path(case_dir)
    if not case_dir.is_dir():
        raise InputError(f"Case folder not found: {case_dir}")
    found: dict[str, Path] = {}
    ignored = []
    for p in sorted(case_dir.iterdir()):
        role = parse_sequence_name(p)
        if role is None:
            if p.name.lower().endswith((".nii", ".nii.gz")):
                ignored.append(p.name)
            continue
        if role in found:
            raise InputError(f"Two files for sequence '{role}' in {case_dir}: {found[role].name} and {p.name}")
        found[role] = p
    if not any(r in found for r in ROLES):
        names = ", ".join(p.name for p in sorted(case_dir.iterdir())[:10]) or "(empty folder)"
        raise InputError(
            f"No MRI sequence found in {case_dir}. Expected files named like CASE_flair.nii.gz / CASE_t1ce.nii.gz "
            f"(BraTS), CASE-t2f.nii.gz (BraTS 2023) or CASE_pre/_post/_flair.nii.gz (LGG); found: {names}")
    if ignored:  # said, never dropped in silence
        log.warning("%s: ignored %s (not a recognised sequence name); using %s", case_dir, ", ".join(ignored),
                    ", ".join(f"{r}={found[r].name}" for r in [*ROLES, "seg"] if r in found))
    missing = [r for r in ROLES if r not in found]
    if missing:
        log.warning("%s: no %s: propagating with %s only%s", case_dir, ", ".join(missing),
                    ", ".join(r for r in ROLES if r in found),
                    " (without the T1ce, the tumour core and enhancing tumour are much less accurate)"
                    if "t1ce" in missing else "")
    return found


def is_case_dir(path: Path) -> bool:
    try:
        return path.is_dir() and any(parse_sequence_name(p) in ROLES for p in path.iterdir())
    except OSError:
        return False


def find_cases(roots: list[str | Path] | str | Path) -> list[Path]:
    """Every case folder at or below the given roots, sorted."""
    if isinstance(roots, (str, Path)):
        roots = [roots]
    cases: set[Path] = set()
    for root in map(Path, roots):
        if not root.exists():
            raise InputError(f"Data folder not found: {root}")
        if is_case_dir(root):
            cases.add(root)
        for d in root.rglob("*"):
            if is_case_dir(d):
                cases.add(d)
    return sorted(cases)


def axial_axis_of(affine: np.ndarray, path: Path | str = "") -> int:
    """Index of the array axis closest to the superior-inferior direction; refuses clearly oblique grids."""
    directions = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0, keepdims=True)
    axis = int(np.argmax(np.abs(directions[2, :])))
    if abs(directions[2, axis]) < 0.9:
        raise InputError(f"{path}: the volume is oblique (no array axis within 25 degrees of superior-inferior); "
                         "reslice it to an axial grid first.")
    return axis


def _load_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except Exception as exc:  # nibabel raises several types for corrupt files
        raise InputError(f"Cannot read {path}: {exc}") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{path}: expected a 3D volume, got shape {data.shape}")
    return data, img.affine


def check_volume_file(path: str | Path, role: str) -> None:
    """The engine's reader and checks on one file, for readers of their own (the Slicer Logic): InputError for a
    file that does not read whole (e.g. a truncated .nii.gz, whose missing slices another reader may fill with
    zeros), is not 3D, or (an image) holds NaN or is constant."""
    path = Path(path)
    data, _ = _load_nifti(path)
    if role != "seg":
        _check_image(role, path, data)


def _check_image(role: str, path: Path, data: np.ndarray) -> None:
    if not np.all(np.isfinite(data)):
        raise InputError(f"{path} ({role}): the image contains NaN or infinite values.")
    if float(data.max()) == float(data.min()):
        raise InputError(f"{path} ({role}): the image is constant ({float(data.min())}); no information to segment.")


def load_case_files(files: dict[str, str | Path], name: str | None = None, roles: tuple[str, ...] | None = None) -> Case:
    """Load sequences given as role -> path (plus optional 'seg'), checking that they share one grid."""
    files = {k: Path(v) for k, v in files.items() if v is not None}
    unknown = set(files) - set(ROLES) - {"seg"}
    if unknown:
        raise InputError(f"Unknown sequence role(s) {sorted(unknown)}; use {ROLES} or 'seg'.")
    wanted = [r for r in (roles or ROLES) if r in files]
    if roles:
        missing = [r for r in roles if r not in files]
        if missing:
            raise InputError(f"Missing sequence(s) {missing}; available: {sorted(set(files) & set(ROLES))}")
    if not wanted:
        raise InputError("No image sequence given.")
    for role in wanted + (["seg"] if "seg" in files else []):
        if not files[role].is_file():
            raise InputError(f"Missing file for sequence '{role}': {files[role]}")
    ref_role = wanted[0]
    ref_data, ref_affine = _load_nifti(files[ref_role])
    axis = axial_axis_of(ref_affine, files[ref_role])
    images: dict[str, np.ndarray] = {}
    for role in wanted:
        data, affine = (ref_data, ref_affine) if role == ref_role else _load_nifti(files[role])
        if data.shape != ref_data.shape:
            raise InputError(f"{files[role]} ({role}) has shape {data.shape}, but {files[ref_role].name} "
                             f"({ref_role}) has {ref_data.shape}: sequences must be co-registered on one grid.")
        if not np.allclose(affine, ref_affine, atol=AFFINE_TOLERANCE_MM):
            raise InputError(f"{files[role]} ({role}) has a different voxel-to-world matrix than "
                             f"{files[ref_role].name}: sequences must be co-registered on one grid.")
        _check_image(role, files[role], data)
        images[role] = np.moveaxis(data.astype(np.float32, copy=False), axis, -1)
    # The LGG dataset copies FLAIR into a missing sequence's slot: such a copy carries no information.
    if "flair" in images:
        for role in [r for r in images if r != "flair"]:
            if np.array_equal(images[role], images["flair"]):
                log.info("%s is an exact copy of FLAIR; treating sequence '%s' as missing", files[role].name, role)
                del images[role]
    label = None
    if "seg" in files:
        label = load_label(files["seg"], ref_data.shape, ref_affine, axis)
    return Case(name=name or files[ref_role].parent.name, images=images, affine=ref_affine, axial_axis=axis,
                label=label, paths={k: files[k] for k in wanted + (["seg"] if "seg" in files else [])})


def load_case(case_dir: str | Path, roles: tuple[str, ...] | None = None) -> Case:
    """Load a case folder in any supported layout (any subset of sequences)."""
    files = find_case_files(case_dir)
    return load_case_files(files, name=Path(case_dir).name, roles=roles)


def load_label(path: str | Path, shape: tuple, affine: np.ndarray, axial_axis: int) -> np.ndarray:
    """Load a label volume that must lie on the given grid; returns integers with the axial axis last."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Label file not found: {path}")
    data, lab_affine = _load_nifti(path)
    if data.shape != tuple(shape):
        raise InputError(f"{path}: label volume has shape {data.shape}, but the images have {tuple(shape)}; "
                         "the annotation must be on the grid of the images.")
    if not np.allclose(lab_affine, affine, atol=AFFINE_TOLERANCE_MM):
        raise InputError(f"{path}: label volume's voxel-to-world matrix differs from the images'; "
                         "the annotation must be on the grid of the images.")
    if not np.all(np.isfinite(data)) or np.any(data < 0) or np.any(np.mod(data, 1) != 0):
        raise InputError(f"{path}: a label volume must hold non-negative integers.")
    if data.size and float(data.max()) > np.iinfo(np.int32).max:
        raise InputError(f"{path}: label values up to {np.iinfo(np.int32).max} are supported, not {data.max():.0f}.")
    dtype = np.int16 if not data.size or float(data.max()) <= np.iinfo(np.int16).max else np.int32
    return np.moveaxis(data.astype(dtype), axial_axis, -1)  # the values exactly (int16 unless they need more)


def check_writable(path: str | Path, force: bool = False) -> Path:
    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(f"{path} exists; pass --force to overwrite it.")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def save_volume(case: Case, array: np.ndarray, path: str | Path, force: bool = False, dtype=None) -> Path:
    """Write an (axial-last) array on the case's native grid as NIfTI, never overwriting unless forced, atomically
    (`outputs.atomic`: a failed write leaves no partial file and the old one as it was). dtype None: labels, in the
    smallest type holding their values (`outputs.label_dtype`); values the dtype cannot hold are refused."""
    import nibabel as nib

    from .outputs import atomic, label_dtype

    path = check_writable(path, force)
    array = np.asarray(array)
    if dtype is None:
        dtype = label_dtype([array.min(), array.max()] if array.size else [0])
    elif np.issubdtype(np.dtype(dtype), np.integer) and array.size:
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise InputError(f"{path}: values {array.min()}..{array.max()} do not fit {np.dtype(dtype).name}.")
    ref = case.reference_path()
    header = nib.load(str(ref)).header.copy() if ref is not None else None
    img = nib.Nifti1Image(case.native(array).astype(dtype), case.affine, header=header)
    img.set_data_dtype(dtype)
    with atomic(path) as tmp:
        nib.save(img, str(tmp))
    log.info("wrote %s", path)
    return path
