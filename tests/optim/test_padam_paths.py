"""Every Padam implementation matches the for-loop one on every state tensor.

The fused path is compiled with torch.compile here on the CPU, as on a GPU: one graph per device,
dtype, set of shapes, AMSGrad flag and way of computing the power (p = 0, a square-root chain, a
general power), compiled once per process, whatever the other values.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch

from padam_lightning import Padam
from padam_lightning.optim import functional

SHAPES = [(4, 3), (7,), (2, 3, 2, 2), (1,)]
STEPS = 4


def run(
    implementation: dict[str, Any],
    dtype: torch.dtype = torch.float64,
    channels_last: bool = False,
    device: str = "cpu",
    **hyper: Any,
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Steps Padam on fixed random data; parameter 1 has no gradient at step 2.

    Returns:
        The parameters and each parameter's optimizer state after the steps, on the CPU.
    """
    generator = torch.Generator().manual_seed(0)
    params = []
    for shape in SHAPES:
        value = torch.randn(shape, generator=generator, dtype=torch.float64).to(device, dtype)
        if channels_last and value.dim() == 4:
            value = value.to(memory_format=torch.channels_last)
        params.append(torch.nn.Parameter(value))
    optimizer = Padam(params, lr=0.05, **hyper, **implementation)
    for step in range(STEPS):
        for i, param in enumerate(params):
            grad = torch.randn(param.shape, generator=generator, dtype=torch.float64)
            grad = grad.to(device, dtype, memory_format=_layout(param))
            param.grad = None if (step == 1 and i == 1) else grad
        optimizer.step()
    states = [{k: v.cpu().clone() for k, v in optimizer.state[p].items()} for p in params]
    return [p.detach().cpu().clone() for p in params], states


def _layout(param: torch.Tensor) -> torch.memory_format:
    if param.dim() == 4 and not param.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def assert_same(
    actual: tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]],
    expected: tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]],
    rtol: float,
    atol: float,
) -> None:
    for param, want in zip(actual[0], expected[0], strict=True):
        torch.testing.assert_close(param, want, rtol=rtol, atol=atol)
    for state, want_state in zip(actual[1], expected[1], strict=True):
        assert state.keys() == want_state.keys()
        for key in state:
            torch.testing.assert_close(state[key], want_state[key], rtol=rtol, atol=atol, msg=key)


CONFIGS: dict[str, dict[str, Any]] = {
    "amsgrad+l2": {"amsgrad": True, "weight_decay": 0.01},
    "adam+decoupled+maximize": {
        "amsgrad": False,
        "weight_decay": 0.1,
        "decoupled_weight_decay": True,
        "maximize": True,
    },
}


#: Padam's paths other than the for-loop reference: the two explicit ones and the default choice.
IMPLEMENTATIONS = pytest.mark.parametrize(
    "implementation", [{"foreach": True}, {"fused": True}, {}], ids=["foreach", "fused", "default"]
)


#: The eager paths at every kind of p; the fused one at one p of each way of computing the power
#: (each is a graph to compile; the square-root chain's length is only a loop count).
FLOAT64_CASES = [
    pytest.param(flags, partial, id=f"{name}-{partial}")
    for name, flags in [("foreach", {"foreach": True}), ("fused", {"fused": True}), ("default", {})]
    for partial in [1 / 8, 1 / 4, 1 / 16, 1 / 2, 0.0, 0.3, 2.0**-6]
    if name != "fused" or partial in (1 / 8, 0.0, 0.3)
]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize(("implementation", "partial"), FLOAT64_CASES)
def test_float64_paths_match_for_loop(
    config: str, partial: float, implementation: dict[str, Any]
) -> None:
    hyper = {**CONFIGS[config], "partial": partial}
    expected = run({"foreach": False}, **hyper)
    assert_same(run(implementation, **hyper), expected, rtol=1e-13, atol=1e-15)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("partial", [1 / 8, 0.0, 0.3])
