"""Int8 TFLite quantization for the STM32MP2 NPU (8-bit per-tensor).

- ``converter``: Keras -> TFLite at batch 1 (float, int8 per-tensor / per-channel, mixed float layers).
- ``formatting``: exact float rewrites that make per-tensor quantization lose little (BN folding, cross-layer
  equalization, bias absorption).
- ``inspect``: what a ``.tflite`` file contains (op types, int8 share, per-channel tensors); no TensorFlow import.
- ``mixed``: per-layer quantization errors and the search for the few layers to keep in float.
"""
