"""The ``host`` target: latency and peak memory of a model on this machine, one fresh process per model.

:func:`benchmark_host` runs ``python -m segzoo.benchmarking.host <model> ...`` in a child process and reads its
JSON back, so the peak resident memory (``ru_maxrss``) belongs to that model alone. The child measures:

- ``baseline_rss_bytes``: resident memory after importing the runtime (LiteRT, or TensorFlow/Keras for a
  ``.keras``/``.h5`` model) and before loading the model; ``peak_rss_bytes``: the child's peak resident memory at
  the end (Linux ``VmHWM``, which ``execve`` resets); ``model_rss_bytes`` = peak - baseline (weights, arena and
  runtime buffers of this model, e.g. XNNPACK's packed weights). ``ru_maxrss_bytes`` is reported too, but Linux
  keeps ``ru_maxrss`` across ``execve``, so it can include the parent's pages at spawn time (a large parent makes
  it larger): compare models with ``peak_rss_bytes``.
- latency of ``runs`` invocations after ``warmup`` ones, on one random input of the model's dtype (integers over
  the dtype's range, floats in [-1, 1]), timed with ``perf_counter_ns``: min, median, p90, mean, std, max (ms).
- noise: ``p90_over_median`` and ``repeat_spread_pct``, the spread (max - min) of the medians of
  ``blocks`` consecutive blocks of runs, in % of the overall median: two runs of the benchmark agree within about
  that figure.

A ``.tflite`` model runs with ``ai_edge_litert`` (``num_threads``); a Keras model through a traced ``tf.function``
(TensorFlow intra-op threads). The in-process pieces (:class:`HostModel`, :func:`time_invocations`,
:func:`latency_stats`) let a benchmark interleave several models in one process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from segzoo.errors import ModelError, SegzooError
from segzoo.runners import KERAS_SUFFIXES, TFLITE_SUFFIXES, check_model_file

log = logging.getLogger(__name__)

TARGET = "host"
RESULT_MARKER = "SEGZOO_HOST_BENCHMARK "
DEFAULT_BLOCKS = 5


# ------------------------------------------------------------------------------------------------ inputs
def random_input(shape: list[int] | tuple[int, ...], dtype: Any, seed: int = 0) -> np.ndarray:
    """A random tensor: integers over the dtype's range, floats uniform in [-1, 1]."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    shape = tuple(max(1, int(d)) for d in shape)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, int(info.max) + 1, size=shape, dtype=dtype)
    return rng.uniform(-1.0, 1.0, size=shape).astype(dtype)


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


