"""Runners with named inputs and outputs (``predict(dict) -> dict``) and pipelines of them.

A :class:`~segzoo.runtime.base.NamedRunner` is any model or processing stage that maps a dict of named
arrays to a dict of named arrays and describes both with :class:`~segzoo.runtime.base.TensorSpec`. A
:class:`~segzoo.runtime.pipeline.Pipeline` of runners is itself a runner. Nothing here imports TensorFlow
at import time.
"""
