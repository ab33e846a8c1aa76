"""User-facing error types and exit codes.

Every error a user can cause (bad config, bad data, bad model) is a ``SegzooError``: the entry point prints its
message without a traceback and exits non-zero. Exit codes:

==  ==============================================================================================================
0   finished, nothing skipped
2   configuration error (:class:`ConfigError`)
3   data error (:class:`DataError`)
4   model error (:class:`ModelError`), including a file segzoo wrote that was damaged since (sha256 mismatch)
5   board (SSH) error (``segzoo.remote.RemoteError``)
6   finished, but some items were skipped (``dataset.on_bad_sample: skip``, unreadable prediction inputs): every
    readable item was processed; ``results.json`` and the log list the skipped ones (:data:`EXIT_SKIPPED`)
7   an output could not be written: disk full or quota exceeded (:class:`OutputError`)
8   a multi-worker training cluster that did not form or lost a worker (:class:`ClusterError`)
==  ==============================================================================================================
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


class OutputError(SegzooError):
    """An output file could not be written (no space left on the device, quota exceeded)."""

    exit_code = 7


EXIT_SKIPPED = 6
"""Exit code of a run that finished but skipped unreadable or unusable items (listed in ``results.json``)."""


class ClusterError(SegzooError):
    """A multi-worker training cluster that cannot start, or that lost a worker during training."""

    exit_code = 8
