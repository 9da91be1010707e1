"""Time one optimizer step on ResNet-18's parameters: Padam's paths against torch's optimizers.

Run with ``make bench`` or ``python benchmarks/optimizer_step.py [--repeats N] [--compiled]``.
Prints, per device (the CPU, and CUDA when present), the median milliseconds per step of each
implementation and its ratio to torch's fused AMSGrad measured in the same run; candidates are
timed in interleaved rounds so that a busy machine slows them alike. Also prints the one-time cost
of building Padam's native CPU kernel and, where it runs, of compiling the fused graph.

The parameters have the shapes of the CIFAR ResNet-18 (62 tensors, 11,173,962 numbers) and random
gradients; the time of a step does not depend on the values.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypedDict

import torch
from torch import nn

from padam_lightning import Padam
from padam_lightning.optim import _native

PARTIALS = (1 / 8, 1 / 4, 1 / 16, 0.3)
REFERENCE = "torch Adam(amsgrad) fused"


def resnet18_parameter_shapes(num_classes: int = 10) -> list[tuple[int, ...]]:
    """Shapes of the CIFAR ResNet-18's parameters (kuangliu/pytorch-cifar), in model order."""
    shapes: list[tuple[int, ...]] = [(64, 3, 3, 3), (64,), (64,)]  # stem conv + batch norm
    in_planes = 64
    for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for block_stride in (stride, 1):
            shapes += [(planes, in_planes, 3, 3), (planes,), (planes,)]
            shapes += [(planes, planes, 3, 3), (planes,), (planes,)]
            if block_stride != 1 or in_planes != planes:  # projection shortcut
                shapes += [(planes, in_planes, 1, 1), (planes,), (planes,)]
            in_planes = planes
    shapes += [(num_classes, 512), (num_classes,)]
    return shapes


def make_parameters(device: torch.device) -> list[nn.Parameter]:
    generator = torch.Generator().manual_seed(0)
    params = []
    for shape in resnet18_parameter_shapes():
        param = nn.Parameter(torch.randn(shape, generator=generator).to(device))
        param.grad = (1e-2 * torch.randn(shape, generator=generator)).to(device)
        params.append(param)
    return params


OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]


class PathFlags(TypedDict, total=False):
    """The arguments that choose one of Padam's implementations."""

    foreach: bool
    fused: bool


def padam_factory(flags: PathFlags, partial: float) -> OptimizerFactory:
    """Padam on one implementation path at one p, with the benchmark's lr and weight decay."""

    def make(ps: list[nn.Parameter]) -> torch.optim.Optimizer:
        return Padam(ps, lr=0.1, partial=partial, weight_decay=5e-4, **flags)

    return make


def candidates(
    device: torch.device, include_compiled: bool, padam_paths: list[str]
) -> dict[str, OptimizerFactory]:
    found: dict[str, OptimizerFactory] = {
        REFERENCE: lambda ps: torch.optim.Adam(ps, lr=1e-3, amsgrad=True, fused=True),
        "torch Adam(amsgrad) foreach": lambda ps: torch.optim.Adam(
            ps, lr=1e-3, amsgrad=True, foreach=True
        ),
        "torch SGD(momentum) fused": lambda ps: torch.optim.SGD(
            ps, lr=0.1, momentum=0.9, fused=True
        ),
        "torch SGD(momentum) foreach": lambda ps: torch.optim.SGD(
            ps, lr=0.1, momentum=0.9, foreach=True
        ),
    }
    paths: dict[str, PathFlags] = {"default": {}, "foreach": {"foreach": True}}
    paths["for-loop"] = {"foreach": False}
    if device.type != "cpu" or include_compiled:
        paths["fused"] = {"fused": True}
    for path, flags in paths.items():
        if path not in padam_paths:
            continue
        for partial in PARTIALS:
            label = f"Padam {path} p={_fraction(partial)}"
            found[label] = padam_factory(flags, partial)
    return found


def _fraction(partial: float) -> str:
    inverse = 1 / partial
    return f"1/{round(inverse)}" if math.isclose(inverse, round(inverse)) else f"{partial:g}"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(
    factories: dict[str, OptimizerFactory], device: torch.device, rounds: int, steps: int
) -> dict[str, float]:
    """Median ms per step of each candidate, over interleaved rounds."""
    params = make_parameters(device)
    samples: dict[str, list[float]] = {name: [] for name in factories}
    for _ in range(rounds):
        for name, factory in factories.items():
            optimizer = factory(params)
            for _ in range(2):  # creates the state (and compiles, the first time)
                optimizer.step()
            _synchronize(device)
            for _ in range(steps):
                start = time.perf_counter()
                optimizer.step()
                _synchronize(device)
                samples[name].append(1e3 * (time.perf_counter() - start))
            del optimizer
    return {name: statistics.median(times) for name, times in samples.items()}


def first_step_seconds(factory: OptimizerFactory, device: torch.device) -> float:
    """Seconds of the first step (state creation plus any one-time compilation)."""
    params = make_parameters(device)
    optimizer = factory(params)
    start = time.perf_counter()
    optimizer.step()
    _synchronize(device)
    return time.perf_counter() - start


def native_build_cost() -> str:
    with tempfile.TemporaryDirectory() as fresh:
        start = time.perf_counter()
        try:
            _native._load_or_build(Path(fresh))
        except _native.NativeKernelUnavailableError as error:
            return f"native CPU kernel unavailable: {error}"
        cold = time.perf_counter() - start
        start = time.perf_counter()
        _native._load_or_build(Path(fresh))
        warm = time.perf_counter() - start
    return (
        f"native CPU kernel: one-time build {cold:.2f} s (cached in {_native.cache_dir()}), "
        f"loading the cached build {1e3 * warm:.1f} ms"
    )


def print_table(title: str, results: dict[str, float]) -> None:
    reference = results[REFERENCE]
    width = max(len(name) for name in results)
    print(f"\n{title}")
    print(f"{'optimizer':<{width}}  {'ms/step':>8}  {'x fused AMSGrad':>15}")
    for name, ms in results.items():
        print(f"{name:<{width}}  {ms:8.2f}  {ms / reference:15.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round (default 3)")
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="also time the torch.compile'd fused path on the CPU (compiles for a minute or more)",
    )
    parser.add_argument(
        "--paths",
        default="default,foreach,for-loop,fused",
        help="Padam paths to time, comma-separated (default: all; fused off the CPU only)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads (default: torch's choice)"
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    padam_paths = args.paths.split(",")

    shapes = resnet18_parameter_shapes()
    numel = sum(math.prod(shape) for shape in shapes)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, ", end="")
    print(f"ResNet-18 parameters: {len(shapes)} tensors, {numel:,} numbers")
    if os.environ.get("PADAM_LIGHTNING_NATIVE", "1") != "0":
        print(native_build_cost())

    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    for device in devices:
        factories = candidates(device, args.compiled, padam_paths)
        compiled = [name for name in factories if " fused p=" in name and name.startswith("Padam")]
        for name in compiled[:1]:
            seconds = first_step_seconds(factories[name], device)
            print(f"{device.type}: first step of '{name}' (compiles): {seconds:.1f} s")
        results = time_steps(factories, device, args.rounds, args.steps)
        print_table(f"{device.type} ({args.rounds} rounds x {args.steps} steps, median)", results)
        default = results.get(f"Padam default p={_fraction(1 / 8)}")
        if default is not None:
            print(
                f"\n{device.type}: Padam default (p=1/8) / fused AMSGrad = "
                f"{default / results[REFERENCE]:.2f} (goal <= 1.25)"
            )


if __name__ == "__main__":
    main()
