"""The paper's networks for 32x32 images: VGG, ResNet and wide ResNet, built by name."""

from padam_lightning.models.factory import MODEL_NAMES, build_model
from padam_lightning.models.resnet import ResNet, resnet18, resnet34
from padam_lightning.models.vgg import VGG, vgg11, vgg13, vgg16, vgg19
from padam_lightning.models.wide_resnet import WideResNet, wide_resnet

__all__ = [
    "MODEL_NAMES",
    "VGG",
    "ResNet",
    "WideResNet",
    "build_model",
    "resnet18",
    "resnet34",
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
    "wide_resnet",
]
