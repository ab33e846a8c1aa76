"""Pair image files with mask files: Pascal VOC layout, folder pairs (CamVid, COCO), Cityscapes, id lists.

No TensorFlow here: listing and validating a dataset must be cheap and importable early.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path

from segzoo.errors import DataError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")  # in order of preference for one stem
_SHOWN = 5  # how many missing ids an error message names


@dataclass(frozen=True)
class Layout:
    """How images and masks of one sample are named: ``<id><image_suffix>.<ext>`` and ``<id><mask_suffix>.<ext>``,
    directly in the folders or anywhere below them (``recursive``)."""

    name: str
    image_suffix: str = ""
    mask_suffix: str = ""
    recursive: bool = False


LAYOUTS = {
    "pairs": Layout("pairs"),
    "cityscapes": Layout("cityscapes", "_leftImg8bit", "_gtFine_labelTrainIds", recursive=True),
    "cityscapes_label_ids": Layout("cityscapes_label_ids", "_leftImg8bit", "_gtFine_labelIds", recursive=True),
}
"""``dataset.layout`` -> its naming. ``pairs``: same file stem in two folders (VOC, CamVid, COCO masks, ADE20K).
``cityscapes``: ``leftImg8bit/<split>/<city>/<id>_leftImg8bit.png`` with ``gtFine/<split>/<city>/<id>_gtFine_
labelTrainIds.png``; ``cityscapes_label_ids`` pairs the ``_gtFine_labelIds.png`` masks instead (mapped to trainIds)."""


@dataclass(frozen=True)
class Sample:
    """One image and its mask (``None`` when there is no ground truth, e.g. for prediction)."""

    id: str
    image_path: Path
    mask_path: Path | None


def _require_dir(path: str | Path, role: str, what: str) -> Path:
    """The folder as a Path, or a DataError naming the config key it came from."""
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"{role}: {what} folder not found: {folder}")
    return folder


def _files(folder: Path, recursive: bool) -> list[Path]:
    if recursive:
        return [p for p in folder.rglob("*") if p.is_file()]
    with os.scandir(folder) as entries:
        return [Path(e.path) for e in entries if e.is_file()]


def _index(folder: Path, suffixes: tuple[str, ...], name_suffix: str = "", recursive: bool = False) -> dict[str, Path]:
    """Map sample id -> path for files with one of ``suffixes`` (case-insensitive, earlier suffix wins) whose stem
    ends with ``name_suffix`` (the id is the stem without it)."""
    rank = {suffix: i for i, suffix in enumerate(suffixes)}
    files = [p for p in _files(folder, recursive) if p.suffix.lower() in rank and p.stem.endswith(name_suffix)]
    files.sort(key=lambda p: (rank[p.suffix.lower()], p.name))
    index: dict[str, Path] = {}
    for path in files:
        index.setdefault(path.stem[: len(path.stem) - len(name_suffix)], path)
    return index


def _id_of(line: str, name_suffix: str = "") -> str:
    """The sample id of one id-list line: an id, or a path (CamVid: ``/a/val/x.png /a/valannot/x.png``)."""
    token = line.split()[0]
    if "/" in token or "\\" in token or Path(token).suffix.lower() in IMAGE_SUFFIXES + MASK_SUFFIXES:
        token = Path(token.replace("\\", "/")).stem
    return token.removesuffix(name_suffix) if name_suffix else token


def read_id_list(files_path: str | Path, role: str = "dataset", name_suffix: str = "") -> list[str]:
    """Ids listed one per line in ``files_path``; blank lines and ``#`` comments skipped, order kept
    (``name_suffix``: the layout's image suffix, dropped from file names given as ids)."""
    path = Path(files_path)
    if not path.is_file():
        raise DataError(f"{role}: id list file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{role}: cannot read the id list {path} (a UTF-8 text file, one id per line): {exc}") from exc
    ids = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            ids.append(_id_of(line, name_suffix))
    if not ids:
        raise DataError(f"{role}: id list {path} holds no ids")
    return ids


def _missing_error(missing: list[str], what: str, folder: Path, files_path: str | Path, role: str) -> DataError:
    shown = ", ".join(missing[:_SHOWN]) + (", ..." if len(missing) > _SHOWN else "")
    return DataError(f"{role}: {len(missing)} id(s) listed in {files_path} have no {what} in {folder}: {shown}")


def _listed_samples(images: dict[str, Path], masks: dict[str, Path] | None, ids: list[str],
                    dirs: tuple[Path, Path | None], files_path: str | Path, role: str) -> list[Sample]:
    """Samples for the listed ids, in list order; every id must have an image (and a mask)."""
    missing = [i for i in ids if i not in images]
    if missing:
        raise _missing_error(missing, "image (" + " ".join(IMAGE_SUFFIXES) + ")", dirs[0], files_path, role)
    if masks is not None:
        missing = [i for i in ids if i not in masks]
        if missing:
            raise _missing_error(missing, "mask (" + " ".join(MASK_SUFFIXES) + ")", dirs[1], files_path, role)
    return [Sample(i, images[i], masks[i] if masks is not None else None) for i in ids]


def _paired_samples(images: dict[str, Path], masks: dict[str, Path], dirs: tuple[Path, Path],
                    role: str) -> list[Sample]:
    """Every image with a same-stem mask, sorted by id; images without a mask are reported once."""
    ids = sorted(images)
    unpaired = [i for i in ids if i not in masks]
    if unpaired:
        logger.warning("%s: %d of %d images in %s have no mask in %s and are not used (e.g. %s)",
                       role, len(unpaired), len(ids), dirs[0], dirs[1], ", ".join(unpaired[:3]))
    return [Sample(i, images[i], masks[i]) for i in ids if i in masks]


def list_samples(images_dir: str | Path, masks_dir: str | Path | None = None, files_path: str | Path | None = None,
                 *, role: str = "dataset", layout: str = "pairs") -> list[Sample]:
    """List the (image, mask) pairs of a dataset folder pair, optionally restricted to an id list file.

    ``role`` is the config key the folders came from; every error message names it. ``layout``: a key of
    :data:`LAYOUTS`.
    """
    naming = LAYOUTS[layout]
    image_dir = _require_dir(images_dir, role, "images")
    mask_dir = _require_dir(masks_dir, role, "masks") if masks_dir is not None else None
    images = _index(image_dir, IMAGE_SUFFIXES, naming.image_suffix, naming.recursive)
    masks = _index(mask_dir, MASK_SUFFIXES, naming.mask_suffix, naming.recursive) if mask_dir is not None else None
    if files_path is not None:
        ids = read_id_list(files_path, role, naming.image_suffix)
        samples = _listed_samples(images, masks, ids, (image_dir, mask_dir), files_path, role)
    elif masks is None:
        samples = [Sample(i, images[i], None) for i in sorted(images)]
    else:
        samples = _paired_samples(images, masks, (image_dir, mask_dir), role)
    if not samples:
        named = f" named <id>{naming.image_suffix}" if naming.image_suffix else ""
        looked_for = f"images{named} ({' '.join(IMAGE_SUFFIXES)}) in {image_dir}"
        if mask_dir is not None:
            mask_name = f"named <id>{naming.mask_suffix}" if naming.mask_suffix else "of the same name"
            looked_for += f" with a mask {mask_name} ({' '.join(MASK_SUFFIXES)}) in {mask_dir}"
        if naming.recursive:
            looked_for += " (and their subfolders)"
        raise DataError(f"{role}: no samples found: looked for {looked_for}")
    return samples


def split_samples(samples: list[Sample], ratio: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Split off a random ``ratio`` of the samples: ``(remaining, split_off)``, both in input order.

    ``split_off`` has ``round(ratio * n)`` samples, at least 1 when ``ratio > 0`` and ``n > 1``, and at
    most ``n - 1`` so that something remains.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"split ratio must be in [0, 1], got {ratio}")
    n = len(samples)
    count = round(ratio * n)
    if ratio > 0 and n > 1:
        count = min(max(count, 1), n - 1)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    chosen = set(order[:count])
    remaining = [s for i, s in enumerate(samples) if i not in chosen]
    split_off = [s for i, s in enumerate(samples) if i in chosen]
    return remaining, split_off
