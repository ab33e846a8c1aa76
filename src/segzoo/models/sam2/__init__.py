"""SAM2.1 (hiera-tiny) as a promptable-segmentation family: an image encoder and a point-prompt decoder.

- :mod:`.params`: ``training.model`` keys and the variant's architecture (no TensorFlow).
- :mod:`.layers`, :mod:`.model`: the Keras layers, ``build_encoder``, ``build_decoder``, ``build_sam2``.
- :mod:`.weights`: import of the official ``sam2.1_hiera_tiny.pt`` (no torch, no code from the file runs).
- :mod:`.export`: TFLite files of both models with named signatures (float or int8 per-tensor), STM32MP2 placement.

Importing this package imports no TensorFlow.
"""

from __future__ import annotations

from segzoo.models.base import Family, WeightSource
from segzoo.models.sam2.params import Sam2Params

SAM2_1_HIERA_TINY = WeightSource(
    name="sam2.1_hiera_tiny",
    file_name="sam2.1_hiera_tiny.pt",
    url="https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_tiny.pt",
    importer="segzoo.models.sam2.weights:import_checkpoint",
    sha256=None,
    params={"variant": "hiera_tiny"},
    num_classes=None,
    description=(
        "Meta's SAM 2.1 hiera-tiny checkpoint (SA-1B + SA-V, released 2024-09-29; Apache-2.0). A torch zip "
        "holding {'model': state_dict}; the video-memory weights in it are not used. Meta publishes no sha256 "
        "for it, so the file is not verified by checksum; any input size loads it (1024 is the trained one)."
    ),
)

FAMILY = Family(
    name="sam2",
    params=Sam2Params,
    builder="segzoo.models.sam2.model:build_sam2",
    description=(
        "SAM2.1 hiera-tiny split as Qualcomm's AI Hub splits it: an image encoder (Hiera trunk, FPN neck, the mask "
        "decoder's conv_s0/conv_s1 projections) and a decoder (point prompt encoder, two-way transformer, single-"
        "mask output at 1/4 of the input size with its predicted IoU). No video memory."
    ),
    task="promptable_segmentation",
    weights={SAM2_1_HIERA_TINY.name: SAM2_1_HIERA_TINY},
    file_importer="segzoo.models.sam2.weights:import_checkpoint",
    custom_objects="segzoo.models.sam2.layers:CUSTOM_OBJECTS",
    presets={
        "sam2.1_hiera_tiny_1024": {"variant": "hiera_tiny", "input_shape": [1024, 1024, 3], "num_points": 2},
        "sam2.1_hiera_tiny_1024_multimask": {"variant": "hiera_tiny", "input_shape": [1024, 1024, 3],
                                             "num_points": 2, "multimask_output": True},
    },
    tiny_input_shape=(64, 64, 3),
)
