"""The typed configuration schema: one dataclass per ``user_config.yaml`` section.

Every key a user can write is a field here with its default. ``segzoo.config.validate`` turns the
YAML (plus command-line overrides) into these objects, failing on unknown keys and bad values
before any heavy import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from segzoo.models.base import ModelParams
from segzoo.models.registry import default_params

@dataclass
class GeneralConfig:
    """``general``: project-wide settings."""

    project_name: str = "segzoo"
    model_path: str | None = None
    logs_dir: str = "logs"
    saved_models_dir: str = "saved_models"
    global_seed: int = 127
    num_threads_tflite: int | None = None
    weights_dirs: list[str] = field(default_factory=list)
    task: Literal["auto", "semantic_segmentation", "pose_estimation", "promptable_segmentation"] = "auto"
    pipeline: str | None = None


@dataclass
class DatasetConfig:
    """``dataset``: where images and masks are, and how mask values become classes."""

    name: str = "custom"
    class_names: list[str] | None = None
    training_path: str | None = None
    training_masks_path: str | None = None
    training_files_path: str | None = None
    validation_path: str | None = None
    validation_masks_path: str | None = None
    validation_files_path: str | None = None
    validation_annotations_path: str | None = None
    validation_split: float = 0.2
    test_path: str | None = None
    test_masks_path: str | None = None
    test_files_path: str | None = None
    test_annotations_path: str | None = None
    quantization_path: str | None = None
    quantization_masks_path: str | None = None
    quantization_files_path: str | None = None
    quantization_split: float | None = None
    class_mapping: dict[int, int] | None = None
    class_mapping_default: int | None = None
    ignore_index: int = 255
    on_bad_sample: Literal["error", "skip"] = "error"
    root: str = "datasets"
    layout: Literal["pairs", "cityscapes", "cityscapes_label_ids", "yolo_seg"] = "pairs"


@dataclass
class RescalingConfig:
    """``preprocessing.rescaling``: ``x = pixel * scale + offset``."""

    scale: float = 1.0 / 127.5
    offset: float = -1.0


@dataclass
class ResizingConfig:
    """``preprocessing.resizing``: how images reach the model input size."""

    interpolation: Literal["nearest", "bilinear", "bicubic", "area"] = "bilinear"
    aspect_ratio: Literal["fit", "crop", "padding"] = "fit"


@dataclass
class PreprocessingConfig:
    """``preprocessing``."""

    rescaling: RescalingConfig = field(default_factory=RescalingConfig)
    resizing: ResizingConfig = field(default_factory=ResizingConfig)
    color_mode: Literal["rgb", "bgr", "grayscale"] = "rgb"


@dataclass
class OptimizerConfig:
    """``training.optimizer``: name plus arguments (no code strings)."""

    name: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    clipnorm: float | None = None


@dataclass
class LRScheduleConfig:
    """``training.lr_schedule``: per-epoch learning-rate schedule."""

    name: Literal["constant", "cosine", "polynomial", "step", "reduce_on_plateau"] = "cosine"
    warmup_epochs: int = 0
    min_lr: float = 1e-6
    power: float = 0.9
    step_epochs: int = 10
    factor: float = 0.5
    patience: int = 5


@dataclass
class DistributionConfig:
    """``training.distribution``: the ``tf.distribute`` strategy training runs under."""

    strategy: Literal["auto", "one_device", "mirrored", "multi_worker"] = "auto"
    devices: list[str] = field(default_factory=list)
    cluster_resolver: Literal["tf_config", "slurm"] = "tf_config"
    port: int = 12345
    lr_scaling: Literal["none", "linear"] = "none"
    sync_batch_norm: bool = True
    timeout_s: float = 300.0
    connect_timeout_s: float = 30.0


@dataclass
class TrainingConfig:
    """``training``."""

    model: ModelParams = field(default_factory=default_params)
    batch_size: int = 8
    epochs: int = 20
    steps_per_epoch: int | None = None
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    lr_schedule: LRScheduleConfig = field(default_factory=LRScheduleConfig)
    class_weights: list[float] | Literal["median_frequency"] | None = None
    monitor: Literal["val_miou", "val_loss"] = "val_miou"
    early_stopping_patience: int | None = None
    resume_training_from: str | None = None
    cache_dataset: bool = True
    tensorboard: bool = True
    distribution: DistributionConfig = field(default_factory=DistributionConfig)
    precision: Literal["float32", "mixed_float16", "mixed_bfloat16"] = "float32"
    jit_compile: bool = False
    steps_per_execution: int = 1


@dataclass
class EvaluationConfig:
    """``evaluation``."""

    split: Literal["auto", "validation", "test"] = "auto"
    resolution: Literal["original", "input"] = "original"
    max_images: int | None = None
    clicks: int = 1
    min_instance_area: int = 1024
    mask_threshold: float = 0.0


@dataclass
class PointConfig:
    """``prediction.points[i]``: one point prompt in image pixels (x right, y down); ``label`` 1 on the object, 0 on
    the background."""

    x: float | None = None
    y: float | None = None
    label: int = 1


@dataclass
class PredictionConfig:
    """``prediction``."""

    test_files_path: str | None = None
    overlay_alpha: float = 0.5
    max_images: int | None = None
    prompts_path: str | None = None
    points: list[PointConfig] = field(default_factory=list)


@dataclass
class MixedPrecisionConfig:
    """``quantization.mixed_precision``: layers kept in float."""

    float_layers: list[str] = field(default_factory=list)
    auto: bool = False
    max_miou_drop: float = 0.5
    max_float_layers: int = 8
    validation_images: int | None = None


@dataclass
class QatConfig:
    """``quantization.qat``: quantization-aware fine-tuning (``quantization_type: qat``)."""

    epochs: int = 2
    learning_rate: float = 1e-4
    steps_per_epoch: int | None = None


@dataclass
class QuantizationConfig:
    """``quantization``: post-training quantization with the TFLite converter."""

    quantizer: Literal["tflite_converter"] = "tflite_converter"
    quantization_type: Literal["ptq", "qat"] = "ptq"
    granularity: Literal["per_tensor", "per_channel"] = "per_tensor"
    quantization_input_type: Literal["uint8", "int8", "float"] = "uint8"
    quantization_output_type: Literal["uint8", "int8", "float"] = "float"
    calibration_images: int = 100
    calibration_data: Literal["dataset", "random"] = "dataset"
    optimize: bool = True
    relu6_equalization: Literal["skip", "clip", "headroom"] = "headroom"
    dead_channels: Literal["off", "exact", "calibration"] = "calibration"
    dead_inputs: bool = False
    residual_equalization: bool = False
    relu6_cap_growth: float = 2.0
    split_outliers: bool = False
    activation_ranges: Literal["minmax", "percentile", "mse"] = "mse"
    activation_percentile: float = 99.99
    bias_correction: bool = True
    adaround: bool = False
    adaround_iterations: int = 300
    target: Literal["stm32mp2", "generic"] = "stm32mp2"
    export_dir: str = "quantized_models"
    mixed_precision: MixedPrecisionConfig = field(default_factory=MixedPrecisionConfig)
    qat: QatConfig = field(default_factory=QatConfig)


@dataclass
class BoardConfig:
    """``benchmarking.board``: a real STM32MP2 board reached over SSH (key-based)."""

    host: str | None = None
    port: int = 22
    user: str = "root"
    identity_file: str | None = None
    known_hosts: str | None = None
    strict_host_key_checking: bool = True
    remote_dir: str = "/tmp/segzoo_bench"
    python: str = "python3"


@dataclass
class BenchmarkingConfig:
    """``benchmarking``: where and how models are timed."""

    targets: list[Literal["host", "stm32mp2_estimate", "board"]] = field(
        default_factory=lambda: ["host", "stm32mp2_estimate"])
    models: list[str] = field(default_factory=list)
    runs: int = 50
    warmup: int = 5
    threads: int | None = None
    npu_mhz: Literal[800, 900] = 800
    rules_path: str | None = None
    board: BoardConfig = field(default_factory=BoardConfig)


@dataclass
class HardwareSetupConfig:
    """``deployment.hardware_setup``: the board to deploy to."""

    serie: Literal["STM32MP2"] = "STM32MP2"
    board: str = "STM32MP257F-EV1"
    ip_address: str | None = None
    port: int = 22
    user: str = "root"
    identity_file: str | None = None
    known_hosts: str | None = None


@dataclass
class DeploymentConfig:
    """``deployment``: the application bundle and where it goes."""

    hardware_setup: HardwareSetupConfig = field(default_factory=HardwareSetupConfig)
    board_deploy_path: str = "/usr/local/segzoo"
    label_file_path: str | None = None
    launch: bool = False
    launch_input: str | None = None
    strict_host_key_checking: bool = True
    timeout: float = 120.0
    python: str = "python3"


@dataclass
class StEdgeAiConfig:
    """``tools.stedgeai``: ST Edge AI Core, for the NPU network binary (.nb)."""

    path_to_stedgeai: str | None = None


@dataclass
class ToolsConfig:
    """``tools``: external tools."""

    stedgeai: StEdgeAiConfig = field(default_factory=StEdgeAiConfig)


@dataclass
class PersonMasksConfig:
    """``pose_estimation.person_masks``: person-mask IoU on images with class-id masks (e.g. COCO panoptic ids)."""

    images_path: str | None = None
    masks_path: str | None = None
    person_values: list[int] = field(default_factory=lambda: [1])
    ignore_values: list[int] = field(default_factory=lambda: [0])
    threshold: float = 0.5
    max_images: int | None = None


@dataclass
class PoseEstimationConfig:
    """``pose_estimation``: options of the pose pipeline (``general.pipeline``) and of its evaluation."""

    num_poses: int = 1
    min_visibility: float = 0.5
    person_masks: PersonMasksConfig = field(default_factory=PersonMasksConfig)


@dataclass
class MlflowConfig:
    """``mlflow``."""

    enabled: bool = True
    uri: str = "./experiments_outputs/mlruns"
    log_models: bool = False


@dataclass
class Config:
    """The whole validated configuration."""

    operation_mode: str = "training"
    general: GeneralConfig = field(default_factory=GeneralConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    preprocessing: PreprocessingConfig = field(default_factory=PreprocessingConfig)
    data_augmentation: dict[str, Any] | None = None
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    prediction: PredictionConfig = field(default_factory=PredictionConfig)
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)
    benchmarking: BenchmarkingConfig = field(default_factory=BenchmarkingConfig)
    deployment: DeploymentConfig = field(default_factory=DeploymentConfig)
    tools: ToolsConfig = field(default_factory=ToolsConfig)
    pose_estimation: PoseEstimationConfig = field(default_factory=PoseEstimationConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)


FREE_FORM_KEYS = frozenset({"data_augmentation", "dataset.class_mapping"})
"""Keys whose children are not schema fields (validated by their own rules)."""
