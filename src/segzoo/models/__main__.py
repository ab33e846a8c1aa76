"""``python -m segzoo.models``: the model families, their presets and official checkpoints, with parameter counts.

Parameters are counted in the PyTorch convention (trainable weights, BatchNorm moving statistics excluded) on the
training graph's path to its main output ``logits``: the training-only heads are left out, and BatchNorm is counted
unfolded (an export that folds BatchNorm into the convolutions has fewer weights than the published count).
``--no-count`` lists without building any model (no TensorFlow).
"""

from __future__ import annotations

import argparse
import logging
import sys

from segzoo.models.registry import family_names, get_family

log = logging.getLogger("segzoo.models")


def inference_parameters(model) -> int:
    """Trainable parameters on the path to the main output (``logits`` of a training model with several outputs)."""
    import keras

    if isinstance(model.output, dict) and "logits" in model.output:
        model = keras.Model(model.input, model.output["logits"])
    return int(sum(int(w.numpy().size) for w in model.trainable_weights))


def trainable_parameters(family: str, preset: dict) -> int:
    """Trainable parameters of a preset's inference path (PyTorch convention, see the module docstring)."""
    from segzoo.models.registry import build_from_params, make_params

    values = {k: v for k, v in preset.items() if k != "num_classes"}
    params = make_params(family, **values)
    return inference_parameters(build_from_params(params, preset.get("num_classes")))


def listing(count: bool) -> list[str]:
    """The lines of the listing."""
    lines = []
    for name in family_names():
        family = get_family(name)
        lines += [f"{name} ({family.task}): {family.description}"]
        for preset, values in family.presets.items():
            shown = ", ".join(f"{k}={v}" for k, v in values.items())
            params = f"{trainable_parameters(name, dict(values)):,} parameters; " if count else ""
            lines.append(f"  preset {preset}: {params}{shown}")
        for source in family.weights.values():
            lines.append(f"  weights {source.name}: {source.description or source.file_name} ({source.url or 'local'})")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Print the listing."""
    parser = argparse.ArgumentParser(prog="python -m segzoo.models", description=__doc__.splitlines()[0])
    parser.add_argument("--no-count", action="store_true", help="do not build models to count their parameters")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    sys.stdout.write("\n".join(listing(count=not args.no_count)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
