"""float16 and bfloat16 parameters: every path against a float64 reference, state kept in float32.

The reference computes the released code's update in float64 and rounds the parameter to its
dtype after each step, as storing it does; the implementations compute in float32 and round once,
so parameters agree to about one unit in the last place of their dtype. The shapes are those of
the path tests, so the fused path reuses their compiled graphs where the dtype matches.
"""

from __future__ import annotations

import io
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
HALF = pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
SHAPES = [(4, 3), (7,), (2, 3, 2, 2), (1,)]
FP16_MIN_NORMAL = 2.0**-14  # 6.1e-5: its square (3.7e-9), and v, are zero in float16
CONFIGS: dict[str, dict[str, Any]] = {
    "plain": {},
    "l2": {"weight_decay": 0.01},
    "decoupled+maximize": {"weight_decay": 0.1, "decoupled_weight_decay": True, "maximize": True},
}
STATE_NAMES = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def reference(
    start: torch.Tensor,
    grads: list[torch.Tensor],
    dtype: torch.dtype,
    *,
    lr: float = 0.01,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    partial: float,
    decoupled_weight_decay: bool = False,
    maximize: bool = False,
) -> dict[str, torch.Tensor]:
    """The released code's AMSGrad-Padam update in float64, the parameter stored in ``dtype``."""
    beta1, beta2 = betas
    theta = start.double()
    m, v, vhat = (torch.zeros_like(theta) for _ in range(3))
    for t, raw in enumerate(grads, start=1):
        g = -raw.double() if maximize else raw.double()
        if decoupled_weight_decay:
            theta = theta * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * theta
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        vhat = torch.maximum(vhat, v)
        step_size = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)
        theta = theta - step_size * m / (vhat.sqrt() + eps) ** (2 * partial)
        theta = theta.to(dtype).double()  # what storing the parameter keeps
    return {"param": theta, "exp_avg": m, "exp_avg_sq": v, "max_exp_avg_sq": vhat}


def gradients(steps: int, dtype: torch.dtype) -> list[list[torch.Tensor]]:
    """Per step, per tensor: gradients of about 1e-3, near float16's smallest normal, about 1,
    and about 1e-3 with zeros; exactly representable in ``dtype``."""
    generator = torch.Generator().manual_seed(0)
    scales = [1e-3, FP16_MIN_NORMAL, 1.0, 1e-3]
    result = []
    for step in range(steps):
        per_tensor = []
        for shape, scale in zip(SHAPES, scales, strict=True):
            sign = torch.randint(0, 2, shape, generator=generator) * 2 - 1
            grad = scale * sign * (1 + torch.rand(shape, generator=generator, dtype=torch.float64))
            if scale == FP16_MIN_NORMAL:
                grad = sign * FP16_MIN_NORMAL * (1 + (torch.rand(shape, generator=generator) > 0.5))
            if step == 1 and shape == (1,):
                grad = torch.zeros(shape, dtype=torch.float64)
            per_tensor.append(grad.to(dtype))
        result.append(per_tensor)
    return result


def starts(dtype: torch.dtype) -> list[torch.Tensor]:
    """Parameter values of magnitude 0.5 to 1.5, which a few steps of lr 0.01 keep away from 0."""
    generator = torch.Generator().manual_seed(1)
    values = []
    for shape in SHAPES:
        sign = torch.randint(0, 2, shape, generator=generator) * 2 - 1
        values.append((sign * (0.5 + torch.rand(shape, generator=generator))).to(dtype))
    return values


def step_all(optimizer: Padam, params: list[torch.nn.Parameter], grads: list[Any]) -> None:
    for step_grads in grads:
        for p, grad in zip(params, step_grads, strict=True):
            p.grad = grad.clone()
        optimizer.step()


def assert_matches_reference(
    optimizer: Padam,
    params: list[torch.nn.Parameter],
    grads: list[list[torch.Tensor]],
    hyper: dict[str, Any],
    state_rtol: float,
) -> None:
    for i, p in enumerate(params):
        want = reference(starts(p.dtype)[i], [g[i] for g in grads], p.dtype, **hyper)
        ulps = 2 * torch.finfo(p.dtype).eps  # two units in the last place
        torch.testing.assert_close(p.detach().double(), want["param"], rtol=ulps, atol=0)
        state = optimizer.state[p]
        for name in STATE_NAMES:
            assert state[name].dtype == (
                torch.float64 if p.dtype == torch.float64 else torch.float32
            )
            # m may nearly cancel: its error is relative to the tensor's largest value.
            atol = state_rtol * want[name].abs().max().item()
            torch.testing.assert_close(
                state[name].double(), want[name], rtol=state_rtol, atol=atol, msg=name
            )
        assert (state["exp_avg_sq"] > 0).all() and (state["max_exp_avg_sq"] > 0).all()


@HALF
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("partial", [1 / 8, 1 / 4, 1 / 2, 0.3])
@pytest.mark.parametrize("path", PATHS)
def test_half_parameters_match_float64(
    path: str, partial: float, config: str, dtype: torch.dtype
) -> None:
    hyper = {"lr": 0.01, "partial": partial, **CONFIGS[config]}
    params = [torch.nn.Parameter(t) for t in starts(dtype)]
    optimizer = Padam(params, **hyper, **PATHS[path])
    grads = gradients(4, dtype)
    step_all(optimizer, params, grads)
    # Without weight decay the state depends on the gradients alone: float32 round-off. With
    # it, also on the parameter, which may differ from the reference's by an ulp of its dtype.
    state_rtol = 1e-6 if config == "plain" else 2 * torch.finfo(dtype).eps
    assert_matches_reference(optimizer, params, grads, hyper, state_rtol)


