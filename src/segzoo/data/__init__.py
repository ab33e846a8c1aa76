"""Datasets: folder layouts, mask reading and class mapping, the built-in synthetic set, augmentation, tf.data."""

SYNTHETIC_DATASET = "synthetic_shapes"
"""``dataset.name`` of the built-in dataset, generated on first use (``segzoo.data.synthetic``)."""
