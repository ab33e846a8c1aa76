"""Keras -> TFLite: float32, or int8 per-tensor / per-channel, optionally with a few layers kept in float.

The model is converted at a **fixed batch of 1** through a concrete function (with a dynamic batch the dilated
convolutions become SPACE_TO_BATCH_ND + CONV_2D + BATCH_TO_SPACE_ND and their BatchNorm stays an extra MUL; see
``pretrained_models/README.md``).

Quantization is TensorFlow's post-training full-integer quantization:

- **all-int8** (no float layers): the standard converter path with ``TFLITE_BUILTINS_INT8`` (every op must have an
  int8 kernel, otherwise ModelError). Per-tensor is the converter switch ``_experimental_disable_per_channel``
  (read by ``TFLiteConverterBase._quantize`` in TF 2.21 and passed to the MLIR quantizer).
- **mixed precision** (``float_layers``): the model is calibrated once (``_experimental_calibrate_only``: a float
  TFLite model carrying the min/max of every tensor), then quantized by the MLIR quantizer with a node denylist
  (``tensorflow.lite.python.convert.mlir_quantize(denylisted_nodes=...)``, the mechanism behind
  ``tf.lite.experimental.QuantizationDebugger.get_nondebug_quantized_model``). The denylisted ops run in float
  between DEQUANTIZE/QUANTIZE pairs; all other ops stay int8. :func:`calibrate` + :func:`convert_calibrated` let
  a search re-quantize many times from one calibration (calibration is ~90% of the conversion time).

Names accepted by ``float_layers``: the output tensor name of an op in the TFLite model (``inspect_tflite`` ``tensor``
or ``mixed.layer_errors`` ``tensor``), or a Keras layer name (``block_3_depthwise``): every op whose fused name
contains that layer is kept in float.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segzoo.errors import ModelError
from segzoo.io import atomic_path
from segzoo.litert.inspect import inspect_tflite

if TYPE_CHECKING:  # pragma: no cover
    import keras

log = logging.getLogger(__name__)

GRANULARITIES: tuple[str, ...] = ("per_tensor", "per_channel")
IO_TYPES: tuple[str, ...] = ("uint8", "int8", "float")
Representative = Callable[[], Iterator[np.ndarray]]


# ------------------------------------------------------------------------------------------------ options
def _check_options(granularity: str, input_type: str, output_type: str, quantize: bool) -> None:
    if granularity not in GRANULARITIES:
        raise ModelError(f"granularity={granularity!r} is not supported; choose one of {', '.join(GRANULARITIES)}.")
    for key, value in (("input_type", input_type), ("output_type", output_type)):
        if value not in IO_TYPES:
            raise ModelError(f"{key}={value!r} is not supported; choose one of {', '.join(IO_TYPES)}.")
        if not quantize and value != "float":
            raise ModelError(f"{key}={value!r} needs a quantized model; a float32 TFLite model (quantize=False) "
                             f"has float input and output.")


def _tf_dtype(name: str) -> Any:
    import tensorflow as tf

    return {"uint8": tf.uint8, "int8": tf.int8, "float": tf.float32}[name]


def input_shape_of(model: "keras.Model") -> tuple[int, int, int]:
    """``(H, W, C)`` of a single-input model with a static image size, else ModelError."""
    if len(model.inputs) != 1:
        raise ModelError(f"Model '{model.name}' has {len(model.inputs)} inputs; TFLite conversion needs exactly 1.")
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or any(d is None for d in shape[1:]):
        raise ModelError(f"Model '{model.name}' input shape {shape} must be [batch, H, W, C] with a fixed H, W, C.")
    return int(shape[1]), int(shape[2]), int(shape[3])


# -------------------------------------------------------------------------------------------- converter
def batch1_function(model: "keras.Model") -> Any:
    """The model's inference function traced at a fixed batch of 1 (a ``tf`` concrete function)."""
    import tensorflow as tf

    height, width, channels = input_shape_of(model)
    spec = tf.TensorSpec([1, height, width, channels], tf.float32, name="input")
    return tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)


class _DropDeprecation(logging.Filter):
    """Hides absl's notice that a concrete function without ``trackable_obj`` uses the frozen-graph path."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "trackable_obj" not in record.getMessage()


@contextlib.contextmanager
def converter_errors(what: str) -> Iterator[None]:
    """Turn converter exceptions into ModelError naming the cause; silence the converter's own warnings."""
    absl_log, quiet = logging.getLogger("absl"), _DropDeprecation()
    absl_log.addFilter(quiet)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - every converter failure is a user-facing model problem
        raise ModelError(f"TFLite {what} failed: {_error_summary(exc)}") from exc
    finally:
        absl_log.removeFilter(quiet)


