"""The named-runner protocol, tensor specs and runners made of plain functions."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from segzoo.errors import ModelError
from segzoo.runners import FLOAT32, TensorQuantization

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor: shape (``-1`` for a size known only at run time), the dtype of the values a runner
    takes or returns, and the quantization of the model's own tensor (float tensors: scale 0)."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    quantization: TensorQuantization = FLOAT32

    def matches(self, shape: tuple[int, ...]) -> bool:
        """True when ``shape`` fits this spec (``-1`` matches any size)."""
        return len(shape) == len(self.shape) and all(s in (-1, d) for s, d in zip(self.shape, shape))

    def to_dict(self) -> dict:
        """Plain dict for reports."""
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                "quantization": self.quantization.to_dict()}


@runtime_checkable
class NamedRunner(Protocol):
    """Anything that maps named arrays to named arrays: a model, a processing stage, a pipeline."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def predict(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once on ``feeds`` (one array per input name); one array per output name."""
        ...


def spec_names(specs: tuple[TensorSpec, ...]) -> list[str]:
    """The names of a tuple of specs, in order."""
    return [spec.name for spec in specs]


def check_feeds(runner: NamedRunner, feeds: Mapping[str, np.ndarray]) -> None:
    """ModelError naming the runner and the tensor when a feed is missing."""
    missing = [name for name in spec_names(runner.inputs) if name not in feeds]
    if missing:
        raise ModelError(f"{runner.name}: missing input(s) {', '.join(missing)}; "
                         f"it takes {', '.join(spec_names(runner.inputs))}")


def describe(runner: NamedRunner) -> dict:
    """What reports say about a named runner."""
    return {"name": runner.name, "inputs": [s.to_dict() for s in runner.inputs],
            "outputs": [s.to_dict() for s in runner.outputs]}


class FunctionRunner:
    """A plain function ``fn(**feeds) -> dict`` as a named runner (pre- and post-processing stages)."""

    def __init__(self, name: str, fn: Callable[..., dict[str, np.ndarray]], inputs: tuple[TensorSpec, ...],
                 outputs: tuple[TensorSpec, ...]) -> None:
        self.name = name
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self._fn = fn

    def predict(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Call the function with the inputs it declares; check it returns every declared output."""
        check_feeds(self, feeds)
        result = self._fn(**{name: feeds[name] for name in spec_names(self.inputs)})
        missing = [name for name in spec_names(self.outputs) if name not in result]
        if missing:
            raise ModelError(f"{self.name}: produced no {', '.join(missing)}")
        return {name: result[name] for name in spec_names(self.outputs)}


class PerItemRunner:
    """Runs a batch-1 runner over the leading axis of its inputs (N items, N may be 0) and stacks the outputs.

    Input and output specs gain a leading ``-1`` in place of the wrapped runner's batch of 1.
    """

    def __init__(self, runner: NamedRunner, name: str | None = None) -> None:
        for spec in runner.inputs + runner.outputs:
            if not spec.shape or spec.shape[0] not in (1, -1):
                raise ModelError(f"{runner.name}: tensor {spec.name} has shape {list(spec.shape)}; "
                                 "a per-item runner needs a leading batch axis of 1")
        self.runner = runner
        self.name = name or runner.name
        self.inputs = tuple(TensorSpec(s.name, (-1, *s.shape[1:]), s.dtype, s.quantization) for s in runner.inputs)
        self.outputs = tuple(TensorSpec(s.name, (-1, *s.shape[1:]), s.dtype, s.quantization) for s in runner.outputs)

    def predict(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One call of the wrapped runner per item; empty outputs of the right shape when N is 0."""
        check_feeds(self, feeds)
        counts = {len(feeds[name]) for name in spec_names(self.inputs)}
        if len(counts) != 1:
            raise ModelError(f"{self.name}: inputs have different item counts {sorted(counts)}")
        count = counts.pop()
        if count == 0:
            return {s.name: np.zeros((0, *(max(d, 0) for d in s.shape[1:])), dtype=s.dtype) for s in self.outputs}
        results = [self.runner.predict({name: feeds[name][i : i + 1] for name in spec_names(self.inputs)})
                   for i in range(count)]
        return {s.name: np.concatenate([r[s.name] for r in results]) for s in self.outputs}


def bind_by_shape(runner: NamedRunner, roles: Mapping[str, tuple[int, ...]], *, source: str) -> dict[str, str]:
    """Map each role to the runner output whose shape (batch axis excluded) it names, e.g.
    ``{"raw_boxes": (2254, 12)}`` -> ``{"raw_boxes": "Identity"}``.

    Outputs are found by shape, not by name, so the same roles bind a float .tflite, a quantized one and an
    imported Keras model whatever their tensor names. ModelError (naming ``source``) when a role matches no
    output or several.
    """
    binding = {}
    for role, shape in roles.items():
        found = [s.name for s in runner.outputs if tuple(s.shape[1:]) == tuple(shape)]
        if len(found) != 1:
            have = ", ".join(f"{s.name} {list(s.shape)}" for s in runner.outputs)
            what = "no output" if not found else f"several outputs ({', '.join(found)})"
            raise ModelError(f"{source}: {what} of shape [1,{','.join(map(str, shape))}] for {role}; "
                             f"the model has {have}")
        binding[role] = found[0]
    return binding
