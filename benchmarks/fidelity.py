"""Side by side: padam-fit against a faithful rerun of the released training loop, per epoch.

Both pipelines train the same small network on the real CIFAR-10 JPEGs for a few epochs, with
Padam (lr 0.1, p 1/8, weight decay 5e-4) and with SGD with momentum (lr 0.1, momentum 0.9, weight
decay 5e-4), over several seeds, and record per epoch the train loss and error under both
definitions (the running mean over the epoch's steps, and the released code's second pass over
the training split) and the test loss and error. The acceptance check: at every epoch each of the
package's curves lies within the seed spread (min..max over seeds) of the released loop's.

- ``package``: padam-fit as shipped, through the Lightning API (``ImageClassifier`` and
  ``CIFARDataModule`` with ``dataset=imagefolder``, fp32 on the CPU) with the
  :class:`~padam_lightning.training.train_pass.TrainPass` callback of
  ``configs/experiments/released_metrics.yaml``.
- ``released``: the loop of uclaml/Padam's ``run_cnn_test_cifar10.py`` rewritten for current
  PyTorch: ``MultiStepLR([100, 150])`` stepped at the start of each epoch; torchvision's per-image
  ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize`` on PIL
  images from an in-memory uint8 array in a shuffled ``DataLoader`` of batch 128 (test: 100, in
  order); ``optimizer.step(closure)`` whose closure forwards the batch once more (so BatchNorm's
  running statistics move twice per step, as in the released code); the released for-loop Padam
  update (:class:`ReleasedPadam`) or ``torch.optim.SGD``; then the second pass over the training
  loader in train mode without a step, then the test split in eval mode. Loss means are means
  of per-batch means, as the released code computes them. Differences from the released script,
  none of which changes a number's distribution: ``torch.no_grad()`` in the second pass and the
  test pass (the released code's first version used ``volatile=True``, its latest builds a graph
  it never uses), no ``DataParallel``, ``num_workers=0`` instead of 2 (CPU budget), a seed.

Both use the package's WRN (the released network's architecture, ``padam_lightning.models``) and
the images decoded by the package's image-folder loader, so only the training pipelines differ.
With a few epochs the ``MultiStepLR`` schedule (milestones 100, 150) never decays: the learning
rate is constant in both.

Usage::

    python benchmarks/fidelity.py all --seeds 0 1 --epochs 3 --train-size 5000    # runs + report
    python benchmarks/fidelity.py run --pipeline released --optimizer padam --seed 0 ...
    python benchmarks/fidelity.py all --device cuda --arch wrn16_4 --train-size 50000 --epochs 20
    python benchmarks/fidelity.py report                                          # tables only
    python benchmarks/fidelity.py                     # print the committed report, write nothing

Each run writes ``RUNS_DIR/<pipeline>-<optimizer>-seed<k>.json`` after every epoch, so a run that
is stopped keeps its finished epochs; ``all`` skips runs whose JSON is complete. The report
writes ``fidelity.md`` (tables) and ``fidelity.png`` (figure) next to the runs folder.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO_ROOT / "data" / "cifar10-jpeg"
DEFAULT_OUT = REPO_ROOT / "docs" / "results" / "fidelity"
PIPELINES = ("package", "released")
OPTIMIZERS = ("padam", "sgdm")
#: The per-epoch quantities both pipelines record.
QUANTITIES = (
    "train_loss_running",
    "train_err_running",
    "train_loss_pass",
    "train_err_pass",
    "test_loss",
    "test_err",
)
#: The quantities the acceptance check and the figure use.
CHECKED = ("train_loss_running", "train_loss_pass", "train_err_pass", "test_err")
LR, WEIGHT_DECAY, PARTIAL, MOMENTUM = 0.1, 5e-4, 0.125, 0.9
MILESTONES = (100, 150)
TRAIN_BATCH, TEST_BATCH = 128, 100


# -- data ---------------------------------------------------------------------------------------


def subset_folder(source: Path, train_size: int, work_dir: Path) -> Path:
    """An image folder holding the first ``train_size`` training images in a fixed shuffled order.

    The order is a permutation of the sorted file listing drawn from ``torch.Generator`` seed 0,
    the same for every run; the test split is the whole ``source/test``. Files are symlinks.

    Args:
        source: Folder with ``train/<class>/*.jpg`` and ``test/<class>/*.jpg``.
        train_size: Number of training images to keep; at least the split's size keeps them all
            and returns ``source`` itself.
        work_dir: Where to build the subset folder.

    Returns:
        The folder to give the data loaders (``train/`` and ``test/`` inside).
    """
    files = sorted((source / "train").glob("*/*"))
    if train_size >= len(files):
        return source
    target = work_dir / f"cifar10-jpeg-train{train_size}"
    if (target / "train").is_dir():
        return target
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(0))
    staging = work_dir / f".staging-{os.getpid()}"
    for index in order[:train_size].tolist():
        file = files[index]
        link = staging / "train" / file.parent.name / file.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(file.resolve())
    (staging / "test").symlink_to((source / "test").resolve())
    staging.rename(target)
    return target


