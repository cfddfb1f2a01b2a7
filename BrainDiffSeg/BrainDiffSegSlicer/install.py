"""The engine's Python packages: which are missing, the pinned requirements (Resources/requirements.txt) and
installing them inside Slicer (torch through the PyTorch extension's PyTorchUtils if present, else pip)."""
from __future__ import annotations

import importlib.util
import logging

from BrainDiffSegLib.errors import BrainDiffSegError
from BrainDiffSegLib.resources import resources_dir

log = logging.getLogger(__name__)

ENGINE_PACKAGES = ("torch", "numpy", "scipy", "nibabel", "skimage", "diffusers", "safetensors")  # import names
TORCH_REQUIREMENT = "torch==2.13.0"  # used when the PyTorch extension (PyTorchUtils) is not installed


def missingPackages() -> list[str]:
    """Python packages the engine needs that are not importable (to be installed before propagating)."""
    return [p for p in ENGINE_PACKAGES if importlib.util.find_spec(p) is None]


def requirements() -> list[str]:
    """The pinned packages of Resources/requirements.txt (torch excluded: it is installed first, separately)."""
    path = resources_dir() / "requirements.txt"
    if not path.is_file():
        raise BrainDiffSegError(f"{path} is missing: the extension is incomplete, reinstall it.")
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line]


def installEngine(missing=None) -> list[str]:
    """Install the missing packages into Slicer's Python (blocking; needs the Slicer application and a network).
    torch first (PyTorchUtils picks the build for this computer's GPU), then the pinned requirements. Returns what
    is still missing afterwards."""
    import slicer.util

    missing = missingPackages() if missing is None else missing
    if "torch" in missing:
        try:
            import PyTorchUtils

            PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False)
        except ImportError:
            log.info("PyTorchUtils not available; installing %s with pip", TORCH_REQUIREMENT)
            slicer.util.pip_install(TORCH_REQUIREMENT)
    slicer.util.pip_install(requirements())
    return missingPackages()
