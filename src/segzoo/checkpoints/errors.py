"""The error raised for a checkpoint file that cannot be read safely."""

from __future__ import annotations

from segzoo.errors import ModelError


class CheckpointError(ModelError):
    """A checkpoint that is corrupt, truncated, of an unknown format or that names code segzoo refuses to run.

    The message names the file and what is wrong with it.
    """
