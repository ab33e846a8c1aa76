"""Readable, unique Keras layer names from TFLite tensor names.

TFLite tensor names are TF op paths, often several joined by ``;`` when the converter fused ops
(``model_1/model/re_lu/Relu6;model_1/model/batch_normalization/FusedBatchNormV3;...``): the first one names the
op's result. Keras layer names cannot hold ``/``; every character outside ``[A-Za-z0-9_.-]`` becomes ``_``, and a
name that does not start with a letter gets a ``t_`` prefix. Repeated names get ``_1``, ``_2``, ... (TFLite does not
require unique tensor names: the pose models reuse several).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_BAD = re.compile(r"[^A-Za-z0-9_.-]+")


def sanitize(tensor_name: str) -> str:
    """A Keras-safe layer name for a TFLite tensor name (not yet unique)."""
    first = tensor_name.split(";")[0]
    name = _BAD.sub("_", first).strip("_.-")
    if not name:
        return "tensor"
    return name if name[0].isalpha() else f"t_{name}"


@dataclass
class NameTable:
    """The layer names given so far."""

    used: set[str] = field(default_factory=set)

    def take_exact(self, name: str) -> str:
        """``name``, or ``name_<n>`` with the smallest n that is still free; recorded as used."""
        candidate, n = name, 0
        while candidate in self.used:
            n += 1
            candidate = f"{name}_{n}"
        self.used.add(candidate)
        return candidate

    def take(self, tensor_name: str) -> str:
        """The unique layer name for a TFLite tensor name."""
        return self.take_exact(sanitize(tensor_name))
