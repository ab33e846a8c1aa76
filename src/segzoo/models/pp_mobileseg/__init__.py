"""PP-MobileSeg (PaddleSeg): StrideFormer backbone, aggregated attention module, segmentation head.

The zoo's first attention model (``training.model.name: pp_mobileseg``): MobileNetV3 stages with strided SEA
attention on the last two, tiny and base variants, ending at low-resolution logits (the VIM upsampling runs on the
host, :mod:`.vim`). Options make the network friendlier to the STM32MP2 NPU (``activation``, ``padding``); official
PaddleSeg / mmsegmentation weights import key by key (:mod:`.weights`). No TensorFlow is imported here.
"""

from segzoo.models.base import Family
from segzoo.models.pp_mobileseg.params import PPMobileSegParams
from segzoo.models.pp_mobileseg.weights import OFFICIAL_FORM, SOURCES

FAMILY = Family(
    name="pp_mobileseg",
    params=PPMobileSegParams,
    builder="segzoo.models.pp_mobileseg.model:build",
    description=(
        "PP-MobileSeg tiny/base (PaddleSeg): MobileNetV3 stacks + strided SEA attention (StrideFormer), "
        "aggregated attention module with sigmoid gates, depthwise head; logits at 1/16 (tiny) or 1/8 (base), "
        "upsampled on the host. NPU options: activation relu/relu6 instead of hard-swish, padding same (no PAD ops)"
    ),
    weights=SOURCES,
    file_importer="segzoo.models.pp_mobileseg.weights:import_file",
    custom_objects="segzoo.models.pp_mobileseg.layers:CUSTOM_OBJECTS",
    presets={
        "pp_mobileseg_tiny_ade20k": {"variant": "tiny", **OFFICIAL_FORM, "input_shape": [512, 512, 3],
                                     "num_classes": 150},
        "pp_mobileseg_base_ade20k": {"variant": "base", **OFFICIAL_FORM, "input_shape": [512, 512, 3],
                                     "num_classes": 150},
        "pp_mobileseg_tiny_npu_camvid": {"variant": "tiny", "activation": "relu", "padding": "same",
                                         "input_shape": [192, 256, 3], "num_classes": 11},
    },
    tiny_input_shape=(64, 64, 3),
)

__all__ = ["FAMILY", "PPMobileSegParams"]
