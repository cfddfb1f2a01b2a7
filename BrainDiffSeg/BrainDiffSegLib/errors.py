"""Exceptions raised for bad input. Every message names the offending file or argument and the problem."""


class BrainDiffSegError(Exception):
    """Base class: a user-facing error whose message is meant to be shown as is."""


class InputError(BrainDiffSegError, ValueError):
    """Input images or annotations are missing, malformed or inconsistent."""


class CheckpointError(BrainDiffSegError, ValueError):
    """A checkpoint is missing, corrupt or does not match the requested configuration."""


class OutputExistsError(BrainDiffSegError, FileExistsError):
    """An output file exists and overwriting was not requested."""


class CancelledError(BrainDiffSegError):
    """Long-running work was cancelled by the caller."""


class EngineError(BrainDiffSegError):
    """The engine's computation went wrong in a way the user must hear about (e.g. a result that is not finite),
    instead of a silent wrong result; nothing is written."""
