"""Names and values shared by the engine, the Slicer module and the front ends. Standard library only: the Slicer
module imports this before torch (or anything else of the engine's) is installed."""
from __future__ import annotations

ROLES = ("t1", "t1ce", "t2", "flair")  # the MRI sequences, in the order of the backbone's input channels

# BraTS label values -> (name, display colour RGB 0..1): 1 necrotic / non-enhancing core, 2 edema, 4 enhancing tumour
BRATS_CLASSES = {
    1: ("Necrotic core", (0.90, 0.10, 0.10)),
    2: ("Edema", (0.10, 0.80, 0.20)),
    4: ("Enhancing tumour", (1.00, 0.85, 0.00)),
}
BRATS_VALUES = (0, 1, 2, 4)
# seeds mode (issue 23): the label value of the Background segment (0 is "unknown" there); no BraTS class uses it
BACKGROUND_LABEL = 9
BACKGROUND_NAME, BACKGROUND_COLOR = "Background", (0.35, 0.55, 0.95)
REGIONS_BRATS = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}  # evaluation regions (BraTS convention)

AFFINE_TOLERANCE_MM = 1e-3  # two images are on one grid when their affines agree to this (origin, spacing, axes)

MODEL_ENV = "BRAINDIFFSEG_MODEL"  # backbone folder to use instead of the bundled one
DATA_ENV = "BRAINDIFFSEG_DATA"  # root of the shared data (default ../shared/data beside the repository)
