"""Weights for DeepLabV3: Keras's MobileNetV2 ImageNet backbone files, and weight files given by path.

The ImageNet backbone comes from Keras's own no-top files (``mobilenet_v2_weights_tf_dim_ordering_tf_kernels_
{alpha}_{rows}_no_top.h5``). Every ``rows`` variant (96 ... 224) holds weights of the same shapes for an alpha, so
the 224 file serves any input size; the first file found is used and logged. Before anything is loaded, every
layer of the file is compared with the model: a file of another alpha (renamed, or given by path) is refused with
the file and the first layer whose shapes do not fit.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segzoo.errors import ModelError

if TYPE_CHECKING:  # pragma: no cover
    import keras

    from segzoo.models.deeplab_v3.params import DeepLabV3Params

log = logging.getLogger(__name__)

KERAS_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/{file_name}"
IMAGENET_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_224_no_top.h5"
IMAGENET_ALTERNATIVES = tuple(f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{{alpha}}_{rows}_no_top.h5"
                              for rows in (192, 160, 128, 96))
WEIGHT_FILE_SUFFIXES: tuple[str, ...] = (".h5", ".hdf5", ".keras")


def h5_layer_shapes(path: Path) -> dict[str, list[tuple[int, ...]]]:
    """Layer name -> weight shapes of a Keras legacy ``.h5`` weights file (no TensorFlow needed)."""
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            root = handle["model_weights"] if "model_weights" in handle else handle
            layers = [n.decode() if isinstance(n, bytes) else n for n in root.attrs.get("layer_names", [])]
            shapes = {}
            for layer in layers:
                group = root[layer]
                names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs.get("weight_names", [])]
                shapes[layer] = [tuple(group[n].shape) for n in names]
    except (OSError, KeyError) as exc:
        raise ModelError(f"{path}: not a readable Keras .h5 weights file ({exc})") from None
    return shapes


def check_backbone_file(model: "keras.Model", path: Path) -> int:
    """ModelError naming ``path`` and the first layer whose shapes differ from ``model``'s; layers matched."""
    file_shapes = h5_layer_shapes(path)
    matched = 0
    for layer_name, shapes in file_shapes.items():
        if not shapes:
            continue
        try:
            layer = model.get_layer(layer_name)
        except ValueError:
            continue
        expected = [tuple(w.shape) for w in layer.weights]
        if expected != shapes:
            raise ModelError(f"{path}: layer '{layer_name}' has weights of shapes {shapes} but the model's layer has "
                             f"{expected}: the file is for another MobileNetV2 width (alpha) than this model's. Use "
                             "the file of the model's alpha, or change training.model.alpha.")
        matched += 1
    if matched == 0:
        raise ModelError(f"{path}: no layer of this file matches the model by name; it is not a MobileNetV2 file")
    return matched


def import_imagenet(model: "keras.Model", path: Path, params: "DeepLabV3Params") -> None:
    """Load a Keras MobileNetV2 no-top ImageNet file into the backbone layers of ``model`` (checked first)."""
    matched = check_backbone_file(model, path)
    _load_h5_by_name(model, path)
    log.info("ImageNet backbone (alpha %s) from %s: %d layers", params.alpha, path.name, matched)


def _load_h5_by_name(model: "keras.Model", path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model.load_weights(path, skip_mismatch=False, by_name=True)
        except Exception as exc:  # noqa: BLE001 - corrupt files surface as ModelError
            raise ModelError(f"cannot load weights file '{path}': {exc}") from exc


def _snapshot(model: "keras.Model") -> dict[str, list]:
    return {layer.name: [w.numpy().copy() for w in layer.weights] for layer in model.layers if layer.weights}


def _changed_layers(model: "keras.Model", before: dict[str, list]) -> int:
    changed = 0
    for layer in model.layers:
        old = before.get(layer.name)
        if old and any(not np.array_equal(o, w.numpy()) for o, w in zip(old, layer.weights)):
            changed += 1
    return changed


def _transfer_from_keras_file(model: "keras.Model", path: Path) -> None:
    """Copy weights from a saved ``.keras`` model into ``model``, layer by layer, by name and matching shapes."""
    import keras

    from segzoo.models.analysis import iter_leaf_layers
    from segzoo.models.registry import custom_objects

    from segzoo.io import verified

    verified(path)
    try:
        source = keras.saving.load_model(path, compile=False, custom_objects=custom_objects())
    except Exception as exc:  # noqa: BLE001 - any load failure is a user-facing model problem
        raise ModelError(f"Cannot read pretrained_weights file '{path}': {exc}") from exc
    by_name = {layer.name: layer for layer in iter_leaf_layers(source) if layer.weights}
    for layer in model.layers:
        src = by_name.get(layer.name)
        if src is None or not layer.weights:
            continue
        src_weights = src.get_weights()
        if [w.shape for w in src_weights] == [tuple(w.shape) for w in layer.weights]:
            layer.set_weights(src_weights)


def load_weights_file(model: "keras.Model", path: Path, params: Any = None) -> int:
    """Load a weights file given by path into ``model`` by layer name, skipping mismatches; layers loaded.

    Legacy ``.h5``: by layer name (a MobileNetV2 no-top file, whose shapes are checked first, or a full DeepLabV3
    ``.h5``). ``.weights.h5``: Keras 3 structural loading with skip_mismatch (same architecture). ``.keras``: the
    saved model's layers copied by name where shapes match (e.g. another number of classes).
    """
    path = Path(path)
    if path.suffix.lower() not in WEIGHT_FILE_SUFFIXES:
        raise ModelError(f"pretrained_weights file '{path}' must end in .h5, .hdf5 or .keras (weights file).")
    name = path.name.lower()
    if name.startswith("mobilenet_v2_weights") and name.endswith(".h5"):
        check_backbone_file(model, path)
    before = _snapshot(model)
    try:
        # Keras warns about every skipped layer with its full weight arrays: keep only a one-line summary.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if name.endswith(".keras"):
                _transfer_from_keras_file(model, path)
            elif name.endswith(".weights.h5"):
                model.load_weights(path, skip_mismatch=True)
            else:
                model.load_weights(path, skip_mismatch=True, by_name=True)
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - corrupt/foreign files surface as ModelError
        raise ModelError(f"Cannot load pretrained_weights file '{path}': {exc}") from exc
    for warning in caught:
        log.info("while loading %s: %s", path.name, str(warning.message).splitlines()[0][:200])
    loaded = _changed_layers(model, before)
    if loaded == 0:
        raise ModelError(f"pretrained_weights file '{path}' has no layer whose name and shapes match this model "
                         f"({model.name}); nothing was loaded.")
    log.info("loaded weights of %d/%d layers from %s", loaded, len(before), path)
    return loaded