def _error_summary(exc: Exception, limit: int = 600) -> str:
    """The informative lines of a (often very long) converter error."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower() and "note:" not in line.lower()]
    picked = list(dict.fromkeys(errors or lines[:3]))
    text = " | ".join(picked) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _new_converter(model: "keras.Model") -> Any:
    import tensorflow as tf

    function = batch1_function(model)
    return tf.lite.TFLiteConverter.from_concrete_functions([function])


def _representative_dataset(representative: Representative, shape: tuple[int, int, int],
                            counter: list[int]) -> Callable:
    """Wrap ``representative`` for the converter: float32 ``[1,H,W,C]`` lists; counts images in ``counter[0]``."""
    expected = (1, *shape)

    def generate() -> Iterator[list[np.ndarray]]:
        for batch in representative():
            array = np.asarray(batch, dtype=np.float32)
            array = array[None] if array.ndim == 3 else array
            if array.ndim != 4 or array.shape[1:] != expected[1:]:
                raise ModelError(f"calibration data: expected float32 batches of shape {list(expected)}, "
                                 f"got {list(np.shape(batch))}")
            for image in array:
                counter[0] += 1
                yield [image[None]]

    return generate


def _int8_converter(model: "keras.Model", representative: Representative, counter: list[int]) -> Any:
    import tensorflow as tf

    converter = _new_converter(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = _representative_dataset(representative, input_shape_of(model), counter)
    return converter


def _check_calibrated(counter: list[int]) -> None:
    if counter[0] == 0:
        raise ModelError("no calibration data: the representative dataset yielded no images; int8 quantization "
                         "needs preprocessed calibration images (dataset.quantization_path or the training set).")


def float_tflite(model: "keras.Model") -> bytes:
    """A plain float32 TFLite model (batch 1, BatchNorm folded by the converter)."""
    with converter_errors("conversion"):
        return bytes(_new_converter(model).convert())


def calibrate(model: "keras.Model", representative: Representative | None) -> bytes:
    """Run the representative images through the float model: a float TFLite model with every tensor's min/max."""
    if representative is None:
        raise ModelError("no calibration data: int8 quantization needs a representative dataset.")
    counter = [0]
    with converter_errors("calibration"):
        converter = _int8_converter(model, representative, counter)
        converter._experimental_calibrate_only = True  # noqa: SLF001 - TF's calibrate-then-quantize split
        calibrated = bytes(converter.convert())
    _check_calibrated(counter)
    log.info("calibrated %s on %d images", model.name, counter[0])
    return calibrated


def quantize_calibrated(calibrated: bytes, *, granularity: str = "per_tensor", input_type: str = "uint8",
                        output_type: str = "float", float_layers: Sequence[str] = ()) -> bytes:
    """Quantize a :func:`calibrate` result; ``float_layers`` (tensor or Keras layer names) stay in float."""
    from tensorflow.lite.python import convert as tflite_convert

    from segzoo.quantization.limits import respect_limits

    _check_options(granularity, input_type, output_type, True)
    calibrated, _ = respect_limits(calibrated)  # a model XNNPACK can prepare (no-op when already applied)
    nodes = resolve_float_layers(calibrated, float_layers)
    with converter_errors("quantization"):
        return bytes(tflite_convert.mlir_quantize(
            calibrated,
            disable_per_channel=granularity == "per_tensor",
            input_data_type=_tf_dtype(input_type),
            output_data_type=_tf_dtype(output_type),
            denylisted_nodes=nodes or None,
        ))


def _full_int8(model: "keras.Model", representative: Representative, granularity: str, input_type: str,
               output_type: str) -> bytes:
    """The standard all-int8 conversion (``TFLITE_BUILTINS_INT8``)."""
    import tensorflow as tf

    counter = [0]
    with converter_errors("int8 conversion"):
        converter = _int8_converter(model, representative, counter)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = _tf_dtype(input_type)
        converter.inference_output_type = _tf_dtype(output_type)
        converter._experimental_disable_per_channel = granularity == "per_tensor"  # noqa: SLF001 - see module doc
        data = bytes(converter.convert())
    _check_calibrated(counter)
    return data


# ------------------------------------------------------------------------------------------ float layers
_SCOPE_SUFFIX = re.compile(r"_\d+$")


def tensor_layers(tensor_name: str) -> list[str]:
    """Keras layer names in a (possibly fused, ``;``-separated) TFLite tensor name, in order, without repeats.

    ``model_1/block_1_expand_relu_1/Relu6;model_1/block_1_expand_1/convolution`` ->
    ``["block_1_expand_relu", "block_1_expand"]`` (the model scope and TF's ``_1`` call suffix are dropped).
    """
    names: list[str] = []
    for part in tensor_name.split(";"):
        scopes = part.split("/")
        if len(scopes) < 2:
            continue
        name = _SCOPE_SUFFIX.sub("", scopes[1] if len(scopes) > 2 else scopes[0])
        if name and name not in names:
            names.append(name)
    return names


