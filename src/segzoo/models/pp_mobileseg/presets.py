"""The tiny and base architectures of PP-MobileSeg, as PaddleSeg defines them (no TensorFlow here).

Numbers from PaddleSeg's ``MobileSeg_Tiny`` / ``MobileSeg_Base`` backbones and their ADE20K configs
(``configs/pp_mobileseg/pp_mobileseg_{tiny,base}_ade20k_512x512_80k.yml``): four stacks of MobileNetV3 blocks, strided
SEA attention after the last two, the aggregated attention module (``AAM`` for tiny: 1/8, 1/16 and 1/32 features
fused at 1/16; ``AAMSx8`` for base: fused at 1/8) into 256 channels, and a depthwise 1x1 + 1x1 segmentation head.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class MV3Block:
    """One MobileNetV3 residual unit: kernel, expanded channels, output channels, SE, activation, stride."""

    kernel: int
    expand: int
    out: int
    se: bool
    act: str
    stride: int


@dataclass(frozen=True)
class Architecture:
    """One PP-MobileSeg variant (the keyword arguments PaddleSeg's StrideFormer and head receive)."""

    stages: tuple[tuple[MV3Block, ...], ...]
    channels: tuple[int, ...]
    depths: tuple[int, ...]
    embed_dims: tuple[int, ...]
    key_dims: tuple[int, ...]
    num_heads: int
    attn_ratio: int
    mlp_ratios: tuple[int, ...]
    aam: str
    aam_in_channels: tuple[int, ...]
    aam_channels: int = 256
    pos_embed_len: int = 16
    se_reduction: int = 4

    @property
    def output_stride(self) -> int:
        """Stride of the logits: 16 when the AAM fuses at 1/16 (tiny), 8 at 1/8 (base)."""
        return 16 if self.aam == "AAM" else 8


def _stage(*rows: tuple) -> tuple[MV3Block, ...]:
    return tuple(MV3Block(*row) for row in rows)


TINY = Architecture(
    stages=(
        _stage((3, 16, 16, True, "relu", 1), (3, 64, 32, False, "relu", 2), (3, 48, 24, False, "relu", 1)),
        _stage((5, 96, 32, True, "hardswish", 2), (5, 96, 32, True, "hardswish", 1)),
        _stage((5, 160, 64, True, "hardswish", 2), (5, 160, 64, True, "hardswish", 1)),
        _stage((3, 384, 128, True, "hardswish", 2), (3, 384, 128, True, "hardswish", 1)),
    ),
    channels=(16, 24, 32, 64, 128),
    depths=(2, 2),
    embed_dims=(64, 128),
    key_dims=(16, 24),
    num_heads=4,
    attn_ratio=2,
    mlp_ratios=(2, 4),
    aam="AAM",
    aam_in_channels=(32, 64, 128),
)

BASE = Architecture(
    stages=(
        _stage((3, 16, 16, True, "relu", 1), (3, 64, 32, False, "relu", 2), (3, 96, 32, False, "relu", 1)),
        _stage((5, 128, 64, True, "hardswish", 2), (5, 240, 64, True, "hardswish", 1)),
        _stage((5, 384, 128, True, "hardswish", 2), (5, 384, 128, True, "hardswish", 1)),
        _stage((5, 768, 192, True, "hardswish", 2), (5, 768, 192, True, "hardswish", 1)),
    ),
    channels=(16, 32, 64, 128, 192),
    depths=(3, 3),
    embed_dims=(128, 192),
    key_dims=(16, 24),
    num_heads=8,
    attn_ratio=2,
    mlp_ratios=(2, 4),
    aam="AAMSx8",
    aam_in_channels=(64, 128, 192),
)

ARCHITECTURES = MappingProxyType({"tiny": TINY, "base": BASE})
"""Variant name -> architecture. Immutable."""

PUBLISHED = MappingProxyType({
    "tiny": {"params_m": 1.61, "ade20k_miou": 36.39},
    "base": {"params_m": 5.62, "ade20k_miou": 41.57},
})
"""PaddleSeg's published figures (configs/pp_mobileseg/README.md): parameters (M) and ADE20K 512x512 mIoU (%)."""
