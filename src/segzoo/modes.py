"""operation_mode -> the list of steps it runs. Chains are compositions of steps, never copies.

Step names map to functions in ``segzoo.steps``; this module imports nothing heavy.
"""

from __future__ import annotations

from types import MappingProxyType

MODES: MappingProxyType[str, tuple[str, ...]] = MappingProxyType({
    "training": ("train", "evaluate"),
    "evaluation": ("evaluate",),
    "prediction": ("predict",),
    "quantization": ("quantize", "quantization_report"),
    "chain_tqe": ("train", "quantize", "evaluate", "quantization_report"),
    "chain_eqe": ("evaluate", "quantize", "evaluate", "quantization_report"),
    "benchmarking": ("benchmark",),
    "chain_tqeb": ("train", "quantize", "evaluate", "quantization_report", "benchmark"),
    "chain_eqeb": ("evaluate", "quantize", "evaluate", "quantization_report", "benchmark"),
    "chain_qb": ("quantize", "quantization_report", "benchmark"),
    "deployment": ("deploy",),
    "chain_qd": ("quantize", "quantization_report", "deploy"),
})
"""Every available operation_mode and its steps, in order."""


def steps_for(mode: str) -> tuple[str, ...]:
    """The steps of an operation mode (the config schema has already checked the name)."""
    return MODES[mode]
