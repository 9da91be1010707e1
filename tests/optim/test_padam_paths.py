"""Every Padam implementation matches the for-loop one on every state tensor."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from padam_lightning import Padam
from padam_lightning.optim import _compiled, _native
from padam_lightning.optim.functional import PLAN_ONE, PLAN_POW, _single_tensor_padam, power_plan

SHAPES = [(4, 3), (7,), (2, 3, 2, 2), (1,)]
STEPS = 4
STATE_LISTS = ("params", "grads", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs")
TensorLists = tuple[
    list[torch.Tensor],
    list[torch.Tensor],
    list[torch.Tensor],
    list[torch.Tensor],
    list[torch.Tensor],
]


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


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("partial", [1 / 8, 1 / 4, 1 / 16, 1 / 2, 0.0, 0.3])
@IMPLEMENTATIONS
def test_float64_paths_match_for_loop(
    config: str, partial: float, implementation: dict[str, Any]
) -> None:
    hyper = {**CONFIGS[config], "partial": partial}
    expected = run({"foreach": False}, **hyper)
    assert_same(run(implementation, **hyper), expected, rtol=1e-13, atol=1e-15)


class _CompiledGraphSource:
    """Stands in for the native kernel so that CPU tensors take the compiled (CUDA) path.

    ``torch.compile`` is swapped for the function it compiles, run eagerly: this checks the
    graph's math and the arguments Padam passes it, for every configuration, in milliseconds.
    (Compiling it for real is checked once, in the slow tests below.)
    """

    dtypes = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
    step = staticmethod(_compiled.compiled_step)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("partial", [1 / 8, 1 / 4, 1 / 16, 1 / 2, 0.0, 0.3])
def test_compiled_graph_source_matches_for_loop(
    config: str, partial: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    hyper = {**CONFIGS[config], "partial": partial}
    expected = run({"foreach": False}, **hyper)
    monkeypatch.setattr(_native, "native_kernel", _CompiledGraphSource)
    monkeypatch.setattr(_compiled, "_compiled_update", lambda: _compiled._update)
    monkeypatch.setattr(_compiled, "compiled_step", _fail_if_called)  # must come via the kernel
    assert_same(run({"fused": True}, **hyper), expected, rtol=1e-13, atol=1e-15)


def _fail_if_called(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("the CPU must not call the compiled step directly")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("partial", [1 / 8, 0.0, 0.3])
@IMPLEMENTATIONS
def test_cuda_paths_match_the_cpu_for_loop(
    config: str, partial: float, implementation: dict[str, Any]
) -> None:
    hyper = {**CONFIGS[config], "partial": partial}
    expected = run({"foreach": False}, **hyper)
    actual = run(implementation, device="cuda", **hyper)
    assert_same(actual, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("partial", [1 / 8, 0.3])
def test_float32_fused_matches_for_loop(partial: float) -> None:
    # The native kernel's general power is its own exp2/log2, accurate to a few ulp.
    expected = run({"foreach": False}, dtype=torch.float32, partial=partial)
    assert_same(run({"fused": True}, dtype=torch.float32, partial=partial), expected, 1e-5, 1e-7)


def test_channels_last_parameters_match_for_loop() -> None:
    expected = run({"foreach": False}, channels_last=True)
    assert_same(run({"fused": True}, channels_last=True), expected, rtol=1e-13, atol=1e-15)


def test_non_contiguous_gradient_takes_the_multi_tensor_path() -> None:
    # The native kernel needs matching dense layouts; anything else must still be right.
    param = torch.nn.Parameter(torch.randn(3, 4, dtype=torch.float64))
    twin = torch.nn.Parameter(param.detach().clone())
    fused = Padam([param], fused=True)
    loop = Padam([twin], foreach=False)
    for _ in range(3):
        grad = torch.randn(4, 3, dtype=torch.float64).t()
        param.grad, twin.grad = grad, grad.contiguous()
        fused.step()
        loop.step()
    torch.testing.assert_close(param, twin, rtol=1e-13, atol=0)


def test_unavailable_native_kernel_warns_once_and_falls_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_compiler() -> str:
        raise _native.NativeKernelUnavailableError("no C++ compiler found (test)")

    monkeypatch.setattr(_native, "_compiler", no_compiler)
    monkeypatch.setattr(_native, "_kernel", None)
    monkeypatch.setattr(_native, "_failure", None)
    monkeypatch.setattr(_native, "_warned", False)
    expected = run({"foreach": False}, partial=0.125)
    with pytest.warns(RuntimeWarning, match="native CPU kernel is unavailable") as caught:
        actual = run({"fused": True}, partial=0.125)
    assert len(caught) == 1
    assert_same(actual, expected, rtol=1e-13, atol=1e-15)


def test_failed_compilation_warns_once_and_reports_not_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: Any) -> None:
        raise RuntimeError("no backend (test)")

    monkeypatch.setattr(_compiled, "_compiled", broken)
    monkeypatch.setattr(_compiled, "_failure", None)
    params = [torch.ones(3)]
    arguments = dict.fromkeys(["beta1", "beta2", "eps", "weight_decay", "decay", "grad_sign"], 0.5)
    with pytest.warns(RuntimeWarning, match="compiled .fused. step is unavailable") as caught:
        for _ in range(2):
            ran = _compiled.compiled_step(
                params, params, params, params, None, [0.1], two_p=0.25, plan=1, **arguments
            )
            assert ran is False
    assert len(caught) == 1
    assert torch.equal(params[0], torch.ones(3))


def test_power_plans() -> None:
    assert power_plan(0.0) == PLAN_ONE
    assert [power_plan(2.0**-k) for k in range(1, 9)] == list(range(8))
    assert power_plan(0.3) == PLAN_POW
    assert power_plan(2.0**-9) == PLAN_POW  # beyond the unrolled square-root chains


def _state_lists(tensors: dict[str, list[torch.Tensor]]) -> TensorLists:
    """The five tensor lists, in the order the step functions take them positionally."""
    params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs = (tensors[name] for name in STATE_LISTS)
    return params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs


@pytest.fixture(scope="module")
def compiled_results() -> tuple[Any, Any]:
    """One torch.compile'd graph (the fused path off the CPU), run here on the CPU."""
    generator = torch.Generator().manual_seed(0)
    tensors = {
        name: [torch.randn(shape, generator=generator, dtype=torch.float64) for shape in SHAPES]
        for name in STATE_LISTS
    }
    for name in ("exp_avg_sqs", "max_exp_avg_sqs"):
        tensors[name] = [t.abs() for t in tensors[name]]
    reference = {name: [t.clone() for t in ts] for name, ts in tensors.items()}
    step_sizes = [0.01, 0.02, 0.03, 0.04]
    ran = _compiled.compiled_step(
        *_state_lists(tensors),
        step_sizes,
        beta1=0.9,
        beta2=0.999,
        eps=1e-8,
        weight_decay=0.01,
        decay=1.0,
        grad_sign=1.0,
        two_p=0.25,
        plan=power_plan(0.125),
    )
    assert ran, "torch.compile failed on the CPU"
    _single_tensor_padam(
        *_state_lists(reference),
        step_sizes,
        amsgrad=True,
        beta1=0.9,
        beta2=0.999,
        lr=0.1,
        weight_decay=0.01,
        eps=1e-8,
        partial=0.125,
        maximize=False,
        decoupled_weight_decay=False,
    )
    return tensors, reference


@pytest.mark.slow
def test_compiled_fused_graph_matches_for_loop(compiled_results: tuple[Any, Any]) -> None:
    tensors, reference = compiled_results
    for name in ("params", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"):
        for actual, expected in zip(tensors[name], reference[name], strict=True):
            torch.testing.assert_close(actual, expected, rtol=1e-13, atol=1e-15, msg=name)


@pytest.mark.slow
def test_compiled_graph_is_reused_for_new_hyperparameters(
    compiled_results: tuple[Any, Any],
) -> None:
    from torch._dynamo.utils import counters

    tensors, _ = compiled_results
    graphs = counters["stats"]["unique_graphs"]
    for lr, beta2 in [(0.5, 0.99), (0.01, 0.9)]:
        assert _compiled.compiled_step(
            *_state_lists(tensors),
            [lr] * len(SHAPES),
            beta1=0.8,
            beta2=beta2,
            eps=1e-6,
            weight_decay=0.0,
            decay=1.0 - lr * 0.1,
            grad_sign=-1.0,
            two_p=0.25,
            plan=power_plan(0.125),
        )
    assert counters["stats"]["unique_graphs"] == graphs
