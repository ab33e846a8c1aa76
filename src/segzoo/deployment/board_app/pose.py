#!/usr/bin/env python3
"""segzoo board application, pose mode: MediaPipe Pose on images, a video or a camera of an STM32MP2 board.

Shipped in a segzoo pose bundle with ``common.py`` (the networks' runtimes, the --verify and --benchmark modes)
and ``segment.py`` (manifest check, image reading, camera pipeline, runtime loaders), the detector and landmark
models, ``pose_config.json`` (the pipeline preset: input sizes, value ranges, anchors, thresholds) and
``manifest.json`` (``"models": {"detector": ..., "landmark": ...}``, optional ``"nb_models"``). Needs no TensorFlow and no segzoo: numpy and OpenCV. Each
model runs with X-LINUX-AI's ``stai_mpu``, else a TFLite runtime with the VX delegate (NPU/GPU) when present,
else on the CPU. The pipeline repeats segzoo's ``tasks/pose_estimation`` arithmetic (tests check both give
the same landmarks): letterboxed detector input, SSD anchors, weighted NMS, rotated crop, landmark model,
heatmap refinement, projection, person mask; on a video or camera the next crop comes from the previous
frame's landmarks and the detector runs only when tracking is lost.

    python3 pose.py --verify
    python3 pose.py --input a.jpg photos/ --output out/     # <stem>_pose.png (overlay) + <stem>_pose.json
    python3 pose.py --video clip.mp4 --output out/           # tracking; --no-tracking detects on every frame
    python3 pose.py --camera /dev/video0 --show
    python3 pose.py --benchmark 50                           # one JSON line per model

Exit codes as segment.py: 0 ok, 1 verification failed, 2 bad arguments, 3 missing runtime or package,
4 model or configuration problem, 5 unreadable input or camera.
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
CONFIG = "pose_config.json"


_SPEC = importlib.util.spec_from_file_location("segzoo_board_common", HERE / "common.py")
shared = importlib.util.module_from_spec(_SPEC)  # common.py: what pose.py and sam2_point.py share
_SPEC.loader.exec_module(shared)
common = shared.segment
np, cv2 = common.np, common.cv2
AppError = common.AppError
EXIT_OK, EXIT_RUNTIME, EXIT_MODEL = common.EXIT_OK, common.EXIT_RUNTIME, common.EXIT_MODEL
CONNECTIONS = ((0, 1), (1, 2), (2, 3), (3, 7), (0, 4), (4, 5), (5, 6), (6, 8), (9, 10), (11, 12), (11, 13), (13, 15),
               (15, 17), (15, 19), (15, 21), (17, 19), (12, 14), (14, 16), (16, 18), (16, 20), (16, 22), (18, 20),
               (11, 23), (12, 24), (23, 24), (23, 25), (24, 26), (25, 27), (26, 28), (27, 29), (28, 30), (29, 31),
               (30, 32), (27, 31), (28, 32))
COCO_FROM_MEDIAPIPE = (0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28)
COCO_NAMES = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
              "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
              "right_knee", "left_ankle", "right_ankle")


# ------------------------------------------------------------------------------------------- anchors, decoding

def ssd_anchors(o: dict):
    """``[N, 4]`` anchors (x, y, w, h) as MediaPipe's SsdAnchorsCalculator makes them."""
    strides, n = o["strides"], len(o["strides"])

    def scale(i):
        return (o["min_scale"] + o["max_scale"]) * 0.5 if n == 1 else \
            o["min_scale"] + (o["max_scale"] - o["min_scale"]) * i / (n - 1.0)

    blocks, layer = [], 0
    while layer < n:
        last = layer
        while last < n and strides[last] == strides[layer]:
            last += 1
        sizes = []
        for i in range(layer, last):
            if i == 0 and o["reduce_boxes_in_lowest_layer"]:
                pairs = [(1.0, 0.1), (2.0, scale(i)), (0.5, scale(i))]
            else:
                pairs = [(r, scale(i)) for r in o["aspect_ratios"]]
                if o["interpolated_scale_aspect_ratio"] > 0:
                    following = 1.0 if i == n - 1 else scale(i + 1)
                    pairs.append((o["interpolated_scale_aspect_ratio"], math.sqrt(scale(i) * following)))
            sizes += [(s * math.sqrt(r), s / math.sqrt(r)) for r, s in pairs]
        fh, fw = math.ceil(o["input_height"] / strides[layer]), math.ceil(o["input_width"] / strides[layer])
        ys, xs, ks = np.meshgrid(np.arange(fh), np.arange(fw), np.arange(len(sizes)), indexing="ij")
        block = np.empty((ys.size, 4), dtype=np.float32)
        block[:, 0] = (xs.ravel() + o["anchor_offset_x"]) / fw
        block[:, 1] = (ys.ravel() + o["anchor_offset_y"]) / fh
        block[:, 2:] = 1.0 if o["fixed_anchor_size"] else np.asarray(sizes, np.float32)[ks.ravel()]
        blocks.append(block)
        layer = last
    return np.concatenate(blocks)


