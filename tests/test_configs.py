"""Every shipped config parses and instantiates: catches drift between configs and code."""

from __future__ import annotations

import importlib
import inspect
import itertools
from pathlib import Path

import pytest
import pytorch_optimizer
import torch
import yaml

from padam_lightning.cli import PadamCLI, build_cli, optimizer_label
from padam_lightning.optim import Padam

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ARCH_CONFIGS = {"wrn.yaml": "wrn16_4", "resnet18.yaml": "resnet18", "vgg16.yaml": "vgg16"}
OPTIM_CONFIGS = sorted(p.name for p in (CONFIGS / "optim").glob("*.yaml"))


def _instantiate(configs: list[Path], tmp_path: Path, *extra: str) -> PadamCLI:
    args = [arg for config in configs for arg in ("--config", str(config))]
    args += ["--trainer.logger.init_args.save_dir", str(tmp_path), *extra]
    return build_cli(args, run=False)


@pytest.mark.parametrize("arch_config", sorted(ARCH_CONFIGS))
def test_architecture_config_is_the_released_setup(arch_config: str, tmp_path: Path) -> None:
    cli = _instantiate([CONFIGS / arch_config], tmp_path)
    assert cli.model.hparams.arch == ARCH_CONFIGS[arch_config]
    assert cli.model.hparams.num_classes == 10
    assert cli.trainer.max_epochs == 200
    assert (
        cli.datamodule.hparams.get("batch_size", getattr(cli.datamodule, "batch_size", None)) == 128
    )
    config = cli.config
    assert config.data.eval_batch_size == 100
    assert config.data.dataset == "cifar10"
    optimizer_config = cli.model.configure_optimizers()
    optimizer = optimizer_config["optimizer"]
    assert isinstance(optimizer, Padam)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["partial"], group["weight_decay"]) == (0.1, 0.125, 5e-4)
    assert tuple(group["betas"]) == (0.9, 0.999)
    scheduler = optimizer_config["lr_scheduler"]["scheduler"]
    assert isinstance(scheduler, torch.optim.lr_scheduler.MultiStepLR)
    assert dict(scheduler.milestones) == {100: 1, 150: 1}
    assert scheduler.gamma == 0.1


EXPECTED_OPTIMIZERS: dict[str, tuple[type[torch.optim.Optimizer], dict[str, float | bool]]] = {
    "padam.yaml": (Padam, {"lr": 0.1, "partial": 0.125, "weight_decay": 5e-4}),
    "sgdm.yaml": (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}),
    "adam.yaml": (torch.optim.Adam, {"lr": 1e-3, "amsgrad": False, "weight_decay": 5e-4}),
    "amsgrad.yaml": (torch.optim.Adam, {"lr": 1e-3, "amsgrad": True, "weight_decay": 5e-4}),
    # The final version's baselines (AdamW, Yogi, AdaBound) and RAdam: see each config's comment.
    "adamw.yaml": (torch.optim.AdamW, {"lr": 1e-3, "weight_decay": 1e-2, "amsgrad": False}),
    "radam.yaml": (
        torch.optim.RAdam,
        {"lr": 1e-3, "weight_decay": 5e-4, "decoupled_weight_decay": False},
    ),
    "yogi.yaml": (
        pytorch_optimizer.Yogi,
        {"lr": 1e-2, "eps": 1e-3, "weight_decay": 5e-4, "weight_decouple": False},
    ),
    "adabound.yaml": (
        pytorch_optimizer.AdaBound,
        {
            "lr": 1e-3,
            "final_lr": 0.1,
            "gamma": 1e-3,
            "weight_decay": 5e-4,
            "weight_decouple": False,
        },
    ),
}
#: The run folder name padam-fit gives each optimizer config (``<dataset>-<arch>-<label>``).
RUN_LABELS = {
    "padam.yaml": "padam",
    "sgdm.yaml": "sgdm",
    "adam.yaml": "adam",
    "amsgrad.yaml": "amsgrad",
    "adamw.yaml": "adamw",
    "radam.yaml": "radam",
    "yogi.yaml": "yogi",
    "adabound.yaml": "adabound",
}


def test_every_optimizer_config_is_covered() -> None:
    assert sorted(EXPECTED_OPTIMIZERS) == OPTIM_CONFIGS


