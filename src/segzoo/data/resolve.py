"""From the validated config to concrete sample lists, class mapping and preprocessing.

The one place that decides which images form the training, validation, test and quantization sets,
so that training, evaluation and quantization all see the same splits for the same seed.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from segzoo.data import SYNTHETIC_DATASET
from segzoo.data.layouts import Sample, list_samples, split_samples
from segzoo.data.masks import ClassMapper
from segzoo.errors import ConfigError
from segzoo.preprocess import Preprocessing

if TYPE_CHECKING:  # pragma: no cover - types only: the config package depends on this one, not the reverse
    from segzoo.config.schema import Config, DatasetConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataSpec:
    """Everything about the data that steps need, derived once from the config."""

    dataset: DatasetConfig
    class_names: tuple[str, ...]
    mapper: ClassMapper
    pp: Preprocessing
    seed: int

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    @property
    def ignore_index(self) -> int:
        """Mask value excluded from loss and metrics."""
        return self.dataset.ignore_index

    def describe(self, split: str, samples: list[Sample]) -> dict:
        """Short dataset description for reports."""
        return {
            "name": self.dataset.name,
            "split": split,
            "num_images": len(samples),
            "images": str(samples[0].image_path.parent) if samples else None,
            "masks": str(samples[0].mask_path.parent) if samples and samples[0].mask_path else None,
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
        }


def preprocessing_from(cfg: Config) -> Preprocessing:
    """The Preprocessing of the config."""
    p = cfg.preprocessing
    return Preprocessing(scale=p.rescaling.scale, offset=p.rescaling.offset,
                         interpolation=p.resizing.interpolation, aspect_ratio=p.resizing.aspect_ratio,
                         color_mode=p.color_mode)


def data_spec(cfg: Config) -> DataSpec:
    """Resolve the dataset section: the built-in dataset is generated here on first use."""
    ds = cfg.dataset
    class_names = ds.class_names
    if ds.name == SYNTHETIC_DATASET:
        from segzoo.data.synthetic import SYNTHETIC_CLASSES, ensure_synthetic_dataset

        root = ensure_synthetic_dataset(Path(ds.root), seed=cfg.general.global_seed)
        ds = _with_synthetic_paths(ds, root)
        class_names = class_names or list(SYNTHETIC_CLASSES)
    class_names = class_names or layout_class_names(ds.layout)
    if not class_names:
        raise ConfigError("dataset.class_names: required (the list of class names, index 0 first)")
    mapping, default = ds.class_mapping, ds.class_mapping_default
    if mapping is None and ds.layout == "cityscapes_label_ids":
        from segzoo.data.cityscapes import LABEL_ID_TO_TRAIN_ID

        mapping, default = dict(LABEL_ID_TO_TRAIN_ID), ds.ignore_index
    mapper = ClassMapper(num_classes=len(class_names), ignore_index=ds.ignore_index, mapping=mapping,
                         default=default)
    return DataSpec(dataset=ds, class_names=tuple(class_names), mapper=mapper, pp=preprocessing_from(cfg),
                    seed=cfg.general.global_seed)


def layout_class_names(layout: str) -> list[str] | None:
    """The class names a dataset layout implies (Cityscapes: its 19 classes), else None."""
    if layout.startswith("cityscapes"):
        from segzoo.data.cityscapes import CLASSES

        return list(CLASSES)
    return None


def _with_synthetic_paths(ds: DatasetConfig, root: Path) -> DatasetConfig:
    """Fill the unset paths of the built-in dataset (VOC layout: train and val lists)."""
    images, masks, lists = root / "JPEGImages", root / "SegmentationClass", root / "ImageSets" / "Segmentation"
    updates = {}
    for split, list_name in (("training", "train.txt"), ("validation", "val.txt")):
        if not getattr(ds, f"{split}_path"):
            updates.update({f"{split}_path": str(images), f"{split}_masks_path": str(masks),
                            f"{split}_files_path": str(lists / list_name)})
    return dataclasses.replace(ds, **updates)


def _listed(ds: DatasetConfig, split: str) -> list[Sample] | None:
    images = getattr(ds, f"{split}_path")
    if not images:
        return None
    return list_samples(images, getattr(ds, f"{split}_masks_path"), getattr(ds, f"{split}_files_path"),
                        role=f"dataset.{split}_path", layout=ds.layout)


def training_and_validation(spec: DataSpec) -> tuple[list[Sample], list[Sample]]:
    """Training and validation samples; without a validation set, a seeded split of the training set."""
    train = _listed(spec.dataset, "training") or []
    val = _listed(spec.dataset, "validation")
    if val is None and train:
        train, val = split_samples(train, spec.dataset.validation_split, spec.seed)
        logger.info("No validation set given: %d of the training images (dataset.validation_split=%s, seed %d) "
                    "are used for validation", len(val), spec.dataset.validation_split, spec.seed)
    return train, val or []


def evaluation_samples(spec: DataSpec, split: str = "auto") -> tuple[str, list[Sample]]:
    """(split name, samples) to evaluate on: the test set when given (auto), else validation."""
    if split in ("auto", "test"):
        test = _listed(spec.dataset, "test")
        if test:
            return "test", test
        if split == "test":
            raise ConfigError("evaluation.split: 'test' needs dataset.test_path")
    _, val = training_and_validation(spec)
    if not val:
        raise ConfigError("dataset.validation_path: no images to evaluate on; set dataset.test_path or "
                          "dataset.validation_path (with its *_masks_path)")
    return "validation", val
