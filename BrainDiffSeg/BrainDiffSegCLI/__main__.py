"""`python -m BrainDiffSegCLI ...` (= `braindiffseg ...`; e.g. `torchrun -m BrainDiffSegCLI train-ddpm ...`)."""
import sys

from BrainDiffSegCLI import command

sys.exit(command())
