"""The 3D Slicer side of BrainDiffSeg (the module file `BrainDiffSeg.py` is its entry point).

Modules:
- `compat`: Slicer's ScriptedLoadableModule* base classes in the application, Qt-less stand-ins under slicer-core;
  `tr` / `translate`.
- `segments`: segment names <-> BraTS labels, terminology, colours, sequence roles guessed from volume names, the
  node attribute and reference-role names (standard library only).
- `arrays`: MRML volumes / segmentations <-> engine arrays (axes, grids, painting from arrays), the input checks.
- `logic`: `BrainDiffSegLogic` (scene and module logics passed in): propagate (blocking or in the background),
  loadCase, saveSegmentation.
- `parameters`: the module's parameter node <-> `BrainDiffSegLib.options.PropagationOptions`, plus the panel's own
  parameters (standard library only).
- `install`: missing engine packages, the pinned requirements, installing them inside Slicer.
- `widget`: `BrainDiffSegWidget`, the Qt panel (Slicer application only).
- `headless`: a slicer-core scene with its module logics for scripts and tests; the benchmark's propagator.

The engine (`BrainDiffSegLib`) never imports anything from here, nor slicer / qt / vtk.
"""