def load_splits(folder: Path) -> tuple[Any, Any]:
    """The train and test splits as the package decodes them (cached in ``folder``)."""
    from padam_lightning.data.image_folder import load_image_folder_split

    return load_image_folder_split(folder, "train"), load_image_folder_split(folder, "test")


# -- the released loop ----------------------------------------------------------------------------


class ReleasedPadam(torch.optim.Optimizer):
    """The released Padam update (uclaml/Padam ``Padam.py``) as a plain loop over parameters.

    Per parameter: L2 weight decay added to the gradient; Adam's moments; AMSGrad's running
    maximum of the second moment; the step ``lr * sqrt(1 - beta2^t) / (1 - beta1^t)`` times
    ``m / (sqrt(v_max) + eps)^(2p)``. Written against today's tensor API; the arithmetic is the
    released file's.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        partial: float = 0.25,
    ) -> None:
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "partial": partial,
        }
        super().__init__(params, defaults)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update; calls ``closure`` first, as the released optimizer does."""
        loss = closure() if closure is not None else None
        with torch.no_grad():
            for group in self.param_groups:
                beta1, beta2 = group["betas"]
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    state = self.state[p]
                    if not state:
                        state["step"] = 0
                        state["m"] = torch.zeros_like(p)
                        state["v"] = torch.zeros_like(p)
                        state["v_max"] = torch.zeros_like(p)
                    state["step"] += 1
                    grad = p.grad
                    if group["weight_decay"] != 0:
                        grad = grad.add(p, alpha=group["weight_decay"])
                    state["m"].mul_(beta1).add_(grad, alpha=1 - beta1)
                    state["v"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                    torch.maximum(state["v_max"], state["v"], out=state["v_max"])
                    denom = state["v_max"].sqrt().add_(group["eps"])
                    t = state["step"]
                    step_size = group["lr"] * math.sqrt(1 - beta2**t) / (1 - beta1**t)
                    p.addcdiv_(state["m"], denom ** (2 * group["partial"]), value=-step_size)
        return loss


def _released_optimizer(name: str, params: Iterable[torch.Tensor]) -> torch.optim.Optimizer:
    if name == "padam":
        return ReleasedPadam(params, lr=LR, partial=PARTIAL, weight_decay=WEIGHT_DECAY)
    return torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)


def _sweep(
    model: nn.Module, loader: DataLoader[Any], step: Callable[[torch.Tensor, torch.Tensor], Any]
) -> tuple[float, float, float]:
    """Loop over a loader as the released code does: (mean of batch losses, error, seconds)."""
    start = time.perf_counter()
    loss_sum, correct, total, batches = 0.0, 0, 0, 0
    for inputs, targets in loader:
        outputs, loss = step(inputs, targets)
        loss_sum += float(loss)
        correct += int(outputs.argmax(1).cpu().eq(targets).sum())
        total += targets.numel()
        batches += 1
    return loss_sum / batches, 1 - correct / total, time.perf_counter() - start


