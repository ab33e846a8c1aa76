"""The augmentations the config may name, their parameters and defaults, and their validation.

No TensorFlow here: the config validator imports this before TensorFlow is loaded.
Names follow the ST model zoo. Every augmentation has ``change_rate``: the probability that it is
applied to a sample. Geometric ones move image and mask together; photometric ones touch the image only.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

from segzoo.errors import ConfigError

FLIP_MODES = ("horizontal", "vertical", "horizontal_and_vertical")

AUGMENTATIONS: dict[str, dict[str, object]] = {
    "random_flip": {"mode": "horizontal", "change_rate": 0.5},
    "random_crop": {"crop_scale": [0.5, 1.0], "aspect_ratio": [0.75, 1.33], "change_rate": 1.0},
    "random_rotation": {"factor": 0.05, "change_rate": 1.0},
    "random_translation": {"height_factor": 0.1, "width_factor": 0.1, "change_rate": 1.0},
    "random_zoom": {"factor": 0.2, "change_rate": 1.0},
    "random_brightness": {"factor": 0.2, "change_rate": 1.0},
    "random_contrast": {"factor": 0.2, "change_rate": 1.0},
    "random_gamma": {"gamma": [0.8, 1.2], "change_rate": 1.0},
    "random_hue": {"delta": 0.05, "change_rate": 1.0},
    "random_saturation": {"range": [0.7, 1.3], "change_rate": 1.0},
    "random_blur": {"sigma": [0.1, 1.5], "change_rate": 1.0},
    "random_gaussian_noise": {"stddev": [0.0, 8.0], "change_rate": 1.0},
}

GEOMETRIC: frozenset[str] = frozenset(
    {"random_flip", "random_crop", "random_rotation", "random_translation", "random_zoom"})

# Allowed interval of every numeric parameter: (low, high, low is exclusive).
_BOUNDS: dict[str, tuple[float, float, bool]] = {
    "change_rate": (0.0, 1.0, False),
    "crop_scale": (0.0, 1.0, True),
    "aspect_ratio": (0.0, float("inf"), True),
    "random_rotation.factor": (0.0, 1.0, False),
    "height_factor": (0.0, 1.0, False),
    "width_factor": (0.0, 1.0, False),
    "random_zoom.factor": (0.0, 1.0, True),
    "random_brightness.factor": (0.0, 1.0, False),
    "random_contrast.factor": (0.0, 1.0, False),
    "gamma": (0.0, float("inf"), True),
    "delta": (0.0, 0.5, False),
    "range": (0.0, float("inf"), False),
    "sigma": (0.0, float("inf"), False),
    "stddev": (0.0, float("inf"), False),
}


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"{hint}valid: {', '.join(choices)}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _in_bounds(value: float, bounds: tuple[float, float, bool]) -> bool:
    low, high, open_low = bounds
    return (value > low if open_low else value >= low) and value <= high


def _describe(bounds: tuple[float, float, bool]) -> str:
    low, high, open_low = bounds
    return f"{'(' if open_low else '['}{low:g}, {high:g}]"


def _check_value(name: str, param: str, value: Any, default: object, key: str) -> object:
    """The validated value of one parameter (ranges as a 2-tuple of floats)."""
    if param == "mode":
        if value not in FLIP_MODES:
            raise ConfigError(f"{key}: {value!r} is not a flip mode; allowed: {', '.join(FLIP_MODES)}")
        return value
    bounds = _BOUNDS[f"{name}.{param}"] if f"{name}.{param}" in _BOUNDS else _BOUNDS[param]
    if isinstance(default, list):
        ok = (isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2
              and all(map(_is_number, value))
              and value[0] <= value[1] and all(_in_bounds(v, bounds) for v in value))
        if not ok:
            raise ConfigError(f"{key}: expected [low, high], two numbers with low <= high in {_describe(bounds)}, "
                              f"got {value!r}")
        return (float(value[0]), float(value[1]))
    if not _is_number(value) or not _in_bounds(value, bounds):
        raise ConfigError(f"{key}: expected a number in {_describe(bounds)}, got {value!r}")
    return float(value)


def _check_params(name: str, params: Any, key: str) -> dict[str, object]:
    """Parameters of one augmentation with defaults filled in."""
    defaults = AUGMENTATIONS[name]
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise ConfigError(f"{key}: expected a mapping of parameters ({', '.join(defaults)}) or nothing, "
                          f"got {params!r}")
    for param in params:
        if param not in defaults:
            hint = _suggest(str(param), list(defaults))
            raise ConfigError(f"{key}.{param}: unknown parameter of {name}; {hint}")
    merged = {**defaults, **params}
    return {p: _check_value(name, p, v, defaults[p], f"{key}.{p}") for p, v in merged.items()}


def validate_augmentations(aug: Mapping[str, Any] | None,
                           path: str = "data_augmentation") -> list[tuple[str, dict]]:
    """Ordered ``(name, params with defaults)`` of a config's augmentation mapping; ConfigError when invalid."""
    if aug is None:
        return []
    if not isinstance(aug, Mapping):
        raise ConfigError(f"{path}: expected a mapping of augmentation name to parameters, got {aug!r}")
    result = []
    for name, params in aug.items():
        if name not in AUGMENTATIONS:
            raise ConfigError(f"{path}.{name}: unknown augmentation; {_suggest(str(name), list(AUGMENTATIONS))}")
        result.append((name, _check_params(name, params, f"{path}.{name}")))
    return result
