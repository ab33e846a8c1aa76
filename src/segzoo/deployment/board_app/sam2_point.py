#!/usr/bin/env python3
"""segzoo board application, point mode: SAM2 segments the object under point prompts on an STM32MP2 board.

Shipped in a segzoo SAM2 bundle with ``common.py`` (the networks' runtimes, the --verify and --benchmark modes) and
``segment.py`` (manifest check, image reading, camera pipeline, runtime loaders), the encoder and decoder
``.tflite`` files, ``sam2_config.json`` (input size, number of point inputs, normalization, mask threshold, and the
order of each network's input and output tensors) and ``manifest.json`` (``"models": {"encoder": ...,
"decoder": ...}``). Needs no TensorFlow and no segzoo: numpy and
OpenCV. Each network runs with X-LINUX-AI's ``stai_mpu``, else a TFLite runtime with the VX delegate (NPU/GPU)
when present, else on the CPU. The arithmetic repeats segzoo's ``tasks/promptable_segmentation.preprocess``
(tests check both give the same mask): the longest image side resized to the model size and zero-padded at the
bottom and right, SAM2's ImageNet normalization, clicks scaled like the image, mask logits upsampled, cropped
and resized back onto the image.

    python3 sam2_point.py --verify
    python3 sam2_point.py --input a.jpg --point 320,240 --point 100,50,0 --output out/   # <stem>_mask.png + overlay
    python3 sam2_point.py --input photos/ --prompts prompts.json --output out/          # per-image clicks
    python3 sam2_point.py --camera /dev/video0 --point 320,240 --show                   # the same clicks each frame
    python3 sam2_point.py --benchmark 20                                                 # one JSON line per network

``--point x,y[,label]`` is in image pixels (label 1 on the object, the default, or 0 on the background); without
points or prompts the image centre is the one positive click. Each image prints its per-stage times (pre-processing,
encoder, decoder, post-processing) and the mask area. Exit codes as segment.py: 0 ok, 1 verification failed, 2 bad
arguments, 3 missing runtime or package, 4 model or configuration problem, 5 unreadable input or camera.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIG = "sam2_config.json"
ROLES = ("encoder", "decoder")
MASK_COLOUR = (30, 144, 255)
CLICK_COLOURS = {1: (0, 220, 0), 0: (230, 0, 0)}


_SPEC = importlib.util.spec_from_file_location("segzoo_board_common", HERE / "common.py")
shared = importlib.util.module_from_spec(_SPEC)  # common.py: what pose.py and sam2_point.py share
_SPEC.loader.exec_module(shared)
common = shared.segment
np, cv2 = common.np, common.cv2
AppError = common.AppError
EXIT_OK, EXIT_USAGE, EXIT_MODEL, EXIT_INPUT = common.EXIT_OK, common.EXIT_USAGE, common.EXIT_MODEL, common.EXIT_INPUT


# ------------------------------------------------------------------------------------------------- prompts

def parse_point(text: str) -> tuple:
    """``"x,y"`` or ``"x,y,label"`` -> ``(x, y, label)``; ValueError with the reason."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 3):
        raise ValueError(f"--point {text!r}: expected x,y or x,y,label")
    x, y = float(parts[0]), float(parts[1])
    label = int(parts[2]) if len(parts) == 3 else 1
    if label not in (0, 1) or not (math.isfinite(x) and math.isfinite(y)):
        raise ValueError(f"--point {text!r}: label must be 1 (object) or 0 (background), x and y finite pixels")
    return x, y, label


