"""Training the networks: `ddpm` (the unconditional DDPM backbone of the features, from unlabelled slices),
`slices` (those slices, and their packed form for GPU machines), `inpaint` (the inpainting network).
"""
