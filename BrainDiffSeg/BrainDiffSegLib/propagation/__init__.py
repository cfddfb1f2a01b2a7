"""Propagation: a few annotated slices of one case -> a label volume for the whole case.

`propagate` (the run), `volume` (the case's normalised images and its feature extractor, built in one place),
`sources` (the one seam for features: fresh, a per-volume `cache`, or an extractor the caller gives), `features`
(the backbone's decoder activations and the intensity maps), `classifier` (the MLP ensemble), `predict` (coarse-to-
fine prediction of the other slices), `refine` (the 3D gate and refinements), `suggest` (which slice to paint next).
"""
