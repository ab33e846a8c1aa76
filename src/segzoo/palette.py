"""Class colour palettes for masks and overlays."""

from __future__ import annotations

import numpy as np


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map (bit-interleaved), ``n`` x 3 uint8; index 255 is the void colour."""
    palette = np.zeros((n, 3), dtype=np.uint8)
    for index in range(n):
        c, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette[index] = (r, g, b)
    return palette


def flat_palette(n: int = 256) -> list[int]:
    """VOC palette flattened for ``PIL.Image.putpalette``."""
    return voc_palette(n).reshape(-1).tolist()
