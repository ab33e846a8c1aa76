#!/usr/bin/env python3
"""segzoo board application: semantic segmentation of images, a video or a camera on an STM32MP2 board.

Shipped in a segzoo deployment bundle next to the model, ``labels.txt``, ``preprocessing.json`` and
``manifest.json``. Needs no TensorFlow and no segzoo: numpy, OpenCV (python3-opencv) and, if present, Pillow.
The model runs with X-LINUX-AI's ``stai_mpu`` when it is installed (the ``.nb`` NPU binary when the bundle has
one), otherwise with a TFLite runtime (``tflite_runtime`` or ``ai_edge_litert``) and the VX delegate
(``/usr/lib/libvx_delegate.so*``, NPU/GPU) when present, otherwise on the CPU. It runs on a PC the same way.

    python3 segment.py --verify                              # check every file against manifest.json
    python3 segment.py --input a.jpg photos/ --output out/   # <stem>_mask.png (class indices) + <stem>_overlay.png
    python3 segment.py --camera /dev/video0 --show           # GStreamer v4l2src pipeline, live overlay
    python3 segment.py --benchmark 50                        # one JSON line: min/median/p90 ms, runtime, delegate

Exit codes: 0 ok, 1 verification failed, 2 bad arguments, 3 missing runtime or Python package,
4 model cannot be loaded or does not match the bundle, 5 unreadable input or camera.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import sys
import time
from pathlib import Path

try:
    import numpy as np
except ImportError:  # only --verify works without numpy
    np = None
try:
    import cv2
except ImportError:
    cv2 = None
try:
    from PIL import Image
except ImportError:
    Image = None

HERE = Path(__file__).resolve().parent
MANIFEST = "manifest.json"
PREPROCESSING = "preprocessing.json"
LABELS = "labels.txt"
VX_DELEGATE_GLOB = "/usr/lib/libvx_delegate.so*"
VOID = 255
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
RUNTIMES = ("auto", "stai_mpu", "tflite", "cpu")

EXIT_OK, EXIT_VERIFY, EXIT_USAGE, EXIT_RUNTIME, EXIT_MODEL, EXIT_INPUT = 0, 1, 2, 3, 4, 5


class AppError(Exception):
    """An error the user can act on, with the process exit code to use."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------------------------------- manifest

