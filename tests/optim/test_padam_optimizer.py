"""Padam as a torch.optim.Optimizer: checkpoints, errors, groups, schedules, AMP, dtypes."""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch

from padam_lightning import Padam
from padam_lightning.errors import UserError
from padam_lightning.optim import InvalidHyperparameterError

PATHS: dict[str, dict[str, Any]] = {
    "for-loop": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}


def make_params(seed: int = 0, dtype: torch.dtype = torch.float64) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    # The path tests' shapes: the fused path reuses the graphs compiled for them.
    shapes = [(4, 3), (7,), (2, 3, 2, 2), (1,)]
    return [
        torch.nn.Parameter(torch.randn(s, generator=generator, dtype=torch.float64).to(dtype))
        for s in shapes
    ]


def set_grads(params: list[torch.nn.Parameter], generator: torch.Generator) -> None:
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p.dtype)


def set_twin_grads(
    params: list[torch.nn.Parameter], twins: list[torch.nn.Parameter], generator: torch.Generator
) -> None:
    """Draw new gradients for ``params`` and give their ``twins`` the same ones."""
    set_grads(params, generator)
    for p, twin in zip(params, twins, strict=True):
        twin.grad = p.grad.clone()  # type: ignore[union-attr]


def snapshot(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    tensors = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            tensors.append(p.detach().clone())
            tensors += [v.clone() for v in optimizer.state[p].values()]
    return tensors


def assert_equal(first: list[torch.Tensor], second: list[torch.Tensor]) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("path", PATHS)
def test_state_dict_resumes_bit_for_bit(path: str) -> None:
    generator = torch.Generator().manual_seed(1)
    params = make_params()
    optimizer = Padam(params, weight_decay=0.01, **PATHS[path])
    for _ in range(3):
        set_grads(params, generator)
        optimizer.step()
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)

    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed = Padam(twins, **PATHS[path])  # hyperparameters come from the state dict
    resumed.load_state_dict(torch.load(buffer))
    assert resumed.param_groups[0]["weight_decay"] == 0.01
    for _ in range(3):
        set_twin_grads(params, twins, generator)
        optimizer.step()
        resumed.step()
        assert_equal(snapshot(optimizer), snapshot(resumed))


def test_state_dict_without_later_flags_still_loads() -> None:
    # A checkpoint written before decoupled_weight_decay, maximize, foreach and fused existed.
    generator = torch.Generator().manual_seed(2)
    params = make_params()
    optimizer = Padam(params)
    set_grads(params, generator)
    optimizer.step()
    old = copy.deepcopy(optimizer.state_dict())
    for key in ("decoupled_weight_decay", "maximize", "foreach", "fused"):
        del old["param_groups"][0][key]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed = Padam(twins)
    resumed.load_state_dict(old)
    group = resumed.param_groups[0]
    assert (group["decoupled_weight_decay"], group["maximize"]) == (False, False)
    assert (group["foreach"], group["fused"]) == (None, None)
    set_twin_grads(params, twins, generator)
    optimizer.step()
    resumed.step()
    assert_equal(snapshot(optimizer), snapshot(resumed))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": -0.1}, "Invalid learning rate: -0.1 (expected lr >= 0)"),
        ({"eps": -1e-8}, "Invalid eps value: -1e-08 (expected eps >= 0)"),
        ({"weight_decay": -1.0}, "Invalid weight_decay value: -1.0 (expected weight_decay >= 0)"),
        (
            {"betas": (1.0, 0.999)},
            "Invalid beta parameter at index 0: 1.0 (expected 0 <= betas[0] < 1)",
        ),
        (
            {"betas": (0.9, -0.5)},
            "Invalid beta parameter at index 1: -0.5 (expected 0 <= betas[1] < 1)",
        ),
        ({"partial": 0.9}, "Invalid partial value: 0.9 (expected 0 <= partial <= 0.5)"),
        ({"partial": -0.125}, "Invalid partial value: -0.125 (expected 0 <= partial <= 0.5)"),
        ({"partial": float("nan")}, "Invalid partial value: nan (expected 0 <= partial <= 0.5)"),
        ({"lr": "0.1"}, "Invalid learning rate: '0.1' (expected a real number)"),
        (
            {"betas": (0.9,)},
            "Invalid betas: (0.9,) (expected a pair (beta1, beta2) with 0 <= beta < 1)",
        ),
        ({"betas": 0.9}, "Invalid betas: 0.9 (expected a pair (beta1, beta2) with 0 <= beta < 1)"),
        (
            {"betas": "ab"},
            "Invalid betas: 'ab' (expected a pair (beta1, beta2) with 0 <= beta < 1)",
        ),
    ],
)
def test_invalid_hyperparameters_name_value_and_range(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        Padam(make_params(), **kwargs)
    assert str(caught.value) == message
    # A plain ValueError, as torch.optim raises; padam-fit words it as a user error itself.
    assert type(caught.value) is ValueError and not isinstance(caught.value, UserError)
    with pytest.raises(InvalidHyperparameterError, match="Invalid"):  # the old name still works
        Padam([{"params": make_params()}, {"params": make_params(1), **kwargs}])


class _Kind(NamedTuple):
    """One way of writing a real number, with a value of it for each hyperparameter."""

    make: Callable[[Any], Any]
    integer: bool


KINDS: dict[str, _Kind] = {
    "int": _Kind(int, True),
    "float": _Kind(float, False),
    **{f"numpy.{t.__name__}": _Kind(t, False) for t in (np.float16, np.float32, np.float64)},
    **{
        f"numpy.{t.__name__}": _Kind(t, True)
        for t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint64)
    },
    "numpy 0-dim array": _Kind(np.array, False),
    "tensor 0-dim": _Kind(torch.tensor, False),
    "tensor 1-element": _Kind(lambda v: torch.tensor([v]), False),
    "tensor int 0-dim": _Kind(torch.tensor, True),
}
#: A valid value of each hyperparameter, for float kinds and for integer kinds.
VALUES: dict[str, tuple[float, int]] = {
    "lr": (0.05, 1),
    "eps": (1e-3, 0),
    "weight_decay": (0.01, 1),
    "partial": (0.25, 0),
    "beta1": (0.8, 0),
    "beta2": (0.99, 0),
}


