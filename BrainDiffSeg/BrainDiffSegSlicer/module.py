"""The module's classes (Slicer finds them by name in the module file `BrainDiffSeg.py`, which imports them from here
once `version` found the running Slicer recent enough): the module description `BrainDiffSeg`, the Logic and
Widget re-exported, and the self-test `BrainDiffSegTest`. Imports inside Slicer and under the `slicer-core` wheel
(MRML without Qt), and never imports torch or the engine's other heavy packages (they may not be installed yet).
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from BrainDiffSegLib.resources import resources_dir
from BrainDiffSegSlicer.compat import (SLICER_APPLICATION, ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                       ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from BrainDiffSegSlicer.compat import tr as _
from BrainDiffSegSlicer.compat import translate
from BrainDiffSegSlicer.logic import BrainDiffSegLogic

if SLICER_APPLICATION:
    from BrainDiffSegSlicer.widget import BrainDiffSegWidget
else:
    class BrainDiffSegWidget(ScriptedLoadableModuleWidget):
        """The panel needs the Slicer application (constructing it raises RuntimeError under slicer-core)."""

__all__ = ["SLICER_APPLICATION", "BrainDiffSeg", "BrainDiffSegLogic", "BrainDiffSegWidget", "BrainDiffSegTest",
           "ScriptedLoadableModule", "ScriptedLoadableModuleLogic"]

log = logging.getLogger(__name__)
TESTING_DIR = Path(__file__).resolve().parents[2] / "Testing" / "Python"  # present in the source tree only


class BrainDiffSeg(ScriptedLoadableModule):
    """Module description shown by Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("BrainDiffSeg")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["Segmentations", "Volumes"]
        self.parent.contributors = ["BrainDiffSeg developers"]
        self.parent.helpText = _("""
Few-slice brain-tumour segmentation. Load the co-registered MRI sequences of a case (any of T1, T1ce, T2, FLAIR, on
one grid), paint the tumour on a few axial slices with the Segment Editor (one segment per class: e.g. 'Necrotic
core', 'Edema', 'Enhancing tumour' for the BraTS classes, or any segments of your own), and propagate: every other
axial slice is segmented by a pixel classifier trained on the painted slices, using features of a denoising
diffusion model. The result is written to a new segmentation ('&lt;segmentation&gt; propagated'); the painted
segmentation is left unchanged. Painted slices keep their labels exactly; an optional uncertainty volume shows
where to correct.
Segments are matched to BraTS labels by name (necrotic/NCR -> 1, edema/ED -> 2, enhancing/ET -> 4); other
segments are numbered 1..N in segment order.
""")
        self.parent.acknowledgementText = _("""
Method after Alshenoudy et al., <i>Semi-supervised Brain Tumor Segmentation Using Diffusion Models</i>, AIAI 2023
(Artificial Intelligence Applications and Innovations, IFIP AICT, Springer), and Baranchuk D., Rubachev I., Voynov A.,
Khrulkov V., Babenko A., <i>Label-Efficient Semantic Segmentation with Diffusion Models</i>, ICLR 2022.
The bundled backbone was trained on BraTS (Menze et al. 2015; Bakas et al. 2017, 2018; Baid et al. 2021) and
TCGA-LGG (Buda et al. 2019) images; their terms of use apply.
""")
        icon = self.iconPath()
        if SLICER_APPLICATION and icon is not None and getattr(parent, "icon", None) is not None \
                and parent.icon.isNull():
            import qt  # only inside Slicer

            parent.icon = qt.QIcon(str(icon))  # running from the source tree: Resources/ is at the top level

    @staticmethod
    def iconPath() -> Path | None:
        """The module icon: `Resources/Icons/BrainDiffSeg.png` next to the module (built) or at the top level
        of the source tree (the engine's `resources_dir()` looks in both places)."""
        path = resources_dir() / "Icons" / "BrainDiffSeg.png"
        return path if path.is_file() else None


class BrainDiffSegTest(ScriptedLoadableModuleTest):
    """Smoke test (Slicer's self-test, `slicer_add_python_unittest`): runs the scenarios of the source tree's
    `Testing/Python/slicer_scenarios.py` (a synthetic propagation from complete slices, and from seeds: strokes in
    three views; a real case in the background, updated in place, then cancelled; healthy-tissue inpainting of a
    real tumour core in the background, then cancelled) on the application's scene, or on a slicer-core scene.
    Skipped where Testing/ is absent."""

    def setUp(self):
        self.tearDown()
        if SLICER_APPLICATION:
            import slicer

            slicer.mrmlScene.Clear(0)
            self.logic = BrainDiffSegLogic()
        else:
            from BrainDiffSegSlicer.headless import HeadlessScene

            self._headless = HeadlessScene()
            self.logic = self._headless.logic()

    def tearDown(self):
        headless = getattr(self, "_headless", None)
        if headless is not None:
            headless.close()
        self._headless = None

    def runTest(self):
        for test in (self.test_propagate_synthetic, self.test_propagate_seeds_synthetic,
                     self.test_real_case_in_background, self.test_inpaint_in_background):
            self.setUp()
            try:
                test()
            finally:
                self.tearDown()

    def _scenarios(self):
        if not (TESTING_DIR / "slicer_scenarios.py").is_file():
            self.skipTest(f"{TESTING_DIR} is not there (an installed extension): the scenarios are in the source tree")
        if str(TESTING_DIR) not in sys.path:
            sys.path.insert(0, str(TESTING_DIR))
        import slicer_scenarios

        return slicer_scenarios

    def test_propagate_synthetic(self):
        self._scenarios().propagate_synthetic(self.logic)

    def test_propagate_seeds_synthetic(self):
        self._scenarios().propagate_seeds_synthetic(self.logic)

    def test_real_case_in_background(self):
        self._scenarios().real_case_in_background(self.logic)

    def test_inpaint_in_background(self):
        self._scenarios().inpaint_in_background(self.logic)
