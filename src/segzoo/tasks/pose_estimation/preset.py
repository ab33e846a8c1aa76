"""Pipeline presets: the files of a multi-model pipeline and each model's own pre- and post-processing.

``mediapipe_pose_full`` is MediaPipe Pose (BlazePose GHUM full): the detector takes the image letterboxed to
224x224 in [-1, 1] (zero border, i.e. -1), the landmark model a 256x256 rotated crop in [0, 1] (replicated
border). Thresholds are MediaPipe's defaults (``pose_detection_cpu.pbtxt``, ``pose_landmarker_graph.cc``):
detection score 0.5 (``min_detection_confidence`` of the solution and Tasks APIs), weighted NMS at IoU 0.3 (the
graph's value; the Tasks API leaves its option at 0.5), ROI scale 1.25, pose presence 0.5, tracking IoU 0.5, heatmap refinement with a 7x7 window. ``sources`` says
where each file is published (MediaPipe's model assets, the versions pinned by MediaPipe's ``external_files.bzl``)
and its sha256, for :func:`segzoo.models.weights_store.locate_weights`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from segzoo.errors import ConfigError, ModelError
from segzoo.tasks.pose_estimation.anchors import SsdAnchorOptions
from segzoo.tasks.pose_estimation.decode import DetectionDecoding


@dataclass(frozen=True)
class ModelInput:
    """How an image region becomes one model's input."""

    size: int
    value_range: tuple[float, float]
    border: str


@dataclass(frozen=True)
class FileSource:
    """Where a pipeline file is published and its sha256."""

    name: str
    url: str
    sha256: str


@dataclass(frozen=True)
class PosePreset:
    """Files, inputs, decoding and thresholds of a detector + landmark-model pose pipeline (with ``name``,
    ``task`` and ``files``, what ``segzoo.models.external.PIPELINES`` asks of a preset)."""

    name: str
    detector_file: str
    landmark_file: str
    detector_input: ModelInput
    landmark_input: ModelInput
    anchors: SsdAnchorOptions = field(default_factory=SsdAnchorOptions)
    decoding: DetectionDecoding = field(default_factory=DetectionDecoding)
    nms_iou: float = 0.3
    roi_keypoints: tuple[int, int] = (0, 1)
    roi_target_angle: float = math.pi / 2
    roi_scale: float = 1.25
    num_landmarks: int = 39
    num_body_landmarks: int = 33
    tracking_landmarks: tuple[int, int] = (33, 34)
    min_pose_presence: float = 0.5
    min_tracking_iou: float = 0.5
    heatmap_kernel: int = 7
    heatmap_min_confidence: float = 0.5
    num_poses: int = 1
    task: str = "pose_estimation"
    sources: tuple[FileSource, ...] = ()

    def with_options(self, **changes: object) -> PosePreset:
        """A copy with some fields changed (e.g. ``num_poses``); ConfigError for an unknown field or a bad value."""
        unknown = sorted(set(changes) - set(self.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"pose preset {self.name}: unknown option(s) {', '.join(unknown)}")
        preset = replace(self, **changes)
        if preset.num_poses < 1:
            raise ConfigError(f"pose preset {self.name}: num_poses must be >= 1, got {preset.num_poses}")
        for key in ("min_pose_presence", "min_tracking_iou", "nms_iou"):
            if not 0.0 <= getattr(preset, key) <= 1.0:
                raise ConfigError(f"pose preset {self.name}: {key} must be in [0, 1], got {getattr(preset, key)}")
        return preset

    @property
    def files(self) -> tuple[str, str]:
        """The file names the pipeline expects in its folder (detector, landmark model)."""
        return self.detector_file, self.landmark_file

    def paths(self, folder: str | Path) -> tuple[Path, Path]:
        """(detector, landmark model) paths in ``folder``; ModelError naming a missing file."""
        folder = Path(folder)
        paths = tuple(folder / name for name in self.files)
        for path in paths:
            if not path.is_file():
                raise ModelError(f"{path}: model file of the {self.name} pipeline not found "
                                 f"(the folder must hold {self.detector_file} and {self.landmark_file})")
        return paths

    def to_dict(self) -> dict:
        """Everything but the download sources as plain values: the board application's ``pose_config.json``."""
        return {k: v for k, v in asdict(self).items() if k != "sources"}

    def source(self, name: str) -> FileSource | None:
        """The published source of file ``name``, if the preset names one."""
        return next((s for s in self.sources if s.name == name), None)


MEDIAPIPE_ASSETS = "https://storage.googleapis.com/mediapipe-assets"

MEDIAPIPE_POSE_FULL = PosePreset(
    name="mediapipe_pose_full",
    detector_file="pose_detection.tflite",
    landmark_file="pose_landmark_full.tflite",
    detector_input=ModelInput(size=224, value_range=(-1.0, 1.0), border="zero"),
    landmark_input=ModelInput(size=256, value_range=(0.0, 1.0), border="replicate"),
    sources=(
        FileSource("pose_detection.tflite",
                   f"{MEDIAPIPE_ASSETS}/pose_detection.tflite?generation=1678737489600422",
                   "9ba9dd3d42efaaba86b4ff0122b06f29c4122e756b329d89dca1e297fd8f866c"),
        FileSource("pose_landmark_full.tflite",
                   f"{MEDIAPIPE_ASSETS}/pose_landmark_full.tflite?generation=1661875894245786",
                   "e9a5c5cb17f736fafd4c2ec1da3b3d331d6edbe8a0d32395855aeb2cdfd64b9f"),
    ),
)

PRESETS: dict[str, PosePreset] = {MEDIAPIPE_POSE_FULL.name: MEDIAPIPE_POSE_FULL}


def get_preset(name: str) -> PosePreset:
    """The preset registered under ``name``; ConfigError listing the known ones."""
    if name not in PRESETS:
        raise ConfigError(f"unknown pose pipeline preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]
