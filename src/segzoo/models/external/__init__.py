"""Third-party model pipelines used as they are published (several .tflite files and the code between them).

``PIPELINES`` maps a ``general.pipeline`` preset to ``"module:PRESET"``: an object with ``name``, ``task`` and
``files`` (the file names expected in ``general.model_path``, a folder). No TensorFlow is imported here.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from segzoo.errors import ConfigError
from segzoo.models.base import resolve

PIPELINES: MappingProxyType[str, str] = MappingProxyType({})


def get_pipeline(name: str) -> Any:
    """The preset of pipeline ``name``; ConfigError naming the known ones."""
    if name not in PIPELINES:
        known = ", ".join(sorted(PIPELINES)) or "none"
        raise ConfigError(f"general.pipeline: unknown pipeline {name!r}; known pipelines: {known}")
    return resolve(PIPELINES[name])
