"""predict_images with the real ST model on real COCO images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segzoo.errors import DataError
from segzoo.palette import flat_palette
from segzoo.prediction import predict_images
from segzoo.preprocess import Preprocessing
from segzoo.runners import load_runner

VOC_NAMES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
             "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]
# 036: a person filling the frame; 086: a grayscale JPEG (a person on a motorbike); 077: people.
IMAGES = ("000000000036", "000000000086", "000000000077")


def _images(coco_dir: Path) -> list[Path]:
    return [coco_dir / "images" / "train2017" / f"{i}.jpg" for i in IMAGES]


def test_predict_images_writes_palette_masks_and_overlays(st_model: Path, coco_dir: Path, tmp_path: Path) -> None:
    images = _images(coco_dir)
    rows = predict_images(load_runner(st_model, num_threads=2), images, tmp_path, Preprocessing(), VOC_NAMES)
    assert [row["image"] for row in rows] == images
    for row, path in zip(rows, images):
        with Image.open(path) as original:
            size = original.size
        assert row["mask"] == tmp_path / f"{path.stem}_mask.png" and row["seconds"] > 0
        with Image.open(row["mask"]) as mask:
            assert mask.mode == "P" and mask.size == size
            assert mask.getpalette()[: 3 * 21] == flat_palette()[: 3 * 21]
            values = np.array(mask)
        assert set(np.unique(values)) <= set(range(21))
        assert row["classes_present"] == [VOC_NAMES[v] for v in np.unique(values)]
        with Image.open(row["overlay"]) as overlay:
            assert overlay.mode == "RGB"
            assert overlay.size[0] > size[0] and overlay.size[1] >= size[1]  # legend panel on the right
            # the image part is a blend of the photo and the class colours, not the photo itself
            blended = np.asarray(overlay)[: size[1], : size[0]]
        with Image.open(path) as original:
            assert not np.array_equal(blended, np.asarray(original.convert("RGB")))
    assert "person" in rows[0]["classes_present"]
    assert (np.array(Image.open(rows[0]["mask"])) == 15).mean() > 0.2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{i}_{kind}.png" for i in IMAGES for kind in ("mask", "overlay"))


def test_crop_mode_marks_the_unpredicted_border_void(st_model: Path, coco_dir: Path, tmp_path: Path) -> None:
    path = _images(coco_dir)[0]  # portrait 481x640 (WxH): crop keeps the central 481x481
    rows = predict_images(load_runner(st_model), [path], tmp_path, Preprocessing(aspect_ratio="crop"), VOC_NAMES)
    mask = np.array(Image.open(rows[0]["mask"]))
    assert mask.shape == (640, 481)
    top = (640 - 481) // 2
    assert np.all(mask[:top] == 255) and np.all(mask[top + 481 :] == 255)
    assert np.all(mask[top : top + 481] <= 20)


def test_bad_inputs_are_data_errors(st_model: Path, coco_dir: Path, tmp_path: Path) -> None:
    runner = load_runner(st_model)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="broken.jpg"):
        predict_images(runner, [broken], tmp_path / "out", Preprocessing(), VOC_NAMES)
    other = tmp_path / "copy" / f"{IMAGES[0]}.jpg"
    with pytest.raises(DataError, match="share the name stem"):
        predict_images(runner, [_images(coco_dir)[0], other], tmp_path / "out", Preprocessing(), VOC_NAMES)
