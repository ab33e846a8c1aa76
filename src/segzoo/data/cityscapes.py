"""Cityscapes conventions: the 19 evaluated classes (trainIds 0..18) and the official labelId -> trainId table
(``cityscapesscripts/helpers/labels.py``: every label whose ``trainId`` is 255 or -1 is ignored)."""

from __future__ import annotations

from types import MappingProxyType

CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)

LABEL_ID_TO_TRAIN_ID = MappingProxyType({
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14,
    28: 15, 31: 16, 32: 17, 33: 18,
})
"""labelIds of the 19 evaluated classes; every other labelId (0-6, 9, 10, 14-16, 18, 29, 30, -1) is ignored."""
