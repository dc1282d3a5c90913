"""Errors the engine raises; each one says what went wrong and what to do about it.

The node and the CLI turn these into user-facing messages, so the text must stand on its own.
"""


class EngineError(RuntimeError):
    """Base class: anything the engine reports on purpose."""


class WeightsNotFoundError(EngineError):
    """The checkpoint is neither a local directory nor downloadable (offline, no network, wrong id)."""


class IncompatibleCheckpointError(EngineError):
    """The files were found but are not a MolmoE-1B checkpoint we can map (missing or unexpected keys)."""


class InvalidSettingError(EngineError, ValueError):
    """A setting names something this machine cannot use (a device it lacks, a dtype torch has not);
    the message names the setting and the values it takes."""


class InvalidImageError(EngineError, ValueError):
    """The image cannot be fed to the model (wrong shape, dtype, empty)."""


class EngineOutOfMemoryError(EngineError):
    """The device ran out of memory; the message says which device and what to lower."""


class GenerationCancelledError(EngineError):
    """The caller cancelled the request (GenerationControl.cancel) before the answer was complete."""


class UnsupportedRequestError(EngineError, ValueError):
    """The backend cannot do what was asked (several images for a one-image model, ...); says which can."""


class ServerUnavailableError(EngineError):
    """A model server could not be reached, or did not answer in time; the message names its URL."""


class ServerResponseError(EngineError):
    """A model server answered with an HTTP error or a reply that is not a usable answer; names its URL."""
