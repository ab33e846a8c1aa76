"""A tiny two-head model family used by the tests of multi-output training (not registered in segzoo)."""

from dataclasses import dataclass, field

from segzoo.models.base import Family, ModelParams


@dataclass
class ToyParams(ModelParams):
    """A conv net with a main head, an auxiliary head and an edge head."""

    name: str = "toy_heads"
    input_shape: list[int] = field(default_factory=lambda: [32, 32, 3])
    width: int = 8
    aux_weight: float = 0.4
    edge_weight: float = 2.0


FAMILY = Family(
    name="toy_heads",
    params=ToyParams,
    builder="toy_family.model:build",
    exporter="toy_family.model:export",
    losses="toy_family.model:loss_terms",
    targets=("edge",),
    presets={"toy": {"num_classes": 3}},
    tiny_input_shape=(32, 32, 3),
    description="test family with training-only heads",
)
