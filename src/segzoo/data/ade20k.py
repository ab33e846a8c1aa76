"""ADE20K SceneParsing (150 classes) in segzoo's terms: class names and the mask-value mapping.

ADE20K's ``annotations/*.png`` hold 0 for "other" (ignored) and 1..150 for the classes of ``objectInfo150.csv``
(row ``Idx = v`` names value ``v``). segzoo's classes are 0-based, so value ``v`` becomes class ``v - 1`` and 0 the
ignore index: mmsegmentation's ``reduce_zero_label``, the convention of PaddleSeg's and mmseg's ADE20K models.
The folder layout (``images/`` + ``annotations/``, paired by file stem) is a plain folder pair.
"""

from __future__ import annotations

import csv
from pathlib import Path

from segzoo.errors import DataError

NUM_CLASSES = 150
REQUIRED_COLUMNS = ("Idx", "Name")
CLASS_NAMES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet", "sidewalk",
    "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water", "painting", "sofa",
    "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp",
    "bathtub", "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter", "sand",
    "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case",
    "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table",
    "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island", "computer",
    "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower",
    "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel",
    "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship",
    "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name",
    "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce",
    "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board",
    "shower", "radiator", "glass", "clock", "flag",
)
"""The short names of the 150 classes, as mmsegmentation and PaddleSeg report them (value ``v`` -> ``v - 1``)."""


def read_class_names(object_info: str | Path) -> list[str]:
    """The 150 class names in value order, checked against ``objectInfo150.csv``.

    The csv's ``Name`` column separates both words and synonyms with ``;`` (``chest;of;drawers;chest;bureau``), so
    the short names come from :data:`CLASS_NAMES`; every row must contain the words of its short name, otherwise
    the file is not the SceneParsing class list (DataError naming the row).
    """
    path = Path(object_info)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise DataError(f"{path}: cannot read the ADE20K class list: {exc}") from exc
    if not rows or any(column not in rows[0] for column in REQUIRED_COLUMNS):
        raise DataError(f"{path}: not an ADE20K objectInfo150.csv (needs the columns {', '.join(REQUIRED_COLUMNS)})")
    try:
        by_index = {int(row["Idx"]): row["Name"].strip() for row in rows}
    except ValueError as exc:
        raise DataError(f"{path}: column Idx must hold integers: {exc}") from exc
    if sorted(by_index) != list(range(1, NUM_CLASSES + 1)):
        raise DataError(f"{path}: expected class indices 1..{NUM_CLASSES}, found {len(by_index)} rows "
                        f"({min(by_index)}..{max(by_index)})")
    for value, name in enumerate(CLASS_NAMES, start=1):
        if not set(name.split()) <= set(by_index[value].split(";")):
            raise DataError(f"{path}: row Idx={value} names {by_index[value]!r}, expected the ADE20K class "
                            f"{name!r}: this is not SceneParsing's objectInfo150.csv")
    return list(CLASS_NAMES)


def class_mapping(ignore_index: int = 255) -> dict[int, int]:
    """``dataset.class_mapping`` for ADE20K masks: ``{0: ignore_index, 1: 0, ..., 150: 149}``."""
    return {0: ignore_index, **{value: value - 1 for value in range(1, NUM_CLASSES + 1)}}


def dataset_section(object_info: str | Path, images: str, annotations: str, ignore_index: int = 255) -> dict:
    """The ``dataset`` keys of an ADE20K evaluation config (``test_path``/``test_masks_path``)."""
    return {
        "name": "ade20k",
        "class_names": read_class_names(object_info),
        "test_path": images,
        "test_masks_path": annotations,
        "class_mapping": class_mapping(ignore_index),
        "ignore_index": ignore_index,
    }