def run_released(
    optimizer_name: str,
    seed: int,
    arch: str,
    epochs: int,
    folder: Path,
    record: Callable[..., None],
    device: torch.device,
) -> None:
    """Train as the released script does and ``record(epoch, **quantities)`` after every epoch."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _baselines import ReleasedCIFAR, released_test_transform, released_train_transform

    from padam_lightning.models import build_model

    torch.manual_seed(seed)
    train_split, test_split = load_splits(folder)
    train_loader = DataLoader(
        ReleasedCIFAR(train_split, released_train_transform()),
        batch_size=TRAIN_BATCH,
        shuffle=True,
        num_workers=0,
    )
    test_loader = DataLoader(
        ReleasedCIFAR(test_split, released_test_transform()),
        batch_size=TEST_BATCH,
        shuffle=False,
        num_workers=0,
    )
    model = build_model(arch, num_classes=10).to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = _released_optimizer(optimizer_name, model.parameters())
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(MILESTONES))

    def train_step(inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, float]:
        inputs, targets = inputs.to(device), targets.to(device)

        def closure() -> Any:
            # The released closure: a second forward in train mode, its loss unused.
            return criterion(model(inputs), targets)

        optimizer.zero_grad()
        outputs = model(inputs)
        loss = criterion(outputs, targets)
        loss.backward()
        optimizer.step(closure)
        return outputs.detach(), loss.item()

    def eval_step(inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, float]:
        inputs, targets = inputs.to(device), targets.to(device)
        with torch.no_grad():
            outputs = model(inputs)
            return outputs, criterion(outputs, targets).item()

    for epoch in range(1, epochs + 1):
        with warnings.catch_warnings():
            # Today's torch warns that step() comes before optimizer.step(); so it does here.
            warnings.simplefilter("ignore", UserWarning)
            scheduler.step()
        model.train()
        loss_r, err_r, sec_train = _sweep(model, train_loader, train_step)
        loss_p, err_p, sec_pass = _sweep(model, train_loader, eval_step)  # still train mode
        model.eval()
        loss_t, err_t, sec_test = _sweep(model, test_loader, eval_step)
        record(
            epoch,
            train_loss_running=loss_r,
            train_err_running=err_r,
            train_loss_pass=loss_p,
            train_err_pass=err_p,
            test_loss=loss_t,
            test_err=err_t,
            lr=float(optimizer.param_groups[0]["lr"]),
            seconds={"train": sec_train, "pass": sec_pass, "test": sec_test},
        )


# -- the package --------------------------------------------------------------------------------


def run_package(
    optimizer_name: str,
    seed: int,
    arch: str,
    epochs: int,
    folder: Path,
    record: Callable[..., None],
    device: torch.device,
) -> None:
    """Train with padam-fit's modules and the TrainPass callback; record after every epoch."""
    import lightning as L

    from padam_lightning.data import CIFARDataModule
    from padam_lightning.optim import Padam
    from padam_lightning.training.classifier import ImageClassifier
    from padam_lightning.training.divergence import DivergenceGuard
    from padam_lightning.training.train_pass import TrainPass

    class Recorder(L.Callback):
        """Reads each finished epoch's logged values when the next epoch (or the fit) starts."""

        def __init__(self) -> None:
            self.marks: dict[str, float] = {}
            self.epoch_start = time.perf_counter()

        def _flush(self, trainer: L.Trainer, epoch: int) -> None:
            values = {key: float(value) for key, value in trainer.callback_metrics.items()}
            record(
                epoch,
                train_loss_running=values["train/loss"],
                train_err_running=values["train/err"],
                train_loss_pass=values["train_pass/loss"],
                train_err_pass=values["train_pass/err"],
                test_loss=values["val/loss"],
                test_err=values["val/err"],
                lr=values["optim/lr"],
                seconds={"epoch": time.perf_counter() - self.epoch_start},
            )
            self.epoch_start = time.perf_counter()

        def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            if trainer.current_epoch > 0:
                self._flush(trainer, trainer.current_epoch)  # epochs counted from 1 here

        def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            self._flush(trainer, trainer.current_epoch)

    L.seed_everything(seed, verbose=False)
    if optimizer_name == "padam":
        optimizer: Any = partial(Padam, lr=LR, partial=PARTIAL, weight_decay=WEIGHT_DECAY)
    else:
        optimizer = partial(torch.optim.SGD, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    model = ImageClassifier(
        arch=arch,
        num_classes=10,
        optimizer=optimizer,
        scheduler=partial(torch.optim.lr_scheduler.MultiStepLR, milestones=list(MILESTONES)),
        channels_last=False,
        compile=False,
    )
    data = CIFARDataModule(
        dataset="imagefolder",
        data_dir=str(folder),
        batch_size=TRAIN_BATCH,
        eval_batch_size=TEST_BATCH,
        download=False,
    )
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cuda" if device.type == "cuda" else "cpu",
        devices=1,
        precision="32-true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[TrainPass(), DivergenceGuard(), Recorder()],  # padam-fit's, minus logging
    )
    trainer.fit(model, data)


