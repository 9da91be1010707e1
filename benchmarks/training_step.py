"""Time a ``padam-fit`` training step against a plain PyTorch loop doing the same work.

Run with ``make bench`` or ``python benchmarks/training_step.py [--arch wrn16_4] [--device cuda]``.

The Lightning side is ``padam-fit`` itself, built by :func:`padam_lightning.cli.build_cli` from
``configs/wrn.yaml`` with synthetic data in memory: ``ImageClassifier`` and ``CIFARDataModule``
in a real ``lightning.Trainer`` with the TensorBoard logger, the progress bar, the checkpoint
callbacks and the project's metrics (``train/loss``, ``train/err``). The plain loop
(:func:`_baselines.plain_training_steps`) builds the same network and batches (``make_batch``),
and runs the same Padam step, cross-entropy and torchmetrics updates under the same precision.
Both are timed over the same steps after a warm-up, in interleaved rounds, and the table gives the
median time per step and the ratio (goal: Lightning at most 1.05x the plain loop).

The CPU default is the small ``wrn10_1`` at the paper's batch of 128: its steps are short, so a
per-step framework overhead shows more than it would behind a full-size network. The plain loop
never waits for the device inside the timed steps (see ``plain_training_steps``), so a wait that
padam-fit adds shows in the ratio; on CUDA a third row times the plain loop with a read-back of
``isfinite(loss)`` after every step (one synchronisation per step), which is what such a wait
costs. On CUDA both sides run with ``cudnn.benchmark`` as padam-fit's GPU defaults set it
(``_timing.CUDNN_BENCHMARK``).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from _baselines import plain_training_steps
from _timing import (
    CUDNN_BENCHMARK,
    REPO_ROOT,
    StepTimer,
    add_common_arguments,
    apply_threads,
    describe_machine,
    interleaved,
    print_table,
    quiet_output,
    resolve_device,
)

from padam_lightning.cli import build_cli
from padam_lightning.data import CIFARDataModule
from padam_lightning.models import build_model


def lightning_seconds(args: argparse.Namespace, device: torch.device, log_dir: Path) -> float:
    """Seconds of ``args.steps`` steps of a padam-fit run (after ``args.warmup``)."""
    batches = args.warmup + args.steps + 1
    cli_args = [
        "--config",
        str(REPO_ROOT / "configs" / "wrn.yaml"),
        "--model.arch",
        args.arch,
        "--model.channels_last",
        str(args.channels_last).lower(),
        "--model.compile",
        str(args.compile).lower(),
        "--data.dataset",
        "synthetic",
        "--data.synthetic_train_size",
        str(args.batch_size * batches),
        "--data.synthetic_test_size",
        "100",
        "--data.batch_size",
        str(args.batch_size),
        "--trainer.accelerator",
        "gpu" if device.type == "cuda" else "cpu",
        "--trainer.benchmark",
        str(CUDNN_BENCHMARK and device.type == "cuda").lower(),
        "--trainer.precision",
        args.precision,
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        str(batches),
        "--trainer.limit_val_batches",
        "0",
        "--trainer.num_sanity_val_steps",
        "0",
        "--trainer.logger.init_args.save_dir",
        str(log_dir),
    ]
    timer = StepTimer(args.warmup, args.steps)
    with quiet_output(keep=args.show_lightning):
        cli = build_cli(cli_args, run=False)
        cli.trainer.callbacks.append(  # type: ignore[attr-defined]
            timer
        )
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    if timer.seconds is None:
        raise RuntimeError("the Lightning run ended before the timed steps")
    return timer.seconds


def plain_seconds(
    args: argparse.Namespace, device: torch.device, read_back_each_step: bool
) -> float:
    """Seconds of ``args.steps`` steps of the plain loop (after ``args.warmup``)."""
    batches = args.warmup + args.steps + 1
    # As Lightning's Trainer(benchmark=...) sets it for the padam-fit side.
    torch.backends.cudnn.benchmark = CUDNN_BENCHMARK and device.type == "cuda"
    torch.manual_seed(0)
    data = CIFARDataModule(
        dataset="synthetic",
        synthetic_train_size=args.batch_size * batches,
        synthetic_test_size=100,
        batch_size=args.batch_size,
        seed=0,
    )
    net = build_model(args.arch).to(device)
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
    if args.compile:
        net = torch.compile(net)  # type: ignore[assignment]
    return plain_training_steps(
        net,
        data,
        device,
        args.precision,
        args.channels_last,
        args.warmup,
        args.steps,
        read_back_each_step=read_back_each_step,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser, rounds=3)
    parser.add_argument("--arch", default="wrn10_1", help="network (default wrn10_1)")
    parser.add_argument("--batch-size", type=int, default=128, help="batch size (default 128)")
    parser.add_argument(
        "--precision",
        default=None,
        help="Lightning precision (default: 32-true on the CPU, bf16-mixed on CUDA)",
    )
    parser.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="channels-last network and batches (default: on for CUDA, off on the CPU)",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the network")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    parser.add_argument(
        "--show-lightning", action="store_true", help="let Lightning print (progress bar etc.)"
    )
    args = parser.parse_args()
    apply_threads(args.threads)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    if args.precision is None:
        args.precision = "bf16-mixed" if cuda else "32-true"
    if args.channels_last is None:
        args.channels_last = cuda

    print(describe_machine(device))
    print(
        f"{args.arch}, batch {args.batch_size}, {args.precision}, channels_last "
        f"{args.channels_last}, compile {args.compile}, {device.type}: {args.warmup} warm-up "
        f"+ {args.steps} timed steps, {args.rounds} interleaved rounds"
    )
    with tempfile.TemporaryDirectory() as log_dir:
        candidates = {
            "plain PyTorch loop": lambda: 1e3 * plain_seconds(args, device, False) / args.steps,
            "padam-fit (Lightning)": lambda: (
                1e3 * lightning_seconds(args, device, Path(log_dir)) / args.steps
            ),
        }
        if cuda:
            candidates["plain loop + isfinite(loss) read back each step"] = lambda: (
                1e3 * plain_seconds(args, device, True) / args.steps
            )
        samples = interleaved(candidates, args.rounds)
    medians = print_table(
        "ms per training step",
        samples,
        baseline="plain PyTorch loop",
        unit="ms/step",
        higher_is_better=False,
    )
    ratio = medians["padam-fit (Lightning)"] / medians["plain PyTorch loop"]
    print(f"\npadam-fit step / plain loop step = {ratio:.3f} (goal <= 1.05)")


if __name__ == "__main__":
    main()
