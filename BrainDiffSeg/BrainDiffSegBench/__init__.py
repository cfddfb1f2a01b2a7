"""BrainDiffSeg's benchmarks (`braindiffseg benchmark ...`): not part of the engine and not shipped to Slicer users.

Everything runs headless through the engine (`BrainDiffSegLib`): the propagation comparison under the project's
protocol (`propagation`, with the supervised networks of `segnets` and the Slicer baselines of `baselines`), the
feature-selection experiment (`features`), the paper's few-shot experiment (`fewshot`), the speed and memory benchmark
(`speed`), and joining runs split over several processes (`merge`). Shared pieces: the project's fixed data split
(`splits`), HD95 (`metrics`, MONAI), rounding / machine description / NaN-aware statistics / tables and plots
(`report`), overlay pictures (`overlay`). Needs the `baselines` extra (ITK, MONAI) for some methods; each imports
it only when it runs.
"""
