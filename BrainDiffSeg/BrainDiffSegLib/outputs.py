"""Output files: every path checked before any work, written atomically, label volumes in a type that holds their
values (issue 24: never a lost file, never a silent wrong result).

- `check_outputs({flag: (path, kind)}, inputs, force)`: each output has a supported extension for its kind, is not
  an input and not another output of the same run, exists only with `force`, and its folder exists (made) and takes
  a file; one sentence naming the flag otherwise. Nothing is computed before this passes.
- `atomic(path)`: write to a temporary file in the same folder, then rename it over `path`; a crash or a full disk
  never leaves a partial file and never replaces a good one.
- `label_dtype(values)`: the smallest type for label values (uint8 for BraTS; 300 needs uint16, 70000 uint32).
- `size_warning(shape, n_sequences)`: before a long run on a large volume, what to expect (time and memory, scaled
  from a measured BraTS run).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from pathlib import Path

import numpy as np

from .errors import BrainDiffSegError, InputError, OutputExistsError

EXTENSIONS = {"volume": (".nii.gz", ".nii"), "png": (".png",), "json": (".json",), "npz": (".npz",)}


class OutputError(BrainDiffSegError):
    """An output cannot be written (no space, no permission); nothing was replaced."""


def suffix_of(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def check_outputs(outputs: dict, inputs=(), force: bool = False) -> dict[str, Path]:
    """{flag: (path or None, kind)} -> {flag: Path} for the given ones, checked (see the module docstring)."""
    checked: dict[str, Path] = {}
    seen: dict[Path, str] = {}
    input_paths = {_real(Path(p)) for p in inputs if p}
    for flag, (path, kind) in outputs.items():
        if not path:
            continue
        path = Path(path)
        allowed = EXTENSIONS[kind]
        if suffix_of(path) not in allowed:
            raise InputError(f"{flag} {path}: use a {' or '.join(allowed)} file name (the type is taken from it).")
        real = _real(path)
        if real in input_paths:
            raise InputError(f"{flag} {path} is an input of this run; write the output to another file.")
        if real in seen:
            raise InputError(f"{flag} and {seen[real]} name the same file {path}; give each output its own file.")
        seen[real] = flag
        if path.is_dir():
            raise InputError(f"{flag} {path} is a folder; give a file name.")
        if path.exists() and not force:
            raise OutputExistsError(f"{path} exists; pass --force to overwrite it.")
        _check_folder(flag, path.parent)
        checked[flag] = path
    return checked


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _check_folder(flag: str, folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".braindiffseg-check-"):
            pass
    except OSError as exc:
        raise InputError(f"{flag}: cannot write into {folder}: {exc.strerror or exc}.") from None


@contextlib.contextmanager
def atomic(path: str | Path):
    """Yields a temporary path beside `path` (same extension); renamed over `path` when the block succeeds, removed
    when it fails (OutputError for a write that failed: the previous file, if any, is untouched)."""
    path = Path(path)
    suffix = suffix_of(path)
    tmp = path.with_name(f".{path.name[:len(path.name) - len(suffix)]}.{uuid.uuid4().hex[:8]}.partial{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"Cannot write {path}: {exc.strerror or exc}; nothing was replaced.") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def write_text(path: str | Path, text: str) -> Path:
    with atomic(path) as tmp:
        Path(tmp).write_text(text)
    return Path(path)


def label_dtype(values) -> np.dtype:
    """The smallest integer type holding every label value (unsigned when none is negative)."""
    values = np.asarray(values)
    lo, hi = (int(values.min()), int(values.max())) if values.size else (0, 0)
    for dtype in (np.uint8, np.uint16, np.uint32) if lo >= 0 else (np.int8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


# docs/results section 13: BraTS2021_00006 (240 x 240 x 155, 4 sequences), the product default, first run on the
# project's 2-core CPU: 27-30 s and a peak of 3.1 GB (the benchmark process)
REFERENCE_VOXELS, REFERENCE_SECONDS, REFERENCE_GB = 240 * 240 * 155, 28.0, 3.1


def size_warning(shape, n_sequences: int = 4, total_gb: float | None = None) -> str | None:
    """A sentence for a volume more than twice a BraTS volume: the expected time and memory (scaled by voxels
    from the measured BraTS run), and whether that memory exceeds this computer's; None for smaller volumes."""
    voxels = int(np.prod(shape)) * max(1, n_sequences) / 4
    ratio = voxels / REFERENCE_VOXELS
    if ratio <= 2:
        return None
    seconds, gb = REFERENCE_SECONDS * ratio, REFERENCE_GB * ratio
    if total_gb is None:
        try:
            total_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024 ** 3
        except (AttributeError, ValueError, OSError):
            total_gb = None
    text = (f"This volume ({' x '.join(map(str, shape))}, {n_sequences} sequences) is {ratio:.1f}x a BraTS volume: "
            f"expect roughly {seconds / 60:.0f} min on a 2-core CPU and {gb:.0f} GB of memory")
    if total_gb is not None and gb > 0.8 * total_gb:
        text += (f", more than this computer's {total_gb:.0f} GB can give: crop the volume around the tumour, or use a "
                 "machine with more memory")
    return text + "."
