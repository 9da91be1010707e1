"""Sweep throughput: ``padam-sweep --runs-per-gpu K`` for several K, training images/s of K runs.

Run with ``make bench`` (tiny CPU sizes) or, on a GPU,
``python benchmarks/sweep_throughput.py --device cuda [--data-dir DIR]``.

Small CIFAR networks leave a large GPU mostly idle, so a sweep can run K trainings on each GPU at
once (``padam-sweep --runs-per-gpu K``). For each K this writes a sweep of K identical runs
(seeds 0 .. K-1) into a temporary folder and runs it with ``padam-sweep --runs-per-gpu K``, each
run training ``--epochs`` short epochs of ``--batches`` batches with ``_timing.EpochReport``
printing its epoch times into the run's ``fit.log``. One line per K, printed as soon as that
sweep ends:

- the sweep's wall-clock seconds (process start-up, data loading and compilation included) and
  the training images of all its runs per wall-clock second;
- the steady rate: the sum over the runs of their training images/s in the last epoch (the
  first pays for start-up and cuDNN tuning), i.e. what K runs sharing the device train per
  second together once they all run; and its ratio to K = 1.

The runs use padam-fit's GPU settings spelled out (bf16-mixed, channels-last, cudnn.benchmark as
``_timing.CUDNN_BENCHMARK``), without compilation unless ``--compile``: compiling would make the
short runs measure the compiler. Runs are started as ``python -m padam_lightning.cli`` (the
tree's package; no installed ``padam-fit`` is needed). If this ``padam-sweep`` has no
``--runs-per-gpu`` option the script says so and exits with status 0.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from _gpu_report import EPOCH_LINE
from _timing import CUDNN_BENCHMARK, REPO_ROOT

SWEEP = [sys.executable, "-m", "padam_lightning.experiments.sweep"]


def has_runs_per_gpu(env: dict[str, str]) -> bool:
    """Whether this tree's ``padam-sweep`` takes ``--runs-per-gpu``."""
    result = subprocess.run(
        [*SWEEP, "--help"], capture_output=True, text=True, env=env, cwd=REPO_ROOT, check=False
    )
    return "--runs-per-gpu" in result.stdout


def sweep_file(args: argparse.Namespace, runs: int, folder: Path) -> Path:
    """Write a sweep of ``runs`` identical runs (seeds 0 .. runs-1); return its path."""
    cuda = args.device == "cuda"
    overrides: dict[str, object] = {
        "model.arch": args.arch,
        "model.compile": args.compile,
        "model.channels_last": True,
        "trainer.accelerator": "gpu" if cuda else "cpu",
        "trainer.precision": "bf16-mixed",
        "trainer.benchmark": CUDNN_BENCHMARK and cuda,
        "trainer.max_epochs": args.epochs,
        "trainer.limit_train_batches": args.batches,
        "trainer.limit_val_batches": 2,
        "trainer.num_sanity_val_steps": 0,
        "trainer.enable_progress_bar": False,
        "data.batch_size": args.batch_size,
    }
    if args.data_dir:
        overrides.update({"data.dataset": "imagefolder", "data.data_dir": args.data_dir})
    else:
        overrides.update(
            {
                "data.dataset": "synthetic",
                "data.synthetic_train_size": args.batch_size * args.batches,
                "data.synthetic_test_size": 200,
            }
        )
    spec = {
        "name": f"runs_per_gpu_{runs}",
        "base": [str(REPO_ROOT / "configs" / "resnet18.yaml")],
        "grid": {},
        "seeds": list(range(runs)),
        "overrides": overrides,
    }
    path = folder / f"runs_per_gpu_{runs}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def last_epoch_rates(save_dir: Path) -> list[float]:
    """Each run's training images/s in its last reported epoch (from the runs' ``fit.log``)."""
    rates = []
    for log in sorted(save_dir.glob("*/*/fit.log")):
        epochs = EPOCH_LINE.findall(log.read_text(errors="replace"))
        if epochs:
            _, seconds, images, *_ = epochs[-1]
            rates.append(float(images.replace(",", "")) / float(seconds))
    return rates


