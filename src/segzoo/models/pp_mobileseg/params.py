"""``training.model`` keys of the PP-MobileSeg family: defaults and allowed values (no TensorFlow here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from segzoo.models.base import ModelParams

INPUT_MULTIPLE = 32
"""Height and width must be multiples of this (the backbone's total stride)."""
MIN_INPUT_SIZE = 64
"""Smallest height or width: the strided attention of the last stage needs at least a 2x2 map."""


@dataclass
class PPMobileSegParams(ModelParams):
    """PP-MobileSeg tiny/base (PaddleSeg); the model ends at 1/16 (tiny) or 1/8 (base) logits.

    The options after ``variant`` choose NPU-friendly forms of the network (see the family README section):

    - ``activation``: the backbone's hard-swish (official) or ReLU / ReLU6, which the STM32MP2 NPU runs
      (hard-swish is a shader op). Not exact: the network must be trained with it.
    - ``padding``: strided convolutions pad ``k // 2`` on every side (``symmetric``, official: an explicit PAD op
      before each of them) or as TensorFlow's ``same`` (no PAD op; the sampling grid moves by one input pixel, so
      official weights need ``symmetric``). Not exact for imported weights; equivalent when training from scratch.
    - ``input_normalization``: ``imagenet`` puts the official per-channel normalization
      ``(x - mean) / std`` inside the model as a fixed 1x1 depthwise convolution (NPU), for images rescaled to
      [0, 1]; ``none`` leaves the input as it comes (segzoo's default rescaling to [-1, 1]).
    """

    name: str = "pp_mobileseg"
    input_shape: list[int] = field(default_factory=lambda: [384, 512, 3])
    variant: Literal["tiny", "base"] = "tiny"
    activation: Literal["hardswish", "relu", "relu6"] = "hardswish"
    padding: Literal["symmetric", "same"] = "symmetric"
    input_normalization: Literal["none", "imagenet"] = "none"
    dropout: float = 0.1
    drop_path_rate: float = 0.1

    def check(self) -> list[str]:
        """Input size a multiple of 32 (at least 64), 3 or 1 channels, rates in [0, 1)."""
        errors: list[str] = []
        shape = list(self.input_shape)
        if len(shape) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) for v in shape):
            return [f"input_shape: expected [height, width, channels] integers, got {self.input_shape!r}"]
        height, width, channels = shape
        if height % INPUT_MULTIPLE or width % INPUT_MULTIPLE or min(height, width) < MIN_INPUT_SIZE:
            near = "x".join(str(max(MIN_INPUT_SIZE, INPUT_MULTIPLE * round(v / INPUT_MULTIPLE)))
                            for v in (height, width))
            errors.append(f"input_shape: {height}x{width} must be multiples of {INPUT_MULTIPLE}, at least "
                          f"{MIN_INPUT_SIZE} (nearest valid size: {near})")
        if channels not in (1, 3):
            errors.append(f"input_shape: {channels} channels; PP-MobileSeg takes 3 (RGB) or 1 (grayscale)")
        if self.input_normalization == "imagenet" and channels != 3:
            errors.append("input_normalization: 'imagenet' needs 3 input channels (RGB)")
        for key in ("dropout", "drop_path_rate"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                errors.append(f"{key}: must be a number in [0, 1), got {value!r}")
        return errors
