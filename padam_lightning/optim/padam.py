"""Placeholder, replaced by the optimizer work."""

from torch.optim import Adam as Padam  # noqa: F401
