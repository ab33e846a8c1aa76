"""Mixed-precision training: the network computes in bfloat16/float16 except its final layers, the exported model
is float32 through and through, and it quantizes like any other."""

from __future__ import annotations

import csv
import math
import types

import numpy as np
import pytest

from conftest import tiny_training_config


def test_mixed_copy_keeps_output_layers_in_float32_and_exports_back():
    import keras

    from segzoo.models.deeplab_v3.model import build_deeplabv3
    from segzoo.training.precision import float32_export, output_layers, policy_names, with_precision

    model = build_deeplabv3((64, 64, 3), 5, alpha=0.35, aspp="v2")
    assert output_layers(model) == {"logits", "upsampled_logits"}  # back to the last layer with weights
    mixed = with_precision(model, "mixed_bfloat16")
    policies = policy_names(mixed)
    # the output layers, and the bilinear resizes
    assert {name for name, p in policies.items() if p == "float32"} == {"logits", "upsampled_logits",
                                                                        "aspp_pool_upsample"}
    assert {p for p in policies.values()} == {"float32", "mixed_bfloat16"}
    assert all(w.dtype == "float32" for w in mixed.weights)  # variables stay float32
    x = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
    assert mixed(x).dtype == "float32"
    exported = float32_export(mixed)
    assert set(policy_names(exported).values()) == {"float32"}
    np.testing.assert_array_equal(np.asarray(exported(x)), np.asarray(model(x)))  # same weights, float32 again
    assert with_precision(model, "float32") is model  # nothing to do: no copy
    assert isinstance(exported, keras.Model)


@pytest.mark.heavy
def test_bfloat16_network_trains_under_xla():
    """A bfloat16 resize between bfloat16 layers gives XLA a gradient of mixed precisions it will not compile
    (InternalError); kept in float32, a jit-compiled training step runs."""
    import keras
    import tensorflow as tf

    from segzoo.models.deeplab_v3.model import build_deeplabv3
    from segzoo.training.backup import build_trainer
    from segzoo.training.precision import with_precision
    from segzoo.training.trainer import Trainer, default_loss_terms

    network = with_precision(build_deeplabv3((32, 32, 3), 3, alpha=0.35, aspp="v2"), "mixed_bfloat16")
    trainer = Trainer(network, default_loss_terms(3, 255, None), 3, 255)
    trainer.optimizer = keras.optimizers.Adam(1e-3)
    build_trainer(trainer)
    rng = np.random.default_rng(0)
    batch = (tf.constant(rng.uniform(-1, 1, (2, 32, 32, 3)), tf.float32),
             tf.constant(rng.integers(0, 3, (2, 32, 32)), tf.int32))
    tf.function(trainer.train_step, jit_compile=True)(batch)
    assert math.isfinite(float(trainer.loss_tracker.result()))


def test_every_output_path_of_a_multi_output_network_stays_float32():
    from segzoo.training.precision import policy_names, with_precision
    from toy_family.model import build

    network = build(types.SimpleNamespace(input_shape=(32, 32, 3), width=4), 5)
    policies = policy_names(with_precision(network, "mixed_float16"))
    assert policies == {"body": "mixed_float16", "logits": "float32", "aux": "float32", "edge": "float32"}


def test_float16_training_scales_its_loss():
    import keras

    from segzoo.training.precision import wrap_optimizer

    optimizer = wrap_optimizer(keras.optimizers.Adam(), "mixed_float16")
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    assert wrap_optimizer(optimizer, "mixed_float16") is optimizer
    assert not isinstance(wrap_optimizer(keras.optimizers.Adam(), "mixed_bfloat16"),
                          keras.optimizers.LossScaleOptimizer)


@pytest.mark.heavy
@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_training_exports_float32_and_quantizes(tmp_path, dataset_root, precision):
    import keras

    from segzoo.cli import run
    from segzoo.models.registry import custom_objects
    from segzoo.training.precision import policy_names

    cfg = tiny_training_config(tmp_path, dataset_root, epochs=2, steps_per_epoch=4, precision=precision)
    cfg["operation_mode"] = "chain_tqe"
    cfg["quantization"] = {"calibration_images": 8}
    cfg["evaluation"] = {"max_images": 8}
    results = run(cfg, run_dir=tmp_path / "run")
    saved = tmp_path / "run" / "saved_models"
    with open(tmp_path / "run" / "logs" / "training_log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and all(math.isfinite(float(r["loss"])) for r in rows)
    trained = keras.saving.load_model(saved / "best_checkpoint.keras", compile=False, custom_objects=custom_objects())
    assert precision in set(policy_names(trained).values())  # what was trained
    exported = keras.saving.load_model(saved / "best_model.keras", compile=False, custom_objects=custom_objects())
    assert set(policy_names(exported).values()) == {"float32"}
    assert all(w.dtype == "float32" for w in exported.weights)
    assert results["training"]["best_model"] == str(saved / "best_model.keras")
    quantized = results["quantization"]["model"]
    assert quantized.endswith(".tflite") and results["quantization"]["float_model"] == str(saved / "best_model.keras")
    assert math.isfinite(results["quantized_evaluation"]["miou"])
    assert abs(results["quantization"]["metric_drop_points"]) < 100
