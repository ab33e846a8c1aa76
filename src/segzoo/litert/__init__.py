"""The one place that opens ``.tflite`` files: what a file contains (``inspect``), and importing float files as
Keras models. Reading uses ``ai_edge_litert`` only (no TensorFlow import), except the Keras import itself.

- :mod:`segzoo.litert.inspect`: op list, int8 / per-channel flags, I/O details (interpreter based).
- :mod:`segzoo.litert.flatbuffer`: the file as plain data (tensors, ops, options, constants); TensorFlow-free.
- :mod:`segzoo.litert.sparsity`: TFLite's sparse tensor format, densified in NumPy.
- :mod:`segzoo.litert.importer`: ``import_tflite(path) -> keras.Model`` (imports Keras; with :mod:`ops`,
  :mod:`layers` and :mod:`names`).

This ``__init__`` imports nothing, so the config validator may use :mod:`flatbuffer` without TensorFlow.
"""