# -- one run, all runs ----------------------------------------------------------------------------


def run_path(runs_dir: Path, pipeline: str, optimizer: str, seed: int) -> Path:
    """Where a run's JSON lives."""
    return runs_dir / f"{pipeline}-{optimizer}-seed{seed}.json"


def run_one(args: argparse.Namespace) -> None:
    """Train one (pipeline, optimizer, seed) and write its JSON after every epoch."""
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    folder = subset_folder(args.data_dir, args.train_size, args.work_dir)
    path = run_path(args.runs_dir, args.pipeline, args.optimizer, args.seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "pipeline": args.pipeline,
        "optimizer": args.optimizer,
        "seed": args.seed,
        "arch": args.arch,
        "epochs_planned": args.epochs,
        "train_size": args.train_size,
        "threads": args.threads,
        "device": str(args.device),
        "complete": False,
        "epochs": [],
    }
    started = time.perf_counter()

    def record(epoch: int, **values: Any) -> None:
        result["epochs"].append({"epoch": epoch, **values})
        result["complete"] = epoch >= args.epochs
        result["seconds"] = time.perf_counter() - started
        partial_path = path.with_suffix(".json.tmp")
        partial_path.write_text(json.dumps(result, indent=1) + "\n")
        partial_path.replace(path)
        print(
            f"{path.name} epoch {epoch}: " + ", ".join(f"{k} {values[k]:.4f}" for k in QUANTITIES),
            flush=True,
        )

    runner = run_package if args.pipeline == "package" else run_released
    runner(args.optimizer, args.seed, args.arch, args.epochs, folder, record, args.device)


def run_all(args: argparse.Namespace) -> None:
    """Start every missing run (``--jobs`` at a time, under ``nice``), then write the report."""
    folder = subset_folder(args.data_dir, args.train_size, args.work_dir)
    load_splits(folder)  # decode once and cache, so parallel runs do not race to write it
    jobs: list[list[str]] = []
    for seed in args.seeds:  # seed-major: a partial sweep covers every combination first
        for optimizer in OPTIMIZERS:
            for pipeline in PIPELINES:
                path = run_path(args.runs_dir, pipeline, optimizer, seed)
                if path.exists() and json.loads(path.read_text()).get("complete"):
                    continue
                jobs.append(
                    [
                        "nice",
                        "-n",
                        str(args.nice),
                        sys.executable,
                        str(Path(__file__).resolve()),
                        "run",
                        "--pipeline",
                        pipeline,
                        "--optimizer",
                        optimizer,
                        "--seed",
                        str(seed),
                        *_shared_flags(args),
                    ]
                )
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    running: list[subprocess.Popen[bytes]] = []
    log_dir = args.work_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    while jobs or running:
        running = [job for job in running if job.poll() is None]
        while jobs and len(running) < args.jobs:
            command = jobs.pop(0)
            name = "-".join(command[command.index("--pipeline") + 1 :: 2][:3])
            log = (log_dir / f"{name}.log").open("wb")
            print("start:", " ".join(command[3:]), flush=True)
            running.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
        time.sleep(2)
    report(args)


