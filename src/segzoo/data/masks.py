"""Mask files to class-index arrays: palette PNGs read as indices, dataset values mapped to classes.

No TensorFlow here. Palette ('P') PNGs are read with Pillow, which (unlike OpenCV and TensorFlow)
returns the stored palette indices rather than colours.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from segzoo.errors import DataError

VOID = 255  # the void label of VOC-style masks; always ignored, never merged into background
_LUT_SIZE = 1 << 16  # masks hold uint8 or uint16 values
_SHOWN = 10  # how many bad values an error message lists


def _open_array(path: Path) -> tuple[str, np.ndarray]:
    """Mode and pixel array of an image file, or a DataError naming it."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.mode, np.array(im)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot read mask ({exc})") from exc


def _narrow(values: np.ndarray, path: Path) -> np.ndarray:
    """Integer mask values as uint8, or uint16 when a value needs it."""
    if values.dtype == np.uint8:
        return values
    if values.dtype == bool:
        return values.astype(np.uint8)
    if values.dtype.kind == "f" and not np.array_equal(values, np.round(values)):
        raise DataError(f"{path}: mask holds non-integer values; masks must hold class indices")
    low, high = (values.min(), values.max()) if values.size else (0, 0)
    if low < 0 or high >= _LUT_SIZE:
        raise DataError(f"{path}: mask values must be in 0..65535, found {low}..{high}")
    return values.astype(np.uint8 if high < 256 else np.uint16)


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask file as an HxW uint8 array of stored values (uint16 if values need it).

    Palette PNGs give their indices, 'L'/'I;16'/'I' give their values, an RGB(A) mask whose colour
    channels are all equal gives one channel. A real colour mask is an error: masks must hold indices.
    """
    path = Path(path)
    mode, values = _open_array(path)
    if values.ndim == 3:
        if mode in ("LA", "PA"):
            values = values[..., 0]
        elif np.all(values[..., 1:3] == values[..., :1]):
            values = values[..., 0]
        else:
            raise DataError(
                f"{path}: mask is a colour image (mode {mode}); masks must be class-index images: palette ('P') "
                "or grayscale PNGs whose pixel values are class indices, not colours")
    return _narrow(values, path)


@dataclass(frozen=True)
class ClassMapper:
    """Maps stored mask values to class indices ``0..num_classes-1`` or ``ignore_index``.

    ``mapping`` sends a stored value to a class (or to ``ignore_index``); values not in it go to
    ``default``, or are kept when ``default`` is None. The void value 255 and ``ignore_index`` itself
    stay ``ignore_index`` unless ``mapping`` names them explicitly.
    """

    num_classes: int
    ignore_index: int = 255
    mapping: dict[int, int] | None = None
    default: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.num_classes <= 256:
            raise ValueError(f"num_classes must be in 1..256, got {self.num_classes}")
        targets = list((self.mapping or {}).values()) + [self.ignore_index]
        if self.default is not None:
            targets.append(self.default)
        bad = sorted({t for t in targets if not 0 <= int(t) <= 255})
        if bad:
            raise ValueError(f"class mapping targets must be in 0..255 (uint8 masks), got {bad}")

    @functools.cached_property
    def _lut(self) -> np.ndarray:
        """Lookup table stored value -> mapped value (uint16: kept values above 255 stay visible to check)."""
        lut = np.arange(_LUT_SIZE, dtype=np.uint16)
        if self.default is not None:
            lut[:] = self.default
        lut[[VOID, self.ignore_index]] = self.ignore_index
        for value, target in (self.mapping or {}).items():
            if 0 <= int(value) < _LUT_SIZE:
                lut[int(value)] = target
        return lut

    @functools.cached_property
    def _lut8(self) -> np.ndarray:
        """The table for uint8 masks, as uint8 (every entry fits)."""
        return self._lut[:256].astype(np.uint8)

    def apply(self, mask: np.ndarray) -> np.ndarray:
        """Mapped HxW mask: uint8 (uint16 only when kept values above 255 remain, which ``check`` rejects)."""
        if mask.dtype == np.uint8:
            return self._lut8[mask]
        mapped = self._lut[_narrow(mask, Path("<mask>")).astype(np.uint16, copy=False)]
        return mapped.astype(np.uint8) if mapped.size and mapped.max() < 256 else mapped

    def invalid_values(self, mapped: np.ndarray) -> list[int]:
        """Sorted values that are neither a class index nor ``ignore_index``."""
        present = np.flatnonzero(np.bincount(mapped.ravel(), minlength=1))
        return [int(v) for v in present if v >= self.num_classes and v != self.ignore_index]

    def check(self, mapped: np.ndarray, path: str | Path) -> None:
        """Raise a DataError naming ``path`` and the bad values when a mapped mask holds invalid values."""
        bad = self.invalid_values(mapped)
        if bad:
            shown = ", ".join(map(str, bad[:_SHOWN])) + (", ..." if len(bad) > _SHOWN else "")
            raise DataError(
                f"{path}: mask values [{shown}] are neither a class index (0..{self.num_classes - 1}), mapped by "
                f"dataset.class_mapping, nor dataset.ignore_index ({self.ignore_index})")