def op_tensor_names(model_content: bytes) -> list[str]:
    """Output tensor name of every op of a TFLite model, in execution order."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model_content)
    names = {int(t["index"]): t["name"] for t in interpreter.get_tensor_details()}
    return [names.get(int(op["outputs"][0]), "") for op in interpreter._get_ops_details()]  # noqa: SLF001


def _matches(request: str, tensor: str) -> bool:
    return request == tensor or request in tensor_layers(tensor)


def resolve_float_layers(model_content: bytes, float_layers: Sequence[str]) -> list[str]:
    """The op output tensor names (denylist nodes) selected by ``float_layers``; ModelError for unknown names."""
    if isinstance(float_layers, str):
        float_layers = [float_layers]
    if not float_layers:
        return []
    tensors = [t for t in op_tensor_names(model_content) if t]
    nodes: list[str] = []
    for request in float_layers:
        found = [t for t in tensors if _matches(str(request), t)]
        if not found:
            known = sorted({layer for t in tensors for layer in tensor_layers(t)})
            close = difflib.get_close_matches(str(request), known, n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ModelError(f"float layer {request!r} matches no op of the model.{hint} Give a TFLite tensor "
                             f"name (see mixed.layer_errors) or a Keras layer name ({len(known)} in this model, "
                             f"e.g. {', '.join(known[:8])}).")
        nodes.extend(t for t in found if t not in nodes)
    return nodes


# ---------------------------------------------------------------------------------------------- checking
def _check_result(path: Path, granularity: str, float_layers: Sequence[str], quantize: bool) -> dict:
    """Inspect the written file: per-tensor really per-tensor, all-int8 really all int8."""
    summary = inspect_tflite(path)
    if not quantize:
        return summary
    if granularity == "per_tensor" and summary["has_per_channel"]:
        raise ModelError(f"per-tensor conversion produced per-channel tensors: "
                         f"{', '.join(summary['per_channel_tensors'][:5])}")
    if not float_layers and summary["float_ops"]:
        names = [f"{op['name']} ({op['tensor']})" for op in summary["ops"] if op["tensor"] in summary["float_ops"]]
        raise ModelError(f"int8 conversion left {len(names)} op(s) in float, which have no int8 kernel in TFLite: "
                         f"{', '.join(names[:5])}{' ...' if len(names) > 5 else ''}. The NPU needs an all-int8 "
                         f"model: replace these layers, or keep them in float explicitly (float_layers).")
    return summary


def convert(
    model: "keras.Model",
    representative: Representative | None,
    out_path: str | Path,
    *,
    granularity: str = "per_tensor",
    input_type: str = "uint8",
    output_type: str = "float",
    float_layers: Sequence[str] = (),
    quantize: bool = True,
) -> Path:
    """Convert ``model`` to a TFLite file at batch 1 (see the module docstring); the path written (atomically).

    ``representative()`` yields preprocessed float32 ``[1,H,W,C]`` batches (a larger batch is split into images).
    ``quantize=False`` writes a float32 model (``representative`` unused; I/O types must be ``"float"``).
    Any converter failure, missing calibration data or an op left in float without being asked is a ModelError.
    """
    _check_options(granularity, input_type, output_type, quantize)
    float_layers = [float_layers] if isinstance(float_layers, str) else list(float_layers)
    if quantize and representative is None:
        raise ModelError("no calibration data: int8 quantization needs a representative dataset "
                         "(preprocessed calibration images).")
    if not quantize:
        data = float_tflite(model)
    elif float_layers:
        data = quantize_calibrated(calibrate(model, representative), granularity=granularity,
                                   input_type=input_type, output_type=output_type, float_layers=float_layers)
    else:
        data = _full_int8(model, representative, granularity, input_type, output_type)
    return _write_checked(data, Path(out_path), granularity, float_layers, quantize)


def float_tflite_file(model_path: Path, out_path: Path) -> Path:
    """The float32 TFLite conversion of a saved Keras model, written once to ``out_path`` (reused if present and
    intact; rewritten when damaged)."""
    from segzoo.io import verified

    if out_path.exists():
        try:
            return verified(out_path)
        except ModelError as exc:
            log.warning("%s; converting %s again", exc, model_path)
    from segzoo.quantization.quantize import load_float_model

    return convert(load_float_model(model_path), None, out_path, input_type="float", output_type="float",
                   quantize=False)


def convert_calibrated(calibrated: bytes, out_path: str | Path, *, granularity: str = "per_tensor",
                       input_type: str = "uint8", output_type: str = "float",
                       float_layers: Sequence[str] = ()) -> Path:
    """Like :func:`convert` with float layers, from one :func:`calibrate` result (a search re-quantizes cheaply)."""
    float_layers = [float_layers] if isinstance(float_layers, str) else list(float_layers)
    data = quantize_calibrated(calibrated, granularity=granularity, input_type=input_type,
                               output_type=output_type, float_layers=float_layers)
    return _write_checked(data, Path(out_path), granularity, float_layers, True)


def _write_checked(data: bytes, out_path: Path, granularity: str, float_layers: Sequence[str],
                   quantize: bool) -> Path:
    """Write ``data`` atomically, but only if :func:`_check_result` accepts it."""
    with atomic_path(out_path) as tmp:
        tmp.write_bytes(data)
        summary = _check_result(tmp, granularity, float_layers, quantize)
    log.info("wrote %s (%.2f MB, %s, int8 compute share %.0f%%, %d float ops)", out_path, len(data) / 1e6,
             granularity if quantize else "float32", 100 * summary["int8_compute_share"], len(summary["float_ops"]))
    return out_path
