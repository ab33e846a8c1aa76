"""Training targets computed from the label map, for families whose losses need more than the labels.

``TARGETS`` maps a target name (a family's ``Family.targets``) to ``"module:function"``, a factory
``(params, ignore_index) -> fn`` where ``fn`` maps one int32 label map ``[H, W]`` (after augmentation) to the
target tensor, inside the tf.data pipeline.
"""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType
from typing import Any

from segzoo.errors import ModelError
from segzoo.models.base import resolve

TARGETS: MappingProxyType[str, str] = MappingProxyType({})


def target_function(name: str, params: Any, ignore_index: int) -> Callable:
    """The label map -> target function of target ``name`` for a model with ``params``."""
    if name not in TARGETS:
        raise ModelError(f"unknown training target {name!r}; known: {', '.join(TARGETS) or 'none'}")
    return resolve(TARGETS[name])(params, ignore_index)
