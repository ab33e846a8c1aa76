"""Pose evaluation on COCO keypoint datasets: COCO OKS AP/AR, per-person OKS, PCK@0.2, person-mask IoU.

- **AP/AR** are COCO's own (``pycocotools`` ``COCOeval`` with ``iouType="keypoints"``): predictions are matched
  to ground truth greedily by OKS in decreasing score order, crowd and keypoint-less persons are ignored,
  10 OKS thresholds 0.50:0.05:0.95, up to 20 predictions per image. A prediction's score is the detector
  score times the landmark model's pose presence.
- **Per-person OKS**: each ground-truth person (not crowd, at least one labelled keypoint) takes the best OKS
  over the image's predictions (0 when there is none); the mean over persons is the headline figure.
- **PCK@0.2**: a labelled keypoint is correct when the matched prediction is within 0.2 x the person's torso
  diameter (left shoulder to right hip); persons without both of those keypoints are left out.
- **Person-mask IoU**: per image, the union of every ground-truth person pixel against the union of the
  predicted masks (> 0.5); ``ignore`` pixels (COCO's unlabelled 0) count nowhere. ``iou`` sums intersections
  and unions over the images; ``mean_image_iou`` averages the images that have a person or a prediction.

MediaPipe's 33 landmarks become COCO's 17 keypoints through ``keypoints.COCO_FROM_MEDIAPIPE``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segzoo.data.loader import read_image
from segzoo.errors import DataError
from segzoo.tasks.pose_estimation.keypoints import (COCO_KEYPOINTS, COCO_SIGMAS, COCO_SKELETON, LEFT_SHOULDER,
                                                    RIGHT_HIP, to_coco)
from segzoo.tasks.pose_estimation.pipeline import PoseResult

log = logging.getLogger(__name__)

COCO_STATS = ("AP", "AP50", "AP75", "AP_medium", "AP_large", "AR", "AR50", "AR75", "AR_medium", "AR_large")
PCK_RATIO = 0.2


# ----------------------------------------------------------------------------------------------------- dataset

@dataclass(frozen=True)
class Person:
    """One annotated person: ``keypoints [17, 3]`` (x, y, v) in image pixels."""

    id: int
    image_id: int
    keypoints: np.ndarray
    bbox: tuple[float, float, float, float]
    area: float
    iscrowd: bool

    @property
    def labelled(self) -> np.ndarray:
        """bool ``[17]``: the keypoints with v > 0."""
        return self.keypoints[:, 2] > 0

    @property
    def evaluated(self) -> bool:
        """True for a person COCO scores (not crowd, at least one labelled keypoint)."""
        return not self.iscrowd and bool(self.labelled.any())


@dataclass(frozen=True)
class KeypointImage:
    """An image of the dataset and its persons."""

    id: int
    path: Path
    width: int
    height: int
    persons: tuple[Person, ...]


@dataclass
class KeypointDataset:
    """A COCO keypoints dataset, checked, and the COCO dict pycocotools reads."""

    source: Path
    images: list[KeypointImage]
    coco: dict = field(repr=False)

    @property
    def num_persons(self) -> int:
        """Persons COCO scores."""
        return sum(p.evaluated for im in self.images for p in im.persons)


def _field(entry: dict, key: str, where: str, source: Path, kind: type | tuple) -> object:
    if not isinstance(entry, dict) or key not in entry:
        raise DataError(f"{source}: {where} has no '{key}' field; every {where.split('[')[0]} needs one")
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise DataError(f"{source}: {where}.{key} is {value!r}, not a {getattr(kind, '__name__', kind)}")
    return value


def _numbers(value: object, count: int, where: str, source: Path) -> np.ndarray:
    if not isinstance(value, list) or len(value) != count or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        raise DataError(f"{source}: {where} must be a list of {count} finite numbers, got {str(value)[:80]}")
    return np.asarray(value, dtype=np.float64)


def _person(ann: dict, index: int, image_ids: set[int], source: Path) -> Person:
    where = f"annotations[{index}]"
    pid = _field(ann, "id", where, source, int)
    image_id = _field(ann, "image_id", where, source, int)
    if image_id not in image_ids:
        raise DataError(f"{source}: {where}.image_id {image_id} names no image of 'images'")
    keypoints = _numbers(_field(ann, "keypoints", where, source, object), 51, f"{where}.keypoints",
                         source).reshape(17, 3)
    if not set(np.unique(keypoints[:, 2])) <= {0.0, 1.0, 2.0}:
        raise DataError(f"{source}: {where}.keypoints has visibility flags {sorted(set(keypoints[:, 2]))}; "
                        "COCO uses 0 (not labelled), 1 (labelled, hidden), 2 (visible)")
    bbox = _numbers(_field(ann, "bbox", where, source, object), 4, f"{where}.bbox", source)
    area = float(_field(ann, "area", where, source, (int, float)))
    if area < 0:
        raise DataError(f"{source}: {where}.area is negative ({area})")
    iscrowd = ann.get("iscrowd", 0)
    if iscrowd not in (0, 1):
        raise DataError(f"{source}: {where}.iscrowd is {iscrowd!r}; expected 0 or 1")
    return Person(pid, image_id, keypoints, tuple(float(v) for v in bbox), area, bool(iscrowd))


def load_coco_keypoints(annotation_file: str | Path, images_dir: str | Path) -> KeypointDataset:
    """Read and check a COCO keypoints file; DataError naming the file, the entry and the field at fault."""
    source, images_dir = Path(annotation_file), Path(images_dir)
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"{source}: keypoint annotation file not found") from exc
    except (OSError, ValueError) as exc:
        raise DataError(f"{source}: not a readable JSON file ({exc})") from exc
    for key in ("images", "annotations"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise DataError(f"{source}: no '{key}' list; a COCO keypoints file has 'images' and 'annotations'")
    raw_images = {}
    for i, entry in enumerate(data["images"]):
        where = f"images[{i}]"
        image_id = _field(entry, "id", where, source, int)
        name = _field(entry, "file_name", where, source, str)
        width, height = (_field(entry, k, where, source, int) for k in ("width", "height"))
        path = images_dir / name
        if not path.is_file():
            raise DataError(f"{source}: {where} names {path}, which does not exist")
        if image_id in raw_images:
            raise DataError(f"{source}: {where}.id {image_id} is used twice")
        raw_images[image_id] = (path, width, height)
    persons = [_person(a, i, set(raw_images), source) for i, a in enumerate(data["annotations"])]
    ids = [p.id for p in persons]
    if len(set(ids)) != len(ids):
        raise DataError(f"{source}: annotation ids are not unique")
    images = [KeypointImage(i, path, w, h, tuple(p for p in persons if p.image_id == i))
              for i, (path, w, h) in raw_images.items()]
    coco = {"images": [{"id": im.id, "file_name": im.path.name, "width": im.width, "height": im.height}
                       for im in images],
            "annotations": [{"id": p.id, "image_id": p.image_id, "category_id": 1, "iscrowd": int(p.iscrowd),
                             "keypoints": p.keypoints.reshape(-1).tolist(), "num_keypoints": int(p.labelled.sum()),
                             "bbox": list(p.bbox), "area": p.area} for p in persons],
            "categories": [{"id": 1, "name": "person", "supercategory": "person", "keypoints": list(COCO_KEYPOINTS),
                            "skeleton": [[a + 1, b + 1] for a, b in COCO_SKELETON]}]}
    log.info("Keypoint dataset %s: %d images, %d persons", source, len(images), sum(len(im.persons) for im in images))
    return KeypointDataset(source, images, coco)


# ----------------------------------------------------------------------------------------------------- metrics

@dataclass(frozen=True)
class ImagePrediction:
    """The poses predicted on one image as COCO keypoints: ``keypoints [P, 17, 3]`` (x, y, visibility)."""

    image_id: int
    keypoints: np.ndarray
    scores: np.ndarray

    @staticmethod
    def from_result(image_id: int, result: PoseResult) -> ImagePrediction:
        """COCO keypoints of a pipeline result; score = detector score x pose presence."""
        coco = to_coco(result.landmarks)
        keypoints = np.concatenate([coco[..., :2], coco[..., 3:4]], axis=-1).astype(np.float64)
        return ImagePrediction(image_id, keypoints.reshape(len(result), 17, 3),
                               (result.scores * result.presence).astype(np.float64))


def oks(predicted: np.ndarray, person: Person) -> float:
    """COCO's object keypoint similarity of ``[17, >=2]`` predicted keypoints with a person having labelled
    keypoints: mean over them of ``exp(-d^2 / (2 * area * (2 sigma)^2))`` (``cocoeval.computeOks``)."""
    labelled = person.labelled
    d2 = ((np.asarray(predicted)[:, :2] - person.keypoints[:, :2]) ** 2).sum(axis=1)
    e = d2 / (COCO_SIGMAS * 2) ** 2 / (person.area + np.spacing(1)) / 2.0
    return float(np.exp(-e)[labelled].mean())


def torso(person: Person) -> float | None:
    """Torso diameter (left shoulder to right hip) in pixels, or None when either is not labelled."""
    if not (person.labelled[LEFT_SHOULDER] and person.labelled[RIGHT_HIP]):
        return None
    return float(np.linalg.norm(person.keypoints[LEFT_SHOULDER, :2] - person.keypoints[RIGHT_HIP, :2]))


def match_persons(dataset: KeypointDataset, predictions: dict[int, ImagePrediction]) -> list[dict]:
    """Each evaluated person with the index and OKS of its best prediction (index None, OKS 0 when none);
    ``found`` when that prediction fits this person better than any other person of the image."""
    rows = []
    for image in dataset.images:
        pred = predictions.get(image.id)
        persons = [p for p in image.persons if p.evaluated]
        table = np.array([[oks(k, p) for k in pred.keypoints] for p in persons]) if pred is not None and len(
            pred.keypoints) else np.zeros((len(persons), 0))
        for i, person in enumerate(persons):
            best = int(np.argmax(table[i])) if table.shape[1] else None
            mutual = best is not None and int(np.argmax(table[:, best])) == i and table[i, best] > 0
            rows.append({"person_id": person.id, "image_id": image.id, "prediction": best,
                         "oks": float(table[i, best]) if best is not None else 0.0, "found": bool(mutual),
                         "torso": torso(person)})
    return rows


def pck(dataset: KeypointDataset, predictions: dict[int, ImagePrediction], matches: list[dict],
        ratio: float = PCK_RATIO) -> dict:
    """PCK@ratio overall and per keypoint, and the torso-normalized error of the keypoints of found persons
    (see :func:`match_persons`: a prediction's error counts only for the person it fits best)."""
    persons = {p.id: p for im in dataset.images for p in im.persons}
    correct, total = np.zeros(17), np.zeros(17)
    errors: list[list[float]] = [[] for _ in range(17)]
    skipped = 0
    for row in matches:
        person, diameter = persons[row["person_id"]], row["torso"]
        if diameter is None or diameter <= 0:
            skipped += 1
            continue
        labelled = person.labelled
        total += labelled
        if row["prediction"] is None:
            continue
        predicted = predictions[row["image_id"]].keypoints[row["prediction"], :, :2]
        distance = np.linalg.norm(predicted - person.keypoints[:, :2], axis=1) / diameter
        correct += labelled & (distance <= ratio)
        for k in np.flatnonzero(labelled if row["found"] else []):
            errors[k].append(float(distance[k]))
    per_keypoint = {name: {"pck": float(correct[k] / total[k]) if total[k] else None, "labelled": int(total[k]),
                           "mean_error": float(np.mean(errors[k])) if errors[k] else None,
                           "std_error": float(np.std(errors[k])) if errors[k] else None}
                    for k, name in enumerate(COCO_KEYPOINTS)}
    return {"pck": float(correct.sum() / total.sum()) if total.sum() else None, "ratio": ratio,
            "persons_without_torso": skipped, "per_keypoint": per_keypoint}


def coco_keypoint_ap(dataset: KeypointDataset, predictions: dict[int, ImagePrediction]) -> dict[str, float]:
    """COCO keypoint AP/AR (pycocotools); every figure 0 when nothing is predicted."""
    results = [{"image_id": p.image_id, "category_id": 1, "keypoints": k.reshape(-1).tolist(), "score": float(s)}
               for p in predictions.values() for k, s in zip(p.keypoints, p.scores)]
    if not results or dataset.num_persons == 0:
        return {name: 0.0 for name in COCO_STATS}
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # pycocotools prints its progress and table
        gt = COCO()
        gt.dataset = json.loads(json.dumps(dataset.coco))
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(results), iouType="keypoints")
        evaluator.params.imgIds = [im.id for im in dataset.images]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    log.debug("pycocotools:\n%s", printed.getvalue())
    return {name: max(float(v), 0.0) for name, v in zip(COCO_STATS, evaluator.stats)}


