"""Save a Keras PP-MobileSeg model holding official weights (a ``.keras`` file for evaluation or deployment).

Usage::

    python -m segzoo.models.pp_mobileseg.convert ade20k_tiny pretrained_models/pp_mobileseg_tiny_ade20k.keras
    python -m segzoo.models.pp_mobileseg.convert path/to/model.pdparams out.keras --variant base --classes 150

A named source (``FAMILY.weights``) brings its own variant, options and class count and is looked for in
``--weights-dir`` folders and segzoo's cache (downloaded when online); a file needs ``--variant`` and ``--classes``.
The model is built in the official form (symmetric padding, hard-swish, ImageNet normalization inside the model:
feed RGB scaled to [0, 1]). Exit code 4 (ModelError) when the weights are missing or do not fit.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from segzoo.errors import ModelError
from segzoo.models.pp_mobileseg.weights import OFFICIAL_FORM, SOURCES

log = logging.getLogger(__name__)
DEFAULT_INPUT = (512, 512, 3)


def save_official(weights: str, out_path: str | Path, input_shape: Sequence[int] = DEFAULT_INPUT,
                  variant: str | None = None, num_classes: int | None = None,
                  weights_dirs: Sequence[str | Path] = ()) -> Path:
    """Build the official model with ``weights`` (a source name, or a file with ``variant`` and ``num_classes``)
    and save it atomically as ``out_path`` (.keras)."""
    from segzoo.io import atomic_path
    from segzoo.models.registry import build_from_params, make_params

    if weights in SOURCES:
        options, classes = dict(SOURCES[weights].params), SOURCES[weights].num_classes or num_classes
    elif variant is None or num_classes is None:
        raise ModelError(f"{weights}: not an official source name ({', '.join(SOURCES)}); give --variant and "
                         f"--classes")
    else:
        options, classes = {"variant": variant, **OFFICIAL_FORM}, num_classes
    if classes is None:
        raise ModelError(f"{weights}: a backbone checkpoint has no class count; give --classes")
    params = make_params("pp_mobileseg", input_shape=list(input_shape), pretrained_weights=weights, **options)
    model = build_from_params(params, classes, weights_dirs=weights_dirs)
    with atomic_path(out_path) as tmp:
        model.save(tmp)
    log.info("saved %s (%s, %d classes) to %s", model.name, weights, classes, out_path)
    return Path(out_path)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", help=f"source name ({', '.join(SOURCES)}) or a .pdparams/.pth file")
    parser.add_argument("out", help="output .keras file")
    parser.add_argument("--input-shape", type=int, nargs=3, default=list(DEFAULT_INPUT), metavar=("H", "W", "C"))
    parser.add_argument("--variant", choices=("tiny", "base"))
    parser.add_argument("--classes", type=int)
    parser.add_argument("--weights-dir", action="append", default=[], help="folder holding downloaded checkpoints")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        save_official(args.weights, args.out, args.input_shape, args.variant, args.classes, args.weights_dir)
    except ModelError as exc:
        log.error("%s", exc)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
