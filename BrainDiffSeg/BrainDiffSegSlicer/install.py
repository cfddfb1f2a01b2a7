"""The Python packages the module needs inside Slicer, and installing them (after the user agreed) without ever
replacing what Slicer or other extensions installed.

Two parts run on this computer: the panel's own process needs only the client of the engine service (h11; numpy
is Slicer's), and a local engine service (Slicer's Python in a process of its own) needs the engine and the server.
With a remote server, only the client is installed. Requirements are lower bounds (Resources/requirements.txt):
pip leaves a package that satisfies them as it is, only missing packages are installed at all, and the installed
numpy and torch are pinned for that install (a constraints file), so no dependency of ours replaces them. torch comes
from the PyTorch extension (PyTorchUtils, which picks the build for this computer's GPU) with `TORCH_REQUIREMENT`;
when the user declines there, nothing else is installed and the panel says why it cannot run.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import re

from BrainDiffSegLib.errors import BrainDiffSegError
from BrainDiffSegLib.resources import resources_dir

log = logging.getLogger(__name__)

CLIENT_PACKAGES = ("h11",)  # import names: what Slicer's own process needs (numpy ships with Slicer)
ENGINE_PACKAGES = ("torch", "numpy", "scipy", "nibabel", "skimage", "diffusers", "safetensors", "fastapi", "uvicorn",
                   "h11")
TORCH_REQUIREMENT = ">=2.5"  # torch.OutOfMemoryError, nn.init generators; tested with 2.13 (pyproject.toml)
DISTRIBUTIONS = {"skimage": "scikit-image"}  # import name -> distribution name where they differ


class InstallDeclined(BrainDiffSegError):
    """The user (or PyTorchUtils) declined to install a package the engine needs."""


def missingPackages(remote: bool = False) -> list[str]:
    """Packages not importable here: the client's only with a remote server, else the engine's too."""
    names = CLIENT_PACKAGES if remote else ENGINE_PACKAGES
    return [p for p in names if importlib.util.find_spec(p) is None]


def requirements() -> list[str]:
    """The lower bounds of Resources/requirements.txt (torch excluded: it is installed first, separately)."""
    path = resources_dir() / "requirements.txt"
    if not path.is_file():
        raise BrainDiffSegError(f"{path} is missing: the extension is incomplete, reinstall it.")
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line]


def requirementName(requirement: str) -> str:
    return re.split(r"[<>=!~ \[;]", requirement, maxsplit=1)[0].strip().lower()


def installedVersion(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def toInstall(missing: list[str]) -> list[str]:
    """The requirement lines of the missing import names (others are never touched)."""
    wanted = {DISTRIBUTIONS.get(name, name).lower() for name in missing}
    return [r for r in requirements() if requirementName(r) in wanted]


def installTorch() -> None:
    """torch through PyTorchUtils (with our version requirement), else pip; InstallDeclined when it is declined."""
    import slicer.util

    try:
        import PyTorchUtils
    except ImportError:
        log.info("PyTorchUtils not available; installing torch%s with pip", TORCH_REQUIREMENT)
        slicer.util.pip_install(f"torch{TORCH_REQUIREMENT}")
        return
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True,
                                                          torchVersionRequirement=TORCH_REQUIREMENT)
    if torch is None:
        raise InstallDeclined(f"PyTorch (torch{TORCH_REQUIREMENT}) was not installed, and BrainDiffSeg's engine "
                              "cannot run without it on this computer: install it with the PyTorch extension, or "
                              "use a remote server (Advanced).")


def installEngine(missing=None) -> list[str]:
    """Install the missing packages into Slicer's Python (blocking; needs the Slicer application and a network):
    torch first, then the other missing requirements as lower bounds. Returns what is still missing."""
    import slicer.util

    missing = missingPackages() if missing is None else missing
    if "torch" in missing:
        installTorch()
    lines = toInstall([m for m in missing if m != "torch"])
    if lines:
        slicer.util.pip_install(lines + keepInstalled(("numpy", "torch")))
    return missingPackages()


def keepInstalled(distributions) -> list[str]:
    """pip arguments that keep the installed versions of these packages (Slicer's numpy, the torch PyTorchUtils
    chose for the GPU): a constraints file pinning them, so that no dependency resolution replaces them."""
    import tempfile

    pins = [f"{d}=={v}" for d in distributions for v in [installedVersion(d)] if v]
    if not pins:
        return []
    with tempfile.NamedTemporaryFile("w", suffix="-constraints.txt", prefix="BrainDiffSeg-", delete=False) as f:
        f.write("\n".join(pins) + "\n")
    return ["--constraint", f.name]
