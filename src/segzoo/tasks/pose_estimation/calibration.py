"""Calibration inputs of the two pose models from real photos, each in its own model's preprocessing.

The detector sees the photos letterboxed to its input in [-1, 1]; the landmark model sees what it sees in the
pipeline: the rotated crops that the float pipeline's detections give, in [0, 1] (up to ``num_poses`` per
photo). Photos without a detection add no crop.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from segzoo.data.loader import read_image
from segzoo.errors import DataError
from segzoo.tasks.pose_estimation.pipeline import PosePipeline, detector_input, landmark_inputs

log = logging.getLogger(__name__)


def calibration_inputs(pipeline: PosePipeline, image_paths: Iterable[str | Path]) -> dict[str, np.ndarray]:
    """``{"detector": [N, 224, 224, 3], "landmark": [M, 256, 256, 3]}`` float32 batches of real inputs."""
    preset = pipeline.preset
    detector, landmark = [], []
    for path in image_paths:
        image = read_image(path)
        detector.append(detector_input(image, preset)["detector_input"])
        rois = pipeline.detection.predict({"image": image})["rois"][: preset.num_poses]
        landmark.append(landmark_inputs(image, rois, preset)["landmark_input"])
    if not detector:
        raise DataError("no calibration image: give at least one photo of a person")
    crops = np.concatenate(landmark)
    if len(crops) == 0:
        raise DataError(f"the detector found no person in the {len(detector)} calibration images: the landmark "
                        "model needs photos of people")
    log.info("Pose calibration: %d detector inputs, %d landmark crops", len(detector), len(crops))
    return {"detector": np.concatenate(detector), "landmark": crops}
