"""The one error type of the depth package."""


class DepthError(ValueError):
    """Depth or camera geometry that cannot be used; the message says what is wrong and how to fix it."""