def sigmoid(x):
    """Logistic function in float32 without overflow."""
    x = np.asarray(x, dtype=np.float32)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(np.float32)


def decode_detections(raw_boxes, raw_scores, anchors, d: dict) -> tuple:
    """(scores, boxes xyxy, keypoints [N, K, 2]) normalized to the detector input, score >= min_score."""
    raw = np.asarray(raw_boxes, np.float32).reshape(len(anchors), -1)
    scores = sigmoid(np.clip(np.asarray(raw_scores, np.float32).reshape(len(anchors), -1), -d["score_clipping"],
                             d["score_clipping"])).max(axis=1)
    k = d["num_keypoints"]
    if d["box_format"] == "xywh":
        x, y, w, h = raw[:, 0], raw[:, 1], raw[:, 2], raw[:, 3]
        kx, ky = raw[:, 4:4 + 2 * k:2], raw[:, 5:5 + 2 * k:2]
    else:
        y, x, h, w = raw[:, 0], raw[:, 1], raw[:, 2], raw[:, 3]
        ky, kx = raw[:, 4:4 + 2 * k:2], raw[:, 5:5 + 2 * k:2]
    ax, ay, aw, ah = (anchors[:, i] for i in range(4))
    xc, yc = x / np.float32(d["x_scale"]) * aw + ax, y / np.float32(d["y_scale"]) * ah + ay
    hh, ww = h / np.float32(d["h_scale"]) * ah, w / np.float32(d["w_scale"]) * aw
    boxes = np.stack([xc - ww / 2, yc - hh / 2, xc + ww / 2, yc + hh / 2], axis=1).astype(np.float32)
    kps = np.stack([kx / np.float32(d["x_scale"]) * aw[:, None] + ax[:, None],
                    ky / np.float32(d["y_scale"]) * ah[:, None] + ay[:, None]], axis=2).astype(np.float32)
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    keep = (scores >= d["min_score"]) & (bw >= 0) & (bh >= 0) & ~np.isnan(bw) & ~np.isnan(bh)
    return scores[keep], boxes[keep], kps[keep]