def _shared_flags(args: argparse.Namespace) -> list[str]:
    return [
        "--arch", args.arch, "--epochs", str(args.epochs), "--train-size", str(args.train_size),
        "--data-dir", str(args.data_dir), "--work-dir", str(args.work_dir),
        "--runs-dir", str(args.runs_dir), "--threads", str(args.threads),
        "--device", str(args.device),
    ]  # fmt: skip


# -- the report ---------------------------------------------------------------------------------


def load_runs(runs_dir: Path) -> list[dict[str, Any]]:
    """Every run JSON in ``runs_dir``."""
    return [json.loads(path.read_text()) for path in sorted(runs_dir.glob("*.json"))]


def spread(
    runs: list[dict[str, Any]], pipeline: str, optimizer: str, quantity: str, epoch: int
) -> list[float]:
    """The values of one quantity at one epoch over the seeds of a (pipeline, optimizer)."""
    return [
        row[quantity]
        for run in runs
        if run["pipeline"] == pipeline and run["optimizer"] == optimizer
        for row in run["epochs"]
        if row["epoch"] == epoch
    ]


def within(package: list[float], released: list[float]) -> bool:
    """The acceptance test: the package's seed mean lies in the released loop's seed range."""
    mean = sum(package) / len(package)
    return min(released) <= mean <= max(released)


#: Two-sided 95% critical values of Student's t by degrees of freedom (above 10: 1.96).
#: Student's t, 97.5% quantile, for 1-30 degrees of freedom (standard tables).
T_CRITICAL = dict(
    enumerate(
        (
            12.706,
            4.303,
            3.182,
            2.776,
            2.571,
            2.447,
            2.365,
            2.306,
            2.262,
            2.228,
            2.201,
            2.179,
            2.160,
            2.145,
            2.131,
            2.120,
            2.110,
            2.101,
            2.093,
            2.086,
            2.080,
            2.074,
            2.069,
            2.064,
            2.060,
            2.056,
            2.052,
            2.048,
            2.045,
            2.042,
        ),
        start=1,
    )
)


def t_statistic(package: list[float], released: list[float]) -> float | None:
    """Pooled two-sample t of the pipelines' seed means; None without two seeds on each side.

    The range check alone is weak with two seeds: two runs of the *same* pipeline pass it only
    39% of the time (the mean of two draws lies within the range of two other draws with
    probability ``2/pi * arctan(1/sqrt(2))``), so a difference is only called significant when
    this t exceeds the 95% critical value (4.30 for two seeds each).
    """
    n1, n2 = len(package), len(released)
    if n1 < 2 or n2 < 2:
        return None
    m1, m2 = sum(package) / n1, sum(released) / n2
    ss = sum((v - m1) ** 2 for v in package) + sum((v - m2) ** 2 for v in released)
    pooled = math.sqrt(ss / (n1 + n2 - 2))
    if pooled == 0:
        return None if m1 == m2 else math.copysign(math.inf, m1 - m2)
    return (m1 - m2) / (pooled * math.sqrt(1 / n1 + 1 / n2))


def t_critical(package: list[float], released: list[float]) -> float:
    """The 95% two-sided critical value for :func:`t_statistic`'s degrees of freedom."""
    df = len(package) + len(released) - 2
    # Beyond the table, 30 degrees of freedom's value: slightly conservative (df -> inf: 1.96).
    return T_CRITICAL.get(df, T_CRITICAL[30])


