"""Time one optimizer step on ResNet-18's parameters: Padam's paths against torch's AMSGrad.

Run with ``make bench`` or ``python benchmarks/optimizer_step.py [--rounds N] [--steps N]``.
Per device (the CPU, and CUDA when present; ``--devices`` picks), prints the median milliseconds
per step of each candidate and two ratios, each measured in the same run:

* Padam's default (multi-tensor) path against torch's ``Adam(amsgrad=True, foreach=True)``
  (goal <= 1.10x);
* Padam's fused (``torch.compile``'d) path against torch's ``Adam(amsgrad=True, fused=True)``
  (goal <= 1.25x). Its one-time compilation (one graph for p = 1/8's square-root chain, one for
  a general p such as 0.3) is timed apart, before the rounds.

Candidates are timed in interleaved rounds so that a busy machine slows them alike. Every
candidate has weight decay 5e-4 (the paper's). The parameters have the shapes of the CIFAR
ResNet-18 (62 tensors, 11,173,962 numbers) and random gradients; a step's time does not depend on
the values.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch
from _timing import synchronize
from torch import nn

from padam_lightning import Padam

PARTIALS = (1 / 8, 1 / 4, 1 / 16, 0.3)
#: The fused path compiles a graph per way of computing the power: a square-root chain, a pow.
FUSED_PARTIALS = (1 / 8, 0.3)
WEIGHT_DECAY = 5e-4
FOREACH_AMSGRAD = "torch Adam(amsgrad) foreach"
FUSED_AMSGRAD = "torch Adam(amsgrad) fused"

OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]


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


def fraction(partial: float) -> str:
    inverse = 1 / partial
    return f"1/{round(inverse)}" if math.isclose(inverse, round(inverse)) else f"{partial:g}"


def padam_label(path: str, partial: float) -> str:
    return f"Padam {path} p={fraction(partial)}"


def candidates(paths: list[str]) -> dict[str, OptimizerFactory]:
    """Torch's AMSGrad and SGD; Padam on each of ``paths`` at each of :data:`PARTIALS`."""
    found: dict[str, OptimizerFactory] = {
        FUSED_AMSGRAD: lambda ps: torch.optim.Adam(
            ps, lr=1e-3, amsgrad=True, weight_decay=WEIGHT_DECAY, fused=True
        ),
        FOREACH_AMSGRAD: lambda ps: torch.optim.Adam(
            ps, lr=1e-3, amsgrad=True, weight_decay=WEIGHT_DECAY, foreach=True
        ),
        "torch SGD(momentum) fused": lambda ps: torch.optim.SGD(
            ps, lr=0.1, momentum=0.9, weight_decay=WEIGHT_DECAY, fused=True
        ),
    }
    flags: dict[str, tuple[bool | None, bool | None]] = {  # (foreach, fused)
        "default": (None, None),
        "fused": (None, True),
        "for-loop": (False, None),
    }
    for path in paths:
        for partial in {"default": PARTIALS, "fused": FUSED_PARTIALS}.get(path, PARTIALS[:1]):

            def make(ps: list[nn.Parameter], p: float = partial, f: str = path) -> Padam:
                foreach, fused = flags[f]
                return Padam(
                    ps, lr=0.1, partial=p, weight_decay=WEIGHT_DECAY, foreach=foreach, fused=fused
                )

            found[padam_label(path, partial)] = make
    return found


def first_step_seconds(factory: OptimizerFactory, device: torch.device) -> float:
    """Seconds of the first step: state creation plus, for the fused path, compilation."""
    optimizer = factory(make_parameters(device))
    start = time.perf_counter()
    optimizer.step()
    synchronize(device)
    return time.perf_counter() - start


def time_steps(
    factories: dict[str, OptimizerFactory], device: torch.device, rounds: int, steps: int
) -> dict[str, float]:
    """Median ms per step of each candidate, over interleaved rounds."""
    params = make_parameters(device)
    samples: dict[str, list[float]] = {name: [] for name in factories}
    names = list(factories)
    for index in range(rounds):
        # A B ..., then ... B A: a candidate's place (what the allocator holds, freed memory to
        # fault in again) biased the medians by up to 2x when the order was fixed.
        for name in names if index % 2 == 0 else names[::-1]:
            optimizer = factories[name](params)
            for _ in range(2):  # creates the state and warms caches
                optimizer.step()
            synchronize(device)
            for _ in range(steps):
                start = time.perf_counter()
                optimizer.step()
                synchronize(device)
                samples[name].append(1e3 * (time.perf_counter() - start))
            del optimizer
    return {name: statistics.median(times) for name, times in samples.items()}


def reference_of(name: str) -> str:
    """The torch optimizer a candidate is compared with: fused with fused, else foreach."""
    return FUSED_AMSGRAD if " fused" in name else FOREACH_AMSGRAD


def print_table(title: str, results: dict[str, float]) -> None:
    width = max(len(name) for name in results)
    print(f"\n{title}")
    print(f"{'optimizer':<{width}}  {'ms/step':>8}  {'x torch AMSGrad':>15}  compared with")
    for name, ms in results.items():
        reference = reference_of(name)
        print(f"{name:<{width}}  {ms:8.2f}  {ms / results[reference]:15.2f}  {reference}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round (default 3)")
    parser.add_argument(
        "--paths",
        default="default,fused",
        help="Padam paths to time, comma-separated, of default, fused, for-loop "
        "(default: default,fused)",
    )
    parser.add_argument(
        "--devices",
        default="cpu,cuda",
        help="devices to time, comma-separated (default: cpu,cuda; cuda only when present)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads (default: torch's choice)"
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    paths = args.paths.split(",")

    shapes = resnet18_parameter_shapes()
    numel = sum(math.prod(shape) for shape in shapes)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, ", end="")
    print(f"ResNet-18 parameters: {len(shapes)} tensors, {numel:,} numbers")
    devices = [
        torch.device(name)
        for name in args.devices.split(",")
        if name != "cuda" or torch.cuda.is_available()
    ]
    for device in devices:
        factories = candidates(paths)
        for partial in FUSED_PARTIALS if "fused" in paths else ():
            name = padam_label("fused", partial)
            seconds = first_step_seconds(factories[name], device)
            print(f"{device.type}: {name}, first step (compiles its graph): {seconds:.1f} s")
        results = time_steps(factories, device, args.rounds, args.steps)
        print_table(f"{device.type} ({args.rounds} rounds x {args.steps} steps, median)", results)
        for path, goal in (("default", 1.10), ("fused", 1.25)):
            label = padam_label(path, PARTIALS[0])
            if label in results:
                ratio = results[label] / results[reference_of(label)]
                print(
                    f"{device.type}: {label} / {reference_of(label)} = {ratio:.2f} "
                    f"(goal <= {goal:.2f})"
                )


if __name__ == "__main__":
    main()
