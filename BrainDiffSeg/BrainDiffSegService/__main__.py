"""`python -m BrainDiffSegService serve ...`: the engine service (what a front end starts with Slicer's Python)."""
import sys

from BrainDiffSegService.server import main

sys.exit(main())
