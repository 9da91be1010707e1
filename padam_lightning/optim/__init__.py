"""Optimizers: Padam (partially adaptive momentum estimation)."""

from padam_lightning.optim.functional import padam
from padam_lightning.optim.padam import InvalidHyperparameterError, Padam

__all__ = ["InvalidHyperparameterError", "Padam", "padam"]
