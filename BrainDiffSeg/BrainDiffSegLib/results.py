"""A propagation's result (numpy only: the Slicer panel's process, which never imports torch, holds results that the
engine service computed)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class PropagationResult:
    labels: np.ndarray  # label values of the annotation, axial axis last
    entropy: np.ndarray  # normalised entropy of the mean prediction, 0 on annotated slices / background
    disagreement: np.ndarray | None  # fraction of ensemble members disagreeing (None when not asked for)
    annotated_slices: list[int]
    label_values: list[int]
    timings: dict[str, float]
    device: str
    probabilities: np.ndarray | None = None  # (X, Y, Z, C) ensemble mean, only with keep_probabilities=True
    warnings: list[str] = field(default_factory=list)  # for the user (e.g. seeds outside the head were ignored)
    seeded_slices: list[int] | None = None  # axial slices with a known voxel (None: the annotated slices)
    annotation_mode: str = "slices"  # how the annotation was read (`propagation.annotation`)
    # ranked by the engine (`propagation.suggest.suggestions_of`): {"next_slice": z or None,
    # "least_certain": [[z, score], ...]}
    suggestions: dict | None = None

    def least_certain_slices(self, n: int = 5) -> list[tuple[int, float]]:
        """Predicted slices ranked by mean uncertainty over their tumour-or-uncertain pixels (`suggest`)."""
        from .propagation.suggest import rank_slices
        return rank_slices(self, n, "uncertainty")

    @classmethod
    def from_response(cls, response) -> "PropagationResult":
        """The result of a propagation job's `transfer.EngineResponse` (`jobs.run_request`)."""
        m, a = response.meta, response.arrays
        seeded = m.get("seeded_slices")
        return cls(a["labels"], a["entropy"], a.get("disagreement"), [int(z) for z in m["annotated_slices"]],
                   [int(v) for v in m["label_values"]], {k: float(v) for k, v in m["timings"].items()},
                   str(m["device"]), warnings=[str(w) for w in m.get("warnings", [])],
                   seeded_slices=None if seeded is None else [int(z) for z in seeded],
                   annotation_mode=str(m.get("annotation_mode", "slices")), suggestions=m.get("suggestions"))
