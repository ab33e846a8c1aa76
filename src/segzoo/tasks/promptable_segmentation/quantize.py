"""Both networks of a promptable model to int8 per-tensor TFLite files, in one folder, with what the report needs.

For each network (encoder, then decoder): segzoo's per-tensor formatting where it applies
(:func:`segzoo.quantization.formatting.optimize_for_per_tensor`: the encoder's FPN lateral convolutions and the
``conv_s0``/``conv_s1`` projections after them are equalized exactly; the decoder, whose graph holds non-layer
operations, is left as is), one calibration (:func:`segzoo.models.sam2.export.calibrate`, named signature), the
per-tensor MLIR quantizer with float32 inputs and outputs (:func:`segzoo.models.sam2.export.export_calibrated`; the
decoder's point encoding stays float: TFLite has no int8 SIN/COS), the per-layer quantization error on a few
samples (:func:`segzoo.quantization.mixed.layer_errors`, from the same calibration), the file inspection and its
STM32MP257 placement. The folder gets ``encoder_int8.tflite``, ``decoder_int8.tflite`` and ``sam2.json``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segzoo.errors import ModelError
from segzoo.io import atomic_dir, write_json

if TYPE_CHECKING:  # pragma: no cover
    from segzoo.config.schema import Config
    from segzoo.quantization.quantize import QuantizationResult
    from segzoo.tasks.promptable_segmentation.calibration import Calibration
    from segzoo.tasks.promptable_segmentation.models import ModelPair

log = logging.getLogger(__name__)

LAYER_ERROR_SAMPLES = {"encoder": 2, "decoder": 8}
"""Samples used to measure per-layer errors (enough to rank layers; the encoder's debug model is slow at 1024)."""
LAYER_ERROR_BUDGET = 1 << 30
"""Bytes the per-layer error measurement may hold: its debug model keeps every tensor, in float, int8 and as an
error (about 3x the float model's tensors). The encoder at 1024 holds global-attention maps of 4096 x 4096 per
head and is skipped; at small sizes and for the decoder the measurement runs."""
WORST_LAYERS = 10


def quantized_folder(cfg: Config, run_dir: Path, float_model: Path) -> Path:
    """Where the int8 pair of ``float_model`` goes: ``<run>/<export_dir>/<folder>_int8_per_tensor``."""
    return run_dir / cfg.quantization.export_dir / f"{float_model.name}_int8_per_tensor"


def _restore_outputs(original: Any, rebuilt: Any) -> Any:
    """The formatted model with the original's named (dict) outputs (formatting rebuilds them as a list)."""
    import keras

    if not isinstance(original.output, dict):
        return rebuilt
    outputs = keras.tree.pack_sequence_as(original.output, list(rebuilt.outputs))
    return keras.Model(rebuilt.inputs[0] if len(rebuilt.inputs) == 1 else rebuilt.inputs, outputs, name=original.name)


def _formatted(cfg: Config, name: str, model: Any, calibration: Calibration) -> tuple[Any, dict | str]:
    """The model formatted for per-tensor quantization and the formatting report, or the model and why not."""
    import numpy as np

    from segzoo.quantization.formatting import optimize_for_per_tensor

    if not cfg.quantization.optimize:
        return model, "off (quantization.optimize: false)"
    if name != "encoder":
        return model, "not applicable (the graph holds operations that are not Keras layers)"
    images = np.concatenate([s["image"] for s in calibration.encoder(16)])
    try:
        optimized, report = optimize_for_per_tensor(model, images, relu6=cfg.quantization.relu6_equalization)
    except ModelError as exc:
        return model, f"not applicable ({exc})"
    return _restore_outputs(model, optimized), report


def _network(cfg: Config, name: str, model: Any, samples: Any, out_path: Path, float_path: Path,
             calibration: Calibration) -> dict:
    """Quantize one network and describe it (see the module docstring)."""
    from segzoo.litert.inspect import NON_COMPUTE_OPS
    from segzoo.models.sam2.export import DECODER_FLOAT_SCOPES, calibrate, export_calibrated, placement_summary
    from segzoo.quantization.mixed import layer_errors

    start = time.perf_counter()
    model, formatting = _formatted(cfg, name, model, calibration)
    calibrated = calibrate(model, samples)
    scopes = DECODER_FLOAT_SCOPES if name == "decoder" else ()
    summary = export_calibrated(calibrated, out_path, float_scopes=scopes)
    limit = LAYER_ERROR_SAMPLES[name]
    needed = 3 * tensor_bytes(calibrated)
    if needed <= LAYER_ERROR_BUDGET:
        errors, skipped = layer_errors(model, lambda: getattr(calibration, name)(limit), calibrated=calibrated), None
    else:
        errors, skipped = [], (f"not measured: the debug model would hold about {needed / 2**30:.1f} GiB of tensors "
                               f"(budget {LAYER_ERROR_BUDGET / 2**30:.0f} GiB)")
        log.info("%s: per-layer errors %s", name, skipped)
    compute = [op for op in summary["ops"] if op["name"] not in NON_COMPUTE_OPS]
    placement = placement_summary(out_path) if cfg.quantization.target == "stm32mp2" else None
    floats = sorted({op["name"] for op in summary["ops"] if op["tensor"] in summary["float_ops"]})
    log.info("%s: %s (%.1f MB), float ops %s%s", name, out_path.name, summary["size_bytes"] / 1e6, floats or "none",
             f", STM32MP2 estimate {placement['npu_pct']:.1f}% NPU" if placement else "")
    return {
        "name": name, "model": str(out_path), "float_model": str(float_path),
        "size_bytes": summary["size_bytes"], "float_size_bytes": float_path.stat().st_size,
        "compute_ops": len(compute), "int8_ops": sum(op["int8"] for op in compute),
        "int8_compute_share": summary["int8_compute_share"], "has_per_channel": summary["has_per_channel"],
        "per_channel_tensors": summary["per_channel_tensors"], "float_ops": summary["float_ops"],
        "float_op_types": floats, "op_histogram": summary["op_histogram"],
        "npu_ready": not summary["has_per_channel"] and not summary["float_ops"],
        "formatting": formatting, "stm32mp2_estimate": placement,
        "worst_layers": [{**row, "network": name} for row in errors[:WORST_LAYERS]],
        "layer_error_samples": limit if skipped is None else 0, "layer_errors_skipped": skipped,
        "seconds": round(time.perf_counter() - start, 1),
    }


def tensor_bytes(model_content: bytes) -> int:
    """Bytes of every tensor of a TFLite model (weights and activations, at their static shapes)."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    details = Interpreter(model_content=model_content).get_tensor_details()
    return sum(int(np.prod(d["shape"])) * np.dtype(d["dtype"]).itemsize for d in details)


def combined_inspection(networks: list[dict]) -> dict:
    """The inspection fields of the whole pair (for the report's headline): sizes summed, shares over all ops."""
    compute = sum(n["compute_ops"] for n in networks)
    histogram: Counter = Counter()
    for n in networks:
        histogram.update(n["op_histogram"])
    return {"size_bytes": sum(n["size_bytes"] for n in networks),
            "int8_compute_share": sum(n["int8_ops"] for n in networks) / compute if compute else 0.0,
            "has_per_channel": any(n["has_per_channel"] for n in networks),
            "per_channel_tensors": [t for n in networks for t in n["per_channel_tensors"]],
            "float_ops": [f"{n['name']}: {t}" for n in networks for t in n["float_ops"]],
            "op_histogram": dict(histogram)}


def quantize_pair(cfg: Config, pair: ModelPair, models: dict[str, Any], calibration: Calibration,
                  run_dir: Path) -> QuantizationResult:
    """Both networks of ``pair`` (loaded Keras ``models``) quantized into one folder; the result for the report."""
    from segzoo.quantization.quantize import QuantizationResult
    from segzoo.tasks.promptable_segmentation.models import INFO_FILE

    start = time.perf_counter()
    out_dir = quantized_folder(cfg, run_dir, pair.folder)
    networks = []
    with atomic_dir(out_dir) as stage:
        for name in ("encoder", "decoder"):
            samples = (lambda n=name: getattr(calibration, n)())
            networks.append(_network(cfg, name, models[name], samples, stage / f"{name}_int8.tflite",
                                     pair.files()[name], calibration))
        info = dict(pair.info)
        info["quantization"] = {"granularity": "per_tensor", "input_type": "float", "output_type": "float",
                                "calibration": calibration.info, "float_model": str(pair.folder)}
        write_json(stage / INFO_FILE, info)
    for network in networks:
        network["model"] = str(out_dir / Path(network["model"]).name)
        if network["stm32mp2_estimate"]:
            network["stm32mp2_estimate"]["model"] = network["model"]
    errors = sorted((row for n in networks for row in n["worst_layers"]), key=lambda r: -r["rmse_per_scale"])
    return QuantizationResult(
        path=out_dir, float_model=pair.folder, granularity="per_tensor", input_type="float", output_type="float",
        float_layers=[], calibration=calibration.info, formatting=None, layer_errors=errors,
        inspection=combined_inspection(networks), warnings=list(calibration.warnings),
        seconds=time.perf_counter() - start, stm32mp2=None, networks=networks)
