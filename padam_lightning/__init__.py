"""padam-lightning: the Padam optimizer and the paper's CIFAR experiments on PyTorch Lightning."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from padam_lightning.optim import Padam

__version__ = "0.1.0"

__all__ = ["Padam", "__version__"]


def __getattr__(name: str) -> Any:
    """``Padam``, imported on first use: the command-line tools start without importing torch."""
    if name == "Padam":
        return importlib.import_module("padam_lightning.optim").Padam
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
