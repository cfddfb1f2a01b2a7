"""The project's fixed split of the shared cases: tune on 'tuning', report on 'test', never tune on 'test'."""
from __future__ import annotations

from pathlib import Path

from .io import find_cases


def data_split(root: Path) -> dict[str, list[Path]]:
    """The project's fixed split of the shared cases: tune on 'tuning', report on 'test', never tune on 'test'.

    tuning: the first 5 BraTS 2018 cases and every 8th LGG patient (sorted by name); test: all others,
    BraTS2021_00006 included.
    """
    root = Path(root)
    brats18 = find_cases(root / "brats2018") if (root / "brats2018").exists() else []
    lgg = find_cases(root / "lgg128") if (root / "lgg128").exists() else []
    other = [c for c in find_cases(root) if c not in brats18 and c not in lgg]
    tuning = brats18[:5] + lgg[::8]
    test = [c for c in brats18 + lgg + other if c not in tuning]
    return {"tuning": tuning, "test": test}
