"""MediaPipe Pose as a pipeline of named runners: detector, decoding, crops, landmark model, projection.

``PosePipeline`` is itself a named runner (input ``image``: RGB uint8 ``[H, W, 3]``) made of two
sub-pipelines: ``detection`` (image -> ROIs) and ``landmarking`` (image + ROIs -> landmarks and masks).
:meth:`PosePipeline.estimate` runs both on one image (up to ``num_poses`` people); :class:`PoseTracker` runs
them on a stream as MediaPipe does in video mode: the ROIs of the next frame come from this frame's
tracking landmarks (33 and 34), and the detector runs only while fewer than ``num_poses`` people are
tracked (a pose is lost when its presence falls below ``min_pose_presence``); new detections replace
tracked ROIs they overlap (IoU of the unrotated boxes above ``min_tracking_iou``).

Any runners of the two models fit (float or quantized .tflite, Keras): their outputs are bound by shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segzoo.runtime.litert import LiteRTRunner
from segzoo.runtime.base import FunctionRunner, NamedRunner, PerItemRunner, TensorSpec, bind_by_shape
from segzoo.runtime.pipeline import Pipeline, Step
from segzoo.tasks.pose_estimation import crop as rois_
from segzoo.tasks.pose_estimation.anchors import ssd_anchors
from segzoo.tasks.pose_estimation.decode import Detections, decode_detections, remove_letterbox, sigmoid, weighted_nms
from segzoo.tasks.pose_estimation.landmarks import decode_landmarks, project_landmarks, refine_with_heatmap
from segzoo.tasks.pose_estimation.preset import PosePreset

IMAGE = TensorSpec("image", (-1, -1, 3), "uint8")


@dataclass
class PoseResult:
    """The people found in one image (P of them), in image pixels."""

    landmarks: np.ndarray  # [P, 33, 5]: x, y, z, visibility, presence
    auxiliary: np.ndarray  # [P, 2, 5]: the two tracking landmarks
    world_landmarks: np.ndarray  # [P, 33, 3] metres, origin between the hips
    presence: np.ndarray  # [P] pose presence of the landmark model
    scores: np.ndarray  # [P] detector score of the ROI (carried over while tracking)
    rois: np.ndarray  # [P, 5] crop of each pose: x_center, y_center, width, height, rotation
    masks: np.ndarray  # [P, H, W] person probability
    timings: dict[str, float] = field(default_factory=dict)  # ms per stage
    detector_ran: bool = True

    def __len__(self) -> int:
        return int(self.landmarks.shape[0])

    def person_mask(self, threshold: float = 0.5) -> np.ndarray:
        """bool ``[H, W]``: the union of every pose's mask above ``threshold``."""
        if len(self) == 0:
            return np.zeros(self.masks.shape[1:], dtype=bool)
        return (self.masks > threshold).any(axis=0)


# ----------------------------------------------------------------------------------------------- stage functions

def detector_input(image: np.ndarray, preset: PosePreset) -> dict[str, np.ndarray]:
    """The letterboxed detector input ``[1, S, S, 3]`` and its padding ``(left, top, right, bottom)``."""
    size = preset.detector_input.size
    roi, padding = rois_.letterbox_roi(image.shape[:2], (size, size))
    pixels = rois_.crop(image, rois_.roi_to_image(roi, (size, size)), (size, size), preset.detector_input.border)
    return {"detector_input": rois_.to_range(pixels, preset.detector_input.value_range)[None],
            "letterbox": padding}


def detections_to_rois(detections: Detections, image_hw: tuple[int, int], preset: PosePreset) -> np.ndarray:
    """``[N, 5]`` ROIs (image pixels) of detections normalized to the image."""
    height, width = image_hw
    start, end = preset.roi_keypoints
    out = np.zeros((len(detections), 5), dtype=np.float32)
    scale = np.array([width, height], dtype=np.float32)
    for i in range(len(detections)):
        raw = rois_.alignment_roi(detections.keypoints[i, start] * scale, detections.keypoints[i, end] * scale,
                                  preset.roi_target_angle)
        out[i] = rois_.expand_roi(raw, preset.roi_scale)
    return out


def decode_stage(raw_boxes: np.ndarray, raw_scores: np.ndarray, letterbox: np.ndarray, image: np.ndarray,
                 anchors: np.ndarray, preset: PosePreset) -> dict[str, np.ndarray]:
    """Detector outputs -> detections (decoded, weighted NMS, letterbox removed) and their ROIs."""
    found = decode_detections(raw_boxes[0], raw_scores[0], anchors, preset.decoding)
    found = remove_letterbox(weighted_nms(found, preset.nms_iou), letterbox)
    return {"detections": found.to_array(), "rois": detections_to_rois(found, image.shape[:2], preset),
            "roi_scores": found.scores.astype(np.float32)}


