"""The fused Padam step for devices other than the CPU (CUDA): one ``torch.compile``'d graph.

The update is written with ``torch._foreach_*`` operations, which Inductor fuses horizontally into
a few kernels for all tensors of a dtype (this is how PyTorch's own compiled optimizers run). Every
hyperparameter and per-tensor step size travels in one small tensor on the parameters' device, and
tensor shapes are dynamic, so changing the learning rate, the betas or a non-special ``partial``
never recompiles. What selects among graphs is the power plan (``p = 0``, each ``p = 2^-k``
separately, since its ``k`` square roots are unrolled, and one graph for every other ``p``),
whether AMSGrad is on, and each parameter group's dtype and number of tensors. Each graph is
compiled once per process and Inductor caches it on disk; past dynamo's recompile limit (8 graphs
by default, ``torch._dynamo.config.recompile_limit``), for instance under a schedule that visits
many powers of two, dynamo warns and runs the update uncompiled, with the same results.

The same code runs on the CPU through Inductor's C++ backend, which is how the tests check it
without a GPU; on the CPU the native kernel (:mod:`._native`) is used instead because it builds once
for every shape.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

# Order of the scalar hyperparameters at the start of the packed tensor; step sizes follow.
_HYPER_NAMES = (
    "beta1",
    "one_minus_beta1",
    "beta2",
    "one_minus_beta2",
    "eps",
    "weight_decay",
    "decay",
    "grad_sign",
    "two_p",
)

_lock = threading.Lock()
_compiled: Callable[..., None] | None = None
_failure: str | None = None


def _update(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    hyper: Tensor,
    plan: int,
) -> None:
    """One Padam step on lists of tensors; see :class:`padam_lightning.Padam` for the math."""
    scalars = hyper.unbind()
    beta1, one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, decay, grad_sign, two_p = (
        scalars[: len(_HYPER_NAMES)]
    )
    step_sizes = list(scalars[len(_HYPER_NAMES) :])
    # decay is exactly 1 and weight_decay exactly 0 when unused, so these are no-ops then.
    torch._foreach_mul_(params, decay)
    grads = list(torch._foreach_mul(grads, grad_sign))
    torch._foreach_add_(grads, torch._foreach_mul(params, weight_decay))
    torch._foreach_mul_(exp_avgs, beta1)
    torch._foreach_add_(exp_avgs, torch._foreach_mul(grads, one_minus_beta1))
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_add_(
        exp_avg_sqs, torch._foreach_mul(torch._foreach_mul(grads, grads), one_minus_beta2)
    )
    vhat = exp_avg_sqs
    if max_exp_avg_sqs:
        torch._foreach_maximum_(max_exp_avg_sqs, exp_avg_sqs)
        vhat = max_exp_avg_sqs
    updates = torch._foreach_mul(exp_avgs, step_sizes)
    if plan != -1:  # p = 0 divides by (...)^0 = 1
        denom = list(torch._foreach_add(torch._foreach_sqrt(vhat), eps))
        if plan == -2:
            denom = [torch.pow(d, two_p) for d in denom]
        else:
            for _ in range(plan):
                denom = list(torch._foreach_sqrt(denom))
        updates = torch._foreach_div(updates, denom)
    torch._foreach_sub_(params, updates)


def _compiled_update() -> Callable[..., None] | None:
    """The compiled update, or None once compiling has failed in this process."""
    global _compiled
    with _lock:
        if _failure is not None:
            return None
        if _compiled is None:
            _compiled = torch.compile(_update, dynamic=True, fullgraph=True)
    return _compiled


def compiled_step(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    max_exp_avg_sqs: Sequence[Tensor] | None,
    step_sizes: Sequence[float],
    *,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decay: float,
    grad_sign: float,
    two_p: float,
    plan: int,
) -> bool:
    """Run the compiled step on tensors of one device and dtype.

    Takes the same arguments as :meth:`padam_lightning.optim._native.NativeKernel.step`.

    Returns:
        True if the step ran; False (after one warning) when compilation is unavailable, in which
        case the caller must run another implementation (compilation fails before the graph
        runs, so the tensors are unchanged then).
    """
    global _failure
    update = _compiled_update()
    if update is None:
        return False
    values = [beta1, 1.0 - beta1, beta2, 1.0 - beta2, eps, weight_decay, decay, grad_sign, two_p]
    # float32 carries the scalars exactly enough for float32 and half parameters, and works on
    # devices without float64 support.
    scalar_dtype = torch.float64 if params[0].dtype == torch.float64 else torch.float32
    hyper = torch.tensor([*values, *step_sizes], dtype=scalar_dtype).to(
        params[0].device, non_blocking=True
    )
    arguments: list[Any] = [
        list(params),
        list(grads),
        list(exp_avgs),
        list(exp_avg_sqs),
        list(max_exp_avg_sqs) if max_exp_avg_sqs is not None else [],
        hyper,
        plan,
    ]
    try:
        update(*arguments)
    except Exception as error:  # torch.compile raises many types; any means "not here"
        with _lock:
            first_line = (str(error).strip().splitlines() or [""])[0][:200]
            _failure = f"{type(error).__name__}: {first_line}"
        warnings.warn(
            f"Padam's compiled (fused) step is unavailable ({_failure}); using the multi-tensor "
            "(foreach) implementation instead.",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    return True
