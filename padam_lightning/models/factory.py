"""Build a network by name: ``build_model("wrn16_4", num_classes=100)``."""

import re
from collections.abc import Callable
from typing import Final

from torch import nn

from padam_lightning.errors import UserError
from padam_lightning.models.resnet import resnet18, resnet34
from padam_lightning.models.vgg import vgg11, vgg13, vgg16, vgg19
from padam_lightning.models.wide_resnet import blocks_per_stage, wide_resnet

_FIXED_MODELS: Final[dict[str, Callable[[int], nn.Module]]] = {
    "vgg11": vgg11,
    "vgg13": vgg13,
    "vgg16": vgg16,
    "vgg19": vgg19,
    "resnet18": resnet18,
    "resnet34": resnet34,
}

#: Names with a fixed architecture; wide ResNets are named by the pattern ``wrn{depth}_{width}``.
MODEL_NAMES: Final[tuple[str, ...]] = tuple(_FIXED_MODELS)

#: Depth and width without leading zeros: each network has one name, which names its run folder
#: and is compared on resume (``wrn016_04`` would be WRN-16-4 under a second name).
_WRN_NAME: Final = re.compile(r"wrn([1-9]\d*)_([1-9]\d*|0)")
#: Spellings of a wide ResNet that are not its name: ``WRN-16-4``, ``wrn_16_4``, ``wrn016_04``.
_WRN_LIKE: Final = re.compile(r"wrn[-_ ]?0*(\d+)[-_ x]0*(\d+)")

_VALID_NAMES: Final = (
    ", ".join(MODEL_NAMES) + ", or wrn{depth}_{width} for a wide ResNet with depth = 6 * n + 4 and "
    "width >= 1 (e.g. wrn16_4 as in the paper, wrn28_10, wrn10_1)"
)


def build_model(name: str, num_classes: int = 10) -> nn.Module:
    """Return a freshly initialised network for 3x32x32 images.

    Args:
        name: One of :data:`MODEL_NAMES` (``vgg16``, ``resnet18``, ...) or ``wrn{depth}_{width}``
            (``wrn16_4`` is the paper's WRN-16-4).
        num_classes: Number of output logits, at least 1.

    Returns:
        The network, in training mode, on the CPU, in float32.

    Raises:
        UserError: If the name is not a known network, the wide ResNet depth is not
            ``6 * n + 4``, or ``num_classes`` is below 1.
    """
    if num_classes < 1:
        raise UserError(f"num_classes must be at least 1, got {num_classes}.")
    if name in _FIXED_MODELS:
        return _FIXED_MODELS[name](num_classes)
    wrn = _WRN_NAME.fullmatch(name)
    if wrn is None:
        raise UserError(f"Unknown model {name!r}{_suggestion(name)}. Valid names: {_VALID_NAMES}.")
    depth, width = int(wrn.group(1)), int(wrn.group(2))
    blocks_per_stage(depth)  # raises a UserError naming the valid depths
    if width < 1:
        raise UserError(
            f"Wide ResNet width must be at least 1, got {name!r}. Valid names: {_VALID_NAMES}."
        )
    return wide_resnet(depth, width, num_classes)


def _suggestion(name: str) -> str:
    """`` (did you mean wrn16_4?)`` for another spelling of a valid name, else nothing."""
    lowered = name.strip().lower()
    wrn = _WRN_LIKE.fullmatch(lowered)
    candidate = f"wrn{int(wrn.group(1))}_{int(wrn.group(2))}" if wrn else lowered
    valid = candidate in _FIXED_MODELS or (wrn is not None and int(wrn.group(2)) >= 1)
    return f" (did you mean {candidate}?)" if valid and candidate != name else ""
