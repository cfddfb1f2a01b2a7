"""Healthy-tissue inpainting (after Durrer et al., 2024): `inpaint` (a masked region of a case -> healthy-looking
tissue, DDIM sampling), `model` (the inpainting network and its checkpoint), `masks` (brain and healthy masks),
`fill` (the classical fill it starts from). Training lives in `BrainDiffSegLib.training.inpaint`.
"""
