"""Functional Padam: one entry point, three implementations that agree to round-off.

:func:`padam` advances the step counters, computes each tensor's step size once, and dispatches
to one of three implementations with one signature:

* :func:`_single_tensor_padam`: a readable for-loop over tensors, the paper's released code
  (``denom ** (2 * partial)``); the reference the others are tested against.
* :func:`_multi_tensor_padam`: ``torch._foreach_*`` operations over all tensors, with the power
  computed by square roots for ``p = 2^-k``; works on every device.
* :func:`_fused_padam`: one pass over memory per step. On the CPU a native C++ kernel
  (:mod:`._native`, built once and cached on disk); on other devices a ``torch.compile``'d graph
  (:mod:`._compiled`). Falls back to the multi-tensor path, with one warning, where neither is
  available.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from padam_lightning.optim import _compiled, _native

# Power plans shared with the native kernel and the compiled graph.
PLAN_ONE = -1  # p = 0: the denominator is 1
PLAN_POW = -2  # any other p: a general power
MAX_SQRT_PLAN = 7  # plans 0..7 are p = 1/2 ... 1/256


def power_plan(partial: float) -> int:
    """How ``(sqrt(vhat) + eps) ** (2 * partial)`` is computed for this ``partial``.

    Args:
        partial: The partially adaptive parameter p in [0, 1/2].

    Returns:
        :data:`PLAN_ONE` for ``p = 0``; ``k >= 0`` when ``p = 2^-(k+1)`` (then the power is ``k``
        square roots of ``sqrt(vhat) + eps``); :data:`PLAN_POW` otherwise.
    """
    if partial == 0:
        return PLAN_ONE
    for plan in range(MAX_SQRT_PLAN + 1):
        if partial == 2.0 ** -(plan + 1):
            return plan
    return PLAN_POW


class _Implementation(Protocol):
    def __call__(
        self,
        params: list[Tensor],
        grads: list[Tensor],
        exp_avgs: list[Tensor],
        exp_avg_sqs: list[Tensor],
        max_exp_avg_sqs: list[Tensor],
        step_sizes: list[float],
        *,
        amsgrad: bool,
        beta1: float,
        beta2: float,
        lr: float,
        weight_decay: float,
        eps: float,
        partial: float,
        maximize: bool,
        decoupled_weight_decay: bool,
    ) -> None: ...


def padam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    foreach: bool | None = None,
    fused: bool | None = None,
    amsgrad: bool,
    beta1: float,
    beta2: float,
    lr: float,
    weight_decay: float,
    eps: float,
    partial: float,
    maximize: bool,
    decoupled_weight_decay: bool,
) -> None:
    """Perform one Padam step on lists of tensors, in place.

    See :class:`padam_lightning.Padam` for the algorithm. Each state step counter is advanced by
    one first. The implementation is chosen as follows: ``fused=True`` takes the fused one,
    ``foreach=True`` the multi-tensor one, ``foreach=False`` (with ``fused`` not True) the
    for-loop, ``fused=False`` alone the multi-tensor one, and neither (the default) the fastest
    for each device: fused on the CPU, multi-tensor elsewhere.

    Args:
        params: Parameters with gradients.
        grads: Their gradients (not modified).
        exp_avgs: First moments ``m``.
        exp_avg_sqs: Second moments ``v``.
        max_exp_avg_sqs: Running maxima ``vhat`` of ``v``; ignored (may be empty) without
            AMSGrad.
        state_steps: Step counters, scalar tensors (on the CPU for speed).
        foreach: Use the multi-tensor implementation.
        fused: Use the fused implementation.
        amsgrad: Divide by the running maximum of ``v`` instead of ``v``.
        beta1: First-moment decay.
        beta2: Second-moment decay.
        lr: Learning rate.
        weight_decay: Weight decay.
        eps: Added to ``sqrt(vhat)`` before the power.
        partial: The partially adaptive parameter p.
        maximize: Maximize the objective instead.
        decoupled_weight_decay: Decay weights AdamW-style instead of adding an L2 gradient.

    Raises:
        ValueError: If ``foreach`` and ``fused`` are both True.
    """
    if foreach and fused:
        raise ValueError("Padam: `foreach` and `fused` cannot both be True; choose one")
    if not params:
        return
    torch._foreach_add_(state_steps, 1)
    steps = [s.item() for s in state_steps]
    sizes: dict[float, float] = {}
    for t in steps:
        if t not in sizes:
            sizes[t] = lr * math.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)
    step_sizes = [sizes[t] for t in steps]

    implementation: _Implementation
    if fused:
        implementation = _fused_padam
    elif foreach:
        implementation = _multi_tensor_padam
    elif foreach is False:
        implementation = _single_tensor_padam
    elif fused is False:
        implementation = _multi_tensor_padam
    else:
        implementation = _default_padam
    implementation(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        max_exp_avg_sqs,
        step_sizes,
        amsgrad=amsgrad,
        beta1=beta1,
        beta2=beta2,
        lr=lr,
        weight_decay=weight_decay,
        eps=eps,
        partial=partial,
        maximize=maximize,
        decoupled_weight_decay=decoupled_weight_decay,
    )


def _single_tensor_padam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    step_sizes: list[float],
    *,
    amsgrad: bool,
    beta1: float,
    beta2: float,
    lr: float,
    weight_decay: float,
    eps: float,
    partial: float,
    maximize: bool,
    decoupled_weight_decay: bool,
) -> None:
    for i, param in enumerate(params):
        grad = -grads[i] if maximize else grads[i]
        exp_avg, exp_avg_sq = exp_avgs[i], exp_avg_sqs[i]
        if weight_decay != 0:
            if decoupled_weight_decay:
                param.mul_(1.0 - lr * weight_decay)
            else:
                grad = grad.add(param, alpha=weight_decay)
        exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        if amsgrad:
            torch.maximum(max_exp_avg_sqs[i], exp_avg_sq, out=max_exp_avg_sqs[i])
            vhat = max_exp_avg_sqs[i]
        else:
            vhat = exp_avg_sq
        denom = _at_least_float32(vhat).sqrt().add_(eps).pow_(2.0 * partial)
        param.addcdiv_(exp_avg, denom, value=-step_sizes[i])


def _multi_tensor_padam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    step_sizes: list[float],
    *,
    amsgrad: bool,
    beta1: float,
    beta2: float,
    lr: float,
    weight_decay: float,
    eps: float,
    partial: float,
    maximize: bool,
    decoupled_weight_decay: bool,
) -> None:
    for indices in _group_by_device_and_dtype(params).values():
        device_params = [params[i] for i in indices]
        device_grads: list[Tensor] | tuple[Tensor, ...] = [grads[i] for i in indices]
        device_exp_avgs = [exp_avgs[i] for i in indices]
        device_exp_avg_sqs = [exp_avg_sqs[i] for i in indices]
        if maximize:
            device_grads = torch._foreach_neg(device_grads)
        if weight_decay != 0:
            if decoupled_weight_decay:
                torch._foreach_mul_(device_params, 1.0 - lr * weight_decay)
            elif maximize:  # already a copy: add in place
                torch._foreach_add_(device_grads, device_params, alpha=weight_decay)
            else:
                device_grads = torch._foreach_add(device_grads, device_params, alpha=weight_decay)
        torch._foreach_mul_(device_exp_avgs, beta1)
        torch._foreach_add_(device_exp_avgs, device_grads, alpha=1.0 - beta1)
        torch._foreach_mul_(device_exp_avg_sqs, beta2)
        torch._foreach_addcmul_(device_exp_avg_sqs, device_grads, device_grads, 1.0 - beta2)
        vhat = device_exp_avg_sqs
        if amsgrad:
            vhat = [max_exp_avg_sqs[i] for i in indices]
            torch._foreach_maximum_(vhat, device_exp_avg_sqs)
        negative_sizes = [-step_sizes[i] for i in indices]
        plan = power_plan(partial)
        if plan == PLAN_ONE:
            updates = torch._foreach_mul(device_exp_avgs, negative_sizes)
            torch._foreach_add_(device_params, updates)
            continue
        denom = torch._foreach_sqrt([_at_least_float32(t) for t in vhat])
        torch._foreach_add_(denom, eps)
        if plan == PLAN_POW:
            torch._foreach_pow_(denom, 2.0 * partial)
        else:
            for _ in range(plan):
                torch._foreach_sqrt_(denom)
        torch._foreach_addcdiv_(device_params, device_exp_avgs, denom, negative_sizes)


def _run_fused(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    step_sizes: list[float],
    *,
    amsgrad: bool,
    beta1: float,
    beta2: float,
    lr: float,
    weight_decay: float,
    eps: float,
    partial: float,
    maximize: bool,
    decoupled_weight_decay: bool,
    compile_off_cpu: bool,
) -> None:
    plan = power_plan(partial)
    decoupled = decoupled_weight_decay and weight_decay != 0
    scalars: dict[str, Any] = {
        "beta1": beta1,
        "beta2": beta2,
        "eps": eps,
        "weight_decay": 0.0 if decoupled else weight_decay,
        "decay": 1.0 - lr * weight_decay if decoupled else 1.0,
        "grad_sign": -1.0 if maximize else 1.0,
        "two_p": 2.0 * partial,
        "plan": plan,
    }
    leftover: list[int] = []
    for (device, dtype), indices in _group_by_device_and_dtype(params).items():
        step: Callable[..., bool | None]
        if device.type == "cpu":
            kernel = _native.native_kernel()
            if kernel is None or dtype not in kernel.dtypes:
                leftover += indices
                continue
            # The kernel treats each tensor as a flat array; odd layouts go the foreach way.
            usable = [
                i
                for i in indices
                if _native.native_supports(
                    params[i],
                    grads[i],
                    (exp_avgs[i], exp_avg_sqs[i], max_exp_avg_sqs[i])
                    if amsgrad
                    else (exp_avgs[i], exp_avg_sqs[i]),
                )
            ]
            if len(usable) < len(indices):
                leftover += sorted(set(indices) - set(usable))
            indices, step = usable, kernel.step
        elif compile_off_cpu:
            step = _compiled.compiled_step
        else:
            leftover += indices
            continue
        if not indices:
            continue
        ran = step(
            [params[i] for i in indices],
            [grads[i] for i in indices],
            [exp_avgs[i] for i in indices],
            [exp_avg_sqs[i] for i in indices],
            [max_exp_avg_sqs[i] for i in indices] if amsgrad else None,
            [step_sizes[i] for i in indices],
            **scalars,
        )
        if ran is False:
            leftover += indices
    if leftover:
        leftover.sort()
        _multi_tensor_padam(
            [params[i] for i in leftover],
            [grads[i] for i in leftover],
            [exp_avgs[i] for i in leftover],
            [exp_avg_sqs[i] for i in leftover],
            [max_exp_avg_sqs[i] for i in leftover] if amsgrad else [],
            [step_sizes[i] for i in leftover],
            amsgrad=amsgrad,
            beta1=beta1,
            beta2=beta2,
            lr=lr,
            weight_decay=weight_decay,
            eps=eps,
            partial=partial,
            maximize=maximize,
            decoupled_weight_decay=decoupled_weight_decay,
        )


# The fused path everywhere: the native kernel on the CPU, torch.compile elsewhere (fused=True).
_fused_padam: _Implementation = functools.partial(_run_fused, compile_off_cpu=True)
# The default: fused where that needs no torch.compile (the CPU), multi-tensor elsewhere, because
# compiling costs time up front that short runs and tests should not pay unless asked to.
_default_padam: _Implementation = functools.partial(_run_fused, compile_off_cpu=False)


def _at_least_float32(tensor: Tensor) -> Tensor:
    # In float16, eps = 1e-8 rounds to 0 and a small v to 0: the denominator is computed in
    # float32 so that it stays positive (the fused paths compute everything in float32).
    if tensor.dtype in (torch.float16, torch.bfloat16):
        return tensor.float()
    return tensor


def _group_by_device_and_dtype(
    tensors: Sequence[Tensor],
) -> dict[tuple[torch.device, torch.dtype], list[int]]:
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, tensor in enumerate(tensors):
        groups.setdefault((tensor.device, tensor.dtype), []).append(i)
    return groups
