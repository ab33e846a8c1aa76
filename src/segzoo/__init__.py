"""segzoo: semantic-segmentation model zoo pipeline for the STM32MP2 NPU."""

__version__ = "0.1.0"
