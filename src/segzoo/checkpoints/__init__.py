"""Read official PyTorch and Paddle checkpoints safely, and import their weights into Keras.

``read_checkpoint``/``read_state_dict`` read torch zip archives, legacy torch files, Paddle ``.pdparams`` and
plain pickles without torch, paddle or running any code from the file; ``WeightPlan``/``assign_weights`` fill
Keras variables from a state dict with exactly-once checks. Writers of the same formats (for tests and
converters) are in :mod:`segzoo.checkpoints.writers`. Nothing here imports TensorFlow.
"""

from segzoo.checkpoints.assign import AssignmentReport, WeightPlan, assign_weights
from segzoo.checkpoints.errors import CheckpointError
from segzoo.checkpoints.pickle_vm import GlobalRef, UnresolvedObject
from segzoo.checkpoints.reader import detect_format, read_checkpoint, read_state_dict
from segzoo.checkpoints.transforms import (
    conv_oihw_to_hwio,
    depthwise_oihw_to_hwim,
    identity,
    linear_oi_to_io,
    transpose_conv_iohw_to_hwoi,
)

__all__ = [
    "AssignmentReport",
    "CheckpointError",
    "GlobalRef",
    "UnresolvedObject",
    "WeightPlan",
    "assign_weights",
    "conv_oihw_to_hwio",
    "depthwise_oihw_to_hwim",
    "detect_format",
    "identity",
    "linear_oi_to_io",
    "read_checkpoint",
    "read_state_dict",
    "transpose_conv_iohw_to_hwoi",
]
