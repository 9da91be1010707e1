"""Functional Padam: one entry point, three implementations that agree to round-off.

:func:`padam` advances the step counters, computes each tensor's step size once, and dispatches
to one of three implementations with one signature, as :mod:`torch.optim.adam` does:

* :func:`_single_tensor_padam`: a readable for-loop over tensors, the paper's released code
  (``denom ** (2 * partial)``); the reference the others are tested against.
* :func:`_multi_tensor_padam`: ``torch._foreach_*`` operations over the tensors of each device and
  dtype, with the power computed by square roots for ``p = 2^-k``; the default.
* :func:`_fused_padam`: the update as a ``torch.compile``'d graph, on every device (Inductor's C++
  backend on the CPU, Triton on GPUs), one per device, dtype, shapes and power computation.

The state of a float16 or bfloat16 parameter is float32 (see :class:`padam_lightning.Padam`);
every implementation computes such a parameter's update in float32 and rounds the result once.
"""

from __future__ import annotations

import functools
import math
import types
from collections.abc import Callable, Hashable, Sequence

import torch
from torch import Tensor

#: Up to this many square roots replace a general power (p = 1/2 ... 1/32); beyond, pow is cheaper.
_MAX_EXTRA_SQRTS = 4


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
    one. ``fused=True`` takes the compiled implementation, ``foreach=False`` (with ``fused``
    not True) the for-loop, anything else the multi-tensor one.

    Args:
        params: Parameters with gradients.
        grads: Their gradients (not modified).
        exp_avgs: ``m``; this and the other state tensors are float32 for float16/bfloat16
            parameters, else of the parameter's dtype.
        exp_avg_sqs: ``v``.
        max_exp_avg_sqs: ``vhat``; ignored (may be empty) without AMSGrad.
        state_steps: Step counters, scalar tensors (on the CPU, so reading them never waits).
        foreach: False for the for-loop.
        fused: True for the compiled implementation.
        amsgrad: Divide by ``vhat`` rather than ``v``.
        beta1: First-moment decay.
        beta2: Second-moment decay.
        lr: Learning rate.
        weight_decay: Weight decay.
        eps: Added to ``sqrt(vhat)`` before the power.
        partial: p.
        maximize: Maximize the objective instead.
        decoupled_weight_decay: Decay AdamW-style instead of adding an L2 gradient.

    Raises:
        ValueError: If ``foreach`` and ``fused`` are both True.
        Exception: With ``fused=True``, whatever ``torch.compile`` raises where it cannot compile
            the update (no C++ compiler, an unsupported device); there is no fallback to another
            implementation, as with torch's ``fused=True``.
    """
    if foreach and fused:
        raise ValueError("Padam: `foreach` and `fused` cannot both be True; choose one")
    if not params:
        return
    steps = [s.item() + 1 for s in state_steps]
    sizes = {t: lr * math.sqrt(1.0 - beta2**t) / (1.0 - beta1**t) for t in set(steps)}
    step_sizes = [sizes[t] for t in steps]

    implementation: Callable[..., None] = _multi_tensor_padam
    if fused:
        implementation = _fused_padam
    elif foreach is False:
        implementation = _single_tensor_padam
    implementation(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        max_exp_avg_sqs if amsgrad else [],
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
    # Counted once the update has run, so a step that raised (e.g. compiling) left no trace.
    torch._foreach_add_(state_steps, 1)


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
        exp_avg, exp_avg_sq = exp_avgs[i], exp_avg_sqs[i]
        # The state's dtype is the computing dtype: a float32 copy of a half parameter.
        theta = param.to(exp_avg.dtype)
        grad = grads[i].to(exp_avg.dtype)
        if maximize:
            grad = -grad
        if weight_decay != 0:
            if decoupled_weight_decay:
                theta.mul_(1.0 - lr * weight_decay)
            else:
                grad = grad.add(theta, alpha=weight_decay)
        exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        vhat = exp_avg_sq
        if amsgrad:
            vhat = torch.maximum(max_exp_avg_sqs[i], exp_avg_sq, out=max_exp_avg_sqs[i])
        denom = vhat.sqrt().add_(eps).pow_(2.0 * partial)
        theta.addcdiv_(exp_avg, denom, value=-step_sizes[i])
        if theta is not param:
            param.copy_(theta)


def _extra_sqrts(partial: float) -> int | None:
    """``k - 1`` when ``partial == 2^-k`` for ``1 <= k <= 5``, else None.

    Then ``(sqrt(vhat) + eps) ** (2 * partial)`` is ``k - 1`` square roots of ``sqrt(vhat) +
    eps``: exact to round-off and cheaper than a general power.
    """
    mantissa, exponent = math.frexp(partial)  # partial = mantissa * 2**exponent
    if mantissa == 0.5 and 0 <= -exponent <= _MAX_EXTRA_SQRTS:
        return -exponent
    return None


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
    extra_sqrts = _extra_sqrts(partial)
    for indices in _group_by_device_and_dtype(params):
        device_params = [params[i] for i in indices]
        device_exp_avgs = [exp_avgs[i] for i in indices]
        device_exp_avg_sqs = [exp_avg_sqs[i] for i in indices]
        state_dtype = device_exp_avgs[0].dtype
        # Half parameters: compute on float32 copies, written back once at the end.
        thetas = device_params
        device_grads: list[Tensor] | tuple[Tensor, ...] = [grads[i] for i in indices]
        if device_params[0].dtype != state_dtype:
            thetas = [p.to(state_dtype) for p in device_params]
            device_grads = [g.to(state_dtype) for g in device_grads]
        if maximize:
            device_grads = torch._foreach_neg(device_grads)
        if weight_decay != 0:
            if decoupled_weight_decay:
                torch._foreach_mul_(thetas, 1.0 - lr * weight_decay)
            else:
                device_grads = torch._foreach_add(device_grads, thetas, alpha=weight_decay)
        torch._foreach_lerp_(device_exp_avgs, device_grads, 1.0 - beta1)
        torch._foreach_mul_(device_exp_avg_sqs, beta2)
        torch._foreach_addcmul_(device_exp_avg_sqs, device_grads, device_grads, 1.0 - beta2)
        # Freed before the denominator is allocated, so that it reuses this memory (as torch's
        # foreach Adam does): fresh pages made the step 1.3x slower on the CPU.
        del device_grads
        vhat = device_exp_avg_sqs
        if amsgrad:
            vhat = [max_exp_avg_sqs[i] for i in indices]
            torch._foreach_maximum_(vhat, device_exp_avg_sqs)
        negative_sizes = [-step_sizes[i] for i in indices]
        if partial == 0:  # the denominator is 1
            torch._foreach_add_(thetas, torch._foreach_mul(device_exp_avgs, negative_sizes))
        else:
            denom = torch._foreach_sqrt(vhat)
            torch._foreach_add_(denom, eps)
            if extra_sqrts is None:
                torch._foreach_pow_(denom, 2.0 * partial)
            for _ in range(extra_sqrts or 0):
                torch._foreach_sqrt_(denom)
            torch._foreach_addcdiv_(thetas, device_exp_avgs, denom, negative_sizes)
        if thetas is not device_params:
            torch._foreach_copy_(device_params, thetas)


def _fused_padam(
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
    decoupled = decoupled_weight_decay and weight_decay != 0
    l2, decay = (0.0, 1.0 - lr * weight_decay) if decoupled else (weight_decay, 1.0)
    sign = -1.0 if maximize else 1.0
    hyper = [beta1, 1.0 - beta1, beta2, 1.0 - beta2, eps, l2, decay, sign, 2.0 * partial]
    # How the power is computed is part of the graph: none for p = 0, else as in the foreach path.
    power = -1 if partial == 0 else _extra_sqrts(partial)
    for indices in _group_by_device_and_dtype(params):
        param, state_dtype = params[indices[0]], exp_avgs[indices[0]].dtype
        shapes = tuple(params[i].shape for i in indices)
        update = _compiled_update((param.device, param.dtype, state_dtype, shapes, amsgrad, power))
        # Every value the step may change travels as data, so new values never recompile.
        scalars = torch.tensor([*hyper, *(step_sizes[i] for i in indices)], dtype=state_dtype)
        update(
            [params[i] for i in indices],
            [grads[i] for i in indices],
            [exp_avgs[i] for i in indices],
            [exp_avg_sqs[i] for i in indices],
            [max_exp_avg_sqs[i] for i in indices] if amsgrad else [],
            scalars.to(param.device, non_blocking=True),
            power,
        )


def _update(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    scalars: Tensor,
    power: int | None,
) -> None:
    """The update that :func:`_fused_padam` compiles; ``scalars`` and ``power`` as built there.

    Written with ``torch._foreach_*`` operations, which Inductor fuses into one loop per tensor
    on the CPU and a few kernels for all tensors on GPUs (as torch's compiled optimizers).
    ``power`` is -1 for p = 0 (no denominator), ``k`` for ``k`` further square roots, None for a
    general power (which on the CPU costs as much as the rest of the update).
    """
    beta1, one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, decay, grad_sign, two_p = (
        scalars[:9].unbind()
    )
    step_sizes = list(scalars[9:].unbind())
    state_dtype = exp_avgs[0].dtype
    half = params[0].dtype != state_dtype  # then compute on float32 copies (fused in the graph)
    thetas = [p.to(state_dtype) for p in params] if half else params
    # decay is exactly 1 and weight_decay exactly 0 when unused, so these are no-ops then.
    torch._foreach_mul_(thetas, decay)
    g = torch._foreach_mul([grad.to(state_dtype) for grad in grads], grad_sign)
    torch._foreach_add_(g, torch._foreach_mul(thetas, weight_decay))
    torch._foreach_mul_(exp_avgs, beta1)
    torch._foreach_add_(exp_avgs, torch._foreach_mul(g, one_minus_beta1))
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_add_(exp_avg_sqs, torch._foreach_mul(torch._foreach_mul(g, g), one_minus_beta2))
    vhat = exp_avg_sqs
    if max_exp_avg_sqs:
        torch._foreach_maximum_(max_exp_avg_sqs, exp_avg_sqs)
        vhat = max_exp_avg_sqs
    updates = torch._foreach_mul(exp_avgs, step_sizes)
    if power != -1:
        # A list of eps: with one tensor scalar, Inductor's _foreach_add rounds it to float32.
        denom = torch._foreach_add(torch._foreach_sqrt(vhat), [eps] * len(vhat))
        if power is None:
            denom = tuple(torch.pow(d, two_p) for d in denom)
        for _ in range(power or 0):
            denom = torch._foreach_sqrt(denom)
        updates = torch._foreach_div(updates, denom)
    torch._foreach_sub_(thetas, updates)
    if half:
        torch._foreach_copy_(params, thetas)


@functools.cache
def _compiled_update(kind: tuple[Hashable, ...]) -> Callable[..., None]:
    """The compiled update for one kind of call: device, dtypes, shapes, AMSGrad, power.

    Each kind gets its own copy of :func:`_update`'s code: dynamo keeps its graphs per code
    object and raises (with ``fullgraph=True``) past its recompile limit of 8, which parameter
    groups of many sizes or a schedule over many p would otherwise reach. Shapes are static, as
    a model's are; dynamic ones compiled several times slower here (minutes for ResNet-18).
    """
    code = _update.__code__.replace()  # a new code object: dynamo's cache starts empty
    update = types.FunctionType(code, _update.__globals__, _update.__name__)
    return torch.compile(update, fullgraph=True, dynamic=False)


def _group_by_device_and_dtype(tensors: Sequence[Tensor]) -> list[list[int]]:
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, tensor in enumerate(tensors):
        groups.setdefault((tensor.device, tensor.dtype), []).append(i)
    return list(groups.values())