def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_manifest(bundle_dir: Path) -> list[str]:
    """Problems found checking every file listed in manifest.json (size and sha256); empty when all is well."""
    bundle_dir = Path(bundle_dir)
    try:
        manifest = json.loads((bundle_dir / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [f"{MANIFEST} is missing: the bundle is incomplete"]
    except (OSError, ValueError) as exc:
        return [f"{MANIFEST} cannot be read: {exc}"]
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not files:
        return [f"{MANIFEST} lists no files"]
    problems = []
    for name, entry in sorted(files.items()):
        problem = _check_entry(bundle_dir, name, entry)
        if problem:
            problems.append(f"{name}: {problem}")
    return problems


def _check_entry(bundle_dir: Path, name: str, entry: object) -> str | None:
    if Path(name).is_absolute() or ".." in Path(name).parts or name == MANIFEST:
        return "not a file name a manifest may list"
    if not isinstance(entry, dict) or "sha256" not in entry or "size" not in entry:
        return "manifest entry has no sha256 and size"
    path = bundle_dir / name
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size != entry["size"]:
        return f"size is {size} bytes, manifest says {entry['size']}"
    if sha256_file(path) != entry["sha256"]:
        return "sha256 differs from the manifest (file changed or corrupted)"
    return None


def read_manifest(bundle_dir: Path) -> dict:
    """manifest.json as a dict (empty when absent, e.g. a bare model given with --model)."""
    path = bundle_dir / MANIFEST
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


# ----------------------------------------------------------------------------------------------- preprocessing
# The same arithmetic as segzoo.preprocess, without segzoo: test_deployment checks both give identical tensors.

def interpolation_flag(name: str) -> int:
    """OpenCV flag for an interpolation name of preprocessing.json."""
    flags = {"nearest": getattr(cv2, "INTER_NEAREST_EXACT", cv2.INTER_NEAREST), "bilinear": cv2.INTER_LINEAR,
             "bicubic": cv2.INTER_CUBIC, "area": cv2.INTER_AREA}
    if name not in flags:
        raise AppError(f"{PREPROCESSING}: unknown interpolation {name!r}", EXIT_MODEL)
    return flags[name]


def compute_placement(original_hw: tuple, input_hw: tuple, aspect_ratio: str) -> dict:
    """Crop window of the original image and content window of the model input for a resize policy."""
    oh, ow = original_hw
    ih, iw = input_hw
    crop, content = (0, 0, oh, ow), (0, 0, ih, iw)
    if aspect_ratio == "crop":
        scale = max(ih / oh, iw / ow)
        ch, cw = min(oh, round(ih / scale)), min(ow, round(iw / scale))
        crop = ((oh - ch) // 2, (ow - cw) // 2, ch, cw)
    elif aspect_ratio == "padding":
        scale = min(ih / oh, iw / ow)
        nh, nw = max(1, min(ih, round(oh * scale))), max(1, min(iw, round(ow * scale)))
        content = ((ih - nh) // 2, (iw - nw) // 2, nh, nw)
    elif aspect_ratio != "fit":
        raise AppError(f"{PREPROCESSING}: unknown aspect_ratio {aspect_ratio!r}", EXIT_MODEL)
    return {"input_hw": (ih, iw), "crop": crop, "content": content}


def _window(array, box: tuple):
    y, x, h, w = box
    return array[y : y + h, x : x + w]


CV_MAX_CHANNELS = 128  # most channels one cv2.resize call takes (OpenCV 5); ADE20K models have 150 classes


def _resize(array, hw: tuple, flag: int):
    if array.shape[:2] == tuple(hw):
        return array
    if array.ndim == 3 and array.shape[2] > CV_MAX_CHANNELS:
        chunks = [_resize(np.ascontiguousarray(array[..., i : i + CV_MAX_CHANNELS]), hw, flag)
                  for i in range(0, array.shape[2], CV_MAX_CHANNELS)]
        return np.concatenate(chunks, axis=-1)
    out = cv2.resize(array, (hw[1], hw[0]), interpolation=flag)
    if array.ndim == 3 and out.ndim == 2:
        out = out[..., None]
    return out


def convert_color(image, color_mode: str):
    """RGB uint8 to the model's colour mode."""
    if color_mode == "bgr":
        return np.ascontiguousarray(image[..., ::-1])
    if color_mode == "grayscale":
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None]
    if color_mode != "rgb":
        raise AppError(f"{PREPROCESSING}: unknown color_mode {color_mode!r}", EXIT_MODEL)
    return image


def to_model_input(image, input_hw: tuple, pp: dict) -> tuple:
    """RGB uint8 image to float32 HxWxC model values (``pixel * scale + offset``) and its placement."""
    placement = compute_placement(image.shape[:2], input_hw, pp["aspect_ratio"])
    y, x, h, w = placement["content"]
    resized = _resize(_window(image, placement["crop"]), (h, w), interpolation_flag(pp["interpolation"]))
    if (h, w) != tuple(input_hw):
        canvas = np.zeros(tuple(input_hw) + resized.shape[2:], dtype=resized.dtype)
        canvas[y : y + h, x : x + w] = resized
        resized = canvas
    values = convert_color(resized, pp["color_mode"]).astype(np.float32)
    return values * np.float32(pp["scale"]) + np.float32(pp["offset"]), placement


def quantize(x, dtype, quant: tuple | None):
    """Float values to an integer input tensor: ``clip(rint(x / scale + zero_point))``."""
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.integer):
        return x.astype(dtype, copy=False)
    scale, zero_point = quant if quant and quant[0] > 0 else (1.0, 0)
    info = np.iinfo(dtype)
    values = np.rint(x / np.float32(scale) + np.float32(zero_point))
    return np.clip(values, info.min, info.max).astype(dtype)


# ---------------------------------------------------------------------------------------------- postprocessing

def output_kind(shape: tuple, dtype, quantized: bool) -> str:
    """labels ([h,w] or integer [h,w,1]), sigmoid (float [h,w,1]) or logits ([h,w,K]) for a batch-less output."""
    if len(shape) == 2:
        return "labels"
    if len(shape) != 3:
        raise AppError(f"model output shape {list(shape)} is not a segmentation output", EXIT_MODEL)
    if shape[-1] == 1:
        return "labels" if np.issubdtype(np.dtype(dtype), np.integer) and not quantized else "sigmoid"
    return "logits"


def dequantize(values, quant: tuple):
    """Integer tensor to float32: ``(q - zero_point) * scale``."""
    out = values.astype(np.float32)
    out -= np.float32(quant[1])
    out *= np.float32(quant[0])
    return out


def to_labels(output, kind: str, placement: dict):
    """Model output to an int32 label map over the used window of the original image."""
    _, _, ch, cw = placement["crop"]
    if kind == "labels":
        labels = output[..., 0] if output.ndim == 3 else output
        full = _resize(labels.astype(np.int32, copy=False), placement["input_hw"], interpolation_flag("nearest"))
        return _resize(_window(full, placement["content"]), (ch, cw), interpolation_flag("nearest"))
    full = _resize(output.astype(np.float32, copy=False), placement["input_hw"], cv2.INTER_LINEAR)
    scores = _resize(_window(full, placement["content"]), (ch, cw), cv2.INTER_LINEAR)
    if kind == "sigmoid":
        return (scores[..., 0] > 0.5).astype(np.int32)
    return np.argmax(scores, axis=-1).astype(np.int32)


def voc_palette(n: int = 256):
    """The PASCAL VOC colour map, ``n`` x 3 uint8."""
    palette = np.zeros((n, 3), dtype=np.uint8)
    for index in range(n):
        c, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette[index] = (r, g, b)
    return palette


def render_overlay(image, labels, class_names: list, alpha: float):
    """RGB image blended with the class colours (void untouched) and a legend of the classes present."""
    palette = voc_palette()
    blended = image.astype(np.float32) * (1.0 - alpha) + palette[labels].astype(np.float32) * alpha
    overlay = np.where((labels != VOID)[..., None], np.rint(blended), image).astype(np.uint8)
    present = [int(c) for c in np.unique(labels) if c != VOID]
    row, pad = 22, 8
    names = [f"{c} {class_names[c]}" for c in present]
    width = pad * 3 + 14 + max((cv2.getTextSize(n, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)[0][0] for n in names), default=0)
    panel = np.full((max(overlay.shape[0], pad * 2 + row * len(names)), width, 3), 255, dtype=np.uint8)
    for k, (class_id, name) in enumerate(zip(present, names)):
        top = pad + k * row
        cv2.rectangle(panel, (pad, top + 2), (pad + 14, top + 16), tuple(int(v) for v in palette[class_id]), -1)
        cv2.rectangle(panel, (pad, top + 2), (pad + 14, top + 16), (0, 0, 0), 1)
        cv2.putText(panel, name, (2 * pad + 14, top + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    if panel.shape[0] > overlay.shape[0]:
        overlay = np.concatenate([overlay, np.full((panel.shape[0] - overlay.shape[0],) + overlay.shape[1:], 255,
                                                   dtype=np.uint8)])
    return np.concatenate([overlay, panel], axis=1)


# ------------------------------------------------------------------------------------------------------ models

def _stai_quantization(info) -> tuple | None:
    """(scale, zero_point) of a stai_mpu tensor, or None when it is not quantized."""
    qtype = str(info.get_qtype()) if hasattr(info, "get_qtype") else ""
    if "staticAffine" in qtype:
        return float(info.get_scale()), int(info.get_zero_point())
    if "dynamicFixedPoint" in qtype:
        return 2.0 ** -int(info.get_fixed_point_pos()), 0
    return None


class StaiModel:
    """A .nb (NPU) or .tflite model run with X-LINUX-AI's stai_mpu."""

    def __init__(self, path: Path, stai_mpu_network) -> None:
        self.path = path
        self._net = stai_mpu_network(model_path=str(path), use_hw_acceleration=True)
        inputs, outputs = self._net.get_input_infos(), self._net.get_output_infos()
        if len(inputs) != 1 or len(outputs) != 1:
            raise AppError(f"{path.name}: expected 1 input and 1 output, found {len(inputs)} and {len(outputs)}",
                           EXIT_MODEL)
        self.input_shape = tuple(int(d) for d in inputs[0].get_shape())
        self.input_dtype = np.dtype(inputs[0].get_dtype())
        self.input_quant = _stai_quantization(inputs[0])
        self.output_shape = tuple(int(d) for d in outputs[0].get_shape())[1:]
        self.output_dtype = np.dtype(outputs[0].get_dtype())
        self.output_quant = _stai_quantization(outputs[0])
        backend = self._net.get_backend_engine() if hasattr(self._net, "get_backend_engine") else None
        self.runtime = f"stai_mpu ({getattr(backend, 'name', backend)})" if backend is not None else "stai_mpu"
        self.delegate = "npu (NBG)" if path.suffix == ".nb" else "vx_delegate (stai_mpu)"

    def run(self, tensor):
        """One inference; returns the batch-less raw output."""
        self._net.set_input(0, tensor[None])
        self._net.run()
        return np.asarray(self._net.get_output(index=0))[0]


class TFLiteModel:
    """A .tflite model run with tflite_runtime or ai_edge_litert, with the VX delegate when asked and present."""

    def __init__(self, path: Path, module: str, interpreter_cls, load_delegate, delegate_path: str | None,
                 threads: int) -> None:
        self.path = path
        self.runtime = module
        delegates = []
        if delegate_path:
            try:
                delegates = [load_delegate(delegate_path)]
            except Exception as exc:  # a broken delegate falls back to the CPU, loudly
                print(f"warning: cannot load the VX delegate {delegate_path} ({exc}); running on the CPU",
                      file=sys.stderr)
        self.delegate = f"vx_delegate ({os.path.basename(delegate_path)})" if delegates else "cpu"
        kwargs = {"experimental_delegates": delegates} if delegates else {}
        self._interpreter = interpreter_cls(model_path=str(path), num_threads=threads, **kwargs)
        self._interpreter.allocate_tensors()
        inputs, outputs = self._interpreter.get_input_details(), self._interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise AppError(f"{path.name}: expected 1 input and 1 output, found {len(inputs)} and {len(outputs)}",
                           EXIT_MODEL)
        self._input, self._output = inputs[0], outputs[0]
        self.input_shape = tuple(int(d) for d in self._input["shape"])
        self.input_dtype = np.dtype(self._input["dtype"])
        self.input_quant = _tflite_quantization(self._input)
        self.output_shape = tuple(int(d) for d in self._output["shape"])[1:]
        self.output_dtype = np.dtype(self._output["dtype"])
        self.output_quant = _tflite_quantization(self._output)

    def run(self, tensor):
        """One inference; returns the batch-less raw output (a copy)."""
        self._interpreter.set_tensor(self._input["index"], tensor[None])
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output["index"])[0]


def _tflite_quantization(detail: dict) -> tuple | None:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return (float(scale), int(zero_point)) if scale else None


def _import_stai():
    try:
        from stai_mpu import stai_mpu_network
    except ImportError:
        return None
    return stai_mpu_network


def _import_tflite() -> tuple | None:
    """(module name, Interpreter, load_delegate) of the first TFLite runtime found."""
    try:
        from tflite_runtime.interpreter import Interpreter, load_delegate
        return "tflite_runtime", Interpreter, load_delegate
    except ImportError:
        pass
    try:
        from ai_edge_litert.interpreter import Interpreter, load_delegate
        return "ai_edge_litert", Interpreter, load_delegate
    except ImportError:
        return None


def vx_delegate_path() -> str | None:
    """The VX (NPU/GPU) TFLite delegate of X-LINUX-AI, if installed."""
    found = sorted(glob.glob(VX_DELEGATE_GLOB))
    return found[0] if found else None


def model_files(bundle_dir: Path, explicit: str | None) -> tuple[Path | None, Path | None]:
    """(tflite, nb) model paths: the one given with --model, else those the manifest names."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise AppError(f"model file {path} not found", EXIT_MODEL)
        return (None, path) if path.suffix == ".nb" else (path, None)
    manifest = read_manifest(bundle_dir)
    tflite = bundle_dir / manifest["model"] if manifest.get("model") else None
    nb = bundle_dir / manifest["nb_model"] if manifest.get("nb_model") else None
    if tflite is None and nb is None:
        raise AppError(f"no model: {MANIFEST} names none and --model was not given", EXIT_MODEL)
    return tflite, nb


def open_model(tflite: Path | None, nb: Path | None, runtime: str, threads: int):
    """Load the model with the best runtime available (or the one asked for)."""
    stai = _import_stai() if runtime in ("auto", "stai_mpu") else None
    if runtime == "stai_mpu" and stai is None:
        raise AppError("stai_mpu is not installed (X-LINUX-AI: x-linux-ai -i python3-stai-mpu)", EXIT_RUNTIME)
    try:
        if stai is not None:
            return StaiModel(nb or tflite, stai)
        if tflite is None:
            raise AppError(f"{nb.name} is an NPU binary: it needs X-LINUX-AI's stai_mpu", EXIT_RUNTIME)
        found = _import_tflite()
        if found is None:
            raise AppError("no inference runtime: install X-LINUX-AI's stai_mpu, or tflite_runtime, or ai-edge-litert",
                           EXIT_RUNTIME)
        delegate = vx_delegate_path() if runtime != "cpu" else None
        return TFLiteModel(tflite, *found, delegate, threads)
    except AppError:
        raise
    except Exception as exc:  # any loader failure: name the file and the cause
        raise AppError(f"cannot load model {(nb or tflite).name}: {type(exc).__name__}: {exc}", EXIT_MODEL) from exc


# ------------------------------------------------------------------------------------------------ segmentation

class Segmenter:
    """Preprocess, infer, postprocess; the bundle's settings checked against the model's own tensors."""

    def __init__(self, model, config: dict, class_names: list) -> None:
        self.model = model
        self.pp = config["preprocessing"]
        self.class_names = class_names
        shape = model.input_shape
        if len(shape) != 4:
            raise AppError(f"model input shape {list(shape)} is not [1,H,W,C]", EXIT_MODEL)
        self.input_hw = (shape[1], shape[2])
        expected = config.get("input", {})
        if expected and [expected["height"], expected["width"], expected["channels"]] != list(shape[1:]):
            raise AppError(f"model input {list(shape[1:])} differs from {PREPROCESSING} "
                           f"({expected['height']}x{expected['width']}x{expected['channels']})", EXIT_MODEL)
        self.kind = output_kind(model.output_shape, model.output_dtype, model.output_quant is not None)
        classes = 2 if self.kind == "sigmoid" else model.output_shape[-1]
        if self.kind != "labels" and classes != len(class_names):
            raise AppError(f"the model outputs {classes} classes but {LABELS} has {len(class_names)}", EXIT_MODEL)

    def tensor(self, image) -> tuple:
        """Model input tensor (quantized from the model's own parameters) and placement of an RGB image."""
        x, placement = to_model_input(image, self.input_hw, self.pp)
        return quantize(x, self.model.input_dtype, self.model.input_quant), placement

    def labels(self, raw, placement: dict, shape_hw: tuple):
        """uint8 label map at the original image size; 255 outside an aspect-ratio crop."""
        if self.model.output_quant is not None and self.kind != "labels":
            raw = dequantize(raw, self.model.output_quant)
        labels = to_labels(raw, self.kind, placement)
        if labels.size and (labels.min() < 0 or labels.max() >= len(self.class_names)):
            raise AppError(f"the model predicts class {int(labels.max())} but {LABELS} has "
                           f"{len(self.class_names)} names", EXIT_MODEL)
        full = np.full(shape_hw, VOID, dtype=np.uint8)
        y, x, h, w = placement["crop"]
        full[y : y + h, x : x + w] = labels
        return full

    def segment(self, image) -> tuple:
        """(labels, timings in ms) for one RGB uint8 image."""
        start = time.perf_counter()
        tensor, placement = self.tensor(image)
        begin = time.perf_counter()
        raw = self.model.run(tensor)
        end = time.perf_counter()
        labels = self.labels(raw, placement, image.shape[:2])
        done = time.perf_counter()
        return labels, {"pre_ms": (begin - start) * 1e3, "inference_ms": (end - begin) * 1e3,
                        "post_ms": (done - end) * 1e3, "total_ms": (done - start) * 1e3}


def read_image(path: Path):
    """RGB uint8 image (Pillow when present, as segzoo reads images; else OpenCV).

    As in segzoo, EXIF orientation is not applied (the stored pixel grid is segmented), and 16-bit gray pixels
    keep their high byte.
    """
    try:
        if Image is not None:
            with Image.open(path) as im:
                im.load()
                if im.mode.startswith(("I", "F")):
                    values = np.array(im)
                    gray = (np.clip(np.round(values * 255.0), 0, 255) if values.dtype.kind == "f"
                            else np.clip(values.astype(np.int64) >> 8, 0, 255)).astype(np.uint8)
                    return np.repeat(gray[..., None], 3, axis=2)
                return np.array(im.convert("RGB"))
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if bgr is None:
            raise OSError("not an image OpenCV can read")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    except (OSError, ValueError, SyntaxError) as exc:
        raise AppError(f"{path}: cannot read image ({exc})", EXIT_INPUT) from exc


def _save(path: Path, writer) -> None:
    """Write through a temporary file renamed onto ``path``: an output appears whole or not at all."""
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        writer(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_outputs(out_dir: Path, stem: str, image, labels, class_names: list, alpha: float) -> None:
    """``<stem>_mask.png`` (palette PNG of class indices) and ``<stem>_overlay.png``."""
    overlay = render_overlay(image, labels, class_names, alpha)
    if Image is not None:
        mask = Image.fromarray(labels)
        mask.putpalette(voc_palette().reshape(-1).tolist())
        _save(out_dir / f"{stem}_mask.png", lambda p: mask.save(p, format="PNG"))
        _save(out_dir / f"{stem}_overlay.png", lambda p: Image.fromarray(overlay).save(p, format="PNG"))
        return
    _save(out_dir / f"{stem}_mask.png", lambda p: cv2.imwrite(str(p), labels))
    _save(out_dir / f"{stem}_overlay.png", lambda p: cv2.imwrite(str(p), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR)))


def collect_images(inputs: list) -> list[Path]:
    """Image files from paths to files or folders (folders: their images, sorted)."""
    images = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            images.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()))
        elif path.is_file():
            images.append(path)
        else:
            raise AppError(f"{path}: no such file or folder", EXIT_INPUT)
    if not images:
        raise AppError("no images found in " + ", ".join(map(str, inputs)), EXIT_INPUT)
    stems = [p.stem for p in images]
    repeated = sorted({s for s in stems if stems.count(s) > 1})
    if repeated:
        raise AppError(f"several inputs share the name {repeated[0]!r}: their outputs would overwrite each other",
                       EXIT_INPUT)
    return images


def _report(name: str, times: dict, model, labels, class_names: list) -> None:
    present = ", ".join(class_names[c] for c in np.unique(labels) if c != VOID) or "-"
    print(f"{name}: inference {times['inference_ms']:.1f} ms, total {times['total_ms']:.1f} ms "
          f"[{model.runtime} / {model.delegate}] classes: {present}", flush=True)


def segment_files(segmenter: Segmenter, images: list, out_dir: Path | None, show: bool, alpha: float) -> None:
    """Segment image files, printing one timing line per image."""
    for path in images:
        image = read_image(path)
        labels, times = segmenter.segment(image)
        _report(path.name, times, segmenter.model, labels, segmenter.class_names)
        if out_dir is not None:
            save_outputs(out_dir, path.stem, image, labels, segmenter.class_names, alpha)
        if show:
            _show(render_overlay(image, labels, segmenter.class_names, alpha), wait=True)


def camera_pipeline(device: str, width: int, height: int, framerate: int) -> str:
    """GStreamer pipeline for OpenCV: a V4L2 camera as on X-LINUX-AI, converted to BGR, latest frame only."""
    return (f"v4l2src device={device} ! video/x-raw,width={width},height={height},framerate={framerate}/1 ! "
            "videoconvert ! video/x-raw,format=BGR ! appsink drop=true max-buffers=1 sync=false")


def open_stream(args: argparse.Namespace):
    """cv2.VideoCapture of a camera (GStreamer), a custom pipeline or a video file."""
    if args.video:
        capture, what = cv2.VideoCapture(args.video), f"video {args.video}"
    else:
        pipeline = args.pipeline or camera_pipeline(args.camera, args.frame_width, args.frame_height, args.framerate)
        capture, what = cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER), f"GStreamer pipeline '{pipeline}'"
    if not capture.isOpened():
        hint = "" if args.video else (" (is the camera on that /dev/video node, and is OpenCV built with "
                                      "GStreamer? python3 -c 'import cv2; print(cv2.getBuildInformation())')")
        raise AppError(f"cannot open the {what}{hint}", EXIT_INPUT)
    return capture


def for_each_frame(args: argparse.Namespace, handle) -> None:
    """``handle(count, rgb_frame)`` for each frame of the stream until it ends, --max-frames, Ctrl-C or
    ``handle`` returns True (e.g. 'q' in the window); AppError when no frame came."""
    capture = open_stream(args)
    count = 0
    try:
        while args.max_frames is None or count < args.max_frames:
            ok, frame = capture.read()
            if not ok:
                break
            count += 1
            if handle(count, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)):
                break
    except KeyboardInterrupt:
        pass
    finally:
        capture.release()
    if count == 0:
        raise AppError("the stream delivered no frame", EXIT_INPUT)