def keypoint_metrics(dataset: KeypointDataset, predictions: dict[int, ImagePrediction]) -> dict:
    """Every keypoint metric of predictions on a dataset (see the module docstring)."""
    matches = match_persons(dataset, predictions)
    return {"coco": coco_keypoint_ap(dataset, predictions),
            "mean_oks": float(np.mean([m["oks"] for m in matches])) if matches else None,
            "per_person": matches, **pck(dataset, predictions, matches),
            "num_images": len(dataset.images), "num_persons": len(matches),
            "num_predictions": int(sum(len(p.scores) for p in predictions.values()))}


def evaluate_keypoints(estimate: Callable[[np.ndarray], PoseResult], dataset: KeypointDataset,
                       max_images: int | None = None) -> tuple[dict, dict[int, ImagePrediction]]:
    """Run ``estimate`` on every image; (metrics with timing, predictions by image id)."""
    images = dataset.images[:max_images] if max_images else dataset.images
    predictions, start = {}, time.perf_counter()
    for image in images:
        predictions[image.id] = ImagePrediction.from_result(image.id, estimate(read_image(image.path)))
    seconds = time.perf_counter() - start
    subset = KeypointDataset(dataset.source, images, {**dataset.coco, "images": [
        i for i in dataset.coco["images"] if i["id"] in predictions]})
    metrics = keypoint_metrics(subset, predictions)
    metrics.update(seconds=seconds, images_per_second=len(images) / seconds if seconds > 0 else None)
    return metrics, predictions


