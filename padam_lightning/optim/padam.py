r"""The Padam optimizer (partially adaptive momentum estimation)."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any, NamedTuple, overload

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, ParamsT

from padam_lightning.optim.functional import padam

#: Flags added after the first release, with the values that older checkpoints meant.
_LATER_FLAGS: dict[str, Any] = {
    "decoupled_weight_decay": False,
    "maximize": False,
    "foreach": None,
    "fused": None,
}

#: Padam raises plain ``ValueError``s (torch's convention); this name stays for older callers.
InvalidHyperparameterError = ValueError

_HALF = (torch.float16, torch.bfloat16)


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
    :attr:`param_groups` (for instance a schedule on ``group["partial"]``); nothing is rebuilt or
    recompiled when it changes. Each may be given as any real number torch's optimizers accept: a
    Python or NumPy int or float, or a one-element tensor (NumPy values are stored as Python
    floats, so checkpoints load with ``weights_only=True``; tensors are kept and read once per
    step, which for a GPU tensor is one synchronization each: prefer floats or CPU tensors).

    Implementations, as in :mod:`torch.optim`: ``foreach=False`` runs a readable for-loop (the
    released code); the default (``foreach`` None or True) uses ``torch._foreach_*`` operations,
    computing the power for :math:`p = 2^{-k}` (the paper's 1/4, 1/8, 1/16) with square roots,
    which is exact and cheap, and a general power otherwise; ``fused=True`` runs the update as a
    ``torch.compile``'d graph on every device, the CPU included (Inductor's C++ backend needs a
    C++ compiler). The first fused step compiles (seconds to a minute); a graph serves one
    device, dtype, set of shapes, ``amsgrad`` value and way of computing the power (p = 0, each
    :math:`2^{-k}` down to 1/32, any other p), whatever the other values. Compilation errors are
    raised, as torch's ``fused=True`` raises where it is unsupported; nothing falls back to
    another implementation. All agree to round-off.

    Low precision: the state of a float16 or bfloat16 parameter is float32, and every
    implementation computes its update in float32 (from float32 copies of the parameter and its
    gradient) and rounds the new parameter once. In half precision :math:`v` of a gradient of
    1e-3 (1e-9) and ``eps = 1e-8`` round to zero, which would blow up the step. The cost: 4 bytes
    per number for each state tensor instead of 2, so 12 bytes of state per parameter with
    AMSGrad (as for a float32 parameter) instead of 6; the for-loop and multi-tensor paths also
    hold float32 copies of a parameter (and its gradient) while updating it. Other dtypes keep
    the parameter's dtype. ``load_state_dict`` keeps float32 state float32 (torch would cast it
    to the parameter's dtype) and widens half state saved by older versions.
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
        foreach: False for the for-loop; True or None (the default) for the multi-tensor one.
        fused: True for the compiled implementation.

    Raises:
        ValueError: Naming the hyperparameter, its value and the allowed range, as torch.optim's
            optimizers do (here and at each step, for values a schedule set).

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
        except ValueError:
            self.param_groups.pop()
            raise

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Checkpoints written before a flag existed lack it: give it its default.
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in _LATER_FLAGS.items():
                group.setdefault(key, value)
            for p in group["params"]:
                p_state = self.state.get(p, {})
                if p_state and not torch.is_tensor(p_state.get("step")):
                    p_state["step"] = torch.tensor(
                        float(p_state.get("step", 0)), dtype=torch.float32
                    )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load the state as :class:`torch.optim.Optimizer` does, keeping half parameters' float32.

        torch casts every state tensor to its parameter's dtype, which would round the float32
        state of a float16/bfloat16 parameter to half precision (and a small ``v`` to zero);
        that state is taken again from ``state_dict`` in float32 (half state saved by older
        versions is widened).
        """
        super().load_state_dict(state_dict)
        saved = state_dict["state"]
        for saved_group, group in zip(state_dict["param_groups"], self.param_groups, strict=True):
            for param_id, p in zip(saved_group["params"], group["params"], strict=True):
                if p.dtype not in _HALF or param_id not in saved:
                    continue
                for key, value in saved[param_id].items():
                    if key != "step" and torch.is_tensor(value):
                        self.state[p][key] = value.to(p.device, torch.float32, copy=True)

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
                raise RuntimeError(
                    f"Padam does not support sparse gradients (a parameter of shape "
                    f"{tuple(p.shape)} has one); make its gradient dense, e.g. with "
                    "torch.nn.Embedding(..., sparse=False)"
                )
            state = self.state[p]
            # Half parameters keep float32 state: in half, v and eps underflow (see the class).
            dtype = torch.float32 if p.dtype in _HALF else p.dtype
            if not state:
                # The counter lives on the CPU so that reading it never waits for a GPU.
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p, dtype=dtype)
                state["exp_avg_sq"] = torch.zeros_like(p, dtype=dtype)
            if amsgrad and "max_exp_avg_sq" not in state:
                state["max_exp_avg_sq"] = torch.zeros_like(p, dtype=dtype)
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
            values = check_hyperparameters(group)
            params: list[Tensor] = []
            grads: list[Tensor] = []
            exp_avgs: list[Tensor] = []
            exp_avg_sqs: list[Tensor] = []
            max_exp_avg_sqs: list[Tensor] = []
            state_steps: list[Tensor] = []
            self._init_group(
                group, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps
            )
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
                beta1=values.beta1,
                beta2=values.beta2,
                lr=values.lr,
                weight_decay=values.weight_decay,
                eps=values.eps,
                partial=values.partial,
                maximize=group["maximize"],
                decoupled_weight_decay=group["decoupled_weight_decay"],
            )
        return loss


