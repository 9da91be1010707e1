"""Training images/s of each network by precision, memory layout and compilation.

Run with ``make bench`` or ``python benchmarks/throughput.py [--device cuda] [--compile]``.

Times the network's training step alone (forward, cross-entropy, backward, a Padam step) on a
fixed normalised batch already on the device, for every network and mode, in interleaved rounds,
and prints images/s with the ratio to fp32 (the released code's setting). A mode is a Lightning
precision with optional suffixes: ``+cl`` (channels-last weights and batches) and ``+compile``
(``torch.compile`` of the network; ``+compile=MODE`` passes a torch.compile mode such as
``max-autotune-no-cudagraphs`` or ``reduce-overhead``). Compilation happens before timing and
its one-time cost is printed separately.

Defaults fit ``make bench`` on a small CPU (batch 32, four eager modes, a few steps). On a GPU use
e.g. ``--batch-size 128 --steps 30 --compile``. Each network's table is printed as soon as that
network is measured.

On CUDA, ``cudnn.benchmark`` is on or off as padam-fit's GPU defaults set it
(``_timing.CUDNN_BENCHMARK``) unless ``--cudnn-benchmark on|off`` says otherwise;
``--cudnn-benchmark both`` times the two settings against each other. They must run in separate
processes: cuDNN keeps the algorithm it picked for a convolution shape for the rest of the
process, whichever setting picked it, so switching the flag in one process changes nothing
after the first step. ``both`` therefore runs this script once per setting and round, in
alternating order, and prints the images/s of each setting and their ratio.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from _baselines import PADAM_SETTINGS, autocast_for
from _timing import (
    CUDNN_BENCHMARK,
    add_common_arguments,
    apply_threads,
    describe_machine,
    interleaved,
    median,
    resolve_device,
    synchronize,
)
from torch import nn

from padam_lightning.models import build_model
from padam_lightning.optim import Padam

NETWORKS = ("vgg16", "resnet18", "wrn16_4")
CPU_MODES = ("32-true", "32-true+cl", "bf16-mixed", "bf16-mixed+cl")
CUDA_MODES = ("32-true", "32-true+cl", "bf16-mixed", "bf16-mixed+cl", "16-mixed+cl")
COMPILED_MODE = "bf16-mixed+cl+compile"


@dataclass(frozen=True)
class Mode:
    """One way of running the training step."""

    precision: str
    channels_last: bool
    compile: bool
    compile_mode: str | None

    @classmethod
    def parse(cls, text: str) -> Mode:
        """Parse ``PRECISION[+cl][+compile[=MODE]]``."""
        precision, *flags = text.split("+")
        compile_flags = [flag for flag in flags if flag.split("=")[0] == "compile"]
        unknown = [flag for flag in flags if flag != "cl" and flag not in compile_flags]
        if unknown or precision not in ("32-true", "bf16-mixed", "16-mixed"):
            raise SystemExit(f"bad mode {text!r}: PRECISION[+cl][+compile[=MODE]]")
        compile_mode = None
        if compile_flags:
            compile_mode = compile_flags[0].partition("=")[2] or None
        return cls(precision, "cl" in flags, bool(compile_flags), compile_mode)


class TrainingStep:
    """A network, its optimizer and a fixed batch, ready to take timed steps."""

    def __init__(self, arch: str, mode: Mode, batch_size: int, device: torch.device) -> None:
        torch.manual_seed(0)
        self.mode = mode
        self.device = device
        net = build_model(arch).to(device)
        memory_format = torch.channels_last if mode.channels_last else torch.contiguous_format
        net = net.to(memory_format=memory_format)
        self.optimizer = Padam(net.parameters(), **PADAM_SETTINGS)
        self.net: nn.Module = torch.compile(net, mode=mode.compile_mode) if mode.compile else net  # type: ignore[assignment]
        self.scaler = torch.amp.GradScaler(device.type) if mode.precision == "16-mixed" else None
        images = torch.randn(batch_size, 3, 32, 32, device=device)
        self.images = images.contiguous(memory_format=memory_format)
        self.labels = torch.randint(0, 10, (batch_size,), device=device)
        self.batch_size = batch_size

    def step(self) -> None:
        """One training step."""
        with autocast_for(self.mode.precision, self.device):
            loss = F.cross_entropy(self.net(self.images), self.labels)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()

    def images_per_second(self, steps: int) -> float:
        """Time ``steps`` steps (take one untimed step first, after building)."""
        synchronize(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        synchronize(self.device)
        return self.batch_size * steps / (time.perf_counter() - start)


#: The line a ``--cudnn-benchmark both`` child prints per network and mode (read by the parent).
RATE_PREFIX = "rate\t"


def compare_cudnn_benchmark(args: argparse.Namespace) -> None:
    """Time every network and mode with cudnn.benchmark off and on, one process per measurement.

    Each round runs this script twice (``--rounds 1``), once per setting, the order alternating
    from round to round; prints each child's rates as they arrive and then the medians and the
    ratio on / off.
    """
    common = [
        sys.executable,
        __file__,
        "--device",
        args.device,
        "--threads",
        str(args.threads),
        "--networks",
        args.networks,
        "--rounds",
        "1",
    ]
    for flag, value in (("--modes", args.modes), ("--batch-size", args.batch_size)):
        if value is not None:
            common += [flag, str(value)]
    if args.steps is not None:
        common += ["--steps", str(args.steps)]
    if args.compile:
        common.append("--compile")
    settings = ("off", "on")
    rates: dict[tuple[str, str], dict[str, list[float]]] = {}
    for round_index in range(args.rounds):
        order = settings if round_index % 2 == 0 else settings[::-1]
        for setting in order:
            child = subprocess.run(
                [*common, "--cudnn-benchmark", setting, "--print-rates"],
                stdout=subprocess.PIPE,
                text=True,
                check=True,
            )
            for line in child.stdout.splitlines():
                if line.startswith(RATE_PREFIX):
                    _, arch, mode, rate = line.split("\t")
                    rates.setdefault((arch, mode), {s: [] for s in settings})[setting].append(
                        float(rate)
                    )
                    print(
                        f"  round {round_index + 1}/{args.rounds}: {arch} {mode} cudnn.benchmark "
                        f"{setting}: {float(rate):,.1f}",
                        file=sys.stderr,
                        flush=True,
                    )
    print(
        f"\ncudnn.benchmark off against on, images/s, median of {args.rounds} round(s), one "
        "process per measurement"
    )
    for (arch, mode), by_setting in rates.items():
        off, on = (median(by_setting[s]) for s in settings)
        print(
            f"{arch} {mode}: off {off:,.0f}, on {on:,.0f} images/s; on / off = {on / off:.3f} "
            f"(padam-fit's GPU default: {'on' if CUDNN_BENCHMARK else 'off'})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser, rounds=2)
    parser.add_argument(
        "--networks", default=",".join(NETWORKS), help=f"default {','.join(NETWORKS)}"
    )
    parser.add_argument(
        "--modes",
        default=None,
        help=f"comma-separated modes (default on the CPU: {','.join(CPU_MODES)}; "
        f"on CUDA: {','.join(CUDA_MODES)})",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help=f"add {COMPILED_MODE} (compiles each network first: a minute each on a small CPU)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="default 32 on the CPU, 128 on CUDA"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps per round (default 2 CPU, 30 CUDA)"
    )
    parser.add_argument(
        "--cudnn-benchmark",
        choices=("on", "off", "both"),
        default="on" if CUDNN_BENCHMARK else "off",
        help="torch.backends.cudnn.benchmark on CUDA (default: padam-fit's GPU default, "
        f"{'on' if CUDNN_BENCHMARK else 'off'}); both: time the two against each other",
    )
    parser.add_argument("--print-rates", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cudnn_benchmark == "both":
        compare_cudnn_benchmark(args)
        return
    apply_threads(args.threads)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = args.cudnn_benchmark == "on"
    batch_size = args.batch_size or (128 if cuda else 32)
    steps = args.steps or (30 if cuda else 2)
    mode_names = args.modes.split(",") if args.modes else list(CUDA_MODES if cuda else CPU_MODES)
    if args.compile and COMPILED_MODE not in mode_names:
        mode_names.append(COMPILED_MODE)
    modes = {name: Mode.parse(name) for name in mode_names}

    print(describe_machine(device))
    print(
        f"training step (forward, backward, Padam) on {device.type}, batch {batch_size}, "
        f"{steps} timed steps x {args.rounds} interleaved rounds; images/s, median"
        + (f"; cudnn.benchmark {args.cudnn_benchmark}" if cuda else ""),
        flush=True,
    )
    width = max(len(name) for name in mode_names)
    for arch in args.networks.split(","):
        prepared: dict[str, TrainingStep] = {}
        for name, mode in modes.items():
            start = time.perf_counter()
            prepared[name] = TrainingStep(arch, mode, batch_size, device)
            prepared[name].step()  # creates the optimizer state, tunes cuDNN, compiles
            synchronize(device)
            if mode.compile:
                seconds = time.perf_counter() - start
                print(f"  {arch} {name}: first step (compiles) {seconds:.1f} s", file=sys.stderr)
        samples = interleaved(
            {name: partial(step.images_per_second, steps) for name, step in prepared.items()},
            args.rounds,
        )
        rates = {name: median(values) for name, values in samples.items()}
        del prepared
        if cuda:
            torch.cuda.empty_cache()
        # This network's table now, so that a run stopped later keeps it.
        print(f"\n{'mode':<{width}}  {arch:>18}")
        for name in mode_names:
            print(
                f"{name:<{width}}  {rates[name]:9,.0f} ({rates[name] / rates[mode_names[0]]:4.2f}x)"
            )
        print(f"(ratios are to {mode_names[0]} of the same network)", flush=True)
        if args.print_rates:
            for name in mode_names:
                print(f"{RATE_PREFIX}{arch}\t{name}\t{rates[name]}")


if __name__ == "__main__":
    main()
