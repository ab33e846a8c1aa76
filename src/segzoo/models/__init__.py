"""Segmentation model families, their lazy registry and size analysis.

- :mod:`segzoo.models.registry`: the families (``FAMILIES``), ``get_family`` and ``build_model``. It imports no
  TensorFlow/Keras, so the config validator can use it before TensorFlow is loaded.
- :mod:`segzoo.models.deeplabv3`: DeepLabV3 on a MobileNetV2 backbone, as the STM32 model zoo builds it.
- :mod:`segzoo.models.analysis`: parameter and MAC counts of a Keras model.

Importing this package has no side effects and imports no TensorFlow.
"""
