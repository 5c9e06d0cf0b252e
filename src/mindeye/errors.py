"""User-facing errors.

Anything the user can fix (bad input, missing weights, an existing output directory)
raises :class:`MindEyeError`. The CLI prints its message without a traceback and exits
with status 2; library callers can catch it like any exception.
"""


class MindEyeError(Exception):
    """An error caused by input the user controls; the message says what is wrong and how to fix it."""

    exit_code = 2


class WeightsUnavailableError(MindEyeError):
    """Pretrained weights could not be found locally or downloaded."""
