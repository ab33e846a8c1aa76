"""PIDNet's ``training.model`` keys: the one place holding their defaults and allowed values (no TensorFlow).

``variant`` picks the official constructor (``s``: 32 planes, PAPPM + Light-Bag; ``m``: 64 planes, PAPPM + Light-Bag;
``l``: 64 planes, 3/4 blocks, DAPPM + Bag). The network ends at 1/8 resolution; ``upsample: true`` adds the final
bilinear x8 upsampling to the exported model, ``false`` leaves it to the host (evaluation, prediction and the board
application restore low-resolution logits). ``boundary_width`` is the width in pixels of the boundary target of the
D head (mmsegmentation's ``GenerateEdge(edge_width=4)``, the official CamVid ``bd_dilate_size=4``).

``loss`` holds the weights and settings of the four training losses (see :mod:`segzoo.models.pidnet.losses`):
the official ``LOSS`` section (``USE_OHEM``, ``OHEMTHRES``, ``OHEMKEEP``, ``BALANCE_WEIGHTS: [0.4, 1.0]``,
``SB_WEIGHTS: 1.0``), the boundary BCE factor 20 and the 0.8 threshold of the boundary-aware loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from segzoo.models.base import ModelParams

INPUT_MULTIPLE = 64
"""Height and width must be multiples of 64: the I branch ends at 1/64 and every upsampling is then exact."""


@dataclass
class PidnetLoss:
    """``training.model.loss``: PIDNet's training losses (official ``utils/criterion.py`` and ``FullModel``)."""

    use_ohem: bool = True
    ohem_threshold: float = 0.9
    ohem_min_kept: int = 131072
    main_weight: float = 1.0
    aux_weight: float = 0.4
    boundary_weight: float = 20.0
    bas_threshold: float = 0.8
    bas_weight: float = 1.0
    align_corners: bool = False

    def check(self) -> list[str]:
        """Problems as ``"loss.<key>: <what is wrong>"``."""
        problems = []
        for key in ("ohem_threshold", "bas_threshold"):
            value = getattr(self, key)
            if not 0.0 < value < 1.0:
                problems.append(f"loss.{key}: {value!r} must be a probability strictly between 0 and 1")
        if self.ohem_min_kept < 1:
            problems.append(f"loss.ohem_min_kept: {self.ohem_min_kept!r} must be at least 1")
        for key in ("main_weight", "aux_weight", "boundary_weight", "bas_weight"):
            if getattr(self, key) < 0:
                problems.append(f"loss.{key}: {getattr(self, key)!r} must not be negative (0 turns the loss off)")
        return problems


@dataclass
class PidnetParams(ModelParams):
    """``training.model`` of the ``pidnet`` family."""

    name: str = "pidnet"
    variant: Literal["s", "m", "l"] = "s"
    input_shape: list[int] = field(default_factory=lambda: [384, 512, 3])
    upsample: bool = False
    boundary_width: int = 4
    loss: PidnetLoss = field(default_factory=PidnetLoss)

    def check(self) -> list[str]:
        """Cross-field problems: input size not a multiple of 64, bad boundary width, bad loss settings."""
        problems = []
        shape = list(self.input_shape)
        if len(shape) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) for v in shape):
            problems.append(f"input_shape: {self.input_shape!r} must be [height, width, channels] integers")
        else:
            height, width, channels = shape
            if height < INPUT_MULTIPLE or width < INPUT_MULTIPLE or height % INPUT_MULTIPLE or width % INPUT_MULTIPLE:
                near = [max(INPUT_MULTIPLE, INPUT_MULTIPLE * round(v / INPUT_MULTIPLE)) for v in (height, width)]
                problems.append(f"input_shape: {height}x{width} must have a height and width that are multiples of "
                                f"{INPUT_MULTIPLE} (PIDNet ends its I branch at 1/64); nearest: {near[0]}x{near[1]}")
            if channels < 1:
                problems.append(f"input_shape: {channels} channels; need at least 1")
        if self.boundary_width < 1:
            problems.append(f"boundary_width: {self.boundary_width!r} must be at least 1 pixel")
        return problems + self.loss.check()
