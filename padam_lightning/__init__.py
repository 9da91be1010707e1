"""padam-lightning: the Padam optimizer and the paper's CIFAR experiments on PyTorch Lightning."""

from padam_lightning.optim import Padam

__version__ = "0.1.0"

__all__ = ["Padam", "__version__"]
