"""Padam against independent references: plain-float arithmetic, torch's AMSGrad, momentum SGD."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from padam_lightning import Padam

PATHS: dict[str, dict[str, Any]] = {
    "for-loop": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}


def reference_padam(
    theta: float,
    grads: list[float],
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    partial: float,
    amsgrad: bool = True,
    decoupled: bool = False,
) -> list[dict[str, float]]:
    """The released code's update on one scalar, in Python floats; the state after each step."""
    beta1, beta2 = betas
    m = v = vhat = 0.0
    history = []
    for t, raw_grad in enumerate(grads, start=1):
        g = raw_grad
        if decoupled:
            theta *= 1 - lr * weight_decay
        else:
            g += weight_decay * theta
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        vhat = max(vhat, v) if amsgrad else v
        step_size = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)
        theta -= step_size * m / (math.sqrt(vhat) + eps) ** (2 * partial)
        history.append({"theta": theta, "m": m, "v": v, "vhat": vhat, "step": float(t)})
    return history


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("partial", [1 / 8, 1 / 16, 0.3])
@pytest.mark.parametrize("decoupled", [False, True])
def test_first_steps_match_plain_float_arithmetic(
    path: str, partial: float, decoupled: bool
) -> None:
    # The last element's second gradient is small enough that v falls: AMSGrad's max matters.
    start = [0.5, -1.5, 0.0]
    grads = [[0.3, -0.7, 1.0], [-0.2, 0.4, 0.0], [0.05, 0.1, -0.02]]
    hyper: dict[str, Any] = {"lr": 0.1, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.05}
    param = torch.nn.Parameter(torch.tensor(start, dtype=torch.float64))
    optimizer = Padam(
        [param], partial=partial, decoupled_weight_decay=decoupled, **hyper, **PATHS[path]
    )
    expected = [
        reference_padam(
            theta,
            [g[i] for g in grads],
            partial=partial,
            decoupled=decoupled,
            lr=0.1,
            betas=(0.9, 0.999),
            eps=1e-8,
            weight_decay=0.05,
        )
        for i, theta in enumerate(start)
    ]
    assert expected[2][1]["v"] < expected[2][0]["v"]  # the case AMSGrad exists for

    for t, grad in enumerate(grads):
        param.grad = torch.tensor(grad, dtype=torch.float64)
        optimizer.step()
        state = optimizer.state[param]
        for key, name in [
            ("theta", None),
            ("m", "exp_avg"),
            ("v", "exp_avg_sq"),
            ("vhat", "max_exp_avg_sq"),
        ]:
            actual = param.detach() if name is None else state[name]
            want = torch.tensor([e[t][key] for e in expected], dtype=torch.float64)
            torch.testing.assert_close(actual, want, rtol=1e-13, atol=0, msg=f"{key} at {t + 1}")
        assert state["step"].item() == t + 1


@pytest.mark.parametrize("path", PATHS)
def test_half_partial_without_eps_is_torch_amsgrad(path: str) -> None:
    # torch adds eps to sqrt(vhat / (1 - beta2^t)), Padam to sqrt(vhat); with eps = 0 they agree.
    generator = torch.Generator().manual_seed(0)
    shapes = [(4, 3), (5,), (2, 3, 2)]
    start = [torch.randn(shape, generator=generator, dtype=torch.float64) for shape in shapes]
    ours = [torch.nn.Parameter(t.clone()) for t in start]
    theirs = [torch.nn.Parameter(t.clone()) for t in start]
    padam = Padam(ours, lr=0.01, eps=0.0, weight_decay=0.1, partial=0.5, **PATHS[path])
    adam = torch.optim.Adam(theirs, lr=0.01, eps=0.0, weight_decay=0.1, amsgrad=True)
    for _ in range(6):
        for a, b in zip(ours, theirs, strict=True):
            a.grad = torch.randn(a.shape, generator=generator, dtype=torch.float64)
            b.grad = a.grad.clone()
        padam.step()
        adam.step()
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
        for name in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            torch.testing.assert_close(
                padam.state[a][name], adam.state[b][name], rtol=1e-12, atol=0
            )


@pytest.mark.parametrize("path", PATHS)
def test_zero_partial_is_bias_corrected_ema_momentum_sgd(path: str) -> None:
    # p = 0: theta_t = theta_{t-1} - lr * sqrt(1 - b2^t) / (1 - b1^t) * m_t, m an EMA of g.
    lr, beta1, beta2 = 0.5, 0.8, 0.99
    grads = [[1.0, -2.0], [0.5, 0.25], [-1.0, 3.0], [0.0, 0.0]]
    param = torch.nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    optimizer = Padam([param], lr=lr, betas=(beta1, beta2), partial=0.0, **PATHS[path])
    theta, m = [1.0, 2.0], [0.0, 0.0]
    for t, grad in enumerate(grads, start=1):
        for i in range(2):
            m[i] = beta1 * m[i] + (1 - beta1) * grad[i]
            theta[i] -= lr * math.sqrt(1 - beta2**t) / (1 - beta1**t) * m[i]
        param.grad = torch.tensor(grad, dtype=torch.float64)
        optimizer.step()
        torch.testing.assert_close(param.detach(), torch.tensor(theta, dtype=torch.float64))


@pytest.mark.parametrize("path", PATHS)
def test_logistic_regression_on_separable_data_converges(path: str) -> None:
    generator = torch.Generator().manual_seed(0)
    # Labels by the side of a random hyperplane, points pushed 1 away from it: separable.
    direction = torch.nn.functional.normalize(torch.randn(5, generator=generator), dim=0)
    features = torch.randn(200, 5, generator=generator)
    labels = (features @ direction > 0).float()
    features += (2 * labels[:, None] - 1) * direction
    model = torch.nn.Linear(5, 1)
    torch.nn.init.zeros_(model.weight)  # independent of the global random state
    torch.nn.init.zeros_(model.bias)
    optimizer = Padam(model.parameters(), lr=0.1, partial=0.125, **PATHS[path])
    loss_fn = torch.nn.BCEWithLogitsLoss()
    first_loss = loss_fn(model(features).squeeze(1), labels).item()
    for _ in range(100):
        optimizer.zero_grad()
        loss = loss_fn(model(features).squeeze(1), labels)
        loss.backward()
        optimizer.step()
    accuracy = ((model(features).squeeze(1) > 0).float() == labels).float().mean().item()
    assert loss.item() < 0.1 < 0.5 < first_loss
    assert accuracy == 1.0
