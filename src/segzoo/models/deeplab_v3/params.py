"""``training.model`` keys of the DeepLabV3 family: the one place their defaults and allowed values live."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from segzoo.models.base import ModelParams

MIN_INPUT_SIZE = 32


@dataclass
class DeepLabV3Params(ModelParams):
    """DeepLabV3 on a MobileNetV2 backbone (STM32 model zoo style)."""

    name: str = "deeplab_v3"
    input_shape: list[int] = field(default_factory=lambda: [128, 128, 3])
    alpha: Literal[0.35, 0.5, 0.75, 1.0] = 0.35
    output_stride: Literal[8, 16] = 16
    aspp: Literal["v1", "v2", "none"] = "v2"
    dropout: float = 0.1
    upsample: bool = True

    def check(self) -> list[str]:
        """Input size against the output stride, dropout range, ImageNet weights need RGB."""
        errors = []
        height, width, channels = self.input_shape
        stride = self.output_stride
        if height < MIN_INPUT_SIZE or width < MIN_INPUT_SIZE or height % stride or width % stride:
            near = "x".join(str(max(MIN_INPUT_SIZE, stride * max(1, round(v / stride)))) for v in (height, width))
            errors.append(f"input_shape: {height}x{width} must be multiples of output_stride ({stride}) and at "
                          f"least {MIN_INPUT_SIZE} (nearest valid size: {near})")
        if not 0.0 <= self.dropout < 1.0:
            errors.append(f"dropout: must be in [0, 1), got {self.dropout}")
        if self.pretrained_weights == "imagenet" and channels != 3:
            errors.append(f"pretrained_weights: 'imagenet' needs 3 input channels (RGB), input_shape has {channels}")
        return errors