def segment_stream(segmenter: Segmenter, args: argparse.Namespace, out_dir: Path | None) -> None:
    """Segment frames until the stream ends, --max-frames, 'q' in the window or Ctrl-C."""

    def handle(count: int, image) -> bool:
        labels, times = segmenter.segment(image)
        _report(f"frame {count}", times, segmenter.model, labels, segmenter.class_names)
        if out_dir is not None:
            save_outputs(out_dir, f"frame_{count:06d}", image, labels, segmenter.class_names, args.alpha)
        return args.show and _show(render_overlay(image, labels, segmenter.class_names, args.alpha), wait=False)

    for_each_frame(args, handle)


def _show(overlay, wait: bool) -> bool:
    """Display an RGB image; True when the user pressed q."""
    try:
        cv2.imshow("segzoo", cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
        return (cv2.waitKey(0 if wait else 1) & 0xFF) == ord("q")
    except cv2.error as exc:
        raise AppError(f"cannot open a window ({exc}); use --output to write the overlays instead", EXIT_INPUT) from exc


def benchmark(model, runs: int, warmup: int) -> dict:
    """Time ``runs`` inferences (after ``warmup``) on a fixed random input of the model's own type."""
    rng = np.random.default_rng(0)
    shape = model.input_shape[1:]
    if np.issubdtype(model.input_dtype, np.integer):
        info = np.iinfo(model.input_dtype)
        tensor = rng.integers(info.min, info.max + 1, size=shape).astype(model.input_dtype)
    else:
        tensor = rng.uniform(-1.0, 1.0, size=shape).astype(model.input_dtype)
    return {"tool": "segment.py", **time_model(model, tensor, runs, warmup)}


def time_model(model, tensor, runs: int, warmup: int) -> dict:
    """min/median/p90/mean ms of ``runs`` calls of ``model.run(tensor)`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        model.run(tensor)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        model.run(tensor)
        times.append((time.perf_counter() - start) * 1e3)
    values = np.asarray(times)
    return {"model": model.path.name, "runtime": model.runtime, "delegate": model.delegate, "runs": runs,
            "warmup": warmup, "min_ms": round(float(values.min()), 3), "median_ms": round(float(np.median(values)), 3),
            "p90_ms": round(float(np.percentile(values, 90)), 3), "mean_ms": round(float(values.mean()), 3)}


# ------------------------------------------------------------------------------------------------------- main

def app_parser(description: str, outputs: str) -> argparse.ArgumentParser:
    """The arguments every board application takes: a mode (verify, benchmark, images, camera, GStreamer
    pipeline, video), --output, --show, the runtime and the stream settings."""
    parser = argparse.ArgumentParser(description=description)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--verify", action="store_true", help="check the bundle's files against manifest.json")
    mode.add_argument("--benchmark", type=int, metavar="N", help="time N inferences, print JSON lines")
    mode.add_argument("--input", nargs="+", metavar="PATH", help="image files or folders")
    mode.add_argument("--camera", metavar="DEVICE", help="V4L2 camera device, e.g. /dev/video0")
    mode.add_argument("--pipeline", metavar="GST", help="a GStreamer pipeline ending in appsink (BGR frames)")
    mode.add_argument("--video", metavar="FILE", help="a video file")
    parser.add_argument("--output", metavar="DIR", help=f"write {outputs} here")
    parser.add_argument("--show", action="store_true", help="display the overlays (needs a display)")
    parser.add_argument("--runtime", choices=RUNTIMES, default="auto",
                        help="auto: stai_mpu, else TFLite with the VX delegate if present, else CPU")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads for TFLite")
    parser.add_argument("--max-frames", type=int, help="stop a camera or video after this many frames")
    parser.add_argument("--warmup", type=int, default=3, help="untimed inferences before --benchmark")
    parser.add_argument("--frame-width", type=int, default=640)
    parser.add_argument("--frame-height", type=int, default=480)
    parser.add_argument("--framerate", type=int, default=30)
    return parser


def parse_args(argv: list | None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = app_parser("Semantic segmentation with a segzoo bundle (X-LINUX-AI or PC).",
                        "<name>_mask.png and <name>_overlay.png")
    parser.add_argument("--model", help="model file to use instead of the bundle's (.tflite or .nb)")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the class colours")
    args = parser.parse_args(argv)
    if args.benchmark is not None and args.benchmark < 1:
        parser.error("--benchmark needs at least 1 run")
    if not 0.0 <= args.alpha <= 1.0:
        parser.error("--alpha must be between 0 and 1")
    return args


def _require_packages() -> None:
    missing = [name for name, module in (("numpy", np), ("OpenCV (python3-opencv)", cv2)) if module is None]
    if missing:
        raise AppError(f"missing Python package(s) on this machine: {', '.join(missing)}", EXIT_RUNTIME)


def load_bundle_config(bundle_dir: Path) -> tuple[dict, list]:
    """preprocessing.json and the class names of labels.txt."""
    try:
        config = json.loads((bundle_dir / PREPROCESSING).read_text(encoding="utf-8"))
        names = [line.strip() for line in (bundle_dir / LABELS).read_text(encoding="utf-8").splitlines()]
    except (OSError, ValueError) as exc:
        raise AppError(f"cannot read the bundle's {PREPROCESSING} / {LABELS}: {exc}", EXIT_MODEL) from exc
    return config, [name for name in names if name]


def run(args: argparse.Namespace) -> int:
    """Do what the arguments ask; AppError for anything the user can fix."""
    if args.verify:
        return verify_command(HERE)
    _require_packages()
    model = open_model(*model_files(HERE, args.model), args.runtime, args.threads)
    if args.benchmark is not None:
        print(json.dumps(benchmark(model, args.benchmark, args.warmup)), flush=True)
        return EXIT_OK
    config, class_names = load_bundle_config(HERE)
    segmenter = Segmenter(model, config, class_names)
    print(f"model {model.path.name}: input {'x'.join(map(str, model.input_shape[1:]))} {model.input_dtype}, "
          f"runtime {model.runtime}, delegate {model.delegate}", flush=True)
    out_dir = output_dir(args)
    if args.input:
        segment_files(segmenter, collect_images(args.input), out_dir, args.show, args.alpha)
    else:
        segment_stream(segmenter, args, out_dir)
    return EXIT_OK


def verify_command(bundle_dir: Path) -> int:
    """--verify: print every problem of the bundle (or OK) and return the exit code."""
    problems = verify_manifest(bundle_dir)
    for problem in problems:
        print(f"verify: {problem}", file=sys.stderr)
    if problems:
        print(f"verify: FAILED, {len(problems)} problem(s) in {bundle_dir}", file=sys.stderr)
        return EXIT_VERIFY
    print(f"verify: OK, {len(read_manifest(bundle_dir)['files'])} files match {MANIFEST}")
    return EXIT_OK


def output_dir(args: argparse.Namespace) -> Path | None:
    """The --output folder, created, or None."""
    out_dir = Path(args.output) if args.output else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def run_guarded(run_args, args: argparse.Namespace) -> int:
    """``run_args(args)``, an AppError printed as ``error: ...`` and turned into its exit code."""
    try:
        return run_args(args)
    except AppError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code


def main(argv: list | None = None) -> int:
    """Entry point: exit code as documented at the top of this file."""
    return run_guarded(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
