"""BrainDiffSeg engine: diffusion-feature pixel classifiers for few-slice brain-tumour segmentation.

Three rooms - `propagation` (a few annotated slices -> the whole volume), `inpainting` (healthy tissue in a mask),
`training` (the backbone and the inpainting network) - beside the shared modules (I/O, preprocessing, the backbone,
device, options, errors, the protocol, outputs, and what crosses a process boundary: `transfer`, `jobs`, `results`).
Pure Python on torch / numpy / nibabel / scikit-image (and diffusers for the U-Net); never imports Slicer, Qt or VTK.
"""
__version__ = "0.1.0"
