"""segzoo board application: what its multi-network modes (``pose.py``, ``sam2_point.py``) share.

Shipped beside them and ``segment.py`` in their bundles, and loaded by path like ``segment.py`` (a bundle is
no package). Needs no TensorFlow and no segzoo: numpy and OpenCV.

- ``segment``: ``segment.py`` (manifest check, image reading, camera pipeline, runtime loaders, quantization).
- :class:`BoardNetwork`: one network with any number of inputs and outputs, run with X-LINUX-AI's ``stai_mpu``
  (an ``.nb`` NPU binary or a ``.tflite``), else a TFLite runtime with the VX delegate (NPU/GPU) when present,
  else on the CPU; float inputs in and float32 outputs out, in the order of the file's tensors.
- :func:`load_config`: the bundle's JSON configuration, checked for the keys a mode needs.
- :func:`start`: ``--verify`` and ``--benchmark`` (one JSON line per network), the same for every mode.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load_beside(file_name: str, module_name: str):
    """The module file ``file_name`` beside this one, loaded by path."""
    spec = importlib.util.spec_from_file_location(module_name, HERE / file_name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


segment = load_beside("segment.py", "segzoo_board_segment_common")
np = segment.np
AppError = segment.AppError


def load_config(path: Path, required: tuple, what: str = "configuration") -> dict:
    """The bundle's JSON ``what`` at ``path``; AppError naming the file when it is unreadable or lacks any of the
    ``required`` keys."""
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AppError(f"cannot read the {what} {path}: {exc}", segment.EXIT_MODEL) from exc
    missing = [k for k in required if k not in config]
    if missing:
        raise AppError(f"{path}: missing key(s) {', '.join(missing)}", segment.EXIT_MODEL)
    return config


class BoardNetwork:
    """One network of a bundle (see the module docstring). ``path`` is the ``.tflite``; ``nb``, when given, the
    NPU binary that ``stai_mpu`` runs instead; ``self.path`` is the file that runs (errors name it)."""

    def __init__(self, path: Path | None, nb: Path | None, runtime: str, threads: int) -> None:
        self.path = nb or path
        stai = segment._import_stai() if runtime in ("auto", "stai_mpu") else None
        if runtime == "stai_mpu" and stai is None:
            raise AppError("stai_mpu is not installed (X-LINUX-AI: x-linux-ai -i python3-stai-mpu)",
                           segment.EXIT_RUNTIME)
        try:
            if stai is not None:
                self._open_stai(stai)
            else:
                self._open_tflite(path, runtime, threads)
        except AppError:
            raise
        except Exception as exc:  # any loader failure: name the file and the cause
            raise AppError(f"cannot load model {self.path.name}: {type(exc).__name__}: {exc}",
                           segment.EXIT_MODEL) from exc

    def _open_stai(self, stai_network) -> None:
        self._net = stai_network(model_path=str(self.path), use_hw_acceleration=True)
        ins, outs = self._net.get_input_infos(), self._net.get_output_infos()
        self.input_shapes = [tuple(int(d) for d in i.get_shape()) for i in ins]
        self.input_types = [(np.dtype(i.get_dtype()), segment._stai_quantization(i)) for i in ins]
        self.output_shapes = [tuple(int(d) for d in o.get_shape()) for o in outs]
        self.output_quants = [segment._stai_quantization(o) for o in outs]
        self.runtime = "stai_mpu"
        self.delegate = "npu (NBG)" if self.path.suffix == ".nb" else "vx_delegate (stai_mpu)"
        self._mode = "stai"

    def _open_tflite(self, path: Path, runtime: str, threads: int) -> None:
        found = segment._import_tflite()
        if found is None:
            raise AppError("no inference runtime: install X-LINUX-AI's stai_mpu, or tflite_runtime, or ai-edge-litert",
                           segment.EXIT_RUNTIME)
        module, interpreter_cls, load_delegate = found
        delegate = segment.vx_delegate_path() if runtime != "cpu" else None
        delegates = []
        if delegate:
            try:
                delegates = [load_delegate(delegate)]
            except Exception as exc:  # a broken delegate falls back to the CPU, loudly
                print(f"warning: cannot load the VX delegate {delegate} ({exc}); running on the CPU", file=sys.stderr)
        kwargs = {"experimental_delegates": delegates} if delegates else {}
        self._interp = interpreter_cls(model_path=str(path), num_threads=threads, **kwargs)
        self._interp.allocate_tensors()
        self._ins, self._outs = self._interp.get_input_details(), self._interp.get_output_details()
        self.input_shapes = [tuple(int(d) for d in i["shape"]) for i in self._ins]
        self.input_types = [(np.dtype(i["dtype"]), segment._tflite_quantization(i)) for i in self._ins]
        self.output_shapes = [tuple(int(d) for d in o["shape"]) for o in self._outs]
        self.output_quants = [segment._tflite_quantization(o) for o in self._outs]
        self.runtime, self.delegate = module, f"vx_delegate ({os.path.basename(delegate)})" if delegates else "cpu"
        self._mode = "tflite"

    def forward(self, inputs: list, outputs: list | None = None) -> list:
        """One inference: float inputs in the order of the input tensors -> float32 outputs at the indices
        ``outputs`` (all of them by default), dequantized where the file quantizes them."""
        wanted = list(range(len(self.output_shapes))) if outputs is None else list(outputs)
        tensors = [segment.quantize(np.asarray(x, np.float32), *self.input_types[i]) for i, x in enumerate(inputs)]
        if self._mode == "stai":
            for i, tensor in enumerate(tensors):
                self._net.set_input(i, tensor)
            self._net.run()
            raw = [np.asarray(self._net.get_output(index=i)) for i in wanted]
        else:
            for detail, tensor in zip(self._ins, tensors):
                self._interp.set_tensor(detail["index"], tensor)
            self._interp.invoke()
            raw = [self._interp.get_tensor(self._outs[i]["index"]) for i in wanted]
        return [segment.dequantize(v, self.output_quants[i]) if self.output_quants[i] is not None
                else v.astype(np.float32, copy=False) for i, v in zip(wanted, raw)]


def start(args, bundle_dir: Path, open_app, networks_of, benchmark) -> tuple:
    """The start every mode shares: ``(exit code, None)`` for ``--verify`` (the bundle against its manifest) and
    ``--benchmark`` (``benchmark(network, runs, warmup)`` of each network of the opened app, one JSON line each);
    else ``(None, open_app(args))`` once the packages are checked."""
    if args.verify:
        return segment.verify_command(bundle_dir), None
    segment._require_packages()
    app = open_app(args)
    if args.benchmark is not None:
        for network in networks_of(app):
            print(json.dumps(benchmark(network, args.benchmark, args.warmup)), flush=True)
        return segment.EXIT_OK, None
    return None, app
