"""PP-MobileSeg (PaddleSeg): StrideFormer backbone, aggregated attention module, segmentation head.

The zoo's first attention model: MobileNetV3 stages with strided SEA attention on the last two, tiny and base
variants, ending at low-resolution logits (the VIM upsampling runs on the host, :mod:`.vim`). Options make the
network friendlier to the STM32MP2 NPU (``activation``, ``padding``), official PaddleSeg / mmsegmentation weights
import key by key (:mod:`.weights`). No TensorFlow is imported here.
"""

from segzoo.models.base import Family
from segzoo.models.pp_mobileseg.params import PPMobileSegParams
from segzoo.models.pp_mobileseg.weights import SOURCES

FAMILY = Family(
    name="pp_mobileseg",
    params=PPMobileSegParams,
    builder="segzoo.models.pp_mobileseg.model:build",
    description=(
        "PP-MobileSeg tiny/base (PaddleSeg): MobileNetV3 stacks + strided SEA attention (StrideFormer), "
        "aggregated attention module with sigmoid gates, depthwise head; logits at 1/16 (tiny) or 1/8 (base), "
        "upsampled on the host. NPU options: activation relu/relu6 instead of hard-swish, padding same (no PAD "
        "ops). Official weights: ade20k_tiny, ade20k_base (PaddleSeg .pdparams), pretrained backbones "
        "backbone_tiny, backbone_base (.pdparams), mmseg_tiny, mmseg_base (.pth)."
    ),
    weights=SOURCES,
    custom_objects="segzoo.models.pp_mobileseg.layers:custom_objects",
)

__all__ = ["FAMILY", "PPMobileSegParams"]
