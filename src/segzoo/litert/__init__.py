"""The one place that opens ``.tflite`` files: what a file contains (``inspect``), and importing float files as
Keras models. Reading uses ``ai_edge_litert`` only (no TensorFlow import)."""
