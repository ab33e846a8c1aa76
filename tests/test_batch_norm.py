"""BatchNormalization in training: TensorFlow's fused kernel computes what Keras's layer computes (outputs, gradients,
moving statistics), on a real network, and leaves what is saved unchanged."""

from __future__ import annotations

import numpy as np
import pytest


def _network(epsilon: float = 1e-3):
    import keras

    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization(momentum=0.9, epsilon=epsilon, name="bn_a")(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization(center=False, scale=False, epsilon=epsilon, name="bn_b")(x)
    x = keras.layers.Conv2D(4, 1)(x)
    return keras.Model(inputs, x)


def _twins(epsilon: float = 1e-3):
    """Two copies of one network with the same weights; the second trains with the fused kernel."""
    import keras

    from segzoo.training.batch_norm import use_fused_kernel

    keras.utils.set_random_seed(3)
    plain = _network(epsilon)
    fused = _network(epsilon)
    fused.set_weights(plain.get_weights())
    assert use_fused_kernel(fused) == 2
    return plain, fused


def _step(model, images, targets):
    """One SGD step; the training-mode output and the gradients."""
    import keras
    import tensorflow as tf

    optimizer = keras.optimizers.SGD(0.1)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            out = model(images, training=True)
            loss = tf.reduce_mean(tf.square(out - targets))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return out, grads

    out, grads = step()
    ops = {op.type for op in step.get_concrete_function().graph.get_operations()}
    return out.numpy(), [g.numpy() for g in grads], ops


@pytest.mark.parametrize("epsilon", [1e-3, 1e-5])
def test_fused_kernel_trains_as_keras_does(epsilon):
    plain, fused = _twins(epsilon)
    rng = np.random.default_rng(0)
    images = rng.normal(1.0, 2.0, (4, 12, 12, 3)).astype(np.float32)
    targets = rng.normal(size=(4, 12, 12, 4)).astype(np.float32)
    out_p, grads_p, ops_p = _step(plain, images, targets)
    out_f, grads_f, ops_f = _step(fused, images, targets)
    assert "FusedBatchNormV3" in ops_f and "FusedBatchNormV3" not in ops_p
    np.testing.assert_allclose(out_f, out_p, atol=1e-4 * np.ptp(out_p))
    for gf, gp in zip(grads_f, grads_p):
        np.testing.assert_allclose(gf, gp, atol=5e-3 * np.abs(gp).max())  # sums whose terms cancel: float rounding
    for name in ("bn_a", "bn_b"):
        for vf, vp in zip(fused.get_layer(name).non_trainable_weights, plain.get_layer(name).non_trainable_weights):
            np.testing.assert_allclose(vf.numpy(), vp.numpy(), rtol=1e-4, atol=1e-6)  # moving mean and variance
    # inference (moving statistics) is Keras's own path in both
    np.testing.assert_allclose(fused(images, training=False).numpy(), plain(images, training=False).numpy(),
                               rtol=1e-4, atol=1e-4)


def test_fused_networks_save_as_plain_keras_layers(tmp_path):
    import keras

    from segzoo.training.batch_norm import use_fused_kernel

    keras.utils.set_random_seed(3)
    fused = _network()
    before = fused.to_json()
    assert use_fused_kernel(fused) == 2
    assert fused.to_json() == before
    path = tmp_path / "fused.keras"
    fused.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.get_layer("bn_a")) is keras.layers.BatchNormalization
    assert "call" not in vars(loaded.get_layer("bn_a"))


def test_synchronized_and_renormalized_layers_keep_keras_kernel():
    import keras

    from segzoo.training.batch_norm import synchronize_batch_norm, use_fused_kernel

    network = _network()
    assert synchronize_batch_norm(network) == 2
    assert use_fused_kernel(network) == 0
    inputs = keras.Input((4, 4, 2))
    renorm = keras.Model(inputs, keras.layers.BatchNormalization(renorm=True)(inputs))
    assert use_fused_kernel(renorm) == 0


def test_default_network_trains_with_fused_kernel():
    """The default run's DeepLabV3: every BatchNormalization layer is fused, and a training step agrees."""
    import keras

    from segzoo.models.deeplab_v3.model import build_deeplabv3
    from segzoo.training.batch_norm import use_fused_kernel

    keras.utils.set_random_seed(0)
    plain = build_deeplabv3((64, 64, 3), 5, alpha=0.35, aspp="v2", dropout=0.0)
    fused = build_deeplabv3((64, 64, 3), 5, alpha=0.35, aspp="v2", dropout=0.0)
    fused.set_weights(plain.get_weights())
    count = sum(isinstance(layer, keras.layers.BatchNormalization) for layer in fused._flatten_layers())
    assert use_fused_kernel(fused) == count > 30
    images = np.random.default_rng(1).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
    out_p = plain(images, training=True).numpy()
    out_f = fused(images, training=True).numpy()
    np.testing.assert_allclose(out_f, out_p, atol=1e-3 * np.ptp(out_p))



class _Replicas:
    """What :func:`make_trainer` reads of a distribution: the number of replicas in sync."""

    def __init__(self, num_replicas: int) -> None:
        self.num_replicas = num_replicas


@pytest.mark.parametrize("replicas", [1, 2])
def test_make_trainer_picks_the_kernel(tmp_path, dataset_root, replicas):
    """The training entry's trainer: on one replica every BatchNormalization layer of the network trains with the
    fused kernel; with ``sync_batch_norm`` over two replicas they are synchronized and keep Keras's kernel."""
    import keras

    from conftest import tiny_training_config
    from segzoo.config import load_config
    from segzoo.data.resolve import data_spec
    from segzoo.models.deeplab_v3.model import build_deeplabv3
    from segzoo.training.start import Start, make_trainer

    raw = tiny_training_config(tmp_path, dataset_root, class_weights=None)
    raw["training"]["distribution"] = {"sync_batch_norm": True}
    cfg = load_config(raw)
    spec = data_spec(cfg)
    network = build_deeplabv3((64, 64, 3), spec.num_classes, alpha=0.35, aspp="v2", dropout=0.0)
    trainer = make_trainer(cfg, spec, [], _Replicas(replicas), Start(network))
    layers = [layer for layer in trainer.network._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(layers) > 30
    fused = replicas == 1
    assert all(("call" in vars(layer)) == fused and layer.synchronized != fused for layer in layers)
