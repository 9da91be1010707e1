"""Optimizers: Padam (partially adaptive momentum estimation)."""

from padam_lightning.optim.padam import Padam

__all__ = ["Padam"]