def box_iou(box, boxes):
    """IoU of one xyxy box with each of ``boxes`` (0 for an empty union)."""
    iw = np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])
    ih = np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])
    inter = np.where((iw >= 0) & (ih >= 0), iw * ih, 0.0)
    union = (box[2] - box[0]) * (box[3] - box[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter
    return np.divide(inter, union, out=np.zeros_like(inter, dtype=np.float64), where=union > 0)


def weighted_nms(scores, boxes, kps, threshold: float) -> tuple:
    """MediaPipe's WEIGHTED non-maximum suppression (score-weighted means of each overlapping group)."""
    remaining = list(np.argsort(-scores, kind="stable"))
    out_s, out_b, out_k = [], [], []
    while remaining:
        top, rest = remaining[0], np.asarray(remaining)
        overlaps = box_iou(boxes[top], boxes[rest]) > threshold
        group = rest[overlaps]
        if len(group) == 0:
            out_s.append(scores[top]), out_b.append(boxes[top]), out_k.append(kps[top])
            break
        w = scores[group].astype(np.float32)
        out_s.append(scores[top])
        out_b.append((boxes[group] * w[:, None]).sum(axis=0) / w.sum())
        out_k.append((kps[group] * w[:, None, None]).sum(axis=0) / w.sum())
        remaining = list(rest[~overlaps])
    n_kp = kps.shape[1]
    return (np.asarray(out_s, np.float32), np.asarray(out_b, np.float32).reshape(-1, 4),
            np.asarray(out_k, np.float32).reshape(-1, n_kp, 2))


# ------------------------------------------------------------------------------------------------------ geometry

def normalize_radians(a: float) -> float:
    """Wrap to [-pi, pi)."""
    return a - 2 * math.pi * math.floor((a + math.pi) / (2 * math.pi))


def alignment_roi(start, end, target: float, scale: float):
    """Square ROI (cx, cy, w, h, rotation) centred on ``start``, side 2|end - start| x scale."""
    x0, y0, x1, y1 = float(start[0]), float(start[1]), float(end[0]), float(end[1])
    size = 2.0 * math.hypot(x1 - x0, y1 - y0)
    rotation = normalize_radians(target - math.atan2(-(y1 - y0), x1 - x0))
    size = np.float32(size)  # as segzoo: the raw ROI is float32 before it is expanded
    return np.array([x0, y0, size * scale, size * scale, rotation], dtype=np.float32)


def letterbox_roi(image_hw, size: int):
    """(ROI of the image padded to a square, padding left/top/right/bottom as fractions)."""
    height, width = image_hw
    ratio = height / width
    if 1.0 > ratio:
        roi, pad = [0.5 * width, 0.5 * height, float(width), float(width), 0.0], [0.0, (1.0 - ratio) / 2.0]
    else:
        roi, pad = [0.5 * width, 0.5 * height, float(height), float(height), 0.0], [(1.0 - 1.0 / ratio) / 2.0, 0.0]
    return np.array(roi, np.float32), np.array(pad + pad, np.float32)


def roi_to_image(roi, size: int):
    """[2, 3] map from model-input pixels to image pixels (ROI corners to input corners)."""
    cx, cy, w, h, r = (float(v) for v in roi)
    c, s = math.cos(r), math.sin(r)
    return np.array([[c * w / size, -s * h / size, cx - 0.5 * w * c + 0.5 * h * s],
                     [s * w / size, c * h / size, cy - 0.5 * w * s - 0.5 * h * c]], dtype=np.float64)


def crop(image, matrix, size: int, border: str):
    """Bilinear crop of ``image`` through the input -> image map."""
    mode = cv2.BORDER_CONSTANT if border == "zero" else cv2.BORDER_REPLICATE
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=mode, borderValue=0)


def to_range(pixels, value_range):
    """uint8 to float32 in [low, high]."""
    low, high = value_range
    return pixels.astype(np.float32) * np.float32((high - low) / 255.0) + np.float32(low)


def roi_iou(a, b) -> float:
    """IoU of two ROIs' unrotated boxes."""
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    iw, ih = min(ax1, bx1) - max(ax0, bx0), min(ay1, by1) - max(ay0, by0)
    inter = iw * ih if iw > 0 and ih > 0 else 0.0
    union = float(a[2] * a[3] + b[2] * b[3] - inter)
    return inter / union if union > 0 else 0.0


def refine_with_heatmap(lms, heatmap, kernel: int, min_confidence: float):
    """Heatmap refinement of x, y (MediaPipe's RefineLandmarksFromHeatmapCalculator)."""
    hm_h, hm_w, _ = heatmap.shape
    out, offset = lms.copy(), (kernel - 1) // 2
    for k in range(len(lms)):
        col, row = int(np.float32(lms[k, 0]) * np.float32(hm_w)), int(np.float32(lms[k, 1]) * np.float32(hm_h))
        if col < 0 or col >= hm_w or row < 0 or row >= hm_h:
            continue
        r0, r1, c0, c1 = max(0, row - offset), min(hm_h, row + offset + 1), max(0, col - offset), min(hm_w, col + offset + 1)
        conf = sigmoid(heatmap[r0:r1, c0:c1, k])
        total = float(conf.sum(dtype=np.float32))
        if float(conf.max()) >= min_confidence and total > 0:
            rows, cols = np.mgrid[r0:r1, c0:c1]
            out[k, 0] = float((cols * conf).sum(dtype=np.float32)) / hm_w / total
            out[k, 1] = float((rows * conf).sum(dtype=np.float32)) / hm_h / total
    return out


# -------------------------------------------------------------------------------------------------------- models

class PoseModel(shared.BoardNetwork):
    """One model with several outputs (stai_mpu or TFLite, ``common.py``); ``run`` returns float outputs by role."""

    def __init__(self, path: Path, nb: Path | None, runtime: str, threads: int, roles: dict) -> None:
        super().__init__(path, nb, runtime, threads)
        self.input_shape = self.input_shapes[0]
        self.roles = {}
        for role, shape in roles.items():
            found = [i for i, s in enumerate(self.output_shapes) if tuple(s[1:]) == tuple(shape)]
            if len(found) != 1:
                raise AppError(f"{self.path.name}: {len(found)} outputs of shape {list(shape)} for {role} "
                               f"(outputs {self.output_shapes}); is it the model {CONFIG} expects?", EXIT_MODEL)
            self.roles[role] = found[0]

    def run(self, x) -> dict:
        """One inference of a float ``[1, H, W, C]`` input; float32 outputs by role."""
        return dict(zip(self.roles, self.forward([x], list(self.roles.values()))))


# ------------------------------------------------------------------------------------------------------ pipeline

class PosePipeline:
    """Detector + landmark model with MediaPipe's pre- and post-processing (``pose_config.json``)."""

    def __init__(self, detector: PoseModel, landmark: PoseModel, config: dict, num_poses: int | None = None) -> None:
        self.detector, self.landmark, self.c = detector, landmark, config
        self.num_poses = num_poses or config["num_poses"]
        self.anchors = ssd_anchors(config["anchors"])
        self.reset()

    def reset(self) -> None:
        """Forget tracked poses."""
        self._rois, self._scores = np.zeros((0, 5), np.float32), np.zeros(0, np.float32)

    def detect(self, image, times: dict) -> tuple:
        """(ROIs [N, 5], scores [N]) from the detector, all of them, best first."""
        c, start = self.c, time.perf_counter()
        size = c["detector_input"]["size"]
        roi, pad = letterbox_roi(image.shape[:2], size)
        x = to_range(crop(image, roi_to_image(roi, size), size, c["detector_input"]["border"]),
                     c["detector_input"]["value_range"])[None]
        t1 = time.perf_counter()
        out = self.detector.run(x)
        t2 = time.perf_counter()
        scores, boxes, kps = decode_detections(out["raw_boxes"][0], out["raw_scores"][0], self.anchors, c["decoding"])
        scores, boxes, kps = weighted_nms(scores, boxes, kps, c["nms_iou"]) if len(scores) else (scores, boxes, kps)
        left, top, right, bottom = (float(p) for p in pad)
        sx, sy = 1.0 - left - right, 1.0 - top - bottom
        kps = np.stack([(kps[..., 0] - left) / sx, (kps[..., 1] - top) / sy], axis=-1).astype(np.float32)
        height, width = image.shape[:2]
        a, b = c["roi_keypoints"]
        rois = np.array([alignment_roi(k[a] * np.float32([width, height]), k[b] * np.float32([width, height]),
                                       c["roi_target_angle"], c["roi_scale"]) for k in kps], np.float32).reshape(-1, 5)
        t3 = time.perf_counter()
        times.update(detector_pre_ms=(t1 - start) * 1e3, detector_ms=(t2 - t1) * 1e3, detector_post_ms=(t3 - t2) * 1e3)
        return rois, scores

    def landmarks(self, image, rois, scores, times: dict) -> dict:
        """Poses of the ROIs whose presence reaches the threshold: landmarks [P, 33, 5], masks, next ROIs."""
        c, size = self.c, self.c["landmark_input"]["size"]
        kept, t_pre, t_inf, t_post, t_mask = [], 0.0, 0.0, 0.0, 0.0
        for roi, score in zip(rois, scores):
            t0 = time.perf_counter()
            m = roi_to_image(roi, size)
            x = to_range(crop(image, m, size, c["landmark_input"]["border"]), c["landmark_input"]["value_range"])
            t1 = time.perf_counter()
            out = self.landmark.run(x[None])
            t2 = time.perf_counter()
            presence = float(np.asarray(out["pose_presence"]).reshape(-1)[0])
            t_pre, t_inf = t_pre + t1 - t0, t_inf + t2 - t1
            if presence < c["min_pose_presence"]:
                t_post += time.perf_counter() - t2
                continue
            raw = np.asarray(out["raw_landmarks"], np.float32).reshape(c["num_landmarks"], -1)
            lms = np.empty((c["num_landmarks"], 5), np.float32)
            lms[:, :3] = raw[:, :3] / np.float32(size)
            lms[:, 3], lms[:, 4] = sigmoid(raw[:, 3]), sigmoid(raw[:, 4])
            lms = refine_with_heatmap(lms, np.asarray(out["heatmap"], np.float32)[0], c["heatmap_kernel"],
                                      c["heatmap_min_confidence"])
            projected = lms.copy()
            projected[:, :2] = ((lms[:, :2] * np.float32(size)).astype(np.float64) @ m[:, :2].T + m[:, 2]).astype(
                np.float32)
            projected[:, 2] = lms[:, 2] * np.float32(size * float(np.hypot(m[0, 0], m[1, 0])))
            a, b = c["tracking_landmarks"]
            next_roi = alignment_roi(projected[a, :2], projected[b, :2], c["roi_target_angle"], c["roi_scale"])
            t3 = time.perf_counter()
            mask = cv2.warpAffine(sigmoid(np.asarray(out["segmentation"], np.float32)[0, ..., 0]),
                                  cv2.invertAffineTransform(m), (image.shape[1], image.shape[0]),
                                  flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT,
                                  borderValue=0)
            t4 = time.perf_counter()
            t_post, t_mask = t_post + t3 - t2, t_mask + t4 - t3
            kept.append((projected[: c["num_body_landmarks"]], presence, float(score), roi, next_roi, mask))
        times.update(landmark_pre_ms=t_pre * 1e3, landmark_ms=t_inf * 1e3, landmark_post_ms=t_post * 1e3,
                     mask_ms=t_mask * 1e3, poses=len(kept))
        h, w = image.shape[:2]
        return {"landmarks": np.array([k[0] for k in kept], np.float32).reshape(-1, c["num_body_landmarks"], 5),
                "presence": np.array([k[1] for k in kept], np.float32), "scores": np.array([k[2] for k in kept],
                                                                                          np.float32),
                "rois": np.array([k[3] for k in kept], np.float32).reshape(-1, 5),
                "next_rois": np.array([k[4] for k in kept], np.float32).reshape(-1, 5),
                "masks": np.array([k[5] for k in kept], np.float32).reshape(-1, h, w)}

    def estimate(self, image) -> tuple:
        """(poses, timings) of one image; the detector always runs."""
        times, start = {}, time.perf_counter()
        rois, scores = self.detect(image, times)
        poses = self.landmarks(image, rois[: self.num_poses], scores[: self.num_poses], times)
        times["total_ms"], times["detector_ran"] = (time.perf_counter() - start) * 1e3, True
        return poses, times

    def track(self, image) -> tuple:
        """(poses, timings) of the next frame of a stream: the detector runs only when tracking is lost."""
        times, start = {}, time.perf_counter()
        rois, scores = self._rois, self._scores
        ran = len(rois) < self.num_poses
        if ran:
            found, found_scores = self.detect(image, times)
            kept = []
            for roi, score in list(zip(rois, scores)) + list(zip(found, found_scores)):
                kept = [(r, s) for r, s in kept if roi_iou(roi, r) <= self.c["min_tracking_iou"]] + [(roi, score)]
            rois = np.array([r for r, _ in kept], np.float32).reshape(-1, 5)
            scores = np.array([s for _, s in kept], np.float32)
        poses = self.landmarks(image, rois[: self.num_poses], scores[: self.num_poses], times)
        self._rois, self._scores = poses["next_rois"], poses["scores"]
        times["total_ms"], times["detector_ran"] = (time.perf_counter() - start) * 1e3, ran
        return poses, times


# --------------------------------------------------------------------------------------------------------- output

def render(image, poses: dict, min_visibility: float):
    """Overlay: person mask tinted magenta and each pose's skeleton."""
    canvas = image.astype(np.float32)
    if len(poses["masks"]):
        weight = (np.clip(poses["masks"].max(axis=0), 0, 1) * 0.4)[..., None]
        canvas = canvas * (1 - weight) + np.float32([255, 0, 255]) * weight
    canvas = np.ascontiguousarray(np.rint(canvas).astype(np.uint8))
    thickness = max(1, round(min(image.shape[:2]) / 300))
    for lms in poses["landmarks"]:
        pts = [(int(round(float(x))), int(round(float(y)))) for x, y in lms[:, :2]]
        shown = lms[:, 3] >= min_visibility
        for a, b in CONNECTIONS:
            if shown[a] and shown[b]:
                cv2.line(canvas, pts[a], pts[b], (255, 64, 64), thickness, cv2.LINE_AA)
        for k in np.flatnonzero(shown):
            cv2.circle(canvas, pts[k], 3 + thickness, (255, 255, 255), -1, cv2.LINE_AA)
            cv2.circle(canvas, pts[k], 3, (255, 64, 64), -1, cv2.LINE_AA)
    return canvas


def poses_json(name: str, image, poses: dict, times: dict) -> dict:
    """Keypoint JSON of one image or frame."""
    items = []
    for i, lms in enumerate(poses["landmarks"]):
        items.append({"score": round(float(poses["scores"][i]), 4), "presence": round(float(poses["presence"][i]), 4),
                      "landmarks": [[round(float(v), 3) for v in lm] for lm in lms],
                      "coco_keypoints": {n: [round(float(lms[k, 0]), 2), round(float(lms[k, 1]), 2),
                                             round(float(lms[k, 3]), 3)] for n, k in zip(COCO_NAMES, COCO_FROM_MEDIAPIPE)},
                      "mask_pixels": int((poses["masks"][i] > 0.5).sum())})
    return {"image": name, "height": image.shape[0], "width": image.shape[1], "num_poses": len(items), "poses": items,
            "timings_ms": {k: round(v, 3) if isinstance(v, float) else v for k, v in times.items()}}


def save_outputs(out_dir: Path, stem: str, name: str, image, poses: dict, times: dict, min_visibility: float) -> None:
    """``<stem>_pose.png`` and ``<stem>_pose.json``, each written whole or not at all."""
    overlay = cv2.cvtColor(render(image, poses, min_visibility), cv2.COLOR_RGB2BGR)
    common._save(out_dir / f"{stem}_pose.png", lambda p: cv2.imwrite(str(p), overlay))
    text = json.dumps(poses_json(name, image, poses, times), indent=1)
    common._save(out_dir / f"{stem}_pose.json", lambda p: p.write_text(text, encoding="utf-8"))


def _report(name: str, times: dict, pipeline: PosePipeline) -> None:
    stages = ", ".join(f"{k[:-3]} {v:.1f}" for k, v in times.items() if k.endswith("_ms") and k != "total_ms")
    print(f"{name}: {times['poses']} pose(s), total {times['total_ms']:.1f} ms "
          f"[{'detector' if times['detector_ran'] else 'tracked'}] ({stages} ms) "
          f"[{pipeline.landmark.runtime} / {pipeline.landmark.delegate}]", flush=True)


# ----------------------------------------------------------------------------------------------------------- main

def parse_args(argv: list | None) -> argparse.Namespace:
    """Command-line arguments (segment.py's, and the pose pipeline's own)."""
    parser = common.app_parser("MediaPipe Pose with a segzoo pose bundle (X-LINUX-AI or PC).",
                               "<name>_pose.png and <name>_pose.json")
    parser.add_argument("--detector", help="detector model to use instead of the bundle's (.tflite or .nb)")
    parser.add_argument("--landmark", help="landmark model to use instead of the bundle's (.tflite or .nb)")
    parser.add_argument("--config", help=f"pipeline configuration instead of the bundle's {CONFIG}")
    parser.add_argument("--num-poses", type=int, help="most people per image (default: the configuration's)")
    parser.add_argument("--no-tracking", action="store_true", help="run the detector on every video frame")
    parser.add_argument("--min-visibility", type=float, default=0.5, help="landmarks drawn above this visibility")
    args = parser.parse_args(argv)
    if args.benchmark is not None and args.benchmark < 1:
        parser.error("--benchmark needs at least 1 run")
    if args.num_poses is not None and args.num_poses < 1:
        parser.error("--num-poses must be at least 1")
    return args


def load_config(path: Path) -> dict:
    """The pipeline configuration (segzoo's pose preset as JSON)."""
    return shared.load_config(path, ("detector_input", "landmark_input", "anchors", "decoding", "nms_iou",
                                     "roi_keypoints", "roi_scale", "num_landmarks", "tracking_landmarks",
                                     "min_pose_presence"), "pipeline configuration")


def model_roles(config: dict) -> tuple[dict, dict]:
    """Output shapes (batch excluded) of each role of the detector and the landmark model."""
    n = len(ssd_anchors(config["anchors"]))
    size, lms = config["landmark_input"]["size"], config["num_landmarks"]
    return ({"raw_boxes": (n, 4 + 2 * config["decoding"]["num_keypoints"]), "raw_scores": (n, 1)},
            {"raw_landmarks": (lms * 5,), "pose_presence": (1,), "segmentation": (size, size, 1),
             "heatmap": (size // 4, size // 4, lms), "raw_world": (lms * 3,)})


def _model_paths(args: argparse.Namespace, role: str) -> tuple:
    explicit = getattr(args, role)
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise AppError(f"model file {path} not found", EXIT_MODEL)
        return (None, path) if path.suffix == ".nb" else (path, None)
    manifest = common.read_manifest(HERE)
    tflite, nb = manifest.get("models", {}).get(role), manifest.get("nb_models", {}).get(role)
    if not tflite and not nb:
        raise AppError(f"no {role} model: {common.MANIFEST} names none and --{role} was not given", EXIT_MODEL)
    return (HERE / tflite if tflite else None), (HERE / nb if nb else None)


def open_pipeline(args: argparse.Namespace) -> PosePipeline:
    """The two models with the best runtime available and the pipeline configuration."""
    config = load_config(Path(args.config) if args.config else HERE / CONFIG)
    roles = model_roles(config)
    models = []
    for role, shapes in zip(("detector", "landmark"), roles):
        tflite, nb = _model_paths(args, role)
        if tflite is None and (args.runtime in ("tflite", "cpu") or common._import_stai() is None):
            raise AppError(f"{nb.name} is an NPU binary: it needs X-LINUX-AI's stai_mpu", EXIT_RUNTIME)
        models.append(PoseModel(tflite, nb, args.runtime, args.threads, shapes))
    return PosePipeline(models[0], models[1], config, args.num_poses)


def benchmark(model: PoseModel, runs: int, warmup: int) -> dict:
    """segment.py's timing of one model on a fixed random float input in [0, 1]."""
    x = np.random.default_rng(0).uniform(0.0, 1.0, model.input_shape).astype(np.float32)
    return {"tool": "pose.py", **common.time_model(model, x, runs, warmup)}


def run_stream(pipeline: PosePipeline, args: argparse.Namespace, out_dir: Path | None) -> None:
    """Frames until the stream ends, --max-frames, 'q' or Ctrl-C; tracking unless --no-tracking."""

    def handle(count: int, image) -> bool:
        poses, times = pipeline.estimate(image) if args.no_tracking else pipeline.track(image)
        _report(f"frame {count}", times, pipeline)
        if out_dir is not None:
            save_outputs(out_dir, f"frame_{count:06d}", f"frame {count}", image, poses, times, args.min_visibility)
        return args.show and common._show(render(image, poses, args.min_visibility), wait=False)

    common.for_each_frame(args, handle)


def run(args: argparse.Namespace) -> int:
    """Do what the arguments ask; AppError for anything the user can fix."""
    code, pipeline = shared.start(args, HERE, open_pipeline, lambda p: (p.detector, p.landmark), benchmark)
    if code is not None:
        return code
    print(f"models {pipeline.detector.path.name} + {pipeline.landmark.path.name}: runtime "
          f"{pipeline.landmark.runtime}, delegate {pipeline.landmark.delegate}, up to {pipeline.num_poses} pose(s)",
          flush=True)
    out_dir = common.output_dir(args)
    if args.input:
        for path in common.collect_images(args.input):
            image = common.read_image(path)
            poses, times = pipeline.estimate(image)
            _report(path.name, times, pipeline)
            if out_dir is not None:
                save_outputs(out_dir, path.stem, path.name, image, poses, times, args.min_visibility)
            if args.show:
                common._show(render(image, poses, args.min_visibility), wait=True)
    else:
        run_stream(pipeline, args, out_dir)
    return EXIT_OK


def main(argv: list | None = None) -> int:
    """Entry point: exit code as documented at the top of this file."""
    return common.run_guarded(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