# -------------------------------------------------------------------------------------------------- person masks

@dataclass(frozen=True)
class MaskSample:
    """An image and the path of its class-id mask."""

    image: Path
    mask: Path


def person_mask_samples(images_dir: str | Path, masks_dir: str | Path, person_values: Iterable[int] = (1,),
                        max_images: int | None = None) -> list[MaskSample]:
    """Image/mask pairs (same stem, mask .png) whose mask has at least one person pixel, sorted by name."""
    from segzoo.data.masks import read_mask

    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    if not images_dir.is_dir() or not masks_dir.is_dir():
        raise DataError(f"{images_dir if not images_dir.is_dir() else masks_dir}: no such folder")
    samples = []
    for image in sorted(images_dir.iterdir()):
        mask = masks_dir / f"{image.stem}.png"
        if image.suffix.lower() in (".jpg", ".jpeg", ".png") and mask.is_file():
            if np.isin(read_mask(mask), list(person_values)).any():
                samples.append(MaskSample(image, mask))
        if max_images and len(samples) == max_images:
            break
    if not samples:
        raise DataError(f"{masks_dir}: no mask with a person pixel (values {list(person_values)}) beside "
                        f"an image of {images_dir}")
    return samples


def mask_iou(predicted: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> tuple[int, int]:
    """(intersection, union) pixel counts of two bool masks over the ``valid`` pixels."""
    return int((predicted & truth & valid).sum()), int(((predicted | truth) & valid).sum())


def evaluate_person_masks(estimate: Callable[[np.ndarray], PoseResult], samples: list[MaskSample],
                          person_values: Iterable[int] = (1,), ignore_values: Iterable[int] = (0,),
                          threshold: float = 0.5) -> dict:
    """Person-mask IoU of the pipeline's masks on real images (see the module docstring)."""
    from segzoo.data.masks import read_mask

    rows, inter, union = [], 0, 0
    for sample in samples:
        image, mask = read_image(sample.image), read_mask(sample.mask)
        if mask.shape != image.shape[:2]:
            raise DataError(f"{sample.mask}: mask is {mask.shape}, image {sample.image} is {image.shape[:2]}")
        result = estimate(image)
        i, u = mask_iou(result.person_mask(threshold), np.isin(mask, list(person_values)),
                        ~np.isin(mask, list(ignore_values)))
        inter, union = inter + i, union + u
        rows.append({"image": sample.image.name, "iou": i / u if u else None, "poses": len(result)})
    ious = [r["iou"] for r in rows if r["iou"] is not None]
    return {"iou": inter / union if union else None, "mean_image_iou": float(np.mean(ious)) if ious else None,
            "num_images": len(rows), "threshold": threshold, "per_image": rows}
