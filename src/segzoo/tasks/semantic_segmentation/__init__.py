"""Semantic segmentation: image -> per-pixel class scores; mIoU on masks."""

from segzoo.tasks.semantic_segmentation.task import SemanticSegmentation

__all__ = ["SemanticSegmentation"]
