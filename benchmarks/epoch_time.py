"""Seconds per epoch: ``padam-fit`` against a faithful rerun of the released code's pipeline.

Run with ``make bench`` (a tiny CPU smoke size) or, on a GPU with the CIFAR-10 JPEGs,
``python benchmarks/epoch_time.py --device cuda --data-dir DIR --arch resnet18``.

An epoch is the paper's: one pass over the training split (50,000 images for CIFAR-10) and one
evaluation of the test split (10,000). Both sides train the same network with Padam at batch 128
(evaluation at 100), on the same device:

- released: fp32, a ``DataLoader`` with 2 workers running torchvision's per-image PIL transforms,
  the for-loop Padam, ``DataParallel`` and ``cudnn.benchmark`` on CUDA, the loss and correct count
  read back every step (:func:`_baselines.released_epoch`; its extra pass over the training split
  is left out);
- padam-fit: the package as shipped (``build_cli`` on the network's config), with its defaults for
  the device (bf16-mixed, channels-last and compilation on CUDA; fp32 on the CPU) unless
  ``--precision`` / ``--compile`` / ``--channels-last`` say otherwise.

Each side runs ``--epochs`` epochs and the last one is reported (the first pays for cuDNN tuning,
compilation and worker start-up). Goal on a GPU: padam-fit at least 10x faster per epoch.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from _baselines import released_epoch, released_loader, released_model
from _timing import (
    REPO_ROOT,
    EpochReport,
    add_common_arguments,
    apply_threads,
    describe_machine,
    quiet_output,
    resolve_device,
)

from padam_lightning.cli import build_cli
from padam_lightning.data import CIFARDataModule
from padam_lightning.models import build_model
from padam_lightning.optim import Padam

CONFIG_OF_ARCH = {"wrn16_4": "wrn.yaml", "resnet18": "resnet18.yaml", "vgg16": "vgg16.yaml"}


def data_arguments(args: argparse.Namespace) -> list[str]:
    """The ``--data.*`` arguments of the chosen data."""
    if args.data_dir:
        return ["--data.dataset", "imagefolder", "--data.data_dir", args.data_dir]
    return [
        "--data.dataset",
        "synthetic",
        "--data.synthetic_train_size",
        str(args.train_size),
        "--data.synthetic_test_size",
        str(args.test_size),
    ]


def make_data(args: argparse.Namespace) -> CIFARDataModule:
    """The data module of the chosen data (for the released pipeline's arrays)."""
    if args.data_dir:
        data = CIFARDataModule(dataset="imagefolder", data_dir=args.data_dir)
    else:
        data = CIFARDataModule(
            dataset="synthetic",
            synthetic_train_size=args.train_size,
            synthetic_test_size=args.test_size,
        )
    data.setup("fit")
    return data


def padam_fit_epochs(args: argparse.Namespace, device: torch.device) -> list[dict[str, float]]:
    """Run padam-fit for ``args.epochs`` epochs; return the per-epoch records."""
    config = CONFIG_OF_ARCH.get(args.arch, "wrn.yaml")
    cli_args = [
        "--config",
        str(REPO_ROOT / "configs" / config),
        "--model.arch",
        args.arch,
        *data_arguments(args),
        "--trainer.accelerator",
        "gpu" if device.type == "cuda" else "cpu",
        "--trainer.max_epochs",
        str(args.epochs),
        "--trainer.num_sanity_val_steps",
        "0",
    ]
    if args.limit_batches is not None:
        limit = str(args.limit_batches)
        cli_args += ["--trainer.limit_train_batches", limit, "--trainer.limit_val_batches", limit]
    for option, value in (
        ("--trainer.precision", args.precision),
        ("--model.compile", args.compile),
        ("--model.channels_last", args.channels_last),
    ):
        if value is not None:
            cli_args += [option, value]
    report = EpochReport(prefix="  padam-fit ")
    with tempfile.TemporaryDirectory() as log_dir:
        cli_args += ["--trainer.logger.init_args.save_dir", log_dir]
        with quiet_output(keep=args.show_lightning):
            cli = build_cli(cli_args, run=False)
            cli.trainer.callbacks.append(  # type: ignore[attr-defined]
                report
            )
            precision = cli.trainer.precision
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    model = cli.model
    print(
        f"  padam-fit settings: precision {precision}, channels_last {model.uses_channels_last}, "
        f"compiled {model.is_compiled}"
    )
    for record in report.records:
        print(
            f"  padam-fit epoch {int(record['epoch'])}: train {record['train_seconds']:.2f} s, "
            f"eval {record['eval_seconds']:.2f} s, with checkpointing "
            f"{record.get('wall_seconds', float('nan')):.2f} s, "
            f"val/err {record.get('val/err', float('nan')):.4f}"
        )
    return report.records


def released_epochs(
    args: argparse.Namespace, device: torch.device, data: CIFARDataModule
) -> list[dict[str, float]]:
    """Run the released pipeline for ``args.epochs`` epochs; return the per-epoch records."""
    torch.manual_seed(0)
    model = released_model(build_model(args.arch, num_classes=data.num_classes), device)
    optimizer = Padam(model.parameters(), lr=0.1, partial=0.125, weight_decay=5e-4, foreach=False)
    train_loader = released_loader(data.split("train"), train=True)
    test_loader = released_loader(data.split("test"), train=False)
    records = []
    for epoch in range(args.epochs):
        record = released_epoch(
            model, optimizer, train_loader, test_loader, device, max_batches=args.limit_batches
        )
        record["epoch_seconds"] = record["train_seconds"] + record["eval_seconds"]
        print(
            f"  released epoch {epoch}: train {record['train_seconds']:.2f} s, "
            f"eval {record['eval_seconds']:.2f} s, test error {record['test_err']:.4f}",
            flush=True,
        )
        records.append(record)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser, rounds=1)
    parser.add_argument("--arch", default=None, help="network (default wrn10_1 CPU, resnet18 GPU)")
    parser.add_argument("--data-dir", default=None, help="the CIFAR-10 JPEG folder (train/, test/)")
    parser.add_argument(
        "--train-size", type=int, default=1024, help="synthetic training images (default 1024)"
    )
    parser.add_argument(
        "--test-size", type=int, default=256, help="synthetic test images (default 256)"
    )
    parser.add_argument("--epochs", type=int, default=2, help="epochs per side (default 2)")
    parser.add_argument("--precision", default=None, help="padam-fit precision (default: auto)")
    parser.add_argument("--compile", default=None, help="padam-fit model.compile (true/false)")
    parser.add_argument(
        "--channels-last", default=None, help="padam-fit model.channels_last (true/false)"
    )
    parser.add_argument(
        "--limit-batches", type=int, default=None, help="at most this many batches per pass"
    )
    parser.add_argument("--skip-released", action="store_true", help="time padam-fit only")
    parser.add_argument(
        "--skip-padam-fit", action="store_true", help="time the released pipeline only"
    )
    parser.add_argument("--show-lightning", action="store_true", help="let Lightning print")
    args = parser.parse_args()
    apply_threads(args.threads)
    device = resolve_device(args.device)
    if args.arch is None:
        args.arch = "resnet18" if device.type == "cuda" else "wrn10_1"

    data = make_data(args)
    print(describe_machine(device))
    print(
        f"{args.arch} on {device.type}, {len(data.split('train')):,} training and "
        f"{len(data.split('test')):,} test images "
        f"({'JPEG folder ' + args.data_dir if args.data_dir else 'synthetic'}), "
        f"{args.epochs} epochs per side, last epoch reported"
    )
    rows: dict[str, dict[str, float]] = {}
    for round_index in range(args.rounds):
        if not args.skip_padam_fit:
            rows[f"padam-fit (round {round_index + 1})"] = padam_fit_epochs(args, device)[-1]
        if not args.skip_released:
            rows[f"released pipeline (round {round_index + 1})"] = released_epochs(
                args, device, data
            )[-1]

    print(f"\n{'seconds per epoch':<30}  {'train':>8}  {'eval':>8}  {'epoch':>8}")
    for name, record in rows.items():
        train, evaluation = record["train_seconds"], record["eval_seconds"]
        print(f"{name:<30}  {train:8.2f}  {evaluation:8.2f}  {train + evaluation:8.2f}")
    if not (args.skip_released or args.skip_padam_fit):
        ours = [r["train_seconds"] + r["eval_seconds"] for n, r in rows.items() if "padam" in n]
        released = [
            r["train_seconds"] + r["eval_seconds"] for n, r in rows.items() if "released" in n
        ]
        ratio = min(released) / min(ours)
        print(f"\nreleased epoch / padam-fit epoch = {ratio:.1f}x (goal >= 10 on a GPU)")


if __name__ == "__main__":
    main()
