"""BrainDiffSeg engine: diffusion-feature pixel classifiers for few-slice brain-tumour segmentation.

Pure Python on torch / numpy / nibabel / scikit-image (and diffusers for the U-Net); never imports Slicer, Qt or VTK.
"""
__version__ = "0.1.0"
