r"""The Padam optimizer (partially adaptive momentum estimation)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, overload

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, ParamsT

from padam_lightning.errors import UserError
from padam_lightning.optim.functional import padam

_DEFAULTS: dict[str, Any] = {
    "lr": 0.1,
    "betas": (0.9, 0.999),
    "eps": 1e-8,
    "weight_decay": 0.0,
    "partial": 0.125,
    "amsgrad": True,
    "decoupled_weight_decay": False,
    "maximize": False,
    "foreach": None,
    "fused": None,
}


class InvalidHyperparameterError(UserError, ValueError):
    """A Padam hyperparameter outside its allowed range (a ValueError, as in torch.optim)."""


class Padam(Optimizer):
    r"""Padam: partially adaptive momentum estimation (Chen & Gu, arXiv:1806.06763).

    For each parameter :math:`\theta`, with gradient :math:`\nabla f_t(\theta_{t-1})` at step
    :math:`t = 1, 2, \dots` and :math:`m_0 = v_0 = \hat v_0 = 0`:

    .. math::
        \begin{aligned}
            g_t &\leftarrow \nabla f_t(\theta_{t-1}) + \lambda \theta_{t-1}
                && \text{(coupled L2 weight decay)} \\
            m_t &\leftarrow \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
            v_t &\leftarrow \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
            \hat v_t &\leftarrow \max(\hat v_{t-1}, v_t)
                && (\hat v_t \leftarrow v_t \text{ if not amsgrad}) \\
            \theta_t &\leftarrow \theta_{t-1} - \gamma \,
                \frac{\sqrt{1 - \beta_2^t}}{1 - \beta_1^t} \,
                \frac{m_t}{\bigl(\sqrt{\hat v_t} + \epsilon\bigr)^{2p}}
        \end{aligned}

    with learning rate :math:`\gamma`, weight decay :math:`\lambda` and partially adaptive
    parameter :math:`p \in [0, 1/2]` (``partial``). ``maximize`` negates the gradient first. With
    ``decoupled_weight_decay`` the decay is AdamW's instead: :math:`\theta_{t-1} \leftarrow
    (1 - \gamma\lambda)\theta_{t-1}` before the update, and :math:`g_t` has no :math:`\lambda`
    term.

    This is the update of the authors' released code (github.com/uclaml/Padam), which produced the
    paper's results. Algorithm 1 of the paper writes it as :math:`\theta_{t+1} = \theta_t -
    \alpha_t m_t / \hat v_t^{\,p}` (plus a projection for constrained problems); the code differs
    in two ways kept here: it multiplies the step by Adam's bias correction
    :math:`\sqrt{1 - \beta_2^t} / (1 - \beta_1^t)`, and it adds :math:`\epsilon` to
    :math:`\sqrt{\hat v_t}` *before* raising to the power :math:`2p`. The two agree when the bias
    correction is dropped and :math:`\epsilon = 0`.

    Special cases: :math:`p = 1/2` is AMSGrad (Adam when ``amsgrad=False``), written with
    :math:`\epsilon` outside the bias correction as above (torch's Adam adds :math:`\epsilon` to
    :math:`\sqrt{\hat v_t / (1 - \beta_2^t)}`, so the two agree exactly for :math:`\epsilon = 0`).
    :math:`p = 0` is SGD with exponential-moving-average momentum and the bias-corrected step
    :math:`\gamma \sqrt{1 - \beta_2^t} / (1 - \beta_1^t)`.

    Every hyperparameter may differ per parameter group and may be changed between steps through
    :attr:`param_groups` (for instance a schedule on ``group["partial"]``); nothing is rebuilt
    when it changes (the compiled path off the CPU compiles one graph for :math:`p = 0`, one for
    each :math:`p = 2^{-k}` and one for all other values). For :math:`p = 0` and
    :math:`p = 2^{-k}` (the paper's 1/4, 1/8, 1/16) the power is computed with square roots, which
    is exact and cheap; other values use a general power, which costs more on the CPU (about 1.5x
    the step time).

    Implementations: ``foreach=False`` runs a readable for-loop (the released code);
    ``foreach=True`` uses ``torch._foreach_*`` operations; ``fused=True`` makes one pass over
    memory per step: a native C++ kernel on the CPU (built on first use with the system's C++
    compiler in a few seconds, then cached on disk) and a ``torch.compile``'d graph on other
    devices. By default the fused implementation is used on the CPU and the multi-tensor one
    elsewhere; where the fused one is unavailable, the multi-tensor one runs after one warning.
    All agree to round-off.

    Mixed precision: fp16/bf16 parameters are supported; the state has the parameters' dtype, and
    the denominator is computed in fp32 (the fused paths compute everything in fp32), because in
    fp16 ``eps = 1e-8`` would round to zero.
    With ``torch.amp.GradScaler`` (Lightning's ``precision="16-mixed"``), ``scaler.step(opt)``
    unscales the gradients first and skips the step, leaving the state untouched, when a gradient
    is not finite.

    The state of each parameter is ``step`` (a float32 scalar tensor on the CPU), ``exp_avg``
    (:math:`m`), ``exp_avg_sq`` (:math:`v`) and, with AMSGrad, ``max_exp_avg_sq``
    (:math:`\hat v`), as in :class:`torch.optim.Adam`.

    Args:
        params: Parameters (or named parameters, or parameter-group dicts) to optimize.
        lr: Learning rate :math:`\gamma` (the paper uses 0.1).
        betas: :math:`(\beta_1, \beta_2)`, the moving-average coefficients, each in [0, 1).
        eps: :math:`\epsilon`, added to :math:`\sqrt{\hat v_t}` before the power.
        weight_decay: :math:`\lambda`, L2 penalty (or decoupled decay, see below).
        partial: :math:`p` in [0, 1/2]; 1/2 is AMSGrad, 0 is SGD with momentum.
        amsgrad: Divide by the running maximum of :math:`v_t` (the paper's algorithm) rather
            than by :math:`v_t`.
        decoupled_weight_decay: Decay the weights AdamW-style instead of adding
            :math:`\lambda\theta` to the gradient.
        maximize: Maximize the objective instead of minimizing it.
        foreach: True for the multi-tensor implementation, False for the for-loop; None chooses.
        fused: True for the fused implementation; None chooses.

    Raises:
        InvalidHyperparameterError: A ``ValueError`` (and :class:`~padam_lightning.errors.
            UserError`) naming the hyperparameter, its value and the allowed range.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> optimizer = Padam(model.parameters(), lr=0.1, partial=0.125, weight_decay=5e-4)
        >>> model(torch.ones(1, 4)).sum().backward()
        >>> optimizer.step()
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        partial: float = 0.125,
        amsgrad: bool = True,
        decoupled_weight_decay: bool = False,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "partial": partial,
            "amsgrad": amsgrad,
            "decoupled_weight_decay": decoupled_weight_decay,
            "maximize": maximize,
            "foreach": foreach,
            "fused": fused,
        }
        check_hyperparameters(defaults)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group, checking its hyperparameters (see :class:`Padam`)."""
        super().add_param_group(param_group)
        try:
            check_hyperparameters(self.param_groups[-1])
        except InvalidHyperparameterError:
            self.param_groups.pop()
            raise

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Checkpoints written before a flag existed lack it: give it its default.
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in _DEFAULTS.items():
                group.setdefault(key, value)
            for p in group["params"]:
                p_state = self.state.get(p, {})
                if p_state and not torch.is_tensor(p_state.get("step")):
                    p_state["step"] = torch.tensor(
                        float(p_state.get("step", 0)), dtype=torch.float32
                    )

    def _init_group(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        exp_avgs: list[Tensor],
        exp_avg_sqs: list[Tensor],
        max_exp_avg_sqs: list[Tensor],
        state_steps: list[Tensor],
    ) -> None:
        amsgrad = group["amsgrad"]
        for p in group["params"]:
            grad = p.grad
            if grad is None:
                continue
            if grad.is_sparse:
                raise UserError(
                    f"Padam does not support sparse gradients (a parameter of shape "
                    f"{tuple(p.shape)} has one); make its gradient dense, e.g. with "
                    "torch.nn.Embedding(..., sparse=False)"
                )
            state = self.state[p]
            if not state:
                # The counter lives on the CPU so that reading it never waits for a GPU.
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if amsgrad and "max_exp_avg_sq" not in state:
                state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            step = state["step"]
            if not step.is_cpu:  # load_state_dict may have moved it
                step = state["step"] = step.to("cpu", torch.float32)
            state_steps.append(step)
            if p.is_complex():
                # Real and imaginary parts are treated as separate real parameters.
                params.append(torch.view_as_real(p))
                grads.append(torch.view_as_real(grad))
                exp_avgs.append(torch.view_as_real(state["exp_avg"]))
                exp_avg_sqs.append(torch.view_as_real(state["exp_avg_sq"]))
                if amsgrad:
                    max_exp_avg_sqs.append(torch.view_as_real(state["max_exp_avg_sq"]))
                continue
            params.append(p)
            grads.append(grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            if amsgrad:
                max_exp_avg_sqs.append(state["max_exp_avg_sq"])

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Perform one optimization step.

        Args:
            closure: Re-evaluates the model and returns the loss (optional).

        Returns:
            The closure's loss, or None without a closure.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            # Schedules may have changed the group since the last step.
            check_hyperparameters(group)
            params: list[Tensor] = []
            grads: list[Tensor] = []
            exp_avgs: list[Tensor] = []
            exp_avg_sqs: list[Tensor] = []
            max_exp_avg_sqs: list[Tensor] = []
            state_steps: list[Tensor] = []
            self._init_group(
                group, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps
            )
            beta1, beta2 = group["betas"]
            padam(
                params,
                grads,
                exp_avgs,
                exp_avg_sqs,
                max_exp_avg_sqs,
                state_steps,
                foreach=group["foreach"],
                fused=group["fused"],
                amsgrad=group["amsgrad"],
                beta1=float(beta1),
                beta2=float(beta2),
                lr=float(group["lr"]),
                weight_decay=float(group["weight_decay"]),
                eps=float(group["eps"]),
                partial=float(group["partial"]),
                maximize=group["maximize"],
                decoupled_weight_decay=group["decoupled_weight_decay"],
            )
        return loss


def check_hyperparameters(group: dict[str, Any]) -> None:
    """Check a parameter group's hyperparameters, in torch.optim's style.

    Args:
        group: A dict with ``lr``, ``betas``, ``eps``, ``weight_decay``, ``partial`` and the
            boolean flags.

    Raises:
        InvalidHyperparameterError: Naming the first bad value and its allowed range.
    """
    lr = _real(group["lr"], "learning rate")
    if not lr >= 0.0:
        raise InvalidHyperparameterError(f"Invalid learning rate: {lr} (expected lr >= 0)")
    eps = _real(group["eps"], "eps value")
    if not eps >= 0.0:
        raise InvalidHyperparameterError(f"Invalid eps value: {eps} (expected eps >= 0)")
    weight_decay = _real(group["weight_decay"], "weight_decay value")
    if not weight_decay >= 0.0:
        raise InvalidHyperparameterError(
            f"Invalid weight_decay value: {weight_decay} (expected weight_decay >= 0)"
        )
    betas = group["betas"]
    if not isinstance(betas, tuple | list) or len(betas) != 2:
        raise InvalidHyperparameterError(
            f"Invalid betas: {betas!r} (expected a pair (beta1, beta2) with 0 <= beta < 1)"
        )
    for index, beta in enumerate(betas):
        value = _real(beta, f"beta parameter at index {index}")
        if not 0.0 <= value < 1.0:
            raise InvalidHyperparameterError(
                f"Invalid beta parameter at index {index}: {value} "
                f"(expected 0 <= betas[{index}] < 1)"
            )
    partial = _real(group["partial"], "partial value")
    if not 0.0 <= partial <= 0.5:
        raise InvalidHyperparameterError(
            f"Invalid partial value: {partial} (expected 0 <= partial <= 0.5)"
        )
    if group["foreach"] and group["fused"]:
        raise InvalidHyperparameterError(
            "Invalid foreach and fused values: True, True (expected at most one of them True)"
        )


def _real(value: Any, what: str) -> float:
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidHyperparameterError(f"Invalid {what}: {value!r} (expected a real number)")
    return float(value)
