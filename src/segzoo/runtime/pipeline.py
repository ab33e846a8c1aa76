"""A pipeline of named runners is itself a named runner.

Each step reads the arrays it needs from the pipeline's namespace (the pipeline's inputs and what earlier
steps produced) and adds its outputs to it. ``inputs``/``outputs`` of a :class:`Step` rename a runner's own
tensor names to pipeline names (``{"input_1": "detector_input"}``), so models keep their file's names.
The wall time of every step of the last call is kept in ``last_timings`` (ms), nested pipelines' steps as
``outer/inner``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from segzoo.errors import ModelError
from segzoo.runtime.base import NamedRunner, TensorSpec, check_feeds


@dataclass(frozen=True)
class Step:
    """A runner in a pipeline, with renames from its tensor names to the pipeline's names."""

    runner: NamedRunner
    inputs: Mapping[str, str] = field(default_factory=dict)
    outputs: Mapping[str, str] = field(default_factory=dict)
    name: str | None = None

    @property
    def label(self) -> str:
        """The step's name in timings."""
        return self.name or self.runner.name

    def input_name(self, tensor: str) -> str:
        """Pipeline name of one of the runner's inputs."""
        return self.inputs.get(tensor, tensor)

    def output_name(self, tensor: str) -> str:
        """Pipeline name of one of the runner's outputs."""
        return self.outputs.get(tensor, tensor)


def _renamed(spec: TensorSpec, name: str) -> TensorSpec:
    return TensorSpec(name, spec.shape, spec.dtype, spec.quantization)


class Pipeline:
    """Runs its steps in order; its inputs are the names no earlier step produces, its outputs the names
    listed in ``outputs`` (default: everything the steps produce)."""

    def __init__(self, name: str, steps: Sequence[Step | NamedRunner], outputs: Sequence[str] | None = None) -> None:
        self.name = name
        self.steps = tuple(s if isinstance(s, Step) else Step(s) for s in steps)
        labels = [s.label for s in self.steps]
        if len(set(labels)) != len(labels):
            raise ModelError(f"pipeline {name}: step names are not unique ({labels})")
        produced: dict[str, TensorSpec] = {}
        needed: dict[str, TensorSpec] = {}
        for step in self.steps:
            for spec in step.runner.inputs:
                pname = step.input_name(spec.name)
                if pname not in produced and pname not in needed:
                    needed[pname] = _renamed(spec, pname)
            for spec in step.runner.outputs:
                produced[step.output_name(spec.name)] = _renamed(spec, step.output_name(spec.name))
        unknown = [n for n in outputs or () if n not in produced]
        if unknown:
            raise ModelError(f"pipeline {name}: no step produces {', '.join(unknown)}")
        self.inputs = tuple(needed.values())
        self.outputs = tuple(produced[n] for n in outputs) if outputs else tuple(produced.values())
        self.last_timings: dict[str, float] = {}

    def predict(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run every step; the declared outputs, and the time of each step in ``last_timings``."""
        check_feeds(self, feeds)
        space = dict(feeds)
        timings: dict[str, float] = {}
        for step in self.steps:
            start = time.perf_counter()
            result = step.runner.predict({s.name: space[step.input_name(s.name)] for s in step.runner.inputs})
            timings[step.label] = (time.perf_counter() - start) * 1e3
            for inner, ms in getattr(step.runner, "last_timings", {}).items():
                timings[f"{step.label}/{inner}"] = ms
            space.update({step.output_name(k): v for k, v in result.items()})
        self.last_timings = timings
        return {s.name: space[s.name] for s in self.outputs}