def report_tables(runs: list[dict[str, Any]]) -> tuple[str, list[str], list[str]]:
    """Markdown tables (mean [min, max] over seeds per epoch) and the checks that failed.

    Returns:
        The tables, the (optimizer, epoch, quantity) whose package mean lies outside the released
        seed range, and those whose difference is significant by :func:`t_statistic`.
    """
    lines: list[str] = []
    failures: list[str] = []
    significant: list[str] = []
    epochs = sorted({row["epoch"] for run in runs for row in run["epochs"]})
    for optimizer in OPTIMIZERS:
        lines += [
            f"\n**{ {'padam': 'Padam (p = 1/8)', 'sgdm': 'SGD with momentum'}[optimizer] }**\n",
            "| epoch | quantity | released: mean [min, max] (n) | package: mean [min, max] (n) "
            "| package mean in released range | t (package - released) |",
            "|---:|---|---|---|:---:|---:|",
        ]
        for epoch in epochs:
            for quantity in (*CHECKED, "test_loss"):
                rel = spread(runs, "released", optimizer, quantity, epoch)
                pkg = spread(runs, "package", optimizer, quantity, epoch)
                if not rel or not pkg:
                    continue
                ok = within(pkg, rel)
                t = t_statistic(pkg, rel)
                where = f"{optimizer} epoch {epoch} {quantity}"
                if not ok and quantity in CHECKED:
                    failures.append(where)
                if t is not None and abs(t) > t_critical(pkg, rel) and quantity in CHECKED:
                    significant.append(where)
                t_text = "" if t is None else f"{t:+.2f}"
                lines.append(
                    f"| {epoch} | {quantity} | {_cell(rel, quantity)} | {_cell(pkg, quantity)} | "
                    f"{'yes' if ok else 'no'} | {t_text} |"
                )
    return "\n".join(lines), failures, significant