#: What torch's Adam refuses, at construction or at its first step; Padam takes these too.
TORCH_REFUSES = {
    # "betas must be either both floats or both Tensors" (int and most NumPy kinds are not float)
    *(
        (kind, beta)
        for kind in KINDS
        if kind not in ("float", "numpy.float64")
        for beta in ("beta1", "beta2")
    ),
    ("numpy 0-dim array", "eps"),  # add_() wants a Tensor
    ("numpy 0-dim array", "weight_decay"),  # alpha must be a Number
    ("tensor 1-element", "weight_decay"),
}


@pytest.mark.parametrize("name", VALUES)
@pytest.mark.parametrize("kind", KINDS)
def test_real_numbers_of_every_kind_torch_accepts_are_accepted_and_used(
    kind: str, name: str
) -> None:
    make, integer = KINDS[kind]
    number = VALUES[name][integer]
    value = make(number)
    used = float(value)  # the number it stands for (e.g. numpy.float16(1e-3) is 0.0010004)

    def hyper(v: Any) -> dict[str, Any]:
        if name.startswith("beta"):
            betas = [0.9, 0.999]
            betas[name == "beta2"] = v
            return {"betas": tuple(betas)}
        return {name: v}

    if name != "partial" and (kind, name) not in TORCH_REFUSES:
        adam_params = make_params()
        adam = torch.optim.Adam(adam_params, **hyper(value))
        set_grads(adam_params, torch.Generator().manual_seed(0))
        adam.step()  # torch's Adam takes this value (Padam's own partial has no counterpart)
    generator = torch.Generator().manual_seed(7)
    params, twins = make_params(), make_params()
    optimizer, reference = Padam(params, **hyper(value)), Padam(twins, **hyper(used))
    for _ in range(2):
        set_twin_grads(params, twins, generator)
        optimizer.step()
        reference.step()
    assert_equal(snapshot(optimizer), snapshot(reference))
    # NumPy values are stored as Python floats: the checkpoint then loads with weights_only.
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    torch.load(buffer, weights_only=True)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.float32(-0.5), "Invalid learning rate: -0.5 (expected lr >= 0)"),
        (torch.tensor([-2]), "Invalid learning rate: -2.0 (expected lr >= 0)"),
        (torch.tensor([0.1, 0.2]), "Invalid learning rate: tensor([0.1000, 0.2000])"),
        (np.bool_(True), "Invalid learning rate: True (expected a real number)"),
        (torch.tensor(1j), "Invalid learning rate: 1j (expected a real number)"),
    ],
)
def test_numbers_of_other_kinds_are_refused_with_the_value(value: Any, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        Padam(make_params(), lr=value)
    assert str(caught.value).startswith(message)


def test_lr_schedule_returning_numpy_scalars_is_followed() -> None:
    # lr and factors exact in float32, so the NumPy schedule's learning rates equal the floats'.
    generator = torch.Generator().manual_seed(8)
    params, twins = make_params(), make_params()
    optimizer, reference = Padam(params, lr=0.5), Padam(twins, lr=0.5)
    factors = [1.0, 0.5, 0.25, 0.125]
    numpy_schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda epoch: np.float32(factors[epoch]),  # type: ignore[arg-type,return-value]
    )
    float_schedule = torch.optim.lr_scheduler.LambdaLR(reference, lambda epoch: factors[epoch])
    for _ in range(3):
        set_twin_grads(params, twins, generator)
        optimizer.step()
        reference.step()
        assert type(optimizer.param_groups[0]["lr"]) is float  # stored as a Python float
        numpy_schedule.step()
        float_schedule.step()
    assert optimizer.param_groups[0]["lr"] == reference.param_groups[0]["lr"] == 0.0625
    assert_equal(snapshot(optimizer), snapshot(reference))


