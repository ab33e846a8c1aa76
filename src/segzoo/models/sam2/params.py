"""SAM2.1 family parameters and the fixed architecture of each variant (no TensorFlow here).

``training.model`` keys (:class:`Sam2Params`):

- ``input_shape``: ``[S, S, 3]``, a square image of side ``S``. ``S`` must be a multiple of 32 (the trunk's total
  stride: patch embedding 4 x three 2x2 query poolings), which also makes the first-stage feature map (``S/4``) a
  multiple of the 8x8 window and of its position-embedding tile, and the FPN top-down nearest 2x upsampling exact.
  Windows that do not divide a feature map are zero-padded as in the official code (at 1024 the 64x64 stage-3 map
  is padded to 70x70 for its 14x14 windows, the 32x32 stage-4 map to 35x35 for 7x7), so no other constraint
  exists. The official model runs at 1024; smaller sizes (64, 128, 256) serve the tests. The outputs scale with it:
  image embeddings ``S/16``, high-resolution features ``S/4`` and ``S/8``, mask logits ``S/4``.
- ``variant``: the Hiera size; only ``hiera_tiny`` (``sam2.1_hiera_t.yaml``) is ported.
- ``num_points``: the number of point prompts the decoder takes (static, for TFLite). Unused slots are padding
  points (label -1), as in SAM's own ONNX export; the prompt encoder then appends its own padding point, so the
  decoder sees ``num_points + 1`` point tokens.
- ``multimask_output``: ``False`` (default) returns the single-mask output (mask token 0, SAM2's
  ``multimask_output=False``); ``True`` returns the three multimask outputs (tokens 1-3) and their IoU estimates.
- ``pretrained_weights``: a named :class:`~segzoo.models.base.WeightSource` of the family or a checkpoint path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from segzoo.models.base import ModelParams

TOTAL_STRIDE = 32
"""Patch embedding (4) x three 2x2 query poolings: the image side must be a multiple of this."""
EMBEDDING_STRIDE = 16
"""Stride of the image embeddings (the SAM decoder works on the stride-16 FPN level)."""
MASK_STRIDE = 4
"""Stride of the mask logits (the decoder upscales the embeddings 4x)."""
MIN_IMAGE_SIZE = 64


@dataclass(frozen=True)
class BlockSpec:
    """One Hiera block: input/output width, heads, window (0 = global attention), query pooling."""

    dim: int
    dim_out: int
    num_heads: int
    window_size: int
    q_pool: bool


@dataclass(frozen=True)
class HieraSpec:
    """The image encoder of one SAM2.1 variant (trunk, neck) and the SAM heads' fixed sizes."""

    embed_dim: int
    num_heads: int
    stages: tuple[int, ...]
    global_att_blocks: tuple[int, ...]
    window_spec: tuple[int, ...]
    pos_embed_size: tuple[int, int]
    q_pool_stages: int = 3
    dim_mul: float = 2.0
    head_mul: float = 2.0
    mlp_ratio: float = 4.0
    d_model: int = 256
    fpn_top_down_levels: tuple[int, ...] = (2, 3)
    scalp: int = 1
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    attention_downsample_rate: int = 2
    num_multimask_outputs: int = 3

    @property
    def stage_ends(self) -> list[int]:
        """Index of the last block of each stage."""
        return [sum(self.stages[: i + 1]) - 1 for i in range(len(self.stages))]

    def blocks(self) -> list[BlockSpec]:
        """The blocks in order. A stage's first block pools the queries, widens to the next stage and still uses
        the previous stage's window (the official 'lags by a block' rule)."""
        ends = self.stage_ends
        pool_blocks = [end + 1 for end in ends[:-1]][: self.q_pool_stages]
        dim, heads, stage, specs = self.embed_dim, self.num_heads, 0, []
        for i in range(sum(self.stages)):
            window = 0 if i in self.global_att_blocks else self.window_spec[stage]
            dim_out = dim
            if i - 1 in ends:
                dim_out, heads, stage = int(dim * self.dim_mul), int(heads * self.head_mul), stage + 1
            specs.append(BlockSpec(dim, dim_out, heads, window, i in pool_blocks))
            dim = dim_out
        return specs

    @property
    def channel_list(self) -> list[int]:
        """Widths of the stage outputs, finest first (stride 4, 8, 16, 32)."""
        blocks = self.blocks()
        return [blocks[end].dim_out for end in self.stage_ends]


VARIANTS: dict[str, HieraSpec] = {
    "hiera_tiny": HieraSpec(embed_dim=96, num_heads=1, stages=(1, 2, 7, 2), global_att_blocks=(5, 7, 9),
                            window_spec=(8, 4, 14, 7), pos_embed_size=(7, 7)),
}
"""Variant name -> architecture (values of ``sam2/configs/sam2.1/sam2.1_hiera_<v>.yaml`` and the class defaults)."""


@dataclass
class Sam2Params(ModelParams):
    """``training.model`` keys of the ``sam2`` family (see the module docstring)."""

    name: str = "sam2"
    input_shape: list[int] = field(default_factory=lambda: [1024, 1024, 3])
    variant: Literal["hiera_tiny"] = "hiera_tiny"
    num_points: int = 2
    multimask_output: bool = False

    def check(self) -> list[str]:
        """Input shape (square, 3 channels, a multiple of 32, at least 64) and a positive number of points."""
        problems: list[str] = []
        shape = list(self.input_shape) if isinstance(self.input_shape, (list, tuple)) else None
        if (shape is None or len(shape) != 3 or not all(isinstance(v, int) and not isinstance(v, bool)
                                                        for v in shape)):
            return [f"input_shape: expected [size, size, 3] integers, got {self.input_shape!r}"]
        height, width, channels = shape
        if height != width:
            problems.append(f"input_shape: SAM2 takes a square image; got {height}x{width} "
                            f"(use [{max(height, width)}, {max(height, width)}, 3])")
        if channels != 3:
            problems.append(f"input_shape: SAM2 takes RGB images (3 channels); got {channels}")
        if height % TOTAL_STRIDE or height < MIN_IMAGE_SIZE:
            nearest = max(MIN_IMAGE_SIZE, TOTAL_STRIDE * round(height / TOTAL_STRIDE))
            problems.append(f"input_shape: the side must be a multiple of {TOTAL_STRIDE} and at least "
                            f"{MIN_IMAGE_SIZE} (the trunk's total stride); got {height}, nearest valid {nearest}")
        if not isinstance(self.num_points, int) or isinstance(self.num_points, bool) or self.num_points < 1:
            problems.append(f"num_points: expected a positive integer, got {self.num_points!r}")
        if self.variant not in VARIANTS:
            problems.append(f"variant: {self.variant!r} is not ported; choose one of {', '.join(VARIANTS)}")
        return problems

    @property
    def image_size(self) -> int:
        """The side ``S`` of the square model input."""
        return int(self.input_shape[0])

    @property
    def spec(self) -> HieraSpec:
        """The architecture of ``variant``."""
        return VARIANTS[self.variant]

    @property
    def embedding_size(self) -> int:
        """Side of the image embeddings (``S/16``)."""
        return self.image_size // EMBEDDING_STRIDE

    @property
    def mask_size(self) -> int:
        """Side of the mask logits (``S/4``)."""
        return self.image_size // MASK_STRIDE

    @property
    def num_mask_outputs(self) -> int:
        """Masks the decoder returns: 1, or 3 with ``multimask_output``."""
        return self.spec.num_multimask_outputs if self.multimask_output else 1