def per_run_table(runs: list[dict[str, Any]]) -> str:
    """One row per run: per epoch, running train loss / pass train loss / test error."""
    epochs = sorted({row["epoch"] for run in runs for row in run["epochs"]})
    lines = [
        "Per epoch: train loss (running mean) / train loss (pass) / test error (%).\n",
        "| optimizer | pipeline | seed | " + " | ".join(f"epoch {e}" for e in epochs) + " |",
        "|---|---|---:|" + "---|" * len(epochs),
    ]
    order = sorted(runs, key=lambda r: (r["optimizer"], r["seed"], r["pipeline"]))
    for run in order:
        rows = {row["epoch"]: row for row in run["epochs"]}
        cells = [
            f"{rows[e]['train_loss_running']:.3f} / {rows[e]['train_loss_pass']:.3f} / "
            f"{100 * rows[e]['test_err']:.1f}"
            if e in rows
            else ""
            for e in epochs
        ]
        lines.append(
            f"| {run['optimizer']} | {run['pipeline']} | {run['seed']} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def is_error(quantity: str) -> bool:
    """Whether a quantity is an error rate, stored as a fraction and shown in percent."""
    return "_err" in quantity


def _cell(values: list[float], quantity: str) -> str:
    if is_error(quantity):
        values = [100 * v for v in values]
        mean = sum(values) / len(values)
        return f"{mean:.2f}% [{min(values):.2f}%, {max(values):.2f}%] ({len(values)})"
    mean = sum(values) / len(values)
    return f"{mean:.4f} [{min(values):.4f}, {max(values):.4f}] ({len(values)})"


def report_figure(runs: list[dict[str, Any]], path: Path) -> None:
    """Per-epoch curves, one panel per (optimizer, quantity), seed range shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(OPTIMIZERS), len(CHECKED), figsize=(4 * len(CHECKED), 3.2 * len(OPTIMIZERS))
    )
    epochs = sorted({row["epoch"] for run in runs for row in run["epochs"]})
    for i, optimizer in enumerate(OPTIMIZERS):
        for j, quantity in enumerate(CHECKED):
            ax = axes[i][j]
            scale = 100.0 if is_error(quantity) else 1.0
            for pipeline, color in (("released", "tab:blue"), ("package", "tab:orange")):
                series = [
                    (e, [scale * v for v in values])
                    for e in epochs
                    if (values := spread(runs, pipeline, optimizer, quantity, e))
                ]
                if not series:
                    continue
                xs = [e for e, _ in series]
                ax.plot(xs, [sum(v) / len(v) for _, v in series], "o-", color=color, label=pipeline)
                ax.fill_between(
                    xs, [min(v) for _, v in series], [max(v) for _, v in series],
                    color=color, alpha=0.25,
                )  # fmt: skip
            ax.set_title(f"{optimizer}: {quantity}{' (%)' if scale != 1 else ''}", fontsize=9)
            ax.set_xlabel("epoch")
            ax.set_xticks(epochs)
            if i == 0 and j == 0:
                ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(args: argparse.Namespace, write: bool = True) -> None:
    """Print the tables and (``write``) write ``fidelity.md`` and ``fidelity.png`` by the runs."""
    runs = load_runs(args.runs_dir)
    if not runs:
        print(f"fidelity: no runs in {args.runs_dir}; start them with `fidelity.py all`.")
        return
    tables, failures, significant = report_tables(runs)
    first = runs[0]
    setup = (
        f"{first['arch']}, {first['train_size']} training images (fixed shuffled subset) and the "
        f"10,000 test images, up to {max(r['epochs_planned'] for r in runs)} epochs; "
        + ", ".join(
            f"{name} seeds {sorted({r['seed'] for r in runs if r['optimizer'] == name})}"
            for name in OPTIMIZERS
        )
        + "; runs complete: "
        f"{sum(r['complete'] for r in runs)}/{len(runs)}"
    )
    checked = ", ".join(CHECKED)
    verdict = (
        f"Checked: {checked}, at every epoch.\n\n"
        + (
            "- Range check: every package seed mean lies within the released loop's seed range."
            if not failures
            else "- Range check, package seed mean outside the released seed range: "
            + "; ".join(failures)
            + " (a weak test with few seeds: with two seeds on each side, two identical pipelines"
            " fail it 61% of the time)."
        )
        + "\n- t test: "
        + (
            "no difference is significant at 95% (|t| <= critical value)."
            if not significant
            else "significant at 95%: " + "; ".join(significant)
        )
    )
    text = (
        f"# Fidelity: padam-fit against the released loop\n\n{setup}.\n{tables}\n\n{verdict}\n"
        f"\n## Per run\n\n{per_run_table(runs)}\n"
    )
    print(text)
    if not write:
        return
    out_dir = args.runs_dir.parent
    (out_dir / "fidelity.md").write_text(text)
    report_figure(runs, out_dir / "fidelity.png")
    print(f"wrote {out_dir / 'fidelity.md'} and {out_dir / 'fidelity.png'}")


def main(argv: list[str] | None = None) -> None:
    """Parse the command line; no command prints the report of the committed runs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command")
    commands = {
        "run": sub.add_parser("run", help="one (pipeline, optimizer, seed)"),
        "all": sub.add_parser("all", help="every missing run, then the report"),
        "report": sub.add_parser("report", help="tables and figure from the run JSONs"),
    }
    for name, command in commands.items():
        command.add_argument("--runs-dir", type=Path, default=DEFAULT_OUT / "runs")
        if name == "report":
            continue
        command.add_argument("--arch", default="wrn10_1")
        command.add_argument("--epochs", type=int, default=3)
        command.add_argument("--train-size", type=int, default=5000)
        command.add_argument("--data-dir", type=Path, default=DEFAULT_SOURCE)
        command.add_argument("--work-dir", type=Path, default=Path("/tmp/padam-fidelity"))
        command.add_argument("--threads", type=int, default=1)
        command.add_argument(
            "--device", type=torch.device, default=torch.device("cpu"), help="cpu or cuda"
        )
    commands["run"].add_argument("--pipeline", choices=PIPELINES, required=True)
    commands["run"].add_argument("--optimizer", choices=OPTIMIZERS, required=True)
    commands["run"].add_argument("--seed", type=int, default=0)
    commands["all"].add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    commands["all"].add_argument("--jobs", type=int, default=2)
    commands["all"].add_argument("--nice", type=int, default=10)
    args = parser.parse_args(argv)
    if args.command in ("run", "all") and not (args.data_dir / "train").is_dir():
        parser.exit(0, f"fidelity: skipped, no image folder at {args.data_dir} (see README).\n")
    if args.command == "run":
        run_one(args)
    elif args.command == "all":
        run_all(args)
    else:
        if args.command is None:  # e.g. `make bench`: print the committed results, write nothing
            args.runs_dir = DEFAULT_OUT / "runs"
        report(args, write=args.command is not None)


if __name__ == "__main__":
    main()
