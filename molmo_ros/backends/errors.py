"""What every backend raises; each error says what went wrong and what to do about it.

The pointing service maps these types to its error codes, whatever backend runs the model, and the node
and the CLI show the messages to people, so the text must stand on its own. A message about a setting
says "the device setting" and lists it in `settings`: the node then adds "parameter engine.device", the CLI
"option --device" (`molmo_ros.settings_fields.worded`).
"""

from molmo_ros.settings_fields import RefersToSettings

# Which backends take several images in one prompt; said wherever a request needs them.
SEVERAL_IMAGES_HINT = (
    "several images in one prompt need the molmo2 backend, or openai with a server that serves Molmo2"
)


class BackendError(RefersToSettings, RuntimeError):
    """Base class: anything a backend reports on purpose."""


class WeightsNotFoundError(BackendError):
    """The checkpoint is neither a local directory nor downloadable (offline, no network, wrong id)."""


class IncompatibleCheckpointError(BackendError):
    """The files were found but are not a checkpoint this backend can run; says which backend can."""


class InvalidSettingError(BackendError, ValueError):
    """A setting names something this machine cannot use (a device it lacks, a dtype torch has not);
    the message says which values it takes."""


class InvalidImageError(BackendError, ValueError):
    """The image cannot be fed to the model (wrong shape, dtype, empty)."""


class DeviceOutOfMemoryError(BackendError):
    """The device ran out of memory; the message says which device and what to lower."""


class GenerationCancelledError(BackendError):
    """The caller cancelled the request (GenerationControl.cancel) before the answer was complete."""


class UnsupportedRequestError(BackendError, ValueError):
    """The backend cannot do what was asked (several images for a one-image model, ...); says which can."""


class ServerUnavailableError(BackendError):
    """A model server could not be reached, or did not answer in time; the message names its URL."""


class ServerResponseError(BackendError):
    """A model server answered with an HTTP error or a reply that is not a usable answer; names its URL."""
