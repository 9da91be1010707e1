"""Summarise a ``benchmarks/gpu.sh`` run from its step logs: the epoch goals, test error per epoch.

Used by gpu.sh (``python benchmarks/_gpu_report.py LOG_DIR``); not a benchmark itself.
"""

from __future__ import annotations

import re
import statistics
import sys
from pathlib import Path

#: An EpochReport line: "epoch   3: train    1.52 s (...), eval   0.21 s, ... val/err 0.1234".
EPOCH_LINE = re.compile(r"^epoch +(\d+): train +([\d.]+) s .*?eval +([\d.]+) s", re.M)
WALL_LINE = re.compile(r"^epoch +(\d+): +([\d.]+) s with checkpointing", re.M)
ERROR_LINE = re.compile(r"^epoch +(\d+):.*val/err ([\d.]+)", re.M)
RELEASED_LINE = re.compile(r"released epoch (\d+): train ([\d.]+) s, eval ([\d.]+) s")


def summarise(log_dir: Path) -> list[str]:
    """Lines on the padam-fit training run and the released-code epoch found in ``log_dir``."""

    def read(name: str) -> str:
        path = log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    fit = read("padam_fit_resnet18")
    epochs = [(int(e), float(t) + float(v)) for e, t, v in EPOCH_LINE.findall(fit)]
    walls = {int(e): float(w) for e, w in WALL_LINE.findall(fit)}
    errors = ERROR_LINE.findall(fit)
    released = RELEASED_LINE.findall(read("released_epoch"))
    lines = [
        f"padam-fit ResNet-18: {len(epochs)} epochs; test error by epoch: "
        + (", ".join(f"{e}: {float(v):.4f}" for e, v in errors) or "none logged")
    ]
    # The first epoch pays for compilation and cuDNN tuning; the goal is about the others.
    steady = [seconds for epoch, seconds in epochs if epoch >= 1] or [s for _, s in epochs]
    if not steady:
        return [*lines, "no padam-fit epoch finished"]
    ours = statistics.median(steady)
    steady_walls = [w for e, w in walls.items() if e >= 1] or list(walls.values())
    wall = f"{statistics.median(steady_walls):.2f} s" if steady_walls else "n/a"
    lines.append(
        f"padam-fit epoch (train + eval), median of {len(steady)} epochs after the first: "
        f"{ours:.2f} s (with checkpointing {wall}); goal <= 2 s"
    )
    if released:
        theirs = float(released[-1][1]) + float(released[-1][2])
        lines.append(
            f"released-code epoch (train + eval): {theirs:.2f} s; released / padam-fit = "
            f"{theirs / ours:.1f}x (goal >= 10)"
        )
    return lines


def main() -> None:
    if len(sys.argv) != 2:
        print("benchmarks/_gpu_report.py LOG_DIR summarises a gpu.sh run; nothing to run alone.")
        return
    for line in summarise(Path(sys.argv[1])):
        print(line)


if __name__ == "__main__":
    main()
