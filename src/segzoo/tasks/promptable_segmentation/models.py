"""The model of a promptable-segmentation run: an image encoder and a prompt decoder, side by side in one folder.

- **Keras pair** (an imported or saved model): ``encoder.keras``, ``decoder.keras`` and ``sam2.json`` (the
  ``training.model`` params the pair was built with, and its weights).
- **TFLite pair** (exported or quantized): ``encoder*.tflite`` and ``decoder*.tflite`` (e.g. ``encoder_int8.tflite``),
  with ``sam2.json`` when segzoo wrote the folder.

:func:`find_pair` recognises a folder (no TensorFlow); :func:`load_pair` loads both networks as plain callables with
the params read from the networks themselves (input size, number of point inputs, number of masks), so a folder
without ``sam2.json`` works too.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from segzoo.errors import ModelError
from segzoo.io import write_json

if TYPE_CHECKING:  # pragma: no cover
    from segzoo.models.sam2.params import Sam2Params

INFO_FILE = "sam2.json"
ROLES: tuple[str, ...] = ("encoder", "decoder")
KINDS: Mapping[str, tuple[str, ...]] = MappingProxyType({"keras": (".keras", ".h5"), "tflite": (".tflite",)})


@dataclass(frozen=True)
class ModelPair:
    """An encoder/decoder pair: its folder, format (``keras`` or ``tflite``), the two files and ``sam2.json``."""

    folder: Path
    kind: str
    encoder: Path
    decoder: Path
    info: dict = field(default_factory=dict)

    def files(self) -> dict[str, Path]:
        """``{"encoder": path, "decoder": path}``."""
        return {"encoder": self.encoder, "decoder": self.decoder}


def _kind_of(path: Path) -> str | None:
    return next((kind for kind, suffixes in KINDS.items() if path.suffix.lower() in suffixes), None)


def find_pair(path: str | Path) -> ModelPair:
    """The pair in folder ``path``; ModelError naming the folder and what it holds when it is not exactly one
    encoder and one decoder of the same format."""
    folder = Path(path)
    if not folder.is_dir():
        raise ModelError(f"{folder}: a promptable-segmentation model is a folder holding an encoder and a decoder "
                         f"(encoder.keras + decoder.keras, or encoder*.tflite + decoder*.tflite); this is not a folder")
    found: dict[str, list[Path]] = {role: [] for role in ROLES}
    for item in sorted(folder.iterdir()):
        role = next((r for r in ROLES if item.name.lower().startswith(r)), None)
        if role and item.is_file() and _kind_of(item):
            found[role].append(item)
    problem = _pair_problem(found)
    if problem:
        listing = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        raise ModelError(f"{folder}: {problem} (the folder holds: {listing}). A model folder holds one encoder and "
                         f"one decoder of the same format: encoder.keras + decoder.keras, or encoder*.tflite + "
                         f"decoder*.tflite")
    encoder, decoder = found["encoder"][0], found["decoder"][0]
    return ModelPair(folder, _kind_of(encoder) or "", encoder, decoder, read_info(folder))


def _pair_problem(found: dict[str, list[Path]]) -> str | None:
    for role, paths in found.items():
        if not paths:
            return f"no {role} file"
        if len(paths) > 1:
            return f"several {role} files ({', '.join(p.name for p in paths)})"
    kinds = {_kind_of(paths[0]) for paths in found.values()}
    if len(kinds) > 1:
        return f"the encoder ({found['encoder'][0].name}) and the decoder ({found['decoder'][0].name}) differ in format"
    return None


def read_info(folder: Path) -> dict:
    """``sam2.json`` of a model folder, ``{}`` when absent; ModelError when unreadable."""
    path = Path(folder) / INFO_FILE
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot read it as JSON ({exc})") from exc
    if not isinstance(info, dict):
        raise ModelError(f"{path}: expected a JSON object of model params")
    return info


def write_info(folder: Path, params: "Sam2Params", **extra: Any) -> Path:
    """Write ``sam2.json``: the params (``training.model`` keys) and ``extra`` entries."""
    return write_json(Path(folder) / INFO_FILE, {"params": params.to_dict(), **extra})


def declared_num_points(path: str | Path) -> int | None:
    """``num_points`` that ``sam2.json`` of a model folder declares (None when unknown); no TensorFlow."""
    folder = Path(path)
    if not folder.is_dir():
        return None
    try:
        value = read_info(folder).get("params", {}).get("num_points")
    except ModelError:
        return None
    return value if isinstance(value, int) else None


# ------------------------------------------------------------------------------------------------ loading
def params_from_shapes(image: list[int], coords: list[int], masks: list[int], info: dict) -> "Sam2Params":
    """The params of a pair from its tensor shapes: ``image`` ``[1, S, S, 3]``, ``point_coords`` ``[1, N, 2]``,
    ``masks`` ``[1, m, m, M]``; the weights name comes from ``sam2.json``."""
    from segzoo.models.registry import make_params

    declared = dict(info.get("params", {}))
    values = {"input_shape": [int(image[1]), int(image[2]), int(image[3])], "num_points": int(coords[1]),
              "multimask_output": int(masks[-1]) > 1}
    if declared.get("variant"):
        values["variant"] = declared["variant"]
    return make_params("sam2", **values, pretrained_weights=declared.get("pretrained_weights"))


def load_pair(pair: ModelPair, num_threads: int | None = None) -> tuple[Callable, Callable, "Sam2Params"]:
    """``(encode, decode, params)`` of a pair (see :mod:`segzoo.models.sam2.predictor`); ModelError naming the
    file that cannot be loaded."""
    loader = _load_keras if pair.kind == "keras" else _load_tflite
    return loader(pair, num_threads)


def load_keras_pair(pair: ModelPair) -> tuple[Any, Any, "Sam2Params"]:
    """``(encoder, decoder, params)``: the two Keras networks of a pair and the params they were built with."""
    encoder, decoder = (load_keras_model(path) for path in (pair.encoder, pair.decoder))
    inputs = {t.name.split(":")[0]: list(t.shape) for t in decoder.inputs}
    masks = list(decoder.output["masks"].shape) if isinstance(decoder.output, dict) else None
    if "point_coords" not in inputs or masks is None:
        raise ModelError(f"{pair.decoder}: not a SAM2 decoder (inputs {', '.join(inputs)})")
    params = params_from_shapes([1, *encoder.input_shape[1:]], inputs["point_coords"], masks, pair.info)
    return encoder, decoder, params


def _load_keras(pair: ModelPair, num_threads: int | None) -> tuple[Callable, Callable, "Sam2Params"]:
    from segzoo.models.sam2.predictor import keras_functions

    encoder, decoder, params = load_keras_pair(pair)
    return (*keras_functions(encoder, decoder), params)


def load_keras_model(path: Path) -> Any:
    """A saved Keras network of the pair (segzoo's custom layers known)."""
    import keras

    from segzoo.io import verified
    from segzoo.models.registry import custom_objects

    path = verified(path)  # ModelError when a file segzoo wrote was damaged since
    try:
        return keras.saving.load_model(path, compile=False, custom_objects=custom_objects())
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for unreadable files
        raise ModelError(f"{path}: cannot load the Keras model ({type(exc).__name__}: {exc})") from exc


def signature_shapes(path: Path) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Input and output shapes of a ``.tflite`` file's ``serving_default`` signature, by name."""
    from ai_edge_litert.interpreter import Interpreter

    from segzoo.models.sam2.export import SIGNATURE

    try:
        runner = Interpreter(model_path=str(path)).get_signature_runner(SIGNATURE)
    except Exception as exc:  # noqa: BLE001 - any loader failure names the file
        raise ModelError(f"{path}: cannot load it as a TFLite model with a '{SIGNATURE}' signature "
                         f"({type(exc).__name__}: {exc})") from exc
    shapes = [{name: [int(d) for d in detail["shape"]] for name, detail in details.items()}
              for details in (runner.get_input_details(), runner.get_output_details())]
    return shapes[0], shapes[1]


def _load_tflite(pair: ModelPair, num_threads: int | None) -> tuple[Callable, Callable, "Sam2Params"]:
    from segzoo.models.sam2.predictor import tflite_functions

    encoder_in, _ = signature_shapes(pair.encoder)
    decoder_in, decoder_out = signature_shapes(pair.decoder)
    for path, names, what in ((pair.encoder, encoder_in, ("image",)),
                              (pair.decoder, decoder_in, ("point_coords", "point_labels")),
                              (pair.decoder, decoder_out, ("masks", "iou"))):
        missing = [n for n in what if n not in names]
        if missing:
            raise ModelError(f"{path}: its signature lacks {', '.join(missing)} (has {', '.join(names)}); export "
                             f"SAM2 files with segzoo.models.sam2.export")
    params = params_from_shapes(encoder_in["image"], decoder_in["point_coords"], decoder_out["masks"], pair.info)
    return (*tflite_functions(pair.encoder, pair.decoder, num_threads), params)
