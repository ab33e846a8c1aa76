"""PIDNet-S/M/L (Xu et al., 2022; ``XuJiacong/PIDNet``): a three-branch real-time segmentation network.

- :mod:`.params`: ``PidnetParams`` (``training.model`` keys, defaults, checks). TensorFlow-free, like this module.
- :mod:`.model`: ``build(params, num_classes)``, the training graph with outputs ``logits``, ``aux``, ``boundary``.
- :mod:`.export`: ``export(model, params)``, the inference graph (one ``logits`` output, BatchNorm folded).
- :mod:`.losses`: ``loss_terms(...)``, OHEM CE + auxiliary CE + boundary BCE + boundary-aware CE.
- :mod:`.weights`: official and mmsegmentation checkpoints into the training graph.

Official checkpoints: mmsegmentation publishes the converted ImageNet backbones and its Cityscapes models at stable
URLs whose file names end with the first 8 hex digits of the file's sha256 (the sources' ``sha256``, checked on
download and on import). The official
repository's Google Drive links are not stable (its README says they stopped working); those files are listed
without a URL: download them by hand and put them in a folder of ``general.weights_dirs`` (or give their path as
``pretrained_weights``). A trained checkpoint whose classifier has another number of classes than the model is
imported without its heads. All of them expect RGB input normalised with the ImageNet mean/std,
``(pixel / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]``.
"""

from __future__ import annotations

from segzoo.models.base import Family, WeightSource
from segzoo.models.pidnet.params import PidnetLoss, PidnetParams

__all__ = ["FAMILY", "PidnetLoss", "PidnetParams"]

MMSEG_URL = "https://download.openmmlab.com/mmsegmentation/v0.5"
MMSEG_IMAGENET = {"s": "pidnet-s_imagenet1k_20230306-715e6273.pth", "m": "pidnet-m_imagenet1k_20230306-39893c52.pth",
                  "l": "pidnet-l_imagenet1k_20230306-67889109.pth"}
MMSEG_CITYSCAPES = {"s": "pidnet-s_2xb6-120k_1024x1024-cityscapes/pidnet-s_2xb6-120k_1024x1024-cityscapes_"
                         "20230302_191700-bb8e3bcc.pth",
                    "m": "pidnet-m_2xb6-120k_1024x1024-cityscapes/pidnet-m_2xb6-120k_1024x1024-cityscapes_"
                         "20230301_143452-f9bcdbf3.pth",
                    "l": "pidnet-l_2xb6-120k_1024x1024-cityscapes/pidnet-l_2xb6-120k_1024x1024-cityscapes_"
                         "20230303_114514-0783ca6b.pth"}
OFFICIAL_TRAINED = {("cityscapes", "s"): "PIDNet_S_Cityscapes_test.pt",
                    ("cityscapes", "m"): "PIDNet_M_Cityscapes_test.pt",
                    ("cityscapes", "l"): "PIDNet_L_Cityscapes_test.pt",
                    ("camvid", "s"): "PIDNet_S_Camvid_Test.pt", ("camvid", "m"): "PIDNet_M_Camvid_Test.pt"}
IMPORT_ALL = "segzoo.models.pidnet.weights:import_weights"
IMPORT_BACKBONE = "segzoo.models.pidnet.weights:import_backbone"
DRIVE_NOTE = ("Published on the official repository's Google Drive, whose links are not stable (its README says they "
              "stopped working): download it by hand and give its local path.")


def _hash_prefix(file_name: str) -> str:
    """The sha256 prefix mmsegmentation puts at the end of its file names (``...-bb8e3bcc.pth``)."""
    return file_name.rsplit("-", 1)[1].split(".", 1)[0]


def _weight_sources() -> dict[str, WeightSource]:
    """The named official checkpoints (mmsegmentation's at stable URLs; the official ones without a URL)."""
    sources: list[WeightSource] = []
    for variant in ("s", "m", "l"):
        upper = variant.upper()
        sources.append(WeightSource(
            name=f"imagenet_{variant}", file_name=MMSEG_IMAGENET[variant],
            url=f"{MMSEG_URL}/pretrain/pidnet/{MMSEG_IMAGENET[variant]}", importer=IMPORT_BACKBONE,
            sha256=_hash_prefix(MMSEG_IMAGENET[variant]),
            params={"variant": variant},
            description=f"PIDNet-{upper} ImageNet-1k backbone (mmsegmentation's conversion of the official "
                        f"PIDNet_{upper}_ImageNet.pth.tar; the file name ends with its sha256 prefix). Backbone only: "
                        f"the heads and the D branch keep their initial values."))
        sources.append(WeightSource(
            name=f"cityscapes_{variant}", file_name=MMSEG_CITYSCAPES[variant].rsplit("/", 1)[1],
            url=f"{MMSEG_URL}/pidnet/{MMSEG_CITYSCAPES[variant]}", importer=IMPORT_ALL,
            sha256=_hash_prefix(MMSEG_CITYSCAPES[variant]),
            params={"variant": variant}, num_classes=19,
            description=f"PIDNet-{upper} trained by mmsegmentation on Cityscapes (19 classes, 1024x1024 crops, "
                        f"120k iterations), with its training heads."))
        sources.append(WeightSource(
            name=f"official_imagenet_{variant}", file_name=f"PIDNet_{upper}_ImageNet.pth.tar", url=None,
            importer=IMPORT_BACKBONE, params={"variant": variant},
            description=f"The official PIDNet-{upper} ImageNet backbone. {DRIVE_NOTE}"))
    for (dataset, variant), file_name in OFFICIAL_TRAINED.items():
        upper = variant.upper()
        sources.append(WeightSource(
            name=f"official_{dataset}_{variant}", file_name=file_name, url=None, importer=IMPORT_ALL,
            params={"variant": variant}, num_classes=19 if dataset == "cityscapes" else 11,
            description=f"The official PIDNet-{upper} {dataset} model (keys prefixed 'model.'). {DRIVE_NOTE}"))
    return {source.name: source for source in sources}


FAMILY = Family(
    name="pidnet",
    params=PidnetParams,
    builder="segzoo.models.pidnet.model:build",
    exporter="segzoo.models.pidnet.export:export",
    losses="segzoo.models.pidnet.losses:loss_terms",
    targets=("boundary",),
    weights=_weight_sources(),
    file_importer=IMPORT_ALL,
    custom_objects="segzoo.models.pidnet.model:CUSTOM_OBJECTS",
    # one preset: the registry test converts every preset (M and L alone would take about 3 minutes there);
    # M and L are training.model.variant m / l
    presets={"pidnet_s_camvid_384x512": {"variant": "s", "input_shape": [384, 512, 3], "num_classes": 11}},
    tiny_input_shape=(64, 64, 3),
    description=(
        "PIDNet-S/M/L (official XuJiacong/PIDNet): P (detail), I (context, PAPPM/DAPPM) and D (boundary) branches "
        "fused by Pag and Bag/Light-Bag, logits at 1/8 (x8 upsampling in the model with upsample: true, else on the "
        "host). Training outputs logits, aux (P head) and boundary (D head); export keeps the logits only, with "
        "BatchNorm folded. Input height and width: multiples of 64. Parameters (19 classes, inference, PyTorch "
        "count): S 7,625,715; M 28,538,515; L 36,939,571."
    ),
)