def load_prompts(path: Path) -> dict:
    """``{"image.jpg": [{"x", "y", "label"}, ...]}`` (segzoo's prompts JSON) -> image name -> [(x, y, label)]."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AppError(f"{path}: cannot read the prompts file ({exc})", EXIT_INPUT) from exc
    if not isinstance(data, dict):
        raise AppError(f"{path}: expected an object mapping image file names to lists of points", EXIT_INPUT)
    prompts = {}
    for name, points in data.items():
        try:
            prompts[name] = [(float(p["x"]), float(p["y"]), int(p["label"])) for p in points]
        except (TypeError, KeyError, ValueError) as exc:
            raise AppError(f"{path}: image {name!r}: each point is {{\"x\", \"y\", \"label\"}} ({exc})",
                           EXIT_INPUT) from exc
        if not prompts[name] or any(label not in (0, 1) for _, _, label in prompts[name]):
            raise AppError(f"{path}: image {name!r}: give at least one point, labels 1 or 0", EXIT_INPUT)
    return prompts


def points_for(name: str, image_hw: tuple, points: list, prompts: dict) -> list:
    """The clicks of one image: its prompts entry, else the --point list, else the image centre."""
    chosen = prompts.get(name) or points or [((image_hw[1] - 1) / 2.0, (image_hw[0] - 1) / 2.0, 1)]
    for x, y, _ in chosen:
        if not (0 <= x < image_hw[1] and 0 <= y < image_hw[0]):
            raise AppError(f"{name}: point ({x:g}, {y:g}) is outside the {image_hw[1]}x{image_hw[0]} image", EXIT_INPUT)
    return chosen


# ------------------------------------------------------------------------------------- pre/post-processing
# The same arithmetic as segzoo.tasks.promptable_segmentation.preprocess, without segzoo.

def content_hw(image_hw: tuple, size: int, mode: str) -> tuple:
    """Size of the resized image inside the ``size x size`` model image."""
    if mode == "stretch":
        return size, size
    if mode != "longest_side":
        raise AppError(f"{CONFIG}: unknown resize_mode {mode!r}", EXIT_MODEL)
    scale = size / max(image_hw)
    return int(image_hw[0] * scale + 0.5), int(image_hw[1] * scale + 0.5)


def model_image(rgb, config: dict) -> tuple:
    """The encoder input ``[1, S, S, 3]`` float32 of an RGB uint8 image and its content size."""
    size = config["image_size"]
    ch, cw = content_hw(rgb.shape[:2], size, config["resize_mode"])
    resized = cv2.resize(rgb, (cw, ch), interpolation=cv2.INTER_LINEAR) if (ch, cw) != rgb.shape[:2] else rgb
    mean, std = np.asarray(config["pixel_mean"], np.float32), np.asarray(config["pixel_std"], np.float32)
    out = np.zeros((1, size, size, 3), dtype=np.float32)
    out[0, :ch, :cw] = ((resized.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)
    return out, (ch, cw)


def decoder_points(points: list, image_hw: tuple, content: tuple, num_points: int) -> tuple:
    """``([1, N, 2], [1, N])`` decoder inputs: clicks in model pixels, then padding points (0, 0, -1)."""
    if len(points) > num_points:
        raise AppError(f"{len(points)} points, but the decoder takes at most {num_points}", EXIT_USAGE)
    (h, w), (ch, cw) = image_hw, content
    coords = np.zeros((1, num_points, 2), dtype=np.float32)
    labels = np.full((1, num_points), -1.0, dtype=np.float32)
    xy = np.asarray([[x, y] for x, y, _ in points], dtype=np.float32)
    coords[0, :len(points)] = (xy * np.array([cw / w, ch / h], dtype=np.float32)).astype(np.float32)
    labels[0, :len(points)] = [label for _, _, label in points]
    return coords, labels


def logits_to_image(logits, image_hw: tuple, content: tuple, config: dict):
    """Mask logits ``[m, m]`` -> ``[H, W]`` logits on the image (bilinear)."""
    logits = np.asarray(logits, dtype=np.float32)
    if config["resize_mode"] == "longest_side":
        size = config["image_size"]
        full = cv2.resize(logits, (size, size), interpolation=cv2.INTER_LINEAR)
        logits = full[:content[0], :content[1]]
    return cv2.resize(logits, (image_hw[1], image_hw[0]), interpolation=cv2.INTER_LINEAR)


def render_overlay(image, mask, points: list, alpha: float):
    """RGB overlay: the mask blended in colour, its outline, the clicks (green positive, red negative)."""
    colour = np.array(MASK_COLOUR, np.float32)
    blended = np.where(mask[..., None], image * (1 - alpha) + colour * alpha, image)
    overlay = np.ascontiguousarray(np.rint(blended).astype(np.uint8))
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(overlay, contours, -1, (255, 255, 255), 1)
    radius = max(3, round(min(image.shape[:2]) / 80))
    for x, y, label in points:
        centre = (int(round(x)), int(round(y)))
        cv2.circle(overlay, centre, radius + 1, (255, 255, 255), -1, cv2.LINE_AA)
        cv2.circle(overlay, centre, radius, CLICK_COLOURS[label], -1, cv2.LINE_AA)
    return overlay


# ------------------------------------------------------------------------------------------------- models

class Network(shared.BoardNetwork):
    """One network with several named inputs and outputs (stai_mpu or TFLite, ``common.py``), bound by the tensor
    order that ``sam2_config.json`` records; ``run`` takes and returns float32 arrays by name."""

    def __init__(self, path: Path, spec: dict, runtime: str, threads: int) -> None:
        self.inputs, self.outputs = list(spec["inputs"]), list(spec["outputs"])
        super().__init__(path, None, runtime, threads)
        for what, names, shapes in (("inputs", self.inputs, self.input_shapes),
                                    ("outputs", self.outputs, self.output_shapes)):
            expected = [tuple(spec["shapes"][n]) for n in names]
            if [tuple(s) for s in shapes] != expected:
                raise AppError(f"{path.name}: {what} of shapes {[list(s) for s in shapes]}, {CONFIG} expects "
                               f"{[list(s) for s in expected]} ({', '.join(names)}); is it the bundle's model?",
                               EXIT_MODEL)

    def run(self, feed: dict) -> dict:
        """One inference: float inputs by name -> float32 outputs by name."""
        return dict(zip(self.outputs, self.forward([feed[n] for n in self.inputs])))


class PointSegmenter:
    """Encoder once per image, decoder once per set of clicks; the mask on the image and per-stage times."""

    def __init__(self, encoder: Network, decoder: Network, config: dict) -> None:
        self.encoder, self.decoder, self.config = encoder, decoder, config

    def segment(self, image, points: list) -> tuple:
        """(mask bool [H, W], predicted IoU, timings in ms) for an RGB uint8 image and clicks in image pixels."""
        start = time.perf_counter()
        tensor, content = model_image(image, self.config)
        t_encoder = time.perf_counter()
        features = self.encoder.run({"image": tensor})
        t_decoder = time.perf_counter()
        coords, labels = decoder_points(points, image.shape[:2], content, self.config["num_points"])
        out = self.decoder.run({**features, "point_coords": coords, "point_labels": labels})
        t_post = time.perf_counter()
        iou = np.asarray(out["iou"])[0]
        best = int(np.argmax(iou))
        logits = logits_to_image(np.asarray(out["masks"])[0][..., best], image.shape[:2], content, self.config)
        mask = logits > np.float32(self.config["mask_threshold"])
        done = time.perf_counter()
        times = {"pre_ms": t_encoder - start, "encoder_ms": t_decoder - t_encoder, "decoder_ms": t_post - t_decoder,
                 "post_ms": done - t_post, "total_ms": done - start}
        return mask, float(iou[best]), {k: v * 1e3 for k, v in times.items()}


# ------------------------------------------------------------------------------------------------- outputs

def save_outputs(out_dir: Path, stem: str, image, mask, points: list, alpha: float) -> None:
    """``<stem>_mask.png`` (0/255) and ``<stem>_overlay.png``, each written whole or not at all."""
    overlay = cv2.cvtColor(render_overlay(image, mask, points, alpha), cv2.COLOR_RGB2BGR)
    common._save(out_dir / f"{stem}_mask.png", lambda p: cv2.imwrite(str(p), mask.astype(np.uint8) * 255))
    common._save(out_dir / f"{stem}_overlay.png", lambda p: cv2.imwrite(str(p), overlay))


def _report(name: str, points: list, mask, iou: float, times: dict, segmenter: PointSegmenter) -> None:
    print(f"{name}: {len(points)} point(s), encoder {times['encoder_ms']:.1f} ms, decoder {times['decoder_ms']:.1f} ms,"
          f" total {times['total_ms']:.1f} ms (pre {times['pre_ms']:.1f}, post {times['post_ms']:.1f}) "
          f"[{segmenter.encoder.runtime} / {segmenter.encoder.delegate}] mask {int(mask.sum())} px "
          f"({100 * float(mask.mean()):.1f}%), predicted IoU {iou:.2f}", flush=True)


# ---------------------------------------------------------------------------------------------------- main

def parse_args(argv: list | None) -> argparse.Namespace:
    """Command-line arguments (segment.py's, and the point prompts)."""
    parser = common.app_parser("SAM2 point prompts with a segzoo bundle (X-LINUX-AI or PC).",
                               "<name>_mask.png and <name>_overlay.png")
    parser.add_argument("--point", action="append", default=[], metavar="X,Y[,LABEL]",
                        help="a click in image pixels, label 1 (object, default) or 0 (background); repeat it")
    parser.add_argument("--prompts", metavar="JSON",
                        help="per-image clicks: {\"image.jpg\": [{\"x\", \"y\", \"label\"}]}")
    parser.add_argument("--config", help=f"configuration instead of the bundle's {CONFIG}")
    parser.add_argument("--encoder", help="encoder .tflite to use instead of the bundle's")
    parser.add_argument("--decoder", help="decoder .tflite to use instead of the bundle's")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the mask colour")
    args = parser.parse_args(argv)
    if args.benchmark is not None and args.benchmark < 1:
        parser.error("--benchmark needs at least 1 run")
    try:
        args.points = [parse_point(text) for text in args.point]
    except ValueError as exc:
        parser.error(str(exc))
    return args


def load_config(path: Path) -> dict:
    """The bundle's model configuration (written by segzoo)."""
    return shared.load_config(path, ("image_size", "num_points", "resize_mode", "pixel_mean", "pixel_std",
                                     "mask_threshold", *ROLES))


def open_segmenter(args: argparse.Namespace) -> PointSegmenter:
    """Both networks with the best runtime available and the configuration."""
    config = load_config(Path(args.config) if args.config else HERE / CONFIG)
    manifest = common.read_manifest(HERE)
    networks = []
    for role in ROLES:
        explicit = getattr(args, role)
        name = explicit or manifest.get("models", {}).get(role)
        if not name:
            raise AppError(f"no {role} model: {common.MANIFEST} names none and --{role} was not given", EXIT_MODEL)
        path = Path(explicit) if explicit else HERE / name
        if not path.is_file():
            raise AppError(f"model file {path} not found", EXIT_MODEL)
        networks.append(Network(path, config[role], args.runtime, args.threads))
    return PointSegmenter(networks[0], networks[1], config)


def benchmark(network: Network, runs: int, warmup: int) -> dict:
    """segment.py's timing of one network on fixed random float inputs (labels: one click, the rest padding)."""
    rng = np.random.default_rng(0)
    feed = {n: rng.uniform(-1.0, 1.0, s).astype(np.float32)
            for n, s in zip(network.inputs, network.input_shapes)}
    if "point_labels" in feed:
        feed["point_labels"] = np.full(feed["point_labels"].shape, -1.0, np.float32)
        feed["point_labels"][0, 0] = 1.0
    return {"tool": "sam2_point.py", **common.time_model(network, feed, runs, warmup)}


def segment_images(segmenter: PointSegmenter, args: argparse.Namespace, out_dir: Path | None) -> None:
    """Every image given with its clicks, one line of timings each."""
    prompts = load_prompts(Path(args.prompts)) if args.prompts else {}
    for path in common.collect_images(args.input):
        image = common.read_image(path)
        points = points_for(path.name, image.shape[:2], args.points, prompts)
        mask, iou, times = segmenter.segment(image, points)
        _report(path.name, points, mask, iou, times, segmenter)
        if out_dir is not None:
            save_outputs(out_dir, path.stem, image, mask, points, args.alpha)
        if args.show:
            common._show(render_overlay(image, mask, points, args.alpha), wait=True)


def run_stream(segmenter: PointSegmenter, args: argparse.Namespace, out_dir: Path | None) -> None:
    """The same clicks on every frame until the stream ends, --max-frames, 'q' or Ctrl-C."""

    def handle(count: int, image) -> bool:
        points = points_for(f"frame {count}", image.shape[:2], args.points, {})
        mask, iou, times = segmenter.segment(image, points)
        _report(f"frame {count}", points, mask, iou, times, segmenter)
        if out_dir is not None:
            save_outputs(out_dir, f"frame_{count:06d}", image, mask, points, args.alpha)
        return args.show and common._show(render_overlay(image, mask, points, args.alpha), wait=False)

    common.for_each_frame(args, handle)


def run(args: argparse.Namespace) -> int:
    """Do what the arguments ask; AppError for anything the user can fix."""
    code, segmenter = shared.start(args, HERE, open_segmenter, lambda s: (s.encoder, s.decoder), benchmark)
    if code is not None:
        return code
    size = segmenter.config["image_size"]
    print(f"models {segmenter.encoder.path.name} + {segmenter.decoder.path.name}: input {size}x{size}, up to "
          f"{segmenter.config['num_points']} point(s), runtime {segmenter.encoder.runtime}, delegate "
          f"{segmenter.encoder.delegate}", flush=True)
    out_dir = common.output_dir(args)
    if args.input:
        segment_images(segmenter, args, out_dir)
    else:
        run_stream(segmenter, args, out_dir)
    return EXIT_OK


def main(argv: list | None = None) -> int:
    """Entry point: exit code as documented at the top of this file."""
    return common.run_guarded(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
