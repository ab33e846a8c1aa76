"""Promptable segmentation: an image and point prompts (positive/negative, image pixels) -> mask logits.

- :mod:`.task`: the task the pipeline's steps call (:class:`PromptableSegmentation`).
- :mod:`.models`: the model folder (an encoder and a decoder, Keras or TFLite) and its loading.
- :mod:`.data`: the evaluation and calibration instance sets from the ``dataset`` keys (``layout: yolo_seg``).
- :mod:`.prompts`: point prompts from a JSON file (image file name -> ``[{"x", "y", "label"}]``).
- :mod:`.dataset`: instance annotations in YOLO-seg format (``images/`` + ``labels/*.txt``), rasterized.
- :mod:`.preprocess`: the model image (resize the longest side + pad, or stretch; SAM2 pixel normalization),
  points into model pixels, mask logits back onto the image.
- :mod:`.clicks`: simulated clicks (interior point farthest from the boundary; centre of the largest error region).
- :mod:`.evaluate`: one-click and multi-click mIoU over instances for any predictor
  ``(image, points, labels) -> mask logits at image size``.
- :mod:`.reports`: the report as JSON and Markdown.
- :mod:`.calibration`, :mod:`.quantize`: both networks to int8 per-tensor TFLite.
- :mod:`.prediction`: masks and overlays from prompts; :mod:`.timing`: per-stage timings.

Importing the package imports no TensorFlow: the models are loaded inside the functions that need them.
"""

from segzoo.tasks.promptable_segmentation.task import PromptableSegmentation

__all__ = ["PromptableSegmentation"]