def landmark_inputs(image: np.ndarray, rois: np.ndarray, preset: PosePreset) -> dict[str, np.ndarray]:
    """Crops ``[N, S, S, 3]`` of each ROI in the landmark model's range, and their input -> image maps."""
    size = preset.landmark_input.size
    crops = np.zeros((len(rois), size, size, 3), dtype=np.float32)
    matrices = np.zeros((len(rois), 2, 3), dtype=np.float64)
    for i, roi in enumerate(rois):
        matrices[i] = rois_.roi_to_image(roi, (size, size))
        pixels = rois_.crop(image, matrices[i], (size, size), preset.landmark_input.border)
        crops[i] = rois_.to_range(pixels, preset.landmark_input.value_range)
    return {"landmark_input": crops, "crop_matrices": matrices}


def world_to_image_axes(world: np.ndarray, rotation: float) -> np.ndarray:
    """World landmarks (metres) rotated by the ROI's rotation (``WorldLandmarkProjectionCalculator``)."""
    c, s = math.cos(rotation), math.sin(rotation)
    out = world.copy()
    out[:, 0] = c * world[:, 0] - s * world[:, 1]
    out[:, 1] = s * world[:, 0] + c * world[:, 1]
    return out


def landmark_stage(raw_landmarks: np.ndarray, pose_presence: np.ndarray, heatmap: np.ndarray,
                   raw_world: np.ndarray, crop_matrices: np.ndarray, rois: np.ndarray, roi_scores: np.ndarray,
                   preset: PosePreset) -> dict[str, np.ndarray]:
    """Landmarks of the poses whose presence reaches ``min_pose_presence``, in image pixels, and the ROIs
    their tracking landmarks give for the next frame."""
    size, body = preset.landmark_input.size, preset.num_body_landmarks
    presence = np.asarray(pose_presence, dtype=np.float32).reshape(-1)
    keep = np.flatnonzero(presence >= preset.min_pose_presence)
    landmarks = np.zeros((len(keep), preset.num_landmarks, 5), dtype=np.float32)
    world = np.zeros((len(keep), body, 3), dtype=np.float32)
    next_rois = np.zeros((len(keep), 5), dtype=np.float32)
    for j, i in enumerate(keep):
        decoded = decode_landmarks(raw_landmarks[i], preset.num_landmarks, size)
        refined = refine_with_heatmap(decoded, heatmap[i], preset.heatmap_kernel, preset.heatmap_min_confidence)
        landmarks[j] = project_landmarks(refined, crop_matrices[i], size)
        world[j] = world_to_image_axes(np.asarray(raw_world[i], np.float32).reshape(-1, 3)[:body], float(rois[i, 4]))
        start, end = preset.tracking_landmarks
        raw = rois_.alignment_roi(landmarks[j, start, :2], landmarks[j, end, :2], preset.roi_target_angle)
        next_rois[j] = rois_.expand_roi(raw, preset.roi_scale)
    start, end = preset.tracking_landmarks
    return {"landmarks": landmarks[:, :body], "auxiliary": landmarks[:, [start, end]], "world_landmarks": world,
            "presence": presence[keep], "scores": np.asarray(roi_scores, np.float32)[keep],
            "kept_rois": np.asarray(rois, np.float32)[keep], "next_rois": next_rois, "kept": keep}


def mask_stage(segmentation: np.ndarray, crop_matrices: np.ndarray, kept: np.ndarray,
               image: np.ndarray) -> dict[str, np.ndarray]:
    """Person probability of each kept pose warped back onto the image (sigmoid, bilinear, 0 outside)."""
    masks = np.zeros((len(kept), *image.shape[:2]), dtype=np.float32)
    for j, i in enumerate(kept):
        masks[j] = rois_.uncrop(sigmoid(segmentation[i][..., 0]), crop_matrices[i], image.shape[:2])
    return {"masks": masks}


# --------------------------------------------------------------------------------------------------- pipeline