def run_sweep(
    args: argparse.Namespace, runs_per_gpu: int, folder: Path, env: dict[str, str]
) -> tuple[float, list[float], int]:
    """Run one sweep of ``runs_per_gpu`` runs; return wall seconds, last-epoch rates, status."""
    save_dir = folder / f"logs_{runs_per_gpu}"
    command = [
        *SWEEP,
        str(sweep_file(args, runs_per_gpu, folder)),
        "--runs-per-gpu",
        str(runs_per_gpu),
        "--save-dir",
        str(save_dir),
        "--fit-command",
        shlex.join([sys.executable, "-m", "padam_lightning.cli"]),
        "--",
        "--trainer.callbacks+=_timing.EpochReport",
    ]
    print(f"  K={runs_per_gpu}: {shlex.join(command)}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    result = subprocess.run(
        command, cwd=REPO_ROOT, env=env, stdout=sys.stderr, stderr=sys.stderr, check=False
    )
    seconds = time.perf_counter() - start
    return seconds, last_epoch_rates(save_dir), result.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    parser.add_argument(
        "--runs-per-gpu", default=None, help="comma-separated K (default 1,2,4 CUDA, 1,2 CPU)"
    )
    parser.add_argument("--arch", default=None, help="network (default resnet18 CUDA, wrn10_1 CPU)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 128 CUDA, 16 CPU")
    parser.add_argument(
        "--batches", type=int, default=None, help="training batches per epoch (200 CUDA, 2 CPU)"
    )
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run (default 2)")
    parser.add_argument("--data-dir", default=None, help="CIFAR-10 JPEG folder (default synthetic)")
    parser.add_argument("--compile", action="store_true", help="compile the runs' networks")
    args = parser.parse_args()
    if args.device == "auto":
        import torch  # only to look for a GPU

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = args.device == "cuda"
    ks = [int(k) for k in (args.runs_per_gpu or ("1,2,4" if cuda else "1,2")).split(",")]
    args.arch = args.arch or ("resnet18" if cuda else "wrn10_1")
    args.batch_size = args.batch_size or (128 if cuda else 16)
    args.batches = args.batches or (200 if cuda else 2)

    env = dict(os.environ)
    # The runs import the tree's package and EpochReport from benchmarks/.
    paths = [str(REPO_ROOT), str(REPO_ROOT / "benchmarks"), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env["PYTHONUNBUFFERED"] = "1"
    if not has_runs_per_gpu(env):
        print("sweep_throughput: skipped: this padam-sweep has no --runs-per-gpu option")
        return
    print(
        f"padam-sweep --runs-per-gpu K on {args.device}: K runs of {args.arch}, batch "
        f"{args.batch_size}, {args.epochs} epochs of {args.batches} batches, bf16-mixed, "
        f"compile {args.compile}; images/s of all runs together",
        flush=True,
    )
    steady_one = None
    with tempfile.TemporaryDirectory(prefix="sweep-throughput-") as tmp:
        for k in ks:
            seconds, rates, status = run_sweep(args, k, Path(tmp), env)
            images = k * args.epochs * args.batches * args.batch_size
            line = (
                f"runs per GPU {k}: sweep {seconds:6.1f} s wall, {images / seconds:9,.1f} images/s "
                "over the wall time"
            )
            if status != 0:
                line += f"; padam-sweep exited with status {status}"
            if len(rates) == k:
                steady = sum(rates)
                steady_one = steady if k == 1 else steady_one
                line += f"; steady (last epochs, summed) {steady:9,.1f} images/s"
                if steady_one:
                    line += f" ({steady / steady_one:.2f}x K=1)"
            else:
                line += f"; {len(rates)} of {k} runs reported an epoch"
            print(line, flush=True)


if __name__ == "__main__":
    main()
