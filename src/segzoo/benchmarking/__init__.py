"""Benchmarking: what a model costs on the host and, estimated, on the STM32MP257 NPU/GPU/CPU.

- ``analysis``: params, MACs per op, op histogram, peak activation memory (liveness), quantization granularity
  of a ``.tflite`` file (no TensorFlow import) or a ``.keras``/``.h5`` model.
- ``host``: latency statistics (min/median/p90/mean/std, repeat agreement) and peak resident memory, measured in
  a fresh child process per model (``python -m segzoo.benchmarking.host``).
- ``estimate``: static placement of each op on the STM32MP257 NPU, GPU or CPU by the rules of ``stm32mp2.json``
  (with their sources and calibration), shares by op count, MACs and estimated time, estimated latency.
- ``report``: the comparison table of several models and targets (JSON, Markdown, two plots) and MLflow metrics.
"""