def test_tensor_hyperparameters_are_read_once_per_step(monkeypatch: pytest.MonkeyPatch) -> None:
    # Reading a GPU tensor waits for the GPU: each of the six values is read once a step, not
    # once to check it and again to use it.
    params = make_params()
    tensors: dict[str, Any] = {
        "lr": torch.tensor(0.1),
        "betas": (torch.tensor(0.9), torch.tensor(0.999)),
        "eps": torch.tensor(1e-8),
        "weight_decay": torch.tensor(5e-4),
        "partial": torch.tensor(0.125),
    }
    optimizer = Padam(params, **tensors)
    set_grads(params, torch.Generator().manual_seed(0))
    hyperparameters = [
        optimizer.param_groups[0][key] for key in ("lr", "eps", "weight_decay", "partial")
    ]
    hyperparameters += list(optimizer.param_groups[0]["betas"])
    reads: list[int] = []

    def counting(read: Any) -> Any:
        def counted(tensor: torch.Tensor) -> Any:
            if any(tensor is value for value in hyperparameters):
                reads.append(id(tensor))
            return read(tensor)

        return counted

    for name in ("item", "__float__"):  # the two ways a tensor becomes a Python number
        monkeypatch.setattr(torch.Tensor, name, counting(getattr(torch.Tensor, name)))
    optimizer.step()
    assert sorted(reads) == sorted(id(value) for value in hyperparameters)


def test_invalid_value_set_by_a_schedule_is_caught_at_step() -> None:
    params = make_params()
    optimizer = Padam(params)
    set_grads(params, torch.Generator().manual_seed(0))
    optimizer.param_groups[0]["partial"] = 0.75
    with pytest.raises(ValueError, match=r"Invalid partial value: 0\.75"):
        optimizer.step()


def test_foreach_and_fused_together_are_rejected() -> None:
    with pytest.raises(ValueError, match="foreach and fused"):
        Padam(make_params(), foreach=True, fused=True)


def test_sparse_gradients_are_rejected() -> None:
    embedding = torch.nn.Embedding(10, 3, sparse=True)
    optimizer = Padam(embedding.parameters())
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        optimizer.step()


def test_param_groups_keep_their_own_partial() -> None:
    generator = torch.Generator().manual_seed(3)
    first, second = make_params(0), make_params(1)
    groups: list[dict[str, Any]] = [{"params": first, "partial": 0.5}, {"params": second}]
    grouped = Padam(groups, partial=0.0625)
    first_twins = [torch.nn.Parameter(p.detach().clone()) for p in first]
    second_twins = [torch.nn.Parameter(p.detach().clone()) for p in second]
    alone = [Padam(first_twins, partial=0.5), Padam(second_twins, partial=0.0625)]
    for _ in range(3):
        set_twin_grads(first + second, first_twins + second_twins, generator)
        grouped.step()
        for optimizer in alone:
            optimizer.step()
    for p, twin in zip(first + second, first_twins + second_twins, strict=True):
        assert torch.equal(p, twin)


