"""Datasets: folder layouts, mask reading and class mapping, the built-in synthetic set, augmentation, tf.data."""
