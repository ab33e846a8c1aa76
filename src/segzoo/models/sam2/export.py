"""TFLite files of the SAM2 encoder and decoder, with named signatures, float32 or int8 per-tensor.

Each model is traced at batch 1 as one ``serving_default`` signature whose inputs are the Keras input names
(``image``; ``image_embeddings``, ``high_res_features_s0``, ``high_res_features_s1``, ``point_coords``,
``point_labels``) and whose outputs are the model's output keys. Callers use the signature runner
(``interpreter.get_signature_runner()(**inputs)``), never tensor indices.

int8 is TensorFlow's full-integer post-training quantization with per-tensor weights
(``_experimental_disable_per_channel``, the switch :mod:`segzoo.quantization.converter` uses) and float32 graph
inputs/outputs (QUANTIZE/DEQUANTIZE at the borders), calibrated on dicts of named float arrays. Every op must be
int8, except inside the ``float_scopes`` a caller names: TFLite has no int8 SIN/COS, so the decoder's point
encoding (``prompt_encoder``: the random-Fourier features of the N point prompts, a few hundred values) stays in
float (:data:`DECODER_FLOAT_SCOPES`); a float op anywhere else is a ModelError.
:func:`segzoo.quantization.quantize.placement_summary` shows where the STM32MP2 would run each op.

:func:`calibrate` + :func:`export_calibrated` split the int8 export in two, as the segmentation converter does:
the calibrated float model (every tensor's min/max over the samples) is quantized by
:func:`segzoo.quantization.converter.quantize_calibrated` (the per-tensor MLIR quantizer), and the same calibration
serves the per-layer error measurement of :func:`segzoo.quantization.mixed.layer_errors`.

The segmentation converter takes single-input models only; this exporter is the multi-input counterpart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segzoo.errors import ModelError
from segzoo.io import atomic_path
from segzoo.quantization.converter import converter_errors

if TYPE_CHECKING:  # pragma: no cover
    import keras

log = logging.getLogger(__name__)

SIGNATURE = "serving_default"
DECODER_FLOAT_SCOPES: tuple[str, ...] = ("prompt_encoder",)
"""Layers of the decoder allowed to stay float in an int8 file (SIN and COS have no int8 kernel in TFLite)."""
Representative = Callable[[], Iterable[Mapping[str, np.ndarray]]]


def _input_specs(model: "keras.Model") -> dict[str, Any]:
    """``{input name: TensorSpec([1, ...])}``; ModelError for an input without a static shape."""
    import tensorflow as tf

    specs = {}
    for tensor in model.inputs:
        name = tensor.name.split(":")[0]
        if any(d is None for d in tensor.shape[1:]):
            raise ModelError(f"model '{model.name}': input '{name}' has shape {tensor.shape}; TFLite export needs "
                             f"static shapes apart from the batch")
        specs[name] = tf.TensorSpec([1, *tensor.shape[1:]], tf.float32, name=name)
    return specs


def _concrete_function(model: "keras.Model") -> Any:
    """``model`` traced at batch 1 with its weights frozen into constants, as a function taking the inputs by
    name and returning the outputs by name (the names of the TFLite signature)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    specs = _input_specs(model)
    names = list(specs)

    def serve(**inputs: Any) -> dict[str, Any]:
        feed = inputs[names[0]] if len(names) == 1 and not isinstance(model.input, dict) else inputs
        outputs = model(feed, training=False)
        return dict(outputs) if isinstance(outputs, Mapping) else {"output": outputs}

    traced = tf.function(serve).get_concrete_function(**specs)
    frozen = convert_variables_to_constants_v2(traced)

    def named(**inputs: Any) -> dict[str, Any]:
        return tf.nest.pack_sequence_as(traced.structured_outputs, frozen(*(inputs[n] for n in names)))

    return tf.function(named).get_concrete_function(**specs)


def _calibration(representative: Representative, names: list[str], counter: list[int]) -> Callable:
    def generate() -> Iterator[dict[str, np.ndarray]]:
        for sample in representative():
            missing = [n for n in names if n not in sample]
            if missing:
                raise ModelError(f"calibration sample lacks input(s) {', '.join(missing)}; it has "
                                 f"{', '.join(sample)}")
            counter[0] += 1
            yield {n: np.asarray(sample[n], dtype=np.float32) for n in names}

    return generate