@pytest.mark.parametrize("path", ["foreach", "fused"])
def test_partial_changed_every_step_matches_for_loop(path: str) -> None:
    generator = torch.Generator().manual_seed(4)
    params = make_params()
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    optimizer, reference = Padam(params, **PATHS[path]), Padam(twins, foreach=False)
    # Every kind of power: chains of 2, 1, 0 and 3 square roots, general, none.
    for partial in [0.125, 0.25, 0.3, 0.0, 0.5, 0.0625, 0.2]:
        for group in (*optimizer.param_groups, *reference.param_groups):
            group["partial"] = partial
        set_twin_grads(params, twins, generator)
        optimizer.step()
        reference.step()
    for a, b in zip(snapshot(optimizer), snapshot(reference), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("path", PATHS)
def test_step_without_gradients_changes_nothing(path: str) -> None:
    params = make_params()
    before = [p.detach().clone() for p in params]
    optimizer = Padam(params, weight_decay=0.1, **PATHS[path])
    optimizer.step()
    assert_equal([p.detach() for p in params], before)
    assert len(optimizer.state) == 0


@pytest.mark.parametrize("path", PATHS)
def test_zero_gradients_give_finite_values(path: str) -> None:
    params = make_params()
    before = [p.detach().clone() for p in params]
    optimizer = Padam(params, partial=0.3, **PATHS[path])
    for _ in range(2):
        for p in params:
            p.grad = torch.zeros_like(p)
        optimizer.step()
    assert_equal([p.detach() for p in params], before)
    assert all(torch.isfinite(t).all() for t in snapshot(optimizer))


def test_closure_is_evaluated_with_gradients_enabled() -> None:
    param = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    optimizer = Padam([param], lr=0.1)

    def closure() -> float:
        optimizer.zero_grad()
        loss = (param**2).sum()
        loss.backward()
        return loss.detach().item()

    assert optimizer.step(closure) == 5.0
    assert param.grad is not None and param.abs().sum() < 3.0


def test_complex_parameters_update_real_and_imaginary_parts() -> None:
    real = torch.nn.Parameter(torch.randn(3, 2, dtype=torch.float64))
    complex_param = torch.nn.Parameter(torch.view_as_complex(real.detach().clone()))
    optimizers = [Padam([real]), Padam([complex_param])]
    for _ in range(2):
        grad = torch.randn(3, 2, dtype=torch.float64)
        real.grad, complex_param.grad = grad, torch.view_as_complex(grad.clone())
        for optimizer in optimizers:
            optimizer.step()
    torch.testing.assert_close(torch.view_as_real(complex_param.detach()), real.detach())


@pytest.mark.parametrize("path", ["for-loop", "foreach"])  # the scaler skips Padam.step itself
def test_grad_scaler_skips_a_step_with_an_infinite_gradient(path: str) -> None:
    model = torch.nn.Linear(4, 2)
    optimizer = Padam(model.parameters(), lr=0.1, **PATHS[path])
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    inputs = torch.randn(8, 4, generator=torch.Generator().manual_seed(5))

    twin = copy.deepcopy(model)
    plain = Padam(twin.parameters(), lr=0.1, **PATHS[path])
    scaler.scale(model(inputs).square().mean()).backward()
    scaler.step(optimizer)
    scaler.update()
    twin(inputs).square().mean().backward()
    plain.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b)  # the scaled step is the unscaled one

    before = snapshot(optimizer)
    optimizer.zero_grad()
    scaler.scale(model(inputs).square().mean()).backward()
    model.weight.grad[0, 0] = float("inf")  # type: ignore[index]
    scaler.step(optimizer)
    scaler.update()
    assert_equal(snapshot(optimizer), before)
    assert scaler.get_scale() == 2.0**7


@pytest.mark.filterwarnings("ignore:.*LeafSpec")
def test_lightning_fp16_mixed_precision_steps_through_the_grad_scaler() -> None:
    import lightning as L
    from lightning.pytorch.plugins import MixedPrecision

    class Regression(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(4, 2)

        def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
            return self.net(batch[0]).square().mean()

        def configure_optimizers(self) -> Padam:
            return Padam(self.parameters(), lr=0.1)

    module = Regression()
    start = module.net.weight.detach().clone()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    trainer = L.Trainer(
        accelerator="cpu",
        plugins=[MixedPrecision("16-mixed", device="cpu", scaler=scaler)],
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    data = torch.utils.data.TensorDataset(torch.randn(32, 4))
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=8))
    optimizer = trainer.optimizers[0]
    assert isinstance(optimizer, Padam)
    assert optimizer.state[module.net.weight]["step"].item() == 3
    assert torch.isfinite(module.net.weight).all()
    assert not torch.equal(module.net.weight.detach(), start)