@IMPLEMENTATIONS
def test_cuda_paths_match_the_cpu_for_loop(
    config: str, partial: float, implementation: dict[str, Any]
) -> None:
    # fused=True compiles on CUDA; a compile failure raises here (there is no fallback).
    hyper = {**CONFIGS[config], "partial": partial}
    expected = run({"foreach": False}, **hyper)
    actual = run(implementation, device="cuda", **hyper)
    assert_same(actual, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("partial", [1 / 8, 0.3])
@IMPLEMENTATIONS
def test_float32_paths_match_for_loop(partial: float, implementation: dict[str, Any]) -> None:
    expected = run({"foreach": False}, dtype=torch.float32, partial=partial)
    assert_same(run(implementation, dtype=torch.float32, partial=partial), expected, 1e-5, 1e-7)


@IMPLEMENTATIONS
def test_channels_last_parameters_match_for_loop(implementation: dict[str, Any]) -> None:
    expected = run({"foreach": False}, channels_last=True)
    assert_same(run(implementation, channels_last=True), expected, rtol=1e-13, atol=1e-15)


@IMPLEMENTATIONS
def test_non_contiguous_gradient_matches_for_loop(implementation: dict[str, Any]) -> None:
    param = torch.nn.Parameter(torch.randn(3, 4, dtype=torch.float64))
    twin = torch.nn.Parameter(param.detach().clone())
    tested = Padam([param], **implementation)
    loop = Padam([twin], foreach=False)
    for _ in range(3):
        grad = torch.randn(4, 3, dtype=torch.float64).t()
        param.grad, twin.grad = grad, grad.contiguous()
        tested.step()
        loop.step()
    torch.testing.assert_close(param, twin, rtol=1e-13, atol=0)


def test_fused_compiles_once_and_not_again_for_new_hyperparameters() -> None:
    from torch._dynamo.utils import counters

    # Five float32 tensors: a kind of call no other test compiles.
    params = [torch.nn.Parameter(torch.ones(2, i + 1)) for i in range(5)]
    optimizer = Padam(params, fused=True, partial=0.3)
    graphs = counters["stats"]["unique_graphs"]
    changes: list[dict[str, Any]] = [  # p stays a general power (one graph for all those)
        {},
        {"lr": 0.5, "betas": (0.8, 0.99), "partial": 0.35},
        {"partial": 0.2, "eps": 1e-3, "weight_decay": 0.1, "maximize": True},
        {"partial": 0.45, "decoupled_weight_decay": True},
    ]
    for change in changes:
        optimizer.param_groups[0].update(change)
        for p in params:
            p.grad = torch.full_like(p, 0.5)
        optimizer.step()
    assert counters["stats"]["unique_graphs"] == graphs + 1


def test_compilation_failure_raises_and_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_backend(graph: torch.fx.GraphModule, inputs: list[torch.Tensor]) -> Any:
        raise RuntimeError("no C++ compiler (test)")

    def compile_with_broken_backend(kind: tuple[Any, ...]) -> Any:
        return torch.compile(functional._update, backend=broken_backend, fullgraph=True)

    monkeypatch.setattr(functional, "_compiled_update", compile_with_broken_backend)
    param = torch.nn.Parameter(torch.ones(3))
    param.grad = torch.ones(3)
    optimizer = Padam([param], fused=True)
    with pytest.raises(Exception, match=r"no C\+\+ compiler \(test\)"):
        optimizer.step()
    assert torch.equal(param.detach(), torch.ones(3))
    state = optimizer.state[param]
    assert state["step"].item() == 0 and torch.count_nonzero(state["exp_avg"]) == 0


def test_many_kinds_of_call_stay_under_dynamo_recompile_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Dynamo allows recompile_limit (8) graphs per function: parameter groups of more sizes than
    # that must all compile. Here the limit is 2 and the backend "eager" (the limit is dynamo's,
    # whatever the backend), in a cache of the test's own, to keep this fast.
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    fresh = functools.cache(functional._compiled_update.__wrapped__)
    monkeypatch.setattr(functional, "_compiled_update", fresh)
    sizes = range(1, 5)
    groups = [{"params": [torch.nn.Parameter(torch.ones(2)) for _ in range(n)]} for n in sizes]
    optimizer = Padam(groups, fused=True, amsgrad=False, partial=0.0)
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = torch.ones(2)
    with torch._dynamo.config.patch(recompile_limit=2):
        optimizer.step()
    assert fresh.cache_info().currsize == len(sizes)
    # p = 0, first step: theta -= lr * sqrt(1 - beta2) / (1 - beta1) * (1 - beta1) * g.
    moved = 1 - 0.1 * (1 - 0.999) ** 0.5
    for group in optimizer.param_groups:
        for p in group["params"]:
            assert p.detach().tolist() == pytest.approx([moved] * 2, rel=1e-6)


def test_sqrt_chain_covers_p_one_half_to_one_thirty_second() -> None:
    assert [functional._extra_sqrts(2.0**-k) for k in range(1, 7)] == [0, 1, 2, 3, 4, None]
    assert functional._extra_sqrts(0.3) is None
    assert functional._extra_sqrts(0.375) is None  # 3/8: a mantissa other than 1/2
