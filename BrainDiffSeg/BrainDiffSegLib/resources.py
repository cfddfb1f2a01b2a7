"""Locating the bundled resources (default backbone, icon, .ui) from the source tree, a CMake-built extension or an
installed wheel."""
from __future__ import annotations

import os
from pathlib import Path

from .constants import DATA_ENV, MODEL_ENV


def resources_dir() -> Path:
    """`Resources/` at the top of the source tree, next to the module when built or installed by CMake, or inside
    this package when installed from the wheel (`pip install .`: pyproject.toml maps Resources/ to
    BrainDiffSegLib/Resources)."""
    here = Path(__file__).resolve().parent  # .../BrainDiffSeg/BrainDiffSegLib
    # wheel (first: a stray site-packages/Resources must not win), source tree, CMake build / installed extension
    candidates = (here / "Resources", here.parent.parent / "Resources", here.parent / "Resources")
    for candidate in candidates:
        if (candidate / "Models").is_dir():
            return candidate
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return here.parent.parent / "Resources"


def default_checkpoint() -> Path:
    """The backbone to use: $BRAINDIFFSEG_MODEL if set, else the bundled default model."""
    env = os.environ.get(MODEL_ENV)
    return Path(env) if env else resources_dir() / "Models" / "backbone"


def data_root() -> Path:
    """Root of the shared data: $BRAINDIFFSEG_DATA, default `../shared/data` beside the repository."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"