@pytest.mark.parametrize(
    ("arch_config", "optim_config"), list(itertools.product(["wrn.yaml"], OPTIM_CONFIGS))
)
def test_optimizer_configs_stack_after_an_architecture(
    arch_config: str, optim_config: str, tmp_path: Path
) -> None:
    cli = _instantiate([CONFIGS / arch_config, CONFIGS / "optim" / optim_config], tmp_path)
    optimizer = cli.model.configure_optimizers()["optimizer"]
    expected_class, expected = EXPECTED_OPTIMIZERS[optim_config]
    assert type(optimizer) is expected_class
    group = optimizer.param_groups[0]
    for key, value in expected.items():
        assert group[key] == value, key
    if "betas" in group:
        assert tuple(group["betas"]) == (0.9, 0.999)
    assert optimizer_label(cli.config.model.optimizer) == RUN_LABELS[optim_config]


@pytest.mark.parametrize("optim_config", OPTIM_CONFIGS)
def test_optimizer_configs_take_a_training_step(optim_config: str, tmp_path: Path) -> None:
    configs = [CONFIGS / "wrn.yaml", CONFIGS / "tiny.yaml", CONFIGS / "optim" / optim_config]
    cli = _instantiate(configs, tmp_path)
    optimizer = cli.model.configure_optimizers()["optimizer"]
    torch.manual_seed(0)
    inputs, targets = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    before = [p.detach().clone() for p in cli.model.parameters()]
    loss = torch.nn.functional.cross_entropy(cli.model.net(inputs), targets)
    loss.backward()
    optimizer.step()
    after = list(cli.model.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(b, a) for b, a in zip(before, after, strict=True))


# Implementation switches, not hyperparameters: they do not change the update's result.
IMPLEMENTATION_ARGS = {"params", "foreach", "fused", "capturable", "differentiable"}


@pytest.mark.parametrize(
    "config", [f"optim/{name}" for name in OPTIM_CONFIGS] + sorted(ARCH_CONFIGS)
)
def test_optimizer_configs_spell_out_every_hyperparameter(config: str) -> None:
    # A setting left out would be carried over from an earlier config in the stack, e.g. a
    # ``decoupled_weight_decay: true`` turning the coupled-L2 Adam baseline into AdamW.
    optimizer = yaml.safe_load((CONFIGS / config).read_text())["model"]["optimizer"]
    module, name = optimizer["class_path"].rsplit(".", 1)
    signature = inspect.signature(getattr(importlib.import_module(module), name))
    hyperparameters = {
        name
        for name, parameter in signature.parameters.items()
        if parameter.kind is not inspect.Parameter.VAR_KEYWORD  # pytorch-optimizer's **kwargs
    } - IMPLEMENTATION_ARGS
    assert set(optimizer["init_args"]) == hyperparameters


def test_cifar100_config_links_the_class_count(tmp_path: Path) -> None:
    cli = _instantiate([CONFIGS / "resnet18.yaml", CONFIGS / "data" / "cifar100.yaml"], tmp_path)
    assert cli.config.data.dataset == "cifar100"
    assert cli.model.hparams.num_classes == 100
    assert cli.model.net(torch.zeros(1, 3, 32, 32)).shape == (1, 100)


def test_reproduction_config_drops_decay_and_raises_weight_decay(tmp_path: Path) -> None:
    cli = _instantiate(
        [
            CONFIGS / "resnet18.yaml",
            CONFIGS / "optim" / "sgdm.yaml",
            CONFIGS / "experiments" / "reproduction.yaml",
        ],
        tmp_path,
    )
    assert cli.trainer.max_epochs == 100
    optimizers = cli.model.configure_optimizers()
    assert isinstance(optimizers, torch.optim.SGD)  # no scheduler: a bare optimizer
    group = optimizers.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.1, 0.9, 5e-3)


@pytest.mark.parametrize(
    "extra_configs",
    [["demo.yaml"], ["tiny.yaml"], ["data/synthetic.yaml"]],
)
def test_auxiliary_configs_instantiate(extra_configs: list[str], tmp_path: Path) -> None:
    configs = [CONFIGS / "wrn.yaml", *(CONFIGS / name for name in extra_configs)]
    cli = _instantiate(configs, tmp_path)
    assert cli.config.data.dataset == "synthetic"
    assert cli.model.net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