class Hyperparameters(NamedTuple):
    """A parameter group's real-valued hyperparameters as Python floats."""

    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    partial: float


def check_hyperparameters(group: dict[str, Any]) -> Hyperparameters:
    """Check a parameter group's hyperparameters, in torch.optim's style, and read them.

    Accepts what torch's optimizers accept for each real number: Python and NumPy ints and
    floats, and one-element tensors. NumPy values are replaced in ``group`` by Python floats.
    Each tensor is read once (``Tensor.item``), so a step reads it once.

    Args:
        group: A dict with ``lr``, ``betas``, ``eps``, ``weight_decay``, ``partial`` and the
            boolean flags.

    Returns:
        The values, as floats.

    Raises:
        ValueError: Naming the first bad value and its allowed range.
    """
    for key in ("lr", "eps", "weight_decay", "partial"):
        group[key] = _from_numpy(group[key])
    lr = _real(group["lr"], "learning rate")
    if not lr >= 0.0:
        raise ValueError(f"Invalid learning rate: {lr} (expected lr >= 0)")
    eps = _real(group["eps"], "eps value")
    if not eps >= 0.0:
        raise ValueError(f"Invalid eps value: {eps} (expected eps >= 0)")
    weight_decay = _real(group["weight_decay"], "weight_decay value")
    if not weight_decay >= 0.0:
        raise ValueError(f"Invalid weight_decay value: {weight_decay} (expected weight_decay >= 0)")
    betas = group["betas"]
    try:
        pair = None if isinstance(betas, str | bytes) else list(betas)
    except TypeError:  # not iterable (a number, a 0-dim tensor)
        pair = None
    if pair is None or len(pair) != 2:
        raise ValueError(
            f"Invalid betas: {betas!r} (expected a pair (beta1, beta2) with 0 <= beta < 1)"
        )
    if _is_numpy(betas) or any(_is_numpy(beta) for beta in pair):
        pair = [_from_numpy(beta) for beta in pair]
        group["betas"] = tuple(pair)
    beta_values = []
    for index, beta in enumerate(pair):
        value = _real(beta, f"beta parameter at index {index}")
        beta_values.append(value)
        if not 0.0 <= value < 1.0:
            raise ValueError(
                f"Invalid beta parameter at index {index}: {value} "
                f"(expected 0 <= betas[{index}] < 1)"
            )
    partial = _real(group["partial"], "partial value")
    if not 0.0 <= partial <= 0.5:
        raise ValueError(f"Invalid partial value: {partial} (expected 0 <= partial <= 0.5)")
    if group["foreach"] and group["fused"]:
        raise ValueError(
            "Invalid foreach and fused values: True, True (expected at most one of them True)"
        )
    return Hyperparameters(lr, beta_values[0], beta_values[1], eps, weight_decay, partial)


def _is_numpy(value: Any) -> bool:
    # NumPy scalars and arrays, without importing NumPy (torch does not require it).
    return type(value).__module__ == "numpy"


def _from_numpy(value: Any) -> Any:
    """A one-element NumPy value as a Python number (checkpoints then need no NumPy)."""
    if _is_numpy(value) and getattr(value, "size", 0) == 1:
        return value.item()
    return value


def _real(value: Any, what: str) -> float:
    """The float value of a real number or one-element tensor; ValueError for anything else."""
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()  # a Python bool, int, float or complex, checked next
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"Invalid {what}: {value!r} (expected a real number)")
    return float(value)
