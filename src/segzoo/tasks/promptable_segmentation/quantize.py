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
REFINE_SAMPLES = 16
"""Calibration samples the post-training steps (activation ranges, AdaRound, bias correction) run on."""
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


def _refined(cfg: Config, name: str, calibrated: bytes, calibration: Calibration) -> tuple[bytes, dict]:
    """The post-training steps (activation ranges, AdaRound, bias correction) on one calibrated network, fed with
    ``REFINE_SAMPLES`` of its calibration samples (images for the encoder, named inputs for the decoder). AdaRound
    rounds convolutions fed by images and is left to the encoder."""
    from dataclasses import replace

    from segzoo.quantization.quantize import refine_calibrated

    samples = list(getattr(calibration, name)(REFINE_SAMPLES))
    if name == "encoder":
        import numpy as np

        return refine_calibrated(cfg, calibrated, np.concatenate([s["image"] for s in samples]))
    q = cfg.quantization
    if q.adaround:
        log.warning("quantization.adaround: applied to the encoder only (the decoder's inputs are not images)")
    return refine_calibrated(replace(cfg, quantization=replace(q, adaround=False)), calibrated, samples)


def _network(cfg: Config, name: str, model: Any, samples: Any, out_path: Path, float_path: Path,
             calibration: Calibration) -> tuple[QuantizationResult, str | None]:
    """Quantize one network (see the module docstring): its result, and why its per-layer errors were not
    measured (None when they were)."""
    from segzoo.models.sam2.export import DECODER_FLOAT_SCOPES, calibrate, export_calibrated
    from segzoo.quantization.mixed import layer_errors
    from segzoo.quantization.quantize import QuantizationResult

    start = time.perf_counter()
    model, formatting = _formatted(cfg, name, model, calibration)
    calibrated = calibrate(model, samples)
    calibrated, refinements = _refined(cfg, name, calibrated, calibration)
    scopes = DECODER_FLOAT_SCOPES if name == "decoder" else ()
    inspection = export_calibrated(calibrated, out_path, float_scopes=scopes)
    limit = LAYER_ERROR_SAMPLES[name]
    needed = 3 * tensor_bytes(calibrated)
    if needed <= LAYER_ERROR_BUDGET:
        errors, skipped = layer_errors(model, lambda: getattr(calibration, name)(limit), calibrated=calibrated), None
    else:
        errors, skipped = [], (f"not measured: the debug model would hold about {needed / 2**30:.1f} GiB of tensors "
                               f"(budget {LAYER_ERROR_BUDGET / 2**30:.0f} GiB)")
        log.info("%s: per-layer errors %s", name, skipped)
    floats = sorted({op["name"] for op in inspection["ops"] if op["tensor"] in inspection["float_ops"]})
    log.info("%s: %s (%.1f MB), float ops %s", name, out_path.name, inspection["size_bytes"] / 1e6, floats or "none")
    result = QuantizationResult(
        path=out_path, float_model=float_path, granularity="per_tensor", input_type="float", output_type="float",
        float_layers=[], calibration={**calibration.info, "network": name}, formatting=formatting,
        layer_errors=errors, inspection=inspection, seconds=time.perf_counter() - start, refinements=refinements)
    return result, skipped


def tensor_bytes(model_content: bytes) -> int:
    """Bytes of every tensor of a TFLite model (weights and activations, at their static shapes)."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    details = Interpreter(model_content=model_content).get_tensor_details()
    return sum(int(np.prod(d["shape"])) * np.dtype(d["dtype"]).itemsize for d in details)


def quantize_pair(cfg: Config, pair: ModelPair, models: dict[str, Any], calibration: Calibration,
                  run_dir: Path) -> QuantizationResult:
    """Both networks of ``pair`` (loaded Keras ``models``) quantized into one folder; one result of both
    (:func:`segzoo.quantization.quantize.combine_results`: a report section per network, the placement per frame)."""
    from segzoo.quantization.quantize import combine_results, stm32mp2_placement
    from segzoo.tasks.promptable_segmentation.models import INFO_FILE

    out_dir = quantized_folder(cfg, run_dir, pair.folder)
    results, skipped = {}, {}
    with atomic_dir(out_dir) as stage:
        for name in ("encoder", "decoder"):
            samples = (lambda n=name: getattr(calibration, n)())
            results[name], skipped[name] = _network(cfg, name, models[name], samples, stage / f"{name}_int8.tflite",
                                                    pair.files()[name], calibration)
        info = dict(pair.info)
        info["quantization"] = {"granularity": "per_tensor", "input_type": "float", "output_type": "float",
                                "calibration": calibration.info, "float_model": str(pair.folder)}
        write_json(stage / INFO_FILE, info)
    for result in results.values():  # the files are in place now: placement estimates name them there
        result.path = out_dir / result.path.name
        result.stm32mp2 = stm32mp2_placement(result.path) if cfg.quantization.target == "stm32mp2" else None
    combined = combine_results(out_dir, pair.folder, results)
    for section in combined.networks:
        section["layer_error_samples"] = 0 if skipped[section["name"]] else LAYER_ERROR_SAMPLES[section["name"]]
        section["layer_errors_skipped"] = skipped[section["name"]]
        estimate = section["stm32mp2_estimate"]
        if estimate:
            log.info("%s: STM32MP2 estimate %.1f%% NPU, %d of %d ops off it", section["name"], estimate["npu_pct"],
                     estimate["ops_off_npu"], estimate["ops"])
    combined.warnings = list(calibration.warnings) + _unapplied_steps(cfg) + combined.warnings
    return combined


def _unapplied_steps(cfg: Config) -> list[str]:
    """The configured post-training steps that do not run on both networks: AdaRound runs on the encoder only."""
    if not cfg.quantization.adaround:
        return []
    return ["quantization.adaround: applied to the SAM2 encoder only (the decoder's inputs are not images)"]