@HALF
@pytest.mark.parametrize("path", PATHS)
def test_small_gradient_moves_half_parameter_as_float64_does(path: str, dtype: torch.dtype) -> None:
    # The example: gradient 1e-3, p = 1/2, three steps move the parameter by 0.29993 in
    # float64 (each step is lr * (1 - eps / sqrt(v)) ~ 0.1); in half, v = 1e-9 used to round to 0.
    params = [torch.nn.Parameter(torch.zeros(shape, dtype=dtype)) for shape in SHAPES]
    optimizer = Padam(params, partial=0.5, **PATHS[path])
    step_all(optimizer, params, [[torch.full_like(p, 1e-3) for p in params]] * 3)
    exact = reference(
        torch.zeros(1), [torch.tensor([1e-3])] * 3, torch.float64, lr=0.1, partial=0.5
    )
    assert exact["param"].item() == pytest.approx(-0.29993, abs=1e-5)
    for p in params:
        # Three roundings to dtype, each within half an ulp of numbers below 0.5.
        torch.testing.assert_close(
            p.detach().double(),
            exact["param"].expand(p.shape),
            rtol=0,
            atol=1.5 * 0.25 * torch.finfo(dtype).eps,
        )
        g = torch.tensor(1e-3, dtype=dtype).item()  # the gradient as the parameter's dtype has it
        v = (1 - 0.999**3) * g * g  # 3.0e-9, below float16's smallest number (6e-8)
        torch.testing.assert_close(
            optimizer.state[p]["exp_avg_sq"].double(),
            torch.full(p.shape, v, dtype=torch.float64),
            rtol=1e-6,
            atol=0,
        )


@pytest.mark.parametrize("path", PATHS)
def test_mixed_dtypes_in_one_group_each_match_their_reference(path: str) -> None:
    dtypes = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
    params = [torch.nn.Parameter(t) for dtype in dtypes for t in starts(dtype)]
    hyper: dict[str, Any] = {"lr": 0.01, "partial": 0.125, "weight_decay": 0.01}
    optimizer = Padam(params, **hyper, **PATHS[path])
    per_dtype = [gradients(3, dtype) for dtype in dtypes]
    steps = [[g for grads in per_dtype for g in grads[step]] for step in range(3)]
    step_all(optimizer, params, steps)
    for k, dtype in enumerate(dtypes):
        mine = params[k * len(SHAPES) : (k + 1) * len(SHAPES)]
        rtol = 1e-12 if dtype == torch.float64 else 2 * torch.finfo(dtype).eps
        for i, p in enumerate(mine):
            want = reference(starts(dtype)[i], [g[i] for g in per_dtype[k]], dtype, **hyper)
            torch.testing.assert_close(p.detach().double(), want["param"], rtol=rtol, atol=0)
            torch.testing.assert_close(
                optimizer.state[p]["max_exp_avg_sq"].double(),
                want["max_exp_avg_sq"],
                rtol=max(rtol, 1e-6),
                atol=0,
            )


@HALF
def test_half_state_round_trips_through_state_dict_in_float32(dtype: torch.dtype) -> None:
    params = [torch.nn.Parameter(t) for t in starts(dtype)]
    optimizer = Padam(params, lr=0.01)
    grads = gradients(6, dtype)
    step_all(optimizer, params, grads[:3])
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed = Padam(twins)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for p, twin in zip(params, twins, strict=True):
        for name in STATE_NAMES:
            # torch.optim would cast it to the parameter's dtype; v of a 6e-5 gradient is 0 there.
            assert resumed.state[twin][name].dtype == torch.float32
            assert torch.equal(resumed.state[twin][name], optimizer.state[p][name])
    step_all(optimizer, params, grads[3:])
    step_all(resumed, twins, grads[3:])
    for p, twin in zip(params, twins, strict=True):
        assert torch.equal(p, twin)
        for name in STATE_NAMES:
            assert torch.equal(resumed.state[twin][name], optimizer.state[p][name])


def test_half_state_of_an_older_checkpoint_is_widened() -> None:
    params = [torch.nn.Parameter(t) for t in starts(torch.float16)]
    optimizer = Padam(params)
    step_all(optimizer, params, gradients(1, torch.float16))
    old = optimizer.state_dict()
    for state in old["state"].values():  # as saved when the state had the parameter's dtype
        for name in STATE_NAMES:
            state[name] = state[name].half()
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed = Padam(twins)
    resumed.load_state_dict(old)
    for index, twin in enumerate(twins):
        for name in STATE_NAMES:
            widened = resumed.state[twin][name]
            assert widened.dtype == torch.float32
            # Widening is exact: the saved half values (in which a small v was already 0).
            assert torch.equal(widened, old["state"][index][name].float())
    # The next step continues from those values in float32 (m and v computed here by hand).
    later = gradients(2, torch.float16)[1]
    step_all(resumed, twins, [later])
    for index, (twin, grad) in enumerate(zip(twins, later, strict=True)):
        saved, g = old["state"][index], grad.float()
        exp_avg = 0.9 * saved["exp_avg"].float() + 0.1 * g
        exp_avg_sq = 0.999 * saved["exp_avg_sq"].float() + 0.001 * g * g
        torch.testing.assert_close(resumed.state[twin]["exp_avg"], exp_avg, rtol=1e-6, atol=0)
        torch.testing.assert_close(resumed.state[twin]["exp_avg_sq"], exp_avg_sq, rtol=1e-6, atol=0)
