"""Promptable segmentation: an image and point prompts (positive/negative, image pixels) -> mask logits.

- :mod:`.prompts`: point prompts from a JSON file (image file name -> ``[{"x", "y", "label"}]``).
- :mod:`.dataset`: instance annotations in YOLO-seg format (``images/`` + ``labels/*.txt``), rasterized.
- :mod:`.preprocess`: the model image (resize the longest side + pad, or stretch; SAM2 pixel normalization),
  points into model pixels, mask logits back onto the image.
- :mod:`.clicks`: simulated clicks (interior point farthest from the boundary; centre of the largest error region).
- :mod:`.evaluate`: one-click and multi-click mIoU over instances for any predictor
  ``(image, points, labels) -> mask logits at image size``.
- :mod:`.reports`: the report as JSON and Markdown.

No TensorFlow here: the model side comes in as a plain callable.
"""
