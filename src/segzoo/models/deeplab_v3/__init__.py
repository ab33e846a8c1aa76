"""DeepLabV3 on a Keras MobileNetV2 backbone, as the STM32 model zoo builds it (``training.model.name: deeplab_v3``).

Features cut at ``block_13_expand_relu`` (output stride 16) or ``block_6_expand_relu`` (8), ASPP head ``v1``
(dilated convs), ``v2`` (dilated depthwise-separable) or ``none`` (1x1 + image pooling), 1x1 logits, optional
bilinear upsampling to the input size. No TensorFlow is imported here.
"""

from segzoo.models.base import Family, WeightSource
from segzoo.models.deeplab_v3.params import DeepLabV3Params
from segzoo.models.deeplab_v3.weights import IMAGENET_ALTERNATIVES, IMAGENET_FILE, KERAS_WEIGHTS_URL

FAMILY = Family(
    name="deeplab_v3",
    params=DeepLabV3Params,
    builder="segzoo.models.deeplab_v3.model:build",
    file_importer="segzoo.models.deeplab_v3.weights:load_weights_file",
    weights={
        "imagenet": WeightSource(
            name="imagenet",
            file_name=IMAGENET_FILE,
            alternatives=IMAGENET_ALTERNATIVES,
            url=KERAS_WEIGHTS_URL,
            importer="segzoo.models.deeplab_v3.weights:import_imagenet",
            cache="keras",
            description="Keras MobileNetV2 ImageNet weights (no top) for the backbone; any alpha",
        ),
    },
    presets={
        "deeplab_v3_mnv2_035_asppv2_128": {"alpha": 0.35, "aspp": "v2", "input_shape": [128, 128, 3], "num_classes": 5},
        "st_deeplab_v3_mnv2_05_asppv1_512": {"alpha": 0.5, "aspp": "v1", "input_shape": [512, 512, 3],
                                              "num_classes": 21},
        "deeplab_v3_mnv2_05_asppnone_256": {"alpha": 0.5, "aspp": "none", "input_shape": [256, 256, 3],
                                             "num_classes": 21},
    },
    description=("DeepLabV3 on MobileNetV2 (STM32 model zoo): ASPP v1/v2/none, output stride 8 or 16, logits "
                 "upsampled in the model or on the host"),
)
