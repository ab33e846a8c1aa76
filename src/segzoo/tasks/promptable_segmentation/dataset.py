"""Instance annotations in YOLO-seg format, rasterized to one boolean mask per instance.

Layout: an image folder and a label folder paired by file stem (``images/<split>/<id>.jpg`` and
``labels/<split>/<id>.txt``, e.g. ``../shared/datasets/coco128_semseg/images/train2017`` with
``instance_segmentation/labels/train2017``). Each label line is one instance: ``class_id x1 y1 x2 y2 ...``, the
polygon's vertices normalized to [0, 1] by the image width and height (YOLO joins the parts of a multi-part COCO
instance into one polygon with zero-width bridges; it is filled as one polygon, as YOLO rasterizes it).

An image without a label file has no annotated instances and is skipped (YOLO's ``skip_if_label_file_missing``);
a label file without an image, a malformed line or a vertex outside [0, 1] is a DataError naming the file and line.
Vertices become pixel coordinates as ``v * size - 0.5`` (pixel centres at integers) and are filled with OpenCV at
1/16-pixel precision; OpenCV includes boundary pixels, so a vertex on a pixel border covers the pixel after it
(for axis-aligned edges the same pixels as YOLO's own ``fillPoly`` of ``int32(v * size)``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from segzoo.data.layouts import IMAGE_SUFFIXES
from segzoo.data.loader import image_size, read_image
from segzoo.errors import DataError

log = logging.getLogger(__name__)

_SHIFT = 4  # fillPoly sub-pixel bits


@dataclass(frozen=True)
class Polygon:
    """One label line: the class id and the vertices ``[P, 2]`` (x, y) normalized to [0, 1]."""

    class_id: int
    vertices: np.ndarray
    line: int


@dataclass(frozen=True)
class InstanceSample:
    """One image and the instances of its label file."""

    id: str
    image_path: Path
    label_path: Path
    polygons: tuple[Polygon, ...]

    def image(self) -> np.ndarray:
        """The image, RGB uint8 ``[H, W, 3]``."""
        return read_image(self.image_path)

    def masks(self, image_hw: tuple[int, int] | None = None) -> list[np.ndarray]:
        """One boolean ``[H, W]`` mask per instance, in file order."""
        hw = image_hw or image_size(self.image_path)
        return [rasterize(p.vertices, hw) for p in self.polygons]


def _parse_line(text: str, path: Path, number: int) -> Polygon:
    fields = text.split()
    try:
        class_id = int(fields[0])
        values = np.array([float(v) for v in fields[1:]], dtype=np.float64)
    except ValueError as exc:
        raise DataError(f"{path}, line {number}: expected 'class_id x1 y1 x2 y2 ...' numbers ({exc})") from exc
    if values.size % 2 or values.size < 6:
        raise DataError(f"{path}, line {number}: a polygon needs an even number of coordinates, at least 3 "
                        f"vertices; got {values.size} values")
    if not np.all(np.isfinite(values)) or values.min() < 0.0 or values.max() > 1.0:
        raise DataError(f"{path}, line {number}: coordinates must be normalized to [0, 1] (YOLO-seg); got values "
                        f"from {values.min():g} to {values.max():g}")
    return Polygon(class_id, values.reshape(-1, 2), number)


def read_polygons(path: str | Path) -> list[Polygon]:
    """The instances of one YOLO-seg label file (blank lines skipped); DataError naming file and line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read label file ({exc})") from exc
    return [_parse_line(text, path, n) for n, text in enumerate(lines, start=1) if text.strip()]


def rasterize(vertices: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """Boolean ``[H, W]`` mask of a polygon with vertices normalized to [0, 1]."""
    height, width = image_hw
    pixels = vertices * np.array([width, height], dtype=np.float64) - 0.5
    points = np.round(pixels * (1 << _SHIFT)).astype(np.int32).reshape(-1, 1, 2)
    mask = np.zeros((height, width), dtype=np.uint8)
    cv2.fillPoly(mask, [points], 1, lineType=cv2.LINE_8, shift=_SHIFT)
    return mask.astype(bool)


def _index(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    index: dict[str, Path] = {}
    for path in files:
        index.setdefault(path.stem, path)
    return index


def instance_samples(images_dir: str | Path, labels_dir: str | Path) -> list[InstanceSample]:
    """Every image with a label file, sorted by id; DataError for a missing folder or a label without image."""
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    for folder, what in ((images_dir, "image"), (labels_dir, "label")):
        if not folder.is_dir():
            raise DataError(f"{folder}: {what} folder not found")
    images, labels = _index(images_dir, IMAGE_SUFFIXES), _index(labels_dir, (".txt",))
    orphans = sorted(set(labels) - set(images))
    if orphans:
        raise DataError(f"{labels_dir}: {len(orphans)} label file(s) without an image in {images_dir}: "
                        f"{', '.join(orphans[:5])}")
    unlabeled = len(images) - len(labels)
    if unlabeled:
        log.info("%s: %d image(s) without a label file skipped (no annotated instances)", images_dir, unlabeled)
    return [InstanceSample(stem, images[stem], labels[stem], tuple(read_polygons(labels[stem])))
            for stem in sorted(labels)]


def iter_instances(samples: list[InstanceSample]) -> Iterator[tuple[InstanceSample, np.ndarray, list[np.ndarray]]]:
    """``(sample, image, masks)`` per image, each image read and rasterized once."""
    for sample in samples:
        image = sample.image()
        yield sample, image, sample.masks(image.shape[:2])
