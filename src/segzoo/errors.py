"""User-facing error types.

Every error a user can cause (bad config, bad data, bad model) is a ``SegzooError``:
the entry point prints its message without a traceback and exits non-zero.
"""


class SegzooError(Exception):
    """Base class of errors caused by user input; the message says what to fix."""

    exit_code = 1


class ConfigError(SegzooError):
    """Invalid configuration: unknown key, bad value, missing key for a mode."""

    exit_code = 2


class DataError(SegzooError):
    """Bad dataset input: missing pair, unreadable file, bad mask values or sizes."""

    exit_code = 3


class ModelError(SegzooError):
    """A model that cannot be loaded, built or run as asked."""

    exit_code = 4

# Exit code 5: segzoo.remote.RemoteError (SSH to a board).
