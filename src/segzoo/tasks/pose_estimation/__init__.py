"""Pose estimation: MediaPipe Pose (detector + landmark model) as a pipeline, COCO keypoint evaluation.

Modules: ``anchors`` (SSD anchors), ``decode`` (boxes, keypoints, weighted NMS, letterbox removal),
``crop`` (rotated ROIs, affine crops and their inverse), ``landmarks`` (landmark tensors to image
coordinates), ``preset`` (per-model preprocessing and thresholds), ``pipeline`` (single images and
tracking), ``keypoints`` (COCO names, 33 -> 17 mapping), ``evaluation`` (OKS AP/AR, PCK, mask IoU),
``reports`` and ``prediction`` (files written for users), ``task`` (the pipeline through the operation modes).
Nothing imports TensorFlow at import time.
"""
