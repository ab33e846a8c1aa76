"""A promptable predictor from the SAM2 encoder and decoder, Keras or TFLite, for the task's evaluator.

``Sam2Predictor(encode, decode, params)(image, coords, labels) -> logits [H, W]``: the image goes through the
task preprocessing (resize + pad, SAM2 normalization) and the encoder once per image (the last image's features
are kept while the same array object is passed again); the clicks are mapped to model pixels and padded to the
decoder's static ``num_points`` with padding points (label -1); the low-resolution logits come back onto the
image. With the multimask output, the mask with the highest predicted IoU is returned (SAM's selection).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segzoo.errors import ModelError
from segzoo.models.sam2.params import Sam2Params
from segzoo.tasks.promptable_segmentation.preprocess import logits_to_image, model_image, points_to_model

if TYPE_CHECKING:  # pragma: no cover
    import keras

Arrays = Mapping[str, np.ndarray]
PAD_LABEL = -1.0


def pad_points(coords: np.ndarray, labels: np.ndarray, num_points: int) -> tuple[np.ndarray, np.ndarray]:
    """``([1, N, 2], [1, N])`` float32 decoder inputs: the K clicks then ``N - K`` padding points (0, 0, -1)."""
    k = len(coords)
    if k > num_points:
        raise ModelError(f"{k} point prompts, but the decoder takes at most {num_points} "
                         f"(training.model.num_points); re-export the decoder with more points")
    out_coords = np.zeros((1, num_points, 2), dtype=np.float32)
    out_labels = np.full((1, num_points), PAD_LABEL, dtype=np.float32)
    out_coords[0, :k], out_labels[0, :k] = coords, labels
    return out_coords, out_labels


class Sam2Predictor:
    """See the module docstring; ``encode(image [1,S,S,3]) -> {name: array}``, ``decode({name: array}) -> {...}``."""

    def __init__(self, encode: Callable[[np.ndarray], Arrays], decode: Callable[[Arrays], Arrays],
                 params: Sam2Params, resize_mode: str = "longest_side") -> None:
        self.encode, self.decode, self.params, self.resize_mode = encode, decode, params, resize_mode
        self._image: np.ndarray | None = None
        self._cache: tuple[Arrays, Any] | None = None

    def features(self, image: np.ndarray) -> tuple[Arrays, Any]:
        """Encoder outputs and the frame of ``image`` (cached for the last image object)."""
        if self._image is not image or self._cache is None:
            tensor, where = model_image(image, self.params.image_size, self.resize_mode)
            self._cache, self._image = ({k: np.asarray(v) for k, v in self.encode(tensor).items()}, where), image
        return self._cache

    def __call__(self, image: np.ndarray, coords: np.ndarray, labels: np.ndarray) -> np.ndarray:
        features, where = self.features(image)
        points, point_labels = pad_points(points_to_model(coords, where), labels, self.params.num_points)
        out = self.decode({**features, "point_coords": points, "point_labels": point_labels})
        masks, iou = np.asarray(out["masks"])[0], np.asarray(out["iou"])[0]
        return logits_to_image(masks[..., int(np.argmax(iou))], where)


def keras_functions(encoder: "keras.Model", decoder: "keras.Model") -> tuple[Callable, Callable]:
    """``(encode, decode)`` calling the Keras models."""

    def encode(image: np.ndarray) -> Arrays:
        return {k: np.asarray(v) for k, v in encoder(image, training=False).items()}

    def decode(inputs: Arrays) -> Arrays:
        return {k: np.asarray(v) for k, v in decoder(dict(inputs), training=False).items()}

    return encode, decode


def tflite_functions(encoder_path: str | Path, decoder_path: str | Path,
                     num_threads: int | None = None) -> tuple[Callable, Callable]:
    """``(encode, decode)`` running the ``serving_default`` signatures of the two ``.tflite`` files."""
    from ai_edge_litert.interpreter import Interpreter

    from segzoo.models.sam2.export import SIGNATURE

    runners = [Interpreter(model_path=str(p), num_threads=num_threads).get_signature_runner(SIGNATURE)
               for p in (encoder_path, decoder_path)]

    def encode(image: np.ndarray) -> Arrays:
        return runners[0](image=np.asarray(image, np.float32))

    def decode(inputs: Arrays) -> Arrays:
        return runners[1](**{k: np.asarray(v, np.float32) for k, v in inputs.items()})

    return encode, decode
