"""Errors the engine raises; each one says what went wrong and what to do about it.

The node and the CLI turn these into user-facing messages, so the text must stand on its own.
"""


class EngineError(RuntimeError):
    """Base class: anything the engine reports on purpose."""


class WeightsNotFoundError(EngineError):
    """The checkpoint is neither a local directory nor downloadable (offline, no network, wrong id)."""


class IncompatibleCheckpointError(EngineError):
    """The files were found but are not a MolmoE-1B checkpoint we can map (missing or unexpected keys)."""


class InvalidImageError(EngineError, ValueError):
    """The image cannot be fed to the model (wrong shape, dtype, empty)."""


class EngineOutOfMemoryError(EngineError):
    """The device ran out of memory; the message says which device and what to lower."""
