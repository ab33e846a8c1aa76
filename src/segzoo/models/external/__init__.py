"""Third-party model pipelines used as they are published (several .tflite files and the code between them).

``PIPELINES`` maps a ``general.pipeline`` preset to ``"module:PRESET"``: an object with ``name``, ``task`` and
``files`` (the file names expected in ``general.model_path``, a folder), optionally ``sources`` (where each file
is published, for ``segzoo.models.weights_store.locate_weights`` when ``general.model_path`` is not given).
No TensorFlow is imported here.
"""

from __future__ import annotations

import difflib
from types import MappingProxyType
from typing import Any

from segzoo.errors import ConfigError
from segzoo.models.base import resolve

PIPELINES: MappingProxyType[str, str] = MappingProxyType({
    "mediapipe_pose_full": "segzoo.tasks.pose_estimation.preset:MEDIAPIPE_POSE_FULL",
})


def get_pipeline(name: str) -> Any:
    """The preset of pipeline ``name``; ConfigError naming the known ones."""
    if name not in PIPELINES:
        known = ", ".join(sorted(PIPELINES)) or "none"
        close = difflib.get_close_matches(str(name), list(PIPELINES), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ConfigError(f"general.pipeline: unknown pipeline {name!r}{hint} (known pipelines: {known})")
    return resolve(PIPELINES[name])