def convert(model: "keras.Model", *, quantize: bool = False, representative: Representative | None = None,
            float_scopes: tuple[str, ...] = ()) -> bytes:
    """The TFLite flatbuffer of ``model`` (see the module docstring)."""
    import tensorflow as tf

    if quantize and representative is None:
        raise ModelError(f"int8 export of '{model.name}' needs calibration samples (dicts of named inputs)")
    counter = [0]
    with converter_errors(f"{'int8 conversion' if quantize else 'conversion'} of '{model.name}'"):
        converter = tf.lite.TFLiteConverter.from_concrete_functions([_concrete_function(model)], tf.Module())
        if quantize:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = _calibration(representative, list(_input_specs(model)), counter)
            converter._experimental_disable_per_channel = True  # noqa: SLF001 - per-tensor for the NPU
            if not float_scopes:
                converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        data = bytes(converter.convert())
    if quantize and counter[0] == 0:
        raise ModelError(f"int8 export of '{model.name}': the calibration samples were empty")
    if quantize:
        log.info("calibrated %s on %d samples", model.name, counter[0])
    return data


def export_tflite(model: "keras.Model", out_path: str | Path, *, quantize: bool = False,
                  representative: Representative | None = None, float_scopes: tuple[str, ...] = ()) -> dict:
    """Write ``model`` as a ``.tflite`` file (atomically) and return its :func:`inspect_tflite` summary.

    ``quantize`` makes it int8 per-tensor, calibrated on ``representative()`` (an iterable of ``{input name:
    float32 [1, ...] array}``); ModelError if a per-channel tensor appears, or if an op outside ``float_scopes``
    (substrings of op output names, e.g. a Keras layer name) stays in float.
    """
    data = convert(model, quantize=quantize, representative=representative, float_scopes=float_scopes)
    return _write_checked(data, Path(out_path), quantize, float_scopes)


def calibrate(model: "keras.Model", representative: Representative) -> bytes:
    """The calibrated float TFLite model of ``model`` (named signature; every tensor's min/max over the samples of
    ``representative()``, dicts of named float32 ``[1, ...]`` inputs); ModelError when no sample came."""
    import tensorflow as tf

    counter = [0]
    with converter_errors(f"calibration of '{model.name}'"):
        converter = tf.lite.TFLiteConverter.from_concrete_functions([_concrete_function(model)], tf.Module())
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = _calibration(representative, list(_input_specs(model)), counter)
        converter._experimental_calibrate_only = True  # noqa: SLF001 - TF's calibrate-then-quantize split
        data = bytes(converter.convert())
    if counter[0] == 0:
        raise ModelError(f"int8 export of '{model.name}': the calibration samples were empty")
    log.info("calibrated %s on %d samples", model.name, counter[0])
    return data


def export_calibrated(calibrated: bytes, out_path: str | Path, *, float_scopes: tuple[str, ...] = ()) -> dict:
    """Quantize a :func:`calibrate` result to int8 per-tensor with float32 inputs and outputs, write it (atomically,
    with the checks of :func:`export_tflite`) and return its :func:`inspect_tflite` summary."""
    from segzoo.quantization.converter import quantize_calibrated

    data = quantize_calibrated(calibrated, granularity="per_tensor", input_type="float", output_type="float")
    return _write_checked(data, Path(out_path), True, float_scopes)


def _write_checked(data: bytes, out_path: Path, quantize: bool, float_scopes: tuple[str, ...]) -> dict:
    """Write ``data`` atomically once the checks of :func:`export_tflite` pass; its inspection summary."""
    from segzoo.litert.inspect import inspect_tflite

    with atomic_path(out_path) as tmp:
        tmp.write_bytes(data)
        summary = inspect_tflite(tmp)
        if quantize and summary["has_per_channel"]:
            raise ModelError(f"{out_path.name}: per-tensor export produced per-channel tensors "
                             f"{', '.join(summary['per_channel_tensors'][:5])}")
        stray = [t for t in summary["float_ops"] if not any(scope in t for scope in float_scopes)]
        if quantize and stray:
            raise ModelError(f"{out_path.name}: {len(stray)} op(s) outside {list(float_scopes)} stayed in float "
                             f"(no int8 kernel): {', '.join(stray[:5])}")
    log.info("wrote %s (%.1f MB, %s, %d float ops)", out_path, len(data) / 1e6,
             "int8 per-tensor" if quantize else "float32", len(summary["float_ops"]) if quantize else 0)
    return summary


def run_tflite(path: str | Path, inputs: Mapping[str, np.ndarray], num_threads: int | None = None
               ) -> dict[str, np.ndarray]:
    """Run the ``serving_default`` signature of a ``.tflite`` file on named float inputs."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
    runner = interpreter.get_signature_runner(SIGNATURE)
    return {k: np.asarray(v) for k, v in runner(**{k: np.asarray(v, np.float32) for k, v in inputs.items()}).items()}
