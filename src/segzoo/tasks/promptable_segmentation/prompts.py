"""Point prompts: ``{"image.jpg": [{"x": 120.5, "y": 64, "label": 1}, ...], ...}`` in a JSON file.

``x``, ``y`` are image pixel coordinates (x to the right, y down, pixel centres at integers, as SAM takes them);
``label`` is 1 for a positive point (on the object) and 0 for a negative one (background). Each entry has exactly
these three fields; anything else is a DataError naming the file, the image and the entry's position.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segzoo.errors import DataError

FIELDS: tuple[str, ...] = ("x", "y", "label")
LABELS: tuple[int, ...] = (0, 1)


@dataclass(frozen=True)
class PointPrompt:
    """One click: image pixel coordinates and its label (1 positive, 0 negative)."""

    x: float
    y: float
    label: int


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_point(entry: Any, where: str) -> PointPrompt:
    """One ``{"x", "y", "label"}`` entry; DataError naming ``where`` and the faulty field."""
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected an object {{\"x\", \"y\", \"label\"}}, got {type(entry).__name__} "
                        f"{entry!r}")
    missing = [f for f in FIELDS if f not in entry]
    unknown = sorted(set(entry) - set(FIELDS))
    if missing or unknown:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + \
                ([f"unknown field(s) {', '.join(map(str, unknown))}"] if unknown else [])
        raise DataError(f"{where}: {'; '.join(parts)} (each point has exactly x, y and label)")
    for field in ("x", "y"):
        if not _number(entry[field]):
            raise DataError(f"{where}: '{field}' must be a finite number of image pixels, got {entry[field]!r}")
    label = entry["label"]
    if isinstance(label, bool) or not isinstance(label, int) or label not in LABELS:
        raise DataError(f"{where}: 'label' must be 1 (positive) or 0 (negative), got {label!r}")
    return PointPrompt(float(entry["x"]), float(entry["y"]), int(label))


def parse_prompts(data: Any, source: str) -> dict[str, list[PointPrompt]]:
    """The prompts of a parsed JSON document (see the module docstring); ``source`` names it in errors."""
    if not isinstance(data, dict):
        raise DataError(f"{source}: expected an object mapping image file names to lists of points, "
                        f"got {type(data).__name__}")
    prompts: dict[str, list[PointPrompt]] = {}
    for image, points in data.items():
        if not isinstance(points, list) or not points:
            raise DataError(f"{source}: image '{image}': expected a non-empty list of points, got {points!r}")
        prompts[image] = [parse_point(p, f"{source}: image '{image}', point {i}") for i, p in enumerate(points)]
    return prompts


def load_prompts(path: str | Path) -> dict[str, list[PointPrompt]]:
    """Read a prompts JSON file; DataError for a missing or malformed file or entry."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"{path}: prompts file not found") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read the prompts file as JSON ({exc})") from exc
    return parse_prompts(data, str(path))


def check_in_image(points: list[PointPrompt], image_hw: tuple[int, int], where: str) -> None:
    """DataError if a point lies outside the image (``0 <= x < W``, ``0 <= y < H``)."""
    height, width = image_hw
    for i, p in enumerate(points):
        if not (0 <= p.x < width and 0 <= p.y < height):
            raise DataError(f"{where}, point {i}: ({p.x}, {p.y}) is outside the {width}x{height} image")


def as_arrays(points: list[PointPrompt]) -> tuple[np.ndarray, np.ndarray]:
    """``(coords [K, 2] float32 (x, y), labels [K] int32)``."""
    coords = np.array([[p.x, p.y] for p in points], dtype=np.float32).reshape(-1, 2)
    return coords, np.array([p.label for p in points], dtype=np.int32)