def _roles(preset: PosePreset) -> tuple[dict, dict]:
    """Output shapes (batch excluded) of each role of the detector and the landmark model."""
    n_anchors = len(ssd_anchors(preset.anchors))
    coords = 4 + 2 * preset.decoding.num_keypoints
    size = preset.landmark_input.size
    detector = {"raw_boxes": (n_anchors, coords), "raw_scores": (n_anchors, 1)}
    landmark = {"raw_landmarks": (preset.num_landmarks * 5,), "pose_presence": (1,),
                "segmentation": (size, size, 1), "heatmap": (size // 4, size // 4, preset.num_landmarks),
                "raw_world": (preset.num_landmarks * 3,)}
    return detector, landmark


def _model_step(runner: NamedRunner, roles: dict, input_name: str, label: str) -> Step:
    binding = bind_by_shape(runner, roles, source=getattr(runner, "path", runner.name))
    return Step(runner, inputs={runner.inputs[0].name: input_name}, outputs={v: k for k, v in binding.items()},
                name=label)


def detection_pipeline(preset: PosePreset, detector: NamedRunner) -> Pipeline:
    """image -> detector input -> detector -> detections (decoded, NMS, letterbox removed) and their ROIs."""
    anchors = ssd_anchors(preset.anchors)
    roles, _ = _roles(preset)
    size = preset.detector_input.size
    return Pipeline("detection", [
        FunctionRunner("detector_preprocess", lambda image: detector_input(image, preset), (IMAGE,),
                       (TensorSpec("detector_input", (1, size, size, 3)), TensorSpec("letterbox", (4,)))),
        _model_step(detector, roles, "detector_input", "detector"),
        FunctionRunner("detector_postprocess",
                       lambda raw_boxes, raw_scores, letterbox, image: decode_stage(
                           raw_boxes, raw_scores, letterbox, image, anchors, preset),
                       (TensorSpec("raw_boxes", (1, *roles["raw_boxes"])),
                        TensorSpec("raw_scores", (1, *roles["raw_scores"])), TensorSpec("letterbox", (4,)), IMAGE),
                       (TensorSpec("detections", (-1, 5 + 2 * preset.decoding.num_keypoints)),
                        TensorSpec("rois", (-1, 5)), TensorSpec("roi_scores", (-1,)))),
    ])


def landmarking_pipeline(preset: PosePreset, landmark: NamedRunner) -> Pipeline:
    """image + ROIs -> crops -> landmark model (once per ROI) -> landmarks in image pixels, masks, next ROIs."""
    _, roles = _roles(preset)
    size, body = preset.landmark_input.size, preset.num_body_landmarks
    matrices, kept = TensorSpec("crop_matrices", (-1, 2, 3), "float64"), TensorSpec("kept", (-1,), "int64")
    return Pipeline("landmarking", [
        FunctionRunner("landmark_preprocess", lambda image, rois: landmark_inputs(image, rois, preset),
                       (IMAGE, TensorSpec("rois", (-1, 5))), (TensorSpec("landmark_input", (-1, size, size, 3)),
                                                              matrices)),
        _model_step(PerItemRunner(landmark), roles, "landmark_input", "landmark"),
        FunctionRunner("landmark_postprocess",
                       lambda raw_landmarks, pose_presence, heatmap, raw_world, crop_matrices, rois, roi_scores:
                       landmark_stage(raw_landmarks, pose_presence, heatmap, raw_world, crop_matrices, rois,
                                      roi_scores, preset),
                       tuple(TensorSpec(n, (-1, *shape)) for n, shape in roles.items() if n != "segmentation")
                       + (matrices, TensorSpec("rois", (-1, 5)), TensorSpec("roi_scores", (-1,))),
                       (TensorSpec("landmarks", (-1, body, 5)), TensorSpec("auxiliary", (-1, 2, 5)),
                        TensorSpec("world_landmarks", (-1, body, 3)), TensorSpec("presence", (-1,)),
                        TensorSpec("scores", (-1,)), TensorSpec("kept_rois", (-1, 5)),
                        TensorSpec("next_rois", (-1, 5)), kept)),
        FunctionRunner("mask_postprocess", mask_stage,
                       (TensorSpec("segmentation", (-1, size, size, 1)), matrices, kept, IMAGE),
                       (TensorSpec("masks", (-1, -1, -1)),)),
    ])


class PosePipeline:
    """Image -> poses with a detector and a landmark model (see the module docstring)."""

    def __init__(self, preset: PosePreset, detector: NamedRunner, landmark: NamedRunner) -> None:
        self.preset = preset
        self.name = preset.name
        self.detection = detection_pipeline(preset, detector)
        self.landmarking = landmarking_pipeline(preset, landmark)
        clip = FunctionRunner("clip_num_poses", lambda rois, roi_scores: {
            "clipped_rois": rois[: preset.num_poses], "clipped_scores": roi_scores[: preset.num_poses]},
            (TensorSpec("rois", (-1, 5)), TensorSpec("roi_scores", (-1,))),
            (TensorSpec("clipped_rois", (-1, 5)), TensorSpec("clipped_scores", (-1,))))
        self.pipeline = Pipeline(preset.name, [
            Step(self.detection), Step(clip),
            Step(self.landmarking, inputs={"rois": "clipped_rois", "roi_scores": "clipped_scores"}),
        ], outputs=("landmarks", "auxiliary", "world_landmarks", "presence", "scores", "kept_rois", "next_rois",
                    "masks", "detections"))
        self.inputs = self.pipeline.inputs
        self.outputs = self.pipeline.outputs

    @property
    def last_timings(self) -> dict[str, float]:
        """ms per stage of the last :meth:`predict`."""
        return self.pipeline.last_timings

    def predict(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Named-runner call: ``{"image": rgb}`` -> landmarks, masks, ... (see :class:`PoseResult`)."""
        return self.pipeline.predict(feeds)

    def estimate(self, image: np.ndarray) -> PoseResult:
        """Poses in one RGB uint8 image (the detector always runs), at most ``preset.num_poses``."""
        out = self.predict({"image": image})
        return _result(out, dict(self.last_timings), detector_ran=True)


def load_pose_pipeline(preset: PosePreset, folder: str | Path, num_threads: int | None = None) -> PosePipeline:
    """The preset's two .tflite files in ``folder`` run with LiteRT (float or quantized)."""
    detector, landmark = preset.paths(folder)
    return PosePipeline(preset, LiteRTRunner(detector, num_threads, name="detector"),
                        LiteRTRunner(landmark, num_threads, name="landmark"))


def _result(out: dict[str, np.ndarray], timings: dict[str, float], detector_ran: bool) -> PoseResult:
    return PoseResult(landmarks=out["landmarks"], auxiliary=out["auxiliary"], world_landmarks=out["world_landmarks"],
                      presence=out["presence"], scores=out["scores"], rois=out["kept_rois"], masks=out["masks"],
                      timings=timings, detector_ran=detector_ran)


def associate(tracked: np.ndarray, tracked_scores: np.ndarray, detected: np.ndarray, detected_scores: np.ndarray,
              min_iou: float) -> tuple[np.ndarray, np.ndarray]:
    """MediaPipe's rect association: tracked ROIs first, then each detected ROI replaces the ones it overlaps
    (IoU above ``min_iou``, rotation ignored) and is appended."""
    kept: list[tuple[np.ndarray, float]] = []
    for rois, scores in ((tracked, tracked_scores), (detected, detected_scores)):
        for roi, score in zip(rois, scores):
            kept = [(r, s) for r, s in kept if rois_.roi_iou(roi, r) <= min_iou]
            kept.append((roi, float(score)))
    if not kept:
        return np.zeros((0, 5), np.float32), np.zeros(0, np.float32)
    return np.stack([r for r, _ in kept]).astype(np.float32), np.asarray([s for _, s in kept], np.float32)


class PoseTracker:
    """Video / camera mode: each call takes the next frame (see the module docstring)."""

    def __init__(self, pipeline: PosePipeline) -> None:
        self.pipeline = pipeline
        self.reset()

    def reset(self) -> None:
        """Forget the tracked poses: the next frame runs the detector."""
        self._rois = np.zeros((0, 5), np.float32)
        self._scores = np.zeros(0, np.float32)

    def __call__(self, image: np.ndarray) -> PoseResult:
        """Poses of the next frame."""
        preset = self.pipeline.preset
        rois, scores, timings = self._rois, self._scores, {}
        detector_ran = len(rois) < preset.num_poses
        if detector_ran:
            found = self.pipeline.detection.predict({"image": image})
            timings.update({f"detection/{k}": v for k, v in self.pipeline.detection.last_timings.items()})
            rois, scores = associate(rois, scores, found["rois"], found["roi_scores"], preset.min_tracking_iou)
        rois, scores = rois[: preset.num_poses], scores[: preset.num_poses]
        out = self.pipeline.landmarking.predict({"image": image, "rois": rois, "roi_scores": scores})
        timings.update({f"landmarking/{k}": v for k, v in self.pipeline.landmarking.last_timings.items()})
        self._rois, self._scores = out["next_rois"], out["scores"]
        return _result(out, timings, detector_ran)