# ------------------------------------------------------------------------------------------------ models
class HostModel:
    """A loaded model with a fixed random input; :meth:`invoke` runs one inference."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        self.path = Path(path)
        check_model_file(self.path)
        self.threads = int(threads or os.cpu_count() or 1)
        try:
            if self.path.suffix.lower() in TFLITE_SUFFIXES:
                self._load_tflite()
            else:
                self._load_keras()
        except SegzooError:
            raise
        except Exception as exc:  # noqa: BLE001 - any loader failure names the file and the cause
            raise ModelError(f"{self.path}: cannot load model: {type(exc).__name__}: {exc}") from exc

    def _load_tflite(self) -> None:
        from segzoo.runtime.litert import open_interpreter

        interpreter, xnnpack = open_interpreter(self.path, self.threads)
        for i, detail in enumerate(interpreter.get_input_details()):
            interpreter.set_tensor(detail["index"], random_input(detail["shape"], detail["dtype"], seed=i))
        self._invoke = interpreter.invoke
        self.runtime = f"LiteRT {_version('ai-edge-litert')} (CPU{'' if xnnpack else ', reference kernels: XNNPACK refused the model'})"

    def _load_keras(self) -> None:
        import keras
        import tensorflow as tf

        from segzoo.models.registry import custom_objects

        model = keras.saving.load_model(str(self.path), compile=False, custom_objects=custom_objects())
        specs = [tf.TensorSpec([1, *t.shape[1:]], t.dtype) for t in model.inputs]
        inputs = [tf.constant(random_input(s.shape, s.dtype.as_numpy_dtype, seed=i)) for i, s in enumerate(specs)]
        forward = tf.function(lambda *x: model(list(x) if len(x) > 1 else x[0], training=False),
                              input_signature=specs)
        self._invoke = lambda: forward(*inputs)
        self.runtime = f"TensorFlow {tf.__version__} / Keras {keras.__version__} (tf.function, CPU)"

    def invoke(self) -> None:
        """One inference on the fixed input."""
        self._invoke()


def time_invocations(model: HostModel, runs: int, warmup: int = 0) -> list[float]:
    """Latency in ms of ``runs`` invocations after ``warmup`` untimed ones."""
    for _ in range(warmup):
        model.invoke()
    times = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        model.invoke()
        times.append((time.perf_counter_ns() - start) / 1e6)
    return times


def latency_stats(times_ms: list[float], blocks: int = DEFAULT_BLOCKS) -> dict:
    """min / median / p90 / mean / std / max (ms), ``p90_over_median``, block medians and ``repeat_spread_pct``."""
    if not times_ms:
        raise ValueError("no timings")
    values = np.asarray(times_ms, dtype=np.float64)
    median = float(np.median(values))
    blocks = max(1, min(blocks, len(values)))
    block_medians = [float(np.median(b)) for b in np.array_split(values, blocks)]
    return {
        "runs": len(values),
        "min_ms": float(values.min()),
        "median_ms": median,
        "p90_ms": float(np.percentile(values, 90)),
        "mean_ms": float(values.mean()),
        "std_ms": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        "max_ms": float(values.max()),
        "p90_over_median": float(np.percentile(values, 90)) / median if median > 0 else float("nan"),
        "block_medians_ms": block_medians,
        "repeat_spread_pct": 100 * (max(block_medians) - min(block_medians)) / median if median > 0 else 0.0,
    }


# ------------------------------------------------------------------------------------------------ memory
def _proc_status_bytes(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` in bytes, or None without /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def ru_maxrss_bytes() -> int:
    """``ru_maxrss`` of this process in bytes (KiB on Linux, bytes on macOS).

    Linux keeps it across ``execve``: in a child it can include the parent's pages inherited at spawn time.
    """
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def current_rss_bytes() -> int:
    """Resident memory of this process now (``VmRSS``; ``ru_maxrss`` without /proc)."""
    return _proc_status_bytes("VmRSS") or ru_maxrss_bytes()


def peak_rss_bytes() -> int:
    """Peak resident memory of this process image (``VmHWM``, reset by ``execve``; ``ru_maxrss`` without /proc)."""
    return _proc_status_bytes("VmHWM") or ru_maxrss_bytes()


def _import_runtime(path: Path) -> None:
    """Import the runtime before the baseline is read, so the baseline includes it."""
    if path.suffix.lower() in TFLITE_SUFFIXES:
        import ai_edge_litert.interpreter  # noqa: F401
    else:
        import keras  # noqa: F401
        import tensorflow  # noqa: F401


def _set_tf_threads(path: Path, threads: int) -> None:
    if path.suffix.lower() in KERAS_SUFFIXES:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)


def measure_in_process(path: str | Path, *, runs: int = 50, warmup: int = 5, threads: int | None = None,
                       blocks: int = DEFAULT_BLOCKS) -> dict:
    """The whole host measurement in this process (what the child of :func:`benchmark_host` runs)."""
    path = Path(path)
    check_model_file(path)
    threads = int(threads or os.cpu_count() or 1)
    _import_runtime(path)
    _set_tf_threads(path, threads)
    baseline = current_rss_bytes()
    load_start = time.perf_counter()
    model = HostModel(path, threads)
    load_seconds = time.perf_counter() - load_start
    stats = latency_stats(time_invocations(model, runs, warmup), blocks)
    peak = peak_rss_bytes()
    return {
        "target": TARGET,
        "model": str(path),
        "runtime": model.runtime,
        "device": host_description(),
        "threads": threads,
        "warmup": warmup,
        **stats,
        "load_seconds": load_seconds,
        "size_bytes": path.stat().st_size,
        "baseline_rss_bytes": baseline,
        "peak_rss_bytes": peak,
        "ru_maxrss_bytes": ru_maxrss_bytes(),
        "model_rss_bytes": max(0, peak - baseline),
    }


def host_description() -> str:
    """``machine, N CPUs, Python x.y`` of this host."""
    return f"host {platform.machine()} ({os.cpu_count()} CPUs, {platform.system()}, Python {platform.python_version()})"


# -------------------------------------------------------------------------------------------- child process
def _child_command(path: Path, runs: int, warmup: int, threads: int | None, blocks: int) -> list[str]:
    cmd = [sys.executable, "-m", "segzoo.benchmarking.host", str(path), "--runs", str(runs), "--warmup", str(warmup),
           "--blocks", str(blocks)]
    return cmd + (["--threads", str(threads)] if threads else [])


def _child_env() -> dict[str, str]:
    import segzoo

    env = dict(os.environ)
    src = str(Path(segzoo.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _parse_child(path: Path, proc: subprocess.CompletedProcess) -> dict:
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_MARKER)]
    result = json.loads(lines[-1][len(RESULT_MARKER):]) if lines else None
    if result is not None and "error" in result:
        raise ModelError(result["error"])
    if proc.returncode != 0 or result is None:
        tail = " | ".join(line.strip() for line in proc.stderr.strip().splitlines()[-3:]) or "no output"
        raise ModelError(f"{path}: host benchmark process failed (exit code {proc.returncode}): {tail}")
    return result


def benchmark_host(path: str | Path, *, runs: int = 50, warmup: int = 5, threads: int | None = None,
                   blocks: int = DEFAULT_BLOCKS, timeout_s: float = 1800.0) -> dict:
    """Latency statistics and peak memory of ``path`` measured in a fresh child process (module docstring).

    Keys: ``target``, ``model``, ``runtime``, ``device``, ``threads``, ``warmup``, ``runs``, ``min_ms``, ``median_ms``,
    ``p90_ms``, ``mean_ms``, ``std_ms``, ``max_ms``, ``p90_over_median``, ``block_medians_ms``,
    ``repeat_spread_pct``, ``load_seconds``, ``size_bytes``, ``baseline_rss_bytes``, ``peak_rss_bytes``,
    ``ru_maxrss_bytes``, ``model_rss_bytes``. ModelError (naming the file and the cause) when the model cannot be
    loaded or run.
    """
    path = Path(path)
    check_model_file(path)
    if runs < 1 or warmup < 0:
        raise ModelError(f"{path}: host benchmark needs runs >= 1 and warmup >= 0 (got {runs}, {warmup})")
    cmd = _child_command(path, runs, warmup, threads, blocks)
    log.debug("running %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=_child_env(), check=False)
    except subprocess.TimeoutExpired as exc:
        raise ModelError(f"{path}: host benchmark did not finish within {timeout_s:.0f} s") from exc
    result = _parse_child(path, proc)
    log.info("%s on the host: median %.2f ms (p90 %.2f, %d runs, %d threads), peak RSS %.1f MB (model %.1f MB)",
             path.name, result["median_ms"], result["p90_ms"], result["runs"], result["threads"],
             result["peak_rss_bytes"] / 1e6, result["model_rss_bytes"] / 1e6)
    return result


def main(argv: list[str] | None = None) -> int:
    """Child entry point: measure one model and print the result as one marked JSON line."""
    parser = argparse.ArgumentParser(description="segzoo host benchmark of one model (prints one JSON line)")
    parser.add_argument("model")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--blocks", type=int, default=DEFAULT_BLOCKS)
    args = parser.parse_args(argv)
    try:
        result = measure_in_process(args.model, runs=args.runs, warmup=args.warmup, threads=args.threads,
                                    blocks=args.blocks)
    except SegzooError as exc:
        _emit({"error": str(exc)})
        return exc.exit_code
    _emit(result)
    return 0


def _emit(payload: dict) -> None:
    """The child's only stdout output: one marked JSON line for the parent."""
    sys.stdout.write(RESULT_MARKER + json.dumps(payload) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
